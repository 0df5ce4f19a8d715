//! Models by Hub id from the command line, against the fixture Hub: `train --init org/name`
//! fetches the model into the Hugging Face cache and fine-tunes it with its own tokenizer, the
//! cache then serves `generate` offline, and a model of another architecture is refused before
//! its weights download.

#![allow(clippy::unwrap_used)] // tests: a failure should panic with its message

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use chatforge_testkit::hub::FixtureHub;
use common::tiny_model_and_chats;

/// chatforge with the Hub pointed at `fixture` and the cache in `cache`.
fn hub_exec(args: &[&str], cwd: &Path, fixture: &FixtureHub, cache: &Path, offline: bool) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chatforge"))
        .args(args)
        .current_dir(cwd)
        .env("HF_ENDPOINT", fixture.endpoint())
        .env("HF_HUB_CACHE", cache)
        .env("HF_HUB_OFFLINE", if offline { "1" } else { "0" })
        .env_remove("HF_TOKEN")
        .env("HF_HOME", cache.join("home"))
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn succeeds(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap() + &String::from_utf8(out.stderr).unwrap()
}

#[test]
fn train_and_generate_from_a_hub_id() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tiny_model_and_chats(d);
    let fixture = FixtureHub::start();
    let commit = fixture.publish_folder("org/tiny-gpt2", &d.join("hf"));
    let cache = d.join("hf-cache");

    // Fine-tune by Hub id on a JSON file, with the model's own tokenizer (no --tokenizer), as the
    // README's first command does.
    let out = succeeds(
        hub_exec(
            &[
                "train",
                "--init",
                "org/tiny-gpt2",
                "--data",
                "chats.json",
                "--max-steps",
                "2",
                "--batch-size",
                "2",
                "-o",
                "ft",
            ],
            d,
            &fixture,
            &cache,
            false,
        ),
        "train --init org/tiny-gpt2",
    );
    assert!(out.contains("2 steps"), "{out}");
    assert!(out.contains("downloading model.safetensors"), "{out}");
    let snapshot = cache.join("models--org--tiny-gpt2/snapshots").join(&commit);
    assert!(snapshot.join("model.safetensors").is_file());
    // The run records the snapshot it started from, and took the model's tokenizer.
    let config = std::fs::read_to_string(d.join("ft/manifest.json")).unwrap();
    assert!(config.contains(&commit), "{config}");
    assert_eq!(
        std::fs::read(d.join("ft/tokenizer.json")).unwrap(),
        std::fs::read(d.join("hf/tokenizer.json")).unwrap()
    );

    // The cache serves offline: the fixture is not asked.
    fixture.take_log();
    let out = succeeds(
        hub_exec(
            &[
                "generate",
                "--model",
                "org/tiny-gpt2",
                "--prompt",
                "The kettle",
                "--max-new-tokens",
                "4",
                "--temperature",
                "0",
            ],
            d,
            &fixture,
            &cache,
            true,
        ),
        "generate --model org/tiny-gpt2 offline",
    );
    assert!(out.contains(&commit), "the model's folder is the snapshot: {out}");
    assert!(fixture.take_log().is_empty());

    // Not cached and offline; another architecture; a missing repository: clear refusals.
    let err = hub_exec(
        &["generate", "--model", "org/other", "--prompt", "x"],
        d,
        &fixture,
        &cache,
        true,
    );
    let msg = String::from_utf8_lossy(&err.stderr);
    assert!(!err.status.success() && msg.contains("HF_HUB_OFFLINE"), "{msg}");
    // A Llama-family model by Hub id, with its own chat template (SmolLM2's layout).
    let smol = common::llama_folder(
        d,
        "smol-src",
        chatforge_model::GptConfig {
            n_ctx: 128,
            ..chatforge_model::GptConfig::llama_tiny(0)
        },
    );
    fixture.publish_folder("HuggingFaceTB/SmolLM2-tiny-Instruct", &smol);
    let out = hub_exec(
        &[
            "generate",
            "--model",
            "HuggingFaceTB/SmolLM2-tiny-Instruct",
            "--prompt",
            "x",
            "--max-new-tokens",
            "3",
        ],
        d,
        &fixture,
        &cache,
        false,
    );
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && msg.contains("chat template"), "{msg}");
    // Another architecture is refused by name before its weights download.
    fixture.publish(
        "org/mistral",
        &[
            ("config.json", br#"{"model_type": "mistral", "hidden_size": 64}"#),
            ("model.safetensors", b"weights"),
        ],
    );
    let err = hub_exec(
        &["generate", "--model", "org/mistral", "--prompt", "x"],
        d,
        &fixture,
        &cache,
        false,
    );
    let msg = String::from_utf8_lossy(&err.stderr);
    assert!(
        !err.status.success() && msg.contains("mistral") && !msg.contains("downloading model.safetensors"),
        "{msg}"
    );
    let err = hub_exec(
        &["generate", "--model", "hf://org/missing", "--prompt", "x"],
        d,
        &fixture,
        &cache,
        false,
    );
    let msg = String::from_utf8_lossy(&err.stderr);
    assert!(!err.status.success() && msg.contains("org/missing"), "{msg}");
    // A mistyped local path is a missing path, not a Hub request.
    fixture.take_log();
    let err = hub_exec(
        &["generate", "--model", "ft/nope", "--prompt", "x"],
        d,
        &fixture,
        &cache,
        false,
    );
    assert!(!err.status.success());
    assert!(fixture.take_log().is_empty());
}

