//! The training step on plain f32 buffers: forward and hand-written backward of the whole GPT
//! (llm.c's structure), for full-model, LoRA and QLoRA training. Every buffer is allocated once
//! for a batch shape and reused, matrix products go to the `gemm` crate (its kernel chosen at run
//! time from the CPU's features), and the elementwise work is fused: bias + GELU, layer norm with
//! all three gradients, causal softmax over packed segments, cross-entropy with its gradient
//! written over the logits.
//!
//! Dropout (the model's and the adapters') draws its masks from the caller's stream in a fixed
//! order (the oracle's): SplitMix64 is a counter, so element `i` of a mask is the
//! stream's `i`-th draw past the site's start, computed where it is used, in parallel, and again
//! in backward instead of being stored.
//!
//! It computes what the test oracle (`chatforge-oracle`: the model as plain candle ops under
//! candle's autograd) computes (tested to 1e-4 against it in `tests/engine.rs`, forward and every
//! gradient, causal and packed, both GELUs, with and without
//! biases, tied and untied heads), several times faster per step. Parameters live in one flat
//! buffer in [`crate::param_specs`] order; gradients accumulate in another of the same layout.

use crate::layout::{self, Linear, Norm, Part, Slot};
use rayon::prelude::*;

use crate::kernels::fast_math as fm;
use crate::kernels::gemm::{Gemm, In, Out, Precision, SendPtr, View, gemm, gemm_raw, mm};
use crate::kernels::simd::vectorized;
use crate::kernels::{
    gelu_fast, gelu_fast_grad, layer_norm_row, rms_norm_row, rope_angles, rotate_heads, swiglu_row,
};
use crate::profile::{Family, span};
use crate::quant::QuantWeight;
use crate::{Activation, Error, GptConfig, LoraConfig, ParamSpec, Result, param_specs};
use chatforge_base::Rng;

mod attention;
mod backward;
mod build;
mod dropout;
mod forward;
mod linear;
mod logps;
mod ops;

use attention::*;
use backward::backward;
use dropout::*;
use forward::{Block, forward, layer_forward, loss_and_dlogits};
use linear::*;
use ops::*;

/// One micro-batch: `b` rows of `t` tokens.
#[derive(Debug, Clone, Copy)]
pub struct StepBatch<'a> {
    pub b: usize,
    pub t: usize,
    pub inputs: &'a [u32],
    pub targets: &'a [u32],
    pub positions: &'a [u32],
    /// Documents of a packed row: a token attends to earlier tokens of its own segment only.
    pub segments: &'a [u32],
    /// Which positions carry loss (0 or 1).
    pub weights: &'a [u8],
}

/// Rows of token ids as one batch in which each position predicts its row's next token (a row's last
/// position carries no loss): the loss reference implementations compute with `labels = input_ids`.
#[derive(Debug, Clone)]
pub struct NextTokenBatch {
    pub b: usize,
    pub t: usize,
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
    pub weights: Vec<u8>,
    pub positions: Vec<u32>,
    pub segments: Vec<u32>,
}

impl NextTokenBatch {
    /// Rows of equal length.
    pub fn new(rows: &[Vec<u32>]) -> NextTokenBatch {
        let (b, t) = (rows.len(), rows.first().map_or(0, Vec::len));
        let inputs = rows.concat();
        let next = |i: usize| i % t + 1 < t;
        NextTokenBatch {
            b,
            t,
            targets: (0..b * t)
                .map(|i| if next(i) { inputs[i + 1] } else { 0 })
                .collect(),
            weights: (0..b * t).map(|i| u8::from(next(i))).collect(),
            positions: (0..b).flat_map(|_| 0..t as u32).collect(),
            segments: vec![0; b * t],
            inputs,
        }
    }

    /// The batch as the engine takes it.
    pub fn batch(&self) -> StepBatch<'_> {
        StepBatch {
            b: self.b,
            t: self.t,
            inputs: &self.inputs,
            targets: &self.targets,
            positions: &self.positions,
            segments: &self.segments,
            weights: &self.weights,
        }
    }
}

/// A LoRA adapter on one linear layer: `A (r, in)` and `B (out, r)` at these offsets of the
/// trainable buffer; the layer adds `scale · (x Aᵀ) Bᵀ` to its `n_out` output columns from `col`
/// (a fused product's part: the Llama family's q, k or v, gate or up).
#[derive(Debug, Clone, Copy)]
struct Adapter {
    a: usize,
    b: usize,
    r: usize,
    scale: f32,
    col: usize,
    n_out: usize,
}

