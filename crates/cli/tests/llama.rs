//! The Llama family through the CLI, as a user fine-tunes SmolLM2: an HF folder with its own chat
//! template generates, trains with LoRA and QLoRA (with gradient checkpointing), exports to HF
//! (transformers gives the decoder's logits), GGUF (llama.cpp decodes the same greedy tokens) and
//! merged weights; and `configs/llama-small.toml` pre-trains from scratch.

#![allow(clippy::unwrap_used)] // tests: a failure should panic with its message

mod common;

use chatforge_infer::{Checkpoint, LoadedModel, WeightType};
use chatforge_model::GptConfig;
use chatforge_testkit::{python, run_reference};
use common::{llama_folder, llama_folder_with, ok};
use serde_json::{Value, json};

fn chats(d: &std::path::Path) {
    let text: String = (0..40)
        .map(|i| {
            json!({"messages": [{"role": "user", "content": format!("Boil kettle {i}?")},
                                {"role": "assistant", "content": "The water boils for tea."}]})
            .to_string()
                + "\n"
        })
        .collect();
    std::fs::write(d.join("chats.jsonl"), text).unwrap();
}

/// The model at `path` as chatforge loads it: the logits of every position of `prompt`, and
/// its greedy continuation (`n` tokens) through the KV cache.
fn decode(path: &std::path::Path, prompt: &[u32], n: usize) -> (Vec<f32>, Vec<u32>) {
    let m = LoadedModel::open(path, &Checkpoint::Best, None, WeightType::F32).unwrap();
    let eng = &m.engine;
    let all = eng
        .forward(&mut [&mut eng.new_sequence()], &[prompt], true)
        .unwrap();
    let mut seq = eng.new_sequence();
    let mut logits = eng.forward(&mut [&mut seq], &[prompt], false).unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let next = (0..logits.len()).fold(0, |b, i| if logits[i] > logits[b] { i } else { b }) as u32;
        out.push(next);
        logits = eng.forward(&mut [&mut seq], &[&[next]], false).unwrap();
    }
    (all, out)
}

/// Another implementation's greedy tokens against ours from the model at `path`: equal, or equal
/// up to a step where our two best logits are within `1e-4` of the largest logit (a tie that
/// rounding in another summation order may break either way); `1e-3` for f16 files, whose
/// products llama.cpp computes on activations rounded to f16.
fn same_greedy(path: &std::path::Path, prompt: &[u32], ours: &[u32], theirs: &[u32], what: &str) {
    let tie = if what.ends_with("f16") { 1e-3 } else { 1e-4 };
    assert_eq!(ours.len(), theirs.len(), "{what}");
    let Some(i) = ours.iter().zip(theirs).position(|(a, b)| a != b) else {
        return;
    };
    let m = LoadedModel::open(path, &Checkpoint::Best, None, WeightType::F32).unwrap();
    let eng = &m.engine;
    let context: Vec<u32> = prompt.iter().chain(&ours[..i]).copied().collect();
    let logits = eng
        .forward(&mut [&mut eng.new_sequence()], &[&context], false)
        .unwrap();
    let (a, b) = (logits[ours[i] as usize], logits[theirs[i] as usize]);
    let scale = logits.iter().fold(0f32, |m, x| m.max(x.abs()));
    assert!(
        (a - b).abs() <= tie * scale,
        "{what}: token {i} is {} here and {} there, logits {a} vs {b}: not a tie\n{ours:?}\n{theirs:?}",
        ours[i],
        theirs[i]
    );
}

/// Another implementation's logits (rows of positions) within 1e-3 of ours.
fn logits_within(ours: &[f32], rows: &Value, what: &str) {
    let theirs: Vec<f32> = rows
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32))
        .collect();
    let diff = chatforge_testkit::max_abs_diff(ours, &theirs);
    assert!(diff < 1e-3, "{what}'s logits differ by {diff}");
}

