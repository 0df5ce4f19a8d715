//! The test oracle: GPT-2 written as plain candle tensor ops (no fused kernels, no hand-written
//! backward) and differentiated by candle's autograd. It shares nothing with the training engine
//! or the decoder but the layout's names, the config and the quantisation of QLoRA's frozen base,
//! so agreement between them is evidence, not tautology. Tests only: nothing in the product
//! depends on it, and so nothing in the product depends on candle.
//!
//! Dropout masks are drawn from the caller's stream in the order of the forward pass (embeddings;
//! per block: the adapters' inputs, attention weights, the attention output, the MLP output), the
//! order the engine draws them in.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: a failure should panic

use std::collections::HashMap;

use candle_core::{D, DType, Device, Tensor, Var};
use chatforge_base::Rng;
use chatforge_model::engine::StepBatch as Batch;

/// The oracle is GPT-2: its names are GPT-2's.
const G: chatforge_model::Arch = chatforge_model::Arch::Gpt2;
use chatforge_model::layout::{self, Norm, Part, Slot};
use chatforge_model::quant::QuantWeight;
use chatforge_model::{Activation, GptConfig, LoraConfig, Weights};

/// What the oracle computed: the weighted mean cross-entropy, and the gradient of `scale · loss`
/// for each trainable tensor by name.
#[derive(Debug)]
pub struct Reference {
    pub loss: f32,
    pub grads: HashMap<String, Vec<f32>>,
    pub logits: Vec<f32>,
}

fn dev() -> Device {
    Device::Cpu
}

fn tensor(t: &chatforge_model::Tensor) -> Tensor {
    Tensor::from_slice(t.data(), t.dims(), &dev()).unwrap()
}

struct Dropout<'a> {
    p: f32,
    rng: Option<&'a mut Rng>,
}

impl Dropout<'_> {
    fn apply(&mut self, x: &Tensor, p: f32) -> Tensor {
        let Some(rng) = self.rng.as_deref_mut() else {
            return x.clone();
        };
        if p <= 0.0 {
            return x.clone();
        }
        let keep = 1.0 - p;
        let mask: Vec<f32> = (0..x.elem_count())
            .map(|_| {
                if rng.next_f64() < f64::from(keep) {
                    1.0 / keep
                } else {
                    0.0
                }
            })
            .collect();
        (x * Tensor::from_vec(mask, x.shape(), x.device()).unwrap()).unwrap()
    }
}

/// The weights as the model uses them: trainable ones are candle variables (gradients reach
/// them), the rest plain tensors; QLoRA's base linears quantised and dequantised as the engine
/// holds them.
struct Model<'a> {
    cfg: &'a GptConfig,
    lora: Option<&'a LoraConfig>,
    tensors: HashMap<String, Tensor>,
}

