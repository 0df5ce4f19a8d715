//! The training step on plain f32 buffers: forward and hand-written backward of the whole GPT
//! (llm.c's structure), for full-model, LoRA and QLoRA training. Every buffer is allocated once
//! for a batch shape and reused, matrix products go to the `gemm` crate (its kernel chosen at run
//! time from the CPU's features), and the elementwise work is fused: bias + GELU, layer norm with
//! all three gradients, causal softmax over packed segments, cross-entropy with its gradient
//! written over the logits.
//!
//! Dropout (the model's and the adapters') draws exactly the masks [`crate::Dropout`] draws, from
//! the same stream in the same order: SplitMix64 is a counter, so element `i` of a mask is the
//! stream's `i`-th draw past the site's start, computed where it is used, in parallel, and again
//! in backward instead of being stored.
//!
//! It computes what [`crate::Gpt`] with candle's autograd computes (tested to 1e-4 against it in
//! `tests/engine.rs`, forward and every gradient, causal and packed, both GELUs, with and without
//! biases, tied and untied heads), several times faster per step. Parameters live in one flat
//! buffer in [`crate::param_specs`] order; gradients accumulate in another of the same layout.

use crate::layout::{self, Linear, Norm, Part, Slot};
use rayon::prelude::*;

use crate::ops::fast_math as fm;
use crate::ops::simd::vectorized;
use crate::ops::{gelu_fast, gelu_fast_grad};
use crate::quant::QuantWeight;
use crate::{Activation, Error, GptConfig, LoraConfig, ParamSpec, Result, param_specs};
use chatforge_data::Rng;

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

/// A LoRA adapter on one linear layer: `A (r, in)` and `B (out, r)` at these offsets of the
/// trainable buffer; the layer adds `scale · (x Aᵀ) Bᵀ`.
#[derive(Debug, Clone, Copy)]
struct Adapter {
    a: usize,
    b: usize,
    r: usize,
    scale: f32,
}

/// One dropout site's mask, as [`crate::Dropout::apply_p`] draws it: element `i` is kept (and
/// scaled by `1 / (1 - p)`) when the stream's `i`-th draw past `rng`, as a uniform in `[0, 1)`, is
/// below `1 - p`.
#[derive(Debug, Clone, Copy)]
struct Mask {
    rng: Rng,
    /// `(1 - p) · 2⁵³`: a draw's top 53 bits below it is a uniform below `1 - p`, exactly.
    thr: f64,
    scale: f32,
}

impl Mask {
    /// The mask of a site of `len` elements at the stream's position, which moves past it; none
    /// (and no draw) when `p` is 0, as the autograd path.
    fn take(rng: &mut Rng, p: f32, len: usize) -> Option<Mask> {
        if p <= 0.0 {
            return None;
        }
        let keep = 1.0 - p;
        let mask = Mask {
            rng: *rng,
            thr: f64::from(keep) * (1u64 << 53) as f64,
            scale: 1.0 / keep,
        };
        rng.skip(len as u64);
        Some(mask)
    }

    /// The factor of element `i`: `1 / (1 - p)` or 0.
    #[inline(always)]
    fn factor(&self, i: usize) -> f32 {
        if ((self.rng.peek_u64(i as u64) >> 11) as f64) < self.thr {
            self.scale
        } else {
            0.0
        }
    }
}

/// The dropout sites of one block, in the order the autograd path draws them.
#[derive(Debug, Clone, Copy, Default)]
struct LayerMasks {
    /// The inputs of the four adapters (c_attn, attn.c_proj, c_fc, mlp.c_proj).
    ad: [Option<Mask>; 4],
    /// The attention weights `(B, H, T, T)`.
    att: Option<Mask>,
    /// The attention's and the MLP's outputs, before each residual addition.
    res: [Option<Mask>; 2],
}

/// Where each parameter of a layer sits in the flat buffer.
#[derive(Debug, Clone, Copy)]
struct LayerParams {
    /// Adapters of c_attn, attn.c_proj, c_fc and mlp.c_proj.
    ad: [Option<Adapter>; 4],
    /// QLoRA: the same four weights block-quantised (indices into `TrainEngine::quant`).
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
    /// `x Aᵀ` of each adapted linear (empty without an adapter).
    u: [Vec<f32>; 4],
}

/// The engine: parameters, their gradients, and every buffer of one step.
pub struct TrainEngine {
    cfg: GptConfig,
    b: usize,
    t: usize,
    /// The trainable parameters: the whole model in `param_specs` order, or with LoRA the
    /// adapters in `LoraConfig::param_specs` order.
    pub params: Vec<f32>,
    /// Gradients of `params`, same layout; accumulated by [`TrainEngine::forward_backward`].
    pub grads: Vec<f32>,
    /// `(offset, len)` of each trainable parameter.
    pub offsets: Vec<(usize, usize)>,
    /// LoRA: the frozen base model in `param_specs` order (empty when the model trains); with
    /// QLoRA without its linear weights, which are in `quant`.
    base: Vec<f32>,
    frozen: bool,
    quant: Vec<QuantWeight>,
    /// A quantised weight, dequantised for the product that needs it.
    wq: Vec<f32>,
    wte: usize,
    wpe: usize,
    layers: Vec<LayerParams>,
    lnf_w: usize,
    lnf_b: Option<usize>,
    /// The output head: `wte` when tied.
    head: usize,
    x0: Vec<f32>,
    /// Each block's activations; with gradient checkpointing only its output (`res3`).
    acts: Vec<LayerActs>,
    /// Gradient checkpointing: one block's full activations, recomputed for each block in
    /// backward from its kept input.
    work: Option<LayerActs>,
    lnf: Vec<f32>,
    lnf_stats: Vec<(f32, f32)>,
    logits: Vec<f32>,
    // Backward scratch, reused by every layer.
    dres: Vec<f32>,
    dwide: Vec<f32>,
    dnarrow: Vec<f32>,
    dqkv: Vec<f32>,
    /// Attention's scratch: a pair of `(T, T)` matrices per group of (row, head) tasks.
    ascratch: Vec<f32>,
    /// This micro-batch's attention tiles, per batch row.
    row_tiles: Vec<(Vec<Tile>, bool)>,
    /// `dy B · scale` of an adapted linear, `(N, r)`.
    du: Vec<f32>,
    /// Dropout rates: the model's and the adapters' inputs'.
    p: f32,
    lora_p: f32,
    /// This micro-batch's masks: the embeddings' and each block's.
    emb_mask: Option<Mask>,
    masks: Vec<LayerMasks>,
    /// With dropout: a residual branch's masked gradient, `(N, C)`.
    dmask: Vec<f32>,
    /// With adapter dropout: an adapter's dropped-out input, then its input gradient, `(N, 4C)`.
    xdrop: Vec<f32>,
}

/// A pointer that may cross threads: each task writes a region no other task touches.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);

impl SendPtr {
    /// The pointer (a method, so closures capture the `Send` wrapper, not the raw field).
    fn get(self) -> *mut f32 {
        self.0
    }
}
#[allow(unsafe_code)]
// SAFETY: only used to hand disjoint regions of one buffer to parallel tasks (see the callers).
unsafe impl Send for SendPtr {}
#[allow(unsafe_code)]
// SAFETY: as above; the pointer is never dereferenced without a region argument.
unsafe impl Sync for SendPtr {}

