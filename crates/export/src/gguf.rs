//! GGUF v3 for llama.cpp: GPT-2 architecture keys, the tokenizer (`tokenizer.ggml.*` and the whole
//! `tokenizer.huggingface.json`), the chat template, and the weights in llama.cpp's names and
//! layout, as f32, f16, q8_0 or q4_0 blocks (ggml's own formats, via candle's quantiser).

use std::io::Write;
use std::path::Path;

use candle_core::Tensor;
use candle_core::quantized::{GgmlDType, QTensor};
use chatforge_model::{Activation, Weights};
use chatforge_run::ModelSource;
use chatforge_run::gguf::MAGIC;

use crate::hf::special_ids;
use crate::{Error, Result, io_err};

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

    fn dtype(self) -> GgmlDType {
        match self {
            GgufQuant::F32 => GgmlDType::F32,
            GgufQuant::F16 => GgmlDType::F16,
            GgufQuant::Q8_0 => GgmlDType::Q8_0,
            GgufQuant::Q4_0 => GgmlDType::Q4_0,
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

/// ggml's tensor type ids.
fn ggml_type(d: GgmlDType) -> u32 {
    match d {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q8_0 => 8,
        _ => u32::MAX, // never written: GgufQuant has no other type
    }
}

/// A metadata value.
enum Val {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
    Strs(Vec<String>),
    I32s(Vec<i32>),
}

struct Writer<W: Write> {
    w: W,
}

impl<W: Write> Writer<W> {
    fn u32(&mut self, v: u32) -> std::io::Result<()> {
        self.w.write_all(&v.to_le_bytes())
    }
    fn u64(&mut self, v: u64) -> std::io::Result<()> {
        self.w.write_all(&v.to_le_bytes())
    }
    fn str(&mut self, s: &str) -> std::io::Result<()> {
        self.u64(s.len() as u64)?;
        self.w.write_all(s.as_bytes())
    }
    fn val(&mut self, v: &Val) -> std::io::Result<()> {
        // GGUF value types: 4 u32, 5 i32, 6 f32, 7 bool, 8 string, 9 array.
        match v {
            Val::U32(x) => {
                self.u32(4)?;
                self.u32(*x)
            }
            Val::F32(x) => {
                self.u32(6)?;
                self.w.write_all(&x.to_le_bytes())
            }
            Val::Bool(b) => {
                self.u32(7)?;
                self.w.write_all(&[u8::from(*b)])
            }
            Val::Str(s) => {
                self.u32(8)?;
                self.str(s)
            }
            Val::Strs(items) => {
                self.u32(9)?;
                self.u32(8)?;
                self.u64(items.len() as u64)?;
                items.iter().try_for_each(|s| self.str(s))
            }
            Val::I32s(items) => {
                self.u32(9)?;
                self.u32(5)?;
                self.u64(items.len() as u64)?;
                items.iter().try_for_each(|x| self.w.write_all(&x.to_le_bytes()))
            }
        }
    }
}

const ALIGN: usize = 32;

fn pad(n: usize) -> usize {
    (ALIGN - n % ALIGN) % ALIGN
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
        ("gpt2.feed_forward_length", Val::U32(4 * cfg.n_embd as u32)),
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
        ("tokenizer.ggml.tokens", Val::Strs(tokens)),
        ("tokenizer.ggml.token_type", Val::I32s(types)),
        ("tokenizer.ggml.merges", Val::Strs(merges(&tok_json))),
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
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    for slot in chatforge_model::layout::slots(cfg) {
        let t = weights
            .get(&slot.name())
            .ok_or_else(|| Error::Invalid(format!("the model has no tensor {}", slot.name())))?;
        let (name, transposed) = slot.gguf();
        let t: Tensor = if transposed {
            t.t()?.contiguous()?
        } else {
            t.contiguous()?
        };
        let row = t.dims().last().copied().unwrap_or(0);
        let dtype = if t.rank() == 2 && row % quant.dtype().block_size() == 0 {
            quant.dtype()
        } else {
            GgmlDType::F32
        };
        tensors.push((name, QTensor::quantize(&t, dtype)?));
    }

    let tmp = path.with_extension("gguf.tmp");
    let file = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
    let mut w = Writer {
        w: std::io::BufWriter::new(file),
    };
    let result = (|| -> std::io::Result<()> {
        w.u32(MAGIC)?;
        w.u32(3)?;
        w.u64(tensors.len() as u64)?;
        w.u64(meta.len() as u64)?;
        for (k, v) in &meta {
            w.str(k)?;
            w.val(v)?;
        }
        let mut offset = 0usize;
        for (name, q) in &tensors {
            w.str(name)?;
            let dims = q.shape().dims();
            w.u32(dims.len() as u32)?;
            for &d in dims.iter().rev() {
                w.u64(d as u64)?;
            }
            w.u32(ggml_type(q.dtype()))?;
            w.u64(offset as u64)?;
            let size = q.storage_size_in_bytes();
            offset += size + pad(size);
        }
        w.w.flush()?;
        let header = w.w.get_ref().metadata()?.len() as usize;
        w.w.write_all(&vec![0u8; pad(header)])?;
        for (_, q) in &tensors {
            let data = q.data().map_err(std::io::Error::other)?;
            w.w.write_all(&data)?;
            w.w.write_all(&vec![0u8; pad(data.len())])?;
        }
        w.w.flush()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(path)(e));
    }
    std::fs::rename(&tmp, path).map_err(io_err(path))
}
