//! Linear layers: a block's four products forward and backward, with biases, LoRA adapters and
//! QLoRA's dequantised weights.

use super::*;

/// A linear layer of a block: its shape, weight and bias offsets (in the weights) and adapter.
#[derive(Debug, Clone, Copy)]
pub(super) struct Lin {
    pub(super) n_in: usize,
    pub(super) n_out: usize,
    pub(super) w: usize,
    pub(super) b: Option<usize>,
    pub(super) ad: Option<Adapter>,
    /// The weight's index in `Model::quant` (QLoRA), instead of `w`.
    pub(super) q: Option<usize>,
}

impl LayerParams {
    #[inline]
    pub(super) fn attn(&self, c: usize) -> Lin {
        Lin {
            n_in: c,
            n_out: 3 * c,
            w: self.attn_w,
            b: self.attn_b,
            ad: self.ad[0],
            q: self.q[0],
        }
    }
    #[inline]
    pub(super) fn proj(&self, c: usize) -> Lin {
        Lin {
            n_in: c,
            n_out: c,
            w: self.proj_w,
            b: self.proj_b,
            ad: self.ad[1],
            q: self.q[1],
        }
    }
    #[inline]
    pub(super) fn fc(&self, c: usize) -> Lin {
        Lin {
            n_in: c,
            n_out: 4 * c,
            w: self.fc_w,
            b: self.fc_b,
            ad: self.ad[2],
            q: self.q[2],
        }
    }
    #[inline]
    pub(super) fn fcproj(&self, c: usize) -> Lin {
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
#[inline]
pub(super) fn weight_of<'a>(
    wts: &'a [f32],
    quant: &[QuantWeight],
    wq: &'a mut [f32],
    lin: Lin,
) -> (&'a [f32], View) {
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
    let (i, o) = (lin.n_in, lin.n_out);
    let (wts, trainable) = (w.wts, w.trainable);
    fill_bias(out, lin.b.map(|b| &wts[b..b + o]), o);
    let (wbuf, wv) = weight_of(wts, w.quant, wq, lin);
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
        gemm(
            out,
            View::rows(0, n, o, o),
            u,
            View::rows(0, n, r, r),
            trainable,
            View::rows(ad.b, o, r, r).t(),
            Gemm {
                acc: true,
                beta: ad.scale,
                par: true,
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
    /// `db += Σ dy`; an adapter's `dB += scale·dyᵀ·u` and `dA += duᵀ·x`, where `du = scale·dy·B`
    /// (with `drop`, `x` is the dropped-out input and `du·A` goes through the mask).
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
        let (wts, trainable, quant, frozen, n) =
            (self.w.wts, self.w.trainable, self.w.quant, self.w.frozen, self.n);
        let (grads, wq, du) = (&mut *self.grads, &mut *self.wq, &mut *self.du);
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
            gemm(
                grads,
                View::rows(ad.b, o, r, r),
                dy,
                View::rows(0, n, o, o).t(),
                u,
                View::rows(0, n, r, r),
                Gemm {
                    acc: true,
                    beta: ad.scale,
                    par: true,
                },
            );
            gemm(
                du,
                View::rows(0, n, r, r),
                dy,
                View::rows(0, n, o, o),
                trainable,
                View::rows(ad.b, o, r, r),
                Gemm {
                    acc: false,
                    beta: ad.scale,
                    par: true,
                },
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
}
