//! The container files stay true to the binary: every command compose.yaml and the Dockerfile run
//! is parsed by `chatforge … --print-config` (flags and settings valid), against Redis and the
//! data volume they declare. (`.ci/run` also lints them with a container engine where one runs.)

#![allow(clippy::unwrap_used)] // tests: a failure should panic with its message

use std::process::Command;

use chatforge_testkit::root;

/// The settings `chatforge ARGS --print-config` prints.
fn settings(args: &[String]) -> toml::Table {
    let out = Command::new(env!("CARGO_BIN_EXE_chatforge"))
        .args(args)
        .arg("--print-config")
        .env_remove("REDIS_URL")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chatforge {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    toml::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap()
}

#[test]
fn compose_and_dockerfile_commands_are_valid() {
    let compose: serde_json::Value =
        yaml_serde::from_str(&std::fs::read_to_string(root().join("compose.yaml")).unwrap()).unwrap();
    let services = &compose["services"];
    assert!(services["redis"]["image"].as_str().unwrap().starts_with("redis:"));
    for (name, verb) in [("api", "serve"), ("worker", "worker")] {
        let s = &services[name];
        let cmd: Vec<String> = serde_json::from_value(s["command"].clone()).unwrap();
        assert_eq!(cmd[0], verb, "{name}");
        let cfg = settings(&cmd);
        assert_eq!(
            cfg["queue"]["url"].as_str(),
            Some("redis://redis:6379/0"),
            "{name}"
        );
        assert_eq!(cfg["data_root"].as_str(), Some("/data"), "{name}");
        let volumes: Vec<String> = serde_json::from_value(s["volumes"].clone()).unwrap();
        assert!(
            volumes.iter().any(|v| v == "chatforge-data:/data"),
            "{name}: {volumes:?}"
        );
    }
    assert_eq!(settings(&serde_json::from_value::<Vec<String>>(services["api"]["command"].clone()).unwrap())["worker"]["count"].as_integer(), Some(0));

    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let json_line = |key: &str| -> Vec<String> {
        let line = dockerfile.lines().find(|l| l.starts_with(key)).unwrap();
        serde_json::from_str(line.trim_start_matches(key).trim()).unwrap()
    };
    assert_eq!(json_line("ENTRYPOINT"), ["chatforge"]);
    let cfg = settings(&json_line("CMD"));
    assert_eq!(cfg["data_root"].as_str(), Some("/data"));
    assert!(dockerfile.contains("cargo build --release --bin chatforge"));
    assert!(dockerfile.contains("COPY --from=build /src/target/release/chatforge /usr/local/bin/chatforge"));
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    assert!(
        ignore.lines().any(|l| l == "target/"),
        "the build context must not carry target/"
    );
}
