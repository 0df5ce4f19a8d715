//! The Python package (`python/`): built with maturin into the reference venv, then its pytest
//! suite (`python/tests`), which also compares runs, imports and error messages with this build's
//! `chatforge` binary, and loads a Llama-family model by Hub id from a fixture Hub.

#![allow(clippy::unwrap_used)] // tests: a failure should panic with its message

use std::path::Path;
use std::process::Command;

use chatforge_testkit::hub::FixtureHub;
use chatforge_testkit::root;

mod common;

/// The fixture Hub's model: a tiny random Llama laid out as SmolLM2-Instruct's folder.
const HUB_MODEL: &str = "HuggingFaceTB/SmolLM2-tiny-Instruct";

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
    let dir = tempfile::tempdir().unwrap();
    let folder = common::llama_folder(
        dir.path(),
        "smol",
        chatforge_model::GptConfig {
            n_ctx: 128,
            ..chatforge_model::GptConfig::llama_tiny(0)
        },
    );
    let hub = FixtureHub::start();
    hub.publish_folder(HUB_MODEL, &folder);
    let tests = Command::new(&python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"])
        .current_dir(root().join("python"))
        .env("CHATFORGE_BIN", env!("CARGO_BIN_EXE_chatforge"))
        .env("CHATFORGE_TEST_HUB_MODEL", HUB_MODEL)
        .env("CHATFORGE_TEST_HUB_FOLDER", &folder)
        .env("HF_ENDPOINT", hub.endpoint())
        .env("HF_HUB_CACHE", dir.path().join("hf-cache"))
        .env("HF_HOME", dir.path().join("hf-home"))
        .env("HF_HUB_OFFLINE", "0")
        .env_remove("HF_TOKEN")
        .env("PATH", &path)
        .output()
        .unwrap();
    let out = check(tests, "pytest python/tests");
    eprintln!("{out}");
    assert!(!out.contains("skipped"), "every Python test runs here:\n{out}");
    assert!(Path::new(&root().join("python/tests")).is_dir());
}
