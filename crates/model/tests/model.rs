//! The GPT's forward and backward on tiny configs, checked against itself in other arrangements.

#![allow(clippy::unwrap_used)] // tests: a failure should panic with its message

use candle_core::{D, DType, Device, Tensor};
use chatforge_base::Rng;
use chatforge_model::{AttnMask, Gpt, GptConfig, Params, init_weights, ops};

fn tiny() -> (GptConfig, Params, Gpt) {
    let cfg = GptConfig {
        n_ctx: 16,
        ..GptConfig::tiny(50)
    };
    let w = init_weights(&cfg, &mut Rng::new(1), &Device::Cpu).unwrap();
    let params = Params::from_weights(&cfg, w).unwrap();
    let gpt = Gpt::new(&cfg, params.var_builder(&Device::Cpu)).unwrap();
    (cfg, params, gpt)
}

fn ids(v: &[u32]) -> Tensor {
    Tensor::new(v, &Device::Cpu).unwrap().unsqueeze(0).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(D::Minus1)
        .unwrap()
        .to_scalar()
        .unwrap()
}

#[test]
fn every_parameter_gets_a_gradient() {
    for bias in [true, false] {
        for tie in [true, false] {
            let cfg = GptConfig {
                n_ctx: 16,
                bias,
                tie_embeddings: tie,
                ..GptConfig::tiny(50)
            };
            let params =
                Params::from_weights(&cfg, init_weights(&cfg, &mut Rng::new(2), &Device::Cpu).unwrap())
                    .unwrap();
            let gpt = Gpt::new(&cfg, params.var_builder(&Device::Cpu)).unwrap();
            let x = Tensor::new(&[[1u32, 5, 9, 3, 7, 2], [4, 4, 8, 1, 0, 6]], &Device::Cpu).unwrap();
            let pos = Gpt::positions(2, 6, 0, &Device::Cpu).unwrap();
            let logits = gpt.forward(&x, &pos, &AttnMask::Causal, None, None).unwrap();
            let targets = Tensor::new(&[5u32, 9, 3, 7, 2, 1, 4, 8, 1, 0, 6, 3], &Device::Cpu).unwrap();
            let weights = Tensor::ones(12, DType::F32, &Device::Cpu).unwrap();
            let loss = ops::cross_entropy(&logits.reshape((12, 50)).unwrap(), &targets, &weights).unwrap();
            let grads = loss.backward().unwrap();
            for (spec, var) in &params.vars {
                let g = grads
                    .get(var.as_tensor())
                    .unwrap_or_else(|| panic!("no gradient for {}", spec.name));
                let norm: f32 = g.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
                assert!(
                    norm > 0.0,
                    "zero gradient for {} (bias {bias}, tied {tie})",
                    spec.name
                );
            }
        }
    }
}

#[test]
fn initial_loss_is_near_uniform() {
    let (_, _, gpt) = tiny();
    let x = ids(&[1, 2, 3, 4, 5, 6, 7, 8]);
    let logits = gpt
        .forward(
            &x,
            &Gpt::positions(1, 8, 0, &Device::Cpu).unwrap(),
            &AttnMask::Causal,
            None,
            None,
        )
        .unwrap();
    let t = Tensor::new(&[2u32, 3, 4, 5, 6, 7, 8, 9], &Device::Cpu).unwrap();
    let loss: f32 = ops::cross_entropy(
        &logits.squeeze(0).unwrap(),
        &t,
        &Tensor::ones(8, DType::F32, &Device::Cpu).unwrap(),
    )
    .unwrap()
    .to_scalar()
    .unwrap();
    assert!(
        (loss - 50f32.ln()).abs() < 0.1,
        "loss {loss}, ln V = {}",
        50f32.ln()
    );
}

#[test]
fn kv_cache_gives_the_same_logits() {
    let (cfg, _, gpt) = tiny();
    let seq = [3u32, 14, 15, 9, 26, 5, 35];
    let full = gpt
        .forward(
            &ids(&seq),
            &Gpt::positions(1, 7, 0, &Device::Cpu).unwrap(),
            &AttnMask::Causal,
            None,
            None,
        )
        .unwrap();
    let mut cache = chatforge_model::KvCache::new(cfg.n_layer);
    // A prompt of 4, then one token at a time.
    let mut parts = vec![
        gpt.forward(
            &ids(&seq[..4]),
            &Gpt::positions(1, 4, 0, &Device::Cpu).unwrap(),
            &AttnMask::Causal,
            Some(&mut cache),
            None,
        )
        .unwrap(),
    ];
    for (i, &tok) in seq[4..].iter().enumerate() {
        let pos = Gpt::positions(1, 1, 4 + i, &Device::Cpu).unwrap();
        parts.push(
            gpt.forward(&ids(&[tok]), &pos, &AttnMask::Causal, Some(&mut cache), None)
                .unwrap(),
        );
    }
    assert_eq!(cache.len(), 7);
    let stepped = Tensor::cat(&parts, 1).unwrap();
    assert!(max_diff(&full, &stepped) < 1e-5, "{}", max_diff(&full, &stepped));
}

