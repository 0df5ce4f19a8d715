//! The Python package (`python/`): built with maturin into the reference venv, then its pytest
//! suite (`python/tests`), which also compares runs, imports and error messages with this build's
//! `chatforge` binary.

#![allow(clippy::unwrap_used)] // tests: a failure should panic with its message

use std::path::Path;
use std::process::Command;

use chatforge_testkit::root;

/// `what` succeeded, or the test fails with its output.
fn check(out: std::process::Output, what: &str) -> String {
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed:\n{text}");
    text
}

#[test]
fn the_python_package_passes_its_tests() {
    let Some(python) = chatforge_testkit::python() else {
        return;
    };
    let bin = python.parent().unwrap();
    let venv = bin.parent().unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    // `maturin develop` installs the package into the venv; quick when it is built already
    // (`.ci/run` builds it before the tests).
    let build = Command::new(bin.join("maturin"))
        .args(["develop", "--quiet"])
        .current_dir(root().join("python"))
        .env("VIRTUAL_ENV", venv)
        .env("PATH", &path)
        .output()
        .unwrap();
    check(build, "maturin develop");
    let tests = Command::new(&python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"])
        .current_dir(root().join("python"))
        .env("CHATFORGE_BIN", env!("CARGO_BIN_EXE_chatforge"))
        .env("PATH", &path)
        .output()
        .unwrap();
    let out = check(tests, "pytest python/tests");
    eprintln!("{out}");
    assert!(!out.contains("skipped"), "every Python test runs here:\n{out}");
    assert!(Path::new(&root().join("python/tests")).is_dir());
}
