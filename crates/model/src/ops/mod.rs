//! The model's numerical building blocks. Each is written here once as a plain composition of
//! tensor ops (which candle differentiates); fused kernels that replace them for speed live beside
//! them and are tested against these references, forward and backward.

pub mod fast_math;
mod fused;
mod gelu;
mod scores;
pub mod simd;

use candle_core::{DType, Device, Tensor};

pub(crate) use fused::f32s as fused_f32s;
pub use fused::{
    add_bias, cross_entropy_fused, layer_norm_fused, normalize, softmax_causal, softmax_last_dim,
};
pub use gelu::{gelu, gelu_fast, gelu_fast_grad};
pub use scores::causal_attention_weights;

use crate::Result;

/// Layer normalisation over the last dimension: the fused [`normalize`] (candle's own `LayerNorm`
/// and `ops::layer_norm` have no backward), then the affine part in autograd so the weight and
/// bias get their gradients.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    if let Some(b) = bias {
        return layer_norm_fused(x, weight, b, eps);
    }
    let y = normalize(x, eps)?.broadcast_mul(weight)?;
    Ok(match bias {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
}

/// Largest absolute difference of two tensors (for the kernels' tests).
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    #[allow(clippy::unwrap_used)] // test support
    let d = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(candle_core::D::Minus1)
        .unwrap();
    #[allow(clippy::unwrap_used)] // test support
    d.to_scalar().unwrap()
}

/// The additive causal mask for `t` new tokens after `s - t` cached ones: `(t, s)`.
pub fn causal_mask(t: usize, s: usize, device: &Device) -> Result<Tensor> {
    let offset = s - t;
    let m: Vec<f32> = (0..t)
        .flat_map(|i| (0..s).map(move |j| if j <= i + offset { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    Ok(Tensor::from_vec(m, (t, s), device)?)
}

/// Mean cross-entropy of `logits` `(N, V)` against `targets` `(N)`, each position weighted by
/// `weights` `(N)` (0 or 1: which positions carry loss). Returns a scalar. Fused: see
/// [`cross_entropy_fused`], tested against `log_softmax` + `gather`.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor, weights: &Tensor) -> Result<Tensor> {
    cross_entropy_fused(&logits.to_dtype(DType::F32)?, targets, weights)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_norm_by_hand() {
        let x = Tensor::new(&[[1f32, 2., 3., 4.]], &Device::Cpu).unwrap();
        let w = Tensor::new(&[1f32, 1., 2., 2.], &Device::Cpu).unwrap();
        let b = Tensor::new(&[0f32, 1., 0., 1.], &Device::Cpu).unwrap();
        let y: Vec<f32> = layer_norm(&x, &w, Some(&b), 0.0)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        // mean 2.5, variance 1.25
        let s = 1.25f32.sqrt();
        let expected = [-1.5 / s, -0.5 / s + 1.0, 2.0 * 0.5 / s, 2.0 * 1.5 / s + 1.0];
        for (a, e) in y.iter().zip(expected) {
            assert!((a - e).abs() < 1e-6, "{y:?}");
        }
    }

    #[test]
    fn causal_mask_with_cache() {
        let m: Vec<Vec<f32>> = causal_mask(2, 3, &Device::Cpu).unwrap().to_vec2().unwrap();
        assert_eq!(m[0][..2], [0.0, 0.0]);
        assert_eq!(m[0][2], f32::NEG_INFINITY);
        assert_eq!(m[1], [0.0, 0.0, 0.0]);
    }

    #[test]
    fn weighted_cross_entropy_by_hand() {
        let logits = Tensor::new(&[[0f32, 0.], [0., 2f32.ln()]], &Device::Cpu).unwrap();
        let targets = Tensor::new(&[0u32, 1], &Device::Cpu).unwrap();
        let both = Tensor::new(&[1f32, 1.], &Device::Cpu).unwrap();
        let second = Tensor::new(&[0f32, 1.], &Device::Cpu).unwrap();
        let l: f32 = cross_entropy(&logits, &targets, &both)
            .unwrap()
            .to_scalar()
            .unwrap();
        let expected = (2f32.ln() + (1.5f32).ln()) / 2.0; // -log(1/2), -log(2/3)
        assert!((l - expected).abs() < 1e-6);
        let l: f32 = cross_entropy(&logits, &targets, &second)
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!((l - 1.5f32.ln()).abs() < 1e-6);
    }
}
