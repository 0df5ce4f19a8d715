//! The Llama family's shape (`LlamaForCausalLM`: SmolLM/SmolLM2, TinyLlama, Llama 3.x;
//! `Qwen2ForCausalLM`: Qwen2/2.5) read from an HF `config.json`, and its rotary frequencies.
//! Variants chatforge cannot run correctly (sliding windows, mixtures of experts, rope scalings
//! other than Llama 3's, other activations) are refused with the field that says so: never run
//! wrong.

use serde_json::Value;

use crate::config::{MAX_CTX, MAX_EMBD, MAX_LAYERS, MAX_VOCAB};
use crate::{Error, Result};

/// The architecture an HF `config.json` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Gpt2,
    Llama,
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

    pub fn name(self) -> &'static str {
        match self {
            Arch::Gpt2 => "gpt2",
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
        }
    }
}

/// Llama 3's rope scaling (`rope_scaling.rope_type = "llama3"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3Scaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

/// A Llama-family model's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    /// Grouped-query attention: key/value heads, each shared by `num_heads / num_kv_heads` query heads.
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<Llama3Scaling>,
    pub tie_word_embeddings: bool,
    /// Biases on the q, k and v projections (Qwen2 always; Llama with `attention_bias`).
    pub qkv_bias: bool,
    /// A bias on the output projection (Llama with `attention_bias`).
    pub o_bias: bool,
    /// Biases on the MLP's projections (`mlp_bias`).
    pub mlp_bias: bool,
}

