//! The `chatforge` binary end to end, as a person would run it.

#![allow(clippy::unwrap_used)] // tests: a failure should panic with its message

use std::path::Path;
use std::process::{Command, Output};

use chatforge_data::{Shard, read_jsonl};
use chatforge_testkit::{fixture, root};
use chatforge_tokenizer::{ChatTokenizer, RenderOptions};

fn chatforge(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chatforge"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap()
}

fn ok(args: &[&str], cwd: &Path) -> String {
    let out = chatforge(args, cwd);
    assert!(
        out.status.success(),
        "chatforge {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails(args: &[&str], cwd: &Path) -> String {
    let out = chatforge(args, cwd);
    assert!(!out.status.success(), "chatforge {args:?} should fail");
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn import_reports_detection_for_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("openai.jsonl", "JSONL · messages — 3 records → 3 conversations"),
        (
            "sharegpt.json",
            "JSON list · sharegpt — 2 records → 2 conversations",
        ),
        (
            "alpaca.json",
            "JSON list · instruction (instruction→user, output→assistant) — 3 records",
        ),
        (
            "qa_dict.json",
            "JSON dict, records under \"data\" · instruction (question→user, answer→assistant, category→domain)",
        ),
        (
            "oasst_messages.jsonl",
            "JSONL · oasst — 9 records → 3 conversations",
        ),
        (
            "oasst.trees.jsonl",
            "JSONL · oasst-trees — 1 records → 2 conversations",
        ),
        (
            "transcript.txt",
            "text · transcript — 2 records → 2 conversations",
        ),
        ("dialogs.yaml", "YAML · yaml-dialog — 2 records → 2 conversations"),
    ];
    for (file, expected) in cases {
        let input = fixture(&format!("formats/{file}"));
        let out = ok(
            &[
                "data",
                "import",
                input.to_str().unwrap(),
                "-o",
                "out.jsonl",
                "--val-split",
                "0",
            ],
            dir.path(),
        );
        assert!(out.contains(expected), "{file}: expected '{expected}' in:\n{out}");
        assert!(!dir.path().join("out.val.jsonl").exists());
    }
    let input = fixture("formats/custom_fields.jsonl");
    let out = ok(
        &[
            "data",
            "import",
            input.to_str().unwrap(),
            "-o",
            "out.jsonl",
            "--val-split",
            "0",
            "--field-map",
            "instruction=q,output=a,domain=topic",
            "--domain-tag",
        ],
        dir.path(),
    );
    assert!(
        out.contains("instruction (q→user, a→assistant, topic→domain)"),
        "{out}"
    );
    let convs = read_jsonl(&dir.path().join("out.jsonl")).unwrap();
    assert_eq!(
        convs[0].messages[0].content,
        "#calendar How many days are in a week?"
    );
}

#[test]
fn import_merges_splits_and_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let formats = fixture("formats");
    let args = |out: &str| {
        vec![
            "data".to_string(),
            "import".into(),
            formats.join("openai.jsonl").display().to_string(),
            formats.join("sharegpt.json").display().to_string(),
            formats.join("alpaca.json").display().to_string(),
            formats.join("transcript.txt").display().to_string(),
            "-o".into(),
            out.into(),
            "--val-split".into(),
            "0.3".into(),
            "--seed".into(),
            "3".into(),
        ]
    };
    let run = |out: &str| {
        ok(
            &args(out).iter().map(String::as_str).collect::<Vec<_>>(),
            dir.path(),
        )
    };
    let text = run("a.jsonl");
    assert!(
        text.contains("wrote 7 training conversations to a.jsonl"),
        "{text}"
    );
    assert!(
        text.contains("wrote 3 validation conversations to a.val.jsonl (seed 3)"),
        "{text}"
    );
    run("b.jsonl");
    for suffix in ["jsonl", "val.jsonl"] {
        let a = std::fs::read(dir.path().join(format!("a.{suffix}"))).unwrap();
        let b = std::fs::read(dir.path().join(format!("b.{suffix}"))).unwrap();
        assert_eq!(a, b, "same seed, same split");
    }
}

