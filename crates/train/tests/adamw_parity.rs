//! One to three AdamW steps equal `torch.optim.AdamW` on the same tensors (decay on one group only).
//! Reference: scripts/reference/adamw_step.py.

#![allow(clippy::unwrap_used)] // tests: a failure should panic with its message

use chatforge_data::Rng;
use chatforge_model::{Init, ParamSpec};
use chatforge_testkit::{python, run_reference};
use chatforge_train::{AdamW, AdamWConfig};

#[test]
fn adamw_matches_torch() {
    let Some(py) = python() else { return };
    let mut rng = Rng::new(3);
    let mut draw = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.normal() as f32).collect() };
    let shapes = [vec![3usize, 4], vec![5]];
    let decay = [true, false];
    let init: Vec<Vec<f32>> = shapes.iter().map(|s| draw(s.iter().product())).collect();
    let grads: Vec<Vec<Vec<f32>>> = (0..3)
        .map(|_| shapes.iter().map(|s| draw(s.iter().product())).collect())
        .collect();
    let cfg = AdamWConfig {
        lr: 1e-2,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
    };

    let dir = tempfile::tempdir().unwrap();
    let spec = serde_json::json!({
        "params": init, "grads": grads, "decay": decay, "lr": cfg.lr,
        "betas": [cfg.beta1, cfg.beta2], "eps": cfg.eps, "weight_decay": cfg.weight_decay,
    });
    let input = dir.path().join("in.json");
    std::fs::write(&input, spec.to_string()).unwrap();
    let history: Vec<Vec<Vec<f32>>> =
        serde_json::from_str(&run_reference(&py, "adamw_step.py", &[input.to_str().unwrap()])).unwrap();

    let specs: Vec<ParamSpec> = shapes
        .iter()
        .zip(decay)
        .enumerate()
        .map(|(i, (s, d))| ParamSpec {
            name: format!("p{i}"),
            shape: s.clone(),
            init: Init::Zeros,
            decay: d,
        })
        .collect();
    let mut offsets = Vec::new();
    let mut at = 0;
    for v in &init {
        offsets.push((at, v.len()));
        at += v.len();
    }
    let mut params: Vec<f32> = init.concat();
    let mut opt = AdamW::for_lengths(cfg, init.iter().map(Vec::len));
    for (step, step_grads) in grads.iter().enumerate() {
        opt.update(&specs, &mut params, &step_grads.concat(), &offsets, cfg.lr);
        for (i, &(off, len)) in offsets.iter().enumerate() {
            for (a, b) in params[off..off + len].iter().zip(&history[step][i]) {
                assert!((a - b).abs() < 1e-6, "step {}, param {i}: {a} vs {b}", step + 1);
            }
        }
    }
}
