//! LoRA adapters against PEFT on a random GPT-2 (scripts/reference/peft_lora.py): an adapter PEFT
//! wrote gives PEFT's logits here; an adapter chatforge writes gives chatforge's logits in PEFT;
//! merged weights give the unmerged logits; a fresh adapter (B = 0) changes nothing.

#![allow(clippy::unwrap_used)] // tests: a failure should panic with its message

use std::collections::BTreeMap;

use chatforge_base::Rng;
use chatforge_model::lora::{load_adapter, merge, save_adapter};
use chatforge_model::{GptConfig, LoraConfig, Tensor, Weights, load_hf};
use chatforge_testkit::{json_floats, json_ids, max_abs_diff, python, run_reference};
use serde_json::Value;

/// The oracle's logits (the engine and the decoder are checked against it elsewhere).
fn logits(cfg: &GptConfig, w: &Weights, lora: Option<&LoraConfig>, ids: &[Vec<u32>]) -> Vec<f32> {
    chatforge_oracle::logits(cfg, lora, w, ids)
}

fn with(base: &Weights, adapter: &Weights) -> Weights {
    let mut w = base.clone();
    w.extend(adapter.iter().map(|(k, v)| (k.clone(), v.clone())));
    w
}

#[test]
fn adapters_round_trip_with_peft() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run_reference(&py, "peft_lora.py", &["make", d.to_str().unwrap()]);
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("reference.json")).unwrap()).unwrap();
    let ids = json_ids(&reference["ids"]);
    let (cfg, base) = load_hf(&d.join("base")).unwrap();
    let base_logits = logits(&cfg, &base, None, &ids);
    assert!(max_abs_diff(&base_logits, &json_floats(&reference["base"])) < 1e-4);

    // PEFT's adapter, read here.
    let (lcfg, adapter) = load_adapter(&d.join("adapter"), &cfg).unwrap();
    assert_eq!((lcfg.rank, lcfg.alpha), (4, 8.0));
    let adapted = logits(&cfg, &with(&base, &adapter), Some(&lcfg), &ids);
    let diff = max_abs_diff(&adapted, &json_floats(&reference["adapted"]));
    assert!(diff < 1e-4, "PEFT adapter: logits differ by {diff}");
    assert!(
        max_abs_diff(&adapted, &base_logits) > 1e-2,
        "the adapter should change the model"
    );

    // Merged equals unmerged.
    let merged = merge(&base, &lcfg, &adapter, &cfg).unwrap();
    let m = logits(&cfg, &merged, None, &ids);
    assert!(
        max_abs_diff(&m, &adapted) < 1e-5,
        "merged differs by {}",
        max_abs_diff(&m, &adapted)
    );

    // A fresh adapter is the identity: B = 0.
    let fresh = lcfg.init(&cfg, &mut Rng::new(1)).unwrap();
    assert_eq!(logits(&cfg, &with(&base, &fresh), Some(&lcfg), &ids), base_logits);

    // chatforge's adapter (A fresh, B random), read by PEFT.
    let mut rng = Rng::new(2);
    let ours: BTreeMap<String, Tensor> = fresh
        .iter()
        .map(|(k, v)| {
            let t = if k.contains("lora_B") {
                let n = v.elem_count();
                let data: Vec<f32> = (0..n).map(|_| (rng.normal() * 0.2) as f32).collect();
                Tensor::new(v.dims(), data).unwrap()
            } else {
                v.clone()
            };
            (k.clone(), t)
        })
        .collect();
    save_adapter(&d.join("ours"), &lcfg, &ours, Some("base"), cfg.arch).unwrap();
    let ours_w: Weights = ours.into_iter().collect();
    let want = logits(&cfg, &with(&base, &ours_w), Some(&lcfg), &ids);
    let out = run_reference(
        &py,
        "peft_lora.py",
        &[
            "check",
            d.join("base").to_str().unwrap(),
            d.join("ours").to_str().unwrap(),
        ],
    );
    let got: Value = serde_json::from_str(&out).unwrap();
    let diff = max_abs_diff(&want, &json_floats(&got["logits"]));
    assert!(diff < 1e-4, "chatforge adapter in PEFT: logits differ by {diff}");
}
