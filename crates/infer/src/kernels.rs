//! Matrix products for decoding, on plain slices.
//!
//! Decoding multiplies a few rows (one per sequence of the batch) by every weight matrix, so it is
//! bound by how fast the weights stream from memory, not by arithmetic. The kernels here read each
//! matrix once, front to back: a `(in, out)` matrix is split into bands of whole rows, one band per
//! core, each accumulating a partial product that is summed at the end; a `(out, in)` matrix (the
//! output head, tied to the embedding) is split into bands of output rows, each a run of dot
//! products. Many rows at once (a prompt) go to the `gemm` crate instead, which is compute-bound
//! and blocked for caches.
//!
//! The inner loops are plain Rust, compiled three times (AVX-512, AVX2+FMA, baseline) and chosen at
//! run time from the CPU's features, so the default build is fast on every x86-64 machine.
//! Weights are f32 or bf16 (the upper half of an f32: converting back is a shift), which halves the
//! bytes each token streams.

use rayon::prelude::*;

/// Up to this many rows use the streaming kernels; more go to `gemm`.
const SMALL_M: usize = 8;

/// A bf16 value: the upper 16 bits of an f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(transparent)]
pub struct Bf16(pub u16);

impl Bf16 {
    /// Rounds to nearest, ties to even (NaN stays NaN).
    pub fn from_f32(x: f32) -> Bf16 {
        let b = x.to_bits();
        if x.is_nan() {
            return Bf16(((b >> 16) | 0x40) as u16);
        }
        let round = 0x7FFF + ((b >> 16) & 1);
        Bf16((b.wrapping_add(round) >> 16) as u16)
    }

    pub fn to_f32(self) -> f32 {
        f32::from_bits(u32::from(self.0) << 16)
    }
}

/// A weight element the kernels can read as f32.
pub trait Elem: Copy + Send + Sync + 'static {
    fn f(self) -> f32;
}

impl Elem for f32 {
    #[inline(always)]
    fn f(self) -> f32 {
        self
    }
}

impl Elem for Bf16 {
    #[inline(always)]
    fn f(self) -> f32 {
        self.to_f32()
    }
}

/// Weight storage of one matrix.
#[derive(Debug, Clone)]
pub enum Store {
    F32(Vec<f32>),
    Bf16(Vec<Bf16>),
}

/// How the matrix is laid out against the product `y = x · W`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `(in, out)` row-major: GPT-2's Conv1D weights.
    InOut,
    /// `(out, in)` row-major: the embedding used as output head.
    OutIn,
}

/// A row-major weight matrix for `y = x · W` (or `x · Wᵀ`, see [`Layout`]).
#[derive(Debug, Clone)]
pub struct Matrix {
    pub store: Store,
    pub rows: usize,
    pub cols: usize,
    pub layout: Layout,
}

impl Matrix {
    /// `data` is row-major `(rows, cols)`. An `(in, out)` matrix is stored packed in panels of
    /// [`PANEL`] columns (see [`pack_panels`]).
    pub fn new(data: Vec<f32>, rows: usize, cols: usize, layout: Layout, bf16: bool) -> Matrix {
        let data = match layout {
            Layout::InOut => pack_panels(&data, rows, cols),
            Layout::OutIn => data,
        };
        let store = if bf16 {
            Store::Bf16(data.iter().map(|&x| Bf16::from_f32(x)).collect())
        } else {
            Store::F32(data)
        };
        Matrix {
            store,
            rows,
            cols,
            layout,
        }
    }

    /// Inputs per output.
    pub fn n_in(&self) -> usize {
        match self.layout {
            Layout::InOut => self.rows,
            Layout::OutIn => self.cols,
        }
    }

    pub fn n_out(&self) -> usize {
        match self.layout {
            Layout::InOut => self.cols,
            Layout::OutIn => self.rows,
        }
    }

    /// Bytes of weight data (with panel padding).
    pub fn bytes(&self) -> usize {
        match &self.store {
            Store::F32(v) => v.len() * 4,
            Store::Bf16(v) => v.len() * 2,
        }
    }

    /// Row `i` as f32 (for embedding lookups).
    pub fn row_into(&self, i: usize, out: &mut [f32]) {
        let c = self.cols;
        match &self.store {
            Store::F32(v) => out.copy_from_slice(&v[i * c..(i + 1) * c]),
            Store::Bf16(v) => out
                .iter_mut()
                .zip(&v[i * c..(i + 1) * c])
                .for_each(|(o, w)| *o = w.to_f32()),
        }
    }

