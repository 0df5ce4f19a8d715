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

/// The MLP's activation. GPT-2 checkpoints use the tanh approximation (`gelu_new`); the Llama
/// family gates its MLP with SiLU (SwiGLU: `down(silu(gate x) ⊙ up x)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Activation {
    /// `0.5 x (1 + tanh(√(2/π)(x + 0.044715 x³)))`: HF `gelu_new`, `gelu_pytorch_tanh`.
    #[serde(alias = "gelu_new", alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    GeluTanh,
    /// `0.5 x (1 + erf(x/√2))`: HF `gelu`, PyTorch `nn.GELU()`.
    #[serde(alias = "gelu")]
    GeluErf,
    /// SwiGLU: `silu(g) · u` with `silu(g) = g / (1 + e^(−g))` (the Llama family's `silu`).
    #[serde(alias = "swiglu")]
    Silu,
}

/// The model family: how positions enter, which norm, which MLP, and the checkpoint's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// GPT-2 (`GPT2LMHeadModel`): learned positions, layer norm, GELU MLP, one fused q/k/v
    /// product, Conv1D `(in, out)` weights.
    #[default]
    Gpt2,
    /// `LlamaForCausalLM` (SmolLM/SmolLM2, TinyLlama, Llama 3.x): rotary positions, RMSNorm,
    /// SwiGLU, grouped-query attention, `nn.Linear` `(out, in)` weights, no biases.
    Llama,
    /// `Qwen2ForCausalLM` (Qwen2, Qwen2.5): Llama with biases on q, k and v.
    Qwen2,
}

impl Arch {
    /// From `model_type` (or, without one, the first of `architectures`).
    pub fn from_hf(v: &Value) -> Result<Arch> {
        let model_type = v.get("model_type").and_then(Value::as_str);
        let architecture = v
            .get("architectures")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(Value::as_str);
        match (model_type, architecture) {
            (Some("gpt2"), _) | (None, Some("GPT2LMHeadModel")) | (None, None) => Ok(Arch::Gpt2),
            (Some("llama"), _) | (None, Some("LlamaForCausalLM")) => Ok(Arch::Llama),
            (Some("qwen2"), _) | (None, Some("Qwen2ForCausalLM")) => Ok(Arch::Qwen2),
            (Some(t), _) => Err(Error::Config(format!(
                "model_type \"{t}\" is not one chatforge runs (gpt2, llama, qwen2)"
            ))),
            (None, Some(a)) => Err(Error::Config(format!(
                "architecture \"{a}\" is not one chatforge runs (GPT2LMHeadModel, LlamaForCausalLM, Qwen2ForCausalLM)"
            ))),
        }
    }

    /// HF's `model_type` and llama.cpp's `general.architecture`.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Gpt2 => "gpt2",
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
        }
    }

    /// The Llama family (rotary positions, RMSNorm, SwiGLU, `(out, in)` weights).
    pub fn is_llama(self) -> bool {
        !matches!(self, Arch::Gpt2)
    }
}

/// Llama 3's rope scaling (`rope_scaling.rope_type = "llama3"`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Llama3Scaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

/// A model's shape: GPT-2 or the Llama family ([`Arch`]). Read from `configs/*.toml` (missing
/// keys take the family's defaults, see [`GptConfig::small`] and [`GptConfig::llama_small`]) and
/// from an HF `config.json` ([`GptConfig::from_hf`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "ConfigFile")]
pub struct GptConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    /// Context length: the size of the position table, or the rotary model's longest context.
    pub n_ctx: usize,
    pub n_layer: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads: `n_head`, or fewer with grouped-query attention (each shared by
    /// `n_head / n_kv_head` query heads).
    pub n_kv_head: usize,
    pub n_embd: usize,
    /// The MLP's inner width (`4 n_embd` for GPT-2, `intermediate_size` for the Llama family).
    pub n_inner: usize,
    pub dropout: f32,
    /// Biases: GPT-2's in every linear layer and layer norm; the Llama family's on q, k and v
    /// (Qwen2 has them, Llama does not).
    pub bias: bool,
    /// The output projection reuses the token embedding (GPT-2 does).
    pub tie_embeddings: bool,
    pub activation: Activation,
    /// The layer norm's (or RMSNorm's) epsilon.
    pub layer_norm_eps: f64,
    /// Rotary embeddings' base (the Llama family).
    pub rope_theta: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<Llama3Scaling>,
}

