//! LoRA (Hu et al. 2021): a frozen linear layer `W` plus a trainable low-rank update, `y = x W + b +
//! s · (x Aᵀ) Bᵀ` with `A: (r, in)`, `B: (out, r)` and `s = alpha / r`. `A` starts small and random,
//! `B` at zero, so an untrained adapter changes nothing.
//!
//! Adapters are stored as PEFT stores them (`adapter_config.json` + `adapter_model.safetensors`,
//! tensors `base_model.model.transformer.h.{i}.attn.c_attn.lora_A.weight` for GPT-2, with
//! `fan_in_fan_out` because its Conv1D weights are `(in, out)`;
//! `base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight` for the Llama family), so
//! `peft` loads what chatforge writes and the other way round.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use chatforge_base::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::params::{Init, ParamSpec, Weights};
use crate::tensor::Tensor;
use crate::{Error, GptConfig, Result};

use crate::Arch;
use crate::layout::Linear;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraConfig {
    #[serde(alias = "r", alias = "lora_r", alias = "lora_rank")]
    pub rank: usize,
    #[serde(alias = "lora_alpha")]
    pub alpha: f64,
    #[serde(alias = "lora_dropout")]
    pub dropout: f32,
    /// Module names: GPT-2's `c_attn`, `c_proj` (both projections), `c_fc`; the Llama family's
    /// `q_proj` … `down_proj`, where GPT-2's names also work (`c_attn`: q, k, v; `c_fc`: gate, up;
    /// `c_proj`: o, down); `all-linear`.
    #[serde(alias = "target_modules", alias = "lora_targets")]
    pub targets: Vec<String>,
    /// QLoRA: keep every linear layer of the frozen base in this block-quantised form.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quant: Option<crate::quant::QuantKind>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            rank: 8,
            alpha: 16.0,
            dropout: 0.05,
            targets: vec![Linear::AttnQkv.module_in(Arch::Gpt2).into()],
            quant: None,
        }
    }
}

/// One adapted layer: block `layer`'s `linear`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub layer: usize,
    pub linear: Linear,
}

impl Target {
    /// The adapted layer's module path in a model of `arch` (`transformer.h.0.attn.c_attn`).
    pub fn path(self, arch: Arch) -> String {
        crate::layout::linear_path(self.layer, self.linear, arch)
    }
}

