//! `bench train`: training throughput of the bench model (`GptConfig::bench`), pre-training or
//! packed SFT batches, beside PyTorch with SDPA and with plain attention.

use std::process::Command;

use chatforge_base::Rng;
use chatforge_model::engine::TrainEngine;
use chatforge_model::{GptConfig, init_weights, param_specs, take_flat};
use chatforge_train::{AdamW, AdamWConfig, Mode};

use crate::{Step, TrainBench, json_of, median, peak_rss_mb, random_batch, sgemm_gflops};

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
    Ok(Some(best))
}

pub(crate) fn run(args: &TrainBench) -> anyhow::Result<()> {
    let best_torch = torch_reference(args)?;
    let cfg = GptConfig::bench();
    let (b, t, v) = (8usize, cfg.n_ctx, cfg.vocab_size);
    let specs = param_specs(&cfg);
    let flat = take_flat(&specs, &mut init_weights(&cfg, &mut Rng::new(0))?)?;
    let mut engine = TrainEngine::new(&cfg, b, t, flat)?;
    let adamw = AdamWConfig {
        lr: 6e-4,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
    };
    let mut opt = AdamW::for_lengths(adamw, specs.iter().map(|s| s.shape.iter().product()));
    let mut dropout = Rng::new(0);
    let mut rng = Rng::new(1);
    let sft = args.sft;
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
    let step = Step {
        mode,
        lr: 6e-4,
        warmup: args.warmup,
        steps: args.steps,
    };
    let times = step.time(&mut engine, &specs, &mut opt, &mut dropout, next_batch)?;
    let s = median(times);
    let tps = (b * t) as f64 / s;
    let gflops = flops_per_token * tps / 1e9;
    let peak = sgemm_gflops(1024, 3);
    say!(
        "chatforge   bench model ({:.1} M parameters, batch {b}×{t}{}, f32, AdamW, engine): {tps:.0} tokens/s, {gflops:.1} GFLOP/s ({:.0}% of this machine's sgemm peak, {peak:.0} GFLOP/s at 1024³), {s:.3} s/step, peak RSS {:.0} MB",
        cfg.n_params() as f64 / 1e6,
        if sft { " SFT packed" } else { "" },
        100.0 * gflops / peak,
        peak_rss_mb()
    );
    if let Some(best) = best_torch {
        say!("ratio: chatforge / fastest PyTorch = {:.2}x", tps / best);
    }
    Ok(())
}
