//! The kernels the training engine and the decoder are built from, on plain slices: the gemm
//! entry point, GELU, vectorisable math and the SIMD dispatch.

pub mod fast_math;
mod gelu;
pub mod simd;

pub use gelu::{gelu_fast, gelu_fast_grad};

/// `out = x · W` on slices, with the `gemm` crate on every core: `x: (m, k)` row-major, `W: (k, n)`
/// row-major, or `(n, k)` read transposed when `w_transposed`; `out: (m, n)`.
///
/// # Panics
/// When a slice is shorter than its shape says.
pub fn matmul_into(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, w_transposed: bool, out: &mut [f32]) {
    assert!(
        x.len() >= m * k && w.len() >= k * n && out.len() >= m * n,
        "matmul_into: slices too short"
    );
    let (rhs_cs, rhs_rs) = if w_transposed {
        (k as isize, 1)
    } else {
        (1, n as isize)
    };
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    #[allow(unsafe_code)]
    // SAFETY: sizes checked above; `out` is m×n row-major (column stride 1, row stride n), `x` is
    // m×k row-major, `w` holds k·n values addressed by the strides above; `out` is a unique
    // borrow, so it aliases neither input.
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
            w.as_ptr(),
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