impl Model<'_> {
    fn get(&self, name: &str) -> &Tensor {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("no tensor {name}"))
    }

    fn layer_norm(&self, x: &Tensor, slot: impl Fn(Part) -> Slot) -> Tensor {
        let mean = x.mean_keepdim(D::Minus1).unwrap();
        let xc = x.broadcast_sub(&mean).unwrap();
        let var = xc.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let y = xc
            .broadcast_div(&(var + self.cfg.layer_norm_eps).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(self.get(&slot(Part::Weight).name(G)))
            .unwrap();
        if self.cfg.bias {
            y.broadcast_add(self.get(&slot(Part::Bias).name(G))).unwrap()
        } else {
            y
        }
    }

    /// `x W + b` with `W: (in, out)`, plus the adapter `s · (dropout(x) Aᵀ) Bᵀ` when targeted.
    fn linear(&self, x: &Tensor, i: usize, which: layout::Linear, drop: &mut Dropout) -> Tensor {
        let (b, t, c) = x.dims3().unwrap();
        let x = x.reshape((b * t, c)).unwrap();
        let name = |p| Slot::BlockLinear(i, which, p).name(G);
        let mut y = x.matmul(self.get(&name(Part::Weight))).unwrap();
        if self.cfg.bias {
            y = y.broadcast_add(self.get(&name(Part::Bias))).unwrap();
        }
        if let Some(l) = self
            .lora
            .filter(|l| l.targets.iter().any(|t| t == which.module_in(G)))
        {
            let (a, bn) = layout::lora_names(&layout::linear_path(i, which, G));
            let xin = drop.apply(&x, l.dropout);
            let z = xin
                .matmul(&self.get(&a).t().unwrap())
                .unwrap()
                .matmul(&self.get(&bn).t().unwrap())
                .unwrap();
            y = (y + (z * l.scale()).unwrap()).unwrap();
        }
        y.reshape((b, t, ())).unwrap()
    }

    fn attention(&self, x: &Tensor, i: usize, mask: &Tensor, drop: &mut Dropout) -> Tensor {
        let (b, t, c) = x.dims3().unwrap();
        let (h, d) = (self.cfg.n_head, c / self.cfg.n_head);
        let qkv = self.linear(x, i, layout::Linear::AttnQkv, drop);
        let split = |k: usize| {
            qkv.narrow(2, k * c, c)
                .unwrap()
                .reshape((b, t, h, d))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let (q, k, v) = (split(0), split(1), split(2));
        let scores = (q * (1.0 / (d as f64).sqrt()))
            .unwrap()
            .matmul(&k.t().unwrap())
            .unwrap()
            .broadcast_add(mask)
            .unwrap();
        let att = candle_nn::ops::softmax(&scores, D::Minus1).unwrap();
        let att = drop.apply(&att, drop.p);
        let y = att
            .matmul(&v)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b, t, c))
            .unwrap();
        let y = self.linear(&y, i, layout::Linear::AttnOut, drop);
        drop.apply(&y, drop.p)
    }

    fn mlp(&self, x: &Tensor, i: usize, drop: &mut Dropout) -> Tensor {
        let h = self.linear(x, i, layout::Linear::MlpUp, drop);
        let h = match self.cfg.activation {
            Activation::GeluTanh => h.gelu().unwrap(),
            Activation::GeluErf => h.gelu_erf().unwrap(),
            // The oracle is GPT-2: the Llama family is checked against transformers itself.
            Activation::Silu => unimplemented!("the oracle models GPT-2 only"),
        };
        let y = self.linear(&h, i, layout::Linear::MlpDown, drop);
        drop.apply(&y, drop.p)
    }

    /// Logits `(b·t, vocab)`.
    fn forward(&self, batch: &Batch<'_>, drop: &mut Dropout) -> Tensor {
        let (b, t) = (batch.b, batch.t);
        let ids = Tensor::from_slice(batch.inputs, b * t, &dev()).unwrap();
        let pos = Tensor::from_slice(batch.positions, b * t, &dev()).unwrap();
        let wte = self.get(&Slot::TokenEmbedding.name(G));
        let x = (wte.embedding(&ids).unwrap()
            + self
                .get(&Slot::PositionEmbedding.name(G))
                .embedding(&pos)
                .unwrap())
        .unwrap()
        .reshape((b, t, ()))
        .unwrap();
        let mut x = drop.apply(&x, drop.p);
        // Causal attention within each segment (conversation) of a row.
        let mut m = vec![f32::NEG_INFINITY; b * t * t];
        for r in 0..b {
            let seg = &batch.segments[r * t..(r + 1) * t];
            for i in 0..t {
                for j in 0..=i {
                    if seg[j] == seg[i] {
                        m[(r * t + i) * t + j] = 0.0;
                    }
                }
            }
        }
        let mask = Tensor::from_vec(m, (b, 1, t, t), &dev()).unwrap();
        for i in 0..self.cfg.n_layer {
            let a = self.attention(
                &self.layer_norm(&x, |p| Slot::BlockNorm(i, Norm::Attn, p)),
                i,
                &mask,
                drop,
            );
            x = (x + a).unwrap();
            let f = self.mlp(
                &self.layer_norm(&x, |p| Slot::BlockNorm(i, Norm::Mlp, p)),
                i,
                drop,
            );
            x = (x + f).unwrap();
        }
        let h = self.layer_norm(&x, Slot::FinalNorm).reshape((b * t, ())).unwrap();
        let head = if self.cfg.tie_embeddings {
            wte
        } else {
            self.get(&Slot::LmHead.name(G))
        };
        h.matmul(&head.t().unwrap()).unwrap()
    }
}

