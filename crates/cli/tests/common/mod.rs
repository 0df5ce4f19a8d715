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

/// A one-layer model pre-trained for two steps: enough to be a model, fast to make.
const TINY_PRETRAIN: &str = "[model]\nvocab_size = 0\nn_ctx = 64\nn_layer = 1\nn_head = 2\nn_embd = 16\n\n[train]\nmode = \"pretrain\"\nmax_steps = 2\nbatch_size = 2\n";

/// A tiny GPT-2 in an HF folder (`d/hf`), as a user would find it on the Hub, and a JSON file
/// of instruction records (`d/chats.json`) to fine-tune it on.
pub fn tiny_model_and_chats(d: &Path) {
    let text: String = (0..200)
        .map(|i| format!("The kettle {i} boils the water for tea.\n\n"))
        .collect();
    std::fs::write(d.join("corpus.txt"), &text).unwrap();
    std::fs::write(d.join("cfg.toml"), TINY_PRETRAIN).unwrap();
    train_tokenizer(d, "corpus.txt");
    ok(
        &[
            "train",
            "--config",
            "cfg.toml",
            "--data",
            "corpus.txt",
            "--tokenizer",
            "tok",
            "-o",
            "base",
            "--no-eval",
        ],
        d,
        None,
    );
    ok(
        &["export", "--model", "base", "--format", "hf", "-o", "hf"],
        d,
        None,
    );
    let chats: Vec<serde_json::Value> = (0..30)
        .map(|i| serde_json::json!({"instruction": format!("Boil kettle {i}?"), "output": "The water boils for tea."}))
        .collect();
    std::fs::write(d.join("chats.json"), serde_json::to_string(&chats).unwrap()).unwrap();
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

/// `chatforge train` on what [`sample_shards`] makes, with `cfg.toml` (the arguments every test
/// that trains on the sample corpus starts with).
pub const TRAIN_ON_SAMPLE: [&str; 7] = [
    "train",
    "--config",
    "cfg.toml",
    "--data",
    "train.bin",
    "--val",
    "val.bin",
];

/// In `d`: the sample conversations (`train.jsonl`, `train.val.jsonl`), a tokenizer of `vocab`
/// tokens trained on them (`tok`) and their shards (`train.bin`, `val.bin`).
pub fn sample_shards(d: &Path, vocab: usize) {
    let sample = root().join("data/sample");
    let vocab = vocab.to_string();
    for args in [
        vec!["data", "import", sample.to_str().unwrap(), "-o", "train.jsonl"],
        vec![
            "tokenizer",
            "train",
            "--vocab-size",
            &vocab,
            "--input",
            "train.jsonl",
            "-o",
            "tok",
        ],
        vec![
            "data",
            "tokenize",
            "train.jsonl",
            "--tokenizer",
            "tok",
            "-o",
            "train.bin",
        ],
        vec![
            "data",
            "tokenize",
            "train.val.jsonl",
            "--tokenizer",
            "tok",
            "-o",
            "val.bin",
        ],
    ] {
        ok(&args, d, None);
    }
}

/// A trained run shared by the tests of this file: (directory, run path).
pub fn trained() -> &'static (tempfile::TempDir, PathBuf) {
    static RUN: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        sample_shards(d, 500);
        std::fs::write(d.join("cfg.toml"), CONFIG).unwrap();
        let out = ok(
            &[&TRAIN_ON_SAMPLE[..], &["--tokenizer", "tok", "-o", "run"]].concat(),
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

/// SmolLM2-Instruct's chat template (ChatML with a default system prompt).
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// A tiny random Llama in an HF folder laid out as SmolLM2-Instruct's (`d/NAME`): GPT-2's
/// byte-level tokenizer with ChatML's special tokens added, its chat template and `eos_token` in
/// `tokenizer_config.json`, grouped-query attention, `generation_config.json`. Returns the
/// folder.
pub fn llama_folder(d: &Path, name: &str, cfg: chatforge_model::GptConfig) -> PathBuf {
    let dir = d.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let tok = chatforge_tokenizer::ChatTokenizer::load(&chatforge_testkit::fixture("gpt2-tiny")).unwrap();
    let base = tok.vocab_size();
    let mut json: serde_json::Value = serde_json::from_str(&tok.to_json().unwrap()).unwrap();
    for (i, t) in ["<|im_start|>", "<|im_end|>"].iter().enumerate() {
        json["added_tokens"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({
                "id": base + i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": true
            }));
    }
    std::fs::write(dir.join("tokenizer.json"), json.to_string()).unwrap();
    let config = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast", "chat_template": CHATML_TEMPLATE,
        "bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "model_max_length": cfg.n_ctx,
    });
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
    llama_weights(&dir, cfg)
}

/// [`llama_folder`] with the tokenizer (`tokenizer.json`, `tokenizer_config.json`) in `tok`: the
/// model's vocabulary is the tokenizer's.
pub fn llama_folder_with(d: &Path, name: &str, cfg: chatforge_model::GptConfig, tok: &Path) -> PathBuf {
    let dir = d.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(tok.join(f), dir.join(f)).unwrap();
    }
    llama_weights(&dir, cfg)
}

/// `config.json`, `generation_config.json` and random weights for `cfg` with the vocabulary of the
/// tokenizer in `dir` (its `bos_token` and `eos_token` as the model's).
fn llama_weights(dir: &Path, cfg: chatforge_model::GptConfig) -> PathBuf {
    use chatforge_model::GptConfig;
    let tok = chatforge_tokenizer::ChatTokenizer::load(dir).unwrap();
    let tc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap()).unwrap();
    let id = |key: &str| tc[key].as_str().and_then(|t| tok.token_to_id(t));
    let (bos, eos) = (id("bos_token"), id("eos_token"));
    let cfg = GptConfig {
        vocab_size: tok.vocab_size(),
        ..cfg
    };
    let mut hf = cfg.to_hf();
    hf["bos_token_id"] = serde_json::json!(bos);
    hf["eos_token_id"] = serde_json::json!(eos);
    std::fs::write(dir.join("config.json"), hf.to_string()).unwrap();
    std::fs::write(
        dir.join("generation_config.json"),
        serde_json::json!({"bos_token_id": bos, "eos_token_id": eos}).to_string(),
    )
    .unwrap();
    // Larger than the default initialisation: a peaked next-token distribution, so greedy
    // decoding does not hinge on near-ties when compared with other implementations.
    let mut rng = chatforge_data::Rng::new(7);
    let weights = chatforge_model::init_weights(&cfg, &mut rng).unwrap();
    let weights: std::collections::BTreeMap<String, chatforge_model::Tensor> = weights
        .into_iter()
        .map(|(k, t)| {
            let data: Vec<f32> = t
                .data()
                .iter()
                .map(|&x| {
                    if t.rank() > 1 {
                        x * 15.0
                    } else {
                        x + (rng.normal() * 0.1) as f32
                    }
                })
                .collect();
            (k, chatforge_model::Tensor::new(t.dims(), data).unwrap())
        })
        .collect();
    chatforge_model::save_weights(&weights, &dir.join("model.safetensors")).unwrap();
    dir.to_path_buf()
}
