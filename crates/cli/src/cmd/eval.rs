//! `chatforge eval`: loss, perplexity, bits per byte, BLEU, ROUGE and sample replies of a model;
//! `--compare` shows two runs' metrics side by side.

use std::path::{Path, PathBuf};

use chatforge_data::{Conversation, ReadOptions, read_file};
use chatforge_infer::eval::{
    DEFAULT_PROMPTS, EvalOptions, LossOn, Metrics, evaluate, read_metrics, read_prompts, write_metrics,
};
use chatforge_infer::{Checkpoint, LoadedModel, WeightType};
use clap::Args;

use super::{ConditionArgs, ModelArgs};

#[derive(Args)]
pub struct EvalArgs {
    /// A run directory, a Hugging Face folder (GPT-2 or Llama family) or Hub id (distilgpt2, org/name@revision)
    #[arg(long, required_unless_present = "compare")]
    pub model: Option<PathBuf>,
    /// For a run: best, latest, a step number, or a checkpoint folder
    #[arg(long, default_value = "best")]
    pub checkpoint: Checkpoint,
    /// Tokenizer to use instead of the one beside the model
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Precision of the decoder's weights: f32, bf16 or q8
    #[arg(long, default_value = "f32")]
    pub weights: WeightType,
    /// A LoRA adapter to apply: a PEFT folder, or the name of one in the run's adapters/
    #[arg(long)]
    pub adapter: Option<String>,
    /// Held-out conversations (any format `data import` reads)
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Test prompts to reply to (JSONL: a string, {"prompt": …} or {"messages": […]} per line)
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Tokens the loss is measured on [default: assistant for chat models, all for raw ones]
    #[arg(long)]
    pub loss_on: Option<String>,
    /// Conversations whose last reply is regenerated for BLEU/ROUGE
    #[arg(long, default_value_t = 64)]
    pub max_samples: usize,
    /// Most tokens per regenerated reply
    #[arg(long, default_value_t = 96)]
    pub max_new_tokens: usize,
    /// Conversations scored (and replies generated) per pass
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    #[command(flatten)]
    pub condition: ConditionArgs,
    /// Where metrics.json goes [default: eval/ in the model's directory]
    #[arg(short, long)]
    pub out: Option<PathBuf>,
    /// Show two runs' (or metrics files') results side by side instead
    #[arg(long, num_args = 2, value_names = ["A", "B"])]
    pub compare: Vec<PathBuf>,
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    if let [a, b] = args.compare.as_slice() {
        return compare(a, b);
    }
    let Some(model) = &args.model else {
        anyhow::bail!("--model is required");
    };
    let m = ModelArgs {
        model: model.clone(),
        checkpoint: args.checkpoint.clone(),
        tokenizer: args.tokenizer.clone(),
        weights: args.weights,
        adapter: args.adapter.clone(),
    }
    .load()?;
    let loss_on = match args.loss_on.as_deref() {
        None if m.chat => LossOn::Assistant,
        None => LossOn::All,
        Some("assistant") => LossOn::Assistant,
        Some("all") => LossOn::All,
        Some(o) => anyhow::bail!("--loss-on {o}: expected assistant or all"),
    };
    let data = match &args.data {
        Some(p) => read_file(p, &ReadOptions::default())?.conversations,
        None => Vec::new(),
    };
    let prompts = match &args.prompts {
        Some(p) => read_prompts(p)?,
        None if m.chat => DEFAULT_PROMPTS
            .iter()
            .map(|p| args.condition.conversation(p))
            .collect(),
        None => Vec::new(),
    };
    let opts = EvalOptions {
        render: args.condition.options(),
        loss_on,
        max_samples: args.max_samples,
        max_new_tokens: args.max_new_tokens,
        batch_size: args.batch_size,
        ..EvalOptions::default()
    };
    let out = args.out.clone().unwrap_or_else(|| m.eval_dir());
    run_eval(&m, &data, args.data.as_deref(), &prompts, &opts, &out)?;
    Ok(())
}

/// Evaluates, writes `out/metrics.json` and prints the table; shared with `train` and `pipeline`.
pub fn run_eval(
    m: &LoadedModel,
    data: &[Conversation],
    data_path: Option<&Path>,
    prompts: &[Conversation],
    opts: &EvalOptions,
    out: &Path,
) -> anyhow::Result<Metrics> {
    let name = data_path.map(|p| p.display().to_string());
    let metrics = evaluate(m, data, name.as_deref(), prompts, opts)?;
    let path = write_metrics(out, &metrics)?;
    print_metrics(&metrics);
    say!("metrics written to {} ({:.1} s)", path.display(), metrics.seconds);
    Ok(metrics)
}

fn rows(m: &Metrics) -> Vec<(&'static str, String)> {
    let f = |x: f64, p: usize| {
        if x.is_finite() {
            format!("{x:.p$}")
        } else {
            "-".into()
        }
    };
    let mut r = Vec::new();
    if m.tokens > 0 {
        let on = match m.loss_on {
            LossOn::Assistant => "assistant tokens",
            LossOn::All => "all tokens",
        };
        r.push(("conversations", m.conversations.to_string()));
        r.push(("scored tokens", format!("{} ({on})", m.tokens)));
        r.push(("loss (nats/token)", f(m.loss, 4)));
        r.push(("perplexity", f(m.perplexity, 2)));
        r.push(("bits per byte", f(m.bits_per_byte, 4)));
    }
    if let Some(b) = &m.bleu {
        r.push((
            "BLEU-4",
            format!("{} (BP {})", f(b.score, 2), f(b.brevity_penalty, 3)),
        ));
    }
    if let Some(g) = &m.rouge {
        r.push(("ROUGE-1 F1", f(g.rouge1.f1, 4)));
        r.push(("ROUGE-2 F1", f(g.rouge2.f1, 4)));
        r.push(("ROUGE-L F1", f(g.rouge_l.f1, 4)));
    }
    r
}

pub fn print_metrics(m: &Metrics) {
    for (k, v) in rows(m) {
        say!("  {k:<20} {v}");
    }
    for s in m.samples.iter().take(3) {
        say!(
            "  sample  user: {}\n          reference: {}\n          reply: {}",
            s.prompt,
            s.reference,
            s.reply
        );
    }
    for p in &m.prompts {
        say!("  user: {}\n  assistant: {}", p.prompt, p.reply);
    }
}

fn compare(a: &Path, b: &Path) -> anyhow::Result<()> {
    let (ma, mb) = (read_metrics(a)?, read_metrics(b)?);
    let (ra, rb) = (rows(&ma), rows(&mb));
    let (wa, wb) = (a.display().to_string(), b.display().to_string());
    say!("  {:<20} {:<28} {:<28}", "", wa, wb);
    let mut keys: Vec<&str> = ra.iter().map(|(k, _)| *k).collect();
    keys.extend(
        rb.iter()
            .map(|(k, _)| *k)
            .filter(|k| !ra.iter().any(|(x, _)| x == k)),
    );
    for k in keys {
        let get = |r: &[(&str, String)]| {
            r.iter()
                .find(|(x, _)| *x == k)
                .map_or("-".to_string(), |(_, v)| v.clone())
        };
        say!("  {k:<20} {:<28} {:<28}", get(&ra), get(&rb));
    }
    if ma.data != mb.data {
        say!(
            "  note: evaluated on different data ({:?} vs {:?})",
            ma.data,
            mb.data
        );
    }
    Ok(())
}