/// The parts of a fused product that can each carry an adapter (q, k and v).
const PARTS: usize = 3;

/// A block's four products: the attention's input (GPT-2's c_attn; q, k and v), its output, the
/// MLP's first (c_fc; gate and up) and its last.
#[derive(Debug, Clone, Copy)]
struct Dims {
    c: usize,
    /// Query heads, and query heads per key/value head.
    h: usize,
    g: usize,
    /// Head width, the keys' (and values') width, a qkv row's width.
    d: usize,
    kv: usize,
    w: usize,
}

impl Dims {
    fn of(cfg: &GptConfig) -> Dims {
        Dims {
            c: cfg.n_embd,
            h: cfg.n_head,
            g: cfg.n_head / cfg.n_kv_head,
            d: cfg.head_dim(),
            kv: cfg.kv_dim(),
            w: cfg.qkv_dim(),
        }
    }
}

/// Where each parameter of a layer sits in the flat buffer.
#[derive(Debug, Clone, Copy)]
struct LayerParams {
    /// Adapters of the four products (c_attn, attn.c_proj, c_fc and mlp.c_proj), per part.
    ad: [[Option<Adapter>; PARTS]; 4],
    /// QLoRA: the same four weights block-quantised (indices into `Model::quant`).
    q: [Option<usize>; 4],
    ln1_w: usize,
    ln1_b: Option<usize>,
    attn_w: usize,
    attn_b: Option<usize>,
    proj_w: usize,
    proj_b: Option<usize>,
    ln2_w: usize,
    ln2_b: Option<usize>,
    fc_w: usize,
    fc_b: Option<usize>,
    fcproj_w: usize,
    fcproj_b: Option<usize>,
}

/// Activations of one layer, kept for backward.
struct LayerActs {
    ln1: Vec<f32>,
    ln1_stats: Vec<(f32, f32)>,
    qkv: Vec<f32>,
    /// Each attention row's softmax maximum and `1/sum`, `(B, H, T, 2)`: backward makes the
    /// weights again from them instead of keeping `(B, H, T, T)` per layer.
    att_stats: Vec<f32>,
    atty: Vec<f32>,
    res2: Vec<f32>,
    ln2: Vec<f32>,
    ln2_stats: Vec<(f32, f32)>,
    /// Pre-activation of the MLP.
    fch: Vec<f32>,
    fch_act: Vec<f32>,
    res3: Vec<f32>,
    /// `x Aᵀ` of each adapted product's parts, `(N, r)` each (empty without an adapter).
    u: [Vec<f32>; 4],
}

/// The model side of the engine, read-only during a step: its shape, where each weight lives, the
/// frozen base and quantised weights (LoRA, QLoRA), and the dropout rates.
struct Model {
    cfg: GptConfig,
    b: usize,
    t: usize,
    /// LoRA: the frozen base model in `param_specs` order (empty when the model trains); with
    /// QLoRA without its linear weights, which are in `quant`.
    base: Vec<f32>,
    frozen: bool,
    quant: Vec<QuantWeight>,
    wte: usize,
    /// GPT-2's learned positions; the Llama family rotates q and k instead.
    wpe: Option<usize>,
    /// Rotary inverse frequencies (the Llama family), one per pair of a head's dimensions.
    inv_freq: Vec<f32>,
    /// RMSNorm (the Llama family) rather than layer norm.
    rms: bool,
    layers: Vec<LayerParams>,
    lnf_w: usize,
    lnf_b: Option<usize>,
    /// The output head: `wte` when tied.
    head: usize,
    /// Dropout rates: the model's and the adapters' inputs'.
    p: f32,
    lora_p: f32,
    /// The weight products' inputs: f32, or bf16 (sums and weights stay f32).
    prec: Precision,
}

/// The weights a step reads: the model's (the frozen base with LoRA, else the trainable
/// parameters), the trainable ones (the adapters with LoRA), and QLoRA's quantised weights.
#[derive(Clone, Copy)]
struct Params<'a> {
    wts: &'a [f32],
    trainable: &'a [f32],
    quant: &'a [QuantWeight],
    frozen: bool,
    prec: Precision,
}

impl<'a> Params<'a> {
    /// A norm's weight and (optional) bias at the offsets `at`, each `c` wide.
    #[inline]
    fn norm(&self, at: (usize, Option<usize>), c: usize) -> (&'a [f32], Option<&'a [f32]>) {
        let wts = self.wts;
        (&wts[at.0..at.0 + c], at.1.map(|b| &wts[b..b + c]))
    }

