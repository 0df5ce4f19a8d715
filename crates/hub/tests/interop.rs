//! Interoperability with Python's `huggingface_hub` (the reference venv): a cache it fills from
//! the fixture Hub serves chatforge offline, and a cache chatforge fills serves it offline.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use chatforge_hub::{Hub, Quiet, RepoKind, RepoRef, Settings, model_files};
use chatforge_testkit::hub::FixtureHub;

const CONFIG: &str =
    r#"{"model_type": "gpt2", "vocab_size": 64, "n_positions": 32, "n_embd": 16, "n_layer": 1, "n_head": 2}"#;

fn weights(seed: u8) -> Vec<u8> {
    (0..200_000u32)
        .map(|i| (i as u8).wrapping_mul(17).wrapping_add(seed))
        .collect()
}

fn publish(hub: &FixtureHub, repo: &str, seed: u8) {
    hub.publish(
        repo,
        &[
            ("config.json", CONFIG.as_bytes()),
            ("vocab.json", b"{\"a\": 0}"),
            ("merges.txt", b"#version: 0.2\n"),
            ("model.safetensors", &weights(seed)),
            ("README.md", b"# tiny"),
        ],
    );
}

fn python_hub(
    python: &Path,
    fixture: &FixtureHub,
    cache: &Path,
    offline: bool,
    args: &[&str],
) -> serde_json::Value {
    let out = Command::new(python)
        .arg(chatforge_testkit::root().join("scripts/reference/hub_interop.py"))
        .args(args)
        .env("HF_ENDPOINT", fixture.endpoint())
        .env("HF_HUB_CACHE", cache)
        .env("HF_HUB_OFFLINE", if offline { "1" } else { "0" })
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .env_remove("HF_TOKEN")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "hub_interop.py {args:?}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn caches_are_shared_with_huggingface_hub() {
    let Some(python) = chatforge_testkit::python() else {
        return;
    };
    let fixture = FixtureHub::start();
    publish(&fixture, "org/from-python", 1);
    publish(&fixture, "org/from-chatforge", 2);
    let cache = tempfile::tempdir().unwrap();
    let settings = |offline| Settings {
        endpoint: fixture.endpoint().to_string(),
        cache: cache.path().to_path_buf(),
        token: None,
        offline,
    };

    // Python downloads; chatforge reads the cache offline.
    let got = python_hub(
        &python,
        &fixture,
        cache.path(),
        false,
        &["download", "org/from-python"],
    );
    let offline = Hub::new(settings(true)).unwrap();
    let repo = RepoRef::parse(RepoKind::Model, "org/from-python").unwrap();
    fixture.take_log();
    let snap = offline.snapshot(&repo, &model_files, &Quiet).unwrap();
    assert!(fixture.take_log().is_empty());
    assert_eq!(snap.dir, Path::new(got["path"].as_str().unwrap()));
    assert_eq!(
        std::fs::read(snap.dir.join("model.safetensors")).unwrap(),
        weights(1)
    );
    assert!(snap.files.contains(&"merges.txt".to_string()));

    // chatforge downloads; Python reads the cache offline.
    let online = Hub::new(settings(false)).unwrap();
    let repo = RepoRef::parse(RepoKind::Model, "org/from-chatforge").unwrap();
    let snap = online.snapshot(&repo, &model_files, &Quiet).unwrap();
    fixture.take_log();
    let files = ["config.json", "model.safetensors", "vocab.json"];
    let mut args = vec!["offline", "org/from-chatforge"];
    args.extend(files);
    let got = python_hub(&python, &fixture, cache.path(), true, &args);
    assert!(fixture.take_log().is_empty(), "Python asked the Hub");
    assert_eq!(snap.dir, Path::new(got["path"].as_str().unwrap()));
    for f in files {
        let hex: String = std::fs::read(snap.dir.join(f))
            .unwrap()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(got["files"][f].as_str().unwrap(), hex, "{f}");
    }
}
