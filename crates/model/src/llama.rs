//! The Llama family's shape (`LlamaForCausalLM`: SmolLM/SmolLM2, TinyLlama, Llama 3.x;
//! `Qwen2ForCausalLM`: Qwen2/2.5) read from an HF `config.json`, and its rotary frequencies.
//! Variants chatforge cannot run correctly (sliding windows, mixtures of experts, rope scalings
//! other than Llama 3's, other activations) are refused with the field that says so: never run
//! wrong.

use serde_json::{Value, json};

use crate::config::{Activation, Arch, GptConfig, Llama3Scaling};
use crate::{Error, Result};

/// Reads an HF `config.json` of a Llama-family model.
pub(crate) fn from_hf(v: &Value) -> Result<GptConfig> {
    let arch = Arch::from_hf(v)?;
    if arch == Arch::Gpt2 {
        return Err(Error::Config(
            "a GPT-2 config is read by GptConfig::from_hf".into(),
        ));
    }
    let refuse = |field: &str, why: String| Err(Error::Config(format!("config.json \"{field}\": {why}")));
    let get = |k: &str| v.get(k).filter(|x| !x.is_null());
    let uint = |k: &str| get(k).and_then(Value::as_u64).map(|n| n as usize);
    let need = |k: &str| uint(k).ok_or_else(|| Error::Config(format!("config.json has no integer \"{k}\"")));
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
    // transformers 5 writes `rope_parameters` (the base and the scaling in one object);
    // earlier versions `rope_theta` and `rope_scaling`.
    let params = get("rope_parameters");
    let rope_scaling = match get("rope_scaling").or(params) {
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
                        low_freq_factor: f("low_freq_factor").ok_or_else(|| missing("low_freq_factor"))?,
                        high_freq_factor: f("high_freq_factor").ok_or_else(|| missing("high_freq_factor"))?,
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
    if let Some(d) = uint("head_dim")
        && Some(d) != hidden_size.checked_div(num_heads)
    {
        return refuse(
            "head_dim",
            format!("{d} is not hidden_size / num_attention_heads; such models are not supported"),
        );
    }
    for field in ["attention_bias", "mlp_bias"] {
        if flag(field, false) {
            return refuse(field, "biases there are not supported".into());
        }
    }
    let cfg = GptConfig {
        arch,
        vocab_size: need("vocab_size")?,
        n_ctx: need("max_position_embeddings")?,
        n_layer: need("num_hidden_layers")?,
        n_head: num_heads,
        n_kv_head: uint("num_key_value_heads").unwrap_or(num_heads),
        n_embd: hidden_size,
        n_inner: need("intermediate_size")?,
        dropout: float("attention_dropout", 0.0) as f32,
        bias: arch == Arch::Qwen2,
        tie_embeddings: flag("tie_word_embeddings", false),
        activation: Activation::Silu,
        layer_norm_eps: float("rms_norm_eps", 1e-6),
        rope_theta: params
            .and_then(|p| p.get("rope_theta"))
            .and_then(Value::as_f64)
            .unwrap_or_else(|| float("rope_theta", 10_000.0)),
        rope_scaling,
    };
    cfg.validate()?;
    Ok(cfg)
}

/// A `config.json` that transformers' `LlamaForCausalLM` or `Qwen2ForCausalLM` loads.
pub(crate) fn to_hf(cfg: &GptConfig) -> Value {
    let class = match cfg.arch {
        Arch::Qwen2 => "Qwen2ForCausalLM",
        _ => "LlamaForCausalLM",
    };
    let mut v = json!({
        "architectures": [class],
        "model_type": cfg.arch.name(),
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.n_inner,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_kv_head,
        "head_dim": cfg.head_dim(),
        "max_position_embeddings": cfg.n_ctx,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.layer_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": cfg.rope_scaling.map(|s| json!({
            "rope_type": "llama3",
            "factor": s.factor,
            "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_max_position_embeddings,
        })),
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_dropout": cfg.dropout,
        "initializer_range": 0.02,
        "use_cache": true,
        "torch_dtype": "float32",
    });
    if cfg.arch == Arch::Llama {
        v["attention_bias"] = json!(false);
        v["mlp_bias"] = json!(false);
    } else {
        v["use_sliding_window"] = json!(false);
    }
    v
}

/// The rotary inverse frequencies, one per pair of a head's dimensions: `θ^(-2i/d)`, with
/// Llama 3's scaling (long wavelengths divided by `factor`, short ones kept, a smooth blend
/// between), as transformers computes them.
pub fn rope_inv_freq(cfg: &GptConfig) -> Vec<f32> {
    let d = cfg.head_dim() as f64;
    let base: Vec<f64> = (0..cfg.head_dim() / 2)
        .map(|i| 1.0 / cfg.rope_theta.powf(2.0 * i as f64 / d))
        .collect();
    let Some(s) = cfg.rope_scaling else {
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
                let smooth = (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                (1.0 - smooth) * f / s.factor + smooth * f
            };
            scaled as f32
        })
        .collect()
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
        let c = from_hf(&smollm2()).unwrap();
        assert_eq!(
            (c.arch, c.head_dim(), c.n_kv_head, c.tie_embeddings),
            (Arch::Llama, 64, 3, true)
        );
        assert!(!c.bias && c.rope_scaling.is_none());
        // Qwen2.5-0.5B: biases on q/k/v, its sliding window off.
        let qwen = json!({"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_attention_heads": 14,
            "num_hidden_layers": 24, "num_key_value_heads": 2, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0, "sliding_window": 32768, "use_sliding_window": false, "tie_word_embeddings": true,
            "vocab_size": 151936, "hidden_act": "silu"});
        let q = from_hf(&qwen).unwrap();
        assert!(q.bias && q.arch == Arch::Qwen2);
        let mut v = smollm2();
        v["rope_scaling"] = json!({"rope_type": "yarn", "factor": 4.0});
        assert!(from_hf(&v).unwrap_err().to_string().contains("\"rope_scaling\""));
        let mut v = qwen.clone();
        v["use_sliding_window"] = json!(true);
        assert!(
            from_hf(&v)
                .unwrap_err()
                .to_string()
                .contains("\"sliding_window\"")
        );
        let mut v = smollm2();
        v["num_local_experts"] = json!(8);
        assert!(
            from_hf(&v)
                .unwrap_err()
                .to_string()
                .contains("\"num_local_experts\"")
        );
        let mut v = smollm2();
        v["hidden_act"] = json!("gelu");
        assert!(from_hf(&v).unwrap_err().to_string().contains("\"hidden_act\""));
        let mut v = smollm2();
        v["num_key_value_heads"] = json!(4);
        assert!(
            from_hf(&v)
                .unwrap_err()
                .to_string()
                .contains("multiple of n_kv_head")
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
