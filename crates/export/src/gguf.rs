//! GGUF v3 for llama.cpp: GPT-2 architecture keys, the tokenizer (`tokenizer.ggml.*` and the whole
//! `tokenizer.huggingface.json`), the chat template, and the weights in llama.cpp's names and
//! layout, as f32, f16, q8_0 or q4_0 blocks (ggml's own formats: [`chatforge_model::quant`]).

use std::path::Path;

use chatforge_model::io::gguf::{self, Encoded, GgmlType, Value as Val};
use chatforge_model::{Activation, GptConfig, Tensor, Weights};
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
    let tok = &src.tokenizer;
    let tok_json_text = tok.to_json()?;
    let tok_json: serde_json::Value =
        serde_json::from_str(&tok_json_text).map_err(|e| Error::Invalid(e.to_string()))?;
    let (vocab_meta, add_bos) = vocab(tok, cfg.vocab_size, &tok_json)?;
    let ids = special_ids(src);
    let mut meta: Vec<(String, Val)> = vec![
        ("general.architecture".into(), Val::Str(cfg.arch.name().into())),
        (
            "general.name".into(),
            Val::Str(
                src.root
                    .file_stem()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_else(|| "chatforge".into()),
            ),
        ),
        ("general.file_type".into(), Val::U32(quant.file_type())),
        ("general.quantization_version".into(), Val::U32(2)),
    ];
    meta.extend(arch_meta(cfg));
    meta.extend(vocab_meta);
    meta.extend([
        ("tokenizer.ggml.add_bos_token".to_string(), Val::Bool(add_bos)),
        (
            "tokenizer.chat_template".to_string(),
            Val::Str(tok.jinja_template()),
        ),
        ("tokenizer.huggingface.json".to_string(), Val::Str(tok_json_text)),
    ]);
    // A SentencePiece-style vocabulary starts sequences with its `<s>` (its post-processor's).
    let bos = if add_bos {
        tok.token_to_id("<s>").or(ids.bos)
    } else {
        ids.bos
    };
    if let Some(unk) = tok.token_to_id(chatforge_tokenizer::specials::UNK) {
        meta.push(("tokenizer.ggml.unknown_token_id".into(), Val::U32(unk)));
    }
    for (key, id) in [("bos", bos), ("eos", ids.eos), ("padding", ids.eos)] {
        if let Some(id) = id {
            meta.push((format!("tokenizer.ggml.{key}_token_id"), Val::U32(id)));
        }
    }

    // Tensors in the model's parameter order, each in llama.cpp's name and layout.
    let mut tensors: Vec<Encoded> = Vec::new();
    if let Some(factors) = rope_factors(cfg) {
        let n = factors.len();
        tensors.push(gguf::encode(
            "rope_freqs.weight".into(),
            vec![n],
            &factors,
            GgmlType::F32,
        ));
    }
    for slot in chatforge_model::layout::slots(cfg) {
        let t = weights
            .get(&slot.name(cfg.arch))
            .ok_or_else(|| Error::Invalid(format!("the model has no tensor {}", slot.name(cfg.arch))))?;
        let (name, transposed) = slot.gguf(cfg.arch);
        let mut t = if transposed { t.t() } else { t.clone() };
        if let Some(heads) = gguf::rope_permuted(cfg, slot) {
            let rows = t.dims()[0];
            t = Tensor::new(t.dims(), gguf::permute_rope_rows(t.data(), rows, heads, false))?;
        }
        tensors.push(gguf::encode(name, t.dims().to_vec(), t.data(), quant.dtype()));
    }
    Ok(gguf::write(path, &meta, &tensors)?)
}

/// The tokenizer's `tokenizer.ggml.*` vocabulary keys, and whether sequences start with a BOS
/// token: byte-level BPE as llama.cpp's `gpt2` model (tokens, types, merges, pre-tokenizer), or
/// BPE with byte fallback (SentencePiece's, converted: TinyLlama's, Llama 2's) as its `llama`
/// model, scored by rank as SentencePiece orders its pieces. The rows past the tokenizer (a model
/// padded to a round vocabulary) get placeholder tokens.
fn vocab(
    tok: &chatforge_tokenizer::ChatTokenizer,
    n: usize,
    tok_json: &serde_json::Value,
) -> Result<(Vec<(String, Val)>, bool)> {
    let model = &tok_json["model"];
    if model["type"].as_str() != Some("BPE") {
        return Err(Error::Invalid(
            "GGUF export needs a BPE tokenizer (byte-level as GPT-2's, SmolLM2's, Qwen2's and Llama 3's, \
             or with byte fallback as TinyLlama's); Unigram tokenizers are not written to GGUF"
                .into(),
        ));
    }
    let spm = model["byte_fallback"].as_bool() == Some(true);
    let mut tokens = vec![String::new(); n];
    let mut types = vec![1i32; n]; // 1 normal
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
    let known = tok.vocab_size();
    for (i, (t, ty)) in tokens.iter_mut().zip(types.iter_mut()).enumerate() {
        if i >= known {
            *t = format!("[PAD{i}]");
            *ty = 5; // unused
        } else if spm && *ty == 1 && t.len() == 6 && t.starts_with("<0x") && t.ends_with('>') {
            *ty = 6; // byte
        } else if spm && model["unk_token"].as_str() == Some(t.as_str()) {
            *ty = 2; // unknown
        }
    }
    let strs = |v: Vec<String>| Val::Array(v.into_iter().map(Val::Str).collect());
    if !spm {
        return Ok((
            vec![
                ("tokenizer.ggml.model".into(), Val::Str("gpt2".into())),
                ("tokenizer.ggml.pre".into(), Val::Str(bpe_pre(tok_json).into())),
                ("tokenizer.ggml.tokens".into(), strs(tokens)),
                (
                    "tokenizer.ggml.token_type".into(),
                    Val::Array(types.into_iter().map(Val::I32).collect()),
                ),
                ("tokenizer.ggml.merges".into(), strs(merges(tok_json))),
            ],
            false,
        ));
    }
    let scores: Vec<Val> = types
        .iter()
        .enumerate()
        .map(|(i, &ty)| Val::F32(if ty == 1 { -(i as f32) } else { 0.0 }))
        .collect();
    let add_bos = tok_json["post_processor"].to_string().contains("\"<s>\"");
    let prefix = tok_json["normalizer"].to_string().contains("Prepend")
        || tok_json["pre_tokenizer"]
            .to_string()
            .contains("\"prepend_scheme\":\"always\"");
    Ok((
        vec![
            ("tokenizer.ggml.model".into(), Val::Str("llama".into())),
            ("tokenizer.ggml.pre".into(), Val::Str("default".into())),
            ("tokenizer.ggml.tokens".into(), strs(tokens)),
            ("tokenizer.ggml.scores".into(), Val::Array(scores)),
            (
                "tokenizer.ggml.token_type".into(),
                Val::Array(types.into_iter().map(Val::I32).collect()),
            ),
            ("tokenizer.ggml.add_space_prefix".into(), Val::Bool(prefix)),
        ],
        add_bos,
    ))
}

