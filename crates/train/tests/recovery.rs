//! What a run does with what a crash or a bad setting leaves: a run that diverges stops with its
//! step and keeps no NaN, a resume past an unusable checkpoint logs each step once, a log cut
//! inside a character is trimmed, and a crash's half-written files are cleared.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failure should panic with its message

mod common;

use std::path::Path;
use std::sync::atomic::AtomicBool;

use chatforge_model::Tensor;
use chatforge_model::io::safetensors;
use chatforge_run::RunDir;
use chatforge_train::{Event, TrainConfig, TrainSettings, train};
use common::{config, crash_after, run};

/// The step numbers of `logs.jsonl`'s step events, in order; every line must be whole JSON.
fn logged_steps(run: &Path) -> Vec<u64> {
    let bytes = std::fs::read(run.join("logs.jsonl")).unwrap();
    let text = String::from_utf8(bytes).expect("the log is UTF-8");
    // Steps never decrease down the log: what gives the API's event ids their meaning.
    let keys: Vec<u64> = text
        .lines()
        .filter_map(|l| chatforge_train::line_step(l.as_bytes()))
        .collect();
    assert!(keys.windows(2).all(|w| w[0] <= w[1]), "{keys:?}");
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("every line is JSON"))
        .filter(|v| v["event"] == "step")
        .map(|v| v["step"].as_u64().unwrap())
        .collect()
}

/// A run's events and its result.
fn train_events(
    cfg: &TrainConfig,
    dir: &Path,
    resume: bool,
) -> (Vec<Event>, chatforge_train::Result<Vec<f64>>) {
    let mut events = Vec::new();
    let r = train(
        cfg,
        dir,
        resume,
        &mut |e| events.push(e.clone()),
        &AtomicBool::new(false),
    );
    (events, r.map(|s| s.losses))
}

fn warnings(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Warning { message, .. } => Some(message.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_diverging_run_stops_at_its_step_and_saves_no_nan() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 4);
    run(&cfg, &dir.path().join("base"), false);
    // A model whose weights overflow the logits: its first step's loss is not a number.
    let best = dir.path().join("base/best");
    let w = safetensors::read(&best.join("model.safetensors")).unwrap();
    let huge: std::collections::BTreeMap<String, Tensor> = w
        .into_iter()
        .map(|(k, t)| {
            let v = t.data().iter().map(|x| x * 1e30).collect();
            (k, Tensor::new(t.dims(), v).unwrap())
        })
        .collect();
    safetensors::write(&best.join("model.safetensors"), &huge).unwrap();
    let mut next = cfg.clone();
    next.train.init = Some(dir.path().join("base"));
    let out = dir.path().join("diverged");
    let (_, r) = train_events(&next, &out, false);
    let err = r.unwrap_err().to_string();
    assert!(err.contains("diverged at step 1"), "{err}");
    assert!(
        !out.join("best").exists() && RunDir::new(&out).list_checkpoints().is_empty(),
        "nothing saved"
    );
}

#[test]
fn a_run_without_a_usable_checkpoint_starts_its_log_again() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 8);
    let out = dir.path().join("run");
    run(&cfg, &out, false);
    std::fs::remove_dir_all(out.join("checkpoints")).unwrap();
    run(&cfg, &out, true);
    assert_eq!(logged_steps(&out), (1..=8).collect::<Vec<_>>());
}

#[test]
fn a_log_cut_inside_a_character_is_trimmed_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 10);
    let out = dir.path().join("run");
    crash_after(&cfg, &out, 6);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(out.join("logs.jsonl"))
        .unwrap();
    std::io::Write::write_all(&mut f, b"{\"event\":\"warning\",\"step\":7,\"message\":\"caf\xC3").unwrap();
    drop(f);
    run(&cfg, &out, true);
    assert_eq!(logged_steps(&out), (1..=10).collect::<Vec<_>>());
}

#[test]
fn a_checkpoint_that_verifies_but_does_not_load_is_passed_over() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 14);
    let full = run(&cfg, &dir.path().join("full"), false);
    let out = dir.path().join("run");
    let short = TrainConfig {
        train: TrainSettings {
            max_steps: Some(14),
            ..cfg.train.clone()
        },
        ..cfg.clone()
    };
    crash_after(&short, &out, 10);
    // A resumed attempt that crashes again leaves a start line at step 8 in the log.
    let result = std::panic::catch_unwind(|| {
        train(
            &short,
            &out,
            true,
            &mut |e| {
                if let Event::Step { step: 10, .. } = e {
                    panic!("crashed again");
                }
            },
            &AtomicBool::new(false),
        )
    });
    assert!(result.is_err());
    // step 8 is the newest; make it hash-valid (state.json lists the new file's hash) but not a
    // model of this config.
    let (step, newest) = RunDir::new(&out).list_checkpoints()[0].clone();
    assert_eq!(step, 8);
    let other = std::collections::BTreeMap::from([("x".to_string(), Tensor::zeros([3]))]);
    safetensors::write(&newest.join("model.safetensors"), &other).unwrap();
    let state_path = newest.join("state.json");
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_path).unwrap()).unwrap();
    state["files"]["model.safetensors"] = chatforge_data::sha256_file(&newest.join("model.safetensors"))
        .unwrap()
        .into();
    std::fs::write(&state_path, state.to_string()).unwrap();
    // A crash's leftovers beside it: a half-written checkpoint, and best/ moved aside.
    let dead = 4_194_305;
    std::fs::create_dir_all(out.join(format!("checkpoints/.step_000012.tmp-{dead}"))).unwrap();
    std::fs::rename(out.join("best"), out.join(format!(".best.old-{dead}"))).unwrap();
    let (events, losses) = train_events(&cfg, &out, true);
    let losses = losses.unwrap();
    let warned = warnings(&events);
    assert!(
        warned
            .iter()
            .any(|w| w.starts_with("skipping checkpoint checkpoints/step_000008")),
        "{warned:?}"
    );
    assert!(
        warned.iter().any(|w| w.contains("cleared .best.old")),
        "{warned:?}"
    );
    assert_eq!(losses[..], full[4..], "resumed from step 4 with the same losses");
    assert!(out.join("best").is_dir() && !out.join(format!(".best.old-{dead}")).exists());
    assert!(!out.join(format!("checkpoints/.step_000012.tmp-{dead}")).exists());
    assert_eq!(logged_steps(&out), (1..=14).collect::<Vec<_>>());
    // No event names a path outside the run.
    let log = std::fs::read_to_string(out.join("logs.jsonl")).unwrap();
    assert!(!log.contains(&dir.path().display().to_string()), "{log}");
}
