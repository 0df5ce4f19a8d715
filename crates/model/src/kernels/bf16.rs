//! bf16 matrix products for training: both operands rounded to bf16 (to nearest, ties to even)
//! as they are packed, products summed in f32, the result written in f32 (`acc`, `beta` and
//! strides as [`super::gemm::gemm_raw`]). PyTorch's `autocast(bfloat16)` computes the same.
//!
//! The kernel is Goto's: the right operand packed once per call into panels of [`NR`] columns,
//! the left one per task into panels of [`MR`] rows, both as pairs of consecutive inputs (two
//! bf16 in 32 bits), and a register tile of `MR × NR` sums that AVX-512 BF16's `vdpbf16ps`
//! advances by two inputs per instruction: twice the multiply-adds of an f32 FMA. On a CPU
//! without the instruction the same packed pairs go to a plain-Rust tile ([`Tile::Emulated`]):
//! same roundings of the inputs, so the tests check the packing and blocking on every machine,
//! and the native tile against it where the instruction exists.

use super::gemm::{Gemm, In, Out};
use super::simd::vectorized;
use rayon::prelude::*;
use std::cell::Cell;
use std::sync::OnceLock;

/// Rows of a register tile.
pub const MR: usize = 12;
/// Columns of a register tile: two vectors of 16 sums.
pub const NR: usize = 32;
/// At most this many inputs per pass. A tile's sums stay in registers for a whole pass, so fewer
/// passes write the destination fewer times; a task's left panels (`MC × KC` bf16, 192 KiB) and
/// one right panel (64 KiB) stay in L2, which feeds the tile fast enough (measured on the bench
/// model: 384 and 1024 tie, 2048 is slower).
const KC: usize = 1024;
/// Rows of the left operand one task packs (8 tiles).
const MC: usize = 8 * MR;

/// Which register tile computes the sums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tile {
    /// AVX-512 BF16's `vdpbf16ps`.
    Native,
    /// Plain Rust on the same packed pairs: the same rounded inputs, sums in f32.
    Emulated,
}

/// Whether this CPU has AVX-512 BF16 (`vdpbf16ps`), detected once.
pub fn native() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bf16")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// The tile this CPU runs.
pub fn tile() -> Tile {
    if native() { Tile::Native } else { Tile::Emulated }
}

/// `x` rounded to bf16 (nearest, ties to even; NaN stays NaN), in the low 16 bits.
#[inline(always)]
fn bf(x: f32) -> u32 {
    let b = x.to_bits();
    let rounded = b.wrapping_add(0x7FFF + ((b >> 16) & 1)) >> 16;
    if b & 0x7FFF_FFFF > 0x7F80_0000 {
        (b >> 16) | 0x40
    } else {
        rounded
    }
}

/// Two inputs as one packed pair: `lo` in the low half (the instruction's even element).
#[inline(always)]
fn pair(lo: f32, hi: f32) -> u32 {
    bf(lo) | (bf(hi) << 16)
}

/// An operand's element `(r, c)`, zero outside `rows × cols`.
#[derive(Clone, Copy)]
struct Src {
    ptr: *const f32,
    rs: usize,
    cs: usize,
    rows: usize,
    cols: usize,
}

impl Src {
    fn of(x: In) -> Src {
        #[allow(unsafe_code)]
        // SAFETY (of every read below): `gemm_raw` checked the view against the buffer's length;
        // reads stay inside `rows × cols`.
        let ptr = unsafe { x.ptr.add(x.view.off) };
        Src {
            ptr,
            rs: x.view.rs,
            cs: x.view.cs,
            rows: x.view.rows,
            cols: x.view.cols,
        }
    }

    #[inline(always)]
    fn at(&self, r: usize, c: usize) -> f32 {
        if r < self.rows && c < self.cols {
            #[allow(unsafe_code)]
            // SAFETY: inside the checked view (see `of`).
            unsafe {
                *self.ptr.add(r * self.rs + c * self.cs)
            }
        } else {
            0.0
        }
    }

