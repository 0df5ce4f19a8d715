//! `TrainConfig`: a model section and a training section, as in `configs/*.toml`.

use std::path::{Path, PathBuf};

use chatforge_model::{GptConfig, LoraConfig, PrecisionSetting};
use serde::{Deserialize, Serialize};

use crate::{AdamWConfig, Error, Result};

/// The largest learning rate accepted: AdamW moves each weight by about `lr` per step, so above
/// 1 every step overshoots.
pub const MAX_LR: f64 = 1.0;
/// The longest run accepted, in optimizer steps (and, with `epochs`, passes over the data).
pub const MAX_STEPS: u64 = 1_000_000_000;
pub const MAX_EPOCHS: f64 = 1_000_000.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Loss on every token.
    Pretrain,
    /// Loss only where the shard's mask says: the assistant's turns.
    Sft,
    /// SFT of a LoRA adapter on a frozen base (`train.init`); see the `[lora]` section.
    Lora,
    /// LoRA on a base whose linear layers are kept block-quantised (`lora.quant`, default q4).
    Qlora,
    /// Direct preference optimisation on pairs, against the starting model (`train.beta`,
    /// `train.label_smoothing`); full, or an adapter with `train.adapter`.
    Dpo,
    /// Odds-ratio preference optimisation on pairs, reference-free (`train.beta` is its λ).
    Orpo,
}

/// The adapter a preference run trains instead of the whole model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Adapter {
    Lora,
    Qlora,
}

impl Mode {
    /// Whether the loss is masked to the assistant's turns.
    pub fn masked(self) -> bool {
        matches!(self, Mode::Sft | Mode::Lora | Mode::Qlora)
    }

    /// Whether the run trains on preference pairs.
    pub fn pairs(self) -> bool {
        matches!(self, Mode::Dpo | Mode::Orpo)
    }
}

