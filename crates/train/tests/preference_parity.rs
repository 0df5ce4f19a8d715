//! DPO and ORPO on the training engine against TRL on a tiny random Llama: for one batch of three
//! pairs, the loss, every metric TRL logs and the gradient of every parameter (PyTorch autograd
//! through TRL's loss). Reference: scripts/reference/trl_preference.py.

#![allow(clippy::unwrap_used)] // tests: a failure should panic with its message

use chatforge_base::Rng;
use chatforge_model::engine::{StepBatch, TrainEngine};
use chatforge_model::{GptConfig, load_hf, param_specs, take_flat};
use chatforge_testkit::{json_floats, json_ids, python, run_reference};
use chatforge_train::preference::{Objective, Pairs, evaluate, reply_logps};
use serde_json::Value;

/// Pairs packed one to a row: `[prompt + chosen | prompt + rejected | padding]`.
struct PairRows {
    t: usize,
    inputs: Vec<u32>,
    targets: Vec<u32>,
    weights: Vec<u8>,
    positions: Vec<u32>,
    segments: Vec<u32>,
    seqs: Vec<u32>,
    reply: Vec<u8>,
    n_seqs: usize,
}

impl PairRows {
    fn new(pairs: &[(Vec<u32>, Vec<u32>, Vec<u32>)]) -> PairRows {
        let t = pairs
            .iter()
            .map(|(p, c, r)| 2 * p.len() + c.len() + r.len() - 2)
            .max()
            .unwrap();
        let n = pairs.len() * t;
        let mut s = PairRows {
            t,
            inputs: vec![0; n],
            targets: vec![0; n],
            weights: vec![0; n],
            positions: vec![0; n],
            segments: vec![2; n],
            seqs: vec![u32::MAX; n],
            reply: vec![0; n],
            n_seqs: 2 * pairs.len(),
        };
        for (k, (p, c, r)) in pairs.iter().enumerate() {
            let mut at = k * t;
            for (side, reply) in [c, r].into_iter().enumerate() {
                let seq: Vec<u32> = p.iter().chain(reply).copied().collect();
                for j in 0..seq.len() - 1 {
                    s.inputs[at] = seq[j];
                    s.targets[at] = seq[j + 1];
                    s.weights[at] = 1;
                    s.positions[at] = j as u32;
                    s.segments[at] = side as u32;
                    s.seqs[at] = (2 * k + side) as u32;
                    s.reply[at] = u8::from(j + 1 >= p.len());
                    at += 1;
                }
            }
        }
        s
    }

    fn batch(&self) -> StepBatch<'_> {
        StepBatch {
            b: self.inputs.len() / self.t,
            t: self.t,
            inputs: &self.inputs,
            targets: &self.targets,
            positions: &self.positions,
            segments: &self.segments,
            weights: &self.weights,
        }
    }

    fn pairs(&self) -> Pairs<'_> {
        Pairs {
            seqs: &self.seqs,
            reply: &self.reply,
            n_seqs: self.n_seqs,
        }
    }
}

fn engine(dir: &std::path::Path, rows: &PairRows) -> (TrainEngine, Vec<String>) {
    let (cfg, mut by_name) = load_hf(dir).unwrap();
    let cfg = GptConfig { dropout: 0.0, ..cfg };
    let specs = param_specs(&cfg);
    let flat = take_flat(&specs, &mut by_name).unwrap();
    let names = specs.iter().map(|s| s.name.clone()).collect();
    (
        TrainEngine::new(&cfg, rows.inputs.len() / rows.t, rows.t, flat).unwrap(),
        names,
    )
}

fn close(ours: f64, theirs: f64, what: &str) {
    assert!(
        (ours - theirs).abs() <= 1e-4 * theirs.abs().max(1.0),
        "{what}: ours {ours}, TRL's {theirs}"
    );
}

#[test]
fn dpo_and_orpo_match_trl() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    run_reference(&py, "trl_preference.py", &[dir.path().to_str().unwrap()]);
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("preference.json")).unwrap()).unwrap();
    let pairs: Vec<(Vec<u32>, Vec<u32>, Vec<u32>)> = reference["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let ids = json_ids(&Value::Array(vec![
                p["prompt"].clone(),
                p["chosen"].clone(),
                p["rejected"].clone(),
            ]));
            (ids[0].clone(), ids[1].clone(), ids[2].clone())
        })
        .collect();
    let rows = PairRows::new(&pairs);
    let batch = rows.batch();
    let n = rows.inputs.len();

    // The reference model's log-probabilities of each reply (evaluation: no dropout, no backward).
    let (mut reference_engine, _) = engine(&dir.path().join("reference"), &rows);
    let mut logps = vec![0f32; n];
    reference_engine.forward_logps(&batch, None, &mut logps).unwrap();
    let (sums, _) = reply_logps(&logps, &rows.pairs());
    let expected = &reference["reference_logps"];
    let refs: Vec<(f64, f64)> = (0..pairs.len())
        .map(|k| {
            close(
                sums[2 * k],
                expected["chosen"][k].as_f64().unwrap(),
                "reference chosen log-probability",
            );
            close(
                sums[2 * k + 1],
                expected["rejected"][k].as_f64().unwrap(),
                "reference rejected log-probability",
            );
            (sums[2 * k], sums[2 * k + 1])
        })
        .collect();

    let (mut policy, names) = engine(&dir.path().join("policy"), &rows);
    for (case, c) in reference["cases"].as_object().unwrap() {
        let beta = c["beta"].as_f64().unwrap();
        let obj = match case.as_str() {
            "orpo" => Objective::Orpo { beta },
            _ => Objective::Dpo {
                beta,
                label_smoothing: c["label_smoothing"].as_f64().unwrap(),
            },
        };
        policy.zero_grad();
        policy
            .forward_logps(&batch, Some(&mut Rng::new(0)), &mut logps)
            .unwrap();
        let out = evaluate(obj, &logps, &rows.pairs(), &refs, 1.0);
        policy.backward_logps(&batch, &out.coef).unwrap();
        close(out.loss, c["loss"].as_f64().unwrap(), &format!("{case}: loss"));
        if let Some(metrics) = c.get("metrics") {
            let ours = serde_json::to_value(out.metrics).unwrap();
            let theirs = metrics.as_object().unwrap();
            assert!(theirs.len() >= 6, "{case}: TRL's metrics {theirs:?}");
            for (name, v) in theirs {
                let mine = ours[name]
                    .as_f64()
                    .unwrap_or_else(|| panic!("{case}: no metric {name} in {ours}"));
                close(mine, v.as_f64().unwrap(), &format!("{case}: {name}"));
            }
        }
        let grads = c["grads"].as_object().unwrap();
        assert_eq!(grads.len(), names.len(), "{case}: every parameter");
        for (name, expected) in grads {
            let i = names.iter().position(|s| s == name).unwrap();
            let (off, len) = policy.offsets[i];
            let expected = json_floats(expected);
            let scale = expected.iter().fold(0f32, |m, x| m.max(x.abs()));
            let diff = policy.grads[off..off + len]
                .iter()
                .zip(&expected)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                diff / scale < 1e-4,
                "{case}: gradient of {name} differs by {} (relative)",
                diff / scale
            );
        }
    }
}
