//! Linear layers: a block's four products forward and backward, with biases, LoRA adapters and
//! QLoRA's dequantised weights.

use super::*;

/// A linear layer of a block: its shape, weight and bias offsets (in the weights), how its
/// weight is stored, and its parts' adapters.
#[derive(Debug, Clone, Copy)]
pub(super) struct Lin {
    pub(super) n_in: usize,
    pub(super) n_out: usize,
    pub(super) w: usize,
    pub(super) b: Option<usize>,
    /// The weight is stored `(out, in)` (`nn.Linear`), not `(in, out)` (Conv1D).
    pub(super) t: bool,
    pub(super) ad: [Option<Adapter>; PARTS],
    /// The weight's index in `Model::quant` (QLoRA), instead of `w`.
    pub(super) q: Option<usize>,
}

impl LayerParams {
    fn lin(
        &self,
        k: usize,
        cfg: &GptConfig,
        (n_in, n_out): (usize, usize),
        (w, b): (usize, Option<usize>),
    ) -> Lin {
        Lin {
            n_in,
            n_out,
            w,
            b,
            t: crate::layout::linear_out_in(cfg.arch),
            ad: self.ad[k],
            q: self.q[k],
        }
    }
    #[inline]
    pub(super) fn attn(&self, cfg: &GptConfig) -> Lin {
        self.lin(0, cfg, (cfg.n_embd, cfg.qkv_dim()), (self.attn_w, self.attn_b))
    }
    #[inline]
    pub(super) fn proj(&self, cfg: &GptConfig) -> Lin {
        self.lin(1, cfg, (cfg.n_embd, cfg.n_embd), (self.proj_w, self.proj_b))
    }
    #[inline]
    pub(super) fn fc(&self, cfg: &GptConfig) -> Lin {
        self.lin(2, cfg, (cfg.n_embd, cfg.mlp_in_dim()), (self.fc_w, self.fc_b))
    }
    #[inline]
    pub(super) fn fcproj(&self, cfg: &GptConfig) -> Lin {
        self.lin(3, cfg, (cfg.n_inner, cfg.n_embd), (self.fcproj_w, self.fcproj_b))
    }
}

/// The weight of `lin` as an `(in, out)` view: in the base, or (QLoRA) dequantised into `wq`.
#[inline]
pub(super) fn weight_of<'a>(
    wts: &'a [f32],
    quant: &[QuantWeight],
    wq: &'a mut [f32],
    lin: Lin,
) -> (&'a [f32], View) {
    let (i, o) = (lin.n_in, lin.n_out);
    let (buf, at): (&[f32], usize) = match lin.q {
        Some(k) => {
            quant[k].dequantize_into(&mut wq[..i * o]);
            (wq, 0)
        }
        None => (wts, lin.w),
    };
    if lin.t {
        (buf, View::rows(at, o, i, i).t())
    } else {
        (buf, View::rows(at, i, o, o))
    }
}

/// Where a product's `k`-th adapter keeps its `(n, r)` values among the product's.
#[inline]
fn part(k: usize, n: usize, r: usize) -> std::ops::Range<usize> {
    k * n * r..(k + 1) * n * r
}

/// An adapter's input dropout: its mask and scratch for the dropped-out input.
pub(super) type DropIn<'a> = Option<(&'a Mask, &'a mut [f32])>;

/// `out = x·W + b`, plus `scale · (x·Aᵀ)·Bᵀ` with an adapter (`x·Aᵀ` kept in `u` for backward;
/// with `drop`, `x` dropped out first).
#[inline]
#[allow(clippy::too_many_arguments)]
pub(super) fn linear_fwd(
    w: &Params<'_>,
    wq: &mut [f32],
    out: &mut [f32],
    x: &[f32],
    n: usize,
    lin: Lin,
    u: &mut [f32],
    drop: DropIn<'_>,
) {
    let _span = span(Family::Gemm);
    let (i, o) = (lin.n_in, lin.n_out);
    let (wts, trainable) = (w.wts, w.trainable);
    fill_bias(out, lin.b.map(|b| &wts[b..b + o]), o);
    let (wbuf, wv) = weight_of(wts, w.quant, wq, lin);
    gemm(
        out,
        View::rows(0, n, o, o),
        x,
        View::rows(0, n, i, i),
        wbuf,
        wv,
        w.how(true),
    );
    if lin.ad.iter().all(Option::is_none) {
        return;
    }
    let xa: &[f32] = match drop {
        Some((m, xd)) => {
            apply_mask(&mut xd[..n * i], Some(x), m, false);
            xd
        }
        None => x,
    };
    for (k, ad) in lin.ad.iter().flatten().enumerate() {
        let r = ad.r;
        let u = &mut u[part(k, n, r)];
        mm(
            u,
            View::rows(0, n, r, r),
            xa,
            View::rows(0, n, i, i),
            trainable,
            View::rows(ad.a, r, i, i).t(),
            false,
        );
        gemm(
            out,
            View::rows(ad.col, n, ad.n_out, o),
            u,
            View::rows(0, n, r, r),
            trainable,
            View::rows(ad.b, ad.n_out, r, r).t(),
            Gemm {
                beta: ad.scale,
                ..Gemm::ADD
            },
        );
    }
}

