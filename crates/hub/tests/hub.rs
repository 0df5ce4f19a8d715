//! The Hub client against the fixture Hub: downloads into the shared cache layout, cache hits
//! that ask nothing, offline mode, revision pinning, resumed and corrupt downloads, and the
//! 401/403/404 advice.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use chatforge_hub::{Error, Hub, Quiet, RepoKind, RepoRef, Settings, dataset_files, model_files};
use chatforge_testkit::hub::{Access, FixtureHub};

const CONFIG: &str =
    r#"{"model_type": "gpt2", "vocab_size": 64, "n_positions": 32, "n_embd": 16, "n_layer": 1, "n_head": 2}"#;

fn weights(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn publish_model(hub: &FixtureHub, repo: &str, seed: u8) -> String {
    let w = weights(300_000, seed);
    hub.publish(
        repo,
        &[
            ("config.json", CONFIG.as_bytes()),
            ("tokenizer.json", b"{\"tok\": 1}"),
            ("model.safetensors", &w),
            ("onnx/decoder_model.onnx", b"not wanted"),
            ("README.md", b"# model"),
        ],
    )
}

fn settings(hub: &FixtureHub, cache: &Path) -> Settings {
    Settings {
        endpoint: hub.endpoint().to_string(),
        cache: cache.to_path_buf(),
        token: None,
        offline: false,
    }
}

fn model(spec: &str) -> RepoRef {
    RepoRef::parse(RepoKind::Model, spec).unwrap()
}

/// Requests that fetched file contents or metadata (not the repo info).
fn file_requests(log: &[String]) -> Vec<&String> {
    log.iter().filter(|l| !l.starts_with("GET /api/")).collect()
}

#[test]
fn download_cache_hit_offline_and_pinning() {
    let fixture = FixtureHub::start();
    let first = publish_model(&fixture, "org/tiny", 1);
    let cache = tempfile::tempdir().unwrap();
    let hub = Hub::new(settings(&fixture, cache.path())).unwrap();

    let snap = hub.snapshot(&model("org/tiny"), &model_files, &Quiet).unwrap();
    assert_eq!(snap.commit, first);
    assert_eq!(snap.files, ["config.json", "tokenizer.json", "model.safetensors"]);
    assert_eq!(
        std::fs::read(snap.dir.join("model.safetensors")).unwrap(),
        weights(300_000, 1)
    );
    assert!(!snap.dir.join("onnx").exists() && !snap.dir.join("README.md").exists());
    // huggingface_hub's layout: refs/main, relative links into blobs named by the ETag.
    let repo_dir = cache.path().join("models--org--tiny");
    assert_eq!(
        std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(),
        first
    );
    let link = std::fs::read_link(snap.dir.join("model.safetensors")).unwrap();
    assert!(link.starts_with("../../blobs"), "{link:?}");
    let blob = link.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(blob.len(), 64, "an LFS blob is named by its sha256");
    let config_blob = std::fs::read_link(snap.dir.join("config.json")).unwrap();
    assert_eq!(
        config_blob.file_name().unwrap().len(),
        40,
        "a git file by its blob id"
    );
    let log = fixture.take_log();
    assert!(log.iter().any(|l| l.starts_with("GET /cdn/")), "{log:?}");

    // A cache hit asks only which commit main is.
    let again = hub.snapshot(&model("org/tiny"), &model_files, &Quiet).unwrap();
    assert_eq!(again.dir, snap.dir);
    assert!(file_requests(&fixture.take_log()).is_empty());

    // Offline: nothing is asked at all.
    let offline = Hub::new(Settings {
        offline: true,
        ..settings(&fixture, cache.path())
    })
    .unwrap();
    let cached = offline
        .snapshot(&model("org/tiny"), &model_files, &Quiet)
        .unwrap();
    assert_eq!(cached.dir, snap.dir);
    assert!(fixture.take_log().is_empty());
    let err = offline
        .snapshot(&model("org/other"), &model_files, &Quiet)
        .unwrap_err();
    assert!(
        matches!(err, Error::NotCached(_)) && err.to_string().contains("HF_HUB_OFFLINE"),
        "{err}"
    );

    // A new commit on main; the old one stays reachable by hash and by tag.
    let second = publish_model(&fixture, "org/tiny", 2);
    fixture.tag("org/tiny", "v1", &first);
    let new = hub.snapshot(&model("org/tiny"), &model_files, &Quiet).unwrap();
    assert_eq!(new.commit, second);
    assert_eq!(
        std::fs::read(new.dir.join("model.safetensors")).unwrap(),
        weights(300_000, 2)
    );
    let pinned = hub
        .snapshot(&model(&format!("org/tiny@{first}")), &model_files, &Quiet)
        .unwrap();
    assert_eq!(pinned.dir, snap.dir);
    let tagged = hub.snapshot(&model("org/tiny@v1"), &model_files, &Quiet).unwrap();
    assert_eq!(tagged.commit, first);
    assert_eq!(std::fs::read_to_string(repo_dir.join("refs/v1")).unwrap(), first);
    // Offline, main is what was last fetched.
    assert_eq!(
        offline
            .snapshot(&model("org/tiny"), &model_files, &Quiet)
            .unwrap()
            .commit,
        second
    );

    // A renamed repository (`distilgpt2` is `distilbert/distilgpt2` now): the Hub's relative
    // redirects are followed; the cache keeps the name asked for, as huggingface_hub does.
    publish_model(&fixture, "distilbert/distilgpt2", 9);
    fixture.moved("distilgpt2", "distilbert/distilgpt2");
    let moved = hub.snapshot(&model("distilgpt2"), &model_files, &Quiet).unwrap();
    assert_eq!(
        std::fs::read(moved.dir.join("model.safetensors")).unwrap(),
        weights(300_000, 9)
    );
    assert!(moved.dir.starts_with(cache.path().join("models--distilgpt2")));

    // The Hub unreachable: the cache serves, with a note.
    let gone = Hub::new(Settings {
        endpoint: "http://127.0.0.1:9".into(),
        ..settings(&fixture, cache.path())
    })
    .unwrap();
    struct Notes(std::sync::Mutex<Vec<String>>);
    impl chatforge_hub::Progress for Notes {
        fn note(&self, msg: &str) {
            self.0.lock().unwrap().push(msg.into());
        }
    }
    let notes = Notes(Default::default());
    assert_eq!(
        gone.snapshot(&model("org/tiny"), &model_files, &notes)
            .unwrap()
            .commit,
        second
    );
    assert!(notes.0.lock().unwrap()[0].contains("cannot reach the Hub"));
    let err = gone
        .snapshot(&model("org/never"), &model_files, &Quiet)
        .unwrap_err();
    assert!(matches!(err, Error::NotCached(_)), "{err}");
}

#[test]
fn interrupted_download_resumes_and_corruption_is_caught() {
    let fixture = FixtureHub::start();
    publish_model(&fixture, "org/tiny", 3);
    let cache = tempfile::tempdir().unwrap();
    let hub = Hub::new(settings(&fixture, cache.path())).unwrap();

    fixture.cut_next("model.safetensors", 100_000);
    let err = hub
        .snapshot(&model("org/tiny"), &model_files, &Quiet)
        .unwrap_err();
    assert!(
        matches!(err, Error::Unreachable { .. }) && err.to_string().contains("resume"),
        "{err}"
    );
    let blobs = cache.path().join("models--org--tiny/blobs");
    let partial: Vec<_> = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "incomplete"))
        .collect();
    assert_eq!(partial.len(), 1);
    assert_eq!(std::fs::metadata(&partial[0]).unwrap().len(), 100_000);
    fixture.take_log();

    let snap = hub.snapshot(&model("org/tiny"), &model_files, &Quiet).unwrap();
    assert_eq!(
        std::fs::read(snap.dir.join("model.safetensors")).unwrap(),
        weights(300_000, 3)
    );
    let log = fixture.take_log();
    assert!(
        log.iter()
            .any(|l| l.starts_with("GET /cdn/") && l.ends_with("bytes=100000-")),
        "{log:?}"
    );
    assert!(!partial[0].exists());

    // A corrupt download is refused and leaves nothing behind.
    publish_model(&fixture, "org/bad", 4);
    fixture.corrupt("model.safetensors");
    let err = hub.snapshot(&model("org/bad"), &model_files, &Quiet).unwrap_err();
    assert!(
        matches!(err, Error::Corrupt(_)) && err.to_string().contains("hash to"),
        "{err}"
    );
    let bad_blobs = cache.path().join("models--org--bad/blobs");
    let left: Vec<_> = std::fs::read_dir(&bad_blobs)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left.len(),
        2,
        "only config.json's and tokenizer.json's blobs: {left:?}"
    );
}

