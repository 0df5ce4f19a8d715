//! Matrix products for the engine: strided views into flat buffers and one `gemm` entry point
//! (the `unsafe` of handing buffers to the `gemm` crate), and the pointer wrapper that hands
//! disjoint regions of one buffer to parallel tasks.

/// A pointer that may cross threads: each task writes a region no other task touches.
#[derive(Clone, Copy)]
pub(super) struct SendPtr(pub(super) *mut f32);

impl SendPtr {
    /// The pointer (a method, so closures capture the `Send` wrapper, not the raw field).
    #[inline]
    pub(super) fn get(self) -> *mut f32 {
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
pub(super) struct View {
    pub(super) off: usize,
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) rs: usize,
    pub(super) cs: usize,
}

impl View {
    #[inline]
    pub(super) fn rows(off: usize, rows: usize, cols: usize, rs: usize) -> View {
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
    pub(super) fn t(self) -> View {
        View {
            off: self.off,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    #[inline]
    pub(super) fn fits(&self, len: usize) -> bool {
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
#[inline]
#[allow(unsafe_code, clippy::too_many_arguments)]
pub(super) unsafe fn mm_raw(
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
#[inline]
pub(super) fn mm(dst: &mut [f32], d: View, lhs: &[f32], l: View, rhs: &[f32], r: View, acc: bool) {
    mm_beta(dst, d, lhs, l, rhs, r, acc, 1.0);
}

/// [`mm`] with the product scaled by `beta`.
#[inline]
#[allow(clippy::too_many_arguments)]
pub(super) fn mm_beta(
    dst: &mut [f32],
    d: View,
    lhs: &[f32],
    l: View,
    rhs: &[f32],
    r: View,
    acc: bool,
    beta: f32,
) {
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