#[test]
fn the_service_trains_from_a_hub_id() {
    use common::service::{free_port, post, serve, wait_state};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tiny_model_and_chats(d);
    let fixture = FixtureHub::start();
    let commit = fixture.publish_folder("org/tiny-gpt2", &d.join("hf"));
    let root = d.join("root");
    std::fs::create_dir_all(root.join("data")).unwrap();
    std::fs::copy(d.join("chats.json"), root.join("data/chats.json")).unwrap();
    let cache = d.join("hf-cache");
    let port = free_port();
    let cache_s = cache.to_str().unwrap().to_string();
    let _server = serve(
        &root,
        port,
        1,
        &[],
        &[
            ("HF_ENDPOINT", fixture.endpoint()),
            ("HF_HUB_CACHE", &cache_s),
            ("HF_HUB_OFFLINE", "0"),
        ],
    );
    let body = |init: &str| {
        serde_json::json!({
            "init": init, "data": "data/chats.json", "mode": "sft",
            "train": {"max_steps": 2, "batch_size": 2}
        })
    };
    let r = post(port, "/runs/train", &body("org/tiny-gpt2"));
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let run = r.json()["run_id"].as_str().unwrap().to_string();
    let done = wait_state(port, &run, &["succeeded", "failed"], 120);
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(
        cache
            .join("models--org--tiny-gpt2/snapshots")
            .join(&commit)
            .join("model.safetensors")
            .is_file()
    );
    assert!(root.join("runs").join(&run).join("tokenizer.json").is_file());
    // The run fine-tuned from a model folder talks through the OpenAI endpoint with the model's
    // tokenizer, no --tokenizer given anywhere (seed 004's fine-tune → chat path, as a service).
    let ask = serde_json::json!({"model": run, "temperature": 0, "max_tokens": 6,
        "messages": [{"role": "user", "content": "Boil kettle 3?"}]});
    let r = post(port, "/v1/chat/completions", &ask);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.json()["choices"][0]["message"]["content"].is_string());

    // The Llama family the same way: a LoRA job from a SmolLM2-shaped model by Hub id, then the
    // OpenAI endpoint answers through the model's own chat template.
    let smol = common::llama_folder(
        d,
        "smol",
        chatforge_model::GptConfig {
            n_ctx: 128,
            ..chatforge_model::GptConfig::llama_tiny(0)
        },
    );
    fixture.publish_folder("org/tiny-smol", &smol);
    let lora = serde_json::json!({"init": "org/tiny-smol", "data": "data/chats.json", "mode": "lora",
        "train": {"max_steps": 2, "batch_size": 2}});
    let r = post(port, "/runs/train", &lora);
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let run = r.json()["run_id"].as_str().unwrap().to_string();
    let done = wait_state(port, &run, &["succeeded", "failed"], 120);
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(
        root.join("runs")
            .join(&run)
            .join("tokenizer_config.json")
            .is_file()
    );
    let ask = serde_json::json!({"model": run, "temperature": 0, "max_tokens": 6,
        "messages": [{"role": "user", "content": "Boil kettle 3?"}]});
    let r = post(port, "/v1/chat/completions", &ask);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.json()["choices"][0]["message"]["content"].is_string());

    // A repository that is not there fails its job, with the reason; the server carries on.
    let r = post(port, "/runs/train", &body("org/missing"));
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let run = r.json()["run_id"].as_str().unwrap().to_string();
    let done = wait_state(port, &run, &["succeeded", "failed"], 60);
    assert_eq!(done["state"], "failed", "{done}");
    assert!(done["error"].as_str().unwrap().contains("org/missing"), "{done}");
    // A path that leads out of the data root is still refused at once.
    let r = post(port, "/runs/train", &body("../outside"));
    assert!(r.status == 400 || r.status == 422, "{}", r.status);
}