/// The model's `{arch}.*` keys, as llama.cpp's converter writes them.
fn arch_meta(cfg: &GptConfig) -> Vec<(String, Val)> {
    let a = cfg.arch.name();
    let u = |n: usize| Val::U32(n as u32);
    let mut m: Vec<(String, Val)> = vec![
        (format!("{a}.context_length"), u(cfg.n_ctx)),
        (format!("{a}.embedding_length"), u(cfg.n_embd)),
        (format!("{a}.feed_forward_length"), u(cfg.n_inner)),
        (format!("{a}.block_count"), u(cfg.n_layer)),
        (format!("{a}.attention.head_count"), u(cfg.n_head)),
    ];
    if cfg.arch.is_llama() {
        m.extend([
            (format!("{a}.attention.head_count_kv"), u(cfg.n_kv_head)),
            (
                format!("{a}.attention.layer_norm_rms_epsilon"),
                Val::F32(cfg.layer_norm_eps as f32),
            ),
            (format!("{a}.rope.freq_base"), Val::F32(cfg.rope_theta as f32)),
            (format!("{a}.rope.dimension_count"), u(cfg.head_dim())),
            (format!("{a}.vocab_size"), u(cfg.vocab_size)),
        ]);
        // llama.cpp takes Llama 3's scaling from `rope_freqs.weight`; chatforge reads it back
        // from these.
        if let Some(s) = cfg.rope_scaling {
            for (k, v) in [
                ("factor", s.factor),
                ("low_freq_factor", s.low_freq_factor),
                ("high_freq_factor", s.high_freq_factor),
                (
                    "original_max_position_embeddings",
                    s.original_max_position_embeddings as f64,
                ),
            ] {
                m.push((format!("chatforge.rope_scaling.{k}"), Val::F64(v)));
            }
        }
    } else {
        m.extend([
            (
                format!("{a}.attention.layer_norm_epsilon"),
                Val::F32(cfg.layer_norm_eps as f32),
            ),
            (
                "chatforge.gelu_erf".to_string(),
                Val::Bool(cfg.activation == Activation::GeluErf),
            ),
        ]);
    }
    m
}

/// Llama 3's rope scaling as llama.cpp takes it: each frequency's divisor (`rope_freqs.weight`).
fn rope_factors(cfg: &GptConfig) -> Option<Vec<f32>> {
    cfg.rope_scaling?;
    let plain = chatforge_model::llama::rope_inv_freq(&GptConfig {
        rope_scaling: None,
        ..cfg.clone()
    });
    let scaled = chatforge_model::llama::rope_inv_freq(cfg);
    Some(plain.iter().zip(&scaled).map(|(p, s)| p / s).collect())
}

/// llama.cpp's pre-tokenizer name for a byte-level BPE tokenizer, from its `pre_tokenizer`: SmolLM's
/// (digits one by one), Llama 3's and Qwen2's split patterns, else GPT-2's.
fn bpe_pre(tok_json: &serde_json::Value) -> &'static str {
    fn strings(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::String(s) => out.push(s.clone()),
            serde_json::Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
            serde_json::Value::Object(o) => o.values().for_each(|x| strings(x, out)),
            _ => {}
        }
    }
    let pre = &tok_json["pre_tokenizer"];
    let mut patterns = Vec::new();
    strings(pre, &mut patterns);
    let has = |p: &str| patterns.iter().any(|s| s.contains(p));
    if has(r"\p{N}{1,3}") {
        "llama-bpe"
    } else if has(r"\p{L}+|\p{N}|") {
        "qwen2"
    } else if pre.to_string().contains("\"individual_digits\":true") {
        "smollm"
    } else {
        "gpt-2"
    }
}
