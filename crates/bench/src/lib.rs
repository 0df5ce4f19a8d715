//! `chatforge bench`: throughput measured the way a user runs chatforge, beside the Python
//! reference on the same input in the same run. Each bench is a module; this one holds the
//! commands, the `all` driver, the sgemm peak and what they share (timing, memory, child
//! processes). The binary only parses the command line and hands over.

macro_rules! say {
    ($($arg:tt)*) => {
        println!($($arg)*)
    };
}

mod chat_serve;
mod eval;
mod finetune;
mod generate;
mod gguf;
mod serve;
mod tokenize;
mod train;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};
use chatforge_model::kernels::Precision;
use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub enum BenchCommand {
    /// `data tokenize` throughput (MB/s) on a corpus grown from the sample data
    Tokenize(TokenizeBench),
    /// Training throughput (tokens/s, GFLOP/s, peak memory) of the bench model (configs/bench.toml)
    Train(TrainBench),
    /// Decoding throughput (tokens/s) at batch 1 and 8, for the bench model and GPT-2-small shape
    Generate(GenerateBench),
    /// Fine-tuning a GPT-2-small-shaped model: full, LoRA and QLoRA steps (tokens/s, peak memory)
    Finetune(FinetuneBench),
    /// Batch-1 decoding of one GGUF file (SmolLM2-135M shape; f32, f16, q8_0) by chatforge and by
    /// llama.cpp, with the weight traffic each achieves
    Gguf(GgufBench),
    /// Multiple-choice task scoring (documents/s) on SmolLM2-135M's shape, beside
    /// lm-evaluation-harness's hf backend
    Eval(EvalBench),
    /// Chat serving: concurrent streaming clients (1, 8, 32) on one GGUF file, aggregate tokens/s
    /// and time to first token, beside llama.cpp's llama-server with continuous batching
    Serve(chat_serve::ChatServeBench),
    /// The job API under load: request latency while a run trains, and the training's slowdown
    Api(serve::ServeBench),
    /// The machine's f32 matrix-product peak (GFLOP/s) with the gemm crate, beside torch.mm
    Sgemm(SgemmBench),
    /// Every speed target at once: sgemm, training (pre-training and SFT, three runs each),
    /// fine-tuning (full, LoRA, QLoRA) and decoding, beside PyTorch with --compare-torch
    All(AllBench),
}

#[derive(Args)]
pub struct AllBench {
    /// Also run the PyTorch references (in the venv `scripts/reference/venv.sh` builds) and print
    /// chatforge's speed as a ratio of theirs
    #[arg(long)]
    pub compare_torch: bool,
    /// Runs of each training bench (the ratios reported are their medians)
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
}

#[derive(Args)]
pub struct FinetuneBench {
    /// Modes to compare, each in its own process: full, lora, qlora; a "-gc" suffix (lora-gc)
    /// adds gradient checkpointing
    #[arg(long, value_delimiter = ',', default_value = "full,lora,qlora")]
    pub modes: Vec<String>,
    /// Timed steps (after the warm-up ones)
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    /// Untimed steps first
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Sequences per step
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Tokens per sequence
    #[arg(long, default_value_t = 128)]
    pub seq: usize,
    /// The model's shape: gpt2 (GPT-2 small, 124 M; LoRA on c_attn, c_proj, c_fc) or smollm2
    /// (SmolLM2-135M: Llama with grouped-query attention; LoRA on all seven linear layers)
    #[arg(long, default_value = "gpt2")]
    pub model: String,
    /// LoRA rank
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    /// LoRA's target modules instead of the model's default (comma-separated)
    #[arg(long, value_delimiter = ',')]
    pub lora_targets: Option<Vec<String>>,
    /// QLoRA's quantisation
    #[arg(long, default_value = "q4")]
    pub quant: chatforge_model::quant::QuantKind,
    /// Python with torch, transformers and peft: also runs scripts/reference/bench_finetune_torch.py
    /// for each mode (PyTorch has no CPU QLoRA, so qlora runs alone)
    #[arg(long)]
    pub reference_python: Option<PathBuf>,
    /// The weight products' inputs: f32, bf16 (the PyTorch reference runs under
    /// autocast(bfloat16) too), or auto (bf16 where the CPU has AVX-512 BF16)
    #[arg(long, default_value = "f32")]
    pub precision: chatforge_model::PrecisionSetting,
    /// Internal: run one mode in this process and print its JSON line
    #[arg(long, hide = true)]
    pub child: bool,
}

