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

use std::sync::OnceLock;

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
    pub fn new(data: Vec<f32>, rows: usize, cols: usize, layout: Layout, bf16: bool) -> Matrix {
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

    /// Bytes of weight data.
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

    fn to_f32(&self) -> std::borrow::Cow<'_, [f32]> {
        match &self.store {
            Store::F32(v) => std::borrow::Cow::Borrowed(v),
            Store::Bf16(v) => std::borrow::Cow::Owned(v.iter().map(|w| w.to_f32()).collect()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2,
    Baseline,
}

/// The widest instruction set this CPU runs, detected once.
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma") {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Baseline
    })
}

#[inline(always)]
fn fmadd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// `y[r] += Σ_{i in i0..i1} x[r][i] · W[i]` for `m` rows; `W` is `(k, n)`, `y` is `(m, n)`.
#[inline(always)]
fn axpy_rows<E: Elem, const FMA: bool>(
    x: &[f32],
    k: usize,
    w: &[E],
    n: usize,
    (i0, i1): (usize, usize),
    y: &mut [f32],
) {
    let m = y.len() / n;
    let mut i = i0;
    // Four rows of W per pass over y: y is loaded and stored once for four multiply-adds.
    while i + 4 <= i1 {
        let w0 = &w[i * n..(i + 1) * n];
        let w1 = &w[(i + 1) * n..(i + 2) * n];
        let w2 = &w[(i + 2) * n..(i + 3) * n];
        let w3 = &w[(i + 3) * n..(i + 4) * n];
        for r in 0..m {
            let a = &x[r * k + i..r * k + i + 4];
            let (a0, a1, a2, a3) = (a[0], a[1], a[2], a[3]);
            let yr = &mut y[r * n..(r + 1) * n];
            for ((((yy, p), q), s), t) in yr.iter_mut().zip(w0).zip(w1).zip(w2).zip(w3) {
                let v = fmadd::<FMA>(a0, p.f(), *yy);
                let v = fmadd::<FMA>(a1, q.f(), v);
                let v = fmadd::<FMA>(a2, s.f(), v);
                *yy = fmadd::<FMA>(a3, t.f(), v);
            }
        }
        i += 4;
    }
    while i < i1 {
        let w0 = &w[i * n..(i + 1) * n];
        for r in 0..m {
            let a0 = x[r * k + i];
            let yr = &mut y[r * n..(r + 1) * n];
            for (yy, p) in yr.iter_mut().zip(w0) {
                *yy = fmadd::<FMA>(a0, p.f(), *yy);
            }
        }
        i += 1;
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
        fn $name<E: Elem>($($p: $t),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
                fn avx512<E: Elem>($($p: $t),*) {
                    $kernel::<E, true>($($p),*)
                }
                #[target_feature(enable = "avx2,fma")]
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

multiversion!(fn axpy_band(x: &[f32], k: usize, w: &[E], n: usize, band: (usize, usize), y: &mut [f32]) => axpy_rows);
multiversion!(fn dot_band(x: &[f32], k: usize, w: &[E], v0: usize, out: &mut [f32]) => dot_rows);

#[inline(always)]
fn dot_into<E: Elem, const FMA: bool>(a: &[f32], b: &[E], out: &mut f32) {
    *out = dot::<E, FMA>(a, b);
}

#[inline(always)]
fn axpy_into<E: Elem, const FMA: bool>(a: f32, x: &[E], y: &mut [f32]) {
    y.iter_mut()
        .zip(x)
        .for_each(|(yy, xx)| *yy = fmadd::<FMA>(a, xx.f(), *yy));
}

multiversion!(fn dot_any(a: &[f32], b: &[E], out: &mut f32) => dot_into);
multiversion!(fn axpy_any(a: f32, x: &[E], y: &mut [f32]) => axpy_into);

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
    let threads = rayon::current_num_threads().max(1);
    // Bands of whole rows: each streams a contiguous part of W. Small matrices take one band.
    let bands = threads.min((k * n / (1 << 16)).max(1)).min(k);
    if bands == 1 {
        out.fill(0.0);
        axpy_band(x, k, w, n, (0, k), out);
        return;
    }
    let per = k.div_ceil(bands);
    let mut partial = vec![0f32; bands * m * n];
    partial.par_chunks_mut(m * n).enumerate().for_each(|(b, y)| {
        let band = (b * per, ((b + 1) * per).min(k));
        axpy_band(x, k, w, n, band, y);
    });
    let (first, rest) = partial.split_at(m * n);
    out.copy_from_slice(first);
    for p in rest.chunks(m * n) {
        out.iter_mut().zip(p).for_each(|(o, p)| *o += p);
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
    let data = w.to_f32();
    // W as (k, n): InOut is that already; OutIn is (n, k), read transposed through its strides.
    let (rhs_cs, rhs_rs) = match w.layout {
        Layout::InOut => (1isize, n as isize),
        Layout::OutIn => (k as isize, 1isize),
    };
    let threads = rayon::current_num_threads().max(1);
    #[allow(unsafe_code)]
    // SAFETY: `out` is m×n row-major (column stride 1, row stride n), `x` is m×k row-major, and
    // `data` holds k×n values addressed by (rhs_cs, rhs_rs) as above; sizes checked by the caller
    // (debug) and by construction of `Matrix`; `out` does not alias the inputs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            data.as_ptr(),
            rhs_cs,
            rhs_rs,
            0.0,
            1.0,
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

/// `a · b`, vectorised for this CPU.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut out = 0f32;
    dot_any(a, b, &mut out);
    out
}

/// `y += a · x`, vectorised for this CPU.
pub fn axpy_f32(a: f32, x: &[f32], y: &mut [f32]) {
    axpy_any(a, x, y)
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

    #[test]
    fn vector_helpers() {
        let (a, b) = (data(100, 4), data(100, 5));
        let want: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot_f32(&a, &b) - want).abs() < 1e-4);
        let mut y = b.clone();
        axpy_f32(2.0, &a, &mut y);
        assert!(
            y.iter()
                .zip(a.iter().zip(&b))
                .all(|(y, (a, b))| (y - (2.0 * a + b)).abs() < 1e-6)
        );
    }
}