    /// `len` elements from `(r, c)` along a row (`dc = 1`) or a column, as a slice when they are
    /// contiguous and all inside.
    #[inline(always)]
    fn run(&self, r: usize, c: usize, len: usize, along_row: bool) -> Option<&[f32]> {
        let (step, inside) = if along_row {
            (self.cs, r < self.rows && c + len <= self.cols)
        } else {
            (self.rs, c < self.cols && r + len <= self.rows)
        };
        (step == 1 && inside).then(|| {
            #[allow(unsafe_code)]
            // SAFETY: the run is inside the checked view (see `of`).
            unsafe {
                std::slice::from_raw_parts(self.ptr.add(r * self.rs + c * self.cs), len)
            }
        })
    }
}

// SAFETY: `Src` only reads a buffer the caller of `gemm` keeps alive and unwritten for the call.
#[allow(unsafe_code)]
unsafe impl Send for Src {}
#[allow(unsafe_code)]
unsafe impl Sync for Src {}

/// `out[j] = pair(x0[j], x1[j])`: two runs side by side, interleaved (vectorised).
#[inline(always)]
fn interleave(out: &mut [u32], x0: &[f32], x1: &[f32]) {
    for ((o, &lo), &hi) in out.iter_mut().zip(x0).zip(x1) {
        *o = pair(lo, hi);
    }
}

/// Runs of consecutive inputs, paired and transposed: `out[p·stride + r] = pair(run_r[2p],
/// run_r[2p + 1])` for `p < kp`; a run that is `None` (it leaves the operand) takes
/// `edge(r, p)`. The runs are rounded 16 pairs at a time into a block (vectorised), which is
/// then read across.
#[inline(always)]
fn transpose_pairs(
    runs: &[Option<&[f32]>],
    kp: usize,
    out: &mut [u32],
    stride: usize,
    edge: impl Fn(usize, usize) -> u32,
) {
    const Q: usize = 16;
    let mut block = [[0u16; 2 * Q]; NR];
    let mut q = 0;
    while q < kp {
        let len = Q.min(kp - q);
        for (run, row) in runs.iter().zip(block.iter_mut()) {
            if let Some(run) = run {
                for (d, &x) in row[..2 * len].iter_mut().zip(&run[2 * q..2 * (q + len)]) {
                    *d = bf(x) as u16;
                }
            }
        }
        for p in 0..len {
            let o = &mut out[(q + p) * stride..][..runs.len()];
            for (r, (o, run)) in o.iter_mut().zip(runs).enumerate() {
                *o = match run {
                    Some(_) => u32::from(block[r][2 * p]) | (u32::from(block[r][2 * p + 1]) << 16),
                    None => edge(r, q + p),
                };
            }
        }
        q += len;
    }
}

/// Packs rows `k0..k0 + 2·kp` (in pairs) and columns `j0..j0 + NR` of `b` as one panel:
/// `out[p·NR + j] = pair(b[k0 + 2p][j0 + j], b[k0 + 2p + 1][j0 + j])`.
#[inline(always)]
fn pack_b_panel(b: &Src, k0: usize, kp: usize, j0: usize, out: &mut [u32]) {
    if b.cs == 1 {
        // Row-major: a pair of rows is contiguous across the panel.
        for p in 0..kp {
            let (r0, r1) = (k0 + 2 * p, k0 + 2 * p + 1);
            let o = &mut out[p * NR..(p + 1) * NR];
            match (b.run(r0, j0, NR, true), b.run(r1, j0, NR, true)) {
                (Some(x0), Some(x1)) => interleave(o, x0, x1),
                _ => {
                    for (j, o) in o.iter_mut().enumerate() {
                        *o = pair(b.at(r0, j0 + j), b.at(r1, j0 + j));
                    }
                }
            }
        }
    } else {
        // Transposed (a `(out, in)` weight read as `(in, out)`): a column's pairs are contiguous.
        let runs: [Option<&[f32]>; NR] = std::array::from_fn(|j| b.run(k0, j0 + j, 2 * kp, false));
        transpose_pairs(&runs, kp, out, NR, |j, p| {
            pair(b.at(k0 + 2 * p, j0 + j), b.at(k0 + 2 * p + 1, j0 + j))
        });
    }
}

