//! `chatforge chat`, `generate` and `eval` as a person runs them, on a small run trained here
//! from the sample data.

#![allow(clippy::unwrap_used)] // tests: a failure should panic with its message

use std::io::Write;
use std::process::{Command, Stdio};

mod common;
use common::{TRAIN_ON_SAMPLE, exec, fails, ok, trained};

fn replies(stdout: &str) -> Vec<&str> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("assistant:"))
        .map(str::trim)
        .collect()
}

#[test]
fn chat_over_stdin_replies_honours_reset_and_saves() {
    let (dir, run) = trained();
    let model = run.to_str().unwrap();
    let script = "Hi!\nWhat is the capital of France?\n/reset\nHow do I make tea?\n/save saved.jsonl\n/exit\nnever read\n";
    let out = ok(
        &[
            "chat",
            "--model",
            model,
            "--temperature",
            "0",
            "--max-new-tokens",
            "24",
        ],
        dir.path(),
        Some(script),
    );
    assert_eq!(replies(&out).len(), 3, "{out}");
    assert!(out.contains("(conversation cleared)"), "{out}");
    // After /reset the history holds the last exchange only.
    let saved = std::fs::read_to_string(dir.path().join("saved.jsonl")).unwrap();
    let conv: serde_json::Value = serde_json::from_str(saved.trim()).unwrap();
    let msgs = conv["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2, "{saved}");
    assert_eq!(msgs[0]["content"], "How do I make tea?");
    // Greedy replies to the same first message are the same whatever came before in other sessions,
    // and sampled sessions repeat exactly with the same seed.
    let again = ok(
        &[
            "chat",
            "--model",
            model,
            "--temperature",
            "0",
            "--max-new-tokens",
            "24",
        ],
        dir.path(),
        Some("Hi!\n"),
    );
    assert_eq!(replies(&again)[0], replies(&out)[0]);
    let sampled = |seed: &str| {
        ok(
            &["chat", "--model", model, "--seed", seed, "--max-new-tokens", "24"],
            dir.path(),
            Some("Hi!\nTell me something.\n"),
        )
    };
    assert_eq!(sampled("5"), sampled("5"));
}

#[test]
fn batched_generation_keeps_input_order_and_equals_single_prompts() {
    let (dir, run) = trained();
    let d = dir.path();
    let model = run.to_str().unwrap();
    let prompts = [
        "Hi!",
        "What is the capital of France and why is it famous for its food?",
        "How many legs does a spider have?",
        "Tea?",
        "Tell me about the weather today in a few words please.",
    ];
    let file: String = prompts
        .iter()
        .map(|p| format!("{}\n", serde_json::json!({ "prompt": p })))
        .collect();
    std::fs::write(d.join("prompts.jsonl"), file).unwrap();
    ok(
        &[
            "generate",
            "--model",
            model,
            "--prompts-file",
            "prompts.jsonl",
            "--batch-size",
            "3",
            "--temperature",
            "0",
            "--max-new-tokens",
            "20",
            "-o",
            "out.jsonl",
        ],
        d,
        None,
    );
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(d.join("out.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), prompts.len());
    for (i, (rec, p)) in lines.iter().zip(prompts).enumerate() {
        assert_eq!(rec["index"], i);
        assert_eq!(rec["prompt"], p);
        assert!(rec["tokens_per_s"].as_f64().unwrap() >= 0.0);
        // The same prompt alone gives the same greedy text.
        let single = ok(
            &[
                "generate",
                "--model",
                model,
                "--prompt",
                p,
                "--temperature",
                "0",
                "--max-new-tokens",
                "20",
            ],
            d,
            None,
        );
        assert_eq!(single.trim(), rec["text"].as_str().unwrap().trim(), "prompt {i}");
    }
}

#[test]
fn stop_strings_cut_the_reply() {
    let (dir, run) = trained();
    let model = run.to_str().unwrap();
    // Raw text, sampled with a fixed seed: long and the same every time.
    let base = [
        "generate",
        "--model",
        model,
        "--prompt",
        "The",
        "--raw",
        "--temperature",
        "1",
        "--top-k",
        "0",
        "--seed",
        "3",
    ];
    let full = ok(
        &[&base[..], &["--max-new-tokens", "40"]].concat(),
        dir.path(),
        None,
    );
    let words: Vec<&str> = full.split_whitespace().collect();
    assert!(words.len() >= 3, "{full}");
    let stop = words[2];
    let cut = ok(
        &[&base[..], &["--max-new-tokens", "40", "--stop", stop]].concat(),
        dir.path(),
        None,
    );
    let at = full.find(stop).unwrap();
    assert_eq!(cut.trim_end(), full[..at].trim_end());
}

#[test]
fn eval_writes_metrics_and_compares_runs() {
    let (dir, run) = trained();
    let d = dir.path();
    let model = run.to_str().unwrap();
    std::fs::write(d.join("tests.jsonl"), "\"Hi!\"\n{\"prompt\": \"Who are you?\"}\n").unwrap();
    let out = ok(
        &[
            "eval",
            "--model",
            model,
            "--data",
            "train.val.jsonl",
            "--prompts",
            "tests.jsonl",
            "--max-samples",
            "8",
            "--max-new-tokens",
            "16",
            "-o",
            "evalA",
        ],
        d,
        None,
    );
    for word in [
        "perplexity",
        "bits per byte",
        "BLEU-4",
        "ROUGE-1 F1",
        "ROUGE-L F1",
        "Who are you?",
    ] {
        assert!(out.contains(word), "missing {word}:\n{out}");
    }
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("evalA/metrics.json")).unwrap()).unwrap();
    let loss = m["loss"].as_f64().unwrap();
    assert!(loss > 0.0 && (m["perplexity"].as_f64().unwrap() - loss.exp()).abs() < 1e-6);
    assert_eq!(m["samples"].as_array().unwrap().len(), 8);
    assert_eq!(m["prompts"].as_array().unwrap().len(), 2);
    // Every token instead of assistant tokens: more tokens scored.
    ok(
        &[
            "eval",
            "--model",
            model,
            "--data",
            "train.val.jsonl",
            "--loss-on",
            "all",
            "--max-samples",
            "0",
            "-o",
            "evalB",
        ],
        d,
        None,
    );
    let b: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("evalB/metrics.json")).unwrap()).unwrap();
    assert!(b["tokens"].as_u64().unwrap() > m["tokens"].as_u64().unwrap());
    let cmp = ok(&["eval", "--compare", "evalA", "evalB"], d, None);
    assert!(
        cmp.contains("evalA") && cmp.contains("evalB") && cmp.contains("loss"),
        "{cmp}"
    );
}