#[cfg(feature = "parquet")]
#[test]
fn data_import_reads_a_hub_dataset_split() {
    let Some(py) = chatforge_testkit::python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    chatforge_testkit::run_reference(&py, "write_parquet.py", &[d.join("pq").to_str().unwrap()]);
    let fixture = FixtureHub::start();
    let train = std::fs::read(d.join("pq/alpaca.parquet")).unwrap();
    let val = std::fs::read(d.join("pq/messages.parquet")).unwrap();
    let first = fixture.publish(
        "datasets/org/chats",
        &[
            ("README.md", b"# chats"),
            ("data/train-00000-of-00001.parquet", &train),
            ("data/validation-00000-of-00001.parquet", &val),
        ],
    );
    let cache = d.join("hf-cache");
    let import = |args: &[&str]| {
        let mut all = vec!["data", "import"];
        all.extend_from_slice(args);
        hub_exec(&all, d, &fixture, &cache, false)
    };
    let lines = |f: &str| std::fs::read_to_string(d.join(f)).unwrap().lines().count();

    let out = succeeds(
        import(&["hf://datasets/org/chats", "-o", "train.jsonl", "--val-split", "0"]),
        "import train",
    );
    assert!(out.contains("split train") && out.contains(&first), "{out}");
    assert_eq!(lines("train.jsonl"), 50);
    succeeds(
        import(&[
            "hf://datasets/org/chats",
            "--split",
            "validation",
            "-o",
            "val.jsonl",
            "--val-split",
            "0",
        ]),
        "import validation",
    );
    assert_eq!(lines("val.jsonl"), 2);
    assert!(cache.join("datasets--org--chats/snapshots").join(&first).is_dir());

    // A newer commit on main; the old one by --revision.
    fixture.publish(
        "datasets/org/chats",
        &[("data/train-00000-of-00001.parquet", &val)],
    );
    succeeds(
        import(&["hf://datasets/org/chats", "-o", "new.jsonl", "--val-split", "0"]),
        "import new",
    );
    assert_eq!(lines("new.jsonl"), 2);
    succeeds(
        import(&[
            "hf://datasets/org/chats",
            "--revision",
            &first,
            "-o",
            "old.jsonl",
            "--val-split",
            "0",
        ]),
        "import pinned",
    );
    assert_eq!(lines("old.jsonl"), 50);

    let err = import(&["hf://datasets/org/chats", "--split", "test", "-o", "t.jsonl"]);
    let msg = String::from_utf8_lossy(&err.stderr);
    assert!(!err.status.success() && msg.contains("split 'test'"), "{msg}");
    let err = import(&["hf://datasets/org/none", "-o", "t.jsonl"]);
    let msg = String::from_utf8_lossy(&err.stderr);
    assert!(!err.status.success() && msg.contains("org/none"), "{msg}");
}
