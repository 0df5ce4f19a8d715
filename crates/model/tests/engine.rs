//! The training engine (plain buffers, hand-written backward) against the oracle (the model as
//! plain candle ops under autograd): the same loss and every gradient, for causal and packed batches, weighted losses,
//! both GELUs, with and without biases, tied and untied heads, with and without dropout (the
//! same masks from the same stream, which both leave at the same place).

#![allow(clippy::unwrap_used)] // tests: a failure should panic with its message

use chatforge_base::Rng;
use chatforge_model::engine::{StepBatch, TrainEngine};
use chatforge_model::{Activation, GptConfig, Tensor, Weights, init_weights, param_specs, take_flat};
use chatforge_oracle as oracle;

/// `t` scaled by `k`.
fn scaled(t: &Tensor, k: f32) -> Tensor {
    Tensor::new(t.dims(), t.data().iter().map(|x| x * k).collect()).unwrap()
}

/// The dropout stream's seed in these tests.
const DROP_SEED: u64 = 77;

/// Largest difference relative to the reference's largest magnitude.
fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// Gradient checkpointing recomputes each block's activations in backward: the same loss, the
/// same gradients bit for bit, the dropout stream left in the same place, in less memory.
fn same_when_checkpointed(
    fresh: TrainEngine,
    plain: &TrainEngine,
    batch: &StepBatch<'_>,
    scale: f32,
    (loss, end): (f64, &Rng),
) {
    let mut ck = fresh.checkpointed();
    assert!(ck.is_checkpointed());
    ck.zero_grad();
    let mut stream = Rng::new(DROP_SEED);
    let got = ck.forward_backward(batch, scale, &mut stream).unwrap();
    assert_eq!(got.to_bits(), loss.to_bits(), "checkpointed loss {got} vs {loss}");
    assert_eq!(&stream, end, "the stream ends in the same place");
    let differ = ck
        .grads
        .iter()
        .zip(&plain.grads)
        .filter(|(x, y)| x.to_bits() != y.to_bits())
        .count();
    assert_eq!(differ, 0, "{differ} gradients differ when checkpointed");
    if plain.config().n_layer > 1 {
        assert!(
            ck.bytes() < plain.bytes(),
            "{} vs {} bytes",
            ck.bytes(),
            plain.bytes()
        );
    }
}

fn check(cfg: &GptConfig, segments: &[u32], weights: &[u8], scale: f32) {
    let (b, t) = (2, segments.len() / 2);
    let mut rng = Rng::new(11);
    let inputs: Vec<u32> = (0..b * t)
        .map(|_| (rng.next_f64() * cfg.vocab_size as f64) as u32)
        .collect();
    let targets: Vec<u32> = (0..b * t)
        .map(|_| (rng.next_f64() * cfg.vocab_size as f64) as u32)
        .collect();
    // Positions restart with each segment, as the packing sampler writes them.
    let positions: Vec<u32> = (0..b * t)
        .map(|i| {
            let row = i / t * t;
            let start = (row..=i)
                .rev()
                .find(|&j| j == row || segments[j - 1] != segments[i])
                .unwrap();
            (i - start) as u32
        })
        .collect();

    // The reference: the oracle, under candle's autograd.
    let mut w = init_weights(cfg, &mut Rng::new(5)).unwrap();
    // Larger query and key weights sharpen attention, so its backward matters to every gradient.
    for (name, t) in w.iter_mut() {
        if name.ends_with("c_attn.weight") {
            *t = scaled(t, 10.0);
        }
    }
    let batch = StepBatch {
        b,
        t,
        inputs: &inputs,
        targets: &targets,
        positions: &positions,
        segments,
        weights,
    };
    let mut reference_stream = Rng::new(DROP_SEED);
    let want = oracle::reference(
        cfg,
        None,
        &Weights::new(),
        &w,
        &batch,
        f64::from(scale),
        Some(&mut reference_stream),
    );
    let want_loss = want.loss;

    // The engine, from the same weights.
    let specs = param_specs(cfg);
    let flat = take_flat(&specs, &mut w.clone()).unwrap();
    let mut engine = TrainEngine::new(cfg, b, t, flat.clone()).unwrap();
    engine.zero_grad();
    let mut stream = Rng::new(DROP_SEED);
    let got_loss = engine.forward_backward(&batch, scale, &mut stream).unwrap();
    same_when_checkpointed(
        TrainEngine::new(cfg, b, t, flat).unwrap(),
        &engine,
        &batch,
        scale,
        (got_loss, &stream),
    );
    assert!(
        (got_loss as f32 - want_loss).abs() < 1e-5 * want_loss.abs().max(1.0),
        "loss {got_loss} vs {want_loss}"
    );
    assert_eq!(
        stream, reference_stream,
        "the engine leaves the stream where autograd does"
    );
    for (spec, &(off, len)) in specs.iter().zip(&engine.offsets) {
        let got = &engine.grads[off..off + len];
        let d = rel_diff(got, &want.grads[&spec.name]);
        assert!(d < 1e-4, "{}: gradient differs by {d} (relative)", spec.name);
    }
    // A second micro-batch (with the same masks) adds to the gradients.
    let before = engine.grads.clone();
    engine
        .forward_backward(&batch, scale, &mut Rng::new(DROP_SEED))
        .unwrap();
    let d = rel_diff(
        &engine.grads,
        &before.iter().map(|g| 2.0 * g).collect::<Vec<f32>>(),
    );
    assert!(d < 1e-5, "accumulation differs by {d}");
}