/// A config as written in a file: any key may be missing, and takes its family's default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(alias = "model_type")]
    arch: Option<Arch>,
    vocab_size: Option<usize>,
    #[serde(alias = "n_positions", alias = "max_position_embeddings")]
    n_ctx: Option<usize>,
    #[serde(alias = "num_hidden_layers", alias = "num_layers")]
    n_layer: Option<usize>,
    #[serde(alias = "num_attention_heads", alias = "num_heads")]
    n_head: Option<usize>,
    #[serde(alias = "num_key_value_heads")]
    n_kv_head: Option<usize>,
    #[serde(alias = "hidden_size", alias = "d_model")]
    n_embd: Option<usize>,
    #[serde(alias = "intermediate_size")]
    n_inner: Option<usize>,
    #[serde(alias = "resid_pdrop", alias = "hidden_dropout")]
    dropout: Option<f32>,
    bias: Option<bool>,
    tie_embeddings: Option<bool>,
    #[serde(alias = "activation_function", alias = "hidden_act")]
    activation: Option<Activation>,
    #[serde(alias = "layer_norm_epsilon", alias = "rms_norm_eps")]
    layer_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<Llama3Scaling>,
}

impl From<ConfigFile> for GptConfig {
    fn from(f: ConfigFile) -> GptConfig {
        let arch = f.arch.unwrap_or_default();
        let d = match arch {
            Arch::Gpt2 => GptConfig::small(0),
            Arch::Llama | Arch::Qwen2 => GptConfig {
                arch,
                bias: arch == Arch::Qwen2,
                ..GptConfig::llama_small(0)
            },
        };
        let n_head = f.n_head.unwrap_or(d.n_head);
        let n_embd = f.n_embd.unwrap_or(d.n_embd);
        GptConfig {
            arch,
            vocab_size: f.vocab_size.unwrap_or(d.vocab_size),
            n_ctx: f.n_ctx.unwrap_or(d.n_ctx),
            n_layer: f.n_layer.unwrap_or(d.n_layer),
            n_head,
            // Without a count, every query head has its own keys and values.
            n_kv_head: f.n_kv_head.unwrap_or(n_head),
            n_embd,
            n_inner: f.n_inner.unwrap_or_else(|| default_inner(arch, n_embd)),
            dropout: f.dropout.unwrap_or(d.dropout),
            bias: f.bias.unwrap_or(d.bias),
            tie_embeddings: f.tie_embeddings.unwrap_or(d.tie_embeddings),
            activation: f.activation.unwrap_or(d.activation),
            layer_norm_eps: f.layer_norm_eps.unwrap_or(d.layer_norm_eps),
            rope_theta: f.rope_theta.unwrap_or(d.rope_theta),
            rope_scaling: f.rope_scaling,
        }
    }
}

