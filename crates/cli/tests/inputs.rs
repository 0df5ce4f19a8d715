//! Training straight from the files people have: `chatforge train --data` takes any file `data
//! import` reads (here a CSV of instruction/response pairs, and a gzip-compressed JSONL), imports
//! and tokenizes it into the run, and makes the shard again only when the input or the tokenizer
//! changed.

#![allow(clippy::unwrap_used)] // tests: a failure should panic with its message

mod common;

use std::io::Write;

use common::{ok, train_tokenizer};

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
    train_tokenizer(d, "pairs.jsonl");
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

/// A plain-text corpus: imported as documents, a tokenizer trained on them, and pre-training
/// straight from the `.txt` file, each paragraph a document closed by the end-of-text token.
#[test]
fn pretraining_on_a_plain_text_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let corpus: String = (0..60)
        .map(|i| format!("Paragraph {i} of the story: the fox ran {i} miles\nand rested.\n\n"))
        .collect();
    std::fs::write(d.join("story.txt"), &corpus).unwrap();
    let out = ok(&["data", "import", "story.txt", "-o", "story.jsonl"], d, None);
    assert!(out.contains("documents"), "{out}");
    // The tokenizer trains on the corpus itself.
    train_tokenizer(d, "story.txt");
    std::fs::write(d.join("cfg.toml"), CONFIG.replace("\"sft\"", "\"pretrain\"")).unwrap();
    let out = ok(
        &[
            "train",
            "--config",
            "cfg.toml",
            "--data",
            "story.txt",
            "--tokenizer",
            "tok",
            "-o",
            "run",
            "--no-eval",
        ],
        d,
        None,
    );
    assert!(out.contains("3 steps"), "{out}");
    let side: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("run/data/train.bin.json")).unwrap()).unwrap();
    assert_eq!(side["conversations"], 60, "{side}");
    // Every token is learnt and each document ends with the end-of-text token.
    let tok = chatforge_tokenizer::ChatTokenizer::load(&d.join("tok")).unwrap();
    let eot = tok.end_of_text().unwrap();
    let shard = chatforge_data::Shard::open(&d.join("run/data/train.bin")).unwrap();
    let mut ids = Vec::new();
    shard.ids_into(shard.doc(0), &mut ids);
    assert_eq!(*ids.last().unwrap(), eot);
    assert!(shard.mask(shard.doc(0)).iter().all(|&m| m == 1));
}