    /// The matrix as plain row-major f32 `(rows, cols)`.
    fn to_f32(&self) -> std::borrow::Cow<'_, [f32]> {
        let flat = match &self.store {
            Store::F32(v) => std::borrow::Cow::Borrowed(v.as_slice()),
            Store::Bf16(v) => std::borrow::Cow::Owned(v.iter().map(|w| w.to_f32()).collect()),
        };
        match self.layout {
            Layout::OutIn => flat,
            Layout::InOut => std::borrow::Cow::Owned(unpack_panels(&flat, self.rows, self.cols)),
        }
    }
}

/// Columns per panel of a packed `(in, out)` matrix: 64 f32 are four AVX-512 registers.
pub const PANEL: usize = 64;

/// `(k, n)` row-major → panels of [`PANEL`] columns, each `(k, PANEL)` row-major and contiguous,
/// the last one padded with zeros. A panel's product with a row of x streams its weights front to
/// back while the 64 sums stay in registers.
pub fn pack_panels(w: &[f32], k: usize, n: usize) -> Vec<f32> {
    let np = n.div_ceil(PANEL);
    let mut out = vec![0f32; np * k * PANEL];
    for (p, panel) in out.chunks_mut(k * PANEL).enumerate() {
        let (j0, j1) = (p * PANEL, ((p + 1) * PANEL).min(n));
        for (i, row) in panel.chunks_mut(PANEL).enumerate() {
            row[..j1 - j0].copy_from_slice(&w[i * n + j0..i * n + j1]);
        }
    }
    out
}

fn unpack_panels(packed: &[f32], k: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; k * n];
    for (p, panel) in packed.chunks(k * PANEL).enumerate() {
        let (j0, j1) = (p * PANEL, ((p + 1) * PANEL).min(n));
        for (i, row) in panel.chunks(PANEL).enumerate() {
            out[i * n + j0..i * n + j1].copy_from_slice(&row[..j1 - j0]);
        }
    }
    out
}

pub use chatforge_model::ops::simd::{Isa, isa};

#[inline(always)]
fn fmadd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// `out[r] = x[r] · P` for one packed panel `P: (k, PANEL)` and `rows ≤ M` rows of `x: (rows, k)`;
/// `out` is `(rows, PANEL)`.
#[inline(always)]
fn panel_m<E: Elem, const FMA: bool, const M: usize>(
    x: &[f32],
    k: usize,
    rows: usize,
    panel: &[E],
    out: &mut [f32],
) {
    let mut acc = [[0f32; PANEL]; M];
    for (i, w) in panel.chunks_exact(PANEL).enumerate().take(k) {
        for (r, a) in acc.iter_mut().enumerate().take(rows) {
            let xv = x[r * k + i];
            for (s, wv) in a.iter_mut().zip(w) {
                *s = fmadd::<FMA>(xv, wv.f(), *s);
            }
        }
    }
    for (a, o) in acc.iter().zip(out.chunks_exact_mut(PANEL)).take(rows) {
        o.copy_from_slice(a);
    }
}

#[inline(always)]
fn panel_rows<E: Elem, const FMA: bool>(x: &[f32], k: usize, rows: usize, panel: &[E], out: &mut [f32]) {
    match rows {
        1 => panel_m::<E, FMA, 1>(x, k, rows, panel, out),
        2 => panel_m::<E, FMA, 2>(x, k, rows, panel, out),
        _ => panel_m::<E, FMA, 4>(x, k, rows, panel, out),
    }
}

#[inline(always)]
fn dot<E: Elem, const FMA: bool>(a: &[f32], b: &[E]) -> f32 {
    // 64 lanes: four independent vector accumulators on AVX-512, so the adds do not wait on
    // each other's latency.
    let mut acc = [0f32; 64];
    let (ac, bc) = (a.chunks_exact(64), b.chunks_exact(64));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..64 {
            acc[l] = fmadd::<FMA>(x[l], y[l].f(), acc[l]);
        }
    }
    let mut tail = 0f32;
    for (x, y) in ar.iter().zip(br) {
        tail = fmadd::<FMA>(*x, y.f(), tail);
    }
    acc.iter().sum::<f32>() + tail
}

/// `out[v − v0][r] = x[r] · W[v]` for `v in v0..v0 + out.len() / m` (output-major block).
#[inline(always)]
fn dot_rows<E: Elem, const FMA: bool>(x: &[f32], k: usize, w: &[E], v0: usize, out: &mut [f32]) {
    let m = x.len() / k;
    for (j, o) in out.chunks_mut(m).enumerate() {
        let wr = &w[(v0 + j) * k..(v0 + j + 1) * k];
        for (r, oo) in o.iter_mut().enumerate() {
            *oo = dot::<E, FMA>(&x[r * k..(r + 1) * k], wr);
        }
    }
}

