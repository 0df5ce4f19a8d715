use std::path::PathBuf;
use std::time::Instant;

use chatforge_tokenizer::{ChatTokenizer, RenderOptions, TokenizerKind, tokenize_file};
use clap::Args;

use super::data::{ImportArgs, import_cmd};
use super::tokenizer::TrainArgs;

#[derive(Args)]
pub struct PipelineArgs {
    /// Conversation data to start from
    #[arg(long, default_value = "data/sample")]
    pub data: PathBuf,
    /// Where everything is written
    #[arg(short, long, default_value = "runs/pipeline")]
    pub out: PathBuf,
    /// A smaller, faster run for smoke tests
    #[arg(long)]
    pub quick: bool,
}

pub fn run(args: PipelineArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let data_dir = args.out.join("data");
    let train_jsonl = data_dir.join("train.jsonl");
    say!("── 1/3 import {} ──", args.data.display());
    import_cmd(&ImportArgs {
        inputs: vec![args.data.clone()],
        out: train_jsonl.clone(),
        val_out: None,
        val_split: 0.05,
        seed: 7,
        format: None,
        field_map: None,
        dedupe: true,
        min_turns: 2,
        max_chars: None,
        domain_tag: false,
        oasst_best_only: false,
        skip_invalid: false,
    })?;

    say!("\n── 2/3 tokenizer ──");
    let tok_dir = args.out.join("tokenizer");
    super::tokenizer::train(
        &TrainArgs {
            kind: TokenizerKind::Bpe,
            vocab_size: if args.quick { 1024 } else { 4096 },
            input: vec![train_jsonl.clone()],
            out: tok_dir.clone(),
            val: None,
            min_frequency: 2,
            seed: 7,
        },
        false,
    )?;

    say!("\n── 3/3 tokenize ──");
    let tok = ChatTokenizer::load(&tok_dir)?;
    for (name, jsonl) in [
        ("train", train_jsonl.clone()),
        ("val", data_dir.join("train.val.jsonl")),
    ] {
        let shard = data_dir.join(format!("{name}.bin"));
        let r = tokenize_file(&jsonl, &tok, &RenderOptions::default(), &shard)?;
        say!(
            "{}: {} conversations → {} tokens ({} carry loss)",
            shard.display(),
            r.conversations,
            r.tokens,
            r.loss_tokens
        );
    }

    say!(
        "\ndone in {:.1} s. Written under {}:\n  data/train.jsonl, data/train.val.jsonl   canonical conversations\n  tokenizer/                               tokenizer.json, manifest.json, stats.json\n  data/train.bin, data/val.bin             token shards (+ .json sidecars)",
        started.elapsed().as_secs_f64(),
        args.out.display()
    );
    say!("Model training is not part of chatforge yet: the pipeline stops after tokenization.");
    Ok(())
}
