//! GGUF files of GPT-2 models, as `chatforge export --format gguf` writes them and llama.cpp
//! reads them: tensor names in llama.cpp's scheme, architecture keys under `gpt2.`, the tokenizer
//! under `tokenizer.` (both llama.cpp's `tokenizer.ggml.*` and the whole `tokenizer.huggingface.json`).
//! This module maps names and reads a file back into HF-named f32 weights.

use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};
use chatforge_model::{Activation, GptConfig, Weights};
use chatforge_tokenizer::ChatTokenizer;

use crate::{Error, Result};

/// GGUF's magic number: "GGUF" little-endian.
pub const MAGIC: u32 = 0x4655_4747;

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

fn int(v: &Value) -> Option<usize> {
    v.to_u32()
        .map(|x| x as usize)
        .or_else(|_| v.to_u64().map(|x| x as usize))
        .or_else(|_| v.to_i32().map(|x| x as usize))
        .ok()
}

/// Reads a GPT-2 GGUF file: the config from its `gpt2.*` keys, every tensor dequantised to f32
/// under its HF name, and the tokenizer embedded in it.
pub fn read(path: &Path) -> Result<(GptConfig, Weights, ChatTokenizer)> {
    let mut f = std::fs::File::open(path).map_err(|e| load_err(path, e.to_string()))?;
    let content =
        Content::read(&mut f).map_err(|e| load_err(path, format!("not a readable GGUF file: {e}")))?;
    let meta = &content.metadata;
    // Tensor data must start on the file's alignment: an offset off it is a corrupt or crafted
    // file whose values would be read from the wrong bytes.
    let alignment = meta
        .get("general.alignment")
        .and_then(int)
        .filter(|&a| a > 0)
        .unwrap_or(32) as u64;
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    for name in names {
        let offset = content.tensor_infos[name].offset;
        if offset % alignment != 0 {
            return Err(load_err(
                path,
                format!(
                    "tensor {name} starts at offset {offset}, not a multiple of the alignment {alignment}"
                ),
            ));
        }
    }
    let arch = meta
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .ok_or_else(|| load_err(path, "no general.architecture key"))?;
    if arch != "gpt2" {
        return Err(load_err(
            path,
            format!("architecture {arch:?}: chatforge reads GPT-2 GGUF files only"),
        ));
    }
    let key = |k: &str| {
        meta.get(&format!("gpt2.{k}"))
            .and_then(int)
            .ok_or_else(|| load_err(path, format!("no integer key gpt2.{k}")))
    };
    let emb = content
        .tensor_infos
        .get("token_embd.weight")
        .ok_or_else(|| load_err(path, "no token_embd.weight tensor"))?;
    let eps = meta
        .get("gpt2.attention.layer_norm_epsilon")
        .and_then(|v| v.to_f32().ok())
        .unwrap_or(1e-5);
    let flag = |k: &str, default: bool| meta.get(k).and_then(|v| v.to_bool().ok()).unwrap_or(default);
    let config = GptConfig {
        vocab_size: emb.shape.dims()[0],
        n_ctx: key("context_length")?,
        n_layer: key("block_count")?,
        n_head: key("attention.head_count")?,
        n_embd: key("embedding_length")?,
        dropout: 0.0,
        bias: content.tensor_infos.contains_key("blk.0.attn_qkv.bias"),
        tie_embeddings: !content.tensor_infos.contains_key("output.weight"),
        activation: if flag("chatforge.gelu_erf", false) {
            Activation::GeluErf
        } else {
            Activation::GeluTanh
        },
        layer_norm_eps: f64::from(eps),
    };
    config.validate()?;
    let dev = Device::Cpu;
    let mut weights = Weights::new();
    for slot in chatforge_model::layout::slots(&config) {
        let (name, transposed) = slot.gguf();
        let q = content
            .tensor(&mut f, &name, &dev)
            .map_err(|e| load_err(path, format!("tensor {name}: {e}")))?;
        let mut t: Tensor = q.dequantize(&dev)?;
        if transposed {
            t = t.t()?.contiguous()?;
        }
        let shape = slot.shape(&config);
        if t.dims() != shape.as_slice() {
            return Err(load_err(
                path,
                format!("tensor {name} has shape {:?}, expected {shape:?}", t.dims()),
            ));
        }
        weights.insert(slot.name(), t);
    }
    let tokenizer = match meta
        .get("tokenizer.huggingface.json")
        .and_then(|v| v.to_string().ok())
    {
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
