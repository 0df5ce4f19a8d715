//! Matrix products for decoding, on plain slices.
//!
//! Decoding multiplies a few rows (one per sequence of the batch) by every weight matrix, so it is
//! bound by how fast the weights stream from memory, not by arithmetic. The kernels here read each
//! matrix once, front to back: a `(in, out)` matrix is split into bands of whole rows, one band per
//! core, each accumulating a partial product that is summed at the end; a `(out, in)` matrix (the
//! output head, tied to the embedding) is split into bands of output rows, each a run of dot
//! products. Many rows at once (a prompt, or a batch of many sequences) go to the register tiles
//! of [`tile`], which are compute-bound and read each matrix in place.
//!
//! The inner loops are plain Rust, compiled three times (AVX-512, AVX2+FMA, baseline) and chosen at
//! run time from the CPU's features, so the default build is fast on every x86-64 machine.
//! Weights are f32, bf16 (the upper half of an f32: converting back is a shift), which halves the
//! bytes each token streams, or q8: llama.cpp's q8_0 blocks of [`QBLOCK`] inputs per output
//! ([`chatforge_model::quant`]), the values packed like f32's and each block's f16 scale kept
//! widened to f32 beside them, a little over a quarter of f32's bytes.

use rayon::prelude::*;

/// Up to this many rows use the streaming kernels; more go to the register tiles of [`tile`].
const SMALL_M: usize = 8;

/// Inputs per q8 block: each output's weights are quantised in runs of this many, with one scale.
pub const QBLOCK: usize = chatforge_model::quant::BLOCK;

/// Precision of the weight matrices (norms, biases and the cache stay f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightType {
    #[default]
    F32,
    /// Half the bytes per step; logits differ from f32 by about 1e-2.
    Bf16,
    /// Symmetric int8 in blocks of [`QBLOCK`] inputs, an f32 scale each: 1.125 bytes a weight.
    Q8,
}

impl std::str::FromStr for WeightType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(WeightType::F32),
            "bf16" => Ok(WeightType::Bf16),
            "q8" => Ok(WeightType::Q8),
            _ => Err(format!("unknown weight type {s:?} (expected f32, bf16 or q8)")),
        }
    }
}

/// A bf16 value: the upper 16 bits of an f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(transparent)]
pub struct Bf16(pub u16);

impl Bf16 {
    /// Rounds to nearest, ties to even (NaN stays NaN).
    pub fn from_f32(x: f32) -> Bf16 {
        Bf16(chatforge_model::f32_to_bf16(x))
    }

