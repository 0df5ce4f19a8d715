//! chatforge against transformers' `GPT2LMHeadModel` on the same random weights, read from
//! model.safetensors, pytorch_model.bin (a `torch.save` archive) and f16 safetensors: the
//! oracle's logits, and the training engine's loss and gradients.
//! Reference: scripts/reference/gpt2_parity.py (CPU torch, float32).

#![allow(clippy::unwrap_used)] // tests: a failure should panic with its message

use chatforge_base::Rng;
use chatforge_model::engine::{NextTokenBatch, TrainEngine};
use chatforge_model::{GptConfig, load_hf, param_specs, take_flat};
use chatforge_testkit::{json_floats, json_ids, python, run_reference};
use serde_json::Value;

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0f32, |m, x| m.max(x.abs()))
}

fn diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

#[test]
fn logits_loss_and_gradients_match_transformers() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    run_reference(&py, "gpt2_parity.py", &[dir.path().to_str().unwrap()]);
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("reference.json")).unwrap()).unwrap();
    let ids = json_ids(&reference["ids"]);
    let (b, t) = (ids.len(), ids[0].len());
    let rows = NextTokenBatch::new(&ids);

    for (folder, key) in [("safetensors", "fp32"), ("bin", "fp32"), ("f16", "f16")] {
        let (cfg, weights_by_name) = load_hf(&dir.path().join(folder)).unwrap();
        let r = &reference[key];
        // The oracle's logits (the decoder is checked against it in chatforge-infer).
        let logits = chatforge_oracle::logits(&cfg, None, &weights_by_name, &ids);
        let d = diff(&logits, &json_floats(&r["logits"]));
        assert!(d < 1e-4, "{folder}: logits differ by {d}");

        // The training engine's loss and gradients (transformers in eval mode: no dropout).
        let cfg = GptConfig { dropout: 0.0, ..cfg };
        let specs = param_specs(&cfg);
        let flat = take_flat(&specs, &mut weights_by_name.clone()).unwrap();
        let mut engine = TrainEngine::new(&cfg, b, t, flat).unwrap();
        engine.zero_grad();
        let batch = rows.batch();
        let ours = engine.forward_backward(&batch, 1.0, &mut Rng::new(0)).unwrap();
        let theirs = r["loss"].as_f64().unwrap();
        assert!(
            ((ours - theirs) / theirs).abs() < 1e-4,
            "{folder}: loss {ours} vs {theirs}"
        );
        assert_eq!(r["grads"].as_object().unwrap().len(), 7);
        for (name, expected) in r["grads"].as_object().unwrap() {
            let i = specs.iter().position(|s| &s.name == name).unwrap();
            let (off, len) = engine.offsets[i];
            let expected = json_floats(expected);
            let rel = diff(&engine.grads[off..off + len], &expected) / max_abs(&expected);
            assert!(
                rel < 1e-4,
                "{folder}: gradient of {name} differs by {rel} (relative)"
            );
        }
    }
}
