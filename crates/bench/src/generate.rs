//! `bench generate`: decoding throughput at several contexts and batch sizes, beside
//! transformers' `generate`.

use std::process::Command;

use anyhow::bail;
use chatforge_base::Rng;
use chatforge_infer::{Engine, Request, Sampling, generate};
use chatforge_model::{GptConfig, init_weights};

use crate::{GenerateBench, json_of, median, rayon_threads};

pub(crate) fn run(args: &GenerateBench) -> anyhow::Result<()> {
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
        let weights = init_weights(&cfg, &mut Rng::new(0))?;
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
