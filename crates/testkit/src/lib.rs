//! Helpers for tests only: where the repository's fixtures are, and the Python reference venv
//! (transformers, tokenizers, …) that parity tests compare against.

#![allow(clippy::expect_used)] // test support: a broken checkout should fail loudly

use std::path::PathBuf;
use std::process::Command;

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// A file under `fixtures/`.
pub fn fixture(rel: &str) -> PathBuf {
    root().join("fixtures").join(rel)
}

/// The venv's python, built on first use by `scripts/reference/venv.sh`.
///
/// Returns `None` with a loud message when the venv cannot be built (no registry access), so the
/// rest of the suite still runs on such a machine; with `CHATFORGE_REQUIRE_PYTHON=1` (set by
/// `.ci/run`) that is a failure instead.
pub fn python() -> Option<PathBuf> {
    let script = root().join("scripts/reference/venv.sh");
    let out = Command::new("bash").arg(&script).output().expect("run venv.sh");
    if out.status.success() {
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        return Some(PathBuf::from(path));
    }
    let why = String::from_utf8_lossy(&out.stderr);
    if std::env::var("CHATFORGE_REQUIRE_PYTHON").is_ok_and(|v| v == "1") {
        panic!("the Python reference venv could not be built:\n{why}");
    }
    eprintln!("\n*** SKIPPED: Python parity check — the reference venv could not be built ***\n{why}");
    None
}

/// Runs a script from `scripts/reference/` with the venv's python; panics with its stderr on failure.
pub fn run_reference(python: &PathBuf, script: &str, args: &[&str]) -> String {
    let out = Command::new(python)
        .arg(root().join("scripts/reference").join(script))
        .args(args)
        .output()
        .expect("run the reference script");
    assert!(
        out.status.success(),
        "{script} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("reference output is UTF-8")
}

/// Every number in a (nested) JSON array, in order, as f32: logits and tensors a reference printed.
pub fn json_floats(v: &serde_json::Value) -> Vec<f32> {
    fn go(v: &serde_json::Value, out: &mut Vec<f32>) {
        match v {
            serde_json::Value::Array(a) => a.iter().for_each(|x| go(x, out)),
            x => out.push(x.as_f64().unwrap_or_else(|| panic!("not a number: {x}")) as f32),
        }
    }
    let mut out = Vec::new();
    go(v, &mut out);
    out
}

/// The largest absolute difference between two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}
