//! A model's weights by name: their specification (shape, initialisation, weight decay), seeded
//! initialisation, and loading/saving in the Hugging Face layouts (`model.safetensors`,
//! `pytorch_model.bin`; f32, f16 or bf16 stored, f32 in memory).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use chatforge_base::Rng;

use crate::{Error, GptConfig, Result};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    Normal(f64),
    /// U(−bound, bound).
    Uniform(f64),
    Zeros,
    Ones,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
    /// AdamW weight decay applies (matrices of linear layers; not biases, norms or embeddings).
    pub decay: bool,
}

/// Every parameter of a GPT with `cfg`, in the layout's order and names ([`crate::layout`]).
pub fn param_specs(cfg: &GptConfig) -> Vec<ParamSpec> {
    use crate::layout::{Part, Slot, slots};
    // nanoGPT: N(0, 0.02), residual projections scaled by 1/√(2·n_layer).
    let std = 0.02;
    let proj_std = 0.02 / (2.0 * cfg.n_layer as f64).sqrt();
    slots(cfg)
        .into_iter()
        .map(|slot| {
            let (init, decay) = match slot {
                Slot::TokenEmbedding | Slot::PositionEmbedding | Slot::LmHead => (Init::Normal(std), false),
                Slot::BlockNorm(.., Part::Weight) | Slot::FinalNorm(Part::Weight) => (Init::Ones, false),
                Slot::BlockLinear(_, l, Part::Weight) => (
                    Init::Normal(if l.is_residual_projection() { proj_std } else { std }),
                    true,
                ),
                Slot::BlockNorm(.., Part::Bias)
                | Slot::BlockLinear(.., Part::Bias)
                | Slot::FinalNorm(Part::Bias) => (Init::Zeros, false),
            };
            ParamSpec {
                name: slot.name(),
                shape: slot.shape(cfg),
                init,
                decay,
            }
        })
        .collect()
}

/// Named f32 tensors.
pub type Weights = HashMap<String, Tensor>;

/// Fresh weights drawn from `rng` (candle's CPU backend has no seed of its own).
pub fn init_weights(cfg: &GptConfig, rng: &mut Rng, device: &Device) -> Result<Weights> {
    cfg.validate()?;
    init_specs(&param_specs(cfg), rng, device)
}

/// Tensors for `specs`, drawn in order from `rng`.
pub fn init_specs(specs: &[ParamSpec], rng: &mut Rng, device: &Device) -> Result<Weights> {
    specs
        .iter()
        .map(|s| {
            let n: usize = s.shape.iter().product();
            let data: Vec<f32> = match s.init {
                Init::Normal(std) => (0..n).map(|_| (rng.normal() * std) as f32).collect(),
                Init::Uniform(b) => (0..n)
                    .map(|_| ((rng.next_f64() * 2.0 - 1.0) * b) as f32)
                    .collect(),
                Init::Zeros => vec![0.0; n],
                Init::Ones => vec![1.0; n],
            };
            Ok((s.name.clone(), Tensor::from_vec(data, s.shape.clone(), device)?))
        })
        .collect()
}

/// Brings names from other GPT-2 checkpoints to ours ([`crate::layout::checkpoint_alias`]).
fn normalise(raw: Vec<(String, Tensor)>) -> Result<Weights> {
    let mut out = Weights::new();
    for (name, t) in raw {
        if let Some(name) = crate::layout::checkpoint_alias(&name, t.rank()) {
            out.insert(name, t.to_dtype(DType::F32)?);
        }
    }
    Ok(out)
}

/// Checks loaded weights against the config: every parameter present with its shape, nothing
/// unexpected. A tied `lm_head.weight` (some files store it) is dropped.
pub fn check_weights(cfg: &GptConfig, mut w: Weights, source: &Path) -> Result<Weights> {
    let err = |msg: String| Error::Weights {
        path: source.to_path_buf(),
        msg,
    };
    if cfg.tie_embeddings {
        w.remove(&crate::layout::Slot::LmHead.name());
    }
    match_specs(
        &param_specs(cfg),
        &w,
        "the config says",
        "the checkpoint is not of this config",
    )
    .map_err(err)?;
    Ok(w)
}

