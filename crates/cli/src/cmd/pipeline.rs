use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use chatforge_data::Shard;
use chatforge_export::Format;
use chatforge_infer::{Checkpoint, WeightType};
use chatforge_run::RunDir;
use chatforge_tokenizer::{ChatTokenizer, RenderOptions, TokenizerKind, tokenize_file};
use chatforge_train::{Mode, TrainConfig, unigram_baseline};
use clap::Args;

use super::data::{ImportArgs, import_cmd};
use super::tokenizer::TrainArgs;

#[derive(Args)]
pub struct PipelineArgs {
    /// Conversation data to start from: any file or folder `data import` reads, or hf://datasets/ORG/NAME
    #[arg(long, default_value = "data/sample")]
    pub data: PathBuf,
    /// Where everything is written
    #[arg(short, long, default_value = "runs/pipeline")]
    pub out: PathBuf,
    /// A smaller, faster run for smoke tests (the bundled tiny config instead of small)
    #[arg(long)]
    pub quick: bool,
    /// A config file (TOML, JSON or YAML; docs/config.md) instead of the bundled one
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Fine-tune this model (an HF folder, a run, or a Hub id such as distilgpt2) instead of
    /// training one from scratch; its tokenizer is used
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Use this tokenizer (tokenizer.json, its folder, or a Hub id) instead of training one; without
    /// it, a tokenizer already in OUT/tokenizer is reused, and one is trained only if none exists
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Passes over the training data (instead of the config's max_steps)
    #[arg(long)]
    pub epochs: Option<f64>,
    /// Optimizer steps
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Sequences per step
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Peak learning rate
    #[arg(long)]
    pub lr: Option<f64>,
    /// Seed of the data split, the tokenizer and training
    #[arg(long)]
    pub seed: Option<u64>,
    /// At the end, export the best checkpoint (hf, onnx or gguf) to OUT/export, verify it, and answer
    /// the sample prompts through the exported model
    #[arg(long, value_parser = super::parse::<Format>)]
    pub export: Option<Format>,
}

pub fn run(args: PipelineArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let run = RunDir::new(&args.out);
    let data_dir = run.data();
    let train_jsonl = data_dir.join("train.jsonl");
    let seed = args.seed.unwrap_or(7);
    say!("── 1/5 import {} ──", args.data.display());
    import_cmd(&ImportArgs {
        inputs: vec![args.data.clone()],
        split: "train".into(),
        revision: None,
        out: train_jsonl.clone(),
        val_out: None,
        val_split: 0.05,
        seed,
        format: None,
        field_map: None,
        dedupe: true,
        min_turns: 2,
        max_chars: None,
        domain_tag: false,
        oasst_best_only: false,
        pairs_from_ranks: false,
        skip_invalid: false,
        chat: Default::default(),
    })?;

    say!("\n── 2/5 tokenizer ──");
    let init = args.init.as_deref().map(super::hub::model).transpose()?;
    let tok_path = tokenizer_for(&args, init.as_deref(), &train_jsonl, seed)?;

    say!("\n── 3/5 tokenize ──");
    let tok = ChatTokenizer::load(&tok_path)?;
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

    let cfg = train_config(&args, init, &run)?;
    say!(
        "\n── 4/5 train ({}) ──",
        match (&cfg.train.init, &args.config) {
            (Some(i), _) => format!("fine-tuning {}", i.display()),
            (None, Some(c)) => c.display().to_string(),
            (None, None) if args.quick => "configs/tiny.toml".into(),
            (None, None) => "configs/small.toml".into(),
        }
    );
    // A fresh run: earlier checkpoints of this directory would otherwise be resumed or pruned against.
    for p in [run.checkpoints(), run.best()] {
        if p.exists() {
            std::fs::remove_dir_all(&p)?;
        }
    }
    let _ = std::fs::remove_file(run.logs());
    let summary = super::train::run_training(&cfg, &args.out, false, Some(&tok_path), false)?.summary;

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
    if let Some(format) = args.export {
        export_and_check(&args.out, format, &metrics)?;
    }

    say!(
        "\ndone in {:.1} s. Written under {}:\n  data/train.jsonl, data/train.val.jsonl   canonical conversations\n  tokenizer/ (or tokenizer.json)           the tokenizer\n  data/train.bin, data/val.bin             token shards (+ .json sidecars)\n  best/, checkpoints/                      model weights (HF GPT-2 layout), optimizer state\n  manifest.json, config.json, logs.jsonl   what produced the run, the model config, per-step events{}",
        started.elapsed().as_secs_f64(),
        args.out.display(),
        if args.export.is_some() {
            "\n  export/                                  the exported model"
        } else {
            ""
        }
    );
    Ok(())
}

/// The tokenizer the pipeline uses: `--tokenizer`; else the `--init` model's; else one already in
/// OUT/tokenizer (seed 000's "train only if none exists"); else a new one trained on the data.
fn tokenizer_for(
    args: &PipelineArgs,
    init: Option<&Path>,
    data: &Path,
    seed: u64,
) -> anyhow::Result<PathBuf> {
    if let Some(t) = &args.tokenizer {
        let t = super::hub::tokenizer(t)?;
        say!("using the tokenizer {}", t.display());
        return Ok(t);
    }
    if let Some(init) = init {
        let t = chatforge_run::model_tokenizer(init).with_context(|| {
            format!(
                "--init {}: no tokenizer beside the model; give --tokenizer",
                init.display()
            )
        })?;
        say!("using the model's tokenizer {}", t.display());
        return Ok(t);
    }
    let dir = args.out.join("tokenizer");
    if dir.join(chatforge_run::TOKENIZER_FILE).is_file() {
        say!(
            "reusing the tokenizer in {} (delete it to train a new one)",
            dir.display()
        );
        return Ok(dir);
    }
    super::tokenizer::train(
        &TrainArgs {
            kind: TokenizerKind::Bpe,
            vocab_size: if args.quick { 1024 } else { 4096 },
            input: vec![data.to_path_buf()],
            out: dir.clone(),
            val: None,
            min_frequency: 2,
            seed,
        },
        false,
    )?;
    Ok(dir)
}

/// The run's config: the config file (or the bundled one) with the flags over it.
fn train_config(args: &PipelineArgs, init: Option<PathBuf>, run: &RunDir) -> anyhow::Result<TrainConfig> {
    let mut cfg = match &args.config {
        Some(p) => TrainConfig::from_file(p)?,
        None => toml::from_str(
            chatforge_pipeline::presets::preset(if args.quick { "tiny" } else { "small" })
                .context("the bundled presets")?,
        )?,
    };
    let t = &mut cfg.train;
    t.data = Some(run.train_shard());
    t.val = Some(run.val_shard());
    if init.is_some() {
        t.init = init;
        t.mode = Mode::Sft;
    }
    if let Some(e) = args.epochs {
        t.epochs = Some(e);
        if args.max_steps.is_none() {
            t.max_steps = None;
        }
    }
    if let Some(s) = args.max_steps {
        t.max_steps = Some(s);
    }
    t.batch_size = args.batch_size.unwrap_or(t.batch_size);
    t.lr = args.lr.unwrap_or(t.lr);
    t.seed = args.seed.unwrap_or(t.seed);
    Ok(cfg)
}

/// Exports the run's best checkpoint to OUT/export, verifies the files, and answers the sample
/// prompts through the export (an ONNX graph's weights read back into the decoder), which must give
/// the run's own greedy replies.
fn export_and_check(
    out: &Path,
    format: Format,
    metrics: &chatforge_infer::eval::Metrics,
) -> anyhow::Result<()> {
    say!("\n── export ({format:?}) ──");
    let dir = out.join("export");
    super::export::write(&super::export::WriteArgs::new(
        out.to_path_buf(),
        format,
        dir.clone(),
    ))?;
    if format == Format::Onnx {
        let s = chatforge_export::onnx::verify(&dir)?;
        say!(
            "verified: opset {}, {} layers with KV cache, {} nodes, {} initializers",
            s.opset,
            s.layers,
            s.nodes,
            s.initializers
        );
        say!("{}", super::export::run_graph(&dir)?);
    }
    let m = chatforge_infer::LoadedModel::open(&dir, &Checkpoint::Best, None, WeightType::F32)?;
    let prompts = chatforge_infer::eval::default_prompts();
    let opts = chatforge_infer::eval::EvalOptions::default();
    let replies = chatforge_infer::eval::evaluate(&m, &[], None, &prompts, &opts)?.prompts;
    let mut same = 0;
    for (exported, own) in replies.iter().zip(&metrics.prompts) {
        say!("  {} → {}", exported.prompt, exported.reply.trim());
        same += usize::from(exported.reply == own.reply);
    }
    say!(
        "the export answers {same} of {} prompts as the run does",
        replies.len()
    );
    if same != replies.len() {
        anyhow::bail!(
            "the exported model's replies differ from the run's: the export is not the model that was trained"
        );
    }
    Ok(())
}
