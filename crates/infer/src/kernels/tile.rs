//! Many rows at once (a prompt, or a decode batch of more than a few sequences): register tiles.
//!
//! Each task takes [`PANEL`] outputs, read in place (q8 ones are decoded into this thread's
//! buffer first), and multiplies them by every row in register tiles:
//! - a packed panel of an `(in, out)` matrix in tiles of [`TM`] rows × [`TW`] columns, whose sums
//!   stay in registers (12 of AVX2's 16, with two of weights and one broadcast input), over runs
//!   of [`KC`] inputs so the panel's slice stays in L2 while every tile reads it;
//! - outputs of an `(out, in)` matrix (the head) in tiles of [`DR`] rows × [`DJ`] outputs, each a
//!   dot product along the inputs kept in eight lanes.
//!
//! The weights are read once per call and never copied whole, and there is no per-call set-up to
//! amortise, so this path is fast from a handful of rows up.

use super::{Elem, Isa, Layout, Matrix, PANEL, QBLOCK, Store, fmadd, isa};
use rayon::prelude::*;

/// Columns of a tile: two AVX2 registers of sums per row.
const TW: usize = 16;
/// Rows of a tile.
const TM: usize = 6;
/// Inputs per pass: a column strip of a panel's slice, `KC × TW` f32, is 16 KiB (half of L1).
const KC: usize = 64;