/// How a left panel holds its pairs: row after row (`out[i·kp + p]`, a row-major operand's
/// layout, packed without a transpose), or pair after pair (`out[p·MR + i]`, a transposed one's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ALayout {
    Rows,
    Pairs,
}

impl ALayout {
    fn of(a: &Src) -> ALayout {
        if a.cs == 1 { ALayout::Rows } else { ALayout::Pairs }
    }
}

/// Packs rows `i0..i0 + MR` and inputs `k0..k0 + 2·kp` of a row-major `a` as one panel in
/// [`ALayout::Rows`]: `out[i·kp + p] = pair(a[i0 + i][k0 + 2p], a[i0 + i][k0 + 2p + 1])`. Each
/// row's pairs are contiguous in `a`, and so are the panel's.
#[inline(always)]
fn pack_a_rows(a: &Src, i0: usize, k0: usize, kp: usize, out: &mut [u32]) {
    for (i, o) in out.chunks_exact_mut(kp).enumerate().take(MR) {
        match a.run(i0 + i, k0, 2 * kp, true) {
            Some(run) => {
                for (o, two) in o.iter_mut().zip(run.chunks_exact(2)) {
                    *o = pair(two[0], two[1]);
                }
            }
            None => {
                for (p, o) in o.iter_mut().enumerate() {
                    *o = pair(a.at(i0 + i, k0 + 2 * p), a.at(i0 + i, k0 + 2 * p + 1));
                }
            }
        }
    }
}

/// Rows `i0..i0 + MR` of the pair of inputs `k, k + 1` of a transposed `a`, interleaved.
#[inline(always)]
fn pack_a_pairs(a: &Src, i0: usize, k: usize, o: &mut [u32]) {
    match (a.run(i0, k, MR, false), a.run(i0, k + 1, MR, false)) {
        (Some(x0), Some(x1)) => interleave(o, x0, x1),
        _ => {
            for (i, o) in o.iter_mut().enumerate() {
                *o = pair(a.at(i0 + i, k), a.at(i0 + i, k + 1));
            }
        }
    }
}

/// Packs the panels of rows `i0..` (as many as `out` holds, `kp · MR` pairs each) and inputs
/// `k0..k0 + 2·kp` of `a`, in its [`ALayout`]. A transposed operand (`Xᵀ` of a weight gradient)
/// is read pair of inputs by pair of inputs across all the panels, so each input's run of rows
/// streams once instead of once per panel.
#[inline(always)]
fn pack_a_block(a: &Src, i0: usize, k0: usize, kp: usize, out: &mut [u32]) {
    if ALayout::of(a) == ALayout::Rows {
        for (ti, panel) in out.chunks_exact_mut(kp * MR).enumerate() {
            pack_a_rows(a, i0 + ti * MR, k0, kp, panel);
        }
        return;
    }
    let tiles = out.len() / (kp * MR);
    for p in 0..kp {
        for ti in 0..tiles {
            let o = &mut out[ti * kp * MR + p * MR..][..MR];
            pack_a_pairs(a, i0 + ti * MR, k0 + 2 * p, o);
        }
    }
}

/// [`pack_a_block`] (`a_side`) or [`pack_b_panel`].
#[inline(always)]
fn pack_either(a_side: bool, x: &Src, (r0, k0, kp): (usize, usize, usize), out: &mut [u32]) {
    if a_side {
        pack_a_block(x, r0, k0, kp, out);
    } else {
        pack_b_panel(x, k0, kp, r0, out);
    }
}

/// [`pack_either`] compiled for AVX-512 (the closures `vectorized` takes are too large for the
/// compiler to inline into its AVX-512 copy).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
fn pack_avx512(a_side: bool, x: &Src, at: (usize, usize, usize), out: &mut [u32]) {
    pack_either(a_side, x, at, out);
}

