//! docs/config.md against the config structs: every key documented, every documented key real,
//! every documented alias accepted; and config files in TOML, JSON and YAML, sectioned or flat.

#![allow(clippy::unwrap_used)] // tests: a failure should panic with its message

use std::collections::BTreeSet;

use chatforge_model::quant::QuantKind;
use chatforge_train::TrainConfig;
use serde_json::Value;

/// `(section, key, aliases)` for every table row of docs/config.md.
fn documented() -> Vec<(String, String, Vec<String>)> {
    let doc = std::fs::read_to_string(chatforge_testkit::root().join("docs/config.md")).unwrap();
    let mut section = String::new();
    let mut rows = Vec::new();
    for line in doc.lines() {
        if let Some(h) = line.strip_prefix("## [") {
            section = h.trim_end_matches(']').to_string();
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if section.is_empty() || cells.len() < 6 || !cells[1].starts_with('`') {
            continue;
        }
        let names = |c: &str| -> Vec<String> {
            c.split(',')
                .map(|a| a.trim().trim_matches('`').to_string())
                .filter(|a| !a.is_empty())
                .collect()
        };
        rows.push((section.clone(), names(cells[1]).remove(0), names(cells[4])));
    }
    rows
}

#[test]
fn the_config_page_lists_every_key_and_its_aliases_work() {
    let mut cfg = TrainConfig::default();
    cfg.lora.quant = Some(QuantKind::Q4); // serialised only when set
    let actual = serde_json::to_value(&cfg).unwrap();
    let rows = documented();
    for section in ["model", "train", "lora"] {
        let keys: BTreeSet<String> = actual[section].as_object().unwrap().keys().cloned().collect();
        let doc: BTreeSet<String> = rows
            .iter()
            .filter(|r| r.0 == section)
            .map(|r| r.1.clone())
            .collect();
        assert_eq!(doc, keys, "[{section}]: docs/config.md vs the struct");
    }
    // Each alias, alone in its section, sets the key it names.
    for (section, key, aliases) in &rows {
        // Not the default, so an alias that set another key (or nothing) is caught.
        let value = changed(&actual[section.as_str()][key.as_str()], key);
        for alias in aliases {
            let file = serde_json::json!({ section.as_str(): { alias.as_str(): value.clone() } });
            let parsed: TrainConfig = serde_json::from_value(file)
                .unwrap_or_else(|e| panic!("[{section}] alias {alias} of {key}: {e}"));
            let got = &serde_json::to_value(&parsed).unwrap()[section.as_str()][key.as_str()];
            assert_eq!(*got, value, "[{section}] alias {alias} did not set {key}");
        }
    }
}

/// A value of the key's type other than its default.
fn changed(default: &Value, key: &str) -> Value {
    match default {
        Value::Bool(b) => Value::from(!b),
        Value::Number(n) if n.is_u64() => Value::from(n.as_u64().unwrap() + 3),
        // Exact in f32 too.
        Value::Number(n) => Value::from(if n.as_f64() == Some(0.25) { 0.5 } else { 0.25 }),
        Value::Array(_) => serde_json::json!(["c_fc"]),
        Value::String(_) => Value::from(match key {
            "activation" => "gelu-erf",
            "arch" => "llama",
            "mode" => "pretrain",
            "quant" => "q8",
            "precision" => "bf16",
            _ => "x",
        }),
        _ => match key {
            "init" | "data" | "val" | "adapter_name" => Value::from("x"),
            "epochs" => Value::from(2.5),
            _ => Value::from(3),
        },
    }
}

#[test]
fn config_files_in_toml_json_yaml_flat_or_sectioned() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let check = |cfg: TrainConfig| {
        assert_eq!(
            (cfg.model.n_layer, cfg.model.n_embd, cfg.model.n_head),
            (3, 48, 6)
        );
        assert_eq!(
            (cfg.train.lr, cfg.train.epochs, cfg.train.batch_size),
            (5e-4, Some(2.0), 4)
        );
        assert_eq!(cfg.lora.rank, 16);
    };
    check(TrainConfig::from_file(&write("a.toml", "[model]\nn_layer = 3\nhidden_size = 48\nnum_attention_heads = 6\n[training]\nlearning_rate = 5e-4\nnum_epochs = 2\nbatch_size = 4\n[lora]\nr = 16\n")).unwrap());
    // Seed 000's config.yaml: model and training sections, Hugging Face names.
    check(TrainConfig::from_file(&write("config.yaml", "model:\n  num_hidden_layers: 3\n  hidden_size: 48\n  num_attention_heads: 6\ntraining:\n  learning_rate: 0.0005\n  num_epochs: 2\n  batch_size: 4\nlora:\n  lora_r: 16\n")).unwrap());
    // Seed 001's flat training_config.json.
    let flat = TrainConfig::from_file(&write(
        "training_config.json",
        r#"{"model_name": "distilgpt2", "num_hidden_layers": 3, "hidden_size": 48, "num_heads": 6, "learning_rate": 5e-4, "num_epochs": 2, "batch_size": 4, "lora_r": 16, "lora_alpha": 32, "target_modules": ["c_attn", "c_proj"]}"#,
    ))
    .unwrap();
    assert_eq!(
        flat.train.init.as_deref(),
        Some(std::path::Path::new("distilgpt2"))
    );
    assert_eq!((flat.lora.alpha, flat.lora.targets.len()), (32.0, 2));
    check(flat);
    // An unknown key is named, wherever it stands.
    for (name, text) in [
        ("bad.toml", "[train]\nlearning_rat = 1e-3\n"),
        ("bad.json", r#"{"learning_rat": 1e-3}"#),
        ("bad.yaml", "model:\n  hiden_size: 3\n"),
    ] {
        let err = TrainConfig::from_file(&write(name, text))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(name) && (err.contains("learning_rat") || err.contains("hiden_size")),
            "{err}"
        );
    }
}
