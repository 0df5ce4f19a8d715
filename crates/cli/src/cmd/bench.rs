//! `chatforge bench`: throughput measured the way a user runs chatforge, beside the Python
//! reference on the same input in the same run.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};
use chatforge_data::{ImportOptions, import, write_jsonl};
use chatforge_tokenizer::{ChatTokenizer, RenderOptions, TrainOptions, tokenize_file, train};
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
    /// The service under load: request latency while a run trains, and the training's slowdown
    Serve(super::bench_serve::ServeBench),
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
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    #[arg(long, default_value_t = 128)]
    pub seq: usize,
    /// LoRA rank (on c_attn, c_proj and c_fc)
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    /// QLoRA's quantisation
    #[arg(long, default_value = "q4")]
    pub quant: chatforge_model::quant::QuantKind,
    /// Python with torch, transformers and peft: also runs scripts/reference/bench_finetune_torch.py
    /// for each mode (PyTorch has no CPU QLoRA, so qlora runs alone)
    #[arg(long)]
    pub reference_python: Option<PathBuf>,
    /// Time the autograd path instead of the training engine
    #[arg(long)]
    pub autograd: bool,
    /// Internal: run one mode in this process and print its JSON line
    #[arg(long, hide = true)]
    pub child: bool,
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
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Python with torch installed: also runs scripts/reference/bench_train_torch.py (SDPA and plain attention)
    #[arg(long)]
    pub reference_python: Option<PathBuf>,
    /// Time the autograd path (candle's backward through `Gpt`) instead of the training engine
    #[arg(long)]
    pub autograd: bool,
    /// SFT batches: four packed documents per row (40, 72, 56, 88 tokens), attention within each,
    /// loss on the second half of each (the PyTorch reference does the same)
    #[arg(long)]
    pub sft: bool,
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
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Python with `tokenizers` installed, to run scripts/reference/bench_tokenize.py beside us
    #[arg(long)]
    pub reference_python: Option<PathBuf>,
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Tokenize(args) => tokenize(&args),
        BenchCommand::Train(args) => train_bench(&args),
        BenchCommand::Generate(args) => generate_bench(&args),
        BenchCommand::Finetune(args) => finetune_bench(&args),
        BenchCommand::Serve(args) => super::bench_serve::run(&args),
        BenchCommand::Sgemm(args) => sgemm_bench(&args),
        BenchCommand::All(args) => all_bench(&args),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn tokenize(args: &TokenizeBench) -> anyhow::Result<()> {
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

/// Peak resident memory of this process, in MB.
fn peak_rss_mb() -> f64 {
    status_mb("VmHWM:")
}

/// A memory line of /proc/self/status (`VmHWM:`, `VmRSS:`), in MB.
fn status_mb(key: &str) -> f64 {
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

fn train_bench(args: &TrainBench) -> anyhow::Result<()> {
    use candle_core::Device;
    use chatforge_data::Rng;
    use chatforge_model::{Dropout, Gpt, GptConfig, Params, init_weights};
    use chatforge_train::{AdamW, AdamWConfig, Mode, optimizer_step};

    // The references run first, in their own processes: a child forked after our peak would
    // report our peak as its own (Linux carries ru_maxrss across exec).
    let best_torch = match &args.reference_python {
        None => None,
        Some(py) => {
            let mut best = 0f64;
            for attention in ["sdpa", "math"] {
                let mut cmd = Command::new(py);
                cmd.arg("scripts/reference/bench_train_torch.py")
                    .args([
                        "--attention",
                        attention,
                        "--steps",
                        &args.steps.to_string(),
                        "--warmup",
                        &args.warmup.to_string(),
                    ])
                    .args(args.sft.then_some("--sft"));
                let r = json_of(&mut cmd, "scripts/reference/bench_train_torch.py")?;
                let rt = r["tokens_per_s"].as_f64().unwrap_or(f64::NAN);
                best = best.max(rt);
                say!(
                    "{:<11} torch {}: {rt:.0} tokens/s, {:.1} GFLOP/s, {:.3} s/step, peak RSS {:.0} MB",
                    r["impl"].as_str().unwrap_or("pytorch"),
                    r["torch"].as_str().unwrap_or("?"),
                    r["gflops"].as_f64().unwrap_or(f64::NAN),
                    r["step_s"].as_f64().unwrap_or(f64::NAN),
                    r["peak_rss_mb"].as_f64().unwrap_or(f64::NAN)
                );
            }
            Some(best)
        }
    };
    let cfg = GptConfig::bench();
    let (b, t, v) = (8usize, cfg.n_ctx, cfg.vocab_size);
    let dev = Device::Cpu;
    let params = Params::from_weights(&cfg, init_weights(&cfg, &mut Rng::new(0), &dev)?)?;
    let model = Gpt::new(&cfg, params.var_builder(&dev))?;
    let mut opt = AdamW::new(
        AdamWConfig {
            lr: 6e-4,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        },
        &params.vars,
    );
    let mut dropout = Dropout {
        p: 0.0,
        rng: Rng::new(0),
    };
    let mut rng = Rng::new(1);
    let sft = args.sft;
    let mode = if sft { Mode::Sft } else { Mode::Pretrain };
    let mut random_batch = || {
        let mut batch = random_batch(&mut rng, b, t, v);
        if sft {
            // Four documents a row, positions restarting, loss on each one's second half.
            let (mut seg, mut pos, mut loss) = (Vec::new(), Vec::new(), Vec::new());
            for (i, n) in [40u32, 72, 56, 88].into_iter().enumerate() {
                seg.extend(std::iter::repeat_n(i as u32, n as usize));
                pos.extend(0..n);
                loss.extend((0..n).map(|k| u8::from(k >= n / 2)));
            }
            batch.segments = seg.repeat(b);
            batch.positions = pos.repeat(b);
            batch.loss_mask = loss.repeat(b);
        }
        batch
    };
    // nanoGPT's estimate: 6 N (N without the position table) + attention's 12 L H Q T per token.
    let n = cfg.n_params() - cfg.n_ctx * cfg.n_embd;
    let flops_per_token = (6 * n + 12 * cfg.n_layer * cfg.n_head * cfg.head_dim() * t) as f64;
    let mut times = Vec::new();
    if args.autograd {
        for i in 0..args.warmup + args.steps {
            let batch = random_batch();
            let t0 = std::time::Instant::now();
            optimizer_step(
                &model,
                &params,
                &mut opt,
                || batch.clone(),
                1,
                mode,
                6e-4,
                1.0,
                false,
                &mut dropout,
                &dev,
            )?;
            if i >= args.warmup {
                times.push(t0.elapsed().as_secs_f64());
            }
        }
    } else {
        use chatforge_model::engine::TrainEngine;
        let flat = params.flat()?;
        drop(model);
        drop(params);
        let specs = chatforge_model::param_specs(&cfg);
        let mut engine = TrainEngine::new(&cfg, b, t, flat)?;
        for i in 0..args.warmup + args.steps {
            let batch = random_batch();
            let t0 = std::time::Instant::now();
            chatforge_train::engine_step(
                &mut engine,
                &specs,
                &mut opt,
                || batch.clone(),
                1,
                mode,
                6e-4,
                1.0,
                &mut dropout.rng,
            )?;
            if i >= args.warmup {
                times.push(t0.elapsed().as_secs_f64());
            }
        }
    }
    let s = median(times);
    let tps = (b * t) as f64 / s;
    let gflops = flops_per_token * tps / 1e9;
    let peak = sgemm_gflops(1024, 3);
    say!(
        "chatforge   bench model ({:.1} M parameters, batch {b}×{t}{}, f32, AdamW, {}): {tps:.0} tokens/s, {gflops:.1} GFLOP/s ({:.0}% of this machine's sgemm peak, {peak:.0} GFLOP/s at 1024³), {s:.3} s/step, peak RSS {:.0} MB",
        cfg.n_params() as f64 / 1e6,
        if sft { " SFT packed" } else { "" },
        if args.autograd { "autograd" } else { "engine" },
        100.0 * gflops / peak,
        peak_rss_mb()
    );
    if let Some(best) = best_torch {
        say!("ratio: chatforge / fastest PyTorch = {:.2}x", tps / best);
    }
    Ok(())
}

/// Runs `chatforge bench ARGS…` as a child, echoing its output; returns the output.
fn bench_child(args: &[&str], python: Option<&str>) -> anyhow::Result<String> {
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
fn ratio_of(text: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with("ratio:"))
        .and_then(|l| l.rsplit('=').next())
        .and_then(|r| r.trim().trim_end_matches('x').parse().ok())
}

fn all_bench(args: &AllBench) -> anyhow::Result<()> {
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
    for (name, extra) in [("training", None), ("SFT training", Some("--sft"))] {
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
fn sgemm_gflops(n: usize, runs: usize) -> f64 {
    let a: Vec<f32> = (0..n * n).map(|i| (i % 7) as f32 * 0.1).collect();
    let bm: Vec<f32> = (0..n * n).map(|i| (i % 5) as f32 * 0.1).collect();
    let mut c = vec![0f32; n * n];
    let mut best = f64::INFINITY;
    for _ in 0..runs.max(1) + 1 {
        let t0 = std::time::Instant::now();
        chatforge_model::ops::matmul_into(&a, n, n, &bm, n, false, &mut c);
        best = best.min(t0.elapsed().as_secs_f64());
    }
    2.0 * (n as f64).powi(3) / best / 1e9
}

fn sgemm_bench(args: &SgemmBench) -> anyhow::Result<()> {
    say!(
        "f32 matrix products n×n·n×n, {} thread(s), best of 5",
        rayon_threads()
    );
    for &n in &args.sizes {
        let ours = sgemm_gflops(n, 5);
        let mut line = format!("n = {n:>5}: gemm crate {ours:>6.1} GFLOP/s");
        if let Some(py) = &args.reference_python {
            let mut cmd = Command::new(py);
            cmd.arg("-c").arg(format!(
                "import json, time, torch\ntorch.set_num_threads({})\nn = {n}\na = torch.rand(n, n); b = torch.rand(n, n)\nbest = 1e9\nfor _ in range(6):\n    t = time.perf_counter(); torch.mm(a, b); best = min(best, time.perf_counter() - t)\nprint(json.dumps({{'gflops': 2 * n ** 3 / best / 1e9, 'torch': torch.__version__}}))",
                rayon_threads()
            ));
            let r = json_of(&mut cmd, "torch.mm")?;
            line += &format!(
                ", torch {} mm {:>6.1} GFLOP/s",
                r["torch"].as_str().unwrap_or("?"),
                r["gflops"].as_f64().unwrap_or(f64::NAN)
            );
        }
        say!("{line}");
    }
    Ok(())
}

fn generate_bench(args: &GenerateBench) -> anyhow::Result<()> {
    use candle_core::Device;
    use chatforge_data::Rng;
    use chatforge_infer::{Engine, Request, Sampling, generate};
    use chatforge_model::{GptConfig, init_weights};

    say!(
        "greedy decoding, KV cache, random weights, {} thread(s); tokens/s of new tokens after the prompt (median of {})",
        rayon_threads(),
        args.runs
    );
    for shape in &args.shapes {
        let cfg = match shape.as_str() {
            "bench" => GptConfig {
                n_ctx: 1024,
                dropout: 0.0,
                ..GptConfig::bench()
            },
            "gpt2" => GptConfig {
                dropout: 0.0,
                ..GptConfig::gpt2()
            },
            other => bail!("unknown shape {other:?} (expected bench or gpt2)"),
        };
        let weights = init_weights(&cfg, &mut Rng::new(0), &Device::Cpu)?;
        for &ctx in &args.contexts {
            if ctx >= cfg.n_ctx {
                bail!("context {ctx} does not fit the {}-token model", cfg.n_ctx);
            }
            let new = args.new.min(cfg.n_ctx - ctx);
            for &batch in &args.batches {
                let torch = match &args.reference_python {
                    Some(py) => {
                        let mut cmd = Command::new(py);
                        cmd.arg("scripts/reference/bench_generate_torch.py")
                            .args([
                                "--shape",
                                shape,
                                "--context",
                                &ctx.to_string(),
                                "--new",
                                &new.to_string(),
                            ])
                            .args(["--batch", &batch.to_string(), "--runs", &args.runs.to_string()]);
                        let r = json_of(&mut cmd, "scripts/reference/bench_generate_torch.py")?;
                        Some(r["tokens_per_s"].as_f64().unwrap_or(f64::NAN))
                    }
                    None => None,
                };
                let mut line = format!("{shape:<5} context {ctx:>4} +{new:>3} new, batch {batch}:");
                if let Some(t) = torch {
                    line += &format!(" pytorch {t:>7.1}");
                }
                for &wt in &args.weights {
                    let engine = Engine::new(&cfg, &weights, wt)?;
                    let mut rng = Rng::new(1);
                    let reqs: Vec<Request> = (0..batch)
                        .map(|_| Request {
                            prompt: (0..ctx)
                                .map(|_| rng.below(cfg.vocab_size as u64) as u32)
                                .collect(),
                            max_new_tokens: new,
                            sampling: Sampling::greedy(),
                            stop_ids: Vec::new(),
                            stop_strings: Vec::new(),
                        })
                        .collect();
                    generate(&engine, None, &reqs[..1], 1, None, |_, _| {})?; // warm-up
                    // Decoding time: from the end of the prompts' pass (all admitted together) to
                    // the last token, as the reference times it.
                    let mut rates = Vec::new();
                    for _ in 0..args.runs {
                        let outs = generate(&engine, None, &reqs, batch, None, |_, _| {})?;
                        let decode = outs
                            .iter()
                            .map(|o| (o.ids.len() - 1) as f64 / o.tokens_per_s)
                            .fold(0.0, f64::max);
                        let steps: usize = outs.iter().map(|o| o.ids.len() - 1).sum();
                        rates.push(steps as f64 / decode);
                    }
                    let r = median(rates);
                    line += &format!(
                        " | chatforge {:?} {r:>7.1}{}",
                        wt,
                        torch.map_or(String::new(), |t| format!(" ({:.2}x)", r / t))
                    );
                }
                say!("{line}");
            }
        }
    }
    Ok(())
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Resets this process's peak RSS (Linux: `5` to /proc/self/clear_refs).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn finetune_bench(args: &FinetuneBench) -> anyhow::Result<()> {
    use candle_core::{DType, Device};
    use chatforge_data::Rng;
    use chatforge_model::{Dropout, Gpt, GptConfig, LoraConfig, Params, init_weights};
    use chatforge_train::{AdamW, AdamWConfig, Mode, optimizer_step};

    if !args.child {
        say!(
            "GPT-2-small shape (124 M parameters), batch {}×{}, f32 compute, AdamW, random tokens; LoRA rank {} on c_attn, c_proj, c_fc",
            args.batch,
            args.seq,
            args.rank
        );
        let exe = std::env::current_exe()?;
        // What our child process and the PyTorch reference are both told.
        let shared: Vec<String> = [
            ("--steps", args.steps),
            ("--warmup", args.warmup),
            ("--batch", args.batch),
            ("--seq", args.seq),
            ("--rank", args.rank),
        ]
        .iter()
        .flat_map(|(k, v)| [k.to_string(), v.to_string()])
        .collect();
        let mut full_tps = None;
        for mode in &args.modes {
            let mut cmd = Command::new(&exe);
            cmd.args(["bench", "finetune", "--child", "--modes", mode])
                .args(&shared)
                .args(args.autograd.then_some("--autograd"))
                .args(["--quant", &format!("{:?}", args.quant).to_lowercase()]);
            let r = json_of(&mut cmd, &format!("bench finetune --modes {mode}"))?;
            let tps = r["tokens_per_s"].as_f64().unwrap_or(f64::NAN);
            if mode == "full" {
                full_tps = Some(tps);
            }
            let line = |who: &str, r: &serde_json::Value, vs: String| {
                say!(
                    "{mode:<8} {who:<9} trainable {:>11}  {:>6.0} tokens/s{vs}  step {:.2} s  training peak RSS {:>5.0} MB (model in memory {:.0} MB){}",
                    r["trainable"].as_u64().unwrap_or(0),
                    r["tokens_per_s"].as_f64().unwrap_or(f64::NAN),
                    r["step_s"].as_f64().unwrap_or(f64::NAN),
                    r["peak_rss_mb"].as_f64().unwrap_or(f64::NAN),
                    r["model_rss_mb"].as_f64().unwrap_or(f64::NAN),
                    r["engine_mb"]
                        .as_f64()
                        .map_or(String::new(), |m| format!(", engine holds {m:.0} MB")),
                );
            };
            line(
                "chatforge",
                &r,
                full_tps
                    .filter(|_| mode != "full")
                    .map_or(String::new(), |f| format!(" ({:.2}x full)", tps / f)),
            );
            if let Some(py) = args
                .reference_python
                .as_ref()
                .filter(|_| !mode.starts_with("qlora"))
            {
                let mut cmd = Command::new(py);
                cmd.arg("scripts/reference/bench_finetune_torch.py")
                    .args(["--mode", mode.trim_end_matches("-gc")])
                    .args(mode.ends_with("-gc").then_some("--gc"))
                    .args(&shared)
                    .args(["--threads", &rayon_threads().to_string()]);
                let t = json_of(&mut cmd, "scripts/reference/bench_finetune_torch.py")?;
                let torch_tps = t["tokens_per_s"].as_f64().unwrap_or(f64::NAN);
                let who = format!("torch {}", t["torch"].as_str().unwrap_or("?"));
                line(&who, &t, format!(" (chatforge {:.2}x)", tps / torch_tps));
            }
        }
        return Ok(());
    }

    let mode = args.modes.first().map(String::as_str).unwrap_or("full");
    let (mode, checkpoint) = match mode.strip_suffix("-gc") {
        Some(m) => (m, true),
        None => (mode, false),
    };
    let dev = Device::Cpu;
    let cfg = GptConfig {
        dropout: 0.0,
        ..GptConfig::gpt2()
    };
    // Building the model hands what it frees back to the kernel, as `chatforge train` does.
    crate::purge_freed_memory(true);
    let weights = init_weights(&cfg, &mut Rng::new(0), &dev)?;
    // The engine's frozen base (LoRA) or starting weights (full), in `param_specs` order.
    let use_engine = !args.autograd;
    let base_flat: Vec<f32> = if use_engine {
        let specs = chatforge_model::param_specs(&cfg);
        chatforge_model::flatten(specs.iter().map(|s| &weights[&s.name]))?
    } else {
        Vec::new()
    };
    let lora = LoraConfig {
        rank: args.rank,
        alpha: 2.0 * args.rank as f64,
        dropout: 0.0,
        targets: chatforge_model::layout::LORA_MODULES.map(String::from).to_vec(),
        quant: (mode == "qlora").then_some(args.quant),
    };
    // The engine path builds no candle model: its copies would stay in the process's footprint.
    let (params, model) = match mode {
        "full" => {
            let params = Params::from_weights(&cfg, weights)?;
            let model = (!use_engine)
                .then(|| Gpt::new(&cfg, params.var_builder(&dev)))
                .transpose()?;
            (params, model)
        }
        "lora" | "qlora" => {
            let adapter = lora.init(&cfg, &mut Rng::new(1), &dev)?;
            let params = Params::from_adapter(&cfg, &lora, adapter)?;
            let model = if use_engine {
                drop(weights);
                None
            } else {
                let mut ts = weights;
                ts.extend(
                    params
                        .vars
                        .iter()
                        .map(|(s, v)| (s.name.clone(), v.as_tensor().clone())),
                );
                Some(Gpt::with_lora(
                    &cfg,
                    candle_nn::VarBuilder::from_tensors(ts, DType::F32, &dev),
                    Some(&lora),
                )?)
            };
            (params, model)
        }
        other => bail!("unknown mode {other:?} (expected full, lora or qlora, optionally with -gc)"),
    };
    let (b, t, v) = (args.batch, args.seq, cfg.vocab_size);
    let adamw = AdamWConfig {
        lr: 1e-4,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    let specs: Vec<chatforge_model::ParamSpec> = params.vars.iter().map(|(s, _)| s.clone()).collect();
    let trainable_count = params.count();
    // The engine holds its own copy of the weights: candle's model is dropped before measuring.
    enum Step {
        Engine(Box<chatforge_model::engine::TrainEngine>),
        Autograd(Box<(Gpt, Params)>),
    }
    let mut path = if use_engine {
        use chatforge_model::engine::TrainEngine;
        let trainable = params.flat()?;
        drop(model);
        drop(params);
        let engine = match mode {
            "full" => TrainEngine::new(&cfg, b, t, trainable)?,
            _ => TrainEngine::with_lora(&cfg, b, t, base_flat, &lora, trainable)?,
        };
        Step::Engine(Box::new(if checkpoint { engine.checkpointed() } else { engine }))
    } else {
        let Some(model) = model else {
            bail!("the autograd path needs the model");
        };
        Step::Autograd(Box::new((model, params)))
    };
    // What the model holds from here on; the training peak is measured from this point.
    crate::purge_freed_memory(false);
    let model_rss = current_rss_mb();
    reset_peak_rss();
    let mut opt = match &path {
        Step::Autograd(mp) => AdamW::new(adamw, &mp.1.vars),
        Step::Engine(_) => AdamW::for_lengths(adamw, specs.iter().map(|s| s.shape.iter().product())),
    };
    let mut dropout = Dropout {
        p: 0.0,
        rng: Rng::new(0),
    };
    let mut rng = Rng::new(2);
    let mut times = Vec::new();
    for i in 0..args.warmup + args.steps {
        let batch = random_batch(&mut rng, b, t, v);
        let t0 = std::time::Instant::now();
        match &mut path {
            Step::Engine(e) => {
                chatforge_train::engine_step(
                    e,
                    &specs,
                    &mut opt,
                    || batch.clone(),
                    1,
                    Mode::Pretrain,
                    1e-4,
                    1.0,
                    &mut dropout.rng,
                )?;
            }
            Step::Autograd(mp) => {
                let (model, params) = &**mp;
                optimizer_step(
                    model,
                    params,
                    &mut opt,
                    || batch.clone(),
                    1,
                    Mode::Pretrain,
                    1e-4,
                    1.0,
                    checkpoint,
                    &mut dropout,
                    &dev,
                )?;
            }
        }
        if i >= args.warmup {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    let s = median(times);
    let engine_mb = match &path {
        Step::Engine(e) => Some(e.bytes() as f64 / 1e6),
        Step::Autograd(_) => None,
    };
    say!(
        "{}",
        serde_json::json!({
            "mode": mode,
            "engine_mb": engine_mb,
            "trainable": trainable_count,
            "tokens_per_s": (b * t) as f64 / s,
            "step_s": s,
            "peak_rss_mb": peak_rss_mb(),
            "model_rss_mb": model_rss,
        })
    );
    Ok(())
}

/// Resident memory of this process now, in MB.
fn current_rss_mb() -> f64 {
    status_mb("VmRSS:")
}

/// A batch of random tokens: every position carries loss, one document per row.
fn random_batch(rng: &mut chatforge_data::Rng, b: usize, t: usize, v: usize) -> chatforge_data::Batch {
    chatforge_data::Batch {
        batch_size: b,
        seq_len: t,
        inputs: (0..b * t).map(|_| rng.below(v as u64) as u32).collect(),
        targets: (0..b * t).map(|_| rng.below(v as u64) as u32).collect(),
        target_mask: vec![1; b * t],
        loss_mask: vec![1; b * t],
        positions: (0..b).flat_map(|_| 0..t as u32).collect(),
        segments: vec![0; b * t],
    }
}

/// Runs a benchmark child process (a Python reference, or this binary in one mode) and parses the
/// JSON line it prints; a failure carries the child's stderr.
fn json_of(cmd: &mut Command, what: &str) -> anyhow::Result<serde_json::Value> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!("{what} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("{what} printed no JSON line"))
}
