//! GGUF v3 for llama.cpp: GPT-2 architecture keys, the tokenizer (`tokenizer.ggml.*` and the whole
//! `tokenizer.huggingface.json`), the chat template, and the weights in llama.cpp's names and
//! layout, as f32, f16, q8_0 or q4_0 blocks (ggml's own formats: [`chatforge_model::quant`]).

use std::path::Path;

use chatforge_model::io::gguf::{self, Encoded, GgmlType, Value as Val};
use chatforge_model::{Activation, Weights};
use chatforge_run::ModelSource;

use crate::hf::special_ids;
use crate::{Error, Result};

/// The weight type of the matrices in a GGUF export; vectors (norms, biases) stay f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GgufQuant {
    #[default]
    F32,
    F16,
    /// Blocks of 32 int8 values with an f16 scale (8.5 bits a value).
    Q8_0,
    /// Blocks of 32 4-bit values with an f16 scale (4.5 bits a value).
    Q4_0,
}

impl GgufQuant {
    pub fn name(self) -> &'static str {
        match self {
            GgufQuant::F32 => "f32",
            GgufQuant::F16 => "f16",
            GgufQuant::Q8_0 => "q8_0",
            GgufQuant::Q4_0 => "q4_0",
        }
    }

    fn dtype(self) -> GgmlType {
        match self {
            GgufQuant::F32 => GgmlType::F32,
            GgufQuant::F16 => GgmlType::F16,
            GgufQuant::Q8_0 => GgmlType::Q8_0,
            GgufQuant::Q4_0 => GgmlType::Q4_0,
        }
    }

    /// llama.cpp's `general.file_type` (`LLAMA_FTYPE_ALL_F32`, `MOSTLY_F16`, `MOSTLY_Q8_0`, `MOSTLY_Q4_0`).
    fn file_type(self) -> u32 {
        match self {
            GgufQuant::F32 => 0,
            GgufQuant::F16 => 1,
            GgufQuant::Q8_0 => 7,
            GgufQuant::Q4_0 => 2,
        }
    }
}

impl std::str::FromStr for GgufQuant {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(GgufQuant::F32),
            "f16" => Ok(GgufQuant::F16),
            "q8_0" => Ok(GgufQuant::Q8_0),
            "q4_0" => Ok(GgufQuant::Q4_0),
            other => Err(Error::Invalid(format!(
                "unknown GGUF quantisation {other:?}: expected f32, f16, q8_0 or q4_0"
            ))),
        }
    }
}

/// The tokenizer's merges as `"a b"` lines, from its JSON (either of the two spellings
/// `tokenizers` uses).
fn merges(json: &serde_json::Value) -> Vec<String> {
    json["model"]["merges"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|x| match x {
                    serde_json::Value::String(s) => Some(s.clone()),
                    serde_json::Value::Array(p) => {
                        Some(format!("{} {}", p.first()?.as_str()?, p.get(1)?.as_str()?))
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Writes `weights` (HF names) and `src`'s config and tokenizer as a GGUF v3 file at `path`.
pub fn write_gguf(src: &ModelSource, weights: &Weights, quant: GgufQuant, path: &Path) -> Result<()> {
    let cfg = &src.config;
    if cfg.arch.is_llama() {
        return Err(Error::Invalid(format!(
            "GGUF export of {} models is not supported yet",
            cfg.arch.name()
        )));
    }
    let tok = &src.tokenizer;
    let tok_json_text = tok.to_json()?;
    let tok_json: serde_json::Value =
        serde_json::from_str(&tok_json_text).map_err(|e| Error::Invalid(e.to_string()))?;
    let n_vocab = tok.vocab_size();
    let mut tokens = vec![String::new(); cfg.vocab_size];
    let mut types = vec![1i32; cfg.vocab_size]; // 1 normal
    for (t, id) in tok.inner().get_vocab(true) {
        if let Some(slot) = tokens.get_mut(id as usize) {
            *slot = t;
        }
    }
    let specials: Vec<u32> = tok_json["added_tokens"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|t| t["special"].as_bool() == Some(true))
                .filter_map(|t| t["id"].as_u64().map(|i| i as u32))
                .collect()
        })
        .unwrap_or_default();
    for id in specials {
        if let Some(t) = types.get_mut(id as usize) {
            *t = 3; // control
        }
    }
    // Rows past the tokenizer (a model padded to a round vocabulary) get placeholder tokens.
    for (i, (t, ty)) in tokens.iter_mut().zip(types.iter_mut()).enumerate().skip(n_vocab) {
        *t = format!("[PAD{i}]");
        *ty = 5; // unused
    }
    let ids = special_ids(src);
    let strs = |v: Vec<String>| Val::Array(v.into_iter().map(Val::Str).collect());
    let mut meta: Vec<(&str, Val)> = vec![
        ("general.architecture", Val::Str("gpt2".into())),
        (
            "general.name",
            Val::Str(
                src.root
                    .file_stem()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_else(|| "chatforge".into()),
            ),
        ),
        ("general.file_type", Val::U32(quant.file_type())),
        ("general.quantization_version", Val::U32(2)),
        ("gpt2.context_length", Val::U32(cfg.n_ctx as u32)),
        ("gpt2.embedding_length", Val::U32(cfg.n_embd as u32)),
        ("gpt2.feed_forward_length", Val::U32(cfg.n_inner as u32)),
        ("gpt2.block_count", Val::U32(cfg.n_layer as u32)),
        ("gpt2.attention.head_count", Val::U32(cfg.n_head as u32)),
        (
            "gpt2.attention.layer_norm_epsilon",
            Val::F32(cfg.layer_norm_eps as f32),
        ),
        (
            "chatforge.gelu_erf",
            Val::Bool(cfg.activation == Activation::GeluErf),
        ),
        ("tokenizer.ggml.model", Val::Str("gpt2".into())),
        ("tokenizer.ggml.pre", Val::Str("gpt-2".into())),
        ("tokenizer.ggml.tokens", strs(tokens)),
        (
            "tokenizer.ggml.token_type",
            Val::Array(types.into_iter().map(Val::I32).collect()),
        ),
        ("tokenizer.ggml.merges", strs(merges(&tok_json))),
        ("tokenizer.ggml.add_bos_token", Val::Bool(false)),
        ("tokenizer.chat_template", Val::Str(tok.jinja_template())),
        ("tokenizer.huggingface.json", Val::Str(tok_json_text)),
    ];
    if let Some(b) = ids.bos {
        meta.push(("tokenizer.ggml.bos_token_id", Val::U32(b)));
    }
    if let Some(e) = ids.eos {
        meta.push(("tokenizer.ggml.eos_token_id", Val::U32(e)));
        meta.push(("tokenizer.ggml.padding_token_id", Val::U32(e)));
    }

    // Tensors in the model's parameter order, each in llama.cpp's name and layout.
    let mut tensors: Vec<Encoded> = Vec::new();
    for slot in chatforge_model::layout::slots(cfg) {
        let t = weights
            .get(&slot.name(cfg.arch))
            .ok_or_else(|| Error::Invalid(format!("the model has no tensor {}", slot.name(cfg.arch))))?;
        let (name, transposed) = slot.gguf(cfg.arch);
        let t = if transposed { t.t() } else { t.clone() };
        tensors.push(gguf::encode(name, t.dims().to_vec(), t.data(), quant.dtype()));
    }
    let meta: Vec<(String, Val)> = meta.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    Ok(gguf::write(path, &meta, &tensors)?)
}