    pub fn to_f32(self) -> f32 {
        chatforge_model::bf16_to_f32(self.0)
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

impl Elem for i8 {
    #[inline(always)]
    fn f(self) -> f32 {
        f32::from(self)
    }
}

/// Weight storage of one matrix.
#[derive(Debug, Clone)]
pub enum Store {
    F32(Vec<f32>),
    Bf16(Vec<Bf16>),
    /// int8 values in the matrix's layout, and one scale per block of [`QBLOCK`] inputs per
    /// output: `(out, blocks)` for [`Layout::OutIn`], packed in panels like the values (each
    /// panel `(blocks, PANEL)`) for [`Layout::InOut`].
    Q8 {
        q: Vec<i8>,
        scales: Vec<f32>,
    },
}

/// llama.cpp's `q8_0` quantisation of `w` ([`chatforge_model::quant`]), whose element `(i, j)` is
/// at `w[i * rs + j * cs]` for `i < k` inputs and `j < n` outputs: blocks of [`QBLOCK`] inputs per
/// output. Returns the values in the same places and the blocks' scales `(k blocks, n)` row-major,
/// as f32 (the f16 scale `q8_0` stores, widened).
fn quantize_q8(w: &[f32], k: usize, n: usize, rs: usize, cs: usize) -> (Vec<i8>, Vec<f32>) {
    use chatforge_model::quant::{QuantKind, quantize_block};
    let nb = k.div_ceil(QBLOCK);
    let mut q = vec![0i8; w.len()];
    let mut scales = vec![0f32; nb * n];
    let (mut vals, mut block) = ([0f32; QBLOCK], [0u8; 2 + QBLOCK]);
    for b in 0..nb {
        let (i0, i1) = (b * QBLOCK, ((b + 1) * QBLOCK).min(k));
        for j in 0..n {
            for i in i0..i1 {
                vals[i - i0] = w[i * rs + j * cs];
            }
            quantize_block(&vals[..i1 - i0], QuantKind::Q8, &mut block);
            for i in i0..i1 {
                q[i * rs + j * cs] = block[2 + i - i0] as i8;
            }
            scales[b * n + j] = chatforge_model::f16_to_f32(u16::from_le_bytes([block[0], block[1]]));
        }
    }
    (q, scales)
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
    pub fn new(data: Vec<f32>, rows: usize, cols: usize, layout: Layout, wt: WeightType) -> Matrix {
        let store = match (wt, layout) {
            (WeightType::Q8, Layout::InOut) => {
                let (q, scales) = quantize_q8(&data, rows, cols, cols, 1);
                Store::Q8 {
                    q: pack_panels(&q, rows, cols),
                    scales: pack_panels(&scales, rows.div_ceil(QBLOCK), cols),
                }
            }
            (WeightType::Q8, Layout::OutIn) => {
                let (q, scales) = quantize_q8(&data, cols, rows, 1, cols);
                // Scales (blocks, out) → (out, blocks): each output's row of blocks together.
                let nb = cols.div_ceil(QBLOCK);
                let mut t = vec![0f32; scales.len()];
                for b in 0..nb {
                    for j in 0..rows {
                        t[j * nb + b] = scales[b * rows + j];
                    }
                }
                Store::Q8 { q, scales: t }
            }
            (WeightType::Bf16, _) => {
                let data = match layout {
                    Layout::InOut => pack_panels(&data, rows, cols),
                    Layout::OutIn => data,
                };
                Store::Bf16(data.iter().map(|&x| Bf16::from_f32(x)).collect())
            }
            (WeightType::F32, Layout::InOut) => Store::F32(pack_panels(&data, rows, cols)),
            (WeightType::F32, Layout::OutIn) => Store::F32(data),
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
            Store::Q8 { q, scales } => q.len() + scales.len() * 4,
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
            Store::Q8 { q, scales } => {
                // Rows of an (out, in) matrix (the embedding); an (in, out) one is never looked up.
                let nb = c.div_ceil(QBLOCK);
                for (j, (o, &w)) in out.iter_mut().zip(&q[i * c..(i + 1) * c]).enumerate() {
                    *o = f32::from(w) * scales[i * nb + j / QBLOCK];
                }
            }
        }
    }

    /// The matrix as plain row-major f32 `(rows, cols)` (tests compare the kernels with it).
    #[cfg(test)]
    pub(crate) fn to_f32(&self) -> std::borrow::Cow<'_, [f32]> {
        let flat = match &self.store {
            Store::F32(v) => std::borrow::Cow::Borrowed(v.as_slice()),
            Store::Bf16(v) => std::borrow::Cow::Owned(v.iter().map(|w| w.to_f32()).collect()),
            Store::Q8 { q, scales } => std::borrow::Cow::Owned(match self.layout {
                Layout::OutIn => {
                    let nb = self.cols.div_ceil(QBLOCK);
                    q.iter()
                        .enumerate()
                        .map(|(e, &w)| {
                            let (i, j) = (e / self.cols, e % self.cols);
                            f32::from(w) * scales[i * nb + j / QBLOCK]
                        })
                        .collect()
                }
                Layout::InOut => {
                    // Panel p, row i, column jj takes the scale of block i / QBLOCK.
                    let (k, nb) = (self.rows, self.rows.div_ceil(QBLOCK));
                    q.iter()
                        .enumerate()
                        .map(|(e, &w)| {
                            let (p, r) = (e / (k * PANEL), e % (k * PANEL));
                            let (i, jj) = (r / PANEL, r % PANEL);
                            f32::from(w) * scales[p * nb * PANEL + (i / QBLOCK) * PANEL + jj]
                        })
                        .collect()
                }
            }),
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
pub fn pack_panels<T: Copy + Default>(w: &[T], k: usize, n: usize) -> Vec<T> {
    let np = n.div_ceil(PANEL);
    let mut out = vec![T::default(); np * k * PANEL];
    for (p, panel) in out.chunks_mut(k * PANEL).enumerate() {
        let (j0, j1) = (p * PANEL, ((p + 1) * PANEL).min(n));
        for (i, row) in panel.chunks_mut(PANEL).enumerate() {
            row[..j1 - j0].copy_from_slice(&w[i * n + j0..i * n + j1]);
        }
    }
    out
}

#[cfg(test)]
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

pub use chatforge_model::kernels::simd::{Isa, isa};

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

/// [`panel_m`] for a q8 panel: `scales` is `(blocks, PANEL)`, block `b` scaling inputs
/// `b·QBLOCK..(b+1)·QBLOCK` (the last block may be shorter).
#[inline(always)]
fn panel_q8_m<E: Elem, const FMA: bool, const M: usize>(
    x: &[f32],
    k: usize,
    rows: usize,
    panel: &[E],
    scales: &[f32],
    out: &mut [f32],
) {
    let mut acc = [[0f32; PANEL]; M];
    for (b, s) in scales.chunks_exact(PANEL).enumerate() {
        let i0 = b * QBLOCK;
        let block = panel[i0 * PANEL..(i0 + QBLOCK).min(k) * PANEL].chunks_exact(PANEL);
        for (i, w) in block.enumerate() {
            for (r, a) in acc.iter_mut().enumerate().take(rows) {
                let xv = x[r * k + i0 + i];
                for ((acc, wv), sc) in a.iter_mut().zip(w).zip(s) {
                    *acc = fmadd::<FMA>(xv, wv.f() * sc, *acc);
                }
            }
        }
    }
    for (a, o) in acc.iter().zip(out.chunks_exact_mut(PANEL)).take(rows) {
        o.copy_from_slice(a);
    }
}

#[inline(always)]
fn panel_q8_rows<E: Elem, const FMA: bool>(
    x: &[f32],
    k: usize,
    rows: usize,
    panel: &[E],
    scales: &[f32],
    out: &mut [f32],
) {
    match rows {
        1 => panel_q8_m::<E, FMA, 1>(x, k, rows, panel, scales, out),
        2 => panel_q8_m::<E, FMA, 2>(x, k, rows, panel, scales, out),
        _ => panel_q8_m::<E, FMA, 4>(x, k, rows, panel, scales, out),
    }
}

/// `a · b` for one q8 row `b` with one scale per [`QBLOCK`] inputs.
#[inline(always)]
fn dot_q8<E: Elem, const FMA: bool>(a: &[f32], b: &[E], scales: &[f32]) -> f32 {
    // Two blocks per step: 64 lanes, four independent vector accumulators on AVX-512.
    let mut acc = [0f32; 2 * QBLOCK];
    let (ac, bc) = (a.chunks_exact(2 * QBLOCK), b.chunks_exact(2 * QBLOCK));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for ((x, y), s) in ac.zip(bc).zip(scales.chunks_exact(2)) {
        let (s0, s1) = (s[0], s[1]);
        for l in 0..QBLOCK {
            acc[l] = fmadd::<FMA>(x[l], y[l].f() * s0, acc[l]);
        }
        for l in QBLOCK..2 * QBLOCK {
            acc[l] = fmadd::<FMA>(x[l], y[l].f() * s1, acc[l]);
        }
    }
    let done = a.len() - ar.len();
    let mut tail = 0f32;
    for (i, (x, y)) in ar.iter().zip(br).enumerate() {
        tail = fmadd::<FMA>(*x, y.f() * scales[(done + i) / QBLOCK], tail);
    }
    hsum64(&mut acc) + tail
}

/// [`dot_rows`] for q8 rows (`scales`: `(out, blocks)`).
#[inline(always)]
fn dot_q8_rows<E: Elem, const FMA: bool>(
    x: &[f32],
    k: usize,
    w: &[E],
    scales: &[f32],
    v0: usize,
    out: &mut [f32],
) {
    let (m, nb) = (x.len() / k, k.div_ceil(QBLOCK));
    for (j, o) in out.chunks_mut(m).enumerate() {
        let v = v0 + j;
        let (wr, sr) = (&w[v * k..(v + 1) * k], &scales[v * nb..(v + 1) * nb]);
        for (r, oo) in o.iter_mut().enumerate() {
            *oo = dot_q8::<E, FMA>(&x[r * k..(r + 1) * k], wr, sr);
        }
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
    hsum64(&mut acc) + tail
}

/// The sum of 64 lanes by halving (32 + 32, then 16 + 16, …): each step is one vector add, where
/// summing the lanes in order is a chain of 64 dependent adds. For attention's 64-wide heads and
/// the output head's rows that chain took longer than the products.
#[inline(always)]
fn hsum64(a: &mut [f32; 64]) -> f32 {
    for l in 0..32 {
        a[l] += a[l + 32];
    }
    for l in 0..16 {
        a[l] += a[l + 16];
    }
    for l in 0..8 {
        a[l] += a[l + 8];
    }
    for l in 0..4 {
        a[l] += a[l + 4];
    }
    (a[0] + a[2]) + (a[1] + a[3])
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
multiversion!(fn panel_q8_band(x: &[f32], k: usize, rows: usize, panel: &[E], scales: &[f32], out: &mut [f32]) => panel_q8_rows);
multiversion!(fn dot_q8_band(x: &[f32], k: usize, w: &[E], scales: &[f32], v0: usize, out: &mut [f32]) => dot_q8_rows);

mod tile;

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
        .for_each(|s| *s = chatforge_model::kernels::fast_math::exp(*s - max));
    let inv = 1.0 / scores.iter().sum::<f32>();
    if d == HEAD {
        weigh_values::<E, FMA, HEAD>(scores, inv, v, c, off, y);
        return;
    }
    y.fill(0.0);
    for (j, p) in scores.iter().enumerate() {
        let p = p * inv;
        for (yy, vv) in y.iter_mut().zip(&v[j * c + off..j * c + off + d]) {
            *yy = fmadd::<FMA>(p, vv.f(), *yy);
        }
    }
}

/// The head width of every GPT-2 size, which [`weigh_values`] is compiled for.
const HEAD: usize = 64;

/// `y = inv · Σ_j scores[j] · v_j` for a head of `D` values: the sums stay in registers, two
/// positions at a time in separate accumulators, instead of going through `y` in memory at every
/// position (a store and a load in the chain of each product).
#[inline(always)]
fn weigh_values<E: Elem, const FMA: bool, const D: usize>(
    scores: &[f32],
    inv: f32,
    v: &[E],
    c: usize,
    off: usize,
    y: &mut [f32],
) {
    let (mut a, mut b) = ([0f32; D], [0f32; D]);
    let row = |j: usize| &v[j * c + off..j * c + off + D];
    let pairs = scores.chunks_exact(2);
    let last = pairs.remainder().first().copied();
    for (jj, p) in pairs.enumerate() {
        let (v0, v1) = (row(2 * jj), row(2 * jj + 1));
        for l in 0..D {
            a[l] = fmadd::<FMA>(p[0], v0[l].f(), a[l]);
            b[l] = fmadd::<FMA>(p[1], v1[l].f(), b[l]);
        }
    }
    if let Some(p) = last {
        let v0 = row(scores.len() - 1);
        for l in 0..D {
            a[l] = fmadd::<FMA>(p, v0[l].f(), a[l]);
        }
    }
    for (l, yy) in y.iter_mut().enumerate().take(D) {
        *yy = (a[l] + b[l]) * inv;
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
        tile::many_rows(x, m, w, out);
    } else {
        match (&w.store, w.layout) {
            (Store::F32(v), Layout::InOut) => streaming_in_out(x, m, v, &[], k, n, out),
            (Store::Bf16(v), Layout::InOut) => streaming_in_out(x, m, v, &[], k, n, out),
            (Store::Q8 { q, scales }, Layout::InOut) => streaming_in_out(x, m, q, scales, k, n, out),
            (Store::F32(v), Layout::OutIn) => streaming_out_in(x, m, v, &[], k, n, out),
            (Store::Bf16(v), Layout::OutIn) => streaming_out_in(x, m, v, &[], k, n, out),
            (Store::Q8 { q, scales }, Layout::OutIn) => streaming_out_in(x, m, q, scales, k, n, out),
        }
    }
    if let Some(b) = bias {
        out.chunks_mut(n)
            .for_each(|row| row.iter_mut().zip(b).for_each(|(o, b)| *o += b));
    }
}

/// Packed `(in, out)` weights against a few rows; `scales` are a q8 matrix's (empty otherwise).
fn streaming_in_out<E: Elem>(
    x: &[f32],
    m: usize,
    w: &[E],
    scales: &[f32],
    k: usize,
    n: usize,
    out: &mut [f32],
) {
    // One task per panel (each streams its own contiguous k×64 block), four rows of x at a time.
    let np = n.div_ceil(PANEL);
    let nbp = k.div_ceil(QBLOCK) * PANEL;
    let mut blocks = vec![0f32; np * m * PANEL]; // [panel][row][64]
    let work = |p: usize, o: &mut [f32]| {
        let panel = &w[p * k * PANEL..(p + 1) * k * PANEL];
        for r0 in (0..m).step_by(4) {
            let rows = (m - r0).min(4);
            let o = &mut o[r0 * PANEL..(r0 + rows) * PANEL];
            if scales.is_empty() {
                panel_band(&x[r0 * k..], k, rows, panel, o);
            } else {
                panel_q8_band(&x[r0 * k..], k, rows, panel, &scales[p * nbp..(p + 1) * nbp], o);
            }
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

/// `(out, in)` weights against a few rows; `scales` are a q8 matrix's (empty otherwise).
fn streaming_out_in<E: Elem>(
    x: &[f32],
    m: usize,
    w: &[E],
    scales: &[f32],
    k: usize,
    n: usize,
    out: &mut [f32],
) {
    // Output-major blocks of 256 outputs, then transposed into (m, n).
    const BLOCK: usize = 256;
    let band = |v0: usize, o: &mut [f32]| {
        if scales.is_empty() {
            dot_band(x, k, w, v0, o)
        } else {
            dot_q8_band(x, k, w, scales, v0, o)
        }
    };
    if m == 1 {
        out.par_chunks_mut(BLOCK)
            .enumerate()
            .for_each(|(b, o)| band(b * BLOCK, o));
        return;
    }
    let mut blocks = vec![0f32; n * m];
    blocks
        .par_chunks_mut(BLOCK * m)
        .enumerate()
        .for_each(|(b, o)| band(b * BLOCK, o));
    for (v, vals) in blocks.chunks(m).enumerate() {
        for (r, &val) in vals.iter().enumerate() {
            out[r * n + v] = val;
        }
    }
}

#[cfg(test)]
mod tests;
