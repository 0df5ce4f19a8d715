//! `chatforge eval`: loss, perplexity, bits per byte, BLEU, ROUGE and sample replies of a model;
//! `--compare` shows two runs' metrics side by side.

use std::path::{Path, PathBuf};

use chatforge_data::{Conversation, ReadOptions, read_file};
use chatforge_infer::eval::{
    DEFAULT_PROMPTS, EvalOptions, LossOn, Metrics, evaluate, read_metrics, read_prompts, write_metrics,
};
use chatforge_infer::tasks::{TaskOptions, TaskResult, evaluate_task, read_results, read_task, write_result};
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
    /// A multiple-choice task (repeatable): JSONL/parquet documents with `query` (or `context`),
    /// `choices` and `gold`, or an lm-evaluation-harness task YAML; reports acc, acc_norm and
    /// centred accuracy into eval/tasks/
    #[arg(long)]
    pub task: Vec<PathBuf>,
    /// Tasks: few-shot examples before each document [default: the task's, else 0]
    #[arg(long)]
    pub num_fewshot: Option<usize>,
    /// Tasks: the documents few-shot examples come from, in order [default: the task's own]
    #[arg(long)]
    pub fewshot: Option<PathBuf>,
    /// Tasks: what goes between a context and its answer [default: the task's, else " "]
    #[arg(long)]
    pub delimiter: Option<String>,
    /// Tasks: score the first N documents only
    #[arg(long)]
    pub limit: Option<usize>,
    /// Where metrics.json (and tasks/) go [default: eval/ in the model's directory]
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
    if !args.task.is_empty() {
        run_tasks(&m, &args, &out)?;
        if args.data.is_none() && args.prompts.is_none() {
            return Ok(());
        }
    }
    run_eval(&m, &data, args.data.as_deref(), &prompts, &opts, &out)?;
    Ok(())
}

/// Scores every `--task`, prints its metrics and writes `out/tasks/<task>.json`.
fn run_tasks(m: &LoadedModel, args: &EvalArgs, out: &Path) -> anyhow::Result<()> {
    let opts = TaskOptions {
        num_fewshot: args.num_fewshot,
        fewshot: args.fewshot.clone(),
        delimiter: args.delimiter.clone(),
        limit: args.limit,
    };
    // Beside metrics.json, as a run's `eval/tasks/`.
    let dir = out.join(chatforge_run::TASKS_DIR);
    for path in &args.task {
        let task = read_task(path, &opts)?;
        let r = evaluate_task(m, &task, args.batch_size)?;
        let file = write_result(&dir, &r)?;
        say!(
            "{}: {} documents, {}-shot, {:.1} documents/s",
            r.task,
            r.docs,
            r.num_fewshot,
            r.docs_per_s
        );
        for (k, v) in task_rows(&r) {
            say!("  {k:<20} {v}");
        }
        say!("written to {}", file.display());
    }
    Ok(())
}

fn task_rows(r: &TaskResult) -> Vec<(String, String)> {
    let pm = |x: f64, e: f64| format!("{x:.4} ± {e:.4}");
    vec![
        ("acc".into(), pm(r.acc, r.acc_stderr)),
        ("acc_norm".into(), pm(r.acc_norm, r.acc_norm_stderr)),
        ("acc_bytes".into(), pm(r.acc_bytes, r.acc_bytes_stderr)),
        (
            "centered".into(),
            format!(
                "{} (random {:.4})",
                pm(r.centered, r.centered_stderr),
                r.random_baseline
            ),
        ),
    ]
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

/// The task results beside a run's, a folder's or a metrics file's metrics.
fn task_results(p: &Path) -> Vec<TaskResult> {
    let dirs = [
        chatforge_run::RunDir::new(p).task_results(),
        p.join(chatforge_run::TASKS_DIR),
        p.parent()
            .map(|d| d.join(chatforge_run::TASKS_DIR))
            .unwrap_or_default(),
    ];
    dirs.iter()
        .map(|d| read_results(d))
        .find(|r| !r.is_empty())
        .unwrap_or_default()
}

fn compare(a: &Path, b: &Path) -> anyhow::Result<()> {
    let (ta, tb) = (task_results(a), task_results(b));
    let (ma, mb) = match (read_metrics(a), read_metrics(b)) {
        (Ok(x), Ok(y)) => (Some(x), Some(y)),
        (Err(e), _) | (_, Err(e)) if ta.is_empty() && tb.is_empty() => return Err(e.into()),
        (x, y) => (x.ok(), y.ok()),
    };
    let task_rows_of = |ts: &[TaskResult]| -> Vec<(String, String)> {
        ts.iter()
            .flat_map(|t| {
                task_rows(t)
                    .into_iter()
                    .map(|(k, v)| (format!("{} {k}", t.task), v))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let owned =
        |r: Vec<(&'static str, String)>| r.into_iter().map(|(k, v)| (k.to_string(), v)).collect::<Vec<_>>();
    let mut ra = ma.as_ref().map(|m| owned(rows(m))).unwrap_or_default();
    let mut rb = mb.as_ref().map(|m| owned(rows(m))).unwrap_or_default();
    ra.extend(task_rows_of(&ta));
    rb.extend(task_rows_of(&tb));
    let (wa, wb) = (a.display().to_string(), b.display().to_string());
    say!("  {:<24} {:<28} {:<28}", "", wa, wb);
    let mut keys: Vec<&str> = ra.iter().map(|(k, _)| k.as_str()).collect();
    keys.extend(
        rb.iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| !ra.iter().any(|(x, _)| x == k)),
    );
    for k in keys {
        let get = |r: &[(String, String)]| {
            r.iter()
                .find(|(x, _)| x == k)
                .map_or("-".to_string(), |(_, v)| v.clone())
        };
        say!("  {k:<24} {:<28} {:<28}", get(&ra), get(&rb));
    }
    if let (Some(ma), Some(mb)) = (&ma, &mb)
        && ma.data != mb.data
    {
        say!(
            "  note: evaluated on different data ({:?} vs {:?})",
            ma.data,
            mb.data
        );
    }
    Ok(())
}
