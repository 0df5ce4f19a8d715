//! `chatforge train --precision`: a bf16 run's loss curve tracks the f32 run's on the sample
//! corpus; `auto` picks bf16 exactly where the CPU has AVX-512 BF16; `bf16` is refused, with the
//! reason, where it does not (and runs emulated with `CHATFORGE_EMULATE_BF16=1`, so the curve is
//! checked on every machine). The kernel's own numbers are tested against f64 in the model crate.

#![allow(clippy::unwrap_used)] // tests: a failure should panic with its message

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{CONFIG, TRAIN_ON_SAMPLE, sample_shards};

/// Trains `CONFIG` (80 steps, no dropout) on the sample shards with `args` added and `env` set;
/// returns the run's step losses, last validation loss and manifest, or the error output.
fn train(
    d: &Path,
    out: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<(Vec<f64>, f64, serde_json::Value), String> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatforge"));
    cmd.args(TRAIN_ON_SAMPLE)
        .args(["-o", out])
        .args(args)
        .current_dir(d)
        .stdin(Stdio::null())
        .env_remove(chatforge_model::precision::EMULATE_ENV);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = cmd.output().unwrap();
    if !o.status.success() {
        return Err(String::from_utf8_lossy(&o.stderr).into_owned());
    }
    let (train, val) = chatforge_train::read_curves(&d.join(out).join("logs.jsonl")).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join(out).join("manifest.json")).unwrap()).unwrap();
    Ok((
        train.values().copied().collect(),
        *val.values().last().unwrap(),
        manifest,
    ))
}

fn products(manifest: &serde_json::Value) -> (&str, &str) {
    let p = &manifest["precision"];
    (p["products"].as_str().unwrap(), p["kernel"].as_str().unwrap())
}

#[test]
fn a_bf16_run_tracks_the_f32_run_and_auto_follows_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    sample_shards(d, 500);
    std::fs::write(
        d.join("cfg.toml"),
        CONFIG.replace("max_steps = 60", "max_steps = 80"),
    )
    .unwrap();
    let (f32_losses, f32_val, m) = train(d, "f32", &[], &[]).unwrap();
    assert_eq!(products(&m), ("f32", "gemm crate (f32)"));
    // `auto` is bf16 where the CPU has the instruction, f32 elsewhere.
    let (_, _, auto) = train(d, "auto", &["--precision", "auto"], &[]).unwrap();
    let native = products(&auto).1 == "AVX-512 BF16";
    assert_eq!(products(&auto).0, if native { "bf16" } else { "f32" });
    let env: &[(&str, &str)] = if native {
        &[]
    } else {
        let refused = train(d, "refused", &["--precision", "bf16"], &[]).unwrap_err();
        assert!(refused.contains("needs AVX-512 BF16"), "{refused}");
        assert!(!d.join("refused").exists(), "a refused run leaves nothing behind");
        &[(chatforge_model::precision::EMULATE_ENV, "1")]
    };
    let (bf16_losses, bf16_val, m) = train(d, "bf16", &["--precision", "bf16"], env).unwrap();
    assert_eq!(products(&m).0, "bf16");
    assert_eq!(m["config"]["train"]["precision"], "bf16");
    assert_eq!(bf16_losses.len(), f32_losses.len());
    // Every step's loss within 1% of the f32 run's, and the validation loss within 0.5%; the runs
    // do differ (the products' inputs were rounded).
    let worst = f32_losses
        .iter()
        .zip(&bf16_losses)
        .map(|(a, b)| (a - b).abs() / a)
        .fold(0f64, f64::max);
    eprintln!(
        "bf16 vs f32: worst step {worst:.4}, validation {bf16_val:.4} vs {f32_val:.4}, first {} last {}",
        f32_losses[0],
        f32_losses[f32_losses.len() - 1]
    );
    assert!(worst < 0.01, "a step's loss differs by {worst} of the f32 run's");
    assert!(
        (bf16_val - f32_val).abs() / f32_val < 0.005,
        "validation {bf16_val} vs {f32_val}"
    );
    assert!(f32_losses.iter().zip(&bf16_losses).any(|(a, b)| a != b));
    assert!(
        bf16_losses[bf16_losses.len() - 1] < 0.85 * bf16_losses[0],
        "the bf16 run learns"
    );
}