/// Defines `$name::<E>(args)`, which runs `$kernel::<E, FMA>(args)` compiled for the instruction
/// set detected at run time (the kernel is `#[inline(always)]`, so it is compiled into each variant).
macro_rules! multiversion {
    ($(#[$doc:meta])* fn $name:ident($($p:ident: $t:ty),*) => $kernel:ident) => {
        $(#[$doc])*
        #[allow(clippy::too_many_arguments)]
        fn $name<E: Elem>($($p: $t),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn avx512<E: Elem>($($p: $t),*) {
                    $kernel::<E, true>($($p),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn avx2<E: Elem>($($p: $t),*) {
                    $kernel::<E, true>($($p),*)
                }
                match isa() {
                    #[allow(unsafe_code)]
                    // SAFETY: `isa()` detected these features on this CPU.
                    Isa::Avx512 => unsafe { avx512::<E>($($p),*) },
                    #[allow(unsafe_code)]
                    // SAFETY: as above.
                    Isa::Avx2 => unsafe { avx2::<E>($($p),*) },
                    Isa::Baseline => $kernel::<E, false>($($p),*),
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                $kernel::<E, false>($($p),*)
            }
        }
    };
}

multiversion!(fn panel_band(x: &[f32], k: usize, rows: usize, panel: &[E], out: &mut [f32]) => panel_rows);
multiversion!(fn dot_band(x: &[f32], k: usize, w: &[E], v0: usize, out: &mut [f32]) => dot_rows);

/// One head of attention for one query: scores against `n` cached keys, softmax, weighted sum of
/// the values. Keys and values are rows of width `c`, the head's part at `off..off + q.len()`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn attend_k<E: Elem, const FMA: bool>(
    q: &[f32],
    k: &[E],
    v: &[E],
    c: usize,
    off: usize,
    scale: f32,
    scores: &mut [f32],
    y: &mut [f32],
) {
    let d = q.len();
    for (j, s) in scores.iter_mut().enumerate() {
        *s = dot::<E, FMA>(q, &k[j * c + off..j * c + off + d]) * scale;
    }
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    // The vectorisable exp (libm's is a call per score).
    scores
        .iter_mut()
        .for_each(|s| *s = chatforge_model::ops::fast_math::exp(*s - max));
    let inv = 1.0 / scores.iter().sum::<f32>();
    y.fill(0.0);
    for (j, p) in scores.iter().enumerate() {
        let p = p * inv;
        for (yy, vv) in y.iter_mut().zip(&v[j * c + off..j * c + off + d]) {
            *yy = fmadd::<FMA>(p, vv.f(), *yy);
        }
    }
}

multiversion!(fn attend_any(q: &[f32], k: &[E], v: &[E], c: usize, off: usize, scale: f32, scores: &mut [f32], y: &mut [f32]) => attend_k);

/// Causal attention of one query head over `scores.len()` cached positions (see [`attend_k`]),
/// vectorised for this CPU.
#[allow(clippy::too_many_arguments)]
pub fn attend(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    c: usize,
    off: usize,
    scale: f32,
    scores: &mut [f32],
    y: &mut [f32],
) {
    attend_any(q, k, v, c, off, scale, scores, y)
}

/// `out = x · W (+ bias)` for `x: (m, n_in)`, `out: (m, n_out)`.
pub fn matmul(x: &[f32], m: usize, w: &Matrix, bias: Option<&[f32]>, out: &mut [f32]) {
    let (k, n) = (w.n_in(), w.n_out());
    debug_assert_eq!(x.len(), m * k);
    debug_assert_eq!(out.len(), m * n);
    if m > SMALL_M {
        gemm_f32(x, m, w, out);
    } else {
        match (&w.store, w.layout) {
            (Store::F32(v), Layout::InOut) => streaming_in_out(x, m, v, k, n, out),
            (Store::Bf16(v), Layout::InOut) => streaming_in_out(x, m, v, k, n, out),
            (Store::F32(v), Layout::OutIn) => streaming_out_in(x, m, v, k, n, out),
            (Store::Bf16(v), Layout::OutIn) => streaming_out_in(x, m, v, k, n, out),
        }
    }
    if let Some(b) = bias {
        out.chunks_mut(n)
            .for_each(|row| row.iter_mut().zip(b).for_each(|(o, b)| *o += b));
    }
}

fn streaming_in_out<E: Elem>(x: &[f32], m: usize, w: &[E], k: usize, n: usize, out: &mut [f32]) {
    // One task per panel (each streams its own contiguous k×64 block), four rows of x at a time.
    let np = n.div_ceil(PANEL);
    let mut blocks = vec![0f32; np * m * PANEL]; // [panel][row][64]
    let work = |p: usize, o: &mut [f32]| {
        let panel = &w[p * k * PANEL..(p + 1) * k * PANEL];
        for r0 in (0..m).step_by(4) {
            let rows = (m - r0).min(4);
            panel_band(
                &x[r0 * k..],
                k,
                rows,
                panel,
                &mut o[r0 * PANEL..(r0 + rows) * PANEL],
            );
        }
    };
    if k * n < 1 << 15 {
        blocks
            .chunks_mut(m * PANEL)
            .enumerate()
            .for_each(|(p, o)| work(p, o));
    } else {
        blocks
            .par_chunks_mut(m * PANEL)
            .enumerate()
            .for_each(|(p, o)| work(p, o));
    }
    for (p, block) in blocks.chunks(m * PANEL).enumerate() {
        let (j0, j1) = (p * PANEL, ((p + 1) * PANEL).min(n));
        for (r, row) in block.chunks(PANEL).enumerate() {
            out[r * n + j0..r * n + j1].copy_from_slice(&row[..j1 - j0]);
        }
    }
}

fn streaming_out_in<E: Elem>(x: &[f32], m: usize, w: &[E], k: usize, n: usize, out: &mut [f32]) {
    // Output-major blocks of 256 outputs, then transposed into (m, n).
    const BLOCK: usize = 256;
    if m == 1 {
        out.par_chunks_mut(BLOCK)
            .enumerate()
            .for_each(|(b, o)| dot_band(x, k, w, b * BLOCK, o));
        return;
    }
    let mut blocks = vec![0f32; n * m];
    blocks
        .par_chunks_mut(BLOCK * m)
        .enumerate()
        .for_each(|(b, o)| dot_band(x, k, w, b * BLOCK, o));
    for (v, vals) in blocks.chunks(m).enumerate() {
        for (r, &val) in vals.iter().enumerate() {
            out[r * n + v] = val;
        }
    }
}

fn gemm_f32(x: &[f32], m: usize, w: &Matrix, out: &mut [f32]) {
    let (k, n) = (w.n_in(), w.n_out());
    // W as (k, n): InOut unpacked is that already; OutIn is (n, k), read transposed.
    chatforge_model::ops::matmul_into(x, m, k, &w.to_f32(), n, w.layout == Layout::OutIn, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f32], m: usize, w: &[f32], k: usize, n: usize, layout: Layout) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for r in 0..m {
            for j in 0..n {
                let mut s = 0f64;
                for i in 0..k {
                    let wv = match layout {
                        Layout::InOut => w[i * n + j],
                        Layout::OutIn => w[j * k + i],
                    };
                    s += f64::from(x[r * k + i]) * f64::from(wv);
                }
                out[r * n + j] = s as f32;
            }
        }
        out
    }

    fn data(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = chatforge_data::Rng::new(seed);
        (0..len).map(|_| rng.normal() as f32).collect()
    }

    #[test]
    fn every_path_matches_the_naive_product() {
        // Odd sizes: remainders of the row pairs, the 16-lane dots and the output blocks.
        for (m, k, n) in [
            (1, 37, 515),
            (3, 300, 77),
            (8, 129, 600),
            (20, 65, 33),
            (1, 1024, 300),
        ] {
            let x = data(m * k, 1);
            for layout in [Layout::InOut, Layout::OutIn] {
                let (rows, cols) = match layout {
                    Layout::InOut => (k, n),
                    Layout::OutIn => (n, k),
                };
                if layout == Layout::InOut {
                    assert_eq!(
                        unpack_panels(&pack_panels(&data(k * n, 2), k, n), k, n),
                        data(k * n, 2)
                    );
                }
                let w = data(k * n, 2);
                let want = naive(&x, m, &w, k, n, layout);
                let bias = data(n, 3);
                for bf16 in [false, true] {
                    let mat = Matrix::new(w.clone(), rows, cols, layout, bf16);
                    let mut out = vec![0f32; m * n];
                    matmul(&x, m, &mat, Some(&bias), &mut out);
                    let tol = if bf16 {
                        0.05 * (k as f32).sqrt()
                    } else {
                        1e-4 * (k as f32).sqrt()
                    };
                    for (i, (o, e)) in out.iter().zip(&want).enumerate() {
                        let e = e + bias[i % n];
                        assert!(
                            (o - e).abs() <= tol,
                            "{m}x{k}x{n} {layout:?} bf16={bf16}: {o} vs {e}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(Bf16::from_f32(1.0).to_f32(), 1.0);
        assert_eq!(Bf16::from_f32(-2.5).to_f32(), -2.5);
        // 1 + 2^-8 is halfway between two bf16 values: ties go to the even one (1.0).
        assert_eq!(Bf16::from_f32(1.0 + 1.0 / 256.0).to_f32(), 1.0);
        assert_eq!(Bf16::from_f32(1.0 + 3.0 / 256.0).to_f32(), 1.0 + 4.0 / 256.0);
        assert!(Bf16::from_f32(f32::NAN).to_f32().is_nan());
        assert_eq!(Bf16::from_f32(f32::INFINITY).to_f32(), f32::INFINITY);
    }
}
