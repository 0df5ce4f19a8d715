//! The CLI and the service make runs the same way (`chatforge-pipeline`): the same request, made
//! as `chatforge train` and as `POST /runs/train`, gives the same run — the same resolved config,
//! inputs, per-step losses and weights, bit for bit.

#![allow(clippy::unwrap_used)] // tests: a failure should panic with its message

mod common;

use std::path::Path;

use common::service::*;
use serde_json::{Value, json};

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// Each step's loss and each evaluation's validation loss, in order.
fn losses(run: &Path) -> Vec<(String, u64, f64)> {
    std::fs::read_to_string(run.join("logs.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter_map(|e| {
            let key = match e["event"].as_str()? {
                "step" => "loss",
                "eval" => "val_loss",
                _ => return None,
            };
            Some((key.to_string(), e["step"].as_u64()?, e[key].as_f64()?))
        })
        .collect()
}

/// A manifest without what names the machine's paths (each run's own data/ shards) or timings.
fn comparable(run: &Path) -> Value {
    let mut m = read_json(&run.join("manifest.json"));
    for k in ["data", "val", "init"] {
        m["config"]["train"][k] = Value::Null;
    }
    for k in ["train", "val"] {
        m["inputs"][k]["path"] = Value::Null;
        for f in ["output", "input", "seconds"] {
            m["inputs"][k]["tokenized"][f] = Value::Null;
        }
    }
    m
}

#[test]
fn the_cli_and_the_service_make_the_same_run() {
    let d = data_root();
    let root = d.path().join("root");
    // One tokenizer for both (tokenizer training itself is not bit-deterministic).
    let port = free_port();
    let _server = serve(&root, port, 1, &[], &[]);
    let tok = tokenizer(port);
    std::fs::write(
        root.join("data/train.val.jsonl"),
        std::fs::read_to_string(root.join("data/train.jsonl"))
            .unwrap()
            .lines()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();

    let model =
        json!({"vocab_size": 0, "n_ctx": 64, "n_layer": 2, "n_head": 2, "n_embd": 32, "dropout": 0.1});
    let train = json!({"max_steps": 6, "batch_size": 4, "eval_every": 3, "checkpoint_every": 3, "lr": 3e-3, "seed": 11, "mode": "sft"});
    let body = json!({
        "data": "data/train.jsonl", "val": "data/train.val.jsonl", "tokenizer": tok,
        "model": model, "train": train,
    });
    let r = post(port, "/runs/train", &body);
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let id = r.json()["run_id"].as_str().unwrap().to_string();
    wait_state(port, &id, &["succeeded"], 180);
    let served = root.join("runs").join(&id);

    // The same request on the command line: the config as TOML, the paths as arguments.
    let toml = "[model]\nvocab_size = 0\nn_ctx = 64\nn_layer = 2\nn_head = 2\nn_embd = 32\ndropout = 0.1\n\n[train]\nmax_steps = 6\nbatch_size = 4\neval_every = 3\ncheckpoint_every = 3\nlr = 3e-3\nseed = 11\nmode = \"sft\"\n";
    std::fs::write(d.path().join("same.toml"), toml).unwrap();
    let tok_dir = root.join("tokenizers").join(&tok);
    common::ok(
        &[
            "train",
            "--config",
            "same.toml",
            "--data",
            root.join("data/train.jsonl").to_str().unwrap(),
            "--val",
            root.join("data/train.val.jsonl").to_str().unwrap(),
            "--tokenizer",
            tok_dir.to_str().unwrap(),
            "-o",
            "cli-run",
            "--no-eval",
        ],
        d.path(),
        None,
    );
    let cli = d.path().join("cli-run");

    let (a, b) = (losses(&cli), losses(&served));
    assert_eq!(a.len(), 6 + 2, "{a:?}");
    assert_eq!(a, b, "the same losses, bit for bit");
    assert_eq!(comparable(&cli), comparable(&served));
    assert_eq!(read_json(&cli.join("manifest.json"))["status"], "done");
    for f in [
        "best/model.safetensors",
        "checkpoints/step_000006/optimizer.safetensors",
        "tokenizer.json",
        "config.json",
    ] {
        assert_eq!(
            std::fs::read(cli.join(f)).unwrap(),
            std::fs::read(served.join(f)).unwrap(),
            "{f} differs"
        );
    }
}