#[test]
fn engine_matches_autograd() {
    let base = GptConfig {
        n_ctx: 16,
        n_layer: 2,
        n_head: 2,
        n_embd: 16,
        n_inner: 64,
        ..GptConfig::tiny(37)
    };
    let causal = [0u32; 24];
    let mut packed = [0u32; 24];
    packed[5..9].fill(1);
    packed[9..12].fill(2);
    packed[12 + 7..].fill(1);
    let all = [1u8; 24];
    let mut some = [1u8; 24];
    some[..4].fill(0);
    some[13] = 0;
    check(&base, &causal, &all, 1.0);
    // A segment id that comes back after another (masked position by position).
    let mut back = packed;
    back[2..4].fill(3);
    check(&base, &back, &some, 1.0);
    check(&base, &packed, &some, 0.5);
    check(
        &GptConfig {
            activation: Activation::GeluErf,
            tie_embeddings: false,
            ..base.clone()
        },
        &packed,
        &all,
        1.0,
    );
    check(
        &GptConfig {
            bias: false,
            ..base.clone()
        },
        &causal,
        &some,
        0.25,
    );
    // Rows longer than an attention tile (64 rows): several tiles per segment, a segment that
    // starts inside a tile, and a whole causal row; with and without attention dropout.
    let long = GptConfig {
        n_ctx: 160,
        ..base.clone()
    };
    let mut segs = vec![0u32; 300];
    segs[70..140].fill(1);
    segs[140..150].fill(2);
    check(&long, &segs, &[1u8; 300], 1.0);
    check(&GptConfig { dropout: 0.2, ..long }, &segs, &[1u8; 300], 1.0);
    // Dropout: on the embeddings, the attention weights and both residual branches.
    let dropout = GptConfig {
        dropout: 0.2,
        ..base.clone()
    };
    check(&dropout, &causal, &all, 1.0);
    check(&dropout, &packed, &some, 0.5);
    check(
        &GptConfig {
            tie_embeddings: false,
            ..dropout.clone()
        },
        &back,
        &some,
        1.0,
    );
}

#[test]
fn engine_refuses_what_it_cannot_do() {
    let cfg = GptConfig {
        n_ctx: 8,
        ..GptConfig::tiny(11)
    };
    let n: usize = param_specs(&cfg)
        .iter()
        .map(|s| s.shape.iter().product::<usize>())
        .sum();
    assert!(
        TrainEngine::new(&cfg, 1, 9, vec![0.0; n]).is_err(),
        "longer than the context"
    );
    assert!(
        TrainEngine::new(&cfg, 1, 8, vec![0.0; n - 1]).is_err(),
        "wrong parameter count"
    );
    let dropout = GptConfig {
        dropout: 0.1,
        ..cfg.clone()
    };
    let mut e = TrainEngine::new(&dropout, 1, 4, vec![0.01; n]).unwrap();
    let ids = [1u32, 2, 3, 11];
    let z = [0u32; 4];
    let w = [1u8; 4];
    let batch = StepBatch {
        b: 1,
        t: 4,
        inputs: &ids,
        targets: &ids,
        positions: &z,
        segments: &z,
        weights: &w,
    };
    let mut stream = Rng::new(0);
    let err = e
        .forward_backward(&batch, 1.0, &mut stream)
        .unwrap_err()
        .to_string();
    assert!(err.contains("11"), "{err}");
    let none = [0u8; 4];
    let ok_ids = [1u32, 2, 3, 4];
    let batch = StepBatch {
        inputs: &ok_ids,
        targets: &ok_ids,
        weights: &none,
        ..batch
    };
    assert!(e.forward_backward(&batch, 1.0, &mut stream).unwrap().is_nan());
    assert!(e.grads.iter().all(|&g| g == 0.0));
    assert_eq!(stream, Rng::new(0), "no micro-batch, no masks drawn");
}

