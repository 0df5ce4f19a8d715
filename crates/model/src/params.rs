//! A model's weights by name: their specification (shape, initialisation, weight decay), seeded
//! initialisation, and loading/saving in the Hugging Face layouts (`model.safetensors`,
//! `pytorch_model.bin`; f32, f16 or bf16 stored, f32 in memory).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use chatforge_base::Rng;

use crate::tensor::Tensor;
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
                name: slot.name(cfg.arch),
                shape: slot.shape(cfg),
                init,
                decay,
            }
        })
        .collect()
}

/// Named f32 tensors.
pub type Weights = HashMap<String, Tensor>;

/// Fresh weights drawn from `rng`.
pub fn init_weights(cfg: &GptConfig, rng: &mut Rng) -> Result<Weights> {
    cfg.validate()?;
    init_specs(&param_specs(cfg), rng)
}

/// Tensors for `specs`, drawn in order from `rng`.
pub fn init_specs(specs: &[ParamSpec], rng: &mut Rng) -> Result<Weights> {
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
            Ok((s.name.clone(), Tensor::new(s.shape.clone(), data)?))
        })
        .collect()
}

/// Brings names from other GPT-2 checkpoints to ours ([`crate::layout::checkpoint_alias`]).
fn normalise(raw: Vec<(String, Tensor)>) -> Result<Weights> {
    let mut out = Weights::new();
    for (name, t) in raw {
        if let Some(name) = crate::layout::checkpoint_alias(&name, t.rank()) {
            out.insert(name, t);
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
        w.remove(&crate::layout::Slot::LmHead.name(cfg.arch));
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

/// Reads `model.safetensors` or `pytorch_model.bin` (a file, or the folder holding one), whole or
/// in shards with their `*.index.json`.
pub fn load_weights(path: &Path, cfg: &GptConfig) -> Result<Weights> {
    let files = weights_files(path)?;
    let mut raw = Vec::new();
    for file in &files {
        raw.extend(crate::io::read_tensors(file)?);
    }
    let source = weights_file(path)?;
    let mut seen = std::collections::HashSet::new();
    if let Some((name, _)) = raw.iter().find(|(n, _)| !seen.insert(n.clone())) {
        return Err(Error::Weights {
            path: source,
            msg: format!("tensor {name} is in more than one shard"),
        });
    }
    check_weights(cfg, normalise(raw)?, &source)
}

/// What a folder's weights are in, preferred first: `model.safetensors`, its sharded index,
/// `pytorch_model.bin`, its sharded index.
const WEIGHT_FILES: [&str; 4] = [
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
];

/// The largest shard index read (real ones are tens of kilobytes).
const MAX_INDEX_BYTES: u64 = 16 << 20;

/// A folder's weights file (or sharded index, see [`WEIGHT_FILES`]), or the file itself.
pub fn weights_file(path: &Path) -> Result<PathBuf> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    for name in WEIGHT_FILES {
        if path.join(name).is_file() {
            return Ok(path.join(name));
        }
    }
    Err(Error::Weights {
        path: path.to_path_buf(),
        msg: "no model.safetensors, pytorch_model.bin or sharded index here".into(),
    })
}

/// The files holding a folder's weights: one, or the shards its index names (each a file beside
/// the index: a name that leaves the folder is refused).
pub fn weights_files(path: &Path) -> Result<Vec<PathBuf>> {
    let file = weights_file(path)?;
    let is_index = file
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(".index.json"));
    if !is_index {
        return Ok(vec![file]);
    }
    let bad = |msg: String| Error::Weights {
        path: file.clone(),
        msg,
    };
    let len = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    if len > MAX_INDEX_BYTES {
        return Err(bad(format!("{len} bytes is too large for a shard index")));
    }
    let text = std::fs::read_to_string(&file).map_err(|e| Error::Io {
        path: file.clone(),
        source: e,
    })?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let map = v["weight_map"]
        .as_object()
        .ok_or_else(|| bad("no \"weight_map\" object".into()))?;
    let dir = file.parent().unwrap_or(Path::new("."));
    let mut shards: Vec<PathBuf> = Vec::new();
    for shard in map.values() {
        let name = shard
            .as_str()
            .ok_or_else(|| bad(format!("weight_map value {shard} is not a file name")))?;
        let plain = Path::new(name).file_name().is_some_and(|f| f == name) && name != "..";
        if !plain {
            return Err(bad(format!("shard {name:?} is not a file beside the index")));
        }
        let p = dir.join(name);
        if !p.is_file() {
            return Err(bad(format!("shard {name} is missing")));
        }
        if !shards.contains(&p) {
            shards.push(p);
        }
    }
    shards.sort();
    Ok(shards)
}

/// Reads an HF folder (GPT-2 or the Llama family): `config.json` and its weights.
pub fn load_hf(dir: &Path) -> Result<(GptConfig, Weights)> {
    let cfg = read_hf_config(dir)?;
    let w = load_weights(dir, &cfg)?;
    Ok((cfg, w))
}

/// The `config.json` of an HF folder (or of an ONNX export, which keeps one beside the graph).
pub fn read_hf_config(dir: &Path) -> Result<GptConfig> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::Io {
        path: cfg_path.clone(),
        source: e,
    })?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Weights {
        path: cfg_path.clone(),
        msg: format!("invalid JSON: {e}"),
    })?;
    GptConfig::from_hf(&v)
}

/// Writes weights as safetensors (sorted names), through a temporary file.
pub fn save_weights(w: &BTreeMap<String, Tensor>, path: &Path) -> Result<()> {
    crate::io::safetensors::write(path, w)
}

/// The values of `specs`' tensors from `w`, one after another in order (the training engine's
/// layout); each is taken out of `w`.
pub fn take_flat(specs: &[ParamSpec], w: &mut Weights) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(specs.iter().map(|s| s.shape.iter().product::<usize>()).sum());
    for s in specs {
        let t = w
            .remove(&s.name)
            .ok_or_else(|| Error::Config(format!("no tensor {}", s.name)))?;
        if t.dims() != s.shape.as_slice() {
            return Err(Error::Config(format!(
                "tensor {} has shape {:?}, expected {:?}",
                s.name,
                t.dims(),
                s.shape
            )));
        }
        out.extend_from_slice(t.data());
    }
    Ok(out)
}
