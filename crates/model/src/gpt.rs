//! GPT-2 (Radford et al. 2019), laid out as Hugging Face's `GPT2LMHeadModel` and trained as in
//! nanoGPT: pre-LayerNorm blocks, learned positions, Conv1D-style linears whose weight is stored
//! `(in, out)`, an output head tied to the token embedding. Parameter names are HF's, so a
//! checkpoint is an HF `model.safetensors` as it is.
//!
//! Packed training rows carry per-token positions and an attention mask that keeps each
//! conversation to itself; generation uses the plain causal mask and a [`KvCache`].

// B=batch, T=time, S=keys (cache + T), C=n_embd, H=heads, D=head_dim, V=vocab

use crate::layout::{self, Norm, Part, Slot};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use chatforge_base::Rng;

use crate::lora::LoraConfig;
use crate::ops;
use crate::quant::{FrozenMatMul, QuantWeight, quant_matmul};
use crate::{Activation, GptConfig, Result};

/// How attention may look back.
#[derive(Debug, Clone)]
pub enum AttnMask {
    /// Every token sees itself and everything before it (including the cache).
    Causal,
    /// An additive mask `(B, 1, T, S)`: 0 where allowed, −∞ elsewhere (see [`AttnMask::packed`]).
    Additive(Tensor),
}

impl AttnMask {
    /// Causal attention restricted to tokens of the same segment (conversation) of a packed row.
    pub fn packed(segments: &[u32], batch: usize, t: usize, device: &Device) -> Result<AttnMask> {
        let mut m = vec![f32::NEG_INFINITY; batch * t * t];
        for b in 0..batch {
            let seg = &segments[b * t..(b + 1) * t];
            for i in 0..t {
                let row = &mut m[(b * t + i) * t..(b * t + i + 1) * t];
                for j in 0..=i {
                    if seg[j] == seg[i] {
                        row[j] = 0.0;
                    }
                }
            }
        }
        Ok(AttnMask::Additive(Tensor::from_vec(m, (batch, 1, t, t), device)?))
    }
}

/// Inverted dropout with masks drawn from a seeded [`Rng`], so runs (and resumed runs) repeat.
#[derive(Debug, Clone)]
pub struct Dropout {
    pub p: f32,
    pub rng: Rng,
}

impl Dropout {
    pub fn apply(&mut self, x: &Tensor) -> Result<Tensor> {
        self.apply_p(x, self.p)
    }

    /// Dropout with probability `p` instead of the model's (LoRA's own dropout), from the same stream.
    pub fn apply_p(&mut self, x: &Tensor, p: f32) -> Result<Tensor> {
        if p <= 0.0 {
            return Ok(x.clone());
        }
        let keep = 1.0 - p;
        let scale = 1.0 / keep;
        let mask: Vec<f32> = (0..x.elem_count())
            .map(|_| {
                if self.rng.next_f64() < f64::from(keep) {
                    scale
                } else {
                    0.0
                }
            })
            .collect();
        Ok((x * Tensor::from_vec(mask, x.shape(), x.device())?)?)
    }
}

/// The gradient with respect to a segment's input, which the next (earlier) segment carries back.
fn input_grad(g: &GradStore, input: &Var) -> Result<Tensor> {
    g.get(input.as_tensor()).cloned().ok_or_else(|| {
        crate::Error::Config("checkpointed backward: a segment's output does not depend on its input".into())
    })
}

fn drop(x: Tensor, dropout: &mut Option<&mut Dropout>) -> Result<Tensor> {
    match dropout {
        Some(d) => d.apply(&x),
        None => Ok(x),
    }
}

/// A low-rank update of a frozen linear layer: `s · (dropout(x) Aᵀ) Bᵀ` (see [`crate::lora`]).
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    /// `(r, in)`.
    pub a: Tensor,
    /// `(out, r)`.
    pub b: Tensor,
    pub scale: f64,
    pub dropout: f32,
}

