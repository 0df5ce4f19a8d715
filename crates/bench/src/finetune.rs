//! `bench finetune`: full, LoRA and QLoRA steps on a GPT-2-small- or SmolLM2-135M-shaped model,
//! each mode in a process of its own (so each peak is its own), beside transformers + peft.

use std::process::Command;

use anyhow::bail;
use chatforge_base::Rng;
use chatforge_model::engine::TrainEngine;
use chatforge_model::{GptConfig, LoraConfig, Precision, init_weights, param_specs, take_flat};
use chatforge_train::{AdamW, AdamWConfig, Mode};

use crate::{
    FinetuneBench, Step, current_rss_mb, json_of, median, peak_rss_mb, profile_line, random_batch,
    rayon_threads, reset_peak_rss,
};

pub(crate) fn run(args: &FinetuneBench, purge_freed_memory: fn(bool)) -> anyhow::Result<()> {
    if args.child {
        return child(args, purge_freed_memory);
    }
    {
        let (cfg, mut targets) = shape(&args.model)?;
        if let Some(t) = &args.lora_targets {
            targets = t.clone();
        }
        let prec = crate::train::precision_of(args.precision)?;
        say!(
            "{} shape ({:.0} M parameters), batch {}×{}, {} products ({}), AdamW, random tokens; LoRA rank {} on {}",
            args.model,
            cfg.n_params() as f64 / 1e6,
            args.batch,
            args.seq,
            prec.name(),
            prec.kernel(),
            args.rank,
            targets.join(", ")
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
            cmd.args([
                "bench",
                "finetune",
                "--child",
                "--modes",
                mode,
                "--model",
                &args.model,
            ])
            .args(&shared)
            .args(["--lora-targets", &targets.join(",")])
            .args(["--quant", &format!("{:?}", args.quant).to_lowercase()])
            .args(["--precision", prec.name()]);
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
            if let Some(p) = r["profile"].as_str() {
                say!("{:<18} {p}", "");
            }
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
                    .args(["--model", &args.model])
                    .args(["--targets", &targets.join(",")])
                    .args(["--threads", &rayon_threads().to_string()])
                    .args((prec == Precision::Bf16).then_some("--bf16"));
                let t = json_of(&mut cmd, "scripts/reference/bench_finetune_torch.py")?;
                let torch_tps = t["tokens_per_s"].as_f64().unwrap_or(f64::NAN);
                let who = format!("torch {}", t["torch"].as_str().unwrap_or("?"));
                line(&who, &t, format!(" (chatforge {:.2}x)", tps / torch_tps));
            }
        }
        Ok(())
    }
}

/// One mode in this process: its JSON line.
fn child(args: &FinetuneBench, purge_freed_memory: fn(bool)) -> anyhow::Result<()> {
    let mode = args.modes.first().map(String::as_str).unwrap_or("full");
    let (mode, checkpoint) = match mode.strip_suffix("-gc") {
        Some(m) => (m, true),
        None => (mode, false),
    };
    let (cfg, mut targets) = shape(&args.model)?;
    if let Some(t) = &args.lora_targets {
        targets = t.clone();
    }
    // Building the model hands what it frees back to the kernel, as `chatforge train` does.
    purge_freed_memory(true);
    let mut weights = init_weights(&cfg, &mut Rng::new(0))?;
    let lora = LoraConfig {
        rank: args.rank,
        alpha: 2.0 * args.rank as f64,
        dropout: 0.0,
        targets,
        quant: (mode == "qlora").then_some(args.quant),
    };
    let (b, t, v) = (args.batch, args.seq, cfg.vocab_size);
    // The engine holds the only copy of the weights: the maps are emptied into its buffers.
    let base = take_flat(&param_specs(&cfg), &mut weights)?;
    let (engine, specs) = match mode {
        "full" => (TrainEngine::new(&cfg, b, t, base)?, param_specs(&cfg)),
        "lora" | "qlora" => {
            let specs = lora.param_specs(&cfg);
            let adapter = take_flat(&specs, &mut lora.init(&cfg, &mut Rng::new(1))?)?;
            (TrainEngine::with_lora(&cfg, b, t, base, &lora, adapter)?, specs)
        }
        other => bail!("unknown mode {other:?} (expected full, lora or qlora, optionally with -gc)"),
    };
    let engine = engine.with_precision(crate::train::precision_of(args.precision)?);
    let mut engine = if checkpoint { engine.checkpointed() } else { engine };
    let trainable: usize = specs.iter().map(|s| s.shape.iter().product::<usize>()).sum();
    // What the model holds from here on; the training peak is measured from this point.
    purge_freed_memory(false);
    let model_rss = current_rss_mb();
    reset_peak_rss();
    let adamw = AdamWConfig {
        lr: 1e-4,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    let mut opt = AdamW::for_lengths(adamw, specs.iter().map(|s| s.shape.iter().product()));
    let (mut dropout, mut rng) = (Rng::new(0), Rng::new(2));
    let step = Step {
        mode: Mode::Pretrain,
        lr: 1e-4,
        warmup: args.warmup,
        steps: args.steps,
    };
    let times = step.time(&mut engine, &specs, &mut opt, &mut dropout, || {
        random_batch(&mut rng, b, t, v)
    })?;
    let profile = profile_line(&times);
    let s = median(times);
    say!(
        "{}",
        serde_json::json!({
            "mode": mode,
            "engine_mb": engine.bytes() as f64 / 1e6,
            "trainable": trainable,
            "tokens_per_s": (b * t) as f64 / s,
            "step_s": s,
            "peak_rss_mb": peak_rss_mb(),
            "model_rss_mb": model_rss,
            "profile": profile,
        })
    );
    Ok(())
}

/// A bench model's shape (no dropout) and its LoRA targets: GPT-2 small's three module names,
/// every linear layer of SmolLM2-135M.
fn shape(model: &str) -> anyhow::Result<(GptConfig, Vec<String>)> {
    let (cfg, targets) = default_shape(model)?;
    Ok((cfg, targets.into_iter().map(String::from).collect()))
}

fn default_shape(model: &str) -> anyhow::Result<(GptConfig, Vec<&'static str>)> {
    match model {
        "gpt2" => Ok((
            GptConfig {
                dropout: 0.0,
                ..GptConfig::gpt2()
            },
            chatforge_model::layout::lora_modules(chatforge_model::Arch::Gpt2),
        )),
        "smollm2" => Ok((
            GptConfig::smollm2_135m(),
            chatforge_model::layout::lora_modules(chatforge_model::Arch::Llama),
        )),
        other => bail!("unknown model {other:?} (expected gpt2 or smollm2)"),
    }
}