#[test]
fn a_llama_folder_fine_tunes_and_exports_like_smollm2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = GptConfig {
        n_ctx: 128,
        ..GptConfig::llama_tiny(0)
    };
    llama_folder(d, "smol", cfg);
    chats(d);
    // Chat through the model's own template.
    let out = common::exec(
        &[
            "generate",
            "--model",
            "smol",
            "--prompt",
            "Boil the kettle?",
            "--max-new-tokens",
            "4",
            "--temperature",
            "0",
        ],
        d,
        None,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("chat template"), "{err}");

    // LoRA on q, k, v (GPT-2's c_attn names them in Llama), checkpoints in PEFT's layout.
    ok(
        &[
            "train",
            "--init",
            "smol",
            "--data",
            "chats.jsonl",
            "--mode",
            "lora",
            "--max-steps",
            "4",
            "--batch-size",
            "4",
            "-o",
            "lora",
            "--no-eval",
        ],
        d,
        None,
    );
    let ckpt = std::fs::read_dir(d.join("lora/checkpoints"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let adapter: Value =
        serde_json::from_str(&std::fs::read_to_string(ckpt.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(adapter["target_modules"], json!(["q_proj", "k_proj", "v_proj"]));
    assert_eq!(adapter["fan_in_fan_out"], json!(false));
    assert!(
        d.join("lora/tokenizer_config.json").is_file(),
        "the run keeps the chat template"
    );

    // QLoRA (q4) on every linear layer with gradient checkpointing.
    ok(
        &[
            "train",
            "--init",
            "smol",
            "--data",
            "chats.jsonl",
            "--mode",
            "qlora",
            "--lora-targets",
            "all-linear",
            "--grad-checkpoint",
            "--max-steps",
            "3",
            "--batch-size",
            "4",
            "-o",
            "qlora",
            "--no-eval",
        ],
        d,
        None,
    );

    // A merged export; its HF folder in transformers; its GGUF in llama.cpp.
    ok(
        &[
            "export",
            "--model",
            "lora",
            "--checkpoint",
            "latest",
            "--format",
            "hf",
            "-o",
            "hf",
        ],
        d,
        None,
    );
    let hf: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("hf/config.json")).unwrap()).unwrap();
    assert_eq!(hf["model_type"], "llama");
    let tc: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("hf/tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(tc["chat_template"], common::CHATML_TEMPLATE);
    ok(
        &[
            "export",
            "--model",
            "lora",
            "--checkpoint",
            "latest",
            "--format",
            "gguf",
            "-o",
            "model.gguf",
        ],
        d,
        None,
    );
    let prompt: Vec<u32> = vec![31, 7, 120, 64, 5, 201, 88, 17];
    let (got, ours) = decode(&d.join("hf"), &prompt, 16);
    // Our own reading of the GGUF file decodes the same.
    assert_eq!(decode(&d.join("model.gguf"), &prompt, 16).1, ours);
    // `lora merge` writes the same model the merged export is; `eval` and the pipeline take the
    // Llama family as they take GPT-2.
    let ckpt = ckpt.to_str().unwrap();
    ok(
        &[
            "lora",
            "merge",
            "--base",
            "smol",
            "--adapter",
            ckpt,
            "-o",
            "merged",
        ],
        d,
        None,
    );
    assert_eq!(decode(&d.join("merged"), &prompt, 16).1, ours);
    let out = ok(
        &[
            "eval",
            "--model",
            "lora",
            "--checkpoint",
            "latest",
            "--data",
            "chats.jsonl",
            "--max-samples",
            "2",
        ],
        d,
        None,
    );
    assert!(out.contains("perplexity"), "{out}");
    let out = ok(
        &[
            "pipeline",
            "--init",
            "smol",
            "--data",
            "chats.jsonl",
            "--max-steps",
            "3",
            "--batch-size",
            "4",
            "-o",
            "pipe",
            "--export",
            "gguf",
        ],
        d,
        None,
    );
    assert!(d.join("pipe/export").is_dir(), "{out}");
    let Some(py) = python() else { return };
    std::fs::write(
        d.join("req.json"),
        json!({"ids": [prompt], "texts": [], "conversations": []}).to_string(),
    )
    .unwrap();
    let theirs: Value = serde_json::from_str(&run_reference(
        &py,
        "export_check.py",
        &[
            "hf",
            d.join("hf").to_str().unwrap(),
            d.join("req.json").to_str().unwrap(),
        ],
    ))
    .unwrap();
    logits_within(&got, &theirs["logits"][0], "transformers");
    let cpp = llama_cpp(&py, &d.join("model.gguf"), &prompt, 16, "llama");
    same_greedy(&d.join("hf"), &prompt, &ours, &cpp, "llama.cpp");

    // ONNX with its KV cache: onnxruntime gives the decoder's logits and greedy tokens; our
    // interpreter runs the graph against the decoder (`export verify`); chatforge loads the export.
    ok(
        &[
            "export",
            "--model",
            "lora",
            "--checkpoint",
            "latest",
            "--format",
            "onnx",
            "-o",
            "onnx",
        ],
        d,
        None,
    );
    let out = ok(&["export", "verify", "onnx"], d, None);
    assert!(out.contains("ran the graph"), "{out}");
    std::fs::write(
        d.join("req.json"),
        json!({"prompt": prompt, "new": 16}).to_string(),
    )
    .unwrap();
    let ort: Value = serde_json::from_str(&run_reference(
        &py,
        "export_check.py",
        &[
            "onnx",
            d.join("onnx").to_str().unwrap(),
            d.join("req.json").to_str().unwrap(),
        ],
    ))
    .unwrap();
    let tokens: Vec<u32> = ort["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    same_greedy(&d.join("hf"), &prompt, &ours, &tokens, "onnxruntime");
    logits_within(&got, &ort["logits"], "onnxruntime");
    assert!(
        ort["batch2_diff"].as_f64().unwrap() < 1e-4,
        "{}",
        ort["batch2_diff"]
    );
    assert_eq!(decode(&d.join("onnx"), &prompt, 16).1, ours);
}

/// llama.cpp's greedy continuation of `prompt` from a GGUF file of `arch`.
fn llama_cpp(
    py: &std::path::PathBuf,
    file: &std::path::Path,
    prompt: &[u32],
    n: usize,
    arch: &str,
) -> Vec<u32> {
    let req = file.with_extension("req.json");
    std::fs::write(&req, json!({"prompt": prompt, "new": n}).to_string()).unwrap();
    let cpp: Value = serde_json::from_str(&run_reference(
        py,
        "export_check.py",
        &["llamacpp", file.to_str().unwrap(), req.to_str().unwrap()],
    ))
    .unwrap();
    assert_eq!(cpp["architecture"], arch);
    cpp["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// GGUF files of a Qwen2 (q/k/v biases, NeoX rotation in llama.cpp), of a Llama with Llama 3
/// rope scaling and an untied head, and of a Llama with TinyLlama's kind of tokenizer
/// (SentencePiece's BPE with byte fallback), in f32 and f16: llama.cpp decodes the greedy tokens
/// chatforge decodes from the same file.
#[test]
fn llama_cpp_decodes_qwen2_and_llama3_ggufs_as_chatforge_does() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let qwen = GptConfig {
        arch: chatforge_model::Arch::Qwen2,
        bias: true,
        n_ctx: 128,
        ..GptConfig::llama_tiny(0)
    };
    let llama3 = GptConfig {
        n_ctx: 128,
        n_kv_head: 4,
        tie_embeddings: false,
        rope_theta: 500_000.0,
        rope_scaling: Some(chatforge_model::Llama3Scaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 32,
        }),
        ..GptConfig::llama_tiny(0)
    };
    // TinyLlama's tokenizer: SentencePiece's BPE with byte fallback (llama.cpp's `llama` vocabulary).
    run_reference(&py, "chat_templates.py", &[d.join("templates").to_str().unwrap()]);
    let tiny = GptConfig {
        n_ctx: 128,
        ..GptConfig::llama_tiny(0)
    };
    llama_folder_with(d, "tinyllama", tiny, &d.join("templates/tinyllama"));
    let prompt: Vec<u32> = vec![31, 7, 120, 64, 5, 201, 88, 17, 42, 3, 99, 250, 12];
    for (name, cfg, arch) in [
        ("qwen", Some(qwen), "qwen2"),
        ("llama3", Some(llama3), "llama"),
        ("tinyllama", None, "llama"),
    ] {
        if let Some(cfg) = cfg {
            llama_folder(d, name, cfg);
        }
        for quant in ["f32", "f16"] {
            let file = d.join(format!("{name}-{quant}.gguf"));
            let f = file.to_str().unwrap();
            ok(
                &[
                    "export", "--model", name, "--format", "gguf", "--quant", quant, "-o", f,
                ],
                d,
                None,
            );
            let (_, ours) = decode(&file, &prompt, 12);
            let cpp = llama_cpp(&py, &file, &prompt, 12, arch);
            same_greedy(&file, &prompt, &ours, &cpp, &format!("{name} {quant}"));
        }
    }
}

#[test]
fn configs_llama_small_pretrains_from_scratch_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text: String = (0..300)
        .map(|i| format!("The kettle {i} boils the water for tea.\n\n"))
        .collect();
    std::fs::write(d.join("corpus.txt"), &text).unwrap();
    common::train_tokenizer(d, "corpus.txt");
    let config = chatforge_testkit::root().join("configs/llama-small.toml");
    let train = |steps: &str, extra: &[&str]| {
        let mut args = vec![
            "train",
            "--config",
            config.to_str().unwrap(),
            "--data",
            "corpus.txt",
            "--tokenizer",
            "tok",
            "--max-steps",
            steps,
            "--batch-size",
            "4",
            "-o",
            "run",
            "--no-eval",
        ];
        args.extend_from_slice(extra);
        ok(&args, d, None)
    };
    train("4", &[]);
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("run/config.json")).unwrap()).unwrap();
    assert_eq!(cfg["model_type"], "llama", "{cfg}");
    assert_eq!(cfg["num_key_value_heads"], 2, "{cfg}");
    // A longer run resumes from the last checkpoint and logs each step once.
    train("6", &["--resume"]);
    let log = std::fs::read_to_string(d.join("run/logs.jsonl")).unwrap();
    let steps: Vec<u64> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == "step")
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=6).collect::<Vec<_>>(), "{log}");
    let out = common::exec(
        &[
            "generate",
            "--model",
            "run",
            "--checkpoint",
            "latest",
            "--prompt",
            "The kettle",
            "--max-new-tokens",
            "5",
        ],
        d,
        None,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
