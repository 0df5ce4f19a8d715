//! LoRA on the Llama family against PEFT (scripts/reference/peft_llama.py: a tiny random Llama with
//! grouped-query attention, adapters on all seven linear layers): PEFT's adapter read here gives
//! PEFT's logits (merged into the decoder's weights); the training engine's loss and every
//! adapter gradient equal PEFT's; an adapter chatforge writes gives chatforge's logits in PEFT.

#![allow(clippy::unwrap_used)] // tests: a failure should panic with its message

use std::collections::BTreeMap;

use chatforge_data::Rng;
use chatforge_infer::{Engine, WeightType};
use chatforge_model::engine::{NextTokenBatch, TrainEngine};
use chatforge_model::lora::{load_adapter, merge, save_adapter};
use chatforge_model::{GptConfig, Tensor, Weights, load_hf, param_specs, take_flat};
use chatforge_testkit::{json_floats, json_ids, max_abs_diff, python, run_reference};
use serde_json::Value;

fn logits(cfg: &GptConfig, w: &Weights, ids: &[Vec<u32>]) -> Vec<f32> {
    let eng = Engine::new(cfg, w, WeightType::F32).unwrap();
    ids.iter()
        .flat_map(|row| eng.forward(&mut [&mut eng.new_sequence()], &[row], true).unwrap())
        .collect()
}

#[test]
fn llama_adapters_match_peft_both_ways_and_train_as_peft_does() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run_reference(&py, "peft_llama.py", &["make", d.to_str().unwrap()]);
    let r: Value = serde_json::from_str(&std::fs::read_to_string(d.join("reference.json")).unwrap()).unwrap();
    let ids = json_ids(&r["ids"]);
    let (cfg, base) = load_hf(&d.join("base")).unwrap();
    let base_logits = logits(&cfg, &base, &ids);
    assert!(max_abs_diff(&base_logits, &json_floats(&r["base"])) < 1e-4);

    // PEFT's adapter, read and merged here.
    let (lcfg, adapter) = load_adapter(&d.join("adapter"), &cfg).unwrap();
    assert_eq!(lcfg.layers(&cfg).len(), 7 * cfg.n_layer);
    let merged = merge(&base, &lcfg, &adapter, &cfg).unwrap();
    let adapted = logits(&cfg, &merged, &ids);
    let diff = max_abs_diff(&adapted, &json_floats(&r["adapted"]));
    assert!(diff < 1e-4, "PEFT adapter: logits differ by {diff}");
    assert!(max_abs_diff(&adapted, &base_logits) > 1e-2);

    // The training engine with the adapter on the frozen base: PEFT's loss and gradients.
    let (b, t) = (ids.len(), ids[0].len());
    let rows = NextTokenBatch::new(&ids);
    let flat_base = take_flat(&param_specs(&cfg), &mut base.clone()).unwrap();
    let specs = lcfg.param_specs(&cfg);
    let flat_adapter = take_flat(&specs, &mut adapter.clone()).unwrap();
    let mut engine = TrainEngine::with_lora(&cfg, b, t, flat_base, &lcfg, flat_adapter).unwrap();
    engine.zero_grad();
    let batch = rows.batch();
    let loss = engine.forward_backward(&batch, 1.0, &mut Rng::new(0)).unwrap();
    let theirs = r["loss"].as_f64().unwrap();
    assert!(((loss - theirs) / theirs).abs() < 1e-5, "loss {loss} vs {theirs}");
    let grads = r["grads"].as_object().unwrap();
    assert_eq!(grads.len(), specs.len());
    for (name, want) in grads {
        let i = specs.iter().position(|s| &s.name == name).unwrap();
        let (off, len) = engine.offsets[i];
        let want = json_floats(want);
        let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
        let rel = max_abs_diff(&engine.grads[off..off + len], &want) / scale;
        assert!(rel < 1e-4, "gradient of {name} differs by {rel} (relative)");
    }

    // chatforge's adapter (B random), read by PEFT.
    let mut rng = Rng::new(2);
    let ours: BTreeMap<String, Tensor> = lcfg
        .init(&cfg, &mut Rng::new(1))
        .unwrap()
        .into_iter()
        .map(|(k, v)| {
            let t = if k.contains("lora_B") {
                let data: Vec<f32> = (0..v.elem_count()).map(|_| (rng.normal() * 0.2) as f32).collect();
                Tensor::new(v.dims(), data).unwrap()
            } else {
                v
            };
            (k, t)
        })
        .collect();
    save_adapter(&d.join("ours"), &lcfg, &ours, Some("base"), cfg.arch).unwrap();
    let ours: Weights = ours.into_iter().collect();
    let want = logits(&cfg, &merge(&base, &lcfg, &ours, &cfg).unwrap(), &ids);
    let out = run_reference(
        &py,
        "peft_llama.py",
        &[
            "check",
            d.join("base").to_str().unwrap(),
            d.join("ours").to_str().unwrap(),
        ],
    );
    let got: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let diff = max_abs_diff(&want, &json_floats(&got["logits"]));
    assert!(diff < 1e-4, "chatforge adapter in PEFT: logits differ by {diff}");
}
