use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use chatforge_pipeline::{Outcome, Resume, TrainJob, train_run};
use chatforge_run::RunDir;
use chatforge_train::{Event, Mode, TrainConfig};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Args)]
pub struct TrainArgs {
    /// Config file: TOML, JSON or YAML with [model], [train] and [lora] sections, or flat keys (see configs/, docs/config.md)
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Training shard (from `chatforge data tokenize`), or any file `data import` reads
    /// (conversations, CSV, ShareGPT, gzip…), imported and tokenized into the run with --tokenizer
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Validation shard, or a file to import and tokenize as --data
    #[arg(long)]
    pub val: Option<PathBuf>,
    /// The run directory
    #[arg(short, long)]
    pub out: PathBuf,
    /// Threads for the matrix products [default: every core; under MPI, the cores ÷ the processes on this machine]
    #[arg(long)]
    pub threads: Option<usize>,
    /// pretrain (loss on every token), sft (on the assistant's turns), lora or qlora; dpo or orpo (preference pairs) [default: the config's, else sft]
    #[arg(long, value_parser = super::parse::<Mode>)]
    pub mode: Option<Mode>,
    /// Start from an HF folder (GPT-2 or Llama family), a Hub id (distilgpt2, org/name@revision) or an earlier run
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Optimizer steps to train for
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Passes over the training data (instead of --max-steps)
    #[arg(long)]
    pub epochs: Option<f64>,
    /// Peak learning rate
    #[arg(long)]
    pub lr: Option<f64>,
    /// Sequences per optimizer step
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Seed of initialisation, batching and dropout
    #[arg(long)]
    pub seed: Option<u64>,
    /// Continue from the newest checkpoint in the run directory
    #[arg(long)]
    pub resume: bool,
    /// The tokenizer (tokenizer.json, its folder, or a Hub id): copied into the run, and the one
    /// inputs are tokenized with
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Skip the evaluation of the best checkpoint after training
    #[arg(long)]
    pub no_eval: bool,
    /// Preference modes (dpo, orpo): train a LoRA or QLoRA adapter (`--lora-*`) instead of the whole model
    #[arg(long, value_parser = super::parse::<chatforge_train::Adapter>)]
    pub adapter: Option<chatforge_train::Adapter>,
    /// DPO's β (how far from the reference the model may move), ORPO's λ [default: 0.1]
    #[arg(long)]
    pub beta: Option<f64>,
    /// DPO: the share of pairs taken as mislabelled (conservative DPO), in [0, 0.5) [default: 0]
    #[arg(long)]
    pub label_smoothing: Option<f64>,
    /// LoRA rank (`--mode lora`)
    #[arg(long)]
    pub lora_rank: Option<usize>,
    /// LoRA alpha: the update is scaled by alpha / rank
    #[arg(long)]
    pub lora_alpha: Option<f64>,
    /// Dropout on the adapters' input
    #[arg(long)]
    pub lora_dropout: Option<f32>,
    /// Layers to adapt (comma-separated): GPT-2's c_attn, c_proj, c_fc; the Llama family's q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj (GPT-2's names work there too); all-linear
    #[arg(long, value_delimiter = ',')]
    pub lora_targets: Option<Vec<String>>,
    /// QLoRA: keep the frozen base's linear layers in q4 or q8 (`--mode qlora`; default q4)
    #[arg(long)]
    pub quant: Option<chatforge_model::quant::QuantKind>,
    /// Also write the best adapter to adapters/NAME/ in the run (one adapter per persona)
    #[arg(long)]
    pub adapter_name: Option<String>,
    /// Recompute block activations in backward instead of storing them: less memory for long
    /// contexts, about a third more compute per step
    #[arg(long)]
    pub grad_checkpoint: bool,
    /// The weight products' inputs: f32; bf16 (AVX-512 BF16's `vdpbf16ps`, about twice the
    /// multiply-adds; weights, gradients and optimizer state stay f32; refused on a CPU without
    /// it); auto (bf16 where the CPU has it) [default: the config's, else f32]
    #[arg(long, value_parser = super::parse::<chatforge_model::PrecisionSetting>)]
    pub precision: Option<chatforge_model::PrecisionSetting>,
    /// Train personas from chat conversations (`--data` is the JSONL of `data import --format
    /// chat-export`): unified (one voice), instruction ("Respond as NAME:"), or adapters (one LoRA
    /// adapter per persona, on --init)
    #[arg(long, value_parser = super::parse::<chatforge_data::personas::Strategy>)]
    pub persona_strategy: Option<chatforge_data::personas::Strategy>,
    /// The persona registry (`chatforge personas discover`)
    #[arg(long, default_value = "personas.toml")]
    pub personas: PathBuf,
    #[command(flatten)]
    pub examples: super::personas::ExampleArgs,
}