#[test]
fn bad_input_is_a_clear_error_and_keeps_earlier_output() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("out.jsonl"), "precious\n").unwrap();
    let malformed = fixture("broken/malformed.jsonl");
    let err = fails(
        &["data", "import", malformed.to_str().unwrap(), "-o", "out.jsonl"],
        dir.path(),
    );
    assert!(err.contains("malformed.jsonl, line 3: invalid JSON"), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap(),
        "precious\n"
    );

    let out = ok(
        &[
            "data",
            "import",
            malformed.to_str().unwrap(),
            "-o",
            "out.jsonl",
            "--skip-invalid",
            "--val-split",
            "0",
        ],
        dir.path(),
    );
    assert!(out.contains("skipped 1 malformed records"), "{out}");
    assert_eq!(read_jsonl(&dir.path().join("out.jsonl")).unwrap().len(), 3);

    let err = fails(
        &[
            "data",
            "import",
            fixture("broken/unknown.dat").to_str().unwrap(),
            "-o",
            "x.jsonl",
        ],
        dir.path(),
    );
    assert!(err.contains("unknown.dat: unknown format"), "{err}");
    let err = fails(&["data", "import", "missing.json", "-o", "x.jsonl"], dir.path());
    assert!(err.contains("missing.json"), "{err}");
    let err = fails(
        &[
            "data",
            "import",
            malformed.to_str().unwrap(),
            "-o",
            "x.jsonl",
            "--format",
            "parquet",
        ],
        dir.path(),
    );
    assert!(err.contains("unknown format 'parquet'"), "{err}");
}

#[test]
fn pipeline_quick_runs_the_whole_path() {
    let dir = tempfile::tempdir().unwrap();
    let sample = root().join("data/sample");
    let out = ok(
        &[
            "pipeline",
            "--quick",
            "--data",
            sample.to_str().unwrap(),
            "-o",
            "run",
        ],
        dir.path(),
    );
    assert!(
        out.contains("conversations.jsonl: JSONL · messages — 534 records"),
        "{out}"
    );
    assert!(
        out.contains("instructions.json: JSON list · instruction"),
        "{out}"
    );
    assert!(out.contains("validation loss on assistant tokens"), "{out}");
    assert!(
        out.contains("  user: What is the capital of France?\n  assistant: "),
        "{out}"
    );
    // The model learned something: validation loss well below the unigram baseline.
    let line = out
        .lines()
        .find(|l| l.starts_with("validation loss on assistant tokens"))
        .unwrap();
    let nums: Vec<f64> = line
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|w| w.parse().ok())
        .collect();
    let (val, baseline) = (nums[0], nums[2]);
    assert!(
        val < 0.8 * baseline,
        "validation {val} vs unigram baseline {baseline}"
    );
    let run = dir.path().join("run");
    for f in [
        "data/train.jsonl",
        "data/train.val.jsonl",
        "tokenizer/tokenizer.json",
        "tokenizer/manifest.json",
        "tokenizer/stats.json",
        "data/train.bin",
        "data/train.bin.json",
        "data/val.bin",
        "manifest.json",
        "config.json",
        "tokenizer.json",
        "logs.jsonl",
        "best/model.safetensors",
    ] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    // The shard holds exactly what the template renders, conversation by conversation.
    let tok = ChatTokenizer::load(&run.join("tokenizer")).unwrap();
    let convs = read_jsonl(&run.join("data/train.val.jsonl")).unwrap();
    let shard = Shard::open(&run.join("data/val.bin")).unwrap();
    assert_eq!(shard.n_docs(), convs.len());
    assert_eq!(shard.vocab_size() as usize, tok.vocab_size());
    for (d, c) in convs.iter().enumerate() {
        let r = tok.render_chat(c, &RenderOptions::default()).unwrap();
        let mut ids = Vec::new();
        shard.ids_into(shard.doc(d), &mut ids);
        assert_eq!(ids, r.ids);
        assert_eq!(shard.mask(shard.doc(d)), r.mask.as_slice());
    }
    let sidecar: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("data/val.bin.json")).unwrap()).unwrap();
    assert_eq!(sidecar["conversations"], convs.len());

    let shown = ok(
        &[
            "data",
            "show",
            "run/data/train.val.jsonl",
            "--tokenizer",
            "run/tokenizer",
            "-n",
            "1",
        ],
        dir.path(),
    );
    assert!(
        shown.contains("<|user|>") && shown.contains("⟦") && shown.contains("<|end|>⟧"),
        "{shown}"
    );
    let stats = ok(&["data", "stats", "run/data/train.jsonl", "--json"], dir.path());
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert!(stats["conversations"].as_u64().unwrap() > 700);
}

