//! Elementwise and row work: layer norm and RMSNorm forward and backward, rotary embeddings,
//! SwiGLU, biases, sums.

use super::*;

pub(super) const ROWS_PER_TASK: usize = 16;

/// `out[i] = f(x[i])` on all cores, in a loop the compiler vectorises.
#[inline]
pub(super) fn map_into(out: &mut [f32], x: &[f32], f: impl Fn(f32) -> f32 + Sync) {
    out.par_chunks_mut(1 << 12)
        .zip(x.par_chunks(1 << 12))
        .for_each(|(o, x)| vectorized(|| o.iter_mut().zip(x).for_each(|(o, &x)| *o = f(x))));
}

/// `g[i] *= f(x[i])` on all cores, in a loop the compiler vectorises.
#[inline]
pub(super) fn scale_by(g: &mut [f32], x: &[f32], f: impl Fn(f32) -> f32 + Sync) {
    g.par_chunks_mut(1 << 12)
        .zip(x.par_chunks(1 << 12))
        .for_each(|(g, x)| vectorized(|| g.iter_mut().zip(x).for_each(|(g, &x)| *g *= f(x))));
}

/// Layer norm (or with `rms`, RMSNorm, whose bias is `None`) of every row, keeping each row's
/// statistics.
#[inline]
#[allow(clippy::too_many_arguments)]
pub(super) fn layer_norm_fwd(
    out: &mut [f32],
    st: &mut [(f32, f32)],
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    c: usize,
    eps: f32,
    rms: bool,
) {
    let _span = span(Family::Norm);
    out.par_chunks_mut(c * ROWS_PER_TASK)
        .zip(st.par_chunks_mut(ROWS_PER_TASK))
        .zip(x.par_chunks(c * ROWS_PER_TASK))
        .for_each(|((o, s), xs)| {
            vectorized(|| {
                for ((orow, srow), xrow) in o.chunks_mut(c).zip(s.iter_mut()).zip(xs.chunks(c)) {
                    *srow = if rms {
                        rms_norm_row(xrow, w, eps, orow)
                    } else {
                        layer_norm_row(xrow, w, b, eps, orow)
                    };
                }
            })
        });
}