/// Packs the panels of the left operand from row `r0` (`a_side`, as many as `out` holds) or one
/// panel of the right one (columns from `r0`), inputs `k0..k0 + 2·kp`, with the widest vectors
/// this CPU has.
fn pack_panel(a_side: bool, x: &Src, (r0, k0, kp): (usize, usize, usize), out: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    if super::simd::isa() == super::simd::Isa::Avx512 {
        #[allow(unsafe_code)]
        // SAFETY: `isa()` detected AVX-512 on this CPU.
        unsafe {
            pack_avx512(a_side, x, (r0, k0, kp), out)
        };
        return;
    }
    vectorized(|| pack_either(a_side, x, (r0, k0, kp), out));
}

/// The sums of one tile, emulated: `c[i·NR + j] = Σ_p a_p,i · b_p,j` over packed pairs.
#[inline(always)]
fn tile_emulated(kp: usize, (a, layout): (&[u32], ALayout), b: &[u32], c: &mut [f32; MR * NR]) {
    c.fill(0.0);
    let lo = |x: u32| f32::from_bits(x << 16);
    let hi = |x: u32| f32::from_bits(x & 0xFFFF_0000);
    for p in 0..kp {
        let bp = &b[p * NR..(p + 1) * NR];
        for i in 0..MR {
            let x = match layout {
                ALayout::Rows => a[i * kp + p],
                ALayout::Pairs => a[p * MR + i],
            };
            let (a0, a1) = (lo(x), hi(x));
            let row = &mut c[i * NR..(i + 1) * NR];
            for (s, &y) in row.iter_mut().zip(bp) {
                *s += a0 * lo(y) + a1 * hi(y);
            }
        }
    }
}

/// The sums of one tile with `vdpbf16ps`.
///
/// # Safety
/// The CPU has AVX-512F and AVX-512 BF16; `a` holds `kp · MR` pairs and `b` `kp · NR`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(unsafe_code)]
unsafe fn tile_native<const ROWS: bool>(kp: usize, a: &[u32], b: &[u32], c: &mut [f32; MR * NR]) {
    use std::arch::x86_64::*;
    debug_assert!(a.len() >= kp * MR && b.len() >= kp * NR);
    let (a, b) = (a.as_ptr(), b.as_ptr());
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    // Pair `(i, p)` is at `a[i·kp + p]` (rows) or `a[p·MR + i]` (pairs).
    let (row_step, pair_step) = if ROWS { (kp, 1) } else { (1, MR) };
    // SAFETY: the reads stay inside the panels (the caller's contract); the casts reinterpret
    // 512 bits as 32 bf16.
    unsafe {
        for p in 0..kp {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR).cast()));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR + 16).cast()));
            let ap = a.add(p * pair_step);
            for (i, acc) in acc.iter_mut().enumerate() {
                let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(*ap.add(i * row_step) as i32));
                acc[0] = _mm512_dpbf16_ps(acc[0], x, b0);
                acc[1] = _mm512_dpbf16_ps(acc[1], x, b1);
            }
        }
        let c = c.as_mut_ptr();
        for (i, acc) in acc.iter().enumerate() {
            _mm512_storeu_ps(c.add(i * NR), acc[0]);
            _mm512_storeu_ps(c.add(i * NR + 16), acc[1]);
        }
    }
}

/// Writes a tile's sums to the destination: `dst = (add ? dst : 0) + beta · tile` over the part
/// of the tile inside the destination.
#[inline(always)]
fn write_tile(dst: &Out, i0: usize, j0: usize, c: &[f32; MR * NR], add: bool, beta: f32) {
    let v = dst.view;
    let (rows, cols) = (MR.min(v.rows - i0), NR.min(v.cols - j0));
    for i in 0..rows {
        let row = &c[i * NR..i * NR + cols];
        let at = v.off + (i0 + i) * v.rs + j0 * v.cs;
        #[allow(unsafe_code)]
        // SAFETY: `gemm_raw` checked the view against the buffer; `(i0 + i, j0 + j)` is inside it,
        // and this task is the only one writing this tile.
        unsafe {
            if v.cs == 1 {
                let d = std::slice::from_raw_parts_mut(dst.ptr.add(at), cols);
                if add {
                    d.iter_mut().zip(row).for_each(|(d, &s)| *d += beta * s);
                } else {
                    d.iter_mut().zip(row).for_each(|(d, &s)| *d = beta * s);
                }
            } else {
                for (j, &s) in row.iter().enumerate() {
                    let d = dst.ptr.add(at + j * v.cs);
                    *d = if add { *d + beta * s } else { beta * s };
                }
            }
        }
    }
}

