//! Preference data and training from the command line, as a user would run them: TRL-schema and
//! HH-RLHF files imported as pairs, shown and counted, malformed pairs named by line, and
//! `train --mode dpo|orpo` (full and LoRA) from an HF folder, with TRL's metrics in the log.

#![allow(clippy::unwrap_used)] // tests: a failure should panic with its message

mod common;

use common::{fails, ok, tiny_model_and_chats};

fn write_pairs(d: &std::path::Path) {
    let pairs: String = (0..40)
        .map(|i| {
            serde_json::json!({
                "prompt": [{"role": "user", "content": format!("Boil kettle {i}?")}],
                "chosen": [{"role": "assistant", "content": "The water boils for tea."}],
                "rejected": [{"role": "assistant", "content": "No kettle here."}],
            })
            .to_string()
                + "\n"
        })
        .collect();
    std::fs::write(d.join("pairs.jsonl"), pairs).unwrap();
    let hh = [
        serde_json::json!({"chosen": "\n\nHuman: Hi\n\nAssistant: Hello! How can I help?", "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."}),
        serde_json::json!({"chosen": "\n\nHuman: Tea?\n\nAssistant: Yes.\n\nHuman: Milk?\n\nAssistant: A little.", "rejected": "\n\nHuman: Tea?\n\nAssistant: Yes.\n\nHuman: Milk?\n\nAssistant: Never ask."}),
    ];
    let hh: String = hh.iter().map(|v| v.to_string() + "\n").collect();
    std::fs::write(d.join("hh.jsonl"), hh).unwrap();
}

#[test]
fn preference_files_import_show_and_train() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tiny_model_and_chats(d);
    write_pairs(d);
    let out = ok(
        &[
            "data",
            "import",
            "pairs.jsonl",
            "-o",
            "p.jsonl",
            "--val-split",
            "0.2",
        ],
        d,
        None,
    );
    assert!(
        out.contains("preference — 40 records → 40 preference pairs"),
        "{out}"
    );
    assert!(out.contains("wrote 32 training preference pairs"), "{out}");
    let stats = ok(&["data", "stats", "p.jsonl"], d, None);
    assert!(stats.contains("pairs          32"), "{stats}");
    let show = ok(
        &["data", "show", "p.jsonl", "--tokenizer", "tok", "-n", "1"],
        d,
        None,
    );
    assert!(
        show.contains("pair 1 · chosen") && show.contains("pair 1 · rejected"),
        "{show}"
    );
    assert!(show.contains("⟦The water boils for tea."), "{show}");

    // HH-RLHF transcripts split at the last turn both share.
    let out = ok(
        &[
            "data",
            "import",
            "hh.jsonl",
            "-o",
            "hh_out.jsonl",
            "--val-split",
            "0",
        ],
        d,
        None,
    );
    assert!(out.contains("2 preference pairs"), "{out}");
    let first: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(d.join("hh_out.jsonl"))
            .unwrap()
            .lines()
            .nth(1)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(first["messages"].as_array().unwrap().len(), 3, "{first}");
    assert_eq!(first["chosen"][0]["content"], "A little.");

    // OpenAssistant trees: pairs from sibling replies ordered by rank.
    let oasst = chatforge_testkit::root().join("fixtures/formats/oasst_messages.jsonl");
    let out = ok(
        &[
            "data",
            "import",
            oasst.to_str().unwrap(),
            "-o",
            "oa.jsonl",
            "--pairs-from-ranks",
            "--val-split",
            "0",
        ],
        d,
        None,
    );
    assert!(out.contains("→ 1 preference pairs"), "{out}");

    // A malformed pair is named by its file and line.
    std::fs::write(
        d.join("bad.jsonl"),
        "{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\"}\n{\"prompt\": \"a\", \"chosen\": \"\", \"rejected\": \"c\"}\n",
    )
    .unwrap();
    let err = fails(&["data", "import", "bad.jsonl", "-o", "x.jsonl"], d);
    assert!(
        err.contains("bad.jsonl, line 2") && err.contains("no chosen reply"),
        "{err}"
    );
    // Pairs are not conversations: SFT on them is refused, and DPO on conversations.
    let err = fails(
        &[
            "train",
            "--mode",
            "sft",
            "--init",
            "hf",
            "--data",
            "p.jsonl",
            "--max-steps",
            "1",
            "-o",
            "x",
        ],
        d,
    );
    assert!(err.contains("holds preference pairs"), "{err}");
    let err = fails(
        &[
            "train",
            "--mode",
            "dpo",
            "--init",
            "hf",
            "--data",
            "chats.json",
            "--max-steps",
            "1",
            "-o",
            "y",
        ],
        d,
    );
    assert!(err.contains("trains on preference pairs"), "{err}");

    for (run, extra) in [
        ("dpo", vec!["--mode", "dpo", "--beta", "0.2"]),
        (
            "dpo_lora",
            vec!["--mode", "dpo", "--adapter", "lora", "--lr", "1e-2"],
        ),
        (
            "dpo_qlora",
            vec!["--mode", "dpo", "--adapter", "qlora", "--quant", "q8"],
        ),
        ("orpo", vec!["--mode", "orpo", "--beta", "0.1"]),
    ] {
        let mut args = vec![
            "train",
            "--init",
            "hf",
            "--data",
            "p.jsonl",
            "--val",
            "p.val.jsonl",
            "--max-steps",
            "6",
            "-o",
            run,
        ];
        args.extend(extra);
        let out = ok(&args, d, None);
        assert!(out.contains("reward accuracy"), "{run}: {out}");
        // The starting model's and the tuned model's replies to validation prompts.
        assert!(
            out.contains("before → after preference tuning") && out.contains("user: Boil kettle"),
            "{run}: {out}"
        );
        let log = std::fs::read_to_string(d.join(run).join("logs.jsonl")).unwrap();
        let eval: serde_json::Value = log
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .rfind(|e| e["event"] == "eval")
            .unwrap();
        for key in [
            "rewards/chosen",
            "rewards/rejected",
            "rewards/accuracies",
            "rewards/margins",
            "logps/chosen",
            "logps/rejected",
        ] {
            assert!(eval[key].is_number(), "{run}: {key} missing from {eval}");
        }
        // The evaluation after training scores the chosen replies.
        assert!(d.join(run).join("eval/metrics.json").is_file(), "{run}: {out}");
    }
    assert!(d.join("dpo/reference/train.json").is_file());
    // TensorBoard's own reader finds the metrics under train/ and val/, as logs.jsonl has them.
    if let Some(py) = chatforge_testkit::python() {
        let tb = d.join("dpo/tensorboard");
        let out = chatforge_testkit::run_reference(&py, "tensorboard_read.py", &[tb.to_str().unwrap()]);
        let tb: serde_json::Value = serde_json::from_str(&out).unwrap();
        let log = std::fs::read_to_string(d.join("dpo/logs.jsonl")).unwrap();
        let last = |event: &str| -> serde_json::Value {
            log.lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .rfind(|e| e["event"] == event)
                .unwrap()
        };
        for (tag, event, key) in [
            ("train/rewards/accuracies", "step", "rewards/accuracies"),
            ("train/rewards/margins", "step", "rewards/margins"),
            ("val/rewards/chosen", "eval", "rewards/chosen"),
            ("val/logps/rejected", "eval", "logps/rejected"),
        ] {
            let series = tb[tag].as_array().unwrap_or_else(|| panic!("no {tag} in {tb}"));
            let (step, value) = (
                series.last().unwrap()[0].as_u64().unwrap(),
                series.last().unwrap()[1].as_f64().unwrap(),
            );
            let e = last(event);
            assert_eq!(step, e["step"].as_u64().unwrap(), "{tag}");
            let want = e[key].as_f64().unwrap();
            assert!(
                (value - want).abs() <= 1e-5 * want.abs().max(1.0),
                "{tag}: {value} vs {want}"
            );
        }
    }
    assert!(d.join("dpo_lora/best/adapter_config.json").is_file());
}