#[test]
fn bad_input_is_a_clear_error() {
    let (dir, run) = trained();
    let d = dir.path();
    let model = run.to_str().unwrap();
    let e = fails(&["generate", "--model", "no/such/model", "--prompt", "x"], d);
    assert!(e.contains("no/such/model") && e.contains("no such file"), "{e}");
    let e = fails(&["generate", "--model", "tok", "--prompt", "x"], d);
    assert!(e.contains("not a model"), "{e}");
    let e = fails(
        &["generate", "--model", model, "--prompt", "x", "--top-p", "1.5"],
        d,
    );
    assert!(e.contains("top-p"), "{e}");
    let e = fails(
        &[
            "generate",
            "--model",
            model,
            "--prompt",
            "x",
            "--temperature",
            "-1",
        ],
        d,
    );
    assert!(e.contains("temperature"), "{e}");
    let e = fails(
        &[
            "generate",
            "--model",
            model,
            "--prompt",
            "x",
            "--checkpoint",
            "999",
        ],
        d,
    );
    assert!(e.contains("no checkpoint at step 999"), "{e}");
    let long = "word ".repeat(200);
    let e = fails(&["generate", "--model", model, "--prompt", &long], d);
    assert!(e.contains("context") && e.contains("--truncate"), "{e}");
    let out = exec(
        &[
            "generate",
            "--model",
            model,
            "--prompt",
            &long,
            "--truncate",
            "--max-new-tokens",
            "5",
        ],
        d,
        None,
    );
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning: prompt 1 cut"));
    // A checkpoint can be picked by step.
    ok(
        &[
            "generate",
            "--model",
            model,
            "--checkpoint",
            "30",
            "--prompt",
            "Hi",
            "--max-new-tokens",
            "4",
        ],
        d,
        None,
    );
}

