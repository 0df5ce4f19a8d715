//! Training straight from the files people have: `chatforge train --data` takes any file `data
//! import` reads (here a CSV of instruction/response pairs, and a gzip-compressed JSONL), imports
//! and tokenizes it into the run, and makes the shard again only when the input or the tokenizer
//! changed.

#![allow(clippy::unwrap_used)] // tests: a failure should panic with its message

mod common;

use std::io::Write;

use common::ok;

const CONFIG: &str = "[model]\nvocab_size = 0\nn_ctx = 64\nn_layer = 1\nn_head = 2\nn_embd = 16\n\n[train]\nmode = \"sft\"\nmax_steps = 3\nbatch_size = 2\n";

#[test]
fn train_takes_csv_and_gzip_files_and_caches_their_shards() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut csv = String::from("instruction,output\n");
    for i in 0..40 {
        csv += &format!("\"What is {i} plus {i}?\",\"It is {}, of course.\"\n", 2 * i);
    }
    std::fs::write(d.join("pairs.csv"), &csv).unwrap();
    ok(&["data", "import", "pairs.csv", "-o", "pairs.jsonl"], d, None);
    ok(
        &[
            "tokenizer",
            "train",
            "--vocab-size",
            "300",
            "--input",
            "pairs.jsonl",
            "-o",
            "tok",
        ],
        d,
        None,
    );
    std::fs::write(d.join("cfg.toml"), CONFIG).unwrap();
    let train = |data: &str, out: &str| {
        ok(
            &[
                "train",
                "--config",
                "cfg.toml",
                "--data",
                data,
                "--tokenizer",
                "tok",
                "-o",
                out,
                "--no-eval",
            ],
            d,
            None,
        )
    };
    let out = train("pairs.csv", "run");
    assert!(out.contains("3 steps"), "{out}");
    let imported = std::fs::read_to_string(d.join("run/data/train.jsonl")).unwrap();
    assert_eq!(imported.lines().count(), 40);
    assert!(imported.contains("What is 7 plus 7?"));
    let shard = d.join("run/data/train.bin");
    let made = std::fs::metadata(&shard).unwrap().modified().unwrap();

    // The same input and tokenizer: the shard is kept. A changed input: it is made again.
    std::thread::sleep(std::time::Duration::from_millis(20));
    train("pairs.csv", "run");
    assert_eq!(std::fs::metadata(&shard).unwrap().modified().unwrap(), made);
    std::fs::write(d.join("pairs.csv"), csv.replace("of course", "surely")).unwrap();
    train("pairs.csv", "run");
    assert_ne!(std::fs::metadata(&shard).unwrap().modified().unwrap(), made);
    let again = std::fs::read_to_string(d.join("run/data/train.jsonl")).unwrap();
    assert!(again.contains("surely"));

    // Gzip-compressed conversations train the same way.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(std::fs::read_to_string(d.join("pairs.jsonl")).unwrap().as_bytes())
        .unwrap();
    std::fs::write(d.join("pairs.jsonl.gz"), gz.finish().unwrap()).unwrap();
    let out = train("pairs.jsonl.gz", "gz-run");
    assert!(out.contains("3 steps"), "{out}");
    assert!(d.join("gz-run/data/train.bin").is_file());
}
