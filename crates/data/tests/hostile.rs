//! Hostile or careless input files: directory symlink loops, pipes, zip bombs, deeply nested
//! YAML and bytes that are not UTF-8. Each is refused or skipped with a clear error, quickly.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failure should panic with its message

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chatforge_data::{ChatExportOptions, ReadOptions, collect_inputs, read_chat_export, read_file};

const CONV: &str =
    r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}"#;

#[test]
fn symlink_loops_are_walked_once_and_pipes_are_not_read() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("data");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("a.jsonl"), format!("{CONV}\n")).unwrap();
    std::fs::write(dir.join("sub/b.jsonl"), format!("{CONV}\n")).unwrap();
    std::os::unix::fs::symlink(&dir, dir.join("self")).unwrap();
    std::os::unix::fs::symlink(".", dir.join("sub/here")).unwrap();
    std::os::unix::fs::symlink(dir.join("nowhere"), dir.join("broken.jsonl")).unwrap();
    let fifo = dir.join("pipe.jsonl");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let t0 = Instant::now();
    let files = collect_inputs(std::slice::from_ref(&dir)).unwrap();
    assert_eq!(files, [dir.join("a.jsonl"), dir.join("sub/b.jsonl")]);
    assert!(t0.elapsed() < Duration::from_secs(5));
    // Named directly, a pipe is an error, not a read that never ends.
    let err = collect_inputs(std::slice::from_ref(&fifo))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a regular file"), "{err}");
    let err = read_file(&fifo, &ReadOptions::default()).unwrap_err().to_string();
    assert!(err.contains("not a regular file"), "{err}");
    let err = read_file(&dir, &ReadOptions::default()).unwrap_err().to_string();
    assert!(err.contains("is a directory"), "{err}");
}

fn zip_of(path: &PathBuf, entries: &[(&str, usize)]) {
    let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, size) in entries {
        z.start_file(*name, opts).unwrap();
        // A valid JSON document padded with spaces: compresses a thousandfold.
        z.write_all(b"[").unwrap();
        z.write_all(&vec![b' '; *size]).unwrap();
        z.write_all(b"]").unwrap();
    }
    z.finish().unwrap();
}

#[test]
fn zip_entries_are_capped_one_by_one_and_together() {
    let d = tempfile::tempdir().unwrap();
    let bomb = d.path().join("bomb.zip");
    zip_of(&bomb, &[("general.json", 3 << 20)]);
    assert!(std::fs::metadata(&bomb).unwrap().len() < 64 << 10);
    let opts = ChatExportOptions {
        max_entry_bytes: 1 << 20,
        ..ChatExportOptions::default()
    };
    let err = read_chat_export(&[bomb], &opts).unwrap_err().to_string();
    assert!(
        err.contains("bomb.zip!general.json") && err.contains("this entry expand beyond 1048576 bytes"),
        "{err}"
    );
    let many = d.path().join("many.zip");
    zip_of(&many, &[("a.json", 600 << 10), ("b.json", 600 << 10)]);
    let opts = ChatExportOptions {
        max_total_bytes: 1 << 20,
        ..ChatExportOptions::default()
    };
    let err = read_chat_export(&[many], &opts).unwrap_err().to_string();
    assert!(
        err.contains("the archive's entries together expand beyond 1048576"),
        "{err}"
    );
}

#[test]
fn deeply_nested_yaml_is_refused_before_parsing() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("deep.yaml");
    std::fs::write(&f, format!("conversations: {}", "[".repeat(200_000))).unwrap();
    let t0 = Instant::now();
    let err = read_file(&f, &ReadOptions::default()).unwrap_err().to_string();
    assert!(err.contains("nested 200000 levels deep"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    // Brackets inside quotes and comments are text, not nesting.
    let ok = d.path().join("ok.yaml");
    let inner = format!("{}{}", "[".repeat(100), "{".repeat(100));
    std::fs::write(
        &ok,
        format!("conversations:\n- - \"{inner}\"  # {inner}\n  - 'fine: [[['\n"),
    )
    .unwrap();
    assert_eq!(
        read_file(&ok, &ReadOptions::default())
            .unwrap()
            .conversations
            .len(),
        1
    );
}

#[test]
fn skip_invalid_skips_a_record_that_is_not_utf8() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("mixed.jsonl");
    let mut bytes = format!("{CONV}\n").into_bytes();
    bytes.extend_from_slice(b"{\"messages\": [{\"role\": \"user\", \"content\": \"caf\xE9\"}]}\n");
    bytes.extend_from_slice(format!("{CONV}\n").as_bytes());
    std::fs::write(&f, &bytes).unwrap();
    let err = read_file(&f, &ReadOptions::default()).unwrap_err().to_string();
    assert!(err.contains("not valid UTF-8 at line 2"), "{err}");
    let read = read_file(
        &f,
        &ReadOptions {
            skip_invalid: true,
            ..ReadOptions::default()
        },
    )
    .unwrap();
    assert_eq!(read.conversations.len(), 2);
    assert_eq!(read.invalid.len(), 1);
    assert!(
        read.invalid[0].to_string().contains("line 2: not valid UTF-8"),
        "{}",
        read.invalid[0]
    );
}