#[test]
fn the_service_runs_a_dpo_job_and_reports_its_metrics() {
    use common::service::{get, post, serve, wait_state};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tiny_model_and_chats(d);
    write_pairs(d);
    let root = d.join("root");
    std::fs::create_dir_all(root.join("data")).unwrap();
    ok(
        &[
            "data",
            "import",
            "pairs.jsonl",
            "-o",
            "root/data/p.jsonl",
            "--val-split",
            "0.2",
        ],
        d,
        None,
    );
    std::fs::rename(d.join("hf"), root.join("hf")).unwrap();
    let port = common::service::free_port();
    let _server = serve(&root, port, 1, &[], &[]);
    let body = serde_json::json!({
        "mode": "dpo",
        "data": "data/p.jsonl",
        "val": "data/p.val.jsonl",
        "init": "hf",
        "train": {"max_steps": 4, "batch_size": 4, "eval_every": 4, "checkpoint_every": 4, "beta": 0.2, "adapter": "lora"}
    });
    let r = post(port, "/runs/train", &body);
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let id = r.json()["run_id"].as_str().unwrap().to_string();
    let done = wait_state(port, &id, &["succeeded", "failed"], 120);
    assert_eq!(done["state"], "succeeded", "{done}");
    let status = get(port, &format!("/runs/{id}")).json();
    let p = &status["progress"];
    for key in ["rewards/accuracies", "rewards/margins", "logps/chosen"] {
        assert!(p["metrics"][key].is_number(), "{key} missing from {status}");
        assert!(p["val_metrics"][key].is_number(), "{key} missing from {status}");
    }
    // A bad setting is the job's error, named: label smoothing must be below 0.5.
    let mut bad = body.clone();
    bad["train"]["label_smoothing"] = serde_json::json!(0.7);
    let r = post(port, "/runs/train", &bad);
    assert_eq!(r.status, 422, "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains("label_smoothing"));
}
