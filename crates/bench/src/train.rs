//! `bench train`: training throughput of the bench model (`GptConfig::bench`), pre-training or
//! packed SFT batches, beside PyTorch with SDPA and with plain attention.

use std::process::Command;

use chatforge_base::Rng;
use chatforge_model::engine::TrainEngine;
use chatforge_model::{GptConfig, Precision, init_weights, param_specs, take_flat};
use chatforge_train::preference::Objective;
use chatforge_train::{AdamW, AdamWConfig, Mode, PairTraining, StepLoss, optimizer_step};

use crate::{Step, TrainBench, gemm_gflops, json_of, median, peak_rss_mb, profile_line, random_batch};

/// The fastest of the PyTorch references (SDPA and plain attention), each in its own process,
/// run before ours: a child forked after our peak would report our peak as its own (Linux
/// carries ru_maxrss across exec).
fn torch_reference(args: &TrainBench) -> anyhow::Result<Option<f64>> {
    let Some(py) = &args.reference_python else {
        return Ok(None);
    };
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
            .args(args.sft.then_some("--sft"))
            .args((precision_of(args.precision)? == Precision::Bf16).then_some("--bf16"));
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
    Ok(Some(best))
}

/// The precision a bench's `--precision` runs on this CPU.
pub(crate) fn precision_of(setting: chatforge_model::PrecisionSetting) -> anyhow::Result<Precision> {
    setting.resolve().map_err(|e| anyhow::anyhow!("--precision: {e}"))
}

/// The bench model's optimizer, as the references configure theirs.
const BENCH_ADAMW: AdamWConfig = AdamWConfig {
    lr: 6e-4,
    beta1: 0.9,
    beta2: 0.95,
    eps: 1e-8,
    weight_decay: 0.1,
};

/// TRL's DPOTrainer on the same model and pairs (scripts/reference/bench_dpo_trl.py).
fn trl_reference(args: &TrainBench) -> anyhow::Result<Option<f64>> {
    let Some(py) = &args.reference_python else {
        return Ok(None);
    };
    let mut cmd = Command::new(py);
    cmd.arg("scripts/reference/bench_dpo_trl.py").args([
        "--steps",
        &args.steps.to_string(),
        "--warmup",
        &args.warmup.to_string(),
    ]);
    let r = json_of(&mut cmd, "scripts/reference/bench_dpo_trl.py")?;
    let tps = r["tokens_per_s"].as_f64().unwrap_or(f64::NAN);
    say!(
        "{:<11} trl {} (torch {}): {tps:.0} tokens/s, {:.3} s/step, peak RSS {:.0} MB",
        r["impl"].as_str().unwrap_or("trl"),
        r["trl"].as_str().unwrap_or("?"),
        r["torch"].as_str().unwrap_or("?"),
        r["step_s"].as_f64().unwrap_or(f64::NAN),
        r["peak_rss_mb"].as_f64().unwrap_or(f64::NAN)
    );
    Ok(Some(tps))
}