/// Checks named tensors against `specs`: each present with its shape, and nothing else. The
/// message names the first problem; `expect` and `foreign` word the shape and extra-tensor cases.
pub(crate) fn match_specs(
    specs: &[ParamSpec],
    w: &Weights,
    expect: &str,
    foreign: &str,
) -> std::result::Result<(), String> {
    for s in specs {
        match w.get(&s.name) {
            None => return Err(format!("missing tensor {}", s.name)),
            Some(t) if t.dims() != s.shape.as_slice() => {
                return Err(format!(
                    "tensor {} has shape {:?}, {expect} {:?}",
                    s.name,
                    t.dims(),
                    s.shape
                ));
            }
            Some(_) => {}
        }
    }
    if w.len() != specs.len() {
        let known: std::collections::HashSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        let mut extra: Vec<&String> = w.keys().filter(|k| !known.contains(k.as_str())).collect();
        extra.sort();
        return Err(format!("unexpected tensors {extra:?}: {foreign}"));
    }
    Ok(())
}

/// Reads `model.safetensors` or `pytorch_model.bin` (a file, or the folder holding one).
pub fn load_weights(path: &Path, cfg: &GptConfig, device: &Device) -> Result<Weights> {
    let file = weights_file(path)?;
    let err = |e: candle_core::Error| Error::Weights {
        path: file.clone(),
        msg: e.to_string(),
    };
    let raw: Vec<(String, Tensor)> = if file.extension().is_some_and(|e| e == "safetensors") {
        candle_core::safetensors::load(&file, device)
            .map_err(err)?
            .into_iter()
            .collect()
    } else {
        candle_core::pickle::read_all(&file).map_err(err)?
    };
    check_weights(cfg, normalise(raw)?, &file)
}

/// `model.safetensors` (preferred) or `pytorch_model.bin` in a folder, or the file itself.
pub fn weights_file(path: &Path) -> Result<PathBuf> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    for name in ["model.safetensors", "pytorch_model.bin"] {
        if path.join(name).is_file() {
            return Ok(path.join(name));
        }
    }
    Err(Error::Weights {
        path: path.to_path_buf(),
        msg: "no model.safetensors or pytorch_model.bin here".into(),
    })
}

/// Reads an HF GPT-2-family folder: `config.json` and its weights.
pub fn load_hf(dir: &Path, device: &Device) -> Result<(GptConfig, Weights)> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::Io {
        path: cfg_path.clone(),
        source: e,
    })?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Weights {
        path: cfg_path.clone(),
        msg: format!("invalid JSON: {e}"),
    })?;
    let cfg = GptConfig::from_hf(&v)?;
    let w = load_weights(dir, &cfg, device)?;
    Ok((cfg, w))
}

/// Writes weights as safetensors (sorted names), through a temporary file.
pub fn save_weights(w: &BTreeMap<String, Tensor>, path: &Path) -> Result<()> {
    let tmp = path.with_extension("safetensors.tmp");
    let w: HashMap<&str, Tensor> = w.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    candle_core::safetensors::save(&w, &tmp).map_err(|e| Error::Weights {
        path: tmp.clone(),
        msg: e.to_string(),
    })?;
    std::fs::rename(&tmp, path).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: e,
    })
}