impl TrainArgs {
    pub fn config(&self) -> anyhow::Result<TrainConfig> {
        let mut cfg = match &self.config {
            Some(p) => TrainConfig::from_file(p)?,
            // The one table of defaults, the service's too.
            None => TrainConfig::default(),
        };
        let t = &mut cfg.train;
        t.data = self.data.clone().or(t.data.take());
        t.val = self.val.clone().or(t.val.take());
        t.init = self.init.clone().or(t.init.take());
        // A Hub id is fetched now; the run records the snapshot it trained from.
        t.init = t.init.take().map(|i| super::hub::model(&i)).transpose()?;
        if let Some(m) = self.mode {
            t.mode = m;
        }
        if self.adapter_name.is_some() {
            t.adapter_name = self.adapter_name.clone();
        }
        t.adapter = self.adapter.or(t.adapter);
        t.beta = self.beta.unwrap_or(t.beta);
        t.label_smoothing = self.label_smoothing.unwrap_or(t.label_smoothing);
        t.grad_checkpoint |= self.grad_checkpoint;
        t.precision = self.precision.unwrap_or(t.precision);
        let l = &mut cfg.lora;
        if let Some(r) = self.lora_rank {
            l.rank = r;
        }
        if let Some(a) = self.lora_alpha {
            l.alpha = a;
        }
        if let Some(d) = self.lora_dropout {
            l.dropout = d;
        }
        if let Some(ts) = &self.lora_targets {
            l.targets = ts.clone();
        }
        if self.quant.is_some() {
            l.quant = self.quant;
        }
        let t = &mut cfg.train;
        if let Some(s) = self.max_steps {
            t.max_steps = Some(s);
        }
        if let Some(e) = self.epochs {
            t.epochs = Some(e);
            if self.max_steps.is_none() {
                t.max_steps = None;
            }
        }
        t.lr = self.lr.unwrap_or(t.lr);
        t.batch_size = self.batch_size.unwrap_or(t.batch_size);
        t.seed = self.seed.unwrap_or(t.seed);
        Ok(cfg)
    }
}

