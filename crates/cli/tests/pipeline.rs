//! `chatforge pipeline` as the seeds' users run it: seed 004's one command (fine-tune a model
//! folder, export, verify, answer the sample prompts through the export), seed 000's "train a
//! tokenizer only if none exists", and the run carrying its model's tokenizer and generation
//! config so `generate` needs no `--tokenizer`.

#![allow(clippy::unwrap_used)] // tests: a failure should panic with its message

mod common;

use common::{ok, tiny_model_and_chats};

#[test]
fn seed_004_fine_tune_export_and_answer_in_one_command() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tiny_model_and_chats(d);
    // The model folder brings decoding settings; the run must keep them.
    let gen_file = d.join("hf/generation_config.json");
    let mut generation: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&gen_file).unwrap()).unwrap();
    generation["repetition_penalty"] = serde_json::json!(1.25);
    std::fs::write(&gen_file, generation.to_string()).unwrap();

    let out = ok(
        &[
            "pipeline",
            "--init",
            "hf",
            "--data",
            "chats.json",
            "--epochs",
            "1",
            "--batch-size",
            "2",
            "--export",
            "gguf",
            "-o",
            "out",
        ],
        d,
        None,
    );
    assert!(out.contains("using the model's tokenizer"), "{out}");
    assert!(out.contains("fine-tuning"), "{out}");
    assert!(
        out.contains("the export answers 4 of 4 prompts as the run does"),
        "{out}"
    );
    assert!(d.join("out/export/model.gguf").is_file());
    let carried: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("out/generation_config.json")).unwrap())
            .unwrap();
    assert_eq!(carried["repetition_penalty"], 1.25);

    // The run needs no --tokenizer to talk (seed 004's fine-tune → chat path).
    let reply = ok(
        &[
            "generate",
            "--model",
            "out",
            "--prompt",
            "Boil kettle 3?",
            "--max-new-tokens",
            "5",
        ],
        d,
        None,
    );
    assert!(!reply.trim().is_empty());

    // ONNX: exported and verified.
    let out = ok(
        &[
            "pipeline",
            "--init",
            "hf",
            "--data",
            "chats.json",
            "--max-steps",
            "2",
            "--batch-size",
            "2",
            "--export",
            "onnx",
            "-o",
            "out-onnx",
        ],
        d,
        None,
    );
    assert!(out.contains("verified: opset"), "{out}");
    assert!(out.contains("ran the graph on"), "{out}");
    assert!(
        out.contains("the export answers 4 of 4 prompts as the run does"),
        "{out}"
    );
    assert!(d.join("out-onnx/export/model.onnx").is_file());
}

#[test]
fn the_pipeline_trains_a_tokenizer_only_if_none_exists() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sample = chatforge_testkit::root().join("data/sample");
    let args = [
        "pipeline",
        "--quick",
        "--data",
        sample.to_str().unwrap(),
        "--max-steps",
        "3",
        "--seed",
        "11",
        "-o",
        "p",
    ];
    let first = ok(&args, d, None);
    assert!(!first.contains("reusing the tokenizer"), "{first}");
    let made = std::fs::read(d.join("p/tokenizer/tokenizer.json")).unwrap();
    let second = ok(&args, d, None);
    assert!(second.contains("reusing the tokenizer"), "{second}");
    assert_eq!(std::fs::read(d.join("p/tokenizer/tokenizer.json")).unwrap(), made);
    assert!(second.contains("3 steps"), "{second}");
    // A JSON config (Hugging Face names), a given tokenizer and the learning rate.
    std::fs::write(
        d.join("cfg.json"),
        r#"{"num_hidden_layers": 1, "hidden_size": 16, "num_attention_heads": 2, "n_positions": 32, "max_steps": 2, "batch_size": 2}"#,
    )
    .unwrap();
    let third = ok(
        &[
            "pipeline",
            "--data",
            sample.to_str().unwrap(),
            "--config",
            "cfg.json",
            "--tokenizer",
            "p/tokenizer",
            "--lr",
            "0.004",
            "-o",
            "q",
        ],
        d,
        None,
    );
    assert!(
        third.contains("using the tokenizer") && third.contains("2 steps"),
        "{third}"
    );
    let manifest = std::fs::read_to_string(d.join("q/manifest.json")).unwrap();
    assert!(
        manifest.contains("0.004") && manifest.contains("\"n_layer\": 1"),
        "{manifest}"
    );
}