/// LoRA on the engine: the adapters' gradients (and the loss) as candle's autograd computes them
/// through the oracle on the frozen base, for several target sets, QLoRA (q4, q8) on a
/// block-quantised base, and dropout on the adapters' inputs (with and without the model's).
#[test]
fn engine_lora_matches_autograd() {
    use chatforge_model::LoraConfig;
    let cfg = GptConfig {
        n_ctx: 16,
        n_layer: 2,
        n_head: 2,
        n_embd: 16,
        n_inner: 64,
        ..GptConfig::tiny(37)
    };
    let (b, t) = (2, 12);
    let mut rng = Rng::new(21);
    let inputs: Vec<u32> = (0..b * t).map(|_| rng.below(37) as u32).collect();
    let targets: Vec<u32> = (0..b * t).map(|_| rng.below(37) as u32).collect();
    let positions: Vec<u32> = (0..b).flat_map(|_| 0..t as u32).collect();
    let mut segments = vec![0u32; b * t];
    segments[t + 6..].fill(1);
    let positions: Vec<u32> = positions
        .iter()
        .enumerate()
        .map(|(i, &p)| if i >= t + 6 { p - 6 } else { p })
        .collect();
    let mut weights = vec![1u8; b * t];
    weights[..3].fill(0);
    use chatforge_model::quant::QuantKind;
    for (targets_set, quant, lora_p, model_p) in [
        (vec!["c_attn"], None, 0.0, 0.0),
        (vec!["c_attn", "c_proj", "c_fc"], None, 0.0, 0.0),
        (vec!["c_attn", "c_proj", "c_fc"], Some(QuantKind::Q4), 0.0, 0.0),
        (vec!["c_proj"], Some(QuantKind::Q8), 0.0, 0.0),
        (vec!["c_attn", "c_proj", "c_fc"], None, 0.3, 0.1),
        (vec!["c_proj", "c_fc"], Some(QuantKind::Q8), 0.2, 0.0),
    ] {
        let cfg = GptConfig {
            dropout: model_p,
            ..cfg.clone()
        };
        let lora = LoraConfig {
            rank: 3,
            alpha: 6.0,
            dropout: lora_p,
            targets: targets_set.iter().map(|s| s.to_string()).collect(),
            quant,
        };
        let mut base = init_weights(&cfg, &mut Rng::new(5)).unwrap();
        for (name, w) in base.iter_mut() {
            if name.ends_with("c_attn.weight") {
                *w = scaled(w, 10.0);
            }
        }
        let mut adapter = lora.init(&cfg, &mut Rng::new(4)).unwrap();
        // B starts at zero, which would leave A without gradient: give B values.
        let ad_specs = lora.param_specs(&cfg);
        let mut noise = Rng::new(9);
        for (i, s) in ad_specs.iter().enumerate() {
            let t = adapter.get_mut(&s.name).unwrap();
            let k = (1 + i % 3) as f64;
            for x in t.data_mut() {
                *x = (noise.normal() * 0.3 * k) as f32;
            }
        }
        let batch = StepBatch {
            b,
            t,
            inputs: &inputs,
            targets: &targets,
            positions: &positions,
            segments: &segments,
            weights: &weights,
        };
        let mut reference_stream = Rng::new(DROP_SEED);
        let want = oracle::reference(
            &cfg,
            Some(&lora),
            &base,
            &adapter,
            &batch,
            1.0,
            Some(&mut reference_stream),
        );
        let want_loss = want.loss;
        let base_flat = take_flat(&param_specs(&cfg), &mut base.clone()).unwrap();
        let ad_flat = take_flat(&ad_specs, &mut adapter.clone()).unwrap();
        let mut engine =
            TrainEngine::with_lora(&cfg, b, t, base_flat.clone(), &lora, ad_flat.clone()).unwrap();
        engine.zero_grad();
        let mut stream = Rng::new(DROP_SEED);
        let got_loss = engine.forward_backward(&batch, 1.0, &mut stream).unwrap();
        same_when_checkpointed(
            TrainEngine::with_lora(&cfg, b, t, base_flat, &lora, ad_flat).unwrap(),
            &engine,
            &batch,
            1.0,
            (got_loss, &stream),
        );
        assert!(
            (got_loss as f32 - want_loss).abs() < 1e-5,
            "loss {got_loss} vs {want_loss}"
        );
        assert_eq!(
            stream, reference_stream,
            "{targets_set:?}: the stream ends in the same place"
        );
        if lora_p > 0.0 {
            assert_ne!(stream, Rng::new(DROP_SEED), "adapter dropout draws masks");
        }
        assert_eq!(engine.offsets.len(), ad_specs.len());
        for (spec, &(off, len)) in ad_specs.iter().zip(&engine.offsets) {
            let d = rel_diff(&engine.grads[off..off + len], &want.grads[&spec.name]);
            assert!(
                d < 1e-4,
                "{:?} {}: gradient differs by {d}",
                targets_set,
                spec.name
            );
        }
    }
}

