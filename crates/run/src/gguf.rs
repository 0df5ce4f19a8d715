//! GGUF files of GPT-2 models, as `chatforge export --format gguf` writes them and llama.cpp
//! reads them: tensor names in llama.cpp's scheme, architecture keys under `gpt2.`, the tokenizer
//! under `tokenizer.` (both llama.cpp's `tokenizer.ggml.*` and the whole `tokenizer.huggingface.json`).
//! This module maps names and reads a file back into HF-named f32 weights.

use std::path::Path;

use chatforge_model::io::gguf::{self, Value};
use chatforge_model::{Activation, Arch, GptConfig, Llama3Scaling, Tensor, Weights};
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
    let arch = match arch {
        "gpt2" => Arch::Gpt2,
        "llama" => Arch::Llama,
        "qwen2" => Arch::Qwen2,
        other => {
            return Err(load_err(
                path,
                format!("architecture {other:?}: chatforge reads gpt2, llama and qwen2 GGUF files"),
            ));
        }
    };
    let a = arch.name();
    let key = |k: &str| {
        meta.get(&format!("{a}.{k}"))
            .and_then(Value::as_u64)
            .map(|x| x as usize)
            .ok_or_else(|| load_err(path, format!("no integer key {a}.{k}")))
    };
    let float = |k: &str| meta.get(&format!("{a}.{k}")).and_then(Value::as_f64);
    let emb = content
        .tensor("token_embd.weight")
        .ok_or_else(|| load_err(path, "no token_embd.weight tensor"))?;
    let flag = |k: &str, default: bool| meta.get(k).and_then(Value::as_bool).unwrap_or(default);
    let n_embd = key("embedding_length")?;
    let n_head = key("attention.head_count")?;
    let base = GptConfig {
        arch,
        vocab_size: emb.shape.first().copied().unwrap_or(0),
        n_ctx: key("context_length")?,
        n_layer: key("block_count")?,
        n_head,
        n_kv_head: key("attention.head_count_kv").unwrap_or(n_head),
        n_embd,
        n_inner: key("feed_forward_length").unwrap_or(4 * n_embd),
        dropout: 0.0,
        tie_embeddings: content.tensor("output.weight").is_none(),
        ..GptConfig::small(0)
    };
    let config = if arch.is_llama() {
        // Llama 3's rope scaling: llama.cpp reads `rope_freqs.weight`; chatforge keeps the four
        // numbers it came from beside it.
        let scaling = |k: &str| {
            meta.get(&format!("chatforge.rope_scaling.{k}"))
                .and_then(Value::as_f64)
        };
        let rope_scaling = match content.tensor("rope_freqs.weight") {
            None => None,
            Some(_) => {
                let need = |k: &str| {
                    scaling(k).ok_or_else(|| {
                        load_err(
                            path,
                            format!(
                                "rope_freqs.weight without chatforge.rope_scaling.{k}: load the HF folder"
                            ),
                        )
                    })
                };
                Some(Llama3Scaling {
                    factor: need("factor")?,
                    low_freq_factor: need("low_freq_factor")?,
                    high_freq_factor: need("high_freq_factor")?,
                    original_max_position_embeddings: need("original_max_position_embeddings")? as usize,
                })
            }
        };
        GptConfig {
            rope_scaling,
            bias: arch == Arch::Qwen2,
            activation: Activation::Silu,
            layer_norm_eps: float("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
            rope_theta: float("rope.freq_base").unwrap_or(10_000.0),
            ..base
        }
    } else {
        GptConfig {
            bias: content.tensor("blk.0.attn_qkv.bias").is_some(),
            activation: if flag("chatforge.gelu_erf", false) {
                Activation::GeluErf
            } else {
                Activation::GeluTanh
            },
            layer_norm_eps: float("attention.layer_norm_epsilon").unwrap_or(1e-5),
            ..base
        }
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
        if let Some(heads) = gguf::rope_permuted(&config, slot) {
            let rows = t.dims().first().copied().unwrap_or(0);
            t = Tensor::new(t.dims(), gguf::permute_rope_rows(t.data(), rows, heads, true))?;
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
        Some(json) => with_template(ChatTokenizer::from_json(json)?, &config, meta)?,
        None => {
            return Err(load_err(
                path,
                "no tokenizer.huggingface.json key: pass --tokenizer with the model's tokenizer.json",
            ));
        }
    };
    Ok((config, weights, tokenizer))
}

/// A Llama-family model's own chat template (`tokenizer.chat_template`), with the special tokens
/// the file names, on its tokenizer.
fn with_template(
    tok: ChatTokenizer,
    config: &GptConfig,
    meta: &std::collections::BTreeMap<String, Value>,
) -> Result<ChatTokenizer> {
    let Some(source) = meta.get("tokenizer.chat_template").and_then(Value::as_str) else {
        return Ok(tok);
    };
    if !config.arch.is_llama() {
        return Ok(tok);
    }
    let token = |key: &str| {
        meta.get(&format!("tokenizer.ggml.{key}_token_id"))
            .and_then(Value::as_u64)
            .and_then(|id| tok.id_to_token(id as u32))
    };
    let specials: Vec<(&'static str, String)> = [("bos_token", token("bos")), ("eos_token", token("eos"))]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
    let template = chatforge_tokenizer::HfTemplate::new(source.to_string(), specials)?;
    Ok(tok.with_model_template(template))
}