/// Writes f32 tensors as safetensors through a temporary file, one tensor at a time: `data(i)`
/// gives the values of `tensors[i]` (name, shape) when its turn comes, so the set is never copied
/// whole (a checkpoint of the training engine writes straight from its flat buffers). The layout
/// is the format's: an 8-byte little-endian header length, the JSON header (names sorted, padded
/// with spaces to 8 bytes), then the data in header order.
pub fn save_f32_tensors<'a>(
    path: &Path,
    tensors: &[(String, Vec<usize>)],
    mut data: impl FnMut(usize) -> Result<std::borrow::Cow<'a, [f32]>>,
) -> Result<()> {
    use std::io::Write;
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by(|&a, &b| tensors[a].0.cmp(&tensors[b].0));
    let mut header = serde_json::Map::new();
    let mut at = 0usize;
    for &i in &order {
        let (name, shape) = &tensors[i];
        let bytes = 4 * shape.iter().product::<usize>();
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [at, at + bytes]}),
        );
        at += bytes;
    }
    let mut head = serde_json::Value::Object(header).to_string().into_bytes();
    head.resize(head.len().next_multiple_of(8), b' ');
    let weights_err = |msg: String| Error::Weights {
        path: path.to_path_buf(),
        msg,
    };
    // The first error from `data` (the write stops there and the temporary file is removed).
    let mut failed = None;
    chatforge_base::atomic_write(path, |w| {
        w.write_all(&(head.len() as u64).to_le_bytes())?;
        w.write_all(&head)?;
        let mut buf = Vec::with_capacity(1 << 16);
        for &i in &order {
            let (name, shape) = &tensors[i];
            let values = match data(i) {
                Ok(v) => v,
                Err(e) => {
                    failed = Some(e);
                    return Err(std::io::Error::other("no data"));
                }
            };
            if values.len() != shape.iter().product::<usize>() {
                failed = Some(weights_err(format!(
                    "{name}: {} values for shape {shape:?}",
                    values.len()
                )));
                return Err(std::io::Error::other("wrong length"));
            }
            for chunk in values.chunks(1 << 14) {
                buf.clear();
                buf.extend(chunk.iter().flat_map(|x| x.to_le_bytes()));
                w.write_all(&buf)?;
            }
        }
        Ok(())
    })
    .map_err(|e| failed.take().unwrap_or_else(|| weights_err(e.to_string())))
}

/// Trainable weights: one [`Var`] per parameter, in [`param_specs`] order.
#[derive(Debug, Clone)]
pub struct Params {
    pub cfg: GptConfig,
    pub vars: Vec<(ParamSpec, Var)>,
    /// Set when the vars are a LoRA adapter of a frozen base rather than the whole model.
    pub lora: Option<crate::LoraConfig>,
}

impl Params {
    /// Trainable LoRA adapter weights (`….lora_A.weight`, `….lora_B.weight`) for `lora` on `cfg`.
    pub fn from_adapter(cfg: &GptConfig, lora: &crate::LoraConfig, mut w: Weights) -> Result<Params> {
        let vars = lora
            .param_specs(cfg)
            .into_iter()
            .map(|s| {
                let t = w
                    .remove(&s.name)
                    .ok_or_else(|| Error::Config(format!("no tensor {}", s.name)))?;
                Ok((s, Var::from_tensor(&t)?))
            })
            .collect::<Result<_>>()?;
        Ok(Params {
            cfg: cfg.clone(),
            vars,
            lora: Some(lora.clone()),
        })
    }

    pub fn from_weights(cfg: &GptConfig, mut w: Weights) -> Result<Params> {
        let vars = param_specs(cfg)
            .into_iter()
            .map(|s| {
                let t = w
                    .remove(&s.name)
                    .ok_or_else(|| Error::Config(format!("no tensor {}", s.name)))?;
                let var = Var::from_tensor(&t)?;
                Ok((s, var))
            })
            .collect::<Result<_>>()?;
        Ok(Params {
            cfg: cfg.clone(),
            vars,
            lora: None,
        })
    }

    /// A builder whose tensors are these vars, so the model's gradients reach them.
    pub fn var_builder(&self, device: &Device) -> VarBuilder<'static> {
        let ts = self
            .vars
            .iter()
            .map(|(s, v)| (s.name.clone(), v.as_tensor().clone()))
            .collect();
        VarBuilder::from_tensors(ts, DType::F32, device)
    }

    /// The current values by name, detached from autograd but sharing storage with the vars (so
    /// they follow every update).
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        self.vars
            .iter()
            .map(|(s, v)| (s.name.clone(), v.as_tensor().detach()))
            .collect()
    }

    pub fn count(&self) -> usize {
        self.vars.iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Every variable's values, one after another in order (the training engine's layout).
    pub fn flat(&self) -> Result<Vec<f32>> {
        flatten(self.vars.iter().map(|(_, v)| v.as_tensor()))
    }
}

/// The values of `tensors`, one after another, as f32.
pub fn flatten<'a>(tensors: impl Iterator<Item = &'a Tensor>) -> Result<Vec<f32>> {
    let mut out = Vec::new();
    for t in tensors {
        out.extend(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?);
    }
    Ok(out)
}
