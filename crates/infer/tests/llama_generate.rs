//! The decoder against transformers' `LlamaForCausalLM` and `Qwen2ForCausalLM` on tiny random
//! models (tied and untied heads, grouped-query attention, Llama 3 rope scaling, q/k/v biases,
//! bf16 weights): the logits of a whole prompt and token by token through the KV cache within
//! 1e-4, and greedy decoding giving transformers' 24 tokens; bf16 and q8 weights stay close.
//! Reference: scripts/reference/llama_parity.py (CPU torch, float32).

#![allow(clippy::unwrap_used)] // tests: a failure should panic with its message

use chatforge_infer::{Engine, WeightType};
use chatforge_model::load_hf;
use chatforge_testkit::{json_floats, json_ids, python, run_reference};
use serde_json::Value;

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// `n` greedy tokens after `prompt`, through the cache.
fn greedy(eng: &Engine, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut seq = eng.new_sequence();
    let mut logits = eng.forward(&mut [&mut seq], &[prompt], false).unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let next = argmax(&logits);
        out.push(next);
        logits = eng.forward(&mut [&mut seq], &[&[next]], false).unwrap();
    }
    out
}

#[test]
fn logits_and_greedy_tokens_match_transformers() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    run_reference(&py, "llama_parity.py", &[dir.path().to_str().unwrap()]);
    for variant in ["llama_tied", "llama3_untied", "qwen2_bias", "llama_bf16"] {
        let r: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join(format!("{variant}.json"))).unwrap(),
        )
        .unwrap();
        let (cfg, w) = load_hf(&dir.path().join(variant)).unwrap();
        let v = cfg.vocab_size;
        let eng = Engine::new(&cfg, &w, WeightType::F32).unwrap();
        let want = json_floats(&r["logits"]);
        for (row, ids) in json_ids(&r["ids"]).iter().enumerate() {
            let want = &want[row * ids.len() * v..(row + 1) * ids.len() * v];
            // The whole row at once (more than 8 rows: the gemm path).
            let all = eng.forward(&mut [&mut eng.new_sequence()], &[ids], true).unwrap();
            let d = max_diff(&all, want);
            assert!(d < 1e-4, "{variant} row {row}: prompt logits differ by {d}");
            // Token by token through the cache (the streaming kernels).
            let mut seq = eng.new_sequence();
            for (p, id) in ids.iter().enumerate() {
                let l = eng.forward(&mut [&mut seq], &[&[*id]], false).unwrap();
                let d = max_diff(&l, &want[p * v..(p + 1) * v]);
                assert!(d < 1e-4, "{variant} row {row}: cached step {p} differs by {d}");
            }
        }
        let flat = |v: &Value| json_ids(&Value::Array(vec![v.clone()])).concat();
        let prompt = flat(&r["prompt"]);
        let theirs = flat(&r["greedy"]);
        assert_eq!(
            greedy(&eng, &prompt, theirs.len()),
            theirs,
            "{variant}: greedy tokens"
        );
        // Lower-precision weights: close logits on the prompt.
        let f = eng
            .forward(&mut [&mut eng.new_sequence()], &[&prompt], false)
            .unwrap();
        for wt in [WeightType::Bf16, WeightType::Q8] {
            let e = Engine::new(&cfg, &w, wt).unwrap();
            let l = e
                .forward(&mut [&mut e.new_sequence()], &[&prompt], false)
                .unwrap();
            let scale = f.iter().fold(0f32, |m, x| m.max(x.abs()));
            let d = max_diff(&l, &f) / scale;
            assert!(d < 0.05, "{variant} {wt:?}: logits differ by {d} (relative)");
        }
    }
}
