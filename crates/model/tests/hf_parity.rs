//! chatforge's GPT against transformers' `GPT2LMHeadModel` on the same random weights:
//! logits, loss and gradients, read from model.safetensors, pytorch_model.bin and f16 safetensors.
//! Reference: scripts/reference/gpt2_parity.py (CPU torch, float32).

#![allow(clippy::unwrap_used)] // tests: a failure should panic with its message

use candle_core::{D, DType, Device, Tensor};
use chatforge_model::{AttnMask, Gpt, Params, load_hf, ops};
use chatforge_testkit::{python, run_reference};
use serde_json::Value;

fn tensor(v: &Value) -> Tensor {
    fn flat(v: &Value, out: &mut Vec<f32>, shape: &mut Vec<usize>, depth: usize) {
        match v {
            Value::Array(a) => {
                if shape.len() == depth {
                    shape.push(a.len());
                }
                a.iter().for_each(|x| flat(x, out, shape, depth + 1));
            }
            x => out.push(x.as_f64().unwrap() as f32),
        }
    }
    let (mut data, mut shape) = (Vec::new(), Vec::new());
    flat(v, &mut data, &mut shape, 0);
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(D::Minus1)
        .unwrap()
        .to_scalar()
        .unwrap()
}

#[test]
fn logits_loss_and_gradients_match_transformers() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    run_reference(&py, "gpt2_parity.py", &[dir.path().to_str().unwrap()]);
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("reference.json")).unwrap()).unwrap();
    let ids = tensor(&reference["ids"]).to_dtype(DType::U32).unwrap();
    let (b, t) = ids.dims2().unwrap();

    for (folder, key) in [("safetensors", "fp32"), ("bin", "fp32"), ("f16", "f16")] {
        let (cfg, weights) = load_hf(&dir.path().join(folder), &Device::Cpu).unwrap();
        let params = Params::from_weights(&cfg, weights).unwrap();
        let gpt = Gpt::new(&cfg, params.var_builder(&Device::Cpu)).unwrap();
        let logits = gpt
            .forward(
                &ids,
                &Gpt::positions(b, t, 0, &Device::Cpu).unwrap(),
                &AttnMask::Causal,
                None,
                None,
            )
            .unwrap();
        let r = &reference[key];
        let diff = max_abs(&(&logits - tensor(&r["logits"])).unwrap());
        assert!(diff < 1e-4, "{folder}: logits differ by {diff}");

        let v = cfg.vocab_size;
        let pred = logits
            .narrow(1, 0, t - 1)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((b * (t - 1), v))
            .unwrap();
        let targets = ids
            .narrow(1, 1, t - 1)
            .unwrap()
            .contiguous()
            .unwrap()
            .flatten_all()
            .unwrap();
        let ones = Tensor::ones(b * (t - 1), DType::F32, &Device::Cpu).unwrap();
        let loss = ops::cross_entropy(&pred, &targets, &ones).unwrap();
        let (ours, theirs) = (
            loss.to_scalar::<f32>().unwrap() as f64,
            r["loss"].as_f64().unwrap(),
        );
        assert!(
            ((ours - theirs) / theirs).abs() < 1e-4,
            "{folder}: loss {ours} vs {theirs}"
        );

        let grads = loss.backward().unwrap();
        assert_eq!(r["grads"].as_object().unwrap().len(), 7);
        for (name, expected) in r["grads"].as_object().unwrap() {
            let var = &params.vars.iter().find(|(s, _)| &s.name == name).unwrap().1;
            let ours = grads.get(var.as_tensor()).unwrap();
            let expected = tensor(expected);
            let rel = max_abs(&(ours - &expected).unwrap()) / max_abs(&expected);
            assert!(
                rel < 1e-4,
                "{folder}: gradient of {name} differs by {rel} (relative)"
            );
        }
    }
}
