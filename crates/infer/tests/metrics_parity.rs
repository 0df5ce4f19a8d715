//! BLEU and ROUGE against the packages people cite them from: sacreBLEU's `corpus_bleu` and
//! Google's `rouge-score`, on fixtures/metrics/pairs.jsonl (punctuation, numbers, accents, an
//! empty reply, a too-short and a too-long one).
//! Reference: scripts/reference/metrics_reference.py.

#![allow(clippy::unwrap_used)] // tests: a failure should panic with its message

use chatforge_infer::metrics::{corpus_bleu, mean_rouge, rouge, tokenize_13a};
use chatforge_testkit::{fixture, python, run_reference};
use serde_json::Value;

#[test]
fn bleu_and_rouge_match_sacrebleu_and_rouge_score() {
    let Some(py) = python() else { return };
    let pairs = fixture("metrics/pairs.jsonl");
    let reference: Value = serde_json::from_str(&run_reference(
        &py,
        "metrics_reference.py",
        &[pairs.to_str().unwrap()],
    ))
    .unwrap();
    let text = std::fs::read_to_string(&pairs).unwrap();
    let rows: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let hyps: Vec<String> = rows
        .iter()
        .map(|r| r["hypothesis"].as_str().unwrap().to_string())
        .collect();
    let refs: Vec<String> = rows
        .iter()
        .map(|r| r["reference"].as_str().unwrap().to_string())
        .collect();

    // The 13a tokens, string for string.
    for (s, want) in hyps
        .iter()
        .chain(&refs)
        .zip(reference["tokens_13a"].as_array().unwrap())
    {
        assert_eq!(
            tokenize_13a(s).join(" "),
            want.as_str().unwrap(),
            "13a tokens of {s:?}"
        );
    }
    let b = corpus_bleu(&hyps, &refs);
    let rb = &reference["bleu"];
    assert!(
        (b.score - rb["score"].as_f64().unwrap()).abs() < 0.01,
        "BLEU {} vs {}",
        b.score,
        rb["score"]
    );
    assert!((b.brevity_penalty - rb["bp"].as_f64().unwrap()).abs() < 1e-9);
    assert_eq!(b.sys_len as u64, rb["sys_len"].as_u64().unwrap());
    assert_eq!(b.ref_len as u64, rb["ref_len"].as_u64().unwrap());
    for (p, w) in b.precisions.iter().zip(rb["precisions"].as_array().unwrap()) {
        assert!((p - w.as_f64().unwrap()).abs() < 1e-9, "precision {p} vs {w}");
    }

    for (i, want) in reference["rouge"].as_array().unwrap().iter().enumerate() {
        let r = rouge(&refs[i], &hyps[i]);
        for (name, got) in [("rouge1", r.rouge1), ("rouge2", r.rouge2), ("rougeL", r.rouge_l)] {
            let w = &want[name];
            for (k, g) in [("p", got.precision), ("r", got.recall), ("f", got.f1)] {
                let wv = w[k].as_f64().unwrap();
                assert!((g - wv).abs() < 1e-9, "pair {i} {name} {k}: {g} vs {wv}");
            }
        }
    }
    let mean = mean_rouge(&refs, &hyps);
    let wm = &reference["rouge_mean_f"];
    for (name, got) in [
        ("rouge1", mean.rouge1.f1),
        ("rouge2", mean.rouge2.f1),
        ("rougeL", mean.rouge_l.f1),
    ] {
        assert!(
            (got - wm[name].as_f64().unwrap()).abs() < 0.01,
            "{name} mean F1 {got} vs {}",
            wm[name]
        );
    }
}
