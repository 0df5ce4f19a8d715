//! Llama-family configs: the rotary frequencies (plain and Llama 3-scaled) equal transformers'.

#![allow(clippy::unwrap_used)] // tests: a failure should panic with its message

use chatforge_model::GptConfig;
use chatforge_model::llama::rope_inv_freq;
use serde_json::json;

#[test]
fn rope_frequencies_match_transformers() {
    let Some(py) = chatforge_testkit::python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let base = json!({"model_type": "llama", "hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 2,
        "num_hidden_layers": 1, "num_key_value_heads": 1, "max_position_embeddings": 2048, "vocab_size": 64,
        "rope_theta": 500000.0});
    let mut scaled = base.clone();
    scaled["rope_scaling"] = json!({"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
    for (name, cfg) in [("plain", base), ("llama3", scaled)] {
        let path = dir.path().join(format!("{name}.json"));
        std::fs::write(&path, cfg.to_string()).unwrap();
        let theirs: Vec<f32> = serde_json::from_str(&chatforge_testkit::run_reference(
            &py,
            "rope_freqs.py",
            &[path.to_str().unwrap()],
        ))
        .unwrap();
        let ours = rope_inv_freq(&GptConfig::from_hf(&cfg).unwrap());
        assert_eq!(ours.len(), theirs.len(), "{name}");
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1e-12),
                "{name} [{i}]: {a} vs {b}"
            );
        }
    }
}