/// Where backward writes: the trainable parameters' gradients, and the scratch a linear layer's
/// backward needs (a dequantised weight, an adapter's `du`), for a micro-batch of `n` positions.
pub(super) struct Grads<'a> {
    pub(super) w: Params<'a>,
    pub(super) n: usize,
    pub(super) grads: &'a mut [f32],
    pub(super) wq: &'a mut [f32],
    pub(super) du: &'a mut [f32],
}

impl Grads<'_> {
    /// Backward of [`linear_fwd`]: `dx = dy·Wᵀ (+ du·A)`; a trainable model's `dW += xᵀ·dy`,
    /// `db += Σ dy`; each adapter's `dB += scale·dyᵀ·u` and `dA += duᵀ·x`, where `du = scale·dy·B`
    /// over its part's columns (with `drop`, `x` is the dropped-out input and `du·A` goes
    /// through the mask).
    #[inline]
    pub(super) fn linear(
        &mut self,
        dx: &mut [f32],
        dy: &[f32],
        x: &[f32],
        lin: Lin,
        u: &[f32],
        drop: DropIn<'_>,
    ) {
        let _span = span(Family::Gemm);
        let (wts, quant, frozen, n) = (self.w.wts, self.w.quant, self.w.frozen, self.n);
        let (i, o) = (lin.n_in, lin.n_out);
        if !frozen {
            let grads = &mut *self.grads;
            if let Some(b) = lin.b {
                bias_grad(&mut grads[b..b + o], dy, o);
            }
            if lin.t {
                gemm(
                    grads,
                    View::rows(lin.w, o, i, i),
                    dy,
                    View::rows(0, n, o, o).t(),
                    x,
                    View::rows(0, n, i, i),
                    self.w.how(true),
                );
            } else {
                gemm(
                    grads,
                    View::rows(lin.w, i, o, o),
                    x,
                    View::rows(0, n, i, i).t(),
                    dy,
                    View::rows(0, n, o, o),
                    self.w.how(true),
                );
            }
        }
        let (wbuf, wv) = weight_of(wts, quant, self.wq, lin);
        gemm(
            dx,
            View::rows(0, n, i, i),
            dy,
            View::rows(0, n, o, o),
            wbuf,
            wv.t(),
            self.w.how(false),
        );
        if lin.ad.iter().any(Option::is_some) {
            self.adapters(dx, dy, x, lin, u, drop);
        }
    }

    /// The adapters' part of [`Grads::linear`].
    #[inline]
    fn adapters(&mut self, dx: &mut [f32], dy: &[f32], x: &[f32], lin: Lin, u: &[f32], mut drop: DropIn<'_>) {
        let (trainable, n) = (self.w.trainable, self.n);
        let (grads, du) = (&mut *self.grads, &mut *self.du);
        let (i, o) = (lin.n_in, lin.n_out);
        let xa: &[f32] = match drop.as_mut() {
            Some((m, xd)) => {
                apply_mask(&mut xd[..n * i], Some(x), m, false);
                &xd[..]
            }
            None => x,
        };
        let ads: Vec<Adapter> = lin.ad.iter().flatten().copied().collect();
        for (k, ad) in ads.iter().enumerate() {
            let r = ad.r;
            let (u, du) = (&u[part(k, n, r)], &mut du[part(k, n, r)]);
            let dyk = View::rows(ad.col, n, ad.n_out, o);
            gemm(
                grads,
                View::rows(ad.b, ad.n_out, r, r),
                dy,
                dyk.t(),
                u,
                View::rows(0, n, r, r),
                Gemm {
                    beta: ad.scale,
                    ..Gemm::ADD
                },
            );
            gemm(
                du,
                View::rows(0, n, r, r),
                dy,
                dyk,
                trainable,
                View::rows(ad.b, ad.n_out, r, r),
                Gemm {
                    beta: ad.scale,
                    ..Gemm::SET
                },
            );
            mm(
                grads,
                View::rows(ad.a, r, i, i),
                du,
                View::rows(0, n, r, r).t(),
                xa,
                View::rows(0, n, i, i),
                true,
            );
        }
        // dx += Σ du·A, through the mask with dropout (the parts' sum first, in the scratch the
        // dropped-out input is done with).
        let (target, acc0): (&mut [f32], bool) = match drop.as_mut() {
            Some((_, xd)) => (&mut xd[..n * i], false),
            None => (dx, true),
        };
        for (k, ad) in ads.iter().enumerate() {
            let r = ad.r;
            mm(
                target,
                View::rows(0, n, i, i),
                &du[part(k, n, r)],
                View::rows(0, n, r, r),
                trainable,
                View::rows(ad.a, r, i, i),
                acc0 || k > 0,
            );
        }
        if let Some((m, xd)) = drop {
            apply_mask(dx, Some(&xd[..n * i]), m, true);
        }
    }
}