    /// A weight product on all cores (`dst += …` when `acc`), in the model's precision.
    #[inline]
    fn how(&self, acc: bool) -> Gemm {
        Gemm::all(acc, self.prec)
    }
}

impl Model {
    fn params<'a>(&'a self, trainable: &'a [f32]) -> Params<'a> {
        Params {
            wts: if self.frozen { &self.base } else { trainable },
            trainable,
            quant: &self.quant,
            frozen: self.frozen,
            prec: self.prec,
        }
    }
}

/// What the forward pass keeps for backward, and this micro-batch's attention tiles and dropout
/// masks.
struct Acts {
    x0: Vec<f32>,
    /// This micro-batch's rotary `cos` and `sin`, `(N, d/2)` each (the Llama family).
    cos: Vec<f32>,
    sin: Vec<f32>,
    /// Each block's activations; with gradient checkpointing only its output (`res3`).
    layers: Vec<LayerActs>,
    /// Gradient checkpointing: one block's full activations, recomputed for each block in
    /// backward from its kept input.
    work: Option<LayerActs>,
    lnf: Vec<f32>,
    lnf_stats: Vec<(f32, f32)>,
    /// The positions the head computes logits for (those with a weight), in order: row `k` of
    /// `logits` is position `head_rows[k]`'s. Positions that carry no loss (a prompt, padding)
    /// cost no head products.
    head_rows: Vec<usize>,
    /// `lnf`'s rows at `head_rows`, when they are not all positions.
    lnf_rows: Vec<f32>,
    logits: Vec<f32>,
    /// This micro-batch's attention tiles, per batch row.
    row_tiles: Vec<(Vec<Tile>, bool)>,
    /// This micro-batch's masks: the embeddings' and each block's.
    emb_mask: Option<Mask>,
    masks: Vec<LayerMasks>,
}

/// Block `l`'s input: the embeddings, or block `l − 1`'s output (`layers` holds at least the
/// blocks before `l`). A function of the two fields, so it borrows only them.
fn block_input<'a>(x0: &'a [f32], layers: &'a [LayerActs], l: usize) -> &'a [f32] {
    if l == 0 { x0 } else { &layers[l - 1].res3 }
}

/// Buffers every layer reuses within a step.
struct Scratch {
    /// A quantised weight, dequantised for the product that needs it.
    wq: Vec<f32>,
    /// With adapter dropout: an adapter's dropped-out input, then its input gradient, `(N, 4C)`.
    xdrop: Vec<f32>,
    /// Attention's scratch: a pair of `(T, T)` matrices per group of (row, head) tasks.
    att: Vec<f32>,
    dres: Vec<f32>,
    dwide: Vec<f32>,
    /// SwiGLU: the gradient of the MLP's first product (gate and up), `(N, 2·n_inner)`.
    dfc: Vec<f32>,
    dnarrow: Vec<f32>,
    dqkv: Vec<f32>,
    /// `dy B · scale` of an adapted linear, `(N, r)`.
    du: Vec<f32>,
    /// With dropout: a residual branch's masked gradient, `(N, C)`.
    dmask: Vec<f32>,
}

/// The engine: the trainable parameters and their gradients, the model they belong to, what a
/// forward pass keeps, and the scratch of a step.
pub struct TrainEngine {
    /// The trainable parameters: the whole model in `param_specs` order, or with LoRA the
    /// adapters in `LoraConfig::param_specs` order.
    pub params: Vec<f32>,
    /// Gradients of `params`, same layout; accumulated by [`TrainEngine::forward_backward`].
    pub grads: Vec<f32>,
    /// `(offset, len)` of each trainable parameter.
    pub offsets: Vec<(usize, usize)>,
    model: Model,
    acts: Acts,
    scratch: Scratch,
    /// Positions of the micro-batch whose log-probability gradients the logits hold
    /// ([`TrainEngine::forward_logps`]), until [`TrainEngine::backward_logps`] uses them.
    logps_of: Option<usize>,
}

impl TrainEngine {
    /// An engine for `cfg` with buffers for micro-batches of `b × t`, holding `params` (flat, in
    /// [`param_specs`] order), all trainable.
    pub fn new(cfg: &GptConfig, b: usize, t: usize, params: Vec<f32>) -> Result<TrainEngine> {
        Self::build(cfg, b, t, params, None)
    }