/// [`write_tile`] compiled for AVX-512.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
fn write_tile_avx512(dst: &Out, i0: usize, j0: usize, c: &[f32; MR * NR], add: bool, beta: f32) {
    write_tile(dst, i0, j0, c, add, beta);
}

/// [`write_tile`] with the widest vectors this CPU has.
#[inline(always)]
fn write(dst: &Out, i0: usize, j0: usize, c: &[f32; MR * NR], add: bool, beta: f32) {
    #[cfg(target_arch = "x86_64")]
    if super::simd::isa() == super::simd::Isa::Avx512 {
        #[allow(unsafe_code)]
        // SAFETY: `isa()` detected AVX-512 on this CPU.
        unsafe {
            write_tile_avx512(dst, i0, j0, c, add, beta)
        };
        return;
    }
    write_tile(dst, i0, j0, c, add, beta);
}

/// A pointer to the destination that tasks share: each writes tiles no other task writes.
#[derive(Clone, Copy)]
struct Dst(Out);

impl Dst {
    /// The destination (a method, so closures capture the `Send` wrapper, not the field).
    #[inline]
    fn out(self) -> Out {
        self.0
    }
}

// SAFETY: tasks write disjoint tiles of the destination (see `gemm`).
#[allow(unsafe_code)]
unsafe impl Send for Dst {}
#[allow(unsafe_code)]
unsafe impl Sync for Dst {}

thread_local! {
    /// The right operand's panels (on the calling thread) and a task's left-operand panels.
    static PACKED_B: Cell<Vec<u32>> = const { Cell::new(Vec::new()) };
    static PACKED_A: Cell<Vec<u32>> = const { Cell::new(Vec::new()) };
}

/// The passes over the inputs: `k` split evenly into passes of at most [`KC`], each even.
fn passes(k: usize) -> impl Iterator<Item = (usize, usize)> + Clone {
    let n = k.div_ceil(KC).max(1);
    let kc = k.div_ceil(n).next_multiple_of(2);
    (0..n)
        .map(move |p| (p * kc, kc.min(k.saturating_sub(p * kc))))
        .filter(|&(_, len)| len > 0)
}