#[test]
fn tokenizer_train_load_and_corrupt_shards() {
    let dir = tempfile::tempdir().unwrap();
    let formats = fixture("formats");
    let inputs: Vec<String> = [
        "openai.jsonl",
        "sharegpt.json",
        "alpaca.json",
        "oasst_messages.jsonl",
        "transcript.txt",
    ]
    .iter()
    .map(|f| formats.join(f).display().to_string())
    .collect();
    let mut args = vec!["data", "import"];
    args.extend(inputs.iter().map(String::as_str));
    args.extend(["-o", "all.jsonl"]);
    ok(&args, dir.path());
    let out = ok(
        &[
            "tokenizer",
            "train",
            "--kind",
            "unigram",
            "--vocab-size",
            "300",
            "--input",
            "all.jsonl",
            "-o",
            "tok",
        ],
        dir.path(),
    );
    assert!(out.contains("trained a Unigram tokenizer"), "{out}");
    assert!(dir.path().join("tok/stats.json").is_file());
    let out = ok(
        &["tokenizer", "load", "tok/tokenizer.json", "--text", "hello"],
        dir.path(),
    );
    assert!(out.contains("fast encoder no"), "{out}");
    let gpt2 = fixture("gpt2-tiny");
    let out = ok(
        &[
            "tokenizer",
            "load",
            gpt2.to_str().unwrap(),
            "--text",
            "User hug",
            "-o",
            "gpt2",
        ],
        dir.path(),
    );
    assert!(out.contains("\"User hug\" → 2 tokens: User | Ġhug"), "{out}");
    assert_eq!(
        ChatTokenizer::load(&dir.path().join("gpt2"))
            .unwrap()
            .vocab_size(),
        265
    );
    // Trained and loaded artifacts share one manifest schema.
    let manifest = |d: &str| -> chatforge_tokenizer::TokenizerManifest {
        serde_json::from_str(&std::fs::read_to_string(dir.path().join(d).join("manifest.json")).unwrap())
            .unwrap()
    };
    let (trained, loaded) = (manifest("tok"), manifest("gpt2"));
    assert_eq!(trained.origin, chatforge_tokenizer::Origin::Trained);
    assert_eq!(loaded.origin, chatforge_tokenizer::Origin::Loaded);
    assert_eq!(loaded.vocab_size, 265);
    assert!(loaded.loaded_from.unwrap().contains("gpt2-tiny"));

    ok(
        &[
            "data",
            "tokenize",
            "all.jsonl",
            "--tokenizer",
            "gpt2",
            "-o",
            "all.bin",
        ],
        dir.path(),
    );
    let bin = dir.path().join("all.bin");
    let mut bytes = std::fs::read(&bin).unwrap();
    bytes.truncate(bytes.len() - 8);
    std::fs::write(&bin, &bytes).unwrap();
    let err = Shard::open(&bin).unwrap_err().to_string();
    assert!(err.contains("all.bin: corrupt shard: truncated"), "{err}");
}