#[derive(Args)]
pub struct GgufBench {
    /// GGUF weight types to write and decode: f32, f16 (chatforge decodes it as bf16), q8_0
    #[arg(long, value_delimiter = ',', default_value = "f32,f16,q8_0")]
    pub quants: Vec<String>,
    /// Prompt tokens before decoding starts
    #[arg(long, default_value_t = 16)]
    pub context: usize,
    /// New tokens per run
    #[arg(long, default_value_t = 128)]
    pub new: usize,
    /// Runs of each case (the median is reported)
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Python with llama-cpp-python: also decodes the same file with llama.cpp
    /// (scripts/reference/bench_decode_llamacpp.py)
    #[arg(long)]
    pub reference_python: Option<PathBuf>,
}

#[derive(Args)]
pub struct EvalBench {
    /// Documents of the task (four choices each)
    #[arg(long, default_value_t = 200)]
    pub docs: usize,
    /// Documents scored per pass (chatforge) and requests per batch (lm-eval)
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Runs (the median is reported)
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Python with lm-eval: also runs scripts/reference/lm_eval_tasks.py's hf backend
    #[arg(long)]
    pub reference_python: Option<PathBuf>,
}

#[derive(Args)]
pub struct GenerateBench {
    /// Model shapes: bench (12 M parameters, vocab 4096) and gpt2 (124 M, vocab 50257), random weights
    #[arg(long, value_delimiter = ',', default_value = "bench,gpt2")]
    pub shapes: Vec<String>,
    /// Prompt lengths (tokens of context before decoding starts)
    #[arg(long, value_delimiter = ',', default_value = "16,256,1000")]
    pub contexts: Vec<usize>,
    /// New tokens per run (fewer where the 1024-token context ends first)
    #[arg(long, default_value_t = 200)]
    pub new: usize,
    /// Batch sizes (batch 1 is the latency case; more is throughput)
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    pub batches: Vec<usize>,
    /// Weight types of the decoder
    #[arg(long, value_delimiter = ',', default_value = "f32,bf16,q8")]
    pub weights: Vec<chatforge_infer::WeightType>,
    /// Runs of each case (the median is reported)
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Python with torch + transformers: also runs scripts/reference/bench_generate_torch.py
    #[arg(long)]
    pub reference_python: Option<PathBuf>,
}

#[derive(Args)]
pub struct TrainBench {
    /// Timed steps (after the warm-up ones)
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Untimed steps first
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Python with torch installed: also runs scripts/reference/bench_train_torch.py (SDPA and plain attention)
    #[arg(long)]
    pub reference_python: Option<PathBuf>,
    /// SFT batches: four packed documents per row (40, 72, 56, 88 tokens), attention within each,
    /// loss on the second half of each (the PyTorch reference does the same)
    #[arg(long)]
    pub sft: bool,
    /// What a step trains: pretrain, sft (as --sft) or dpo (8 pairs a step, each row a 64-token
    /// prompt with a 64-token chosen and a 64-token rejected reply; the reference is TRL's
    /// DPOTrainer, scripts/reference/bench_dpo_trl.py) [default: pretrain]
    #[arg(long)]
    pub mode: Option<String>,
    /// The weight products' inputs: f32, bf16 (PyTorch runs under autocast(bfloat16) too), or
    /// auto (bf16 where the CPU has AVX-512 BF16)
    #[arg(long, default_value = "f32")]
    pub precision: chatforge_model::PrecisionSetting,
}

