//! Parquet tables (written by pyarrow, as the Hub's datasets are) and zstd-compressed files:
//! every record shape detected column-wise, each compression codec, rows named in errors.

#![cfg(all(feature = "parquet", feature = "zstd"))]
#![allow(clippy::unwrap_used)] // tests: a failure should panic with its message

use std::path::Path;

use chatforge_data::{Container, DataFormat, ReadOptions, Role, read_file};

fn read(dir: &Path, name: &str) -> chatforge_data::FileRead {
    read_file(&dir.join(name), &ReadOptions::default()).unwrap()
}

#[test]
fn parquet_and_zstd_files_from_pyarrow() {
    let Some(py) = chatforge_testkit::python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    chatforge_testkit::run_reference(&py, "write_parquet.py", &[d.to_str().unwrap()]);

    for name in [
        "messages.parquet",
        "messages-zstd.parquet",
        "messages-gzip.parquet",
    ] {
        let r = read(d, name);
        assert_eq!(
            (r.detected.container.clone(), r.detected.format),
            (Container::Parquet, DataFormat::Messages),
            "{name}"
        );
        assert_eq!(r.conversations.len(), 2);
        let roles: Vec<Role> = r.conversations[0].messages.iter().map(|m| m.role).collect();
        assert_eq!(roles, [Role::System, Role::User, Role::Assistant]);
        assert_eq!(r.conversations[1].messages[1].content, "4, ünïcödé 🍵");
    }

    // Instruction columns across several row groups.
    let r = read(d, "alpaca.parquet");
    assert_eq!(r.detected.format, DataFormat::Instruction);
    assert_eq!(r.conversations.len(), 50);
    assert_eq!(r.conversations[37].messages[0].content, "What is 37 plus 37?");
    assert_eq!(r.conversations[37].messages[1].content, "It is 74.");

    // oasst1's own parquet layout: one message per row, trees by parent_id (a path ends on the
    // assistant's reply, as with oasst JSONL).
    let r = read(d, "oasst.parquet");
    assert_eq!(r.detected.format, DataFormat::Oasst);
    assert_eq!(r.conversations.len(), 1);
    let texts: Vec<&str> = r.conversations[0]
        .messages
        .iter()
        .map(|m| m.content.as_str())
        .collect();
    assert_eq!(texts, ["How do I boil water?", "Use a kettle."]);

    let r = read(d, "text.parquet");
    assert_eq!(r.detected.format, DataFormat::Documents);
    assert_eq!(r.conversations.len(), 2);

    // zstd-compressed JSONL, recognised by its magic bytes.
    let r = read(d, "chats.jsonl.zst");
    assert_eq!(
        (r.detected.container.clone(), r.conversations.len()),
        (Container::Jsonl, 3)
    );

    // A bad row is named by its number; a damaged file by its name.
    let err = read_file(&d.join("bad-row.parquet"), &ReadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("bad-row.parquet") && err.contains("row 2"), "{err}");
    let mut bytes = std::fs::read(d.join("alpaca.parquet")).unwrap();
    let n = bytes.len();
    bytes.truncate(n - 40);
    bytes.extend_from_slice(b"PAR1");
    std::fs::write(d.join("damaged.parquet"), &bytes).unwrap();
    let err = read_file(&d.join("damaged.parquet"), &ReadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("damaged.parquet") && err.contains("parquet"),
        "{err}"
    );
}
