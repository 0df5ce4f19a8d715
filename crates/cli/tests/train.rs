//! `chatforge train` as a person runs it: a run killed with SIGKILL at an arbitrary moment
//! resumes from its last checkpoint and produces exactly the per-step losses of a run that was
//! never interrupted.

#![allow(clippy::unwrap_used)] // tests: a failure should panic with its message

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{TRAIN_ON_SAMPLE, ok, sample_shards};

/// step → loss, the last record of each step (a resumed run redoes the steps after its checkpoint).
fn losses(run: &Path) -> BTreeMap<u64, f64> {
    let text = std::fs::read_to_string(run.join("logs.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "step")
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect()
}

const CONFIG: &str = r#"
[model]
vocab_size = 0
n_ctx = 32
n_layer = 2
n_head = 2
n_embd = 32
dropout = 0.1

[train]
mode = "sft"
max_steps = 36
batch_size = 4
lr = 3e-3
warmup_steps = 5
eval_every = 6
checkpoint_every = 6
keep_last = 2
seed = 11
"#;

#[test]
fn sigkill_then_resume_gives_identical_losses() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    sample_shards(d, 600);
    std::fs::write(d.join("cfg.toml"), CONFIG).unwrap();
    let args = |out: &str| -> Vec<String> {
        TRAIN_ON_SAMPLE
            .iter()
            .chain(&["-o", out])
            .map(|s| s.to_string())
            .collect()
    };

    let full_out = ok(
        &args("full").iter().map(String::as_str).collect::<Vec<_>>(),
        d,
        None,
    );
    assert!(full_out.contains("36 steps"), "{full_out}");
    let full = losses(&d.join("full"));
    assert_eq!(full.len(), 36);

    // Start the same run and kill it once it is past its second checkpoint, mid-interval.
    let mut child = Command::new(env!("CARGO_BIN_EXE_chatforge"))
        .args(args("killed"))
        .current_dir(d)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while losses(&d.join("killed")).keys().max().copied().unwrap_or(0) < 15 {
        assert!(Instant::now() < deadline, "the run never reached step 15");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    let before = losses(&d.join("killed"));
    assert!(before.len() < 36, "killed too late to test anything");

    let resumed_out = ok(
        &{
            let mut a = args("killed");
            a.push("--resume".into());
            a
        }
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>(),
        d,
        None,
    );
    assert!(resumed_out.contains("resuming from"), "{resumed_out}");
    let after = losses(&d.join("killed"));
    assert_eq!(
        after, full,
        "per-step losses after kill and resume differ from the uninterrupted run"
    );
}
