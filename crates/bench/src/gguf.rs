//! `bench gguf`: batch-1 decoding of one GGUF file by chatforge and by llama.cpp, side by side, on
//! SmolLM2-135M's shape (random weights), per weight type; with the weight traffic each achieves
//! against the machine's streaming bandwidth.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use chatforge_base::Rng;
use chatforge_export::GgufQuant;
use chatforge_infer::{Checkpoint, LoadedModel, Request, Sampling, WeightType, generate};
use chatforge_model::layout::Slot;
use chatforge_model::{GptConfig, init_weights};

use crate::{GgufBench, json_of, median, rayon_threads};

pub(crate) fn run(args: &GgufBench) -> anyhow::Result<()> {
    let cfg = GptConfig::smollm2_135m();
    let dir = tempfile::tempdir()?;
    let folder = model_folder(dir.path(), &cfg)?;
    let bandwidth = stream_gbps();
    say!(
        "SmolLM2-135M shape ({:.0} M parameters, random weights), batch 1, prompt {} + {} new tokens, greedy, {} thread(s); machine streaming read {:.1} GB/s",
        cfg.n_params() as f64 / 1e6,
        args.context,
        args.new,
        rayon_threads(),
        bandwidth
    );
    let src = chatforge_run::ModelSource::open(&folder, &Checkpoint::Best, None, None)?;
    let weights = src.merged()?;
    for quant in &args.quants {
        let q: GgufQuant = quant.parse()?;
        let file = dir.path().join(format!("smollm2-{quant}.gguf"));
        chatforge_export::write_gguf(&src, &weights, q, &file)?;
        // The decoder's nearest weight type: f16 files run as bf16 (same bytes per weight).
        let wt = match q {
            GgufQuant::F32 => WeightType::F32,
            GgufQuant::F16 => WeightType::Bf16,
            GgufQuant::Q8_0 => WeightType::Q8,
            GgufQuant::Q4_0 => bail!("q4_0 has no chatforge decoder weight type; use f32, f16 or q8_0"),
        };
        let ours = ours(&file, wt, args)?;
        let bytes = LoadedModel::open(&file, &Checkpoint::Best, None, wt)?
            .engine
            .weight_bytes() as f64;
        let mut line = format!(
            "{quant:<5} chatforge ({wt:?}) {ours:>6.1} tokens/s, {:.1} GB/s of weights ({:.0}% of streaming)",
            ours * bytes / 1e9,
            100.0 * ours * bytes / 1e9 / bandwidth
        );
        if let Some(py) = &args.reference_python {
            let mut cmd = Command::new(py);
            cmd.arg("scripts/reference/bench_decode_llamacpp.py")
                .arg(&file)
                .args([
                    "--context",
                    &args.context.to_string(),
                    "--new",
                    &args.new.to_string(),
                ])
                .args([
                    "--runs",
                    &args.runs.to_string(),
                    "--threads",
                    &rayon_threads().to_string(),
                ]);
            let r = json_of(&mut cmd, "scripts/reference/bench_decode_llamacpp.py")?;
            let theirs = r["tokens_per_s"].as_f64().unwrap_or(f64::NAN);
            line += &format!(
                " | llama.cpp {theirs:>6.1} tokens/s (chatforge {:.2}x)",
                ours / theirs
            );
        }
        say!("{line}");
    }
    Ok(())
}

/// chatforge's median decode rate (new tokens after the prompt's pass) on the GGUF file.
fn ours(file: &Path, wt: WeightType, args: &GgufBench) -> anyhow::Result<f64> {
    let model = LoadedModel::open(file, &Checkpoint::Best, None, wt)?;
    let mut rng = Rng::new(1);
    let req = Request {
        prompt: (0..args.context)
            .map(|_| rng.below(model.config.vocab_size as u64) as u32)
            .collect(),
        max_new_tokens: args.new,
        sampling: Sampling::greedy(),
        stop_ids: Vec::new(),
        stop_strings: Vec::new(),
    };
    let reqs = [req];
    generate(&model.engine, None, &reqs, 1, None, |_, _| {})?; // warm-up
    let mut rates = Vec::new();
    for _ in 0..args.runs {
        let out = generate(&model.engine, None, &reqs, 1, None, |_, _| {})?;
        rates.push(out[0].tokens_per_s);
    }
    Ok(median(rates))
}

/// An HF folder of `cfg` with random weights and a small byte-level BPE tokenizer (GGUF needs one;
/// the rows past it are placeholder tokens, never picked).
pub(crate) fn model_folder(dir: &Path, cfg: &GptConfig) -> anyhow::Result<std::path::PathBuf> {
    let folder = dir.join("model");
    std::fs::create_dir_all(&folder)?;
    let texts: Vec<String> = (0..400)
        .map(|i| {
            format!(
                "The kettle {i} boils the water for tea, and the cup {} is warm.",
                i * 7
            )
        })
        .collect();
    let tok = chatforge_tokenizer::train(
        texts.iter(),
        &chatforge_tokenizer::TrainOptions {
            vocab_size: 300,
            ..Default::default()
        },
    )?;
    std::fs::write(folder.join("tokenizer.json"), tok.to_json()?)?;
    std::fs::write(folder.join("config.json"), cfg.to_hf().to_string())?;
    let mut weights = init_weights(cfg, &mut Rng::new(0))?;
    // The embedding rows past the tokenizer's are zero, so (the head tied or not, its logits
    // there are zero) greedy decoding picks real tokens and replies have text.
    let known = tok.vocab_size() * cfg.n_embd;
    for slot in [Slot::TokenEmbedding, Slot::LmHead] {
        if let Some(t) = weights.get_mut(&slot.name(cfg.arch)) {
            t.data_mut()[known..].iter_mut().for_each(|x| *x = 0.0);
        }
    }
    let sorted: std::collections::BTreeMap<_, _> = weights.into_iter().collect();
    chatforge_model::save_weights(&sorted, &folder.join("model.safetensors"))
        .context("writing the bench model")?;
    Ok(folder)
}

/// The machine's streaming read bandwidth (GB/s): summing a buffer far larger than the caches, on
/// every thread with sixteen vectorised accumulators each, best of five passes.
fn stream_gbps() -> f64 {
    use chatforge_model::kernels::simd::vectorized;
    use rayon::prelude::*;
    let buf = vec![1.0f32; 1 << 28]; // 1 GiB
    let mut best = 0f64;
    for _ in 0..5 {
        let t = Instant::now();
        let s: f32 = buf
            .par_chunks(1 << 16)
            .map(|c| {
                vectorized(|| {
                    let mut acc = [0f32; 16];
                    for ch in c.chunks_exact(16) {
                        for i in 0..16 {
                            acc[i] += ch[i];
                        }
                    }
                    acc.iter().sum::<f32>()
                })
            })
            .sum();
        let gbps = (buf.len() * 4) as f64 / t.elapsed().as_secs_f64() / 1e9;
        std::hint::black_box(s);
        best = best.max(gbps);
    }
    best
}