thread_local! {
    /// A task's decoded q8 panel, reused across calls.
    static PANEL_F32: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The caller's per-panel results, reused across calls (taken out while in use).
    static PARTS: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    /// The caller's rows, interleaved by [`interleave`] (taken out while in use).
    static XP: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// `out = x · W` for `x: (m, k)` and any matrix; `out: (m, n)`.
pub(super) fn many_rows(x: &[f32], m: usize, w: &Matrix, out: &mut [f32]) {
    let (k, n) = (w.n_in(), w.n_out());
    let np = n.div_ceil(PANEL);
    let (mut parts, mut xp_buf) = (PARTS.take(), XP.take());
    parts.clear();
    parts.resize(np * m * PANEL, 0.0); // [panel][row][PANEL]
    interleave(x, m, k, &mut xp_buf);
    let xp = &xp_buf[..];
    parts.par_chunks_mut(m * PANEL).enumerate().for_each(|(p, part)| {
        let span = p * k * PANEL..(p + 1) * k * PANEL;
        let outs = (p * PANEL..((p + 1) * PANEL).min(n)).len();
        let rows = p * PANEL * k..(p * PANEL + outs) * k;
        match (&w.store, w.layout) {
            (Store::F32(v), Layout::InOut) => panel_tiles(xp, m, k, &v[span], part),
            (Store::Bf16(v), Layout::InOut) => panel_tiles(xp, m, k, &v[span], part),
            (Store::F32(v), Layout::OutIn) => dot_tiles(x, m, k, &v[rows], part),
            (Store::Bf16(v), Layout::OutIn) => dot_tiles(x, m, k, &v[rows], part),
            (Store::Q8 { q, scales }, layout) => PANEL_F32.with_borrow_mut(|buf| {
                decode_q8(q, scales, layout, k, p, outs, buf);
                match layout {
                    Layout::InOut => panel_tiles(xp, m, k, buf, part),
                    Layout::OutIn => dot_tiles(x, m, k, buf, part),
                }
            }),
        }
    });
    for (p, part) in parts.chunks(m * PANEL).enumerate() {
        let (j0, j1) = (p * PANEL, ((p + 1) * PANEL).min(n));
        for (r, row) in part.chunks(PANEL).enumerate() {
            out[r * n + j0..r * n + j1].copy_from_slice(&row[..j1 - j0]);
        }
    }
    PARTS.set(parts);
    XP.set(xp_buf);
}

/// `x: (m, k)` by blocks of [`TM`] rows, each block's values interleaved (`xp[i · rows + r]` for
/// input `i` of its row `r`), the blocks one after another: what a tile reads, in the order it
/// reads it.
fn interleave(x: &[f32], m: usize, k: usize, xp: &mut Vec<f32>) {
    xp.clear();
    xp.resize(m * k, 0.0);
    for r0 in (0..m).step_by(TM) {
        let rows = TM.min(m - r0);
        let block = &mut xp[r0 * k..(r0 + rows) * k];
        for r in 0..rows {
            let xr = &x[(r0 + r) * k..(r0 + r + 1) * k];
            for (o, &v) in block[r..].iter_mut().step_by(rows).zip(xr) {
                *o = v;
            }
        }
    }
}

/// Panel `p` of a q8 matrix as f32 into `buf`: for [`Layout::InOut`] the packed panel
/// `(k, PANEL)`, for [`Layout::OutIn`] its `outs` outputs from `p · PANEL`, `(outs, k)`.
fn decode_q8(q: &[i8], scales: &[f32], layout: Layout, k: usize, p: usize, outs: usize, buf: &mut Vec<f32>) {
    let nb = k.div_ceil(QBLOCK);
    buf.clear();
    match layout {
        Layout::InOut => {
            // Row i, column jj of the panel takes the scale of block i / QBLOCK.
            let sc = &scales[p * nb * PANEL..(p + 1) * nb * PANEL];
            let rows = q[p * k * PANEL..(p + 1) * k * PANEL].chunks_exact(PANEL);
            for (i, row) in rows.enumerate() {
                let s = &sc[(i / QBLOCK) * PANEL..][..PANEL];
                buf.extend(row.iter().zip(s).map(|(&w, &s)| f32::from(w) * s));
            }
        }
        Layout::OutIn => {
            for j in p * PANEL..p * PANEL + outs {
                let s = &scales[j * nb..(j + 1) * nb];
                let row = &q[j * k..(j + 1) * k];
                buf.extend(row.iter().enumerate().map(|(i, &w)| f32::from(w) * s[i / QBLOCK]));
            }
        }
    }
}

/// `out = x · P` for one panel `P: (k, PANEL)` and all `m` rows of `x: (m, k)` (given
/// [`interleave`]d as `xp`); `out: (m, PANEL)`.
fn panel_tiles<E: Elem>(xp: &[f32], m: usize, k: usize, panel: &[E], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
        fn avx512<E: Elem>(xp: &[f32], m: usize, k: usize, panel: &[E], out: &mut [f32]) {
            panel_k::<E, true>(xp, m, k, panel, out)
        }
        #[target_feature(enable = "avx2,fma")]
        fn avx2<E: Elem>(xp: &[f32], m: usize, k: usize, panel: &[E], out: &mut [f32]) {
            panel_k::<E, true>(xp, m, k, panel, out)
        }
        match isa() {
            #[allow(unsafe_code)]
            // SAFETY: `isa()` detected these features on this CPU.
            Isa::Avx512 => unsafe { avx512::<E>(xp, m, k, panel, out) },
            #[allow(unsafe_code)]
            // SAFETY: as above.
            Isa::Avx2 => unsafe { avx2::<E>(xp, m, k, panel, out) },
            Isa::Baseline => panel_k::<E, false>(xp, m, k, panel, out),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    panel_k::<E, false>(xp, m, k, panel, out)
}

#[inline(always)]
fn panel_k<E: Elem, const FMA: bool>(xp: &[f32], m: usize, k: usize, panel: &[E], out: &mut [f32]) {
    for k0 in (0..k).step_by(KC) {
        let kc = KC.min(k - k0);
        let w = &panel[k0 * PANEL..(k0 + kc) * PANEL];
        let first = k0 == 0;
        // One column strip of the slice (kc × TW, 16 KiB) stays in L1 while every row block reads it.
        for c0 in (0..PANEL).step_by(TW) {
            for r0 in (0..m).step_by(TM) {
                let rows = TM.min(m - r0);
                // This block's inputs k0..k0 + kc, interleaved.
                let xs = &xp[r0 * k + k0 * rows..r0 * k + (k0 + kc) * rows];
                let o = &mut out[r0 * PANEL..(r0 + rows) * PANEL];
                match rows {
                    1 => tile::<E, FMA, 1>(xs, w, c0, o, first),
                    2 => tile::<E, FMA, 2>(xs, w, c0, o, first),
                    3 => tile::<E, FMA, 3>(xs, w, c0, o, first),
                    4 => tile::<E, FMA, 4>(xs, w, c0, o, first),
                    5 => tile::<E, FMA, 5>(xs, w, c0, o, first),
                    _ => tile::<E, FMA, TM>(xs, w, c0, o, first),
                }
            }
        }
    }
}

/// `M` rows (interleaved in `xp`) times columns `c0..c0 + TW` of a panel's run of inputs
/// `w: (kc, PANEL)`, added to those columns of `out: (M, PANEL)` (or written, for the `first` run).
#[inline(always)]
fn tile<E: Elem, const FMA: bool, const M: usize>(
    xp: &[f32],
    w: &[E],
    c0: usize,
    out: &mut [f32],
    first: bool,
) {
    let mut acc = [[0f32; TW]; M];
    if !first {
        for (a, o) in acc.iter_mut().zip(out.chunks_exact(PANEL)) {
            a.copy_from_slice(&o[c0..c0 + TW]);
        }
    }
    for (xs, wr) in xp.chunks_exact(M).zip(w.chunks_exact(PANEL)) {
        let wr = &wr[c0..c0 + TW];
        let wt: [f32; TW] = std::array::from_fn(|l| wr[l].f());
        for (a, &xv) in acc.iter_mut().zip(xs) {
            for (s, &wv) in a.iter_mut().zip(&wt) {
                *s = fmadd::<FMA>(xv, wv, *s);
            }
        }
    }
    for (a, o) in acc.iter().zip(out.chunks_exact_mut(PANEL)) {
        o[c0..c0 + TW].copy_from_slice(a);
    }
}

/// Rows of an `(out, in)` tile.
const DR: usize = 4;
/// Outputs of an `(out, in)` tile: 4 × 3 sums of eight lanes, with 3 of weights, fill 15 of
/// AVX2's 16 registers (the rows' inputs are memory operands).
const DJ: usize = 3;

/// `out[r][j] = x[r] · w[j]` for `x: (m, k)` and `w: (outs, k)`, `out: (m, PANEL)`.
fn dot_tiles<E: Elem>(x: &[f32], m: usize, k: usize, w: &[E], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
        fn avx512<E: Elem>(x: &[f32], m: usize, k: usize, w: &[E], out: &mut [f32]) {
            dots::<E, true>(x, m, k, w, out)
        }
        #[target_feature(enable = "avx2,fma")]
        fn avx2<E: Elem>(x: &[f32], m: usize, k: usize, w: &[E], out: &mut [f32]) {
            dots::<E, true>(x, m, k, w, out)
        }
        match isa() {
            #[allow(unsafe_code)]
            // SAFETY: `isa()` detected these features on this CPU.
            Isa::Avx512 => unsafe { avx512::<E>(x, m, k, w, out) },
            #[allow(unsafe_code)]
            // SAFETY: as above.
            Isa::Avx2 => unsafe { avx2::<E>(x, m, k, w, out) },
            Isa::Baseline => dots::<E, false>(x, m, k, w, out),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    dots::<E, false>(x, m, k, w, out)
}

#[inline(always)]
fn dots<E: Elem, const FMA: bool>(x: &[f32], m: usize, k: usize, w: &[E], out: &mut [f32]) {
    let outs = w.len() / k;
    let k8 = k / 8 * 8;
    for r0 in (0..m).step_by(DR) {
        // A short last block repeats its last row (computed, not stored).
        let xr: [&[f32]; DR] = std::array::from_fn(|r| {
            let r = (r0 + r).min(m - 1);
            &x[r * k..(r + 1) * k]
        });
        for j0 in (0..outs).step_by(DJ) {
            let wr: [&[E]; DJ] = std::array::from_fn(|j| {
                let j = (j0 + j).min(outs - 1);
                &w[j * k..(j + 1) * k]
            });
            // Runs of eight inputs, every row cut to the same count so the loop has no checks.
            let n8 = k / 8;
            let xc: [&[[f32; 8]]; DR] = std::array::from_fn(|r| &xr[r].as_chunks::<8>().0[..n8]);
            let wc: [&[[E; 8]]; DJ] = std::array::from_fn(|j| &wr[j].as_chunks::<8>().0[..n8]);
            let mut acc = [[[0f32; 8]; DJ]; DR];
            for c in 0..n8 {
                let wv: [[f32; 8]; DJ] = std::array::from_fn(|j| std::array::from_fn(|l| wc[j][c][l].f()));
                for (a, xs) in acc.iter_mut().zip(&xc) {
                    let xs = &xs[c];
                    for (aj, wj) in a.iter_mut().zip(&wv) {
                        for l in 0..8 {
                            aj[l] = fmadd::<FMA>(xs[l], wj[l], aj[l]);
                        }
                    }
                }
            }
            // Reduced with fixed indices, so the sums above can live in registers.
            let sums = acc.map(|a| a.map(|v| v.iter().sum::<f32>()));
            for r in 0..DR.min(m - r0) {
                for j in 0..DJ.min(outs - j0) {
                    let mut sum = sums[r][j];
                    for i in k8..k {
                        sum = fmadd::<FMA>(xr[r][i], wr[j][i].f(), sum);
                    }
                    out[(r0 + r) * PANEL + j0 + j] = sum;
                }
            }
        }
    }
}
