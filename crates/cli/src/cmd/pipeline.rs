use std::path::PathBuf;
use std::time::Instant;

use chatforge_data::Shard;
use chatforge_run::RunDir;
use chatforge_tokenizer::{ChatTokenizer, RenderOptions, TokenizerKind, tokenize_file};
use chatforge_train::{Mode, TrainConfig, unigram_baseline};
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
    let run = RunDir::new(&args.out);
    let data_dir = run.data();
    let train_jsonl = data_dir.join("train.jsonl");
    say!("── 1/5 import {} ──", args.data.display());
    import_cmd(&ImportArgs {
        inputs: vec![args.data.clone()],
        split: "train".into(),
        revision: None,
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
        chat: Default::default(),
    })?;

    say!("\n── 2/5 tokenizer ──");
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

    say!("\n── 3/5 tokenize ──");
    let tok = ChatTokenizer::load(&tok_dir)?;
    for (shard, jsonl) in [
        (run.train_shard(), train_jsonl.clone()),
        (run.val_shard(), data_dir.join("train.val.jsonl")),
    ] {
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
        "\n── 4/5 train ({}) ──",
        if args.quick {
            "configs/tiny.toml"
        } else {
            "configs/small.toml"
        }
    );
    let mut cfg: TrainConfig = toml::from_str(if args.quick { TINY } else { SMALL })?;
    cfg.train.data = Some(run.train_shard());
    cfg.train.val = Some(run.val_shard());
    // A fresh run: earlier checkpoints of this directory would otherwise be resumed or pruned against.
    for p in [run.checkpoints(), run.best()] {
        if p.exists() {
            std::fs::remove_dir_all(&p)?;
        }
    }
    let _ = std::fs::remove_file(run.logs());
    let summary = super::train::run_training(&cfg, &args.out, false, Some(&tok_dir), false)?.summary;

    say!("\n── 5/5 evaluate ──");
    let train_shard = Shard::open(&run.train_shard())?;
    let val_shard = Shard::open(&run.val_shard())?;
    let baseline = unigram_baseline(&train_shard, &val_shard, Mode::Sft);
    let best = summary.best_val_loss.unwrap_or(f64::NAN);
    say!(
        "validation loss on assistant tokens: {best:.3} (perplexity {:.1}); unigram baseline {baseline:.3} (perplexity {:.1})",
        best.exp(),
        baseline.exp()
    );
    let metrics = chatforge_pipeline::evaluate_run(&cfg, &args.out)?;
    super::train::report_metrics(&args.out, &metrics);

    say!(
        "\ndone in {:.1} s. Written under {}:\n  data/train.jsonl, data/train.val.jsonl   canonical conversations\n  tokenizer/                               tokenizer.json, manifest.json, stats.json\n  data/train.bin, data/val.bin             token shards (+ .json sidecars)\n  best/, checkpoints/                      model weights (HF GPT-2 layout), optimizer state\n  manifest.json, config.json, logs.jsonl   what produced the run, the model config, per-step events",
        started.elapsed().as_secs_f64(),
        args.out.display()
    );
    Ok(())
}

const TINY: &str = include_str!("../../../../configs/tiny.toml");
const SMALL: &str = include_str!("../../../../configs/small.toml");