#[derive(Args)]
pub struct SgemmBench {
    /// Square matrix sizes
    #[arg(long, value_delimiter = ',', default_value = "384,1024,2048")]
    pub sizes: Vec<usize>,
    /// Python with torch: also times torch.mm at the same sizes
    #[arg(long)]
    pub reference_python: Option<PathBuf>,
}

#[derive(Args)]
pub struct TokenizeBench {
    /// Conversation data the corpus is grown from
    #[arg(long, default_value = "data/sample")]
    pub data: PathBuf,
    /// Size of the corpus file in MB (10^6 bytes)
    #[arg(long, default_value_t = 64)]
    pub mb: u64,
    /// Tokenizer to use [default: a 4096-token byte-level BPE trained on --data]
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Times the corpus is encoded (the median is reported)
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Python with `tokenizers` installed, to run scripts/reference/bench_tokenize.py beside us
    #[arg(long)]
    pub reference_python: Option<PathBuf>,
}

/// Runs a benchmark. `purge_freed_memory(on)` hands freed memory back to the kernel at once (on)
/// or never (off): the binary's allocator knows how; the fine-tuning bench measures with it.
pub fn run(cmd: BenchCommand, purge_freed_memory: fn(bool)) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Tokenize(args) => tokenize::run(&args),
        BenchCommand::Train(args) => train::run(&args),
        BenchCommand::Generate(args) => generate::run(&args),
        BenchCommand::Gguf(args) => gguf::run(&args),
        BenchCommand::Eval(args) => eval::run(&args),
        BenchCommand::Finetune(args) => finetune::run(&args, purge_freed_memory),
        BenchCommand::Serve(args) => chat_serve::run(&args),
        BenchCommand::Api(args) => serve::run(&args),
        BenchCommand::Sgemm(args) => sgemm_bench(&args),
        BenchCommand::All(args) => all_bench(&args),
    }
}

/// Timed optimizer steps: `warmup` untimed, then `steps` timed, one micro-batch each.
pub(crate) struct Step {
    pub mode: chatforge_train::Mode,
    pub lr: f64,
    pub warmup: usize,
    pub steps: usize,
}

impl Step {
    /// Each timed step's seconds, batches from `next`.
    pub(crate) fn time(
        &self,
        engine: &mut chatforge_model::engine::TrainEngine,
        specs: &[chatforge_model::ParamSpec],
        opt: &mut chatforge_train::AdamW,
        dropout: &mut chatforge_base::Rng,
        mut next: impl FnMut() -> chatforge_data::Batch,
    ) -> anyhow::Result<Vec<f64>> {
        let mut times = Vec::with_capacity(self.steps);
        let _ = chatforge_model::profile::take();
        for i in 0..self.warmup + self.steps {
            // The timed steps' time by kernel family (see `profile_line`).
            chatforge_model::profile::enable(i >= self.warmup);
            let batch = next();
            let t0 = std::time::Instant::now();
            chatforge_train::optimizer_step(
                engine,
                specs,
                opt,
                || batch.clone(),
                1,
                chatforge_train::StepLoss::Tokens(self.mode),
                self.lr,
                1.0,
                dropout,
                &chatforge_train::Solo,
            )?;
            if i >= self.warmup {
                times.push(t0.elapsed().as_secs_f64());
            }
        }
        chatforge_model::profile::enable(false);
        Ok(times)
    }
}

