//! Helpers shared by the CLI's integration tests: run the binary, and a small run trained once
//! per test binary from the sample data.

#![allow(dead_code)] // each test binary uses its own subset

pub mod service;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use chatforge_testkit::root;

pub fn exec(args: &[&str], cwd: &Path, stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chatforge"))
        .args(args)
        .current_dir(cwd)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

pub fn ok(args: &[&str], cwd: &Path, stdin: Option<&str>) -> String {
    let out = exec(args, cwd, stdin);
    assert!(
        out.status.success(),
        "chatforge {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn fails(args: &[&str], cwd: &Path) -> String {
    let out = exec(args, cwd, None);
    assert!(!out.status.success(), "chatforge {args:?} should have failed");
    String::from_utf8(out.stderr).unwrap()
}

/// A 300-token tokenizer trained on `input`, in `d/tok`.
pub fn train_tokenizer(d: &Path, input: &str) {
    ok(
        &[
            "tokenizer",
            "train",
            "--vocab-size",
            "300",
            "--input",
            input,
            "-o",
            "tok",
        ],
        d,
        None,
    );
}

pub const CONFIG: &str = r#"
[model]
vocab_size = 0
n_ctx = 64
n_layer = 2
n_head = 2
n_embd = 32
dropout = 0.0

[train]
mode = "sft"
max_steps = 60
batch_size = 8
lr = 3e-3
warmup_steps = 5
eval_every = 30
checkpoint_every = 30
seed = 3
"#;

/// A trained run shared by the tests of this file: (directory, run path).
pub fn trained() -> &'static (tempfile::TempDir, PathBuf) {
    static RUN: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let sample = root().join("data/sample");
        ok(
            &["data", "import", sample.to_str().unwrap(), "-o", "train.jsonl"],
            d,
            None,
        );
        ok(
            &[
                "tokenizer",
                "train",
                "--vocab-size",
                "500",
                "--input",
                "train.jsonl",
                "-o",
                "tok",
            ],
            d,
            None,
        );
        ok(
            &[
                "data",
                "tokenize",
                "train.jsonl",
                "--tokenizer",
                "tok",
                "-o",
                "train.bin",
            ],
            d,
            None,
        );
        ok(
            &[
                "data",
                "tokenize",
                "train.val.jsonl",
                "--tokenizer",
                "tok",
                "-o",
                "val.bin",
            ],
            d,
            None,
        );
        std::fs::write(d.join("cfg.toml"), CONFIG).unwrap();
        let out = ok(
            &[
                "train",
                "--config",
                "cfg.toml",
                "--data",
                "train.bin",
                "--val",
                "val.bin",
                "--tokenizer",
                "tok",
                "-o",
                "run",
            ],
            d,
            None,
        );
        // Training ends with the evaluation of its best checkpoint.
        assert!(out.contains("perplexity") && out.contains("BLEU-4"), "{out}");
        assert!(d.join("run/eval/metrics.json").is_file());
        let run = d.join("run");
        (dir, run)
    })
}