#[test]
fn refusals_name_the_cause() {
    let fixture = FixtureHub::start();
    publish_model(&fixture, "org/private", 5);
    publish_model(&fixture, "org/gated", 6);
    fixture.set_access("org/private", Access::Private("hf_secret".into()));
    fixture.set_access("org/gated", Access::Gated("hf_secret".into()));
    fixture.publish(
        "org/llama",
        &[
            ("config.json", br#"{"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2, "max_position_embeddings": 256, "vocab_size": 100}"#),
            ("model.safetensors", &weights(1000, 7)),
        ],
    );
    let cache = tempfile::tempdir().unwrap();
    let anon = Hub::new(settings(&fixture, cache.path())).unwrap();
    let msg = |hub: &Hub, spec: &str| {
        hub.snapshot(&model(spec), &model_files, &Quiet)
            .unwrap_err()
            .to_string()
    };

    let m = msg(&anon, "org/missing");
    assert!(
        m.contains("does not exist or is private") && m.contains("set HF_TOKEN"),
        "{m}"
    );
    let m = msg(&anon, "org/private");
    assert!(m.contains("401") && m.contains("no token was sent"), "{m}");
    let m = msg(&anon, "org/gated");
    assert!(
        m.contains("is gated") && m.contains("accept its conditions"),
        "{m}"
    );
    let m = msg(&anon, "org/private@nope");
    assert!(m.contains("401"), "{m}");

    let with_token = Hub::new(Settings {
        token: Some("hf_secret".into()),
        ..settings(&fixture, cache.path())
    })
    .unwrap();
    with_token
        .snapshot(&model("org/private"), &model_files, &Quiet)
        .unwrap();
    with_token
        .snapshot(&model("org/gated"), &model_files, &Quiet)
        .unwrap();
    let m = msg(&with_token, "org/missing");
    assert!(m.contains("no such repository"), "{m}");
    let m = msg(&with_token, "org/private@nope");
    assert!(m.contains("no revision 'nope'"), "{m}");

    // The Llama family is fetched; another architecture is refused before its weights.
    anon.snapshot(&model("org/llama"), &model_files, &Quiet).unwrap();
    fixture.publish(
        "org/mistral",
        &[
            ("config.json", br#"{"model_type": "mistral", "hidden_size": 64}"#),
            ("model.safetensors", &weights(1000, 9)),
        ],
    );
    fixture.take_log();
    let m = msg(&anon, "org/mistral");
    assert!(m.contains("\"mistral\"") && m.contains("llama, qwen2"), "{m}");
    // A variant the family cannot run is named by its field.
    fixture.publish(
        "org/yarn",
        &[
            ("config.json", br#"{"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_hidden_layers": 2, "max_position_embeddings": 256, "vocab_size": 100, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}"#),
            ("model.safetensors", &weights(1000, 8)),
        ],
    );
    let m = msg(&anon, "org/yarn");
    assert!(m.contains("\"rope_scaling\"") && m.contains("yarn"), "{m}");
    let log = fixture.take_log();
    assert!(
        !log.iter()
            .any(|l| l.contains("model.safetensors") || l.starts_with("GET /cdn/")),
        "{log:?}"
    );
}

#[test]
fn dataset_split_files() {
    let fixture = FixtureHub::start();
    fixture.publish(
        "datasets/org/chats",
        &[
            ("README.md", b"# data"),
            ("data/train-00000-of-00001.parquet", b"PAR1 train"),
            ("data/validation-00000-of-00001.parquet", b"PAR1 val"),
            ("raw.jsonl.gz", b"not parquet"),
        ],
    );
    let cache = tempfile::tempdir().unwrap();
    let hub = Hub::new(settings(&fixture, cache.path())).unwrap();
    let repo = RepoRef::parse_url("datasets/org/chats").unwrap();
    let snap = hub
        .snapshot(&repo, &|l| dataset_files(l, "validation"), &Quiet)
        .unwrap();
    assert_eq!(snap.files, ["data/validation-00000-of-00001.parquet"]);
    assert!(cache.path().join("datasets--org--chats/snapshots").is_dir());
    assert_eq!(std::fs::read(snap.dir.join(&snap.files[0])).unwrap(), b"PAR1 val");
}
