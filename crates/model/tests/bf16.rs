//! The engine with bf16 products (`TrainEngine::with_precision`) against the same engine in f32:
//! the loss and every gradient close for full training, LoRA and QLoRA, GPT-2 and the Llama
//! family. The products run on this CPU's bf16 tile: AVX-512 BF16 where it has it, the emulated
//! tile (the same rounded inputs) elsewhere, so this runs on every machine; the tiles' own
//! numbers are tested against f64 sums in `kernels::bf16`.

#![allow(clippy::unwrap_used)] // tests: a failure should panic with its message

use chatforge_base::Rng;
use chatforge_model::engine::{NextTokenBatch, TrainEngine};
use chatforge_model::quant::QuantKind;
use chatforge_model::{GptConfig, LoraConfig, Precision, init_weights, param_specs, take_flat};

/// Largest difference relative to the reference's largest magnitude.
fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// The loss and gradients of one step of `cfg` (with `lora`, its adapter) in `prec`.
fn step(cfg: &GptConfig, lora: Option<&LoraConfig>, prec: Precision) -> (f64, Vec<f32>) {
    let (b, t) = (2, 32);
    let mut rng = Rng::new(9);
    let rows: Vec<Vec<u32>> = (0..b)
        .map(|_| (0..t).map(|_| rng.below(cfg.vocab_size as u64) as u32).collect())
        .collect();
    let batch = NextTokenBatch::new(&rows);
    let mut weights = init_weights(cfg, &mut Rng::new(5)).unwrap();
    let base = take_flat(&param_specs(cfg), &mut weights).unwrap();
    let engine = match lora {
        None => TrainEngine::new(cfg, b, t, base).unwrap(),
        Some(l) => {
            let mut adapter = l.init(cfg, &mut Rng::new(4)).unwrap();
            // Adapters start with B = 0; a non-zero B gives A a gradient too.
            for (name, w) in adapter.iter_mut() {
                if name.contains("lora_B") {
                    *w = chatforge_model::Tensor::new(
                        w.dims(),
                        w.data()
                            .iter()
                            .enumerate()
                            .map(|(i, _)| ((i % 7) as f32 - 3.0) * 0.01)
                            .collect(),
                    )
                    .unwrap();
                }
            }
            let flat = take_flat(&l.param_specs(cfg), &mut adapter).unwrap();
            TrainEngine::with_lora(cfg, b, t, base, l, flat).unwrap()
        }
    };
    let mut engine = engine.with_precision(prec);
    assert_eq!(engine.precision(), prec);
    engine.zero_grad();
    let loss = engine
        .forward_backward(&batch.batch(), 1.0, &mut Rng::new(1))
        .unwrap();
    (loss, engine.grads.clone())
}

#[test]
fn bf16_steps_stay_close_to_f32_ones() {
    let gpt2 = GptConfig {
        n_embd: 64,
        n_inner: 256,
        ..GptConfig::tiny(97)
    };
    let llama = GptConfig {
        n_embd: 64,
        ..GptConfig::llama_tiny(97)
    };
    let lora = |targets: &[&str], quant| LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        targets: targets.iter().map(|s| s.to_string()).collect(),
        quant,
    };
    let cases = [
        ("gpt2 full", &gpt2, None),
        (
            "gpt2 lora",
            &gpt2,
            Some(lora(&["c_attn", "c_proj", "c_fc"], None)),
        ),
        ("llama full", &llama, None),
        ("llama lora", &llama, Some(lora(&["all-linear"], None))),
        (
            "llama qlora q4",
            &llama,
            Some(lora(&["all-linear"], Some(QuantKind::Q4))),
        ),
    ];
    for (what, cfg, lora) in cases {
        let (l32, g32) = step(cfg, lora.as_ref(), Precision::F32);
        let (l16, g16) = step(cfg, lora.as_ref(), Precision::Bf16);
        let (dl, dg) = ((l16 - l32).abs() / l32, rel_diff(&g16, &g32));
        eprintln!("{what}: loss {l32:.5} vs {l16:.5} ({dl:.1e}), gradients {dg:.1e}");
        assert!(dl < 1e-3, "{what}: loss {l16} in bf16 vs {l32}");
        assert!(dg < 1.5e-2, "{what}: gradients differ by {dg} of the largest");
        assert!(g16 != g32, "{what}: bf16 changed nothing");
    }
}
