//! `GptConfig`: the shape of a GPT, as TOML in `configs/` and as HF `config.json`.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{Error, Result};

/// Bounds on a model's shape, far above any model this tool trains or runs (the largest public
/// vocabularies are ~256k, contexts ~1M, widths ~16k), so that a hostile or mistyped config is
/// refused before anything is allocated for it.
pub const MAX_VOCAB: usize = 1 << 21;
pub const MAX_CTX: usize = 1 << 21;
pub const MAX_LAYERS: usize = 1 << 10;
pub const MAX_EMBD: usize = 1 << 16;
/// f32 weights at most 1 TiB.
pub const MAX_WEIGHT_BYTES: u128 = 1 << 40;

/// The MLP's activation. GPT-2 checkpoints use the tanh approximation (`gelu_new`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Activation {
    /// `0.5 x (1 + tanh(√(2/π)(x + 0.044715 x³)))`: HF `gelu_new`, `gelu_pytorch_tanh`.
    #[serde(alias = "gelu_new", alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    GeluTanh,
    /// `0.5 x (1 + erf(x/√2))`: HF `gelu`, PyTorch `nn.GELU()`.
    #[serde(alias = "gelu")]
    GeluErf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GptConfig {
    pub vocab_size: usize,
    /// Context length: the size of the position table.
    #[serde(alias = "n_positions", alias = "max_position_embeddings")]
    pub n_ctx: usize,
    #[serde(alias = "num_hidden_layers", alias = "num_layers")]
    pub n_layer: usize,
    #[serde(alias = "num_attention_heads", alias = "num_heads")]
    pub n_head: usize,
    #[serde(alias = "hidden_size", alias = "d_model")]
    pub n_embd: usize,
    #[serde(alias = "resid_pdrop", alias = "hidden_dropout")]
    pub dropout: f32,
    /// Biases in linear layers and layer norms.
    pub bias: bool,
    /// The output projection reuses the token embedding (GPT-2 does).
    pub tie_embeddings: bool,
    #[serde(alias = "activation_function")]
    pub activation: Activation,
    #[serde(alias = "layer_norm_epsilon")]
    pub layer_norm_eps: f64,
}

/// The default model: [`GptConfig::small`] with the tokenizer's vocabulary (`vocab_size` 0 is
/// filled in from the training shard).
impl Default for GptConfig {
    fn default() -> Self {
        GptConfig::small(0)
    }
}

impl GptConfig {
    /// Seconds-long tests and smoke runs.
    pub fn tiny(vocab_size: usize) -> Self {
        GptConfig {
            vocab_size,
            n_ctx: 64,
            n_layer: 2,
            n_head: 2,
            n_embd: 32,
            dropout: 0.0,
            bias: true,
            tie_embeddings: true,
            activation: Activation::GeluTanh,
            layer_norm_eps: 1e-5,
        }
    }

    /// The default pipeline model: minutes on two cores.
    pub fn small(vocab_size: usize) -> Self {
        GptConfig {
            n_ctx: 128,
            n_layer: 4,
            n_head: 4,
            n_embd: 128,
            ..GptConfig::tiny(vocab_size)
        }
    }

    /// The model of `chatforge bench train` (and `scripts/reference/bench_train_torch.py`).
    pub fn bench() -> Self {
        GptConfig {
            vocab_size: 4096,
            n_ctx: 256,
            n_layer: 6,
            n_head: 6,
            n_embd: 384,
            activation: Activation::GeluErf,
            ..GptConfig::tiny(4096)
        }
    }

    /// GPT-2 small (124M).
    pub fn gpt2() -> Self {
        GptConfig {
            vocab_size: 50257,
            n_ctx: 1024,
            n_layer: 12,
            n_head: 12,
            n_embd: 768,
            dropout: 0.1,
            ..GptConfig::tiny(50257)
        }
    }

    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// Checks what the model needs before any work starts; messages name the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Config(msg));
        if self.vocab_size == 0
            || self.n_ctx == 0
            || self.n_layer == 0
            || self.n_head == 0
            || self.n_embd == 0
        {
            return bad("vocab_size, n_ctx, n_layer, n_head and n_embd must all be at least 1".into());
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return bad(format!(
                "n_head = {} does not divide n_embd = {}",
                self.n_head, self.n_embd
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout = {} must be in [0, 1)", self.dropout));
        }
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps <= 1.0) {
            return bad(format!(
                "layer_norm_eps = {} must be in (0, 1]",
                self.layer_norm_eps
            ));
        }
        for (name, v, max) in [
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            ("n_ctx", self.n_ctx, MAX_CTX),
            ("n_layer", self.n_layer, MAX_LAYERS),
            ("n_embd", self.n_embd, MAX_EMBD),
        ] {
            if v > max {
                return bad(format!("{name} = {v} is above the largest supported, {max}"));
            }
        }
        let bytes = self.n_params_u128() * 4;
        if bytes > MAX_WEIGHT_BYTES {
            return bad(format!(
                "the model would hold {} of weights, above the {} supported",
                crate::human_bytes(bytes),
                crate::human_bytes(MAX_WEIGHT_BYTES)
            ));
        }
        Ok(())
    }

