//! GELU (and SiLU, the Llama family's gate) and its derivative, one value at a time with the vectorisable
//! [`fast_math`](super::fast_math) functions, for the engine's and the decoder's loops.

use super::fast_math as fm;
use crate::Activation;

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const INV_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// GELU of one value with the vectorisable [`fast_math`](super::fast_math) functions (libm's
/// values to about 1e-6), for loops over plain slices run inside
/// [`vectorized`](super::simd::vectorized): the training engine's and the decoder's.
#[inline(always)]
pub fn gelu_fast(a: Activation, x: f32) -> f32 {
    match a {
        Activation::GeluTanh => 0.5 * x * (1.0 + fm::tanh(SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x))),
        Activation::GeluErf => 0.5 * x * (1.0 + fm::erf(x * INV_SQRT_2)),
        Activation::Silu => x / (1.0 + fm::exp(-x)),
    }
}

/// The derivative of [`gelu_fast`].
#[inline(always)]
pub fn gelu_fast_grad(a: Activation, x: f32) -> f32 {
    match a {
        Activation::GeluTanh => {
            let t = fm::tanh(SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x));
            0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044_715 * x * x)
        }
        Activation::GeluErf => {
            0.5 * (1.0 + fm::erf(x * INV_SQRT_2)) + x * INV_SQRT_2PI * fm::exp(-0.5 * x * x)
        }
        Activation::Silu => {
            let sig = 1.0 / (1.0 + fm::exp(-x));
            sig * (1.0 + x * (1.0 - sig))
        }
    }
}