/// The share of the timed steps' time (`times`) per kernel family, from the spans counted while
/// they ran (`chatforge_model::profile`); "other" is what no family covers.
pub(crate) fn profile_line(times: &[f64]) -> String {
    let total: f64 = times.iter().sum();
    let families = chatforge_model::profile::take();
    let covered: f64 = families.iter().map(|(_, s)| s).sum();
    let mut parts: Vec<String> = families
        .iter()
        .filter(|(_, s)| *s > 0.0)
        .map(|(f, s)| format!("{} {:.0}%", f.name(), 100.0 * s / total))
        .collect();
    parts.push(format!(
        "other {:.0}%",
        100.0 * (total - covered).max(0.0) / total
    ));
    format!("step time by kernel family: {}", parts.join(", "))
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs `chatforge bench ARGS…` as a child, echoing its output; returns the output.
pub(crate) fn bench_child(args: &[&str], python: Option<&str>) -> anyhow::Result<String> {
    let exe = std::env::current_exe().context("finding this program")?;
    let mut cmd = Command::new(exe);
    cmd.arg("bench").args(args);
    if let Some(py) = python {
        cmd.args(["--reference-python", py]);
    }
    let out = cmd
        .output()
        .with_context(|| format!("running bench {}", args.join(" ")))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    print!("{text}");
    if !out.status.success() {
        bail!(
            "bench {} failed:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(text)
}

/// The number in a `… = 1.23x` line.
pub(crate) fn ratio_of(text: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with("ratio:"))
        .and_then(|l| l.rsplit('=').next())
        .and_then(|r| r.trim().trim_end_matches('x').parse().ok())
}

pub(crate) fn all_bench(args: &AllBench) -> anyhow::Result<()> {
    let python = if args.compare_torch {
        let out = Command::new("bash")
            .arg("scripts/reference/venv.sh")
            .output()
            .context("running scripts/reference/venv.sh (run bench all from the repository root)")?;
        if !out.status.success() {
            bail!(
                "scripts/reference/venv.sh failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        None
    };
    let py = python.as_deref();
    say!("── sgemm ──");
    bench_child(&["sgemm", "--sizes", "1024"], py)?;
    let mut summary = Vec::new();
    let mut variants: Vec<(&str, &[&str])> = vec![("training", &[]), ("SFT training", &["--sft"])];
    // bf16 beside PyTorch's autocast(bfloat16), where this CPU has AVX-512 BF16.
    if chatforge_model::PrecisionSetting::Bf16.resolve().is_ok() {
        variants.push(("training, bf16", &["--precision", "bf16"]));
        variants.push(("SFT training, bf16", &["--sft", "--precision", "bf16"]));
    }
    for (name, extra) in variants {
        say!("\n── {name}: bench model, {} runs ──", args.runs);
        let mut ratios = Vec::new();
        for _ in 0..args.runs.max(1) {
            let mut a = vec!["train"];
            a.extend(extra);
            let out = bench_child(&a, py)?;
            ratios.extend(ratio_of(&out));
        }
        if !ratios.is_empty() {
            summary.push(format!(
                "{name}: median {:.2}x the faster PyTorch attention (runs: {})",
                median(ratios.clone()),
                ratios
                    .iter()
                    .map(|r| format!("{r:.2}x"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    say!("\n── fine-tuning: GPT-2-small shape ──");
    bench_child(&["finetune", "--modes", "full,lora,qlora"], py)?;
    say!("\n── decoding ──");
    bench_child(
        &[
            "generate",
            "--contexts",
            "16,256",
            "--batches",
            "1,8",
            "--weights",
            "f32",
            "--new",
            "100",
        ],
        py,
    )?;
    if !summary.is_empty() {
        say!("\n── summary ──");
        for l in summary {
            say!("{l}");
        }
    }
    Ok(())
}

/// GFLOP/s of the gemm crate on an `n³` f32 product, all cores, best of `runs`.
pub(crate) fn sgemm_gflops(n: usize, runs: usize) -> f64 {
    gemm_gflops(n, runs, Precision::F32)
}

/// GFLOP/s of the training engine's products on an `n³` product with inputs in `prec`, all
/// cores, best of `runs`.
pub(crate) fn gemm_gflops(n: usize, runs: usize, prec: Precision) -> f64 {
    use chatforge_model::kernels::gemm::{Gemm, View, gemm};
    let a: Vec<f32> = (0..n * n).map(|i| (i % 7) as f32 * 0.1).collect();
    let bm: Vec<f32> = (0..n * n).map(|i| (i % 5) as f32 * 0.1).collect();
    let mut c = vec![0f32; n * n];
    let v = View::rows(0, n, n, n);
    let mut best = f64::INFINITY;
    for _ in 0..runs.max(1) + 1 {
        let t0 = std::time::Instant::now();
        gemm(&mut c, v, &a, v, &bm, v, Gemm::all(false, prec));
        best = best.min(t0.elapsed().as_secs_f64());
    }
    2.0 * (n as f64).powi(3) / best / 1e9
}

pub(crate) fn sgemm_bench(args: &SgemmBench) -> anyhow::Result<()> {
    say!(
        "matrix products n×n·n×n, {} thread(s), best of 5",
        rayon_threads()
    );
    say!("bf16 products: {}", Precision::Bf16.kernel());
    for &n in &args.sizes {
        let ours = sgemm_gflops(n, 5);
        let half = gemm_gflops(n, 5, Precision::Bf16);
        let mut line = format!("n = {n:>5}: gemm crate {ours:>6.1} GFLOP/s, bf16 {half:>6.1} GFLOP/s");
        if let Some(py) = &args.reference_python {
            let mut cmd = Command::new(py);
            cmd.arg("-c").arg(format!(
                "import json, time, torch\ntorch.set_num_threads({})\nn = {n}\na = torch.rand(n, n); b = torch.rand(n, n)\ndef rate(a, b):\n    best = 1e9\n    for _ in range(6):\n        t = time.perf_counter(); torch.mm(a, b); best = min(best, time.perf_counter() - t)\n    return 2 * n ** 3 / best / 1e9\nprint(json.dumps({{'gflops': rate(a, b), 'bf16': rate(a.bfloat16(), b.bfloat16()), 'torch': torch.__version__}}))",
                rayon_threads()
            ));
            let r = json_of(&mut cmd, "torch.mm")?;
            line += &format!(
                ", torch {} mm {:>6.1} GFLOP/s, bf16 {:>6.1} GFLOP/s",
                r["torch"].as_str().unwrap_or("?"),
                r["gflops"].as_f64().unwrap_or(f64::NAN),
                r["bf16"].as_f64().unwrap_or(f64::NAN)
            );
        }
        say!("{line}");
    }
    Ok(())
}

pub(crate) fn rayon_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Resets this process's peak RSS (Linux: `5` to /proc/self/clear_refs).
pub(crate) fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident memory of this process, in MB.
pub(crate) fn peak_rss_mb() -> f64 {
    status_mb("VmHWM:")
}

/// A memory line of /proc/self/status (`VmHWM:`, `VmRSS:`), in MB.
pub(crate) fn status_mb(key: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Resident memory of this process now, in MB.
pub(crate) fn current_rss_mb() -> f64 {
    status_mb("VmRSS:")
}

/// A batch of random tokens: every position carries loss, one document per row.
pub(crate) fn random_batch(
    rng: &mut chatforge_data::Rng,
    b: usize,
    t: usize,
    v: usize,
) -> chatforge_data::Batch {
    chatforge_data::Batch {
        batch_size: b,
        seq_len: t,
        inputs: (0..b * t).map(|_| rng.below(v as u64) as u32).collect(),
        targets: (0..b * t).map(|_| rng.below(v as u64) as u32).collect(),
        target_mask: vec![1; b * t],
        loss_mask: vec![1; b * t],
        positions: (0..b).flat_map(|_| 0..t as u32).collect(),
        segments: vec![0; b * t],
        seqs: (0..b * t).map(|i| (i / t) as u32).collect(),
        docs: (0..b as u64).collect(),
    }
}

/// Runs a benchmark child process (a Python reference, or this binary in one mode) and parses the
/// JSON line it prints; a failure carries the child's stderr.
pub(crate) fn json_of(cmd: &mut Command, what: &str) -> anyhow::Result<serde_json::Value> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!("{what} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("{what} printed no JSON line"))
}