#[test]
fn lora_runs_adapters_and_merge_agree() {
    let (dir, run) = trained();
    let d = dir.path();
    let base = run.to_str().unwrap();
    let out = ok(
        &[
            &TRAIN_ON_SAMPLE[..],
            &[
                "--mode",
                "lora",
                "--init",
                base,
                "--lora-rank",
                "4",
                "--lora-targets",
                "c_attn,c_fc",
                "--max-steps",
                "20",
                "--lr",
                "1e-2",
                "--adapter-name",
                "alice",
                "--no-eval",
                "-o",
                "lora",
            ],
        ]
        .concat(),
        d,
        None,
    );
    assert!(out.contains("trainable params:"), "{out}");
    let greedy = |model: &str, extra: &[&str]| {
        let mut args = vec![
            "generate",
            "--model",
            model,
            "--prompt",
            "How do I make tea?",
            "--temperature",
            "0",
        ];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--max-new-tokens", "24"]);
        ok(&args, d, None)
    };
    // The LoRA run (base + its best adapter), the base with the adapter named, and the merged
    // folder all generate the same text.
    let from_run = greedy("lora", &[]);
    let with_adapter = greedy(base, &["--adapter", "lora/adapters/alice"]);
    ok(
        &[
            "lora",
            "merge",
            "--base",
            base,
            "--adapter",
            "lora/adapters/alice",
            "-o",
            "merged",
        ],
        d,
        None,
    );
    let merged = greedy("merged", &[]);
    let tc = std::fs::read_to_string(d.join("merged/tokenizer_config.json")).unwrap();
    assert!(
        tc.contains("chat_template"),
        "merge writes what export writes: {tc}"
    );
    assert_eq!(from_run, with_adapter);
    assert_eq!(from_run, merged);
    // Exporting the LoRA run folds its adapter in, as merge does.
    ok(
        &["export", "--model", "lora", "--format", "hf", "-o", "lora-hf"],
        d,
        None,
    );
    assert_eq!(from_run, greedy("lora-hf", &[]));
    let e = fails(
        &[
            "lora",
            "merge",
            "--base",
            base,
            "--adapter",
            "lora/adapters/alice",
            "-o",
            "merged",
        ],
        d,
    );
    assert!(e.contains("--force"), "{e}");
    // In chat, /persona NAME switches to the run's adapter of that name.
    let chat = ok(
        &[
            "chat",
            "--model",
            "lora",
            "--temperature",
            "0",
            "--max-new-tokens",
            "8",
        ],
        d,
        Some("/persona alice\nHi!\n/persona\nHi!\n"),
    );
    assert!(
        chat.contains("(adapter: alice)") && chat.contains("(no adapter)"),
        "{chat}"
    );
    assert_eq!(replies(&chat).len(), 2);
    // QLoRA from the command line, with gradient checkpointing; the run generates.
    let out = ok(
        &[
            &TRAIN_ON_SAMPLE[..],
            &[
                "--mode",
                "qlora",
                "--quant",
                "q8",
                "--grad-checkpoint",
                "--init",
                base,
                "--max-steps",
                "4",
                "--no-eval",
                "-o",
                "qlora",
            ],
        ]
        .concat(),
        d,
        None,
    );
    assert!(out.contains("trainable params:"), "{out}");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("qlora/manifest.json")).unwrap()).unwrap();
    let t = &manifest["config"]["train"];
    assert_eq!(
        (&t["mode"], &t["grad_checkpoint"]),
        (&"qlora".into(), &true.into()),
        "{t}"
    );
    assert!(!greedy("qlora", &[]).trim().is_empty());
}

#[test]
fn ctrl_c_stops_the_reply_not_the_session() {
    use chatforge_model::{GptConfig, init_weights, save_weights};
    // A random model with a long context and the GPT-2-style fixture tokenizer: replies run until
    // interrupted.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = GptConfig {
        n_ctx: 4096,
        n_layer: 2,
        n_head: 4,
        n_kv_head: 4,
        n_embd: 128,
        n_inner: 512,
        dropout: 0.0,
        ..GptConfig::tiny(265)
    };
    let w = init_weights(&cfg, &mut chatforge_data::Rng::new(0)).unwrap();
    let model = d.join("model");
    std::fs::create_dir_all(&model).unwrap();
    save_weights(&w.into_iter().collect(), &model.join("model.safetensors")).unwrap();
    std::fs::write(model.join("config.json"), cfg.to_hf().to_string()).unwrap();
    for f in ["vocab.json", "merges.txt"] {
        std::fs::copy(chatforge_testkit::fixture("gpt2-tiny").join(f), model.join(f)).unwrap();
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_chatforge"))
        .args([
            "chat",
            "--model",
            "model",
            "--max-new-tokens",
            "4000",
            "--temperature",
            "1",
            "--top-k",
            "0",
        ])
        .current_dir(d)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"Tell me a long story\n").unwrap();
    // Interrupt once the reply has begun to stream (4,000 tokens would take far longer).
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut all = Vec::new();
        let mut buf = [0u8; 256];
        let mut told = false;
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
            if !told && all.len() > "assistant: ".len() + 20 {
                told = true;
                let _ = tx.send(());
            }
        }
        String::from_utf8_lossy(&all).to_string()
    });
    rx.recv_timeout(std::time::Duration::from_secs(120)).unwrap();
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    // The session goes on to the next line.
    stdin.write_all(b"/reset\n/exit\n").unwrap();
    drop(stdin);
    let status = child.wait().unwrap();
    let stdout = reader.join().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(stdout.contains("(conversation cleared)"), "{stdout}");
    assert!(stdout.contains("(interrupted)"), "{stdout}");
}
