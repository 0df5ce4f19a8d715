//! The training engine against transformers' `LlamaForCausalLM` and `Qwen2ForCausalLM` on tiny
//! random models (tied and untied heads, grouped-query attention, Llama 3 rope scaling, q/k/v
//! biases, bf16 weights): the loss and every parameter's gradient, from the HF folder as
//! transformers wrote it. Reference: scripts/reference/llama_parity.py (CPU torch, float32).

#![allow(clippy::unwrap_used)] // tests: a failure should panic with its message

use chatforge_base::Rng;
use chatforge_model::engine::{NextTokenBatch, TrainEngine};
use chatforge_model::{Arch, GptConfig, load_hf, param_specs, take_flat};
use chatforge_testkit::{json_floats, json_ids, python, run_reference};
use serde_json::Value;

fn diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

#[test]
fn loss_and_every_gradient_match_transformers() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    run_reference(&py, "llama_parity.py", &[dir.path().to_str().unwrap()]);
    for variant in ["llama_tied", "llama3_untied", "qwen2_bias", "llama_bf16"] {
        let reference: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join(format!("{variant}.json"))).unwrap(),
        )
        .unwrap();
        let (cfg, mut by_name) = load_hf(&dir.path().join(variant)).unwrap();
        match variant {
            "qwen2_bias" => assert!(cfg.arch == Arch::Qwen2 && cfg.bias),
            "llama3_untied" => assert!(cfg.rope_scaling.is_some() && !cfg.tie_embeddings),
            _ => assert!(cfg.arch == Arch::Llama && cfg.n_kv_head == 2 && cfg.tie_embeddings),
        }
        let ids = json_ids(&reference["ids"]);
        let (b, t) = (ids.len(), ids[0].len());
        let rows = NextTokenBatch::new(&ids);
        let cfg = GptConfig { dropout: 0.0, ..cfg };
        let specs = param_specs(&cfg);
        let flat = take_flat(&specs, &mut by_name).unwrap();
        let mut engine = TrainEngine::new(&cfg, b, t, flat).unwrap();
        engine.zero_grad();
        let batch = rows.batch();
        let ours = engine.forward_backward(&batch, 1.0, &mut Rng::new(0)).unwrap();
        let theirs = reference["loss"].as_f64().unwrap();
        assert!(
            ((ours - theirs) / theirs).abs() < 1e-5,
            "{variant}: loss {ours} vs {theirs}"
        );
        let grads = reference["grads"].as_object().unwrap();
        assert_eq!(grads.len(), specs.len(), "{variant}: every parameter");
        for (name, expected) in grads {
            let i = specs.iter().position(|s| &s.name == name).unwrap();
            let (off, len) = engine.offsets[i];
            let expected = json_floats(expected);
            let scale = expected.iter().fold(0f32, |m, x| m.max(x.abs()));
            let rel = diff(&engine.grads[off..off + len], &expected) / scale;
            assert!(
                rel < 1e-4,
                "{variant}: gradient of {name} differs by {rel} (relative)"
            );
        }
    }
}