impl LlamaConfig {
    /// Reads an HF `config.json` of a Llama-family model.
    pub fn from_hf(v: &Value) -> Result<LlamaConfig> {
        let arch = Arch::from_hf(v)?;
        if arch == Arch::Gpt2 {
            return Err(Error::Config(
                "a GPT-2 config is read by GptConfig::from_hf".into(),
            ));
        }
        let refuse = |field: &str, why: String| Err(Error::Config(format!("config.json \"{field}\": {why}")));
        let get = |k: &str| v.get(k).filter(|x| !x.is_null());
        let uint = |k: &str| get(k).and_then(Value::as_u64).map(|n| n as usize);
        let need =
            |k: &str| uint(k).ok_or_else(|| Error::Config(format!("config.json has no integer \"{k}\"")));
        let float = |k: &str, d: f64| get(k).and_then(Value::as_f64).unwrap_or(d);
        let flag = |k: &str, d: bool| get(k).and_then(Value::as_bool).unwrap_or(d);

        // What chatforge cannot run is named, never mis-run.
        for moe in ["num_local_experts", "num_experts", "n_routed_experts"] {
            if uint(moe).is_some_and(|n| n > 1) {
                return refuse(moe, "mixtures of experts are not supported".into());
            }
        }
        let sliding = match arch {
            Arch::Qwen2 => flag("use_sliding_window", false),
            _ => uint("sliding_window").is_some(),
        };
        if sliding {
            return refuse(
                "sliding_window",
                "sliding-window attention is not supported".into(),
            );
        }
        if let Some(act) = get("hidden_act").and_then(Value::as_str)
            && act != "silu"
        {
            return refuse(
                "hidden_act",
                format!("\"{act}\": only silu (SwiGLU) is supported"),
            );
        }
        let rope_scaling = match get("rope_scaling") {
            None => None,
            Some(s) => {
                let kind = s
                    .get("rope_type")
                    .or_else(|| s.get("type"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                match kind {
                    "default" => None,
                    "llama3" => {
                        let f = |k: &str| s.get(k).and_then(Value::as_f64);
                        let missing =
                            |k: &str| Error::Config(format!("config.json \"rope_scaling\" has no \"{k}\""));
                        Some(Llama3Scaling {
                            factor: f("factor").ok_or_else(|| missing("factor"))?,
                            low_freq_factor: f("low_freq_factor")
                                .ok_or_else(|| missing("low_freq_factor"))?,
                            high_freq_factor: f("high_freq_factor")
                                .ok_or_else(|| missing("high_freq_factor"))?,
                            original_max_position_embeddings: s
                                .get("original_max_position_embeddings")
                                .and_then(Value::as_u64)
                                .ok_or_else(|| missing("original_max_position_embeddings"))?
                                as usize,
                        })
                    }
                    other => {
                        return refuse(
                            "rope_scaling",
                            format!("rope type \"{other}\" is not supported (default and llama3 are)"),
                        );
                    }
                }
            }
        };
        let hidden_size = need("hidden_size")?;
        let num_heads = need("num_attention_heads")?;
        let num_kv_heads = uint("num_key_value_heads").unwrap_or(num_heads);
        let head_dim = uint("head_dim").unwrap_or(hidden_size.checked_div(num_heads).unwrap_or(0));
        let attention_bias = flag("attention_bias", false);
        let cfg = LlamaConfig {
            arch,
            vocab_size: need("vocab_size")?,
            hidden_size,
            intermediate_size: need("intermediate_size")?,
            num_layers: need("num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            max_position_embeddings: need("max_position_embeddings")?,
            rms_norm_eps: float("rms_norm_eps", 1e-6),
            rope_theta: float("rope_theta", 10_000.0),
            rope_scaling,
            tie_word_embeddings: flag("tie_word_embeddings", false),
            qkv_bias: arch == Arch::Qwen2 || attention_bias,
            o_bias: arch == Arch::Llama && attention_bias,
            mlp_bias: flag("mlp_bias", false),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the shape holds together and stays within the bounds every model obeys.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        let sizes = [
            self.vocab_size,
            self.hidden_size,
            self.intermediate_size,
            self.num_layers,
            self.num_heads,
            self.num_kv_heads,
            self.head_dim,
            self.max_position_embeddings,
        ];
        if sizes.contains(&0) {
            return bad("vocab_size, hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim and max_position_embeddings must all be at least 1".into());
        }
        if self.vocab_size > MAX_VOCAB
            || self.max_position_embeddings > MAX_CTX
            || self.num_layers > MAX_LAYERS
            || self.hidden_size > MAX_EMBD
            || self.intermediate_size > 4 * MAX_EMBD
        {
            return bad("the model is larger than chatforge's bounds (see config::MAX_*)".into());
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return bad(format!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                self.num_heads, self.num_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!(
                "head_dim ({}) must be even for rotary embeddings",
                self.head_dim
            ));
        }
        if !(self.rms_norm_eps > 0.0 && self.rope_theta > 0.0) {
            return bad("rms_norm_eps and rope_theta must be positive".into());
        }
        Ok(())
    }

    /// The rotary inverse frequencies, one per pair of a head's dimensions: `θ^(-2i/d)`, with
    /// Llama 3's scaling (long wavelengths divided by `factor`, short ones kept, a smooth blend
    /// between), as transformers computes them.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let d = self.head_dim as f64;
        let base: Vec<f64> = (0..self.head_dim / 2)
            .map(|i| 1.0 / self.rope_theta.powf(2.0 * i as f64 / d))
            .collect();
        let Some(s) = self.rope_scaling else {
            return base.into_iter().map(|f| f as f32).collect();
        };
        let old = s.original_max_position_embeddings as f64;
        let low_wavelen = old / s.low_freq_factor;
        let high_wavelen = old / s.high_freq_factor;
        base.into_iter()
            .map(|f| {
                let wavelen = 2.0 * std::f64::consts::PI / f;
                let scaled = if wavelen > low_wavelen {
                    f / s.factor
                } else if wavelen < high_wavelen {
                    f
                } else {
                    let smooth =
                        (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                    (1.0 - smooth) * f / s.factor + smooth * f
                };
                scaled as f32
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// HuggingFaceTB/SmolLM2-135M-Instruct's config.json (its shape fields).
    fn smollm2() -> Value {
        json!({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
               "hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9, "num_hidden_layers": 30,
               "num_key_value_heads": 3, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
               "rope_theta": 100000, "rope_scaling": null, "tie_word_embeddings": true, "vocab_size": 49152,
               "attention_bias": false, "mlp_bias": false})
    }

    #[test]
    fn the_family_reads_and_refuses_by_field() {
        let c = LlamaConfig::from_hf(&smollm2()).unwrap();
        assert_eq!(
            (c.arch, c.head_dim, c.num_kv_heads, c.tie_word_embeddings),
            (Arch::Llama, 64, 3, true)
        );
        assert!(!c.qkv_bias && c.rope_scaling.is_none());
        // Qwen2.5-0.5B: biases on q/k/v, its sliding window off.
        let qwen = json!({"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_attention_heads": 14,
            "num_hidden_layers": 24, "num_key_value_heads": 2, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0, "sliding_window": 32768, "use_sliding_window": false, "tie_word_embeddings": true,
            "vocab_size": 151936, "hidden_act": "silu"});
        let q = LlamaConfig::from_hf(&qwen).unwrap();
        assert!(q.qkv_bias && !q.o_bias && q.arch == Arch::Qwen2);
        let mut v = smollm2();
        v["rope_scaling"] = json!({"rope_type": "yarn", "factor": 4.0});
        assert!(
            LlamaConfig::from_hf(&v)
                .unwrap_err()
                .to_string()
                .contains("\"rope_scaling\"")
        );
        let mut v = qwen.clone();
        v["use_sliding_window"] = json!(true);
        assert!(
            LlamaConfig::from_hf(&v)
                .unwrap_err()
                .to_string()
                .contains("\"sliding_window\"")
        );
        let mut v = smollm2();
        v["num_local_experts"] = json!(8);
        assert!(
            LlamaConfig::from_hf(&v)
                .unwrap_err()
                .to_string()
                .contains("\"num_local_experts\"")
        );
        let mut v = smollm2();
        v["hidden_act"] = json!("gelu");
        assert!(
            LlamaConfig::from_hf(&v)
                .unwrap_err()
                .to_string()
                .contains("\"hidden_act\"")
        );
        let mut v = smollm2();
        v["num_key_value_heads"] = json!(4);
        assert!(
            LlamaConfig::from_hf(&v)
                .unwrap_err()
                .to_string()
                .contains("multiple")
        );
        assert!(
            Arch::from_hf(&json!({"model_type": "mistral"}))
                .unwrap_err()
                .to_string()
                .contains("mistral")
        );
        assert_eq!(Arch::from_hf(&json!({"model_type": "gpt2"})).unwrap(), Arch::Gpt2);
    }
}