impl std::str::FromStr for Adapter {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "lora" => Ok(Adapter::Lora),
            "qlora" => Ok(Adapter::Qlora),
            other => Err(Error::Config(format!(
                "adapter '{other}': expected lora or qlora"
            ))),
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "pretrain" => Ok(Mode::Pretrain),
            "sft" => Ok(Mode::Sft),
            "lora" => Ok(Mode::Lora),
            "qlora" => Ok(Mode::Qlora),
            "dpo" => Ok(Mode::Dpo),
            "orpo" => Ok(Mode::Orpo),
            other => Err(Error::Config(format!(
                "mode '{other}': expected pretrain, sft, lora, qlora, dpo or orpo"
            ))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainSettings {
    pub mode: Mode,
    /// Start from an HF GPT-2-family folder or an earlier run instead of random weights.
    #[serde(alias = "model_name", alias = "model_name_or_path", alias = "base_model")]
    pub init: Option<PathBuf>,
    #[serde(alias = "train_file", alias = "train_data", alias = "corpus_path")]
    pub data: Option<PathBuf>,
    #[serde(alias = "validation_file", alias = "val_data", alias = "eval_file")]
    pub val: Option<PathBuf>,
    /// Stop after this many optimizer steps…
    pub max_steps: Option<u64>,
    /// …or after this many passes over the data (whichever is given; `max_steps` wins).
    #[serde(alias = "num_epochs", alias = "num_train_epochs")]
    pub epochs: Option<f64>,
    #[serde(alias = "per_device_train_batch_size", alias = "train_batch_size")]
    pub batch_size: usize,
    /// Tokens per row [default: the model's context].
    #[serde(alias = "max_length", alias = "max_seq_length", alias = "block_size")]
    pub seq_len: Option<usize>,
    /// Accumulate micro-batches until a step has seen at least this many positions [default: one micro-batch].
    pub tokens_per_step: Option<usize>,
    #[serde(alias = "learning_rate")]
    pub lr: f64,
    #[serde(alias = "min_learning_rate")]
    pub min_lr: f64,
    pub warmup_steps: u64,
    pub weight_decay: f64,
    #[serde(alias = "adam_beta1")]
    pub beta1: f64,
    #[serde(alias = "adam_beta2")]
    pub beta2: f64,
    #[serde(alias = "adam_epsilon")]
    pub eps: f64,
    /// Clip the global gradient norm to this (0: off).
    #[serde(alias = "max_grad_norm", alias = "gradient_clip")]
    pub grad_clip: f64,
    #[serde(alias = "eval_steps", alias = "eval_interval")]
    pub eval_every: u64,
    /// Validation batches per evaluation [default: the whole validation shard].
    pub eval_batches: Option<usize>,
    /// Stop after this many evaluations without a better validation loss.
    #[serde(alias = "early_stopping_patience")]
    pub patience: Option<u64>,
    #[serde(alias = "save_steps", alias = "save_every")]
    pub checkpoint_every: u64,
    /// Checkpoints kept besides `best/`.
    #[serde(alias = "save_total_limit")]
    pub keep_last: usize,
    pub seed: u64,
    /// LoRA: also write the best adapter to `adapters/<name>/` (one adapter per persona on one base).
    pub adapter_name: Option<String>,
    /// Preference modes (dpo, orpo): train a LoRA or QLoRA adapter instead of the whole model.
    pub adapter: Option<Adapter>,
    /// Preference modes: DPO's β (the strength of the pull towards the reference), ORPO's λ.
    pub beta: f64,
    /// DPO: the share of pairs assumed mislabelled (conservative DPO), in [0, 0.5).
    pub label_smoothing: f64,
    /// Recompute each block's activations in backward instead of keeping them (long contexts).
    #[serde(alias = "gradient_checkpointing")]
    pub grad_checkpoint: bool,
    /// The weight products' inputs: f32, bf16 (AVX-512 BF16; weights and optimizer state stay
    /// f32) or auto (bf16 where the CPU has it). Also `bf16 = true` (Hugging Face's flag).
    #[serde(alias = "bf16")]
    pub precision: PrecisionSetting,
    /// Kept so configs that set it still load: training always runs on the engine (plain
    /// buffers, hand-written backward), and `false` (the removed autograd path) is refused.
    pub engine: bool,
}

impl TrainSettings {
    /// The adapter that trains, if any: mode lora or qlora, or a preference mode's `adapter`.
    pub fn adapter(&self) -> Option<Adapter> {
        match self.mode {
            Mode::Lora => Some(Adapter::Lora),
            Mode::Qlora => Some(Adapter::Qlora),
            _ => self.adapter,
        }
    }

    /// The preference objective of mode dpo or orpo.
    pub fn objective(&self) -> Option<crate::preference::Objective> {
        use crate::preference::Objective;
        match self.mode {
            Mode::Dpo => Some(Objective::Dpo {
                beta: self.beta,
                label_smoothing: self.label_smoothing,
            }),
            Mode::Orpo => Some(Objective::Orpo { beta: self.beta }),
            _ => None,
        }
    }
}

impl Default for TrainSettings {
    fn default() -> Self {
        TrainSettings {
            mode: Mode::Sft,
            adapter: None,
            beta: 0.1,
            label_smoothing: 0.0,
            init: None,
            data: None,
            val: None,
            max_steps: None,
            epochs: None,
            batch_size: 8,
            seq_len: None,
            tokens_per_step: None,
            lr: 1e-3,
            min_lr: 1e-4,
            warmup_steps: 20,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            grad_clip: 1.0,
            eval_every: 50,
            eval_batches: None,
            patience: None,
            checkpoint_every: 100,
            keep_last: 2,
            seed: 1337,
            adapter_name: None,
            grad_checkpoint: false,
            precision: PrecisionSetting::F32,
            engine: true,
        }
    }
}

impl TrainSettings {
    pub fn adamw(&self) -> AdamWConfig {
        AdamWConfig {
            lr: self.lr,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub model: GptConfig,
    pub train: TrainSettings,
    /// Used when `train.mode = "lora"`.
    pub lora: LoraConfig,
}

/// A config whose keys stand at the top level (seed 001's flat `training_config.json`), put into
/// sections: each key goes to the first section whose struct accepts it alone (so aliases count),
/// else to `train`, which names it if nothing knows it.
fn sectioned(value: serde_json::Value) -> Result<serde_json::Value> {
    use serde_json::{Map, Value};
    let Value::Object(top) = value else {
        return Err(Error::Config("a config file holds a table of settings".into()));
    };
    let sections = ["model", "train", "training", "lora"];
    let mut out = Map::new();
    for (k, v) in top {
        if sections.contains(&k.as_str()) && v.is_object() {
            let key = if k == "training" { "train" } else { k.as_str() };
            let slot = out
                .entry(key.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if let (Value::Object(slot), Value::Object(add)) = (slot, v) {
                slot.extend(add);
            }
            continue;
        }
        let one = Value::Object(Map::from_iter([(k.clone(), v.clone())]));
        let section = if serde_json::from_value::<GptConfig>(one.clone()).is_ok() {
            "model"
        } else if serde_json::from_value::<LoraConfig>(one).is_ok() {
            "lora"
        } else {
            "train"
        };
        let slot = out
            .entry(section.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(slot) = slot {
            slot.insert(k, v);
        }
    }
    Ok(Value::Object(out))
}

impl TrainConfig {
    /// Reads a config file: TOML, JSON (`.json`, seed 001's `training_config.json`) or YAML
    /// (`.yaml`/`.yml`, seed 000's `config.yaml`). Sections are `[model]`, `[train]` (or
    /// `[training]`) and `[lora]`; keys may also stand at the top level, each going to the section
    /// that knows it. Common Hugging Face names are aliases (`hidden_size`, `learning_rate`,
    /// `num_epochs`, `model_name`, …; docs/config.md); an unknown key is an error naming it.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        let bad = |e: String| Error::Config(format!("{}: {e}", path.display()));
        let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase());
        let value: serde_json::Value = match ext.as_deref() {
            Some("json") => serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?,
            Some("yaml" | "yml") => yaml_serde::from_str(&text).map_err(|e| bad(e.to_string()))?,
            _ => toml::from_str(&text).map_err(|e| bad(e.to_string()))?,
        };
        serde_json::from_value(sectioned(value)?).map_err(|e| bad(e.to_string()))
    }

    /// Bytes a run of this config needs, about, when `model` is the model it trains (this
    /// config's, or the one `train.init` holds): weights, gradients and AdamW's two moments of
    /// what trains, the frozen base (quantised for QLoRA), and one micro-batch's activations on
    /// the engine (16 values per token, layer and width, the logits and their gradient, and an
    /// attention tile pair per thread). Computed without overflow for any input.
    pub fn memory_needed(&self, model: &GptConfig) -> u128 {
        let t = &self.train;
        let f32s = |n: u128| n.saturating_mul(4);
        let total = model.n_params() as u128;
        let weights = if t.adapter().is_some() {
            let adapter: u128 = self
                .lora
                .param_specs(model)
                .iter()
                .map(|s| s.shape.iter().fold(1u128, |a, &d| a.saturating_mul(d as u128)))
                .fold(0, u128::saturating_add);
            // q4: half a byte and a 4-byte scale per 32 values; q8: one byte and the scale.
            let base = match (t.adapter(), self.lora.quant) {
                (Some(Adapter::Qlora), Some(chatforge_model::quant::QuantKind::Q8)) => total * 9 / 8,
                (Some(Adapter::Qlora), _) => total * 5 / 8,
                _ => f32s(total),
            };
            base.saturating_add(f32s(adapter).saturating_mul(4))
        } else {
            f32s(total).saturating_mul(4)
        };
        let seq = t.seq_len.unwrap_or(model.n_ctx) as u128;
        let tokens = (t.batch_size as u128).saturating_mul(seq);
        let (c, l, v) = (
            model.n_embd as u128,
            model.n_layer as u128,
            model.vocab_size as u128,
        );
        let per_token = (16 * c * l).saturating_add(2 * v);
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u128;
        let acts = f32s(tokens.saturating_mul(per_token))
            .saturating_add(f32s(2 * seq * seq).saturating_mul(threads));
        weights.saturating_add(acts)
    }

    /// Checks what can be checked before any data is read; messages name the field.
    pub fn validate(&self) -> Result<()> {
        self.model.validate().map_err(|e| Error::Config(e.to_string()))?;
        let t = &self.train;
        let bad = |m: String| Err(Error::Config(m));
        t.precision.resolve().map_err(Error::Config)?;
        if !t.engine {
            return bad(
                "train.engine = false: the autograd path is gone; the engine trains every mode".into(),
            );
        }
        if t.batch_size == 0 {
            return bad("train.batch_size must be at least 1".into());
        }
        // With --init the model (its position table too) comes from there, and `train` checks
        // seq_len against it once it is loaded.
        if let Some(s) = t.seq_len
            && (s == 0 || (t.init.is_none() && s > self.model.n_ctx))
        {
            return bad(format!(
                "train.seq_len = {s} must be in 1..={} (model.n_ctx)",
                self.model.n_ctx
            ));
        }
        if !(t.lr > 0.0 && t.lr <= MAX_LR && (0.0..=t.lr).contains(&t.min_lr)) {
            return bad(format!(
                "train.lr = {} and train.min_lr = {} need 0 <= min_lr <= lr <= {MAX_LR}, lr > 0",
                t.lr, t.min_lr
            ));
        }
        for (name, v) in [("beta1", t.beta1), ("beta2", t.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return bad(format!("train.{name} = {v} must be in [0, 1)"));
            }
        }
        if !(t.eps > 0.0 && t.eps <= 1.0) {
            return bad(format!("train.eps = {} must be in (0, 1]", t.eps));
        }
        // Decay shrinks each weight by lr · weight_decay per step: at 1 or more it flips signs.
        if !(t.weight_decay >= 0.0 && t.weight_decay * t.lr < 1.0) {
            return bad(format!(
                "train.weight_decay = {} must be >= 0 with lr · weight_decay < 1",
                t.weight_decay
            ));
        }
        if !(t.grad_clip >= 0.0 && t.grad_clip.is_finite()) {
            return bad(format!(
                "train.grad_clip = {} must be >= 0 (0: off) and finite",
                t.grad_clip
            ));
        }
        match (t.max_steps, t.epochs) {
            (None, None) => return bad("give train.max_steps or train.epochs".into()),
            (Some(n), _) if !(1..=MAX_STEPS).contains(&n) => {
                return bad(format!("train.max_steps = {n} must be in 1..={MAX_STEPS}"));
            }
            (None, Some(e)) if !(e > 0.0 && e <= MAX_EPOCHS) => {
                return bad(format!("train.epochs = {e} must be in (0, {MAX_EPOCHS}]"));
            }
            _ => {}
        }
        if t.eval_every == 0 || t.checkpoint_every == 0 {
            return bad("train.eval_every and train.checkpoint_every must be at least 1".into());
        }
        for (name, v) in [
            ("keep_last", Some(t.keep_last)),
            ("tokens_per_step", t.tokens_per_step),
            ("eval_batches", t.eval_batches),
            ("patience", t.patience.map(|p| p as usize)),
        ] {
            if v == Some(0) {
                return bad(format!("train.{name} must be at least 1"));
            }
        }
        if t.adapter().is_some() {
            self.lora.validate().map_err(|e| Error::Config(e.to_string()))?;
            if t.init.is_none() {
                return bad("an adapter adapts a pretrained model: give train.init (--init)".into());
            }
        }
        if t.adapter.is_some() && !t.mode.pairs() {
            return bad(format!(
                "train.adapter is for the preference modes (dpo, orpo); mode {:?} has its own (use mode lora or qlora)",
                t.mode
            ));
        }
        if t.mode.pairs() {
            if !(t.beta > 0.0 && t.beta.is_finite()) {
                return bad(format!("train.beta = {} must be above 0 and finite", t.beta));
            }
            if !(0.0..0.5).contains(&t.label_smoothing) {
                return bad(format!(
                    "train.label_smoothing = {} must be in [0, 0.5)",
                    t.label_smoothing
                ));
            }
            if t.mode == Mode::Dpo && t.init.is_none() {
                return bad("DPO tunes a trained model against itself: give train.init (--init)".into());
            }
        }
        if let Some(n) = &t.adapter_name
            && (n.is_empty() || !n.chars().all(|c| c.is_alphanumeric() || c == '-' || c == '_'))
        {
            return bad(format!(
                "train.adapter_name {n:?}: use letters, digits, '-' and '_' (it names a folder)"
            ));
        }
        Ok(())
    }
}
