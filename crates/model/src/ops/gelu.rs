//! Fused GELU: one pass forward, one pass backward (`grad · gelu'(x)`), instead of the ten
//! elementwise tensors candle's composed backward allocates. Checked against `Tensor::gelu` /
//! `Tensor::gelu_erf` in the tests below.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

use super::fast_math as fm;
use super::fused::{f32s, par_rows};
use crate::{Activation, Result};

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const INV_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
const INV_SQRT_2PI: f32 = 0.398_942_3;

fn gelu_tanh(x: f32) -> f32 {
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)).tanh())
}

fn gelu_tanh_grad(x: f32) -> f32 {
    let t = (SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)).tanh();
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044_715 * x * x)
}

fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + candle_core::cpu::erf::erf_f32(x * INV_SQRT_2))
}

fn gelu_erf_grad(x: f32) -> f32 {
    0.5 * (1.0 + candle_core::cpu::erf::erf_f32(x * INV_SQRT_2)) + x * INV_SQRT_2PI * (-0.5 * x * x).exp()
}

/// GELU of one value with the vectorisable [`fast_math`](super::fast_math) functions (the same
/// values as [`gelu`]'s libm ones to about 1e-6), for loops over plain slices run inside
/// [`vectorized`](super::simd::vectorized): the training engine's and the decoder's.
#[inline(always)]
pub fn gelu_fast(a: Activation, x: f32) -> f32 {
    match a {
        Activation::GeluTanh => 0.5 * x * (1.0 + fm::tanh(SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x))),
        Activation::GeluErf => 0.5 * x * (1.0 + fm::erf(x * INV_SQRT_2)),
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
    }
}

/// Applies `f` to `x` elementwise, on all cores for large inputs.
fn par_map(x: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    par_rows(&mut out, 1, |i, o| o[0] = f(x[i]));
    out
}

struct Gelu(Activation);

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "chatforge-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32s(s, l, "gelu")?;
        let y = match self.0 {
            Activation::GeluTanh => par_map(x, gelu_tanh),
            Activation::GeluErf => par_map(x, gelu_erf),
        };
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(
            arg.apply_op2_no_bwd(&grad.contiguous()?, &GeluGrad(self.0))?,
        ))
    }
}

/// `(x, grad) → grad · gelu'(x)`.
struct GeluGrad(Activation);

impl CustomOp2 for GeluGrad {
    fn name(&self) -> &'static str {
        "chatforge-gelu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32s(s1, l1, "gelu-grad")?;
        let g = f32s(s2, l2, "gelu-grad")?;
        let d: fn(f32) -> f32 = match self.0 {
            Activation::GeluTanh => gelu_tanh_grad,
            Activation::GeluErf => gelu_erf_grad,
        };
        let mut out = par_map(x, d);
        out.iter_mut().zip(g).for_each(|(o, &g)| *o *= g);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// GELU of `x` (f32, any shape) with a fused backward.
pub fn gelu(x: &Tensor, activation: Activation) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(Gelu(activation))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::max_abs_diff;
    use candle_core::{Device, Var};

    #[test]
    fn matches_candle_forward_and_backward() {
        let data: Vec<f32> = (0..2000).map(|i| (i as f32 - 1000.0) / 150.0).collect();
        for act in [Activation::GeluTanh, Activation::GeluErf] {
            let x = Var::from_vec(data.clone(), (40, 50), &Device::Cpu).unwrap();
            let w = Tensor::from_vec(
                data.iter().map(|v| v.sin()).collect::<Vec<f32>>(),
                (40, 50),
                &Device::Cpu,
            )
            .unwrap();
            let reference = match act {
                Activation::GeluTanh => x.as_tensor().gelu().unwrap(),
                Activation::GeluErf => x.as_tensor().gelu_erf().unwrap(),
            };
            let fused = gelu(x.as_tensor(), act).unwrap();
            assert!(max_abs_diff(&reference, &fused) < 1e-5, "{act:?} forward");
            let g_ref = (reference * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let g_fused = (fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let (a, b) = (
                g_ref.get(x.as_tensor()).unwrap(),
                g_fused.get(x.as_tensor()).unwrap(),
            );
            // candle's reference rounds its coefficients (0.0356774, 0.797885): allow for that.
            assert!(
                max_abs_diff(a, b) < 2e-4,
                "{act:?} backward differs by {}",
                max_abs_diff(a, b)
            );
        }
    }
}
