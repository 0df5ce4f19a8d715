//! `bench tokenize`: `data tokenize` throughput on a corpus grown from the sample data, beside
//! Python `tokenizers`.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};
use chatforge_data::{ImportOptions, import, write_jsonl};
use chatforge_tokenizer::{ChatTokenizer, RenderOptions, TrainOptions, tokenize_file, train};

use crate::{TokenizeBench, json_of, median};

pub(crate) fn run(args: &TokenizeBench) -> anyhow::Result<()> {
    let base = import(std::slice::from_ref(&args.data), &ImportOptions::default())?.conversations;
    if base.is_empty() {
        bail!("{} holds no conversations", args.data.display());
    }
    let dir = tempfile::tempdir().context("creating a scratch directory")?;
    let tok_dir = dir.path().join("tokenizer");
    let tok = match &args.tokenizer {
        Some(p) => ChatTokenizer::load(p)?,
        None => {
            let texts = base
                .iter()
                .flat_map(|c| c.messages.iter().map(|m| m.content.as_str()));
            let t = train(
                texts,
                &TrainOptions {
                    vocab_size: 4096,
                    ..TrainOptions::default()
                },
            )?;
            std::fs::create_dir_all(&tok_dir)?;
            t.inner()
                .save(tok_dir.join("tokenizer.json"), false)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            t
        }
    };
    // Grow the corpus by repeating the base conversations up to the requested size.
    let per_copy = serde_json::to_string(&base)?.len() as u64;
    let copies = (args.mb * 1_000_000).div_ceil(per_copy.max(1)).max(1) as usize;
    let corpus: Vec<_> = std::iter::repeat_n(&base, copies).flatten().cloned().collect();
    let text_bytes: usize = corpus
        .iter()
        .flat_map(|c| c.messages.iter().map(|m| m.content.len()))
        .sum();
    let jsonl = dir.path().join("corpus.jsonl");
    write_jsonl(&jsonl, &corpus)?;
    let shard = dir.path().join("corpus.bin");
    let mut secs = Vec::new();
    let mut last = None;
    for _ in 0..args.repeats.max(1) {
        let r = tokenize_file(&jsonl, &tok, &RenderOptions::default(), &shard)?;
        secs.push(r.seconds);
        last = Some(r);
    }
    let r = last.context("no run")?;
    let s = median(secs);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    say!(
        "chatforge data tokenize: {} conversations, {:.1} MB JSONL ({:.1} MB message text) → {} tokens",
        r.conversations,
        r.input_bytes as f64 / 1e6,
        text_bytes as f64 / 1e6,
        r.tokens
    );
    say!(
        "  median of {}: {:.3} s = {:.1} MB/s of JSONL, {:.1} MB/s of text, {:.2} M tokens/s ({threads} threads, fast encoder {})",
        args.repeats.max(1),
        s,
        r.input_bytes as f64 / 1e6 / s,
        text_bytes as f64 / 1e6 / s,
        r.tokens as f64 / 1e6 / s,
        if tok.uses_fast_encoder() { "on" } else { "off" }
    );
    if let Some(py) = &args.reference_python {
        let tok_json = match &args.tokenizer {
            Some(p) if p.is_dir() => p.join("tokenizer.json"),
            Some(p) => p.clone(),
            None => tok_dir.join("tokenizer.json"),
        };
        let script = PathBuf::from("scripts/reference/bench_tokenize.py");
        let mut cmd = Command::new(py);
        cmd.arg(&script)
            .arg(&tok_json)
            .arg(&jsonl)
            .arg(args.repeats.max(1).to_string());
        let v = json_of(&mut cmd, &script.display().to_string())?;
        let ps = v["seconds"].as_f64().unwrap_or(f64::NAN);
        let pb = v["text_bytes"].as_f64().unwrap_or(f64::NAN);
        say!(
            "Python tokenizers encode_batch_fast (message texts only, no JSON, no template): {:.3} s = {:.1} MB/s of text, {:.2} M tokens/s",
            ps,
            pb / 1e6 / ps,
            v["tokens"].as_f64().unwrap_or(f64::NAN) / 1e6 / ps
        );
    }
    Ok(())
}