    /// Parameters, counting a tied embedding once (for a validated config, which fits `usize`).
    pub fn n_params(&self) -> usize {
        usize::try_from(self.n_params_u128()).unwrap_or(usize::MAX)
    }

    /// [`GptConfig::n_params`] without overflow, for configs not yet validated.
    fn n_params_u128(&self) -> u128 {
        let (c, v, l, t) = (
            self.n_embd as u128,
            self.vocab_size as u128,
            self.n_layer as u128,
            self.n_ctx as u128,
        );
        let b = u128::from(self.bias);
        let block = 2 * (c + b * c)
            + (c * 3 * c + b * 3 * c)
            + (c * c + b * c)
            + (c * 4 * c + b * 4 * c)
            + (4 * c * c + b * c);
        let head = if self.tie_embeddings { 0 } else { v * c };
        v * c + t * c + l * block + (c + b * c) + head
    }

    /// Reads a Hugging Face GPT-2 `config.json`.
    pub fn from_hf(v: &Value) -> Result<Self> {
        let get = |k: &str| v.get(k).and_then(Value::as_u64).map(|n| n as usize);
        let need =
            |k: &str| get(k).ok_or_else(|| Error::Config(format!("config.json has no integer \"{k}\"")));
        if let Some(t) = v.get("model_type").and_then(Value::as_str)
            && t != "gpt2"
        {
            return Err(Error::Config(format!(
                "model_type \"{t}\" is not a GPT-2-family model"
            )));
        }
        let activation = match v
            .get("activation_function")
            .and_then(Value::as_str)
            .unwrap_or("gelu_new")
        {
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "gelu" => Activation::GeluErf,
            other => {
                return Err(Error::Config(format!(
                    "activation_function \"{other}\" is not supported"
                )));
            }
        };
        let cfg = GptConfig {
            vocab_size: need("vocab_size")?,
            n_ctx: get("n_positions")
                .or_else(|| get("n_ctx"))
                .ok_or_else(|| Error::Config("config.json has no \"n_positions\"".into()))?,
            n_layer: need("n_layer")?,
            n_head: need("n_head")?,
            n_embd: need("n_embd")?,
            dropout: v.get("resid_pdrop").and_then(Value::as_f64).unwrap_or(0.1) as f32,
            bias: true,
            tie_embeddings: v
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            activation,
            layer_norm_eps: v
                .get("layer_norm_epsilon")
                .and_then(Value::as_f64)
                .unwrap_or(1e-5),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// A `config.json` that transformers' `GPT2LMHeadModel` loads.
    pub fn to_hf(&self) -> Value {
        json!({
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": self.vocab_size,
            "n_positions": self.n_ctx,
            "n_ctx": self.n_ctx,
            "n_embd": self.n_embd,
            "n_layer": self.n_layer,
            "n_head": self.n_head,
            "n_inner": null,
            "activation_function": match self.activation { Activation::GeluTanh => "gelu_new", Activation::GeluErf => "gelu" },
            "resid_pdrop": self.dropout,
            "embd_pdrop": self.dropout,
            "attn_pdrop": self.dropout,
            "layer_norm_epsilon": self.layer_norm_eps,
            "initializer_range": 0.02,
            "tie_word_embeddings": self.tie_embeddings,
            "scale_attn_weights": true,
            "use_cache": true,
            "torch_dtype": "float32",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_small_has_124m_parameters() {
        assert_eq!(GptConfig::gpt2().n_params(), 124_439_808);
    }

    #[test]
    fn hf_round_trip_and_validation() {
        let cfg = GptConfig::bench();
        assert_eq!(
            GptConfig::from_hf(&cfg.to_hf()).unwrap(),
            GptConfig {
                dropout: 0.0,
                ..cfg.clone()
            }
        );
        let bad = GptConfig { n_head: 5, ..cfg };
        assert_eq!(
            bad.validate().unwrap_err().to_string(),
            "config: n_head = 5 does not divide n_embd = 384"
        );
        let err = GptConfig::from_hf(&json!({"model_type": "llama"}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a GPT-2-family model"), "{err}");
    }
}