#[test]
fn packed_rows_keep_conversations_apart() {
    let (_, _, gpt) = tiny();
    let (a, b) = ([4u32, 8, 15, 16], [23u32, 42, 7]);
    let alone = |s: &[u32]| {
        let pos = Gpt::positions(1, s.len(), 0, &Device::Cpu).unwrap();
        gpt.forward(&ids(s), &pos, &AttnMask::Causal, None, None).unwrap()
    };
    let row: Vec<u32> = a.iter().chain(&b).copied().collect();
    let positions = Tensor::new(&[0u32, 1, 2, 3, 0, 1, 2], &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let mask = AttnMask::packed(&[0, 0, 0, 0, 1, 1, 1], 1, 7, &Device::Cpu).unwrap();
    let packed = gpt.forward(&ids(&row), &positions, &mask, None, None).unwrap();
    assert!(max_diff(&packed.narrow(1, 0, 4).unwrap(), &alone(&a)) < 1e-5);
    assert!(max_diff(&packed.narrow(1, 4, 3).unwrap(), &alone(&b)) < 1e-5);
    // Without the mask the second conversation would see the first.
    let causal = gpt
        .forward(&ids(&row), &positions, &AttnMask::Causal, None, None)
        .unwrap();
    assert!(max_diff(&causal.narrow(1, 4, 3).unwrap(), &alone(&b)) > 1e-3);
}

#[test]
fn save_and_load_round_trip() {
    let (cfg, params, gpt) = tiny();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    chatforge_model::save_weights(&params.tensors(), &path).unwrap();
    let w = chatforge_model::load_weights(dir.path(), &cfg, &Device::Cpu).unwrap();
    let again = Gpt::new(
        &cfg,
        candle_nn::VarBuilder::from_tensors(w, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let x = ids(&[1, 2, 3]);
    let pos = Gpt::positions(1, 3, 0, &Device::Cpu).unwrap();
    let a = gpt.forward(&x, &pos, &AttnMask::Causal, None, None).unwrap();
    let b = again.forward(&x, &pos, &AttnMask::Causal, None, None).unwrap();
    assert_eq!(max_diff(&a, &b), 0.0);
    // A checkpoint of another shape is refused with the tensor named.
    let other = GptConfig { n_embd: 64, ..cfg };
    let err = chatforge_model::load_weights(dir.path(), &other, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.safetensors") && err.contains("transformer.wte.weight has shape [50, 32]"),
        "{err}"
    );
}

/// `save_f32_tensors` (how checkpoints write from the engine's flat buffers) writes a file that
/// safetensors readers take, each tensor's values under its own name whatever the order given;
/// data of the wrong length fails, names the tensor and leaves no file behind.
#[test]
fn streamed_safetensors_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.safetensors");
    let tensors = vec![
        ("b.weight".to_string(), vec![3, 5]),
        ("a.bias".to_string(), vec![7]),
        ("c".to_string(), vec![2, 1, 3]),
    ];
    let values: Vec<Vec<f32>> = tensors
        .iter()
        .enumerate()
        .map(|(i, (_, s))| {
            (0..s.iter().product::<usize>())
                .map(|j| i as f32 * 100.0 + j as f32 * 0.5 - 1.0)
                .collect()
        })
        .collect();
    chatforge_model::save_f32_tensors(&path, &tensors, |i| {
        Ok(std::borrow::Cow::Borrowed(values[i].as_slice()))
    })
    .unwrap();
    let back = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    assert_eq!(back.len(), 3);
    for ((name, shape), v) in tensors.iter().zip(&values) {
        let t = &back[name];
        assert_eq!(t.dims(), shape.as_slice(), "{name}");
        assert_eq!(&t.flatten_all().unwrap().to_vec1::<f32>().unwrap(), v, "{name}");
    }
    // The header is the format's: its length, then JSON padded to 8 bytes, then exactly the data.
    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!(n % 8, 0);
    assert_eq!(bytes.len(), 8 + n + 4 * (15 + 7 + 6));

    let bad = dir.path().join("bad.safetensors");
    let err = chatforge_model::save_f32_tensors(&bad, &tensors, |i| {
        Ok(std::borrow::Cow::Owned(values[i][1..].to_vec()))
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("bad.safetensors") && err.contains("a.bias: 6 values for shape [7]"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "only the good file is left"
    );
}

/// Each trainable variable's gradient in `g`, in `params.vars` order.
fn take(params: &Params, g: &candle_core::backprop::GradStore) -> Vec<Option<Tensor>> {
    params
        .vars
        .iter()
        .map(|(_, v)| g.get(v.as_tensor()).cloned())
        .collect()
}

/// Gradients of every trainable variable, by name, summed over partial backward passes.
fn grads_by_name(params: &Params, stores: &[Vec<Option<Tensor>>]) -> Vec<(String, Tensor)> {
    params
        .vars
        .iter()
        .enumerate()
        .map(|(i, (spec, _))| {
            let mut sum: Option<Tensor> = None;
            for g in stores {
                if let Some(t) = &g[i] {
                    sum = Some(match sum {
                        Some(s) => (s + t).unwrap(),
                        None => t.clone(),
                    });
                }
            }
            (
                spec.name.clone(),
                sum.unwrap_or_else(|| panic!("no gradient for {}", spec.name)),
            )
        })
        .collect()
}

/// Gradient checkpointing recomputes blocks in backward: the gradients, the loss and the dropout
/// stream must be those of the ordinary backward (dropout on, a packed mask, tied and untied heads,
/// and a LoRA model whose base is frozen).
#[test]
fn checkpointed_backward_gives_the_same_gradients() {
    use chatforge_model::{Dropout, LoraConfig};
    let dev = Device::Cpu;
    let x = Tensor::new(&[[1u32, 5, 9, 3, 7, 2], [4, 4, 8, 1, 0, 6]], &dev).unwrap();
    let pos = Tensor::new(&[[0u32, 1, 2, 0, 1, 2], [0, 1, 2, 3, 4, 5]], &dev).unwrap();
    let mask = AttnMask::packed(&[0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0], 2, 6, &dev).unwrap();
    let targets = Tensor::new(&[5u32, 9, 3, 7, 2, 1, 4, 8, 1, 0, 6, 3], &dev).unwrap();
    let weights = Tensor::new(&[1f32, 1., 0., 1., 1., 1., 0., 1., 1., 1., 1., 1.], &dev).unwrap();
    let loss_of = |logits: &Tensor| ops::cross_entropy(&logits.reshape((12, 50))?, &targets, &weights);
    for (tie, lora) in [(true, false), (false, false), (true, true)] {
        let cfg = GptConfig {
            n_ctx: 16,
            tie_embeddings: tie,
            dropout: 0.2,
            ..GptConfig::tiny(50)
        };
        let base = init_weights(&cfg, &mut Rng::new(3), &dev).unwrap();
        let (params, gpt) = if lora {
            let l = LoraConfig {
                dropout: 0.1,
                targets: vec!["c_attn".into(), "c_proj".into(), "c_fc".into()],
                ..LoraConfig::default()
            };
            let params =
                Params::from_adapter(&cfg, &l, l.init(&cfg, &mut Rng::new(4), &dev).unwrap()).unwrap();
            // B starts at zero, which would leave A without gradient: give B values.
            for (i, (_, var)) in params.vars.iter().enumerate() {
                let t = var.as_tensor();
                let r = (Tensor::randn(0f32, 0.1, t.shape(), &dev).unwrap() * (i + 1) as f64).unwrap();
                var.set(&r).unwrap();
            }
            let mut ts = base;
            ts.extend(
                params
                    .vars
                    .iter()
                    .map(|(s, v)| (s.name.clone(), v.as_tensor().clone())),
            );
            let vb = candle_nn::VarBuilder::from_tensors(ts, DType::F32, &dev);
            let gpt = Gpt::with_lora(&cfg, vb, Some(&l)).unwrap();
            (params, gpt)
        } else {
            let params = Params::from_weights(&cfg, base).unwrap();
            let gpt = Gpt::new(&cfg, params.var_builder(&dev)).unwrap();
            (params, gpt)
        };

        let mut d1 = Dropout {
            p: 0.2,
            rng: Rng::new(9),
        };
        let logits = gpt.forward(&x, &pos, &mask, None, Some(&mut d1)).unwrap();
        let loss1 = loss_of(&logits).unwrap();
        let plain = grads_by_name(&params, &[take(&params, &loss1.backward().unwrap())]);

        let mut d2 = Dropout {
            p: 0.2,
            rng: Rng::new(9),
        };
        let mut stores = Vec::new();
        let loss2 = gpt
            .backward_checkpointed(&x, &pos, &mask, Some(&mut d2), loss_of, &mut |g| {
                stores.push(take(&params, g));
                Ok(())
            })
            .unwrap();
        let ckpt = grads_by_name(&params, &stores);

        let (l1, l2): (f32, f32) = (loss1.to_scalar().unwrap(), loss2.to_scalar().unwrap());
        assert!(
            (l1 - l2).abs() < 1e-6,
            "loss {l1} vs {l2} (tied {tie}, lora {lora})"
        );
        assert_eq!(
            d1.rng.state(),
            d2.rng.state(),
            "the dropout stream must end in the same place"
        );
        for ((name, a), (_, b)) in plain.iter().zip(&ckpt) {
            let scale = a
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(scale > 0.0, "{name}: zero gradient");
            let d = max_diff(a, b);
            assert!(
                d <= 1e-5 * scale.max(1.0),
                "{name}: checkpointed gradient differs by {d} (tied {tie}, lora {lora})"
            );
        }
    }
}
