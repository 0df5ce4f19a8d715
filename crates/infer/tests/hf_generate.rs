//! Greedy generation against transformers' `generate(do_sample=False)` on the same random GPT-2
//! folder (a plain one: vocab.json + merges.txt, no chat template), with and without the KV cache:
//! the same 50 tokens, and logits within 1e-4 at every step.
//! Reference: scripts/reference/hf_generate.py (CPU torch, float32).

#![allow(clippy::unwrap_used)] // tests: a failure should panic with its message

use chatforge_infer::{Checkpoint, LoadedModel, ModelKind, Sampling, WeightType, generate_ids};
use chatforge_testkit::{fixture, python, run_reference};
use serde_json::Value;

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn greedy_generation_matches_transformers_with_and_without_cache() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let tok = fixture("gpt2-tiny");
    run_reference(
        &py,
        "hf_generate.py",
        &[dir.path().to_str().unwrap(), tok.to_str().unwrap()],
    );
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("reference.json")).unwrap()).unwrap();
    let prompt = ids(&reference["prompt"]);
    let model = LoadedModel::open(
        &dir.path().join("model"),
        &Checkpoint::Best,
        None,
        WeightType::F32,
    )
    .unwrap();
    assert_eq!(model.kind, ModelKind::Hf);
    assert!(
        !model.chat,
        "a plain GPT-2 folder has no chat template: raw by default"
    );
    let eng = &model.engine;
    let v = model.config.vocab_size;

    for key in ["cache", "no_cache"] {
        let want = ids(&reference[key]["tokens"]);
        let logits: Vec<Vec<f32>> = reference[key]["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(floats)
            .collect();
        assert_eq!(want.len(), 50);
        // Through the public generation path (always cached).
        let got = generate_ids(eng, &prompt, 50, &[], &Sampling::greedy()).unwrap();
        assert_eq!(got, want, "{key}: greedy tokens differ");
        // `--temperature 0` alone, as the CLI resolves it against the folder's
        // generation_config.json: transformers' plain greedy search (no repetition penalty).
        let asked = chatforge_infer::SamplingGiven {
            temperature: Some(0.0),
            ..Default::default()
        };
        let resolved = model.generation.resolve(asked);
        assert_eq!(resolved.repetition_penalty, 1.0);
        assert_eq!(generate_ids(eng, &prompt, 50, &[], &resolved).unwrap(), want);
        // Step by step, with the cache: the prompt once, then one token per step.
        let mut seq = eng.new_sequence();
        let mut l = eng.forward(&mut [&mut seq], &[&prompt], false).unwrap();
        for (step, tok) in want.iter().enumerate() {
            let d = max_diff(&l, &logits[step]);
            assert!(d < 1e-4, "{key}, cached, step {step}: logits differ by {d}");
            l = eng.forward(&mut [&mut seq], &[&[*tok]], false).unwrap();
        }
        // Without the cache: the whole sequence again at every step.
        let mut seqn: Vec<u32> = prompt.clone();
        for (step, tok) in want.iter().enumerate() {
            let mut fresh = eng.new_sequence();
            let l = eng.forward(&mut [&mut fresh], &[&seqn], false).unwrap();
            assert_eq!(l.len(), v);
            let d = max_diff(&l, &logits[step]);
            assert!(d < 1e-4, "{key}, uncached, step {step}: logits differ by {d}");
            let argmax = l.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0 as u32;
            assert_eq!(argmax, *tok, "{key}, uncached, step {step}");
            seqn.push(*tok);
        }
    }
}