/// Runs the model on `batch` (as the engine takes it): the base `weights` (all of them for a full model; the frozen base
/// with `lora`), `trainable` (a full model's weights again, or the adapter's) as variables, and
/// dropout at the config's (and the adapter's) rates drawn from `dropout` when given.
pub fn reference(
    cfg: &GptConfig,
    lora: Option<&LoraConfig>,
    base: &Weights,
    trainable: &Weights,
    batch: &Batch<'_>,
    scale: f64,
    dropout: Option<&mut Rng>,
) -> Reference {
    let mut tensors: HashMap<String, Tensor> = base.iter().map(|(k, v)| (k.clone(), tensor(v))).collect();
    if let Some(kind) = lora.and_then(|l| l.quant) {
        // QLoRA: the base's linear weights as the engine holds them.
        for slot in layout::slots(cfg) {
            if let Slot::BlockLinear(_, _, Part::Weight) = slot {
                let name = slot.name(G);
                let w = &base[&name];
                let (r, c) = (w.dims()[0], w.dims()[1]);
                let q = QuantWeight::quantize(w.data(), r, c, kind);
                tensors.insert(name, Tensor::from_vec(q.dequantize(), (r, c), &dev()).unwrap());
            }
        }
    }
    let vars: Vec<(String, Var)> = trainable
        .iter()
        .map(|(k, v)| (k.clone(), Var::from_tensor(&tensor(v)).unwrap()))
        .collect();
    for (k, v) in &vars {
        tensors.insert(k.clone(), v.as_tensor().clone());
    }
    let model = Model { cfg, lora, tensors };
    let mut drop = Dropout {
        p: cfg.dropout,
        rng: dropout,
    };
    let logits = model.forward(batch, &mut drop);
    let n = batch.b * batch.t;
    let lsm = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
    let targets = Tensor::from_slice(batch.targets, (n, 1), &dev()).unwrap();
    let picked = lsm.gather(&targets, 1).unwrap().reshape(n).unwrap();
    let w: Vec<f32> = batch.weights.iter().map(|&x| f32::from(x)).collect();
    let count = w.iter().sum::<f32>().max(1.0);
    let wt = Tensor::from_vec(w, n, &dev()).unwrap();
    let loss = ((picked * wt).unwrap().sum_all().unwrap() * (-1.0 / f64::from(count))).unwrap();
    let store = (&loss * scale).unwrap().backward().unwrap();
    let grads = vars
        .iter()
        .map(|(k, v)| {
            let g = store
                .get(v.as_tensor())
                .map(|g| g.flatten_all().unwrap().to_vec1::<f32>().unwrap())
                .unwrap_or_else(|| vec![0.0; v.elem_count()]);
            (k.clone(), g)
        })
        .collect();
    Reference {
        loss: loss.to_dtype(DType::F32).unwrap().to_scalar().unwrap(),
        grads,
        logits: logits.flatten_all().unwrap().to_vec1().unwrap(),
    }
}

/// Next-token logits `(rows, vocab)` of `ids` (rows of one conversation each, positions from 0),
/// without dropout: `weights` a full model, or a base with `lora`'s adapter tensors among them.
pub fn logits(cfg: &GptConfig, lora: Option<&LoraConfig>, weights: &Weights, ids: &[Vec<u32>]) -> Vec<f32> {
    let (b, t) = (ids.len(), ids[0].len());
    let inputs: Vec<u32> = ids.concat();
    let positions: Vec<u32> = (0..b).flat_map(|_| 0..t as u32).collect();
    let zeros = vec![0u32; b * t];
    let ones = vec![1u8; b * t];
    let batch = Batch {
        b,
        t,
        inputs: &inputs,
        targets: &zeros,
        positions: &positions,
        segments: &zeros,
        weights: &ones,
    };
    reference(cfg, lora, weights, &Weights::new(), &batch, 1.0, None).logits
}