/// A strided matrix inside a buffer of `len` values: element `(r, c)` is at `off + r·rs + c·cs`.
#[derive(Debug, Clone, Copy)]
struct View {
    off: usize,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl View {
    fn rows(off: usize, rows: usize, cols: usize, rs: usize) -> View {
        View {
            off,
            rows,
            cols,
            rs,
            cs: 1,
        }
    }

    /// The transpose of a row-major block: `(cols, rows)` read down the columns.
    fn t(self) -> View {
        View {
            off: self.off,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    fn fits(&self, len: usize) -> bool {
        self.rows == 0
            || self.cols == 0
            || self.off + (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < len
    }
}

/// `dst = (acc ? dst : 0) + beta · lhs · rhs` with the `gemm` crate, on all cores when `par`.
///
/// # Safety
/// `dst`, `lhs` and `rhs` point to buffers of `dst_len`, `lhs_len` and `rhs_len` values; `dst`
/// does not overlap `lhs` or `rhs`, and no other thread writes the region `d` addresses while this
/// runs. The views are checked against the lengths here.
#[allow(unsafe_code, clippy::too_many_arguments)]
unsafe fn mm_raw(
    dst: *mut f32,
    dst_len: usize,
    d: View,
    lhs: *const f32,
    lhs_len: usize,
    l: View,
    rhs: *const f32,
    rhs_len: usize,
    r: View,
    acc: bool,
    beta: f32,
    par: bool,
) {
    assert!(
        d.rows == l.rows && d.cols == r.cols && l.cols == r.rows,
        "matmul shapes: dst {d:?}, lhs {l:?}, rhs {r:?}"
    );
    assert!(
        d.fits(dst_len) && l.fits(lhs_len) && r.fits(rhs_len),
        "matmul view out of bounds"
    );
    let threads = if par { rayon::current_num_threads() } else { 1 };
    // SAFETY: the caller's contract and the bounds checked above.
    unsafe {
        gemm::gemm(
            d.rows,
            d.cols,
            l.cols,
            dst.add(d.off),
            d.cs as isize,
            d.rs as isize,
            acc,
            lhs.add(l.off),
            l.cs as isize,
            l.rs as isize,
            rhs.add(r.off),
            r.cs as isize,
            r.rs as isize,
            1.0,
            beta,
            false,
            false,
            false,
            if threads > 1 {
                gemm::Parallelism::Rayon(threads)
            } else {
                gemm::Parallelism::None
            },
        );
    }
}

/// [`mm_raw`] on slices, on all cores.
fn mm(dst: &mut [f32], d: View, lhs: &[f32], l: View, rhs: &[f32], r: View, acc: bool) {
    mm_beta(dst, d, lhs, l, rhs, r, acc, 1.0);
}

/// [`mm`] with the product scaled by `beta`.
#[allow(clippy::too_many_arguments)]
fn mm_beta(dst: &mut [f32], d: View, lhs: &[f32], l: View, rhs: &[f32], r: View, acc: bool, beta: f32) {
    #[allow(unsafe_code)]
    // SAFETY: a unique borrow cannot alias the shared ones, and the lengths are the slices'.
    unsafe {
        mm_raw(
            dst.as_mut_ptr(),
            dst.len(),
            d,
            lhs.as_ptr(),
            lhs.len(),
            l,
            rhs.as_ptr(),
            rhs.len(),
            r,
            acc,
            beta,
            true,
        );
    }
}

const ROWS_PER_TASK: usize = 16;

/// `out[i] = f(x[i])` on all cores, in a loop the compiler vectorises.
fn map_into(out: &mut [f32], x: &[f32], f: impl Fn(f32) -> f32 + Sync) {
    out.par_chunks_mut(1 << 12)
        .zip(x.par_chunks(1 << 12))
        .for_each(|(o, x)| vectorized(|| o.iter_mut().zip(x).for_each(|(o, &x)| *o = f(x))));
}

/// Row statistics `(mean, 1/√(var + eps))`, as the fused layer norm computes them.
fn stats(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = row.iter().sum::<f32>() / n;
    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

fn layer_norm_fwd(
    out: &mut [f32],
    st: &mut [(f32, f32)],
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    c: usize,
    eps: f32,
) {
    out.par_chunks_mut(c * ROWS_PER_TASK)
        .zip(st.par_chunks_mut(ROWS_PER_TASK))
        .zip(x.par_chunks(c * ROWS_PER_TASK))
        .for_each(|((o, s), xs)| {
            vectorized(|| {
                for ((orow, srow), xrow) in o.chunks_mut(c).zip(s.iter_mut()).zip(xs.chunks(c)) {
                    let (mean, rstd) = stats(xrow, eps);
                    *srow = (mean, rstd);
                    match b {
                        Some(b) => {
                            for i in 0..c {
                                orow[i] = (xrow[i] - mean) * rstd * w[i] + b[i];
                            }
                        }
                        None => {
                            for i in 0..c {
                                orow[i] = (xrow[i] - mean) * rstd * w[i];
                            }
                        }
                    }
                }
            })
        });
}

/// `dx += layer norm's input gradient`; `dw`, `db` += their gradients (summed over rows).
#[allow(clippy::too_many_arguments)]
fn layer_norm_bwd(
    dx: &mut [f32],
    dw: Option<&mut [f32]>,
    db: Option<&mut [f32]>,
    dout: &[f32],
    x: &[f32],
    st: &[(f32, f32)],
    w: &[f32],
    c: usize,
) {
    // Partial sums per task, added in task order: the same result on every run.
    let parts: Vec<(Vec<f32>, Vec<f32>)> = dx
        .par_chunks_mut(c * ROWS_PER_TASK)
        .zip(dout.par_chunks(c * ROWS_PER_TASK))
        .zip(x.par_chunks(c * ROWS_PER_TASK))
        .zip(st.par_chunks(ROWS_PER_TASK))
        .map(|(((dxs, ds), xs), ss)| {
            vectorized(|| {
                let (mut pw, mut pb) = (vec![0f32; c], vec![0f32; c]);
                for (((dxr, dr), xr), &(mean, rstd)) in
                    dxs.chunks_mut(c).zip(ds.chunks(c)).zip(xs.chunks(c)).zip(ss)
                {
                    let mut dnorm_mean = 0f32;
                    let mut dnorm_norm_mean = 0f32;
                    for i in 0..c {
                        let norm = (xr[i] - mean) * rstd;
                        let dnorm = w[i] * dr[i];
                        dnorm_mean += dnorm;
                        dnorm_norm_mean += dnorm * norm;
                        pw[i] += norm * dr[i];
                        pb[i] += dr[i];
                    }
                    dnorm_mean /= c as f32;
                    dnorm_norm_mean /= c as f32;
                    for i in 0..c {
                        let norm = (xr[i] - mean) * rstd;
                        let dnorm = w[i] * dr[i];
                        dxr[i] += (dnorm - dnorm_mean - norm * dnorm_norm_mean) * rstd;
                    }
                }
                (pw, pb)
            })
        })
        .collect();
    let (mut pw, mut pb) = (vec![0f32; c], vec![0f32; c]);
    for (w, b) in &parts {
        pw.iter_mut().zip(w).for_each(|(a, b)| *a += b);
        pb.iter_mut().zip(b).for_each(|(a, b)| *a += b);
    }
    if let Some(dw) = dw {
        dw.iter_mut().zip(&pw).for_each(|(a, b)| *a += b);
    }
    if let Some(db) = db {
        db.iter_mut().zip(&pb).for_each(|(a, b)| *a += b);
    }
}

/// `db += Σ_rows dout`.
fn bias_grad(db: &mut [f32], dout: &[f32], oc: usize) {
    // Partial sums per task, added in task order: the same result on every run.
    let parts: Vec<Vec<f32>> = dout
        .par_chunks(oc * 64)
        .map(|rows| {
            let mut acc = vec![0f32; oc];
            for r in rows.chunks(oc) {
                acc.iter_mut().zip(r).for_each(|(a, b)| *a += b);
            }
            acc
        })
        .collect();
    let mut sum = vec![0f32; oc];
    for p in &parts {
        sum.iter_mut().zip(p).for_each(|(a, b)| *a += b);
    }
    db.iter_mut().zip(&sum).for_each(|(a, b)| *a += b);
}

/// Every row of `out` (width `oc`) set to the bias (or zero), ready for a matmul that adds to it.
fn fill_bias(out: &mut [f32], bias: Option<&[f32]>, oc: usize) {
    match bias {
        Some(b) => out.par_chunks_mut(oc * 64).for_each(|rows| {
            for r in rows.chunks_mut(oc) {
                r.copy_from_slice(b);
            }
        }),
        None => out.par_chunks_mut(1 << 14).for_each(|x| x.fill(0.0)),
    }
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
        lora.validate()?;
        Self::build(cfg, b, t, base, Some((lora, adapters)))
    }

    fn build(
        cfg: &GptConfig,
        b: usize,
        t: usize,
        params: Vec<f32>,
        lora: Option<(&LoraConfig, Vec<f32>)>,
    ) -> Result<TrainEngine> {
        cfg.validate()?;
        if t > cfg.n_ctx || b == 0 || t == 0 {
            return Err(Error::Config(format!(
                "engine batch {b}×{t} does not fit n_ctx {}",
                cfg.n_ctx
            )));
        }
        let specs = param_specs(cfg);
        let mut offsets = Vec::with_capacity(specs.len());
        let mut at = 0;
        for s in &specs {
            let n: usize = s.shape.iter().product();
            offsets.push((at, n));
            at += n;
        }
        if params.len() != at {
            return Err(Error::Config(format!(
                "engine: {} parameters given, the config has {at}",
                params.len()
            )));
        }
        let starts: Vec<usize> = offsets.iter().map(|o| o.0).collect();
        let find = |slot: Slot| -> Option<usize> {
            let name = slot.name();
            specs.iter().position(|s| s.name == name).map(|i| starts[i])
        };
        let need = |slot: Slot| -> Result<usize> {
            find(slot).ok_or_else(|| Error::Config(format!("engine: no parameter {}", slot.name())))
        };
        // Adapters: where each one's A and B sit in the trainable buffer.
        let (ad_specs, ad_offsets): (Vec<ParamSpec>, Vec<(usize, usize)>) = match &lora {
            Some((l, _)) => {
                let specs = l.param_specs(cfg);
                let mut offs = Vec::with_capacity(specs.len());
                let mut at = 0;
                for s in &specs {
                    let n: usize = s.shape.iter().product();
                    offs.push((at, n));
                    at += n;
                }
                (specs, offs)
            }
            None => (Vec::new(), Vec::new()),
        };
        let adapter = |i: usize, lin: Linear| -> Option<Adapter> {
            let (l, _) = lora.as_ref()?;
            let at = |name: String| {
                ad_specs
                    .iter()
                    .position(|s| s.name == name)
                    .map(|i| ad_offsets[i].0)
            };
            let (a, b) = layout::lora_names(&layout::linear_path(i, lin));
            Some(Adapter {
                a: at(a)?,
                b: at(b)?,
                r: l.rank,
                scale: l.scale() as f32,
            })
        };
        let layers = (0..cfg.n_layer)
            .map(|i| -> Result<LayerParams> {
                let lin = |l, p| Slot::BlockLinear(i, l, p);
                let norm = |n, p| Slot::BlockNorm(i, n, p);
                Ok(LayerParams {
                    q: [None; 4],
                    ad: Linear::ALL.map(|l| adapter(i, l)),
                    ln1_w: need(norm(Norm::Attn, Part::Weight))?,
                    ln1_b: find(norm(Norm::Attn, Part::Bias)),
                    attn_w: need(lin(Linear::AttnQkv, Part::Weight))?,
                    attn_b: find(lin(Linear::AttnQkv, Part::Bias)),
                    proj_w: need(lin(Linear::AttnOut, Part::Weight))?,
                    proj_b: find(lin(Linear::AttnOut, Part::Bias)),
                    ln2_w: need(norm(Norm::Mlp, Part::Weight))?,
                    ln2_b: find(norm(Norm::Mlp, Part::Bias)),
                    fc_w: need(lin(Linear::MlpUp, Part::Weight))?,
                    fc_b: find(lin(Linear::MlpUp, Part::Bias)),
                    fcproj_w: need(lin(Linear::MlpDown, Part::Weight))?,
                    fcproj_b: find(lin(Linear::MlpDown, Part::Bias)),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let wte = need(Slot::TokenEmbedding)?;
        let (c, n, h, v) = (cfg.n_embd, b * t, cfg.n_head, cfg.vocab_size);
        let z = |len: usize| vec![0f32; len];
        let rank = lora.as_ref().map_or(0, |(l, _)| l.rank);
        let lora_p = lora.as_ref().map_or(0.0, |(l, _)| l.dropout);
        let acts = (0..cfg.n_layer)
            .map(|i| LayerActs {
                u: std::array::from_fn(|k| {
                    if layers[i].ad[k].is_some() {
                        z(n * rank)
                    } else {
                        Vec::new()
                    }
                }),
                ln1: z(n * c),
                ln1_stats: vec![(0.0, 0.0); n],
                qkv: z(n * 3 * c),
                att_stats: z(b * h * t * 2),
                atty: z(n * c),
                res2: z(n * c),
                ln2: z(n * c),
                ln2_stats: vec![(0.0, 0.0); n],
                fch: z(n * 4 * c),
                fch_act: z(n * 4 * c),
                res3: z(n * c),
            })
            .collect();
        // QLoRA: the linear weights leave the base for their quantised form.
        let mut layers = layers;
        let (mut params, mut quant) = (params, Vec::new());
        let (mut wte, mut wpe) = (wte, need(Slot::PositionEmbedding)?);
        let (mut lnf_w, mut lnf_b) = (
            need(Slot::FinalNorm(Part::Weight))?,
            find(Slot::FinalNorm(Part::Bias)),
        );
        let mut head = if cfg.tie_embeddings {
            wte
        } else {
            need(Slot::LmHead)?
        };
        if let Some(kind) = lora.as_ref().and_then(|(l, _)| l.quant) {
            let mut removed: Vec<(usize, usize)> = Vec::new();
            for lp in layers.iter_mut() {
                let ws = [
                    (lp.attn_w, c, 3 * c),
                    (lp.proj_w, c, c),
                    (lp.fc_w, c, 4 * c),
                    (lp.fcproj_w, 4 * c, c),
                ];
                for (k, (w, n_in, n_out)) in ws.into_iter().enumerate() {
                    quant.push(QuantWeight::quantize(
                        &params[w..w + n_in * n_out],
                        n_in,
                        n_out,
                        kind,
                    ));
                    lp.q[k] = Some(quant.len() - 1);
                    removed.push((w, n_in * n_out));
                }
            }
            removed.sort_unstable();
            let mut kept = Vec::with_capacity(params.len() - removed.iter().map(|r| r.1).sum::<usize>());
            let mut at = 0;
            for &(o, len) in &removed {
                kept.extend_from_slice(&params[at..o]);
                at = o + len;
            }
            kept.extend_from_slice(&params[at..]);
            params = kept;
            let remap = |o: usize| o - removed.iter().filter(|r| r.0 < o).map(|r| r.1).sum::<usize>();
            for lp in layers.iter_mut() {
                for o in [&mut lp.ln1_w, &mut lp.ln2_w] {
                    *o = remap(*o);
                }
                for o in [
                    &mut lp.ln1_b,
                    &mut lp.attn_b,
                    &mut lp.proj_b,
                    &mut lp.ln2_b,
                    &mut lp.fc_b,
                    &mut lp.fcproj_b,
                ]
                .into_iter()
                .flatten()
                {
                    *o = remap(*o);
                }
            }
            (wte, wpe, lnf_w, head) = (remap(wte), remap(wpe), remap(lnf_w), remap(head));
            lnf_b = lnf_b.map(remap);
        }
        let (trainable, offsets, base, frozen) = match lora {
            Some((_, adapters)) => {
                let want: usize = ad_offsets.iter().map(|o| o.1).sum();
                if adapters.len() != want {
                    return Err(Error::Config(format!(
                        "engine: {} adapter values given, the LoRA config has {want}",
                        adapters.len()
                    )));
                }
                (adapters, ad_offsets, params, true)
            }
            None => (params, offsets, Vec::new(), false),
        };
        Ok(TrainEngine {
            b,
            t,
            grads: z(trainable.len()),
            offsets,
            base,
            frozen,
            wq: if quant.is_empty() {
                Vec::new()
            } else {
                z(4 * c * c)
            },
            quant,
            du: z(n * rank),
            p: cfg.dropout,
            lora_p,
            emb_mask: None,
            masks: vec![LayerMasks::default(); cfg.n_layer],
            dmask: if cfg.dropout > 0.0 { z(n * c) } else { Vec::new() },
            xdrop: if lora_p > 0.0 && layers.iter().any(|l| l.ad.iter().any(Option::is_some)) {
                z(n * 4 * c)
            } else {
                Vec::new()
            },
            wte,
            wpe,
            layers,
            lnf_w,
            lnf_b,
            head,
            x0: z(n * c),
            acts,
            work: None,
            lnf: z(n * c),
            lnf_stats: vec![(0.0, 0.0); n],
            logits: z(n * v),
            dres: z(n * c),
            dwide: z(n * 4 * c),
            dnarrow: z(n * c),
            dqkv: z(n * 3 * c),
            ascratch: z(2 * t * t * (b * h).min(rayon::current_num_threads()).max(1)),
            row_tiles: Vec::new(),
            params: trainable,
            cfg: cfg.clone(),
        })
    }

    /// Gradient checkpointing (Chen et al. 2016): keep only each block's output, and in backward
    /// recompute one block's activations at a time, from its kept input, in one shared set of
    /// buffers. The activations take about `1/n_layer` of the memory for one more forward of the
    /// blocks; the gradients are the same, bit for bit (the recomputation repeats the same
    /// arithmetic, dropout masks included).
    pub fn checkpointed(mut self) -> TrainEngine {
        if self.work.is_some() {
            return self;
        }
        let n = self.b * self.t * self.cfg.n_embd;
        let mut work = None;
        for a in &mut self.acts {
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
        self.work = work;
        self
    }

    /// Whether backward recomputes the blocks' activations ([`TrainEngine::checkpointed`]).
    pub fn is_checkpointed(&self) -> bool {
        self.work.is_some()
    }

    pub fn config(&self) -> &GptConfig {
        &self.cfg
    }

    /// The micro-batch shape the buffers hold.
    pub fn shape(&self) -> (usize, usize) {
        (self.b, self.t)
    }

    /// Bytes the engine holds: weights (f32 and quantised), gradients and every step buffer.
    pub fn bytes(&self) -> usize {
        let f = |v: &Vec<f32>| v.len() * 4;
        let st = |v: &Vec<(f32, f32)>| v.len() * 8;
        let acts: usize = self
            .acts
            .iter()
            .chain(&self.work)
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
            &self.base,
            &self.wq,
            &self.x0,
            &self.lnf,
            &self.logits,
            &self.dres,
            &self.dwide,
            &self.dnarrow,
            &self.dqkv,
            &self.ascratch,
            &self.du,
            &self.dmask,
            &self.xdrop,
        ];
        buffers.iter().map(|v| f(v)).sum::<usize>()
            + st(&self.lnf_stats)
            + acts
            + self.quant.iter().map(QuantWeight::bytes).sum::<usize>()
    }

    pub fn zero_grad(&mut self) {
        self.grads.par_chunks_mut(1 << 16).for_each(|g| g.fill(0.0));
    }

    /// The model's weights: the frozen base with LoRA, else the trainable parameters.
    fn weights(&self) -> &[f32] {
        if self.frozen { &self.base } else { &self.params }
    }

    fn p(&self, off: usize, len: usize) -> &[f32] {
        &self.weights()[off..off + len]
    }

    /// Forward and backward of one micro-batch: returns its weighted mean cross-entropy (NaN when
    /// no position carries loss, and then no gradient) and adds `scale ×` its gradient to `grads`.
    /// Dropout masks come from `rng`, which moves past them as [`crate::Gpt::forward`] would move it.
    pub fn forward_backward(&mut self, batch: &StepBatch<'_>, scale: f32, rng: &mut Rng) -> Result<f64> {
        let total = self.check_batch(batch)?;
        if total == 0 {
            return Ok(f64::NAN);
        }
        self.draw_masks(rng, batch.b, batch.t);
        self.forward(batch);
        let loss = self.loss_and_dlogits(batch, scale / total as f32);
        self.backward(batch);
        Ok(loss / total as f64)
    }

    /// Validation: the weighted cross-entropy of a batch without dropout or backward, as its sum
    /// over positions and the weight it carries; the gradients are untouched. A batch of fewer
    /// rows than the engine's (an epoch's last) is padded with rows that carry no loss.
    pub fn eval_loss(&mut self, batch: &StepBatch<'_>) -> Result<(f64, usize)> {
        if batch.b < self.b && batch.t == self.t {
            let n = self.b * self.t;
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
                b: self.b,
                t: self.t,
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
        self.emb_mask = None;
        self.masks.fill(LayerMasks::default());
        self.forward(batch);
        // The gradient written over the logits is scaled to 0 and never used.
        Ok((self.loss_and_dlogits(batch, 0.0), total))
    }

    /// Checks a batch against the engine's shape, vocabulary and context; returns the weight it
    /// carries (the positions that count towards the loss).
    fn check_batch(&self, batch: &StepBatch<'_>) -> Result<usize> {
        let (b, t) = (batch.b, batch.t);
        let n = b * t;
        if (b, t) != (self.b, self.t) {
            return Err(Error::Config(format!(
                "engine built for {}×{}, batch is {b}×{t}",
                self.b, self.t
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
        let (v, ctx) = (self.cfg.vocab_size, self.cfg.n_ctx);
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

    /// Places this micro-batch's dropout sites in the stream, in the autograd path's order:
    /// the embeddings, then per block c_attn's adapter input, the attention weights,
    /// attn.c_proj's adapter input, the attention's output, c_fc's and mlp.c_proj's adapter
    /// inputs, and the MLP's output.
    fn draw_masks(&mut self, rng: &mut Rng, b: usize, t: usize) {
        let (c, h, n) = (self.cfg.n_embd, self.cfg.n_head, b * t);
        let (p, lp) = (self.p, self.lora_p);
        self.emb_mask = Mask::take(rng, p, n * c);
        for (m, layer) in self.masks.iter_mut().zip(&self.layers) {
            let adapter =
                |k: usize, rng: &mut Rng, len: usize| layer.ad[k].and_then(|_| Mask::take(rng, lp, len));
            let ad0 = adapter(0, rng, n * c);
            let att = Mask::take(rng, p, b * h * t * t);
            let ad1 = adapter(1, rng, n * c);
            let res0 = Mask::take(rng, p, n * c);
            let ad2 = adapter(2, rng, n * c);
            let ad3 = adapter(3, rng, n * 4 * c);
            let res1 = Mask::take(rng, p, n * c);
            *m = LayerMasks {
                ad: [ad0, ad1, ad2, ad3],
                att,
                res: [res0, res1],
            };
        }
    }

    /// Forward of the whole model to the logits; also lays out this batch's attention tiles,
    /// which backward reuses.
    fn forward(&mut self, batch: &StepBatch<'_>) {
        let t = batch.t;
        self.row_tiles = (0..batch.b)
            .map(|r| row_tiles(&batch.segments[r * t..(r + 1) * t]))
            .collect();
        let cfg = self.cfg.clone();
        let mut wq = std::mem::take(&mut self.wq);
        let mut xdrop = std::mem::take(&mut self.xdrop);
        let mut pd = std::mem::take(&mut self.ascratch);
        let (c, v, eps) = (cfg.n_embd, cfg.vocab_size, cfg.layer_norm_eps as f32);
        let n = batch.b * batch.t;
        // Embeddings.
        {
            let wts = if self.frozen { &self.base } else { &self.params };
            let wte = &wts[self.wte..self.wte + v * c];
            let wpe = &wts[self.wpe..self.wpe + cfg.n_ctx * c];
            let x0 = &mut self.x0;
            x0.par_chunks_mut(c).enumerate().for_each(|(i, row)| {
                let (tok, pos) = (batch.inputs[i] as usize, batch.positions[i] as usize);
                for k in 0..c {
                    row[k] = wte[tok * c + k] + wpe[pos * c + k];
                }
            });
            if let Some(m) = &self.emb_mask {
                apply_mask(x0, None, m, false);
            }
        }
        for l in 0..cfg.n_layer {
            match self.work.take() {
                Some(mut w) => {
                    self.layer_forward(l, &mut w, batch, &mut wq, &mut xdrop, &mut pd);
                    std::mem::swap(&mut w.res3, &mut self.acts[l].res3);
                    self.work = Some(w);
                }
                None => {
                    let mut a = std::mem::replace(&mut self.acts[l], empty_acts());
                    self.layer_forward(l, &mut a, batch, &mut wq, &mut xdrop, &mut pd);
                    self.acts[l] = a;
                }
            }
        }
        let last = &self.acts[cfg.n_layer - 1].res3;
        let (lnf_w, lnf_b) = (self.lnf_w, self.lnf_b);
        let mut lnf = std::mem::take(&mut self.lnf);
        let mut lnf_stats = std::mem::take(&mut self.lnf_stats);
        layer_norm_fwd(
            &mut lnf,
            &mut lnf_stats,
            last,
            self.p(lnf_w, c),
            lnf_b.map(|o| self.p(o, c)),
            c,
            eps,
        );
        // logits = lnf · headᵀ
        let wts = if self.frozen { &self.base } else { &self.params };
        mm(
            &mut self.logits,
            View::rows(0, n, v, v),
            &lnf,
            View::rows(0, n, c, c),
            wts,
            View::rows(self.head, v, c, c).t(),
            false,
        );
        self.lnf = lnf;
        self.lnf_stats = lnf_stats;
        self.wq = wq;
        self.xdrop = xdrop;
        self.ascratch = pd;
    }

    /// Block `l`'s input: the embeddings, or block `l − 1`'s output.
    fn block_input(&self, l: usize) -> &[f32] {
        if l == 0 { &self.x0 } else { &self.acts[l - 1].res3 }
    }

    /// Block `l`'s forward from its input (the embeddings or block `l − 1`'s output) into `a`.
    /// `wq`, `xdrop` and `pd` are scratch.
    fn layer_forward(
        &self,
        l: usize,
        a: &mut LayerActs,
        batch: &StepBatch<'_>,
        wq: &mut [f32],
        xdrop: &mut [f32],
        pd: &mut [f32],
    ) {
        let cfg = &self.cfg;
        let (c, eps) = (cfg.n_embd, cfg.layer_norm_eps as f32);
        let n = batch.b * batch.t;
        let lp = self.layers[l];
        let lm = self.masks[l];
        // An adapter's input dropout, with the scratch its dropped-out input goes to.
        macro_rules! drop_in {
            ($k:expr) => {
                lm.ad[$k].as_ref().map(|m| (m, &mut xdrop[..]))
            };
        }
        let wts = if self.frozen { &self.base } else { &self.params };
        let trainable = &self.params;
        let [u_attn, u_proj, u_fc, u_fcproj] = &mut a.u;
        let input = self.block_input(l);
        layer_norm_fwd(
            &mut a.ln1,
            &mut a.ln1_stats,
            input,
            &wts[lp.ln1_w..lp.ln1_w + c],
            lp.ln1_b.map(|o| &wts[o..o + c]),
            c,
            eps,
        );
        linear_fwd(
            wts,
            (&self.quant, &mut *wq),
            trainable,
            &mut a.qkv,
            &a.ln1,
            n,
            lp.attn(c),
            u_attn,
            drop_in!(0),
        );
        self.attention_fwd(&mut a.att_stats, &mut a.atty, &a.qkv, batch, pd, lm.att.as_ref());
        // res2 = input + atty · Wproj + b
        linear_fwd(
            wts,
            (&self.quant, &mut *wq),
            trainable,
            &mut a.res2,
            &a.atty,
            n,
            lp.proj(c),
            u_proj,
            drop_in!(1),
        );
        if let Some(m) = &lm.res[0] {
            apply_mask(&mut a.res2, None, m, false);
        }
        add_into(&mut a.res2, input);
        layer_norm_fwd(
            &mut a.ln2,
            &mut a.ln2_stats,
            &a.res2,
            &wts[lp.ln2_w..lp.ln2_w + c],
            lp.ln2_b.map(|o| &wts[o..o + c]),
            c,
            eps,
        );
        linear_fwd(
            wts,
            (&self.quant, &mut *wq),
            trainable,
            &mut a.fch,
            &a.ln2,
            n,
            lp.fc(c),
            u_fc,
            drop_in!(2),
        );
        match cfg.activation {
            Activation::GeluTanh => map_into(&mut a.fch_act, &a.fch, |x| gelu_fast(Activation::GeluTanh, x)),
            Activation::GeluErf => map_into(&mut a.fch_act, &a.fch, |x| gelu_fast(Activation::GeluErf, x)),
        }
        // res3 = res2 + gelu · Wfcproj + b
        linear_fwd(
            wts,
            (&self.quant, &mut *wq),
            trainable,
            &mut a.res3,
            &a.fch_act,
            n,
            lp.fcproj(c),
            u_fcproj,
            drop_in!(3),
        );
        if let Some(m) = &lm.res[1] {
            apply_mask(&mut a.res3, None, m, false);
        }
        add_into(&mut a.res3, &a.res2);
    }

    /// Per (row, head): causal softmax(q·kᵀ/√d) over the row's segment, times v, tile by tile
    /// ([`Tile`]): only the causal triangle of each segment's block is computed. The weights are
    /// not kept: `stats` gets each row's softmax maximum and `1/sum` (2 values per row), from which
    /// backward makes the same weights again. `scratch` holds a pair of `(t, t)` matrices per
    /// group of tasks ([`per_head`]); with dropout v is multiplied by the weights' dropped-out copy.
    #[allow(clippy::too_many_arguments)]
    fn attention_fwd(
        &self,
        stats_all: &mut [f32],
        atty_all: &mut [f32],
        qkv: &[f32],
        batch: &StepBatch<'_>,
        scratch: &mut [f32],
        mask: Option<&Mask>,
    ) {
        let t = batch.t;
        let (c, h) = (self.cfg.n_embd, self.cfg.n_head);
        let d = c / h;
        let (qkv_len, atty_len, tt) = (qkv.len(), atty_all.len(), t * t);
        let atty = SendPtr(atty_all.as_mut_ptr());
        let stats_ptr = SendPtr(stats_all.as_mut_ptr());
        assert_eq!(stats_all.len(), batch.b * h * t * 2, "attention stats");
        per_head(scratch, tt, batch.b * h, |bh, p, pd| {
            let (bi, hi) = (bh / h, bh % h);
            let row0 = bi * t;
            let seg = &batch.segments[row0..row0 + t];
            let (tiles, general) = &self.row_tiles[bi];
            #[allow(unsafe_code)]
            // SAFETY: rows `bh·t..(bh+1)·t` of the stats belong to this task alone.
            let stats = unsafe { std::slice::from_raw_parts_mut(stats_ptr.get().add(bh * t * 2), t * 2) };
            for &tile in tiles {
                let (m, nc) = (tile.r1 - tile.r0, tile.r1 - tile.s);
                let pv = View::rows(tile.r0 * t + tile.s, m, nc, t);
                tile_weights(
                    p,
                    qkv,
                    (row0, hi, t),
                    (c, d),
                    (tile, *general, seg),
                    Stats::Write(&mut *stats),
                );
                // The weights v is multiplied by: the softmax's, or their dropped-out copy.
                let weights: &[f32] = match mask {
                    Some(mk) => {
                        dropped_weights(pd, p, mk, bh * tt, t, tile);
                        pd
                    }
                    None => p,
                };
                #[allow(unsafe_code)]
                // SAFETY: the output block (this tile's rows of this batch row, this head's
                // columns) belongs to this task alone; `weights` and `qkv` are read only.
                unsafe {
                    mm_raw(
                        atty.get(),
                        atty_len,
                        View::rows((row0 + tile.r0) * c + hi * d, m, d, c),
                        weights.as_ptr(),
                        tt,
                        pv,
                        qkv.as_ptr(),
                        qkv_len,
                        View::rows((row0 + tile.s) * 3 * c + 2 * c + hi * d, nc, d, 3 * c),
                        false,
                        1.0,
                        false,
                    );
                }
            }
        });
    }

    /// The weighted cross-entropy summed over positions (in f64), with `(softmax − onehot) ·
    /// weight · scale` written over the logits.
    fn loss_and_dlogits(&mut self, batch: &StepBatch<'_>, scale: f32) -> f64 {
        let v = self.cfg.vocab_size;
        self.logits
            .par_chunks_mut(v)
            .enumerate()
            .map(|(i, row)| {
                let w = f32::from(batch.weights[i]);
                let target = batch.targets[i] as usize;
                let sum = vectorized(|| {
                    let max = row
                        .iter()
                        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
                    row.iter_mut().for_each(|x| *x = fm::exp(*x - max));
                    row.iter().sum::<f32>()
                });
                let p_target = row[target] / sum;
                if w == 0.0 {
                    row.fill(0.0);
                    return 0.0;
                }
                let k = w * scale / sum;
                vectorized(|| row.iter_mut().for_each(|x| *x *= k));
                row[target] -= w * scale;
                -f64::from(p_target.max(f32::MIN_POSITIVE)).ln() * f64::from(w)
            })
            .collect::<Vec<f64>>()
            .iter()
            .sum()
    }

    fn backward(&mut self, batch: &StepBatch<'_>) {
        let cfg = self.cfg.clone();
        let (c, v, h) = (cfg.n_embd, cfg.vocab_size, cfg.n_head);
        let n = batch.b * batch.t;
        let mut grads = std::mem::take(&mut self.grads);
        let mut dres = std::mem::take(&mut self.dres);
        let mut dnarrow = std::mem::take(&mut self.dnarrow);
        let mut dwide = std::mem::take(&mut self.dwide);
        let mut dqkv = std::mem::take(&mut self.dqkv);
        let mut datt = std::mem::take(&mut self.ascratch);
        let mut du = std::mem::take(&mut self.du);
        let mut wq = std::mem::take(&mut self.wq);
        let mut dmask = std::mem::take(&mut self.dmask);
        let mut xdrop = std::mem::take(&mut self.xdrop);
        let frozen = self.frozen;
        let wts = if frozen { &self.base } else { &self.params };
        let trainable = &self.params;
        // Head: dlnf = dlogits · head; dhead += dlogitsᵀ · lnf (a frozen head has no gradient).
        mm(
            &mut dnarrow,
            View::rows(0, n, c, c),
            &self.logits,
            View::rows(0, n, v, v),
            wts,
            View::rows(self.head, v, c, c),
            false,
        );
        if !frozen {
            mm(
                &mut grads,
                View::rows(self.head, v, c, c),
                &self.logits,
                View::rows(0, n, v, v).t(),
                &self.lnf,
                View::rows(0, n, c, c),
                true,
            );
        }
        dres.par_chunks_mut(1 << 14).for_each(|x| x.fill(0.0));
        {
            let (gw, gb) = norm_grads(&mut grads, frozen, self.lnf_w, self.lnf_b, c);
            layer_norm_bwd(
                &mut dres,
                gw,
                gb,
                &dnarrow,
                &self.acts[cfg.n_layer - 1].res3,
                &self.lnf_stats,
                &wts[self.lnf_w..self.lnf_w + c],
                c,
            );
        }
        let act = cfg.activation;
        // A linear layer's backward (a macro, so it borrows the gradients only while it runs).
        macro_rules! lin {
            ($dx:expr, $dy:expr, $x:expr, $spec:expr, $u:expr, $drop:expr) => {
                linear_bwd(
                    wts,
                    (&self.quant, &mut wq),
                    trainable,
                    &mut grads,
                    frozen,
                    $dx,
                    $dy,
                    $x,
                    n,
                    $spec,
                    $u,
                    &mut du,
                    $drop,
                )
            };
        }
        // With checkpointing each block's activations are recomputed from its kept input.
        let mut work = self.work.take();
        for l in (0..cfg.n_layer).rev() {
            let lp = self.layers[l];
            let lm = self.masks[l];
            if let Some(w) = work.as_mut() {
                self.layer_forward(l, w, batch, &mut wq, &mut xdrop, &mut datt);
            }
            let a = work.as_ref().unwrap_or(&self.acts[l]);
            let input = self.block_input(l);
            macro_rules! drop_in {
                ($k:expr) => {
                    lm.ad[$k].as_ref().map(|m| (m, &mut xdrop[..]))
                };
            }
            // res3 = res2 + dropout(fch_act · Wfcproj + b)
            let dy = through_mask(&mut dmask, &dres, lm.res[1].as_ref());
            lin!(&mut dwide, dy, &a.fch_act, lp.fcproj(c), &a.u[3], drop_in!(3));
            // One loop per activation, so each is vectorised with its function inlined.
            match act {
                Activation::GeluTanh => dwide
                    .par_chunks_mut(1 << 12)
                    .zip(a.fch.par_chunks(1 << 12))
                    .for_each(|(g, x)| {
                        vectorized(|| {
                            g.iter_mut()
                                .zip(x)
                                .for_each(|(g, &x)| *g *= gelu_fast_grad(Activation::GeluTanh, x))
                        })
                    }),
                Activation::GeluErf => dwide
                    .par_chunks_mut(1 << 12)
                    .zip(a.fch.par_chunks(1 << 12))
                    .for_each(|(g, x)| {
                        vectorized(|| {
                            g.iter_mut()
                                .zip(x)
                                .for_each(|(g, &x)| *g *= gelu_fast_grad(Activation::GeluErf, x))
                        })
                    }),
            }
            // fch = ln2 · Wfc + b
            lin!(&mut dnarrow, &dwide, &a.ln2, lp.fc(c), &a.u[2], drop_in!(2));
            {
                let (gw, gb) = norm_grads(&mut grads, frozen, lp.ln2_w, lp.ln2_b, c);
                layer_norm_bwd(
                    &mut dres,
                    gw,
                    gb,
                    &dnarrow,
                    &a.res2,
                    &a.ln2_stats,
                    &wts[lp.ln2_w..lp.ln2_w + c],
                    c,
                );
            }
            // res2 = input + dropout(atty · Wproj + b)
            let dy = through_mask(&mut dmask, &dres, lm.res[0].as_ref());
            lin!(&mut dnarrow, dy, &a.atty, lp.proj(c), &a.u[1], drop_in!(1));
            attention_bwd(
                &mut dqkv,
                &mut datt,
                &dnarrow,
                (&a.qkv, &a.att_stats),
                batch,
                &self.row_tiles,
                (c, h),
                lm.att.as_ref(),
            );
            // qkv = ln1 · Wattn + b
            lin!(&mut dnarrow, &dqkv, &a.ln1, lp.attn(c), &a.u[0], drop_in!(0));
            {
                let (gw, gb) = norm_grads(&mut grads, frozen, lp.ln1_w, lp.ln1_b, c);
                layer_norm_bwd(
                    &mut dres,
                    gw,
                    gb,
                    &dnarrow,
                    input,
                    &a.ln1_stats,
                    &wts[lp.ln1_w..lp.ln1_w + c],
                    c,
                );
            }
        }
        // Embeddings: each row's gradient (through their dropout) to its token's and its
        // position's row.
        if !frozen {
            if let Some(m) = &self.emb_mask {
                apply_mask(&mut dres, None, m, false);
            }
            for i in 0..n {
                let (tok, pos) = (batch.inputs[i] as usize, batch.positions[i] as usize);
                let g = &dres[i * c..(i + 1) * c];
                let dt = &mut grads[self.wte + tok * c..self.wte + (tok + 1) * c];
                dt.iter_mut().zip(g).for_each(|(a, b)| *a += b);
                let dp = &mut grads[self.wpe + pos * c..self.wpe + (pos + 1) * c];
                dp.iter_mut().zip(g).for_each(|(a, b)| *a += b);
            }
        }
        self.work = work;
        self.grads = grads;
        self.dres = dres;
        self.dnarrow = dnarrow;
        self.dwide = dwide;
        self.dqkv = dqkv;
        self.ascratch = datt;
        self.du = du;
        self.wq = wq;
        self.dmask = dmask;
        self.xdrop = xdrop;
    }
}

/// For a row whose segments are runs (each id in one stretch), where each position's run starts;
/// `None` when an id comes back after another (then attention masks position by position).
fn segment_starts(seg: &[u32]) -> Option<Vec<usize>> {
    let mut starts = Vec::with_capacity(seg.len());
    let mut seen = Vec::new();
    let mut start = 0;
    for (i, &s) in seg.iter().enumerate() {
        if i > 0 && s != seg[i - 1] {
            if seen.contains(&s) {
                return None;
            }
            seen.push(seg[i - 1]);
            start = i;
        }
        starts.push(start);
    }
    Some(starts)
}

/// A linear layer of a block: its shape, weight and bias offsets (in the weights) and adapter.
#[derive(Debug, Clone, Copy)]
struct Lin {
    n_in: usize,
    n_out: usize,
    w: usize,
    b: Option<usize>,
    ad: Option<Adapter>,
    /// The weight's index in `TrainEngine::quant` (QLoRA), instead of `w`.
    q: Option<usize>,
}

impl LayerParams {
    fn attn(&self, c: usize) -> Lin {
        Lin {
            n_in: c,
            n_out: 3 * c,
            w: self.attn_w,
            b: self.attn_b,
            ad: self.ad[0],
            q: self.q[0],
        }
    }
    fn proj(&self, c: usize) -> Lin {
        Lin {
            n_in: c,
            n_out: c,
            w: self.proj_w,
            b: self.proj_b,
            ad: self.ad[1],
            q: self.q[1],
        }
    }
    fn fc(&self, c: usize) -> Lin {
        Lin {
            n_in: c,
            n_out: 4 * c,
            w: self.fc_w,
            b: self.fc_b,
            ad: self.ad[2],
            q: self.q[2],
        }
    }
    fn fcproj(&self, c: usize) -> Lin {
        Lin {
            n_in: 4 * c,
            n_out: c,
            w: self.fcproj_w,
            b: self.fcproj_b,
            ad: self.ad[3],
            q: self.q[3],
        }
    }
}

/// The weight of `lin` `(in, out)`: in the base, or (QLoRA) dequantised into `wq`.
fn weight_of<'a>(wts: &'a [f32], quant: &[QuantWeight], wq: &'a mut [f32], lin: Lin) -> (&'a [f32], View) {
    let (i, o) = (lin.n_in, lin.n_out);
    match lin.q {
        Some(k) => {
            quant[k].dequantize_into(&mut wq[..i * o]);
            (wq, View::rows(0, i, o, o))
        }
        None => (wts, View::rows(lin.w, i, o, o)),
    }
}

/// An adapter's input dropout: its mask and scratch for the dropped-out input.
type DropIn<'a> = Option<(&'a Mask, &'a mut [f32])>;

/// `out = x·W + b`, plus `scale · (x·Aᵀ)·Bᵀ` with an adapter (`x·Aᵀ` kept in `u` for backward;
/// with `drop`, `x` dropped out first).
#[allow(clippy::too_many_arguments)]
fn linear_fwd(
    wts: &[f32],
    (quant, wq): (&[QuantWeight], &mut [f32]),
    trainable: &[f32],
    out: &mut [f32],
    x: &[f32],
    n: usize,
    lin: Lin,
    u: &mut [f32],
    drop: DropIn<'_>,
) {
    let (i, o) = (lin.n_in, lin.n_out);
    fill_bias(out, lin.b.map(|b| &wts[b..b + o]), o);
    let (wbuf, wv) = weight_of(wts, quant, wq, lin);
    mm(
        out,
        View::rows(0, n, o, o),
        x,
        View::rows(0, n, i, i),
        wbuf,
        wv,
        true,
    );
    if let Some(ad) = lin.ad {
        let r = ad.r;
        let xa: &[f32] = match drop {
            Some((m, xd)) => {
                apply_mask(&mut xd[..n * i], Some(x), m, false);
                xd
            }
            None => x,
        };
        mm(
            u,
            View::rows(0, n, r, r),
            xa,
            View::rows(0, n, i, i),
            trainable,
            View::rows(ad.a, r, i, i).t(),
            false,
        );
        mm_beta(
            out,
            View::rows(0, n, o, o),
            u,
            View::rows(0, n, r, r),
            trainable,
            View::rows(ad.b, o, r, r).t(),
            true,
            ad.scale,
        );
    }
}

/// Backward of [`linear_fwd`]: `dx = dy·Wᵀ (+ du·A)`; a trainable model's `dW += xᵀ·dy`,
/// `db += Σ dy`; an adapter's `dB += scale·dyᵀ·u` and `dA += duᵀ·x`, where `du = scale·dy·B`
/// (with `drop`, `x` is the dropped-out input and `du·A` goes through the mask).
#[allow(clippy::too_many_arguments)]
fn linear_bwd(
    wts: &[f32],
    (quant, wq): (&[QuantWeight], &mut [f32]),
    trainable: &[f32],
    grads: &mut [f32],
    frozen: bool,
    dx: &mut [f32],
    dy: &[f32],
    x: &[f32],
    n: usize,
    lin: Lin,
    u: &[f32],
    du: &mut [f32],
    drop: DropIn<'_>,
) {
    let (i, o) = (lin.n_in, lin.n_out);
    if !frozen {
        if let Some(b) = lin.b {
            bias_grad(&mut grads[b..b + o], dy, o);
        }
        mm(
            grads,
            View::rows(lin.w, i, o, o),
            x,
            View::rows(0, n, i, i).t(),
            dy,
            View::rows(0, n, o, o),
            true,
        );
    }
    let (wbuf, wv) = weight_of(wts, quant, wq, lin);
    mm(
        dx,
        View::rows(0, n, i, i),
        dy,
        View::rows(0, n, o, o),
        wbuf,
        wv.t(),
        false,
    );
    if let Some(ad) = lin.ad {
        let r = ad.r;
        mm_beta(
            grads,
            View::rows(ad.b, o, r, r),
            dy,
            View::rows(0, n, o, o).t(),
            u,
            View::rows(0, n, r, r),
            true,
            ad.scale,
        );
        mm_beta(
            du,
            View::rows(0, n, r, r),
            dy,
            View::rows(0, n, o, o),
            trainable,
            View::rows(ad.b, o, r, r),
            false,
            ad.scale,
        );
        let mut drop = drop;
        let xa: &[f32] = match drop.as_mut() {
            Some((m, xd)) => {
                apply_mask(&mut xd[..n * i], Some(x), m, false);
                &xd[..]
            }
            None => x,
        };
        mm(
            grads,
            View::rows(ad.a, r, i, i),
            du,
            View::rows(0, n, r, r).t(),
            xa,
            View::rows(0, n, i, i),
            true,
        );
        match drop {
            // dx += (du·A) ⊙ mask
            Some((m, xd)) => {
                mm(
                    xd,
                    View::rows(0, n, i, i),
                    du,
                    View::rows(0, n, r, r),
                    trainable,
                    View::rows(ad.a, r, i, i),
                    false,
                );
                apply_mask(dx, Some(&xd[..n * i]), m, true);
            }
            None => mm(
                dx,
                View::rows(0, n, i, i),
                du,
                View::rows(0, n, r, r),
                trainable,
                View::rows(ad.a, r, i, i),
                true,
            ),
        }
    }
}

/// `acc += x`, on all cores.
fn add_into(acc: &mut [f32], x: &[f32]) {
    acc.par_chunks_mut(1 << 14)
        .zip(x.par_chunks(1 << 14))
        .for_each(|(r, x)| {
            r.iter_mut().zip(x).for_each(|(r, x)| *r += x);
        });
}

/// A norm's weight and bias gradients, or none when the model is frozen.
fn norm_grads(
    g: &mut [f32],
    frozen: bool,
    w: usize,
    b: Option<usize>,
    c: usize,
) -> (Option<&mut [f32]>, Option<&mut [f32]>) {
    if frozen {
        return (None, None);
    }
    let (gw, gb) = split_two(g, w, b, c);
    (Some(gw), gb)
}

/// The gradients of a norm's weight and (optional) bias, as two disjoint slices.
fn split_two(g: &mut [f32], w: usize, b: Option<usize>, c: usize) -> (&mut [f32], Option<&mut [f32]>) {
    match b {
        // The specs put a norm's bias right after its weight.
        Some(bo) if bo == w + c => {
            let (gw, gb) = g[w..w + 2 * c].split_at_mut(c);
            (gw, Some(gb))
        }
        _ => (&mut g[w..w + c], None),
    }
}

/// Rows of attention computed together: rows `r0..r1` of one segment that starts at `s`, against
/// columns `s..r1`. Tiles skip what the mask zeroes: the upper causal triangle and, in packed
/// rows, every other segment's columns.
#[derive(Debug, Clone, Copy)]
struct Tile {
    r0: usize,
    r1: usize,
    s: usize,
}

/// Rows per attention tile.
const ATT_TILE: usize = 64;

/// The tiles of one batch row, and whether it is masked position by position: when a segment id
/// comes back after another, one tile covers the whole row and the mask compares ids.
fn row_tiles(seg: &[u32]) -> (Vec<Tile>, bool) {
    let t = seg.len();
    match segment_starts(seg) {
        Some(st) => {
            let mut tiles = Vec::new();
            let mut s = 0;
            while s < t {
                let e = (s..t).find(|&j| st[j] != s).unwrap_or(t);
                let mut r0 = s;
                while r0 < e {
                    let r1 = (r0 + ATT_TILE).min(e);
                    tiles.push(Tile { r0, r1, s });
                    r0 = r1;
                }
                s = e;
            }
            (tiles, false)
        }
        None => (vec![Tile { r0: 0, r1: t, s: 0 }], true),
    }
}

/// Runs `f(bh, a, b)` for every `bh < count`, in parallel: the tasks are dealt to as many groups
/// as `scratch` holds pairs of `tt`-value matrices (task `bh` to group `bh mod groups`, so uneven
/// rows spread), and each group runs its tasks in turn with its own pair `a`, `b`.
fn per_head(scratch: &mut [f32], tt: usize, count: usize, f: impl Fn(usize, &mut [f32], &mut [f32]) + Sync) {
    let groups = scratch.len() / (2 * tt);
    assert!(groups > 0, "attention scratch");
    scratch.par_chunks_mut(2 * tt).enumerate().for_each(|(g, s)| {
        let (a, b) = s.split_at_mut(tt);
        for bh in (g..count).step_by(groups) {
            f(bh, a, b);
        }
    });
}

/// Each row's softmax maximum and `1/sum`: written when the weights are computed, read when they
/// are made again.
enum Stats<'a> {
    Write(&'a mut [f32]),
    Read(&'a [f32]),
}

impl Stats<'_> {
    /// Row `i`'s stats when replaying; `None` when they are to be computed.
    fn get(&self, i: usize) -> Option<(f32, f32)> {
        match self {
            Stats::Read(s) => Some((s[2 * i], s[2 * i + 1])),
            Stats::Write(_) => None,
        }
    }

    fn put(&mut self, i: usize, (max, inv): (f32, f32)) {
        if let Stats::Write(s) = self {
            s[2 * i] = max;
            s[2 * i + 1] = inv;
        }
    }
}

/// One head's attention weights over a tile of the batch row that starts at `row0`: q·kᵀ/√d
/// over the tile's columns, then [`tile_softmax`]. Forward (computing the stats) and backward
/// (replaying them) both go through here, so they make the same weights.
fn tile_weights(
    p: &mut [f32],
    qkv: &[f32],
    (row0, hi, t): (usize, usize, usize),
    (c, d): (usize, usize),
    (tile, general, seg): (Tile, bool, &[u32]),
    stats: Stats<'_>,
) {
    let (m, nc) = (tile.r1 - tile.r0, tile.r1 - tile.s);
    #[allow(unsafe_code)]
    // SAFETY: `p` is borrowed uniquely and `qkv` shared, so they do not overlap; the views are
    // checked against both lengths.
    unsafe {
        mm_raw(
            p.as_mut_ptr(),
            p.len(),
            View::rows(tile.r0 * t + tile.s, m, nc, t),
            qkv.as_ptr(),
            qkv.len(),
            View::rows((row0 + tile.r0) * 3 * c + hi * d, m, d, 3 * c),
            qkv.as_ptr(),
            qkv.len(),
            View::rows((row0 + tile.s) * 3 * c + c + hi * d, nc, d, 3 * c).t(),
            false,
            1.0 / (d as f32).sqrt(),
            false,
        );
    }
    tile_softmax(p, t, tile, general, seg, stats);
}

/// A tile's causal softmax in place, row by row over the row's visible columns (`j ≤ i` in its
/// segment), zero elsewhere in the tile. Computing, it writes each row's maximum and `1/sum` to
/// `stats`; replaying, it reads them and gives the same weights bit for bit (`exp(x − max) ·
/// inv`, the same two roundings).
fn tile_softmax(p: &mut [f32], t: usize, tile: Tile, general: bool, seg: &[u32], mut stats: Stats<'_>) {
    for i in tile.r0..tile.r1 {
        if general {
            let row = &mut p[i * t..(i + 1) * t];
            let visible = |j: usize| j <= i && seg[j] == seg[i];
            let (max, inv) = stats.get(i).unwrap_or_else(|| {
                let max = row[..=i]
                    .iter()
                    .enumerate()
                    .filter(|&(j, _)| visible(j))
                    .fold(f32::NEG_INFINITY, |m, (_, &x)| if x > m { x } else { m });
                let mut sum = 0f32;
                for (j, x) in row.iter().enumerate() {
                    if visible(j) {
                        sum += fm::exp(*x - max);
                    }
                }
                (max, 1.0 / sum)
            });
            for (j, x) in row.iter_mut().enumerate() {
                *x = if visible(j) { fm::exp(*x - max) * inv } else { 0.0 };
            }
            stats.put(i, (max, inv));
        } else {
            let row = &mut p[i * t + tile.s..i * t + tile.r1];
            let n = i - tile.s + 1;
            vectorized(|| {
                let (max, inv) = stats.get(i).unwrap_or_else(|| {
                    let max = row[..n]
                        .iter()
                        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
                    let sum: f32 = row[..n].iter().map(|&x| fm::exp(x - max)).sum();
                    (max, 1.0 / sum)
                });
                row[..n].iter_mut().for_each(|x| *x = fm::exp(*x - max) * inv);
                row[n..].fill(0.0);
                stats.put(i, (max, inv));
            });
        }
    }
}

/// Backward of attention for every (row, head), tile by tile: `dqkv` from `datty` (the gradient
/// of the attention's output) and qkv, with the weights made again from the kept softmax `stats`.
/// `scratch` as in [`TrainEngine::attention_fwd`].
#[allow(clippy::too_many_arguments)]
fn attention_bwd(
    dqkv: &mut [f32],
    scratch: &mut [f32],
    datty: &[f32],
    (qkv, stats): (&[f32], &[f32]),
    batch: &StepBatch<'_>,
    row_tiles: &[(Vec<Tile>, bool)],
    (c, h): (usize, usize),
    mask: Option<&Mask>,
) {
    let t = batch.t;
    let d = c / h;
    let scale = 1.0 / (d as f32).sqrt();
    let (qkv_len, datty_len, dqkv_len, tt) = (qkv.len(), datty.len(), dqkv.len(), t * t);
    let dq = SendPtr(dqkv.as_mut_ptr());
    per_head(scratch, tt, batch.b * h, |bh, p, dp| {
        let (bi, hi) = (bh / h, bh % h);
        let row0 = bi * t;
        let seg = &batch.segments[row0..row0 + t];
        let (tiles, general) = &row_tiles[bi];
        let st = &stats[bh * t * 2..(bh + 1) * t * 2];
        // dk and dv gather over tiles: start them at zero.
        for r in row0..row0 + t {
            for off in [c, 2 * c] {
                #[allow(unsafe_code)]
                // SAFETY: this batch row's rows, this head's columns of k and v: this task's alone.
                unsafe {
                    std::slice::from_raw_parts_mut(dq.get().add(r * 3 * c + off + hi * d), d).fill(0.0);
                }
            }
        }
        let q_rows = |r0: usize, m: usize| View::rows((row0 + r0) * 3 * c + hi * d, m, d, 3 * c);
        let k_rows = |s: usize, n: usize| View::rows((row0 + s) * 3 * c + c + hi * d, n, d, 3 * c);
        let v_rows = |s: usize, n: usize| View::rows((row0 + s) * 3 * c + 2 * c + hi * d, n, d, 3 * c);
        for &tile in tiles {
            let (m, nc) = (tile.r1 - tile.r0, tile.r1 - tile.s);
            let pv = View::rows(tile.r0 * t + tile.s, m, nc, t);
            let dy = View::rows((row0 + tile.r0) * c + hi * d, m, d, c);
            #[allow(unsafe_code)]
            // SAFETY: `p` and `dp` are this task's own scratch; the dq, dk and dv blocks written
            // here (this batch row's rows, this head's columns of each third of dqkv) belong to
            // this task alone; everything else is read only.
            unsafe {
                // The softmax's weights, again.
                tile_weights(
                    p,
                    qkv,
                    (row0, hi, t),
                    (c, d),
                    (tile, *general, seg),
                    Stats::Read(st),
                );
                // dv += P'ᵀ · dy, where P' are the weights v was multiplied by: the softmax's, or
                // with dropout their dropped-out copy, made in `dp` before it takes dP.
                let pw = match mask {
                    Some(mk) => {
                        dropped_weights(dp, p, mk, bh * tt, t, tile);
                        dp.as_ptr()
                    }
                    None => p.as_ptr(),
                };
                mm_raw(
                    dq.get(),
                    dqkv_len,
                    v_rows(tile.s, nc),
                    pw,
                    tt,
                    pv.t(),
                    datty.as_ptr(),
                    datty_len,
                    dy,
                    true,
                    1.0,
                    false,
                );
                // dP = dy · vᵀ
                mm_raw(
                    dp.as_mut_ptr(),
                    tt,
                    pv,
                    datty.as_ptr(),
                    datty_len,
                    dy,
                    qkv.as_ptr(),
                    qkv_len,
                    v_rows(tile.s, nc).t(),
                    false,
                    1.0,
                    false,
                );
            }
            // Through the dropout: dP ⊙ mask (where the weights are 0 it does not matter).
            if let Some(mk) = mask {
                let at = bh * tt;
                vectorized(|| {
                    for i in tile.r0..tile.r1 {
                        let row = &mut dp[i * t + tile.s..=i * t + i];
                        row.iter_mut()
                            .enumerate()
                            .for_each(|(j, x)| *x *= mk.factor(at + i * t + tile.s + j));
                    }
                });
            }
            // dS = P ⊙ (dP − rowsum(dP ⊙ P)); masked weights are 0, so their dS is too.
            vectorized(|| {
                for i in tile.r0..tile.r1 {
                    let span = i * t + tile.s..i * t + tile.r1;
                    let (prow, drow) = (&p[span.clone()], &mut dp[span]);
                    let n = i - tile.s + 1;
                    let dot: f32 = prow[..n].iter().zip(&drow[..n]).map(|(p, d)| p * d).sum();
                    for (d, &p) in drow.iter_mut().zip(prow) {
                        *d = p * (*d - dot);
                    }
                }
            });
            #[allow(unsafe_code)]
            // SAFETY: as above.
            unsafe {
                // dq = dS · k / √d (each query row is in one tile)
                mm_raw(
                    dq.get(),
                    dqkv_len,
                    q_rows(tile.r0, m),
                    dp.as_ptr(),
                    tt,
                    pv,
                    qkv.as_ptr(),
                    qkv_len,
                    k_rows(tile.s, nc),
                    false,
                    scale,
                    false,
                );
                // dk += dSᵀ · q / √d
                mm_raw(
                    dq.get(),
                    dqkv_len,
                    k_rows(tile.s, nc),
                    dp.as_ptr(),
                    tt,
                    pv.t(),
                    qkv.as_ptr(),
                    qkv_len,
                    q_rows(tile.r0, m),
                    true,
                    scale,
                    false,
                );
            }
        }
    });
}

/// With a mask: `dst = src ⊙ mask` (or `+=` with `add`); without `src`, `dst ⊙= mask`. `dst`'s
/// element `i` takes the mask's element `i`.
fn apply_mask(dst: &mut [f32], src: Option<&[f32]>, m: &Mask, add: bool) {
    const CHUNK: usize = 1 << 12;
    dst.par_chunks_mut(CHUNK).enumerate().for_each(|(ci, d)| {
        let at = ci * CHUNK;
        vectorized(|| match src {
            None => d.iter_mut().enumerate().for_each(|(j, x)| *x *= m.factor(at + j)),
            Some(s) => {
                let s = &s[at..at + d.len()];
                if add {
                    d.iter_mut()
                        .zip(s)
                        .enumerate()
                        .for_each(|(j, (x, &y))| *x += y * m.factor(at + j));
                } else {
                    d.iter_mut()
                        .zip(s)
                        .enumerate()
                        .for_each(|(j, (x, &y))| *x = y * m.factor(at + j));
                }
            }
        })
    });
}

/// The gradient `g` through a dropout mask, in `scratch`; `g` itself without one.
fn through_mask<'a>(scratch: &'a mut [f32], g: &'a [f32], m: Option<&Mask>) -> &'a [f32] {
    match m {
        Some(m) => {
            apply_mask(scratch, Some(g), m, false);
            scratch
        }
        None => g,
    }
}

/// `pd = p ⊙ mask` over a tile of one `(t, t)` block of causal attention weights whose mask
/// elements start at `at`; above the diagonal both are 0.
fn dropped_weights(pd: &mut [f32], p: &[f32], m: &Mask, at: usize, t: usize, tile: Tile) {
    vectorized(|| {
        for i in tile.r0..tile.r1 {
            let span = i * t + tile.s..i * t + tile.r1;
            let (d, a) = (&mut pd[span.clone()], &p[span]);
            let n = i - tile.s + 1;
            for j in 0..n {
                d[j] = a[j] * m.factor(at + i * t + tile.s + j);
            }
            d[n..].fill(0.0);
        }
    })
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