    /// An engine that trains the LoRA `adapters` (flat, in `lora.param_specs` order) on the
    /// frozen `base` (flat, in [`param_specs`] order). With
    /// `lora.quant` (QLoRA) every linear weight of the base is block-quantised and dequantised
    /// for each product, as the autograd path does.
    pub fn with_lora(
        cfg: &GptConfig,
        b: usize,
        t: usize,
        base: Vec<f32>,
        lora: &LoraConfig,
        adapters: Vec<f32>,
    ) -> Result<TrainEngine> {
        lora.validate_for(cfg.arch)?;
        Self::build(cfg, b, t, base, Some((lora, adapters)))
    }

    /// The weight products' inputs in `prec` (f32 by default): bf16 rounds the activations,
    /// gradients and weights each product reads, while the weights, their gradients and the
    /// optimizer's state stay f32 (mixed precision: PyTorch's `autocast(bfloat16)`).
    pub fn with_precision(mut self, prec: Precision) -> TrainEngine {
        self.model.prec = prec;
        self
    }

    /// The weight products' precision.
    pub fn precision(&self) -> Precision {
        self.model.prec
    }

    /// Gradient checkpointing (Chen et al. 2016): keep only each block's output, and in backward
    /// recompute one block's activations at a time, from its kept input, in one shared set of
    /// buffers. The activations take about `1/n_layer` of the memory for one more forward of the
    /// blocks; the gradients are the same, bit for bit (the recomputation repeats the same
    /// arithmetic, dropout masks included).
    pub fn checkpointed(mut self) -> TrainEngine {
        if self.acts.work.is_some() {
            return self;
        }
        let n = self.model.b * self.model.t * self.model.cfg.n_embd;
        let mut work = None;
        for a in &mut self.acts.layers {
            let res3 = std::mem::take(&mut a.res3);
            let full = std::mem::replace(a, empty_acts());
            a.res3 = res3;
            // The first block's buffers become the shared ones; the others are freed.
            if work.is_none() {
                work = Some(LayerActs {
                    res3: vec![0.0; n],
                    ..full
                });
            }
        }
        self.acts.work = work;
        self
    }

    /// Whether backward recomputes the blocks' activations ([`TrainEngine::checkpointed`]).
    pub fn is_checkpointed(&self) -> bool {
        self.acts.work.is_some()
    }

    pub fn config(&self) -> &GptConfig {
        &self.model.cfg
    }

    /// The micro-batch shape the buffers hold.
    pub fn shape(&self) -> (usize, usize) {
        (self.model.b, self.model.t)
    }

    /// Bytes the engine holds: weights (f32 and quantised), gradients and every step buffer.
    pub fn bytes(&self) -> usize {
        let f = |v: &Vec<f32>| v.len() * 4;
        let st = |v: &Vec<(f32, f32)>| v.len() * 8;
        let (m, a, s) = (&self.model, &self.acts, &self.scratch);
        let acts: usize = a
            .layers
            .iter()
            .chain(&a.work)
            .map(|a| {
                [
                    &a.ln1,
                    &a.qkv,
                    &a.att_stats,
                    &a.atty,
                    &a.res2,
                    &a.ln2,
                    &a.fch,
                    &a.fch_act,
                    &a.res3,
                ]
                .iter()
                .map(|v| f(v))
                .sum::<usize>()
                    + a.u.iter().map(f).sum::<usize>()
                    + st(&a.ln1_stats)
                    + st(&a.ln2_stats)
            })
            .sum();
        let buffers = [
            &self.params,
            &self.grads,
            &m.base,
            &a.x0,
            &a.lnf,
            &a.logits,
            &a.lnf_rows,
            &s.wq,
            &s.dres,
            &s.dwide,
            &s.dfc,
            &s.dnarrow,
            &a.cos,
            &a.sin,
            &s.dqkv,
            &s.att,
            &s.du,
            &s.dmask,
            &s.xdrop,
        ];
        buffers.iter().map(|v| f(v)).sum::<usize>()
            + st(&a.lnf_stats)
            + acts
            + m.quant.iter().map(QuantWeight::bytes).sum::<usize>()
    }

    pub fn zero_grad(&mut self) {
        self.grads.par_chunks_mut(1 << 16).for_each(|g| g.fill(0.0));
    }

    /// How far one micro-batch of `b × t` positions moves the dropout stream, as a difference of
    /// [`Rng::state`] (0 without dropout): the processes of a data-parallel group each start their
    /// micro-batch at its place in the stream one process would draw.
    pub fn dropout_stride(&mut self, b: usize, t: usize) -> u64 {
        let mut rng = Rng::new(0);
        draw_masks(&self.model, &mut self.acts, &mut rng, b, t);
        rng.state()
    }