/// The MLP width a family gives a model of width `c`: GPT-2's `4c`; Llama's `8c/3` (SwiGLU's
/// three matrices cost what GPT-2's two do), rounded up to a multiple of 64.
pub fn default_inner(arch: Arch, c: usize) -> usize {
    match arch {
        Arch::Gpt2 => 4 * c,
        Arch::Llama | Arch::Qwen2 => (8 * c / 3).div_ceil(64) * 64,
    }
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
            arch: Arch::Gpt2,
            vocab_size,
            n_ctx: 64,
            n_layer: 2,
            n_head: 2,
            n_kv_head: 2,
            n_embd: 32,
            n_inner: 128,
            dropout: 0.0,
            bias: true,
            tie_embeddings: true,
            activation: Activation::GeluTanh,
            layer_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: None,
        }
    }

    /// The default pipeline model: minutes on two cores.
    pub fn small(vocab_size: usize) -> Self {
        GptConfig {
            n_ctx: 128,
            n_layer: 4,
            n_head: 4,
            n_kv_head: 4,
            n_embd: 128,
            n_inner: 512,
            ..GptConfig::tiny(vocab_size)
        }
    }

    /// A tiny Llama: grouped-query attention (4 query heads over 2 key/value heads), tied head.
    pub fn llama_tiny(vocab_size: usize) -> Self {
        GptConfig {
            arch: Arch::Llama,
            n_head: 4,
            n_kv_head: 2,
            n_inner: 96,
            bias: false,
            activation: Activation::Silu,
            ..GptConfig::tiny(vocab_size)
        }
    }

    /// The Llama family's small model: [`GptConfig::small`]'s size.
    pub fn llama_small(vocab_size: usize) -> Self {
        GptConfig {
            arch: Arch::Llama,
            n_kv_head: 2,
            n_inner: default_inner(Arch::Llama, 128),
            bias: false,
            activation: Activation::Silu,
            ..GptConfig::small(vocab_size)
        }
    }

    /// The model of `chatforge bench train` (and `scripts/reference/bench_train_torch.py`).
    pub fn bench() -> Self {
        GptConfig {
            vocab_size: 4096,
            n_ctx: 256,
            n_layer: 6,
            n_head: 6,
            n_kv_head: 6,
            n_embd: 384,
            n_inner: 1536,
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
            n_kv_head: 12,
            n_embd: 768,
            n_inner: 3072,
            dropout: 0.1,
            ..GptConfig::tiny(50257)
        }
    }

    /// SmolLM2-135M's shape (`HuggingFaceTB/SmolLM2-135M`).
    pub fn smollm2_135m() -> Self {
        GptConfig {
            arch: Arch::Llama,
            vocab_size: 49152,
            n_ctx: 8192,
            n_layer: 30,
            n_head: 9,
            n_kv_head: 3,
            n_embd: 576,
            n_inner: 1536,
            dropout: 0.0,
            bias: false,
            tie_embeddings: true,
            activation: Activation::Silu,
            layer_norm_eps: 1e-5,
            rope_theta: 100_000.0,
            rope_scaling: None,
        }
    }

    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// The width of the keys (and of the values): `n_kv_head` heads of [`GptConfig::head_dim`].
    pub fn kv_dim(&self) -> usize {
        self.n_kv_head * self.head_dim()
    }

    /// Queries, keys and values side by side: the width of the attention's input product.
    pub fn qkv_dim(&self) -> usize {
        self.n_embd + 2 * self.kv_dim()
    }

    /// The MLP's first product: GPT-2's `n_inner`; the Llama family's gate and up side by side.
    pub fn mlp_in_dim(&self) -> usize {
        if self.activation == Activation::Silu {
            2 * self.n_inner
        } else {
            self.n_inner
        }
    }

    /// Checks what the model needs before any work starts; messages name the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Config(msg));
        if [
            self.vocab_size,
            self.n_ctx,
            self.n_layer,
            self.n_head,
            self.n_kv_head,
            self.n_embd,
            self.n_inner,
        ]
        .contains(&0)
        {
            return bad(
                "vocab_size, n_ctx, n_layer, n_head, n_kv_head, n_embd and n_inner must all be at least 1"
                    .into(),
            );
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return bad(format!(
                "n_head = {} does not divide n_embd = {}",
                self.n_head, self.n_embd
            ));
        }
        if !self.n_head.is_multiple_of(self.n_kv_head) {
            return bad(format!(
                "n_head = {} must be a multiple of n_kv_head = {}",
                self.n_head, self.n_kv_head
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
        self.validate_family()?;
        for (name, v, max) in [
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            ("n_ctx", self.n_ctx, MAX_CTX),
            ("n_layer", self.n_layer, MAX_LAYERS),
            ("n_embd", self.n_embd, MAX_EMBD),
            ("n_inner", self.n_inner, 4 * MAX_EMBD),
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

    /// What each family's parts allow.
    fn validate_family(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Config(msg));
        let arch = self.arch.name();
        match self.arch {
            Arch::Gpt2 => {
                if self.n_kv_head != self.n_head {
                    return bad("GPT-2 has no grouped-query attention: n_kv_head must equal n_head".into());
                }
                if self.activation == Activation::Silu {
                    return bad("GPT-2's MLP is not gated: activation must be gelu-tanh or gelu-erf".into());
                }
                if self.rope_scaling.is_some() {
                    return bad("GPT-2 has learned positions: rope_scaling does not apply".into());
                }
            }
            Arch::Llama | Arch::Qwen2 => {
                if self.activation != Activation::Silu {
                    return bad(format!("arch {arch} uses activation = \"silu\" (SwiGLU)"));
                }
                if self.bias != (self.arch == Arch::Qwen2) {
                    return bad(format!(
                        "arch {arch} has {} biases on q, k and v: bias must be {}",
                        if self.bias { "no" } else { "" },
                        !self.bias
                    ));
                }
                if !self.head_dim().is_multiple_of(2) {
                    return bad(format!(
                        "the head width n_embd / n_head = {} must be even for rotary embeddings",
                        self.head_dim()
                    ));
                }
                if !(self.rope_theta > 0.0 && self.rope_theta.is_finite()) {
                    return bad(format!("rope_theta = {} must be positive", self.rope_theta));
                }
            }
        }
        Ok(())
    }

    /// Parameters, counting a tied embedding once (for a validated config, which fits `usize`).
    pub fn n_params(&self) -> usize {
        usize::try_from(self.n_params_u128()).unwrap_or(usize::MAX)
    }

    /// [`GptConfig::n_params`] without overflow, for configs not yet validated.
    fn n_params_u128(&self) -> u128 {
        let (c, v, l, t, inner) = (
            self.n_embd as u128,
            self.vocab_size as u128,
            self.n_layer as u128,
            self.n_ctx as u128,
            self.n_inner as u128,
        );
        let b = u128::from(self.bias);
        let head = if self.tie_embeddings { 0 } else { v * c };
        if self.arch.is_llama() {
            let kv = self.n_kv_head as u128 * (c / (self.n_head as u128).max(1));
            let block = 2 * c + c * (c + 2 * kv) + b * (c + 2 * kv) + c * c + 3 * c * inner;
            return v * c + l * block + c + head;
        }
        let block = 2 * (c + b * c)
            + (c * 3 * c + b * 3 * c)
            + (c * c + b * c)
            + (c * inner + b * inner)
            + (inner * c + b * c);
        v * c + t * c + l * block + (c + b * c) + head
    }

    /// Reads an HF `config.json`: GPT-2 here, the Llama family in [`crate::llama`].
    pub fn from_hf(v: &Value) -> Result<Self> {
        if Arch::from_hf(v)?.is_llama() {
            return crate::llama::from_hf(v);
        }
        let get = |k: &str| v.get(k).and_then(Value::as_u64).map(|n| n as usize);
        let need =
            |k: &str| get(k).ok_or_else(|| Error::Config(format!("config.json has no integer \"{k}\"")));
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
        let n_embd = need("n_embd")?;
        let n_head = need("n_head")?;
        let cfg = GptConfig {
            arch: Arch::Gpt2,
            vocab_size: need("vocab_size")?,
            n_ctx: get("n_positions")
                .or_else(|| get("n_ctx"))
                .ok_or_else(|| Error::Config("config.json has no \"n_positions\"".into()))?,
            n_layer: need("n_layer")?,
            n_head,
            n_kv_head: n_head,
            n_embd,
            n_inner: get("n_inner").unwrap_or(4 * n_embd),
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
            rope_theta: 10_000.0,
            rope_scaling: None,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// A `config.json` that transformers loads (`GPT2LMHeadModel`, or the Llama family's class).
    pub fn to_hf(&self) -> Value {
        if self.arch.is_llama() {
            return crate::llama::to_hf(self);
        }
        json!({
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": self.vocab_size,
            "n_positions": self.n_ctx,
            "n_ctx": self.n_ctx,
            "n_embd": self.n_embd,
            "n_layer": self.n_layer,
            "n_head": self.n_head,
            "n_inner": if self.n_inner == 4 * self.n_embd { Value::Null } else { json!(self.n_inner) },
            "activation_function": match self.activation { Activation::GeluErf => "gelu", _ => "gelu_new" },
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
        let err = GptConfig::from_hf(&json!({"model_type": "mistral"}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("mistral"), "{err}");
        let llama = GptConfig::llama_tiny(50);
        assert_eq!(GptConfig::from_hf(&llama.to_hf()).unwrap(), llama);
        let smol = GptConfig::smollm2_135m();
        assert_eq!(smol.n_params(), 134_515_008);
        assert_eq!(GptConfig::from_hf(&smol.to_hf()).unwrap(), smol);
    }

    #[test]
    fn a_file_takes_its_familys_defaults() {
        let c: GptConfig =
            serde_json::from_value(json!({"arch": "llama", "n_head": 8, "vocab_size": 64})).unwrap();
        assert_eq!((c.activation, c.bias, c.n_kv_head), (Activation::Silu, false, 8));
        c.validate().unwrap();
        let q: GptConfig = serde_json::from_value(json!({"model_type": "qwen2"})).unwrap();
        assert!(q.bias);
        let g: GptConfig = serde_json::from_value(json!({"n_embd": 64})).unwrap();
        assert_eq!((g.n_inner, g.arch), (256, Arch::Gpt2));
        assert!(serde_json::from_value::<GptConfig>(json!({"n_embed": 64})).is_err());
    }
}