/// Validation on the engine: the training loss without dropout, no gradient, and an epoch's
/// short last batch padded with rows that carry no loss.
#[test]
fn eval_loss_is_the_loss_without_dropout_and_pads_short_batches() {
    let cfg = GptConfig {
        n_ctx: 16,
        n_layer: 2,
        n_head: 2,
        n_embd: 16,
        n_inner: 64,
        dropout: 0.3,
        ..GptConfig::tiny(37)
    };
    let plain = GptConfig {
        dropout: 0.0,
        ..cfg.clone()
    };
    let (b, t) = (2, 12);
    let mut rng = Rng::new(3);
    let inputs: Vec<u32> = (0..b * t).map(|_| rng.below(37) as u32).collect();
    let targets: Vec<u32> = (0..b * t).map(|_| rng.below(37) as u32).collect();
    let positions: Vec<u32> = (0..b).flat_map(|_| 0..t as u32).collect();
    let segments = vec![0u32; b * t];
    let mut weights = vec![1u8; b * t];
    weights[..5].fill(0);
    let w = init_weights(&cfg, &mut Rng::new(5)).unwrap();
    let flat = take_flat(&param_specs(&cfg), &mut w.clone()).unwrap();
    let rows = |r: std::ops::Range<usize>| StepBatch {
        b: r.len(),
        t,
        inputs: &inputs[r.start * t..r.end * t],
        targets: &targets[r.start * t..r.end * t],
        positions: &positions[r.start * t..r.end * t],
        segments: &segments[r.start * t..r.end * t],
        weights: &weights[r.start * t..r.end * t],
    };
    let mut engine = TrainEngine::new(&cfg, b, t, flat.clone()).unwrap();
    engine.zero_grad();
    let (sum, n) = engine.eval_loss(&rows(0..2)).unwrap();
    assert_eq!(n, b * t - 5);
    assert!(engine.grads.iter().all(|&g| g == 0.0), "no gradient");
    let mut reference = TrainEngine::new(&plain, b, t, flat.clone()).unwrap();
    let want = reference
        .forward_backward(&rows(0..2), 1.0, &mut Rng::new(1))
        .unwrap();
    assert!(
        (sum / n as f64 - want).abs() < 1e-6,
        "{} vs {want}",
        sum / n as f64
    );
    // The second row alone, in the two-row engine, against a one-row engine.
    let (sum1, n1) = engine.eval_loss(&rows(1..2)).unwrap();
    assert_eq!(n1, t);
    let mut one = TrainEngine::new(&plain, 1, t, flat).unwrap();
    let want1 = one.forward_backward(&rows(1..2), 1.0, &mut Rng::new(1)).unwrap();
    assert!(
        (sum1 / t as f64 - want1).abs() < 1e-6,
        "{} vs {want1}",
        sum1 / t as f64
    );
    // And it is not the loss with dropout.
    let mut dropped = TrainEngine::new(&cfg, b, t, engine.params.clone()).unwrap();
    let with_dropout = dropped
        .forward_backward(&rows(0..2), 1.0, &mut Rng::new(1))
        .unwrap();
    assert!((with_dropout - want).abs() > 1e-4);
}