    /// Forward and backward of one micro-batch: returns its weighted mean cross-entropy (NaN when
    /// no position carries loss, and then no gradient) and adds `scale ×` its gradient to `grads`.
    /// Dropout masks come from `rng`, which moves past them as the oracle's forward moves it.
    pub fn forward_backward(&mut self, batch: &StepBatch<'_>, scale: f32, rng: &mut Rng) -> Result<f64> {
        let total = self.check_batch(batch)?;
        if total == 0 {
            return Ok(f64::NAN);
        }
        self.logps_of = None;
        let TrainEngine {
            params,
            grads,
            model,
            acts,
            scratch,
            ..
        } = self;
        draw_masks(model, acts, rng, batch.b, batch.t);
        forward(model, params, acts, scratch, batch);
        let loss = loss_and_dlogits(
            &mut acts.logits,
            &acts.head_rows,
            model.cfg.vocab_size,
            batch,
            scale / total as f32,
        );
        backward(model, params, grads, acts, scratch, batch);
        Ok(loss / total as f64)
    }

    /// Validation: the weighted cross-entropy of a batch without dropout or backward, as its sum
    /// over positions and the weight it carries; the gradients are untouched. A batch of fewer
    /// rows than the engine's (an epoch's last) is padded with rows that carry no loss.
    pub fn eval_loss(&mut self, batch: &StepBatch<'_>) -> Result<(f64, usize)> {
        let (b, t) = (self.model.b, self.model.t);
        if batch.b < b && batch.t == t {
            let n = b * t;
            let pad = |v: &[u32]| {
                let mut p = v.to_vec();
                p.resize(n, 0);
                p
            };
            let mut weights = batch.weights.to_vec();
            weights.resize(n, 0);
            let (inputs, targets, positions, segments) = (
                pad(batch.inputs),
                pad(batch.targets),
                pad(batch.positions),
                pad(batch.segments),
            );
            return self.eval_loss(&StepBatch {
                b,
                t,
                inputs: &inputs,
                targets: &targets,
                positions: &positions,
                segments: &segments,
                weights: &weights,
            });
        }
        let total = self.check_batch(batch)?;
        if total == 0 {
            return Ok((0.0, 0));
        }
        self.logps_of = None;
        let (model, acts) = (&self.model, &mut self.acts);
        acts.emb_mask = None;
        acts.masks.fill(LayerMasks::default());
        forward(model, &self.params, acts, &mut self.scratch, batch);
        // The gradient written over the logits is scaled to 0 and never used.
        let loss = loss_and_dlogits(
            &mut acts.logits,
            &acts.head_rows,
            model.cfg.vocab_size,
            batch,
            0.0,
        );
        Ok((loss, total))
    }

    /// Checks a batch against the engine's shape, vocabulary and context; returns the weight it
    /// carries (the positions that count towards the loss).
    fn check_batch(&self, batch: &StepBatch<'_>) -> Result<usize> {
        let (b, t) = (batch.b, batch.t);
        let n = b * t;
        if (b, t) != (self.model.b, self.model.t) {
            return Err(Error::Config(format!(
                "engine built for {}×{}, batch is {b}×{t}",
                self.model.b, self.model.t
            )));
        }
        for (name, len) in [
            ("inputs", batch.inputs.len()),
            ("targets", batch.targets.len()),
            ("positions", batch.positions.len()),
            ("segments", batch.segments.len()),
            ("weights", batch.weights.len()),
        ] {
            if len != n {
                return Err(Error::Config(format!("engine: {name} has {len} values, not {n}")));
            }
        }
        let (v, ctx) = (self.model.cfg.vocab_size, self.model.cfg.n_ctx);
        if let Some(bad) = batch
            .inputs
            .iter()
            .chain(batch.targets)
            .find(|&&i| i as usize >= v)
        {
            return Err(Error::Config(format!(
                "token id {bad} is outside the vocabulary ({v})"
            )));
        }
        if let Some(bad) = batch.positions.iter().find(|&&p| p as usize >= ctx) {
            return Err(Error::Config(format!(
                "position {bad} is outside the context ({ctx})"
            )));
        }
        Ok(batch.weights.iter().map(|&w| usize::from(w)).sum())
    }
}

fn empty_acts() -> LayerActs {
    LayerActs {
        ln1: Vec::new(),
        ln1_stats: Vec::new(),
        qkv: Vec::new(),
        att_stats: Vec::new(),
        atty: Vec::new(),
        res2: Vec::new(),
        ln2: Vec::new(),
        ln2_stats: Vec::new(),
        fch: Vec::new(),
        fch_act: Vec::new(),
        res3: Vec::new(),
        u: [Vec::new(), Vec::new(), Vec::new(), Vec::new()],
    }
}
