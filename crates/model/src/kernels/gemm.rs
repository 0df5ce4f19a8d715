//! Matrix products: strided views into flat buffers and the one entry point to the `gemm` crate
//! ([`gemm_raw`], the `unsafe` of handing it buffers; [`gemm`] on slices), used by the training
//! engine, the decoder's prompt path and the benches; and the pointer wrapper that hands disjoint
//! regions of one buffer to parallel tasks.

pub use crate::precision::Precision;

/// A pointer that may cross threads: each task writes a region no other task touches.
#[derive(Clone, Copy)]
pub struct SendPtr(pub *mut f32);

impl SendPtr {
    /// The pointer (a method, so closures capture the `Send` wrapper, not the raw field).
    #[inline]
    pub fn get(self) -> *mut f32 {
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
pub struct View {
    pub off: usize,
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl View {
    #[inline]
    pub fn rows(off: usize, rows: usize, cols: usize, rs: usize) -> View {
        View {
            off,
            rows,
            cols,
            rs,
            cs: 1,
        }
    }

    /// The transpose of a row-major block: `(cols, rows)` read down the columns.
    #[inline]
    pub fn t(self) -> View {
        View {
            off: self.off,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    #[inline]
    pub fn fits(&self, len: usize) -> bool {
        self.rows == 0
            || self.cols == 0
            || self.off + (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < len
    }
}

/// The destination of a product: a buffer of `len` values and the view written.
#[derive(Debug, Clone, Copy)]
pub struct Out {
    pub ptr: *mut f32,
    pub len: usize,
    pub view: View,
}

/// An operand: a buffer of `len` values and the view read.
#[derive(Debug, Clone, Copy)]
pub struct In {
    pub ptr: *const f32,
    pub len: usize,
    pub view: View,
}

impl Out {
    #[inline]
    pub fn new(ptr: *mut f32, len: usize, view: View) -> Out {
        Out { ptr, len, view }
    }
}

impl In {
    #[inline]
    pub fn new(ptr: *const f32, len: usize, view: View) -> In {
        In { ptr, len, view }
    }
}

/// How a product is written: `dst = (acc ? dst : 0) + beta · lhs · rhs`, on all cores when `par`,
/// its inputs in `prec`.
#[derive(Debug, Clone, Copy)]
pub struct Gemm {
    pub acc: bool,
    pub beta: f32,
    pub par: bool,
    pub prec: Precision,
}

impl Gemm {
    /// `dst = lhs · rhs` on all cores.
    pub const SET: Gemm = Gemm::all(false, Precision::F32);
    /// `dst += lhs · rhs` on all cores.
    pub const ADD: Gemm = Gemm::all(true, Precision::F32);

    /// `dst = (acc ? dst : 0) + lhs · rhs` on all cores, inputs in `prec`.
    #[inline]
    pub const fn all(acc: bool, prec: Precision) -> Gemm {
        Gemm {
            acc,
            beta: 1.0,
            par: true,
            prec,
        }
    }

    /// `dst = (acc ? dst : 0) + beta · lhs · rhs` on the calling thread (inside a parallel task).
    #[inline]
    pub fn serial(acc: bool, beta: f32) -> Gemm {
        Gemm {
            acc,
            beta,
            par: false,
            prec: Precision::F32,
        }
    }
}

/// The product `how` says: with the `gemm` crate in f32, with [`super::bf16`] in bf16.
///
/// # Safety
/// Each pointer addresses a buffer of its `len` values; `dst` does not overlap `lhs` or `rhs`,
/// and no other thread writes the region `dst.view` addresses while this runs. The views are
/// checked against the lengths here.
#[inline]
#[allow(unsafe_code)]
pub unsafe fn gemm_raw(dst: Out, lhs: In, rhs: In, how: Gemm) {
    let (d, l, r) = (dst.view, lhs.view, rhs.view);
    assert!(
        d.rows == l.rows && d.cols == r.cols && l.cols == r.rows,
        "matmul shapes: dst {d:?}, lhs {l:?}, rhs {r:?}"
    );
    assert!(
        d.fits(dst.len) && l.fits(lhs.len) && r.fits(rhs.len),
        "matmul view out of bounds"
    );
    if how.prec == Precision::Bf16 {
        // SAFETY: the caller's contract and the bounds checked above.
        unsafe { super::bf16::gemm(dst, lhs, rhs, how, super::bf16::tile()) };
        return;
    }
    let threads = if how.par { rayon::current_num_threads() } else { 1 };
    // SAFETY: the caller's contract and the bounds checked above.
    unsafe {
        gemm::gemm(
            d.rows,
            d.cols,
            l.cols,
            dst.ptr.add(d.off),
            d.cs as isize,
            d.rs as isize,
            how.acc,
            lhs.ptr.add(l.off),
            l.cs as isize,
            l.rs as isize,
            rhs.ptr.add(r.off),
            r.cs as isize,
            r.rs as isize,
            1.0,
            how.beta,
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

/// [`gemm_raw`] on slices: `dst`'s view `d` gets `lhs`'s view `l` times `rhs`'s view `r`.
#[inline]
pub fn gemm(dst: &mut [f32], d: View, lhs: &[f32], l: View, rhs: &[f32], r: View, how: Gemm) {
    let _span = crate::profile::span(crate::profile::Family::Gemm);
    #[allow(unsafe_code)]
    // SAFETY: a unique borrow cannot alias the shared ones, and the lengths are the slices'.
    unsafe {
        gemm_raw(
            Out {
                ptr: dst.as_mut_ptr(),
                len: dst.len(),
                view: d,
            },
            In {
                ptr: lhs.as_ptr(),
                len: lhs.len(),
                view: l,
            },
            In {
                ptr: rhs.as_ptr(),
                len: rhs.len(),
                view: r,
            },
            how,
        );
    }
}

/// `dst = lhs · rhs` on all cores ([`gemm`] with [`Gemm::SET`], or [`Gemm::ADD`] when `acc`).
#[inline]
pub fn mm(dst: &mut [f32], d: View, lhs: &[f32], l: View, rhs: &[f32], r: View, acc: bool) {
    gemm(dst, d, lhs, l, rhs, r, if acc { Gemm::ADD } else { Gemm::SET });
}

/// `out = x · W` for row-major `x: (m, k)` and `W: (k, n)`, or `(n, k)` read transposed when
/// `w_transposed`; `out: (m, n)`, on all cores.
///
/// # Panics
/// When a slice is shorter than its shape says.
pub fn matmul_into(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, w_transposed: bool, out: &mut [f32]) {
    let wv = if w_transposed {
        View::rows(0, n, k, k).t()
    } else {
        View::rows(0, k, n, n)
    };
    mm(
        out,
        View::rows(0, m, n, n),
        x,
        View::rows(0, m, k, k),
        w,
        wv,
        false,
    );
}
