//! Every run writes TensorBoard event files that TensorBoard's own reader (the `tensorboard`
//! package) loads: the same losses, learning rates, gradient norms and speeds as `logs.jsonl`,
//! each step once even after a crash and a resume.

#![allow(clippy::unwrap_used)] // tests: a failure should panic with its message

mod common;

use std::collections::BTreeMap;

use common::{ok, train_tokenizer};
use serde_json::Value;

const CONFIG: &str = "[model]\nvocab_size = 0\nn_ctx = 32\nn_layer = 1\nn_head = 2\nn_embd = 16\n\n[train]\nmode = \"pretrain\"\nbatch_size = 2\neval_every = 2\ncheckpoint_every = 2\n";

#[test]
fn tensorboard_reads_what_the_run_logged() {
    let Some(py) = chatforge_testkit::python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text: String = (0..100)
        .map(|i| format!("Tea number {i} is brewed in a pot.\n\n"))
        .collect();
    std::fs::write(d.join("corpus.txt"), text).unwrap();
    std::fs::write(d.join("cfg.toml"), CONFIG).unwrap();
    train_tokenizer(d, "corpus.txt");
    let train = |steps: &str, resume: bool| {
        let mut args = vec![
            "train",
            "--config",
            "cfg.toml",
            "--data",
            "corpus.txt",
            "--val",
            "corpus.txt",
        ];
        args.extend([
            "--tokenizer",
            "tok",
            "--max-steps",
            steps,
            "-o",
            "run",
            "--no-eval",
        ]);
        if resume {
            args.push("--resume");
        }
        ok(&args, d, None);
    };
    // A run killed after step 6 whose newest checkpoint is step 4 (the step-6 one lost): the
    // resumed attempt logs 5 and 6 again; TensorBoard, like logs.jsonl, keeps them once.
    train("6", false);
    std::fs::remove_dir_all(d.join("run/checkpoints/step_000006")).unwrap();
    train("8", true);

    let out = chatforge_testkit::run_reference(
        &py,
        "tensorboard_read.py",
        &[d.join("run/tensorboard").to_str().unwrap()],
    );
    let tb: BTreeMap<String, Vec<(u64, f64)>> =
        serde_json::from_str::<BTreeMap<String, Vec<(u64, f64)>>>(&out).unwrap();
    let log = std::fs::read_to_string(d.join("run/logs.jsonl")).unwrap();
    let events: Vec<Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let series = |event: &str, field: &str| -> Vec<(u64, f64)> {
        events
            .iter()
            .filter(|e| e["event"] == event)
            .map(|e| (e["step"].as_u64().unwrap(), e[field].as_f64().unwrap()))
            .collect()
    };
    for (tag, event, field) in [
        ("train/loss", "step", "loss"),
        ("train/learning_rate", "step", "lr"),
        ("train/grad_norm", "step", "grad_norm"),
        ("train/tokens_per_s", "step", "tokens_per_s"),
        ("val/loss", "eval", "val_loss"),
    ] {
        let want = series(event, field);
        let got = &tb[tag];
        assert_eq!(
            got.iter().map(|p| p.0).collect::<Vec<_>>(),
            want.iter().map(|p| p.0).collect::<Vec<_>>(),
            "{tag} steps"
        );
        for ((_, g), (step, w)) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                "{tag} at step {step}: {g} vs {w}"
            );
        }
    }
    assert_eq!(
        tb["train/loss"].iter().map(|p| p.0).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6, 7, 8]
    );
    assert_eq!(std::fs::read_dir(d.join("run/tensorboard")).unwrap().count(), 2);
}