/// `dst = (how.acc ? dst : 0) + how.beta · lhs · rhs` with bf16 inputs, on all cores when
/// `how.par`, with the given tile.
///
/// # Safety
/// As [`super::gemm::gemm_raw`], which checked the shapes and bounds before calling this.
#[allow(unsafe_code)]
pub(super) unsafe fn gemm(dst: Out, lhs: In, rhs: In, how: Gemm, tile: Tile) {
    let (m, n, k) = (dst.view.rows, dst.view.cols, lhs.view.cols);
    if m == 0 || n == 0 {
        return;
    }
    let tile = if native() { tile } else { Tile::Emulated };
    let (a, b) = (Src::of(lhs), Src::of(rhs));
    let layout = ALayout::of(&a);
    let passes = passes(k);
    let panels = n.div_ceil(NR);
    // Pass `s` of the packed right operand starts at `start(s)`: `kp` pairs × all panels.
    let kp_of = |len: usize| len.div_ceil(2);
    let start = |k0: usize| (k0 / 2) * panels * NR;
    // Taken out of the thread's slot for the call (a waiting thread may run another product).
    let mut packed_b = PACKED_B.take();
    {
        let bp = &mut packed_b;
        bp.resize(k.div_ceil(2) * panels * NR, 0);
        // Pack the right operand: pass after pass, its panels independent (each pass's `kp`
        // pairs × all panels start at `start(k0)`).
        for (k0, len) in passes.clone() {
            let kp = kp_of(len);
            let region = &mut bp[start(k0)..start(k0) + kp * panels * NR];
            let pack = |(jp, out): (usize, &mut [u32])| pack_panel(false, &b, (jp * NR, k0, kp), out);
            if how.par {
                region.par_chunks_mut(kp * NR).enumerate().for_each(pack);
            } else {
                region.chunks_mut(kp * NR).enumerate().for_each(pack);
            }
        }
        let bp: &[u32] = bp;
        // Tasks: row blocks of MC, and column blocks when there are too few row blocks to share.
        let threads = if how.par { rayon::current_num_threads() } else { 1 };
        let row_blocks = m.div_ceil(MC);
        let col_blocks = if row_blocks >= 4 * threads {
            1
        } else {
            (4 * threads).div_ceil(row_blocks).min(panels)
        };
        let per_col = panels.div_ceil(col_blocks);
        let d = Dst(dst);
        let task = |t: usize| {
            let (rb, cb) = (t / col_blocks, t % col_blocks);
            let (i0, i1) = (rb * MC, ((rb + 1) * MC).min(m));
            let (p0, p1) = (cb * per_col, ((cb + 1) * per_col).min(panels));
            if p0 >= p1 {
                return;
            }
            let out = d.out();
            let mut packed_a = PACKED_A.take();
            {
                let ap = &mut packed_a;
                let tiles = (i1 - i0).div_ceil(MR);
                let mut c = [0f32; MR * NR];
                for (s, (k0, len)) in passes.clone().enumerate() {
                    let kp = kp_of(len);
                    ap.resize(tiles * kp * MR, 0);
                    pack_panel(true, &a, (i0, k0, kp), ap);
                    let add = s > 0 || how.acc;
                    for jp in p0..p1 {
                        let panel = &bp[start(k0) + jp * kp * NR..][..kp * NR];
                        for (ti, apanel) in ap.chunks_exact(kp * MR).enumerate() {
                            match tile {
                                #[cfg(target_arch = "x86_64")]
                                // SAFETY: `Tile::Native` is only chosen where `native()` holds
                                // (see `gemm_raw`); the panels hold `kp` pairs.
                                Tile::Native => unsafe {
                                    match layout {
                                        ALayout::Rows => tile_native::<true>(kp, apanel, panel, &mut c),
                                        ALayout::Pairs => tile_native::<false>(kp, apanel, panel, &mut c),
                                    }
                                },
                                _ => vectorized(|| tile_emulated(kp, (apanel, layout), panel, &mut c)),
                            }
                            write(&out, i0 + ti * MR, jp * NR, &c, add, how.beta);
                        }
                    }
                }
            }
            PACKED_A.set(packed_a);
        };
        let tasks = row_blocks * col_blocks;
        if how.par {
            (0..tasks).into_par_iter().for_each(task);
        } else {
            (0..tasks).for_each(task);
        }
    }
    PACKED_B.set(packed_b);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gemm::{Precision, View};
    use chatforge_base::Rng;

    fn round(x: f32) -> f64 {
        f64::from(f32::from_bits(bf(x) << 16))
    }

    /// Checks `dst = (acc ? dst0 : 0) + beta · lhs · rhs` against f64 sums of the bf16-rounded
    /// inputs, to `(k + 2) · 2⁻²³` of `Σ |a·b|` (f32 summation's bound), for a product of shape
    /// `(m, k) · (k, n)` with the operands stored transposed or not.
    fn check((m, k, n): (usize, usize, usize), lt: bool, rt: bool, acc: bool, par: bool, tile: Tile) {
        let mut rng = Rng::new((m * 31 + k * 7 + n) as u64);
        let mut vals = |len: usize| -> Vec<f32> { (0..len).map(|_| rng.normal() as f32).collect() };
        let (lhs, rhs, dst0) = (vals(m * k + 3), vals(k * n + 5), vals(m * n + 2));
        let lv = if lt {
            View::rows(3, k, m, m).t()
        } else {
            View::rows(3, m, k, k)
        };
        let rv = if rt {
            View::rows(5, n, k, k).t()
        } else {
            View::rows(5, k, n, n)
        };
        let dv = View::rows(2, m, n, n);
        let beta = 0.75f32;
        let mut dst = dst0.clone();
        let how = Gemm {
            acc,
            beta,
            par,
            prec: Precision::Bf16,
        };
        #[allow(unsafe_code)]
        // SAFETY: the views are inside their buffers, and `dst` is its own buffer.
        unsafe {
            gemm(
                Out::new(dst.as_mut_ptr(), dst.len(), dv),
                In::new(lhs.as_ptr(), lhs.len(), lv),
                In::new(rhs.as_ptr(), rhs.len(), rv),
                how,
                tile,
            );
        }
        let at = |buf: &[f32], v: View, r: usize, c: usize| buf[v.off + r * v.rs + c * v.cs];
        let (mut worst, mut unrounded) = (0f64, 0f64);
        for i in 0..m {
            for j in 0..n {
                let (mut sum, mut mag, mut plain) = (0f64, 0f64, 0f64);
                for p in 0..k {
                    let (a, b) = (at(&lhs, lv, i, p), at(&rhs, rv, p, j));
                    sum += round(a) * round(b);
                    mag += (round(a) * round(b)).abs();
                    plain += f64::from(a) * f64::from(b);
                }
                let base = if acc { f64::from(dst0[2 + i * n + j]) } else { 0.0 };
                let want = base + f64::from(beta) * sum;
                let tol = (k as f64 + 2.0) * 2f64.powi(-23) * (mag + base.abs()) + 1e-30;
                let got = f64::from(dst[2 + i * n + j]);
                worst = worst.max((got - want).abs() / tol);
                unrounded = unrounded.max((base + f64::from(beta) * plain - want).abs() / tol);
            }
        }
        assert!(
            worst <= 1.0,
            "{tile:?} ({m}, {k}) · ({k}, {n}) lt {lt} rt {rt} acc {acc}: error {worst} of the bound"
        );
        // The test can tell a product of unrounded inputs from one of rounded ones.
        if k >= 8 {
            assert!(unrounded > 1.0, "rounding undetectable at k = {k}: {unrounded}");
        }
        // Outside the view the destination is untouched.
        assert_eq!(dst[..2], dst0[..2]);
    }

    fn shapes(tile: Tile) {
        for &(m, k, n) in &[
            (1, 1, 1),
            (13, 7, 33),
            (12, 384, 32),
            (100, 801, 70),
            (200, 96, 130),
            (7, 1000, 5),
        ] {
            for (lt, rt) in [(false, false), (false, true), (true, false), (true, true)] {
                check((m, k, n), lt, rt, (m + n) % 2 == 0, m > 50, tile);
            }
        }
        check((130, 64, 96), false, false, true, true, tile);
        check((130, 64, 96), false, false, false, false, tile);
    }

    #[test]
    fn emulated_products_match_f64_sums_of_rounded_inputs() {
        shapes(Tile::Emulated);
    }

    #[test]
    fn native_products_match_f64_sums_of_rounded_inputs() {
        if !native() {
            eprintln!("skipped: this CPU has no AVX-512 BF16 (the emulated tile is tested)");
            return;
        }
        shapes(Tile::Native);
    }

    #[test]
    fn rounding_is_to_nearest_even_and_keeps_nan_and_infinities() {
        for x in [
            1.0f32,
            -2.5,
            1.0 + 1.0 / 256.0,
            1.0 + 3.0 / 256.0,
            3.4e38,
            f32::INFINITY,
            -0.0,
        ] {
            assert_eq!(bf(x) as u16, crate::f32_to_bf16(x), "{x}");
        }
        assert!(f32::from_bits(bf(f32::NAN) << 16).is_nan());
        assert!(f32::from_bits(bf(-f32::NAN) << 16).is_nan());
        let all = |k| passes(k).collect::<Vec<_>>();
        assert_eq!(all(1), vec![(0, 1)]);
        assert_eq!(all(800), vec![(0, 800)]);
        assert_eq!(all(2500), vec![(0, 834), (834, 834), (1668, 832)]);
    }
}
