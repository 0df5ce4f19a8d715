//! GGUF files of GPT-2 models, as `chatforge export --format gguf` writes them and llama.cpp
//! reads them: tensor names in llama.cpp's scheme, architecture keys under `gpt2.`, the tokenizer
//! under `tokenizer.` (both llama.cpp's `tokenizer.ggml.*` and the whole `tokenizer.huggingface.json`).
//! This module maps names and reads a file back into HF-named f32 weights.

use std::path::Path;

use chatforge_model::io::gguf::{self, Value};
use chatforge_model::{Activation, GptConfig, Tensor, Weights};
use chatforge_tokenizer::ChatTokenizer;

use crate::{Error, Result};

pub use chatforge_model::io::gguf::MAGIC;

/// Whether `path` is a GGUF file (by its magic number).
pub fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    path.is_file()
        && std::fs::File::open(path)
            .and_then(|mut f| f.read_exact(&mut magic))
            .is_ok()
        && u32::from_le_bytes(magic) == MAGIC
}

fn load_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Load {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// Reads a GPT-2 GGUF file: the config from its `gpt2.*` keys, every tensor dequantised to f32
/// under its HF name, and the tokenizer embedded in it.
pub fn read(path: &Path) -> Result<(GptConfig, Weights, ChatTokenizer)> {
    let content = gguf::read_header(path)?;
    let meta = &content.metadata;
    let arch = meta
        .get("general.architecture")
        .and_then(Value::as_str)
        .ok_or_else(|| load_err(path, "no general.architecture key"))?;
    if arch != "gpt2" {
        return Err(load_err(
            path,
            format!("architecture {arch:?}: chatforge reads GPT-2 GGUF files only"),
        ));
    }
    let key = |k: &str| {
        meta.get(&format!("gpt2.{k}"))
            .and_then(Value::as_u64)
            .map(|x| x as usize)
            .ok_or_else(|| load_err(path, format!("no integer key gpt2.{k}")))
    };
    let emb = content
        .tensor("token_embd.weight")
        .ok_or_else(|| load_err(path, "no token_embd.weight tensor"))?;
    let eps = meta
        .get("gpt2.attention.layer_norm_epsilon")
        .and_then(Value::as_f64)
        .unwrap_or(1e-5);
    let flag = |k: &str, default: bool| meta.get(k).and_then(Value::as_bool).unwrap_or(default);
    let n_embd = key("embedding_length")?;
    let n_head = key("attention.head_count")?;
    let config = GptConfig {
        arch: chatforge_model::Arch::Gpt2,
        vocab_size: emb.shape.first().copied().unwrap_or(0),
        n_ctx: key("context_length")?,
        n_layer: key("block_count")?,
        n_head,
        n_kv_head: n_head,
        n_embd,
        n_inner: key("feed_forward_length").unwrap_or(4 * n_embd),
        dropout: 0.0,
        bias: content.tensor("blk.0.attn_qkv.bias").is_some(),
        tie_embeddings: content.tensor("output.weight").is_none(),
        activation: if flag("chatforge.gelu_erf", false) {
            Activation::GeluErf
        } else {
            Activation::GeluTanh
        },
        layer_norm_eps: eps,
        ..GptConfig::small(0)
    };
    config.validate()?;
    let mut file = std::fs::File::open(path).map_err(|e| load_err(path, e.to_string()))?;
    let mut weights = Weights::new();
    for slot in chatforge_model::layout::slots(&config) {
        let (name, transposed) = slot.gguf(config.arch);
        let info = content
            .tensor(&name)
            .ok_or_else(|| load_err(path, format!("no tensor {name}")))?;
        let mut t = Tensor::new(info.shape.clone(), content.read_f32(&mut file, path, info)?)?;
        if transposed {
            t = t.t();
        }
        let shape = slot.shape(&config);
        if t.dims() != shape.as_slice() {
            return Err(load_err(
                path,
                format!("tensor {name} has shape {:?}, expected {shape:?}", t.dims()),
            ));
        }
        weights.insert(slot.name(config.arch), t);
    }
    let tokenizer = match meta.get("tokenizer.huggingface.json").and_then(Value::as_str) {
        Some(json) => ChatTokenizer::from_json(json)?,
        None => {
            return Err(load_err(
                path,
                "no tokenizer.huggingface.json key: pass --tokenizer with the model's tokenizer.json",
            ));
        }
    };
    Ok((config, weights, tokenizer))
}