/// DPO on the bench model: 8 pairs a step, each row a 64-token prompt with a 64-token chosen
/// and a 64-token rejected reply packed side by side; the reference log-probabilities computed
/// first (as a run does), then policy steps timed.
fn run_dpo(args: &TrainBench) -> anyhow::Result<()> {
    let trl = trl_reference(args)?;
    let cfg = GptConfig::bench();
    let (b, t, v) = (8usize, cfg.n_ctx, cfg.vocab_size);
    let part = t / 4;
    let specs = param_specs(&cfg);
    let flat = take_flat(&specs, &mut init_weights(&cfg, &mut Rng::new(0))?)?;
    let mut engine = TrainEngine::new(&cfg, b, t, flat)?;
    let mut rng = Rng::new(1);
    let n = args.warmup + args.steps;
    let batches: Vec<_> = (0..n)
        .map(|k| {
            let mut batch = random_batch(&mut rng, b, t, v);
            // Row r: [prompt + chosen | prompt + rejected], 2 × 128 positions; a sequence's
            // targets are its next tokens, the reply's carry the loss.
            for r in 0..b {
                let row = r * t;
                let prompt: Vec<u32> = batch.inputs[row..row + part].to_vec();
                for side in 0..2 {
                    let at = row + side * 2 * part;
                    batch.inputs[at..at + part].copy_from_slice(&prompt);
                    for i in 0..2 * part {
                        let j = at + i;
                        batch.targets[j] = if i + 1 < 2 * part { batch.inputs[j + 1] } else { 1 };
                        batch.target_mask[j] = u8::from(i + 1 < 2 * part);
                        batch.loss_mask[j] = u8::from(i + 1 >= part && i + 1 < 2 * part);
                        batch.positions[j] = i as u32;
                        batch.segments[j] = side as u32;
                        batch.seqs[j] = (2 * r + side) as u32;
                    }
                }
            }
            batch.docs = (0..2 * b as u64).map(|s| (k * 2 * b) as u64 + s).collect();
            batch
        })
        .collect();
    let mut refs = vec![0f64; n * 2 * b];
    for batch in &batches {
        let logps = PairTraining::sequence_logps(&mut engine, batch)?;
        for (s, &doc) in batch.docs.iter().enumerate() {
            refs[doc as usize] = logps[s];
        }
    }
    let objective = Objective::Dpo {
        beta: 0.1,
        label_smoothing: 0.0,
    };
    let mut pairs = PairTraining::with_references(objective, refs, &engine);
    let mut opt = AdamW::for_lengths(BENCH_ADAMW, specs.iter().map(|s| s.shape.iter().product()));
    let mut dropout = Rng::new(0);
    let mut times = Vec::new();
    for (i, batch) in batches.into_iter().enumerate() {
        let t0 = std::time::Instant::now();
        optimizer_step(
            &mut engine,
            &specs,
            &mut opt,
            || batch.clone(),
            1,
            StepLoss::Pairs(&mut pairs),
            6e-4,
            1.0,
            &mut dropout,
            &chatforge_train::Solo,
        )?;
        if i >= args.warmup {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    let s = median(times);
    let tps = (b * t) as f64 / s;
    say!(
        "chatforge   bench model DPO ({:.1} M parameters, 8 pairs × (64-token prompt, 64 + 64 reply tokens), f32, AdamW, reference precomputed): {tps:.0} tokens/s, {s:.3} s/step, peak RSS {:.0} MB",
        cfg.n_params() as f64 / 1e6,
        peak_rss_mb()
    );
    if let Some(trl) = trl {
        say!("ratio: chatforge / TRL DPOTrainer = {:.2}x", tps / trl);
    }
    Ok(())
}

pub(crate) fn run(args: &TrainBench) -> anyhow::Result<()> {
    let sft = match args.mode.as_deref() {
        None | Some("pretrain") => args.sft,
        Some("sft") => true,
        Some("dpo") => return run_dpo(args),
        Some(other) => anyhow::bail!("--mode {other}: expected pretrain, sft or dpo"),
    };
    let best_torch = torch_reference(&TrainBench {
        sft,
        mode: None,
        reference_python: args.reference_python.clone(),
        ..*args
    })?;
    let cfg = GptConfig::bench();
    let (b, t, v) = (8usize, cfg.n_ctx, cfg.vocab_size);
    let specs = param_specs(&cfg);
    let flat = take_flat(&specs, &mut init_weights(&cfg, &mut Rng::new(0))?)?;
    let prec = precision_of(args.precision)?;
    let mut engine = TrainEngine::new(&cfg, b, t, flat)?.with_precision(prec);
    let mut opt = AdamW::for_lengths(BENCH_ADAMW, specs.iter().map(|s| s.shape.iter().product()));
    let mut dropout = Rng::new(0);
    let mut rng = Rng::new(1);
    let mode = if sft { Mode::Sft } else { Mode::Pretrain };
    let next_batch = || {
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
    // The head runs only on positions that carry loss (half of them in SFT batches): the
    // estimate counts its 6·V·C per token there only, so the utilisation is of work done.
    let head = (6 * cfg.vocab_size * cfg.n_embd) as f64;
    let flops_per_token = if sft {
        flops_per_token - head / 2.0
    } else {
        flops_per_token
    };
    let step = Step {
        mode,
        lr: 6e-4,
        warmup: args.warmup,
        steps: args.steps,
    };
    let times = step.time(&mut engine, &specs, &mut opt, &mut dropout, next_batch)?;
    let profile = profile_line(&times);
    let s = median(times);
    let tps = (b * t) as f64 / s;
    let gflops = flops_per_token * tps / 1e9;
    let peak = gemm_gflops(1024, 3, prec);
    say!(
        "chatforge   bench model ({:.1} M parameters, batch {b}×{t}{}, {}, AdamW, engine): {tps:.0} tokens/s, {gflops:.1} GFLOP/s ({:.0}% of this machine's {} gemm peak, {peak:.0} GFLOP/s at 1024³), {s:.3} s/step, peak RSS {:.0} MB",
        cfg.n_params() as f64 / 1e6,
        if sft { " SFT packed" } else { "" },
        match prec {
            Precision::F32 => "f32".to_string(),
            Precision::Bf16 => format!("bf16 products ({})", prec.kernel()),
        },
        100.0 * gflops / peak,
        prec.name(),
        peak_rss_mb()
    );
    say!("            {profile}");
    if let Some(best) = best_torch {
        say!("ratio: chatforge / fastest PyTorch = {:.2}x", tps / best);
    }
    Ok(())
}