/// `dx += layer norm's input gradient`; `dw`, `db` += their gradients (summed over rows). With
/// `rms`, RMSNorm's: its statistics' mean is 0 and the mean of the gradient is not taken out.
#[inline]
#[allow(clippy::too_many_arguments)]
pub(super) fn layer_norm_bwd(
    dx: &mut [f32],
    dw: Option<&mut [f32]>,
    db: Option<&mut [f32]>,
    dout: &[f32],
    x: &[f32],
    st: &[(f32, f32)],
    w: &[f32],
    c: usize,
    rms: bool,
) {
    let _span = span(Family::Norm);
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
                    dnorm_mean = if rms { 0.0 } else { dnorm_mean / c as f32 };
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
#[inline]
pub(super) fn bias_grad(db: &mut [f32], dout: &[f32], oc: usize) {
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
#[inline]
pub(super) fn fill_bias(out: &mut [f32], bias: Option<&[f32]>, oc: usize) {
    match bias {
        Some(b) => out.par_chunks_mut(oc * 64).for_each(|rows| {
            for r in rows.chunks_mut(oc) {
                r.copy_from_slice(b);
            }
        }),
        None => out.par_chunks_mut(1 << 14).for_each(|x| x.fill(0.0)),
    }
}

/// `acc += x`, on all cores.
#[inline]
pub(super) fn add_into(acc: &mut [f32], x: &[f32]) {
    acc.par_chunks_mut(1 << 14)
        .zip(x.par_chunks(1 << 14))
        .for_each(|(r, x)| {
            r.iter_mut().zip(x).for_each(|(r, x)| *r += x);
        });
}

/// A norm's weight and bias gradients, or none when the model is frozen.
#[inline]
pub(super) fn norm_grads(
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
#[inline]
pub(super) fn split_two(
    g: &mut [f32],
    w: usize,
    b: Option<usize>,
    c: usize,
) -> (&mut [f32], Option<&mut [f32]>) {
    match b {
        // The specs put a norm's bias right after its weight.
        Some(bo) if bo == w + c => {
            let (gw, gb) = g[w..w + 2 * c].split_at_mut(c);
            (gw, Some(gb))
        }
        _ => (&mut g[w..w + c], None),
    }
}

/// Rotary embeddings (the Llama family, HF's `rotate_half` form): in each head of q and k, the
/// pair `(x_j, x_{j+d/2})` turns by the angle `pos · inv_freq_j`; with `inverse`, back (which is
/// backward's gradient). `cos` and `sin` hold each row's `d/2` values; `w` is a qkv row's width,
/// and the `heads` rotated are q's and k's, which start the row.
#[inline]
pub(super) fn rope(
    qkv: &mut [f32],
    (cos, sin): (&[f32], &[f32]),
    (w, d, heads): (usize, usize, usize),
    inverse: bool,
) {
    let half = d / 2;
    qkv.par_chunks_mut(w * ROWS_PER_TASK)
        .zip(cos.par_chunks(half * ROWS_PER_TASK))
        .zip(sin.par_chunks(half * ROWS_PER_TASK))
        .for_each(|((rows, cs), sn)| {
            vectorized(|| {
                for ((row, c), s) in rows.chunks_mut(w).zip(cs.chunks(half)).zip(sn.chunks(half)) {
                    rotate_heads(row, (c, s), (d, heads), inverse);
                }
            })
        });
}

/// Each position's rotary `cos` and `sin` (`d/2` each), as transformers computes them: the angle
/// `pos · inv_freq` in f32, its cosine and sine.
#[inline]
pub(super) fn rope_tables(cos: &mut [f32], sin: &mut [f32], positions: &[u32], inv_freq: &[f32]) {
    let half = inv_freq.len();
    cos.par_chunks_mut(half)
        .zip(sin.par_chunks_mut(half))
        .zip(positions.par_iter())
        .for_each(|((c, s), &pos)| rope_angles(pos, inv_freq, c, s));
}

/// SwiGLU: `act = silu(gate) · up` per row, where a row of `fch` is `[gate | up]` (`inner` each).
#[inline]
pub(super) fn swiglu_fwd(act: &mut [f32], fch: &[f32], inner: usize) {
    let _span = span(Family::Activation);
    act.par_chunks_mut(inner * ROWS_PER_TASK)
        .zip(fch.par_chunks(2 * inner * ROWS_PER_TASK))
        .for_each(|(o, x)| {
            vectorized(|| {
                for (o, x) in o.chunks_mut(inner).zip(x.chunks(2 * inner)) {
                    swiglu_row(x, o);
                }
            })
        });
}

/// SwiGLU's backward: from `dact`, the gradient of `[gate | up]` into `dfch`.
#[inline]
pub(super) fn swiglu_bwd(dfch: &mut [f32], dact: &[f32], fch: &[f32], inner: usize) {
    let _span = span(Family::Activation);
    dfch.par_chunks_mut(2 * inner * ROWS_PER_TASK)
        .zip(dact.par_chunks(inner * ROWS_PER_TASK))
        .zip(fch.par_chunks(2 * inner * ROWS_PER_TASK))
        .for_each(|((d, da), x)| {
            vectorized(|| {
                for ((d, da), x) in d
                    .chunks_mut(2 * inner)
                    .zip(da.chunks(inner))
                    .zip(x.chunks(2 * inner))
                {
                    let (g, u) = x.split_at(inner);
                    let (dg, du) = d.split_at_mut(inner);
                    for j in 0..inner {
                        du[j] = da[j] * gelu_fast(Activation::Silu, g[j]);
                        dg[j] = da[j] * u[j] * gelu_fast_grad(Activation::Silu, g[j]);
                    }
                }
            })
        });
}
