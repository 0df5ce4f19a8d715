//! Personas end to end: a zipped chat export with consent → import → discovery and registry edits
//! → a tokenizer → the instruction strategy and two adapters trained → chat switching personas.

#![allow(clippy::unwrap_used)] // tests: a failure should panic with its message

mod common;

use std::path::Path;

use chatforge_testkit::{fixture, zip_dir};
use common::{CONFIG, fails, ok};

/// Every byte of every file under `dir`.
fn all_bytes(dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            all_bytes(&p, out);
        } else {
            out.push((p.display().to_string(), std::fs::read(&p).unwrap()));
        }
    }
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).unwrap().lines().count()
}

#[test]
fn personas_from_a_chat_export_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let export = d.join("in");
    std::fs::create_dir(&export).unwrap();
    zip_dir(
        &fixture("chat-export/export"),
        &export.join("export.zip"),
        "Forge Club",
    );
    let consent = fixture("chat-export/consent.json");
    let work = d.join("work");
    std::fs::create_dir(&work).unwrap();
    let w = work.as_path();

    // Import: the zip is read as a chat export; consent reported per rule.
    let out = ok(
        &[
            "data",
            "import",
            export.join("export.zip").to_str().unwrap(),
            "--format",
            "chat-export",
            "--consent",
            consent.to_str().unwrap(),
            "--val-split",
            "0.1",
            "-o",
            "chat.jsonl",
        ],
        w,
        None,
    );
    assert!(out.contains("3 channel files"), "{out}");
    assert!(
        out.contains("speakers: 3 kept, 1 anonymised, 1 excluded"),
        "{out}"
    );
    assert!(out.contains("24 anonymised, 24 excluded)"), "{out}");
    assert!(out.contains("24 replies to excluded users"), "{out}");
    // Privacy by default: without a consent decision every speaker is anonymised.
    // (In a folder of its own: keeping everyone keeps what the consent file removes.)
    let plain = d.join("plain");
    std::fs::create_dir(&plain).unwrap();
    let zip = export.join("export.zip");
    let zip = zip.to_str().unwrap();
    let out = ok(&["data", "import", zip, "-o", "anon.jsonl"], &plain, None);
    assert!(
        out.contains("speakers: 0 kept, 5 anonymised, 0 excluded"),
        "{out}"
    );
    assert!(out.contains("--consent-default allow"), "{out}");
    let out = ok(
        &[
            "data",
            "import",
            zip,
            "--consent-default",
            "allow",
            "-o",
            "all.jsonl",
        ],
        &plain,
        None,
    );
    assert!(
        out.contains("speakers: 5 kept, 0 anonymised, 0 excluded"),
        "{out}"
    );
    // Consent needs a chat export.
    let e = fails(
        &[
            "data",
            "import",
            fixture("formats/sharegpt.json").to_str().unwrap(),
            "--consent",
            consent.to_str().unwrap(),
            "-o",
            "x.jsonl",
        ],
        w,
    );
    assert!(e.contains("--format chat-export"), "{e}");

    // Discovery and registry edits.
    let out = ok(
        &["personas", "discover", "chat.jsonl", "--min-messages", "30"],
        w,
        None,
    );
    assert!(
        out.contains("Robert (1002)") && out.contains("Alice (1001)"),
        "{out}"
    );
    assert!(out.contains("2 added to personas.toml"), "{out}");
    assert!(!out.contains("Erin"), "Erin has too few messages: {out}");
    ok(&["personas", "rename", "1002", "Bob"], w, None);
    ok(&["personas", "add", "1005", "Erin", "rarely talks"], w, None);
    let out = ok(&["personas", "disable", "Erin"], w, None);
    assert!(out.contains("disabled"), "{out}");
    let e = fails(&["personas", "rename", "Alice", "bob"], w);
    assert!(e.contains("same once made a folder name"), "{e}");
    let list = ok(&["personas", "list"], w, None);
    assert!(
        list.contains("Bob") && !list.contains("Robert") && list.contains("3 personas"),
        "{list}"
    );
    // Seed 003's --update-names: `rename` alone asks for each name in turn (here on stdin); an
    // empty line keeps one, the end of input keeps the rest.
    let first = std::fs::read_to_string(w.join("personas.toml")).unwrap();
    let first_name = first
        .lines()
        .find_map(|l| l.strip_prefix("name = \""))
        .unwrap()
        .trim_end_matches('"')
        .to_string();
    let out = ok(&["personas", "rename"], w, Some("Zed\n"));
    assert!(
        out.contains("Zed") && !out.contains(&format!("{first_name} (")),
        "{out}"
    );
    ok(&["personas", "rename", "Zed", &first_name], w, None);
    let e = fails(&["personas", "rename", "Zed"], w);
    assert!(e.contains("NAME"), "{e}");
    // Discovery again keeps the edits.
    ok(
        &["personas", "discover", "chat.jsonl", "--min-messages", "30"],
        w,
        None,
    );
    let reg = std::fs::read_to_string(w.join("personas.toml")).unwrap();
    assert!(reg.contains("name = \"Bob\"") && !reg.contains("Robert"), "{reg}");

    // Augmentation changes the number of examples.
    ok(
        &[
            "personas",
            "examples",
            "chat.jsonl",
            "--strategy",
            "unified",
            "-o",
            "u.jsonl",
        ],
        w,
        None,
    );
    ok(
        &[
            "personas",
            "examples",
            "chat.jsonl",
            "--strategy",
            "unified",
            "--augment",
            "2",
            "-o",
            "u2.jsonl",
        ],
        w,
        None,
    );
    assert!(lines(&w.join("u2.jsonl")) > lines(&w.join("u.jsonl")));
    ok(
        &[
            "personas",
            "examples",
            "chat.jsonl",
            "--strategy",
            "adapters",
            "-o",
            "a.jsonl",
        ],
        w,
        None,
    );
    assert!(w.join("a.alice.jsonl").is_file() && w.join("a.bob.jsonl").is_file());
    assert!(
        !w.join("a.erin.jsonl").exists(),
        "a disabled persona has no examples"
    );

    ok(
        &[
            "tokenizer",
            "train",
            "--input",
            "chat.jsonl",
            "--vocab-size",
            "300",
            "-o",
            "tok",
        ],
        w,
        None,
    );
    std::fs::write(w.join("cfg.toml"), CONFIG).unwrap();
    let chat = |model: &str, script: &str| {
        ok(
            &[
                "chat",
                "--model",
                model,
                "--temperature",
                "0",
                "--max-new-tokens",
                "6",
            ],
            w,
            Some(script),
        )
    };
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "--config",
            "cfg.toml",
            "--data",
            "chat.jsonl",
            "--val",
            "chat.val.jsonl",
            "--tokenizer",
            "tok",
        ];
        args.extend_from_slice(extra);
        ok(&args, w, None)
    };

    // Instruction: one model, each example told whom to respond as, with the channel.
    let out = train(&[
        "--persona-strategy",
        "instruction",
        "--with-channel",
        "-o",
        "inst",
        "--max-steps",
        "20",
    ]);
    assert!(out.contains("instruction strategy"), "{out}");
    let examples = std::fs::read_to_string(w.join("inst/data/train.jsonl")).unwrap();
    assert!(examples.contains("| Respond as Alice:\"") && examples.contains("| Respond as Bob:\""));
    assert!(examples.contains("\"content\":\"Channel: garden | Respond as"));
    let out = chat(
        "inst",
        "/persona Alice
/channel garden
Hi!
",
    );
    assert!(
        out.contains("(persona: Alice)") && out.contains("(channel: garden)"),
        "{out}"
    );

    // Adapters: a shared base (the unified strategy), then one adapter per enabled persona.
    train(&[
        "--persona-strategy",
        "unified",
        "-o",
        "base",
        "--no-eval",
        "--max-steps",
        "20",
    ]);
    let e = fails(
        &[
            "train",
            "--config",
            "cfg.toml",
            "--data",
            "chat.jsonl",
            "--tokenizer",
            "tok",
            "--persona-strategy",
            "adapters",
            "-o",
            "ad",
        ],
        w,
    );
    assert!(e.contains("--init"), "{e}");
    let out = train(&[
        "--persona-strategy",
        "adapters",
        "--init",
        "base",
        "-o",
        "ad",
        "--max-steps",
        "10",
    ]);
    assert!(out.contains("2 adapters"), "{out}");
    for p in ["alice", "bob"] {
        assert!(
            w.join("ad/adapters")
                .join(p)
                .join("adapter_model.safetensors")
                .is_file()
        );
    }
    assert!(!w.join("ad/adapters/erin").exists());
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(w.join("ad/persona_run.json")).unwrap()).unwrap();
    assert_eq!(run["strategy"], "adapters");
    assert_eq!(run["personas"].as_array().unwrap().len(), 2);
    // In chat, /persona NAME switches to that persona's adapter (by name or folder name).
    let out = chat(
        "ad",
        "/persona Alice
Hi!
/persona bob
Hi!
/persona
Hi!
",
    );
    assert!(
        out.contains("(adapter: alice)") && out.contains("(adapter: bob)"),
        "{out}"
    );
    assert!(out.contains("(no adapter)"), "{out}");
    // Resuming skips the adapters already trained.
    let out = train(&[
        "--persona-strategy",
        "adapters",
        "--init",
        "base",
        "-o",
        "ad",
        "--max-steps",
        "10",
        "--resume",
    ]);
    assert_eq!(out.matches("adapter already trained").count(), 2, "{out}");

    // Nothing of the excluded user reached any file written, nor the anonymised user's name.
    let mut files = Vec::new();
    all_bytes(w, &mut files);
    assert!(files.len() > 20);
    for (path, bytes) in &files {
        let text = String::from_utf8_lossy(bytes);
        for gone in ["CAROL-SECRET", "Carol", "\"1003\"", "Dave", "\"1004\""] {
            assert!(!text.contains(gone), "{gone} in {path}");
        }
    }
}