/// A linear layer's weight: f32 (trainable or not), or block-quantised and frozen (QLoRA).
#[derive(Debug, Clone)]
pub enum LinearWeight {
    Full(Tensor),
    /// f32 but frozen (LoRA's base): no weight gradient is computed.
    Frozen(Tensor),
    Quant(std::sync::Arc<QuantWeight>),
}

/// A linear layer in GPT-2's Conv1D layout: `y = x W + b` with `W: (in, out)`, plus an optional
/// LoRA adapter.
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: LinearWeight,
    pub bias: Option<Tensor>,
    pub lora: Option<LoraAdapter>,
}

impl Linear {
    /// Block `i`'s `which` linear layer, its tensors named by the layout.
    fn new(
        cfg: &GptConfig,
        vb: &VarBuilder,
        i: usize,
        which: layout::Linear,
        lora: Option<&LoraConfig>,
    ) -> Result<Self> {
        let (n_in, n_out) = which.shape(cfg.n_embd);
        let quant = lora.and_then(|l| l.quant);
        let frozen = lora.is_some();
        let lora = match lora.filter(|l| l.targets.iter().any(|t| t == which.module())) {
            Some(l) => {
                let (a, b) = layout::lora_names(&layout::linear_path(i, which));
                Some(LoraAdapter {
                    a: vb.get((l.rank, n_in), &a)?,
                    b: vb.get((n_out, l.rank), &b)?,
                    scale: l.scale(),
                    dropout: l.dropout,
                })
            }
            None => None,
        };
        let name = |p| Slot::BlockLinear(i, which, p).name();
        let w = vb.get((n_in, n_out), &name(Part::Weight))?;
        let weight = match (quant, frozen) {
            (Some(kind), _) => {
                let data: Vec<f32> = w.flatten_all()?.to_vec1()?;
                LinearWeight::Quant(std::sync::Arc::new(QuantWeight::quantize(
                    &data, n_in, n_out, kind,
                )))
            }
            (None, true) => LinearWeight::Frozen(w),
            (None, false) => LinearWeight::Full(w),
        };
        Ok(Linear {
            weight,
            bias: if cfg.bias {
                Some(vb.get(n_out, &name(Part::Bias))?)
            } else {
                None
            },
            lora,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_t(x, &mut None)
    }

    /// With `dropout` (training), the adapter's input is dropped out at its own rate.
    pub fn forward_t(&self, x: &Tensor, dropout: &mut Option<&mut Dropout>) -> Result<Tensor> {
        let (b, t, c) = x.dims3()?;
        let x = x.reshape((b * t, c))?;
        let y = match &self.weight {
            LinearWeight::Full(w) => x.matmul(w)?, // (B*T, out)
            LinearWeight::Frozen(w) => x.contiguous()?.apply_op1(FrozenMatMul {
                w: w.clone(),
                transposed: false,
            })?,
            LinearWeight::Quant(q) => quant_matmul(&x, q)?,
        };
        let mut y = match &self.bias {
            Some(bias) => ops::add_bias(&y, bias)?,
            None => y,
        };
        if let Some(l) = &self.lora {
            let xin = match dropout {
                Some(d) => d.apply_p(&x, l.dropout)?,
                None => x.clone(),
            };
            let z = xin.matmul(&l.a.t()?)?.matmul(&l.b.t()?)?; // (B*T, out)
            y = (y + (z * l.scale)?)?;
        }
        Ok(y.reshape((b, t, ()))?)
    }
}

#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    eps: f64,
}

impl LayerNorm {
    /// The norm whose tensors `slot` names (given its weight's slot; the bias's follows).
    fn new(cfg: &GptConfig, vb: &VarBuilder, slot: impl Fn(Part) -> Slot) -> Result<Self> {
        let c = cfg.n_embd;
        Ok(LayerNorm {
            weight: vb.get(c, &slot(Part::Weight).name())?,
            bias: if cfg.bias {
                Some(vb.get(c, &slot(Part::Bias).name())?)
            } else {
                None
            },
            eps: cfg.layer_norm_eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::layer_norm(x, &self.weight, self.bias.as_ref(), self.eps)
    }
}

/// Keys and values of the tokens seen so far, per layer: `(B, H, S, D)` each.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    pub fn new(n_layer: usize) -> Self {
        KvCache {
            layers: vec![None; n_layer],
        }
    }