/// Every target name either family knows.
fn known_targets() -> Vec<&'static str> {
    let mut names = crate::layout::lora_modules(Arch::Gpt2);
    names.extend(crate::layout::lora_modules(Arch::Llama));
    names.push("all-linear");
    names
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 || self.rank > crate::config::MAX_EMBD {
            return Err(Error::Config(format!(
                "lora rank {} must be in 1..={}",
                self.rank,
                crate::config::MAX_EMBD
            )));
        }
        if !(self.alpha > 0.0 && self.alpha.is_finite()) {
            return Err(Error::Config(format!(
                "lora alpha {} must be positive",
                self.alpha
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Config(format!(
                "lora dropout {} must be in [0, 1)",
                self.dropout
            )));
        }
        let known = known_targets();
        if self.targets.is_empty() {
            return Err(Error::Config(format!(
                "lora targets: name at least one of {}",
                known.join(", ")
            )));
        }
        for t in &self.targets {
            if !known.contains(&t.as_str()) {
                return Err(Error::Config(format!(
                    "lora target {t:?} is not a linear layer ({})",
                    known.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// [`LoraConfig::validate`], and every target names a layer of a model of `arch`.
    pub fn validate_for(&self, arch: Arch) -> Result<()> {
        self.validate()?;
        for t in &self.targets {
            if Linear::targeted(t, arch).is_empty() {
                return Err(Error::Config(format!(
                    "lora target {t:?} is not a linear layer of a {} model ({}, all-linear)",
                    arch.name(),
                    crate::layout::lora_modules(arch).join(", ")
                )));
            }
        }
        Ok(())
    }

    /// The adapted layers of a GPT with `cfg`, in model order.
    pub fn layers(&self, cfg: &GptConfig) -> Vec<Target> {
        let covered: Vec<Linear> = self
            .targets
            .iter()
            .flat_map(|t| Linear::targeted(t, cfg.arch))
            .collect();
        (0..cfg.n_layer)
            .flat_map(|layer| {
                Linear::of(cfg.arch)
                    .iter()
                    .copied()
                    .filter(|l| covered.contains(l))
                    .map(move |linear| Target { layer, linear })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The module names a model of `arch` adapts (GPT-2's names resolved to the family's).
    pub fn modules(&self, arch: Arch) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for l in Linear::of(arch) {
            let name = l.module_in(arch);
            if self.targets.iter().any(|t| Linear::targeted(t, arch).contains(l))
                && !out.iter().any(|o| o == name)
            {
                out.push(name.to_string());
            }
        }
        out
    }

    /// The adapter's parameters (named as inside the model: `….c_attn.lora_A.weight`), in order.
    /// `A` draws from PEFT's default (Kaiming-uniform with a = √5: U(±1/√in)), `B` is zero.
    pub fn param_specs(&self, cfg: &GptConfig) -> Vec<ParamSpec> {
        self.layers(cfg)
            .into_iter()
            .flat_map(|t| {
                let (n_in, n_out) = t.linear.shape(cfg);
                let (a, b) = crate::layout::lora_names(&t.path(cfg.arch));
                [
                    ParamSpec {
                        name: a,
                        shape: vec![self.rank, n_in],
                        init: Init::Uniform(1.0 / (n_in as f64).sqrt()),
                        decay: false,
                    },
                    ParamSpec {
                        name: b,
                        shape: vec![n_out, self.rank],
                        init: Init::Zeros,
                        decay: false,
                    },
                ]
            })
            .collect()
    }

    /// Fresh adapter weights drawn from `rng`.
    pub fn init(&self, cfg: &GptConfig, rng: &mut Rng) -> Result<Weights> {
        crate::params::init_specs(&self.param_specs(cfg), rng)
    }

    /// PEFT's `adapter_config.json` for an adapter of a model of `arch`.
    pub fn to_peft(&self, base: Option<&str>, arch: Arch) -> Value {
        json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base,
            "r": self.rank,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "target_modules": self.modules(arch),
            "fan_in_fan_out": !crate::layout::linear_out_in(arch),
            "bias": "none",
            "inference_mode": true,
            "init_lora_weights": true,
            "use_rslora": false,
            "use_dora": false,
            "modules_to_save": null,
            "layers_to_transform": null,
            "layers_pattern": null,
            "rank_pattern": {},
            "alpha_pattern": {},
            "revision": null,
        })
    }

    /// Reads PEFT's `adapter_config.json`, refusing what chatforge cannot reproduce.
    pub fn from_peft(v: &Value) -> Result<LoraConfig> {
        let bad = |m: String| Err(Error::Config(format!("adapter_config.json: {m}")));
        if v["peft_type"].as_str() != Some("LORA") {
            return bad(format!("peft_type {} is not LORA", v["peft_type"]));
        }
        for (key, ok) in [
            ("use_rslora", v["use_rslora"].as_bool() != Some(true)),
            ("use_dora", v["use_dora"].as_bool() != Some(true)),
            ("bias", v["bias"].as_str().is_none_or(|b| b == "none")),
            (
                "rank_pattern",
                v["rank_pattern"].as_object().is_none_or(|o| o.is_empty()),
            ),
            (
                "alpha_pattern",
                v["alpha_pattern"].as_object().is_none_or(|o| o.is_empty()),
            ),
            ("layers_to_transform", v["layers_to_transform"].is_null()),
            ("modules_to_save", v["modules_to_save"].is_null()),
        ] {
            if !ok {
                return bad(format!("{key} = {} is not supported", v[key]));
            }
        }
        let targets: Vec<String> = match &v["target_modules"] {
            Value::String(s) => vec![s.clone()],
            Value::Array(a) => a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect(),
            other => return bad(format!("target_modules {other} is not a list of names")),
        };
        let cfg = LoraConfig {
            rank: v["r"].as_u64().unwrap_or(0) as usize,
            alpha: v["lora_alpha"].as_f64().unwrap_or(0.0),
            dropout: v["lora_dropout"].as_f64().unwrap_or(0.0) as f32,
            targets,
            quant: None,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

use crate::layout::PEFT_PREFIX;

/// Writes an adapter folder in PEFT's layout (through a temporary folder, renamed at the end).
pub fn save_adapter(
    dir: &Path,
    cfg: &LoraConfig,
    adapter: &BTreeMap<String, Tensor>,
    base: Option<&str>,
    arch: Arch,
) -> Result<()> {
    let io = |path: &Path, e: std::io::Error| Error::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let tmp = dir.with_extension("tmp-adapter");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    write_adapter_files(&tmp, cfg, adapter, base, arch)?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| io(dir, e))
}

/// Writes `adapter_model.safetensors` (PEFT names) and `adapter_config.json` into an existing folder.
pub fn write_adapter_files(
    dir: &Path,
    cfg: &LoraConfig,
    adapter: &BTreeMap<String, Tensor>,
    base: Option<&str>,
    arch: Arch,
) -> Result<()> {
    let peft: BTreeMap<String, Tensor> = adapter
        .iter()
        .map(|(k, v)| (format!("{PEFT_PREFIX}{k}"), v.clone()))
        .collect();
    crate::params::save_weights(&peft, &dir.join("adapter_model.safetensors"))?;
    let text =
        serde_json::to_string_pretty(&cfg.to_peft(base, arch)).map_err(|e| Error::Config(e.to_string()))?;
    std::fs::write(dir.join("adapter_config.json"), text).map_err(|e| Error::Io {
        path: dir.join("adapter_config.json"),
        source: e,
    })
}

/// Whether `dir` holds a PEFT adapter.
pub fn is_adapter_dir(dir: &Path) -> bool {
    dir.join("adapter_config.json").is_file()
        && (dir.join("adapter_model.safetensors").is_file() || dir.join("adapter_model.bin").is_file())
}

/// Reads a PEFT LoRA adapter folder: its config and tensors named as inside the model.
pub fn load_adapter(dir: &Path, model: &GptConfig) -> Result<(LoraConfig, Weights)> {
    let err = |msg: String| Error::Weights {
        path: dir.to_path_buf(),
        msg,
    };
    let cfg_path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::Io {
        path: cfg_path.clone(),
        source: e,
    })?;
    let v: Value = serde_json::from_str(&text).map_err(|e| err(format!("adapter_config.json: {e}")))?;
    let cfg = LoraConfig::from_peft(&v)?;
    cfg.validate_for(model.arch)?;
    let file = ["adapter_model.safetensors", "adapter_model.bin"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
        .ok_or_else(|| err("no adapter_model.safetensors".into()))?;
    let raw = crate::io::read_tensors(&file)?;
    let mut w = HashMap::new();
    for (k, t) in raw {
        // PEFT writes `….lora_A.weight`; older versions and some tools keep the adapter name
        // (`….lora_A.default.weight`).
        let k = k
            .strip_prefix(PEFT_PREFIX)
            .unwrap_or(&k)
            .replace(".default.weight", ".weight");
        w.insert(k, t);
    }
    let expect = format!("with rank {} on this model it must be", cfg.rank);
    crate::params::match_specs(
        &cfg.param_specs(model),
        &w,
        &expect,
        "they do not belong to a LoRA adapter of this model",
    )
    .map_err(err)?;
    Ok((cfg, w))
}

/// Folds an adapter into base weights: `W += s · Aᵀ Bᵀ` for every adapted layer (`W` `(in, out)`;
/// `s · B A` for an `(out, in)` weight). Returns a new map.
pub fn merge(base: &Weights, cfg: &LoraConfig, adapter: &Weights, model: &GptConfig) -> Result<Weights> {
    let mut out = base.clone();
    let s = cfg.scale();
    let out_in = crate::layout::linear_out_in(model.arch);
    for t in cfg.layers(model) {
        let name =
            crate::layout::Slot::BlockLinear(t.layer, t.linear, crate::layout::Part::Weight).name(model.arch);
        let (a_name, b_name) = crate::layout::lora_names(&t.path(model.arch));
        let w = out
            .get(&name)
            .ok_or_else(|| Error::Config(format!("the base has no {name}")))?;
        let get = |n: String| {
            adapter
                .get(&n)
                .ok_or_else(|| Error::Config(format!("the adapter has no {n}")))
        };
        let a = get(a_name)?; // (r, in)
        let b = get(b_name)?; // (out, r)
        let (r, n_in, n_out) = (a.dims()[0], a.dims()[1], b.dims()[0]);
        let mut merged = w.clone();
        let (a, b) = (a.data(), b.data());
        let delta = |i: usize, o: usize| -> f32 {
            let dot: f64 = (0..r)
                .map(|k| f64::from(a[k * n_in + i]) * f64::from(b[o * r + k]))
                .sum();
            (s * dot) as f32
        };
        if out_in {
            for (o, row) in merged.data_mut().chunks_exact_mut(n_in).enumerate() {
                row.iter_mut().enumerate().for_each(|(i, x)| *x += delta(i, o));
            }
        } else {
            for (i, row) in merged.data_mut().chunks_exact_mut(n_out).enumerate() {
                row.iter_mut().enumerate().for_each(|(o, x)| *x += delta(i, o));
            }
        }
        out.insert(name, merged);
    }
    Ok(out)
}