/// Shows progress: a bar on a terminal, otherwise a line every tenth of the run.
pub fn reporter() -> impl FnMut(&Event) {
    let tty = std::io::stderr().is_terminal();
    let mut bar: Option<ProgressBar> = None;
    let mut total = 0u64;
    move |e: &Event| match e {
        Event::Start {
            steps,
            start_step,
            params,
            total_params,
            resumed_from,
            ..
        } => {
            crate::purge_freed_memory(false);
            total = *steps;
            if params != total_params {
                say!(
                    "trainable params: {params} || all params: {total_params} || trainable%: {:.4}",
                    100.0 * *params as f64 / *total_params as f64
                );
            }
            say!(
                "training {params} parameters for {steps} steps{}",
                match resumed_from {
                    Some(d) => format!(", resuming from {} (step {start_step})", d.display()),
                    None => String::new(),
                }
            );
            if tty {
                let b = ProgressBar::new(*steps).with_position(*start_step);
                b.set_style(
                    ProgressStyle::with_template(
                        "{bar:30} {pos}/{len} {msg} [{elapsed_precise}<{eta_precise}]",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                bar = Some(b);
            }
        }
        Event::Step {
            step,
            loss,
            lr,
            tokens_per_s,
            metrics,
            ..
        } => {
            let rewards = metrics.map_or(String::new(), |m| {
                format!(
                    " reward acc {:.2} margin {:.3}",
                    m.rewards_accuracies, m.rewards_margins
                )
            });
            match &bar {
                Some(b) => {
                    b.set_position(*step);
                    b.set_message(format!(
                        "loss {loss:.4}{rewards} lr {lr:.2e} {tokens_per_s:.0} tok/s"
                    ));
                }
                None if total > 0 && (step % (total / 10).max(1) == 0 || *step == total) => {
                    say!(
                        "step {step}/{total}  loss {loss:.4}{rewards}  lr {lr:.2e}  {tokens_per_s:.0} tokens/s"
                    );
                }
                None => {}
            }
        }
        Event::Eval {
            step,
            val_loss,
            best_val_loss,
            metrics,
            ..
        } => {
            let rewards = metrics.map_or(String::new(), |m| {
                format!(
                    ", reward accuracy {:.2}, margin {:.3}",
                    m.rewards_accuracies, m.rewards_margins
                )
            });
            let line =
                format!("step {step}: validation loss {val_loss:.4} (best {best_val_loss:.4}){rewards}");
            match &bar {
                Some(b) => b.println(line),
                None => say!("{line}"),
            }
        }
        Event::Warning { message, .. } => eprintln!("warning: {message}"),
        Event::Stopped { reason, .. } => say!("stopped: {reason}"),
        Event::Checkpoint { .. } => {}
    }
}

/// prepare → train → evaluate (when `evaluate`) through the pipeline every run takes (the
/// service's too), with progress shown and the outcome printed. A failed evaluation is a warning:
/// the run is done and saved.
pub fn run_training(
    cfg: &TrainConfig,
    out: &Path,
    resume: bool,
    tokenizer: Option<&Path>,
    evaluate: bool,
) -> anyhow::Result<Outcome> {
    let job = TrainJob {
        config: cfg.clone(),
        tokenizer: tokenizer.map(Path::to_path_buf),
    };
    let resume = if resume { Resume::Yes } else { Resume::No };
    let mut report = reporter();
    // Loading hands back what it frees (the file, the copies weights pass through); the reporter
    // turns purging off again when training starts.
    crate::purge_freed_memory(true);
    let outcome = train_run(&job, out, resume, evaluate, &mut report, &AtomicBool::new(false));
    crate::purge_freed_memory(false);
    let outcome = outcome?;
    print_summary(&outcome.summary, out);
    if let Some(m) = &outcome.metrics {
        say!("\nevaluation of the best checkpoint:");
        report_metrics(out, m);
    }
    if let Some(e) = &outcome.eval_error {
        eprintln!(
            "warning: no evaluation: {e} (run `chatforge eval --model {}` later)",
            out.display()
        );
    }
    if evaluate
        && cfg.train.mode.pairs()
        && let Err(e) = preference_samples(cfg, out)
    {
        eprintln!("warning: no sample replies: {e:#}");
    }
    Ok(outcome)
}

/// The line that ends a run: steps, time, losses, where it is.
pub fn print_summary(summary: &chatforge_train::TrainSummary, out: &Path) {
    say!(
        "{} steps in {:.1} s; last training loss {}, best validation loss {}; run in {}",
        summary.steps,
        summary.seconds,
        summary.last_loss.map_or("-".into(), |l| format!("{l:.4}")),
        summary.best_val_loss.map_or("-".into(), |l| format!("{l:.4}")),
        out.display()
    );
}

/// After preference tuning: the starting model's and the tuned model's greedy replies to the
/// first validation prompts (or the default prompts), side by side.
fn preference_samples(cfg: &TrainConfig, out: &Path) -> anyhow::Result<()> {
    use chatforge_infer::eval::{EvalOptions, default_prompts, evaluate};
    use chatforge_infer::{Checkpoint, LoadedModel, WeightType};
    let Some(init) = &cfg.train.init else {
        return Ok(());
    };
    let mut prompts: Vec<chatforge_data::Conversation> = match &cfg.train.val {
        Some(val) if !chatforge_data::Shard::is_shard(val) => {
            chatforge_data::import(std::slice::from_ref(val), &Default::default())?
                .conversations
                .into_iter()
                .filter(|c| c.is_pair())
                .map(|c| chatforge_data::Conversation::new(c.messages))
                .take(3)
                .collect()
        }
        _ => Vec::new(),
    };
    if prompts.is_empty() {
        prompts = default_prompts().into_iter().take(3).collect();
    }
    let opts = EvalOptions {
        max_new_tokens: 48,
        ..EvalOptions::default()
    };
    let replies = |model: &Path| -> anyhow::Result<Vec<String>> {
        let m = LoadedModel::open(model, &Checkpoint::Best, None, WeightType::F32)?;
        Ok(evaluate(&m, &[], None, &prompts, &opts)?
            .prompts
            .into_iter()
            .map(|p| p.reply.trim().replace('\n', " "))
            .collect())
    };
    let (before, after) = (replies(init)?, replies(out)?);
    say!("\nsample replies (greedy), before → after preference tuning:");
    for ((p, b), a) in prompts.iter().zip(&before).zip(&after) {
        let last = p.messages.last().map_or("", |m| m.content.as_str());
        say!("  user: {last}\n    before: {b}\n    after:  {a}");
    }
    Ok(())
}

/// Prints a run's evaluation and where it was written.
pub fn report_metrics(run: &Path, m: &chatforge_infer::eval::Metrics) {
    super::eval::print_metrics(m);
    say!(
        "metrics written to {} ({:.1} s)",
        RunDir::new(run).metrics().display(),
        m.seconds
    );
}

pub fn run(mut args: TrainArgs) -> anyhow::Result<()> {
    if let Some(n) = args.threads {
        set_threads(n)?;
    }
    let launched = chatforge_mpi::launched_size();
    if let Some(n) = launched.filter(|_| !chatforge_mpi::ENABLED) {
        anyhow::bail!(chatforge_mpi::refusal(n));
    }
    args.tokenizer = args.tokenizer.map(|t| super::hub::tokenizer(&t)).transpose()?;
    let cfg = args.config()?;
    #[cfg(feature = "mpi")]
    if launched.is_some() {
        return super::dist::run(&args, &cfg);
    }
    if let Some(strategy) = args.persona_strategy {
        return super::personas::train(cfg, strategy, &args.out, &args);
    }
    if args.examples.with_channel || args.examples.augment > 0 {
        anyhow::bail!("--with-channel and --augment shape persona examples: add --persona-strategy");
    }
    run_training(
        &cfg,
        &args.out,
        args.resume,
        args.tokenizer.as_deref(),
        !args.no_eval,
    )?;
    Ok(())
}

/// The matrix products' thread count, before anything starts them.
pub fn set_threads(n: usize) -> anyhow::Result<()> {
    anyhow::ensure!(n > 0, "--threads must be at least 1");
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .map_err(|e| anyhow::anyhow!("--threads {n}: {e}"))
}