    /// Tokens cached so far.
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map_or(0, |(k, _)| k.dim(2).unwrap_or(0))
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = None);
    }
}

#[derive(Debug, Clone)]
pub struct CausalSelfAttention {
    c_attn: Linear,
    c_proj: Linear,
    n_head: usize,
}

impl CausalSelfAttention {
    fn new(cfg: &GptConfig, vb: &VarBuilder, i: usize, lora: Option<&LoraConfig>) -> Result<Self> {
        Ok(CausalSelfAttention {
            c_attn: Linear::new(cfg, vb, i, layout::Linear::AttnQkv, lora)?,
            c_proj: Linear::new(cfg, vb, i, layout::Linear::AttnOut, lora)?,
            n_head: cfg.n_head,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        mask: &AttnMask,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        dropout: &mut Option<&mut Dropout>,
    ) -> Result<Tensor> {
        let (b, t, c) = x.dims3()?;
        let (h, d) = (self.n_head, c / self.n_head);
        let qkv = self.c_attn.forward_t(x, dropout)?; // (B, T, 3C)
        let split = |i: usize| -> Result<Tensor> {
            Ok(qkv
                .narrow(2, i * c, c)?
                .reshape((b, t, h, d))?
                .transpose(1, 2)?
                .contiguous()?) // (B, H, T, D)
        };
        let (q, mut k, mut v) = (split(0)?, split(1)?, split(2)?);
        if let Some(slot) = cache {
            if let Some((pk, pv)) = slot.as_ref() {
                k = Tensor::cat(&[pk, &k], 2)?; // (B, H, S, D)
                v = Tensor::cat(&[pv, &v], 2)?;
            }
            *slot = Some((k.clone(), v.clone()));
        }
        let scale = 1.0 / (d as f64).sqrt();
        let att = match mask {
            AttnMask::Additive(m) => {
                let scores = (q * scale)?.matmul(&k.t()?)?; // (B, H, T, S)
                ops::softmax_last_dim(&scores.broadcast_add(m)?)?
            }
            AttnMask::Causal => ops::causal_attention_weights(&q, &k, scale)?, // (B, H, T, S)
        };
        let att = drop(att, dropout)?;
        let y = att.matmul(&v)?; // (B, H, T, D)
        let y = y.transpose(1, 2)?.reshape((b, t, c))?; // (B, T, C)
        let y = self.c_proj.forward_t(&y, dropout)?;
        drop(y, dropout)
    }
}

#[derive(Debug, Clone)]
pub struct Mlp {
    c_fc: Linear,
    c_proj: Linear,
    activation: Activation,
}

impl Mlp {
    fn new(cfg: &GptConfig, vb: &VarBuilder, i: usize, lora: Option<&LoraConfig>) -> Result<Self> {
        Ok(Mlp {
            c_fc: Linear::new(cfg, vb, i, layout::Linear::MlpUp, lora)?,
            c_proj: Linear::new(cfg, vb, i, layout::Linear::MlpDown, lora)?,
            activation: cfg.activation,
        })
    }

    fn forward(&self, x: &Tensor, dropout: &mut Option<&mut Dropout>) -> Result<Tensor> {
        let x = self.c_fc.forward_t(x, dropout)?; // (B, T, 4C)
        let x = ops::gelu(&x, self.activation)?;
        let x = self.c_proj.forward_t(&x, dropout)?;
        drop(x, dropout)
    }
}

#[derive(Debug, Clone)]
pub struct Block {
    ln_1: LayerNorm,
    attn: CausalSelfAttention,
    ln_2: LayerNorm,
    mlp: Mlp,
}

impl Block {
    fn new(cfg: &GptConfig, vb: &VarBuilder, i: usize, lora: Option<&LoraConfig>) -> Result<Self> {
        Ok(Block {
            ln_1: LayerNorm::new(cfg, vb, |p| Slot::BlockNorm(i, Norm::Attn, p))?,
            attn: CausalSelfAttention::new(cfg, vb, i, lora)?,
            ln_2: LayerNorm::new(cfg, vb, |p| Slot::BlockNorm(i, Norm::Mlp, p))?,
            mlp: Mlp::new(cfg, vb, i, lora)?,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        mask: &AttnMask,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        dropout: &mut Option<&mut Dropout>,
    ) -> Result<Tensor> {
        let x = (x + self.attn.forward(&self.ln_1.forward(x)?, mask, cache, dropout)?)?;
        let x = (&x + self.mlp.forward(&self.ln_2.forward(&x)?, dropout)?)?;
        Ok(x)
    }
}

#[derive(Debug, Clone)]
pub struct Gpt {
    cfg: GptConfig,
    wte: Tensor,
    wpe: Tensor,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    lm_head: Tensor,
    /// LoRA: the base (and so the output head) is frozen.
    frozen: bool,
}

impl Gpt {
    /// Builds the model from weights named as in HF GPT-2 (`transformer.h.0.attn.c_attn.weight`, …).
    pub fn new(cfg: &GptConfig, vb: VarBuilder) -> Result<Self> {
        Gpt::with_lora(cfg, vb, None)
    }

    /// With `lora`, the targeted layers also read `….lora_A.weight` and `….lora_B.weight` from `vb`.
    pub fn with_lora(cfg: &GptConfig, vb: VarBuilder, lora: Option<&LoraConfig>) -> Result<Self> {
        cfg.validate()?;
        if let Some(l) = lora {
            l.validate()?;
        }
        let get = |slot: Slot| vb.get(slot.shape(cfg), &slot.name());
        let wte = get(Slot::TokenEmbedding)?;
        let lm_head = if cfg.tie_embeddings {
            wte.clone()
        } else {
            get(Slot::LmHead)?
        };
        Ok(Gpt {
            cfg: cfg.clone(),
            wpe: get(Slot::PositionEmbedding)?,
            blocks: (0..cfg.n_layer)
                .map(|i| Block::new(cfg, &vb, i, lora))
                .collect::<Result<_>>()?,
            ln_f: LayerNorm::new(cfg, &vb, Slot::FinalNorm)?,
            wte,
            lm_head,
            frozen: lora.is_some(),
        })
    }

    pub fn config(&self) -> &GptConfig {
        &self.cfg
    }

    /// Final hidden states `(B, T, C)` for token ids `(B, T)` at `positions` `(B, T)`.
    pub fn hidden(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        mask: &AttnMask,
        mut cache: Option<&mut KvCache>,
        mut dropout: Option<&mut Dropout>,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let tok = self.wte.embedding(&ids.flatten_all()?)?.reshape((b, t, ()))?; // (B, T, C)
        let pos = self
            .wpe
            .embedding(&positions.flatten_all()?)?
            .reshape((b, t, ()))?; // (B, T, C)
        let mut x = drop((tok + pos)?, &mut dropout)?;
        for (i, block) in self.blocks.iter().enumerate() {
            let slot = cache.as_deref_mut().map(|c| {
                if c.layers.len() <= i {
                    c.layers.resize(i + 1, None);
                }
                &mut c.layers[i]
            });
            x = block.forward(&x, mask, slot, &mut dropout)?;
        }
        self.ln_f.forward(&x)
    }

    /// Gradient checkpointing (Chen et al. 2016, "Training deep nets with sublinear memory cost"):
    /// the forward pass keeps only each block's input, and the backward pass recomputes one block
    /// at a time from it, drawing the same dropout masks again from the RNG state saved before the
    /// block. Activation memory falls from every block's to one block's, for one more forward pass.
    ///
    /// `loss` maps the logits `(B, T, V)` to a scalar. Each partial backward's gradients (the
    /// head's, each block's, then the embeddings') go to `sink`, which sums them per variable; a
    /// variable used twice (the tied head) appears in two stores. Returns the loss, detached; the
    /// dropout stream ends where an ordinary forward pass would leave it.
    pub fn backward_checkpointed(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        mask: &AttnMask,
        mut dropout: Option<&mut Dropout>,
        loss: impl FnOnce(&Tensor) -> Result<Tensor>,
        sink: &mut dyn FnMut(&GradStore) -> Result<()>,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let tok = self.wte.embedding(&ids.flatten_all()?)?.reshape((b, t, ()))?;
        let pos = self
            .wpe
            .embedding(&positions.flatten_all()?)?
            .reshape((b, t, ()))?;
        let emb = drop((tok + pos)?, &mut dropout)?; // keeps its (small) graph for the last backward
        let mut saved = Vec::with_capacity(self.blocks.len());
        let mut x = emb.detach();
        for block in &self.blocks {
            saved.push((x.clone(), dropout.as_ref().map(|d| d.rng.state())));
            // Detaching drops the block's graph, and with it the block's activations.
            x = block.forward(&x, mask, None, &mut dropout)?.detach();
        }
        let end_state = dropout.as_ref().map(|d| d.rng.state());

        let h = Var::from_tensor(&x)?;
        let value = loss(&self.logits(&self.ln_f.forward(h.as_tensor())?)?)?;
        let g = value.backward()?;
        let mut grad = input_grad(&g, &h)?;
        sink(&g)?;
        for (block, (input, state)) in self.blocks.iter().zip(saved).rev() {
            if let (Some(d), Some(s)) = (dropout.as_deref_mut(), state) {
                d.rng = Rng::from_state(s);
            }
            let xv = Var::from_tensor(&input)?;
            let out = block.forward(xv.as_tensor(), mask, None, &mut dropout)?;
            // d(sum(out · grad))/dθ is the vector–Jacobian product that backward needs.
            let g = (out * &grad)?.sum_all()?.backward()?;
            grad = input_grad(&g, &xv)?;
            sink(&g)?;
        }
        sink(&(emb * grad)?.sum_all()?.backward()?)?;
        if let (Some(d), Some(s)) = (dropout, end_state) {
            d.rng = Rng::from_state(s);
        }
        Ok(value.detach())
    }

    /// Next-token logits `(B, T, V)`.
    pub fn forward(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        mask: &AttnMask,
        cache: Option<&mut KvCache>,
        dropout: Option<&mut Dropout>,
    ) -> Result<Tensor> {
        let h = self.hidden(ids, positions, mask, cache, dropout)?;
        self.logits(&h)
    }

    /// Projects hidden states `(B, T, C)` onto the vocabulary.
    pub fn logits(&self, h: &Tensor) -> Result<Tensor> {
        let (b, t, c) = h.dims3()?;
        let h = h.reshape((b * t, c))?;
        let logits = if self.frozen {
            h.contiguous()?.apply_op1(FrozenMatMul {
                w: self.lm_head.clone(),
                transposed: true,
            })?
        } else {
            h.matmul(&self.lm_head.t()?)? // (B*T, V)
        };
        Ok(logits.reshape((b, t, ()))?)
    }

    /// Positions `(B, T)` for a plain batch that starts after `offset` cached tokens.
    pub fn positions(b: usize, t: usize, offset: usize, device: &Device) -> Result<Tensor> {
        let row: Vec<u32> = (offset as u32..(offset + t) as u32).collect();
        Ok(Tensor::new(row.as_slice(), device)?
            .unsqueeze(0)?
            .repeat((b, 1))?
            .to_dtype(DType::U32)?)
    }
}
