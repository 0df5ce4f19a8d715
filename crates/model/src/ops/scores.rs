//! Causal attention weights in one op: `softmax(q·kᵀ · scale)` with the causal mask, computed
//! per (batch, head) with the `gemm` crate and normalised in place. Unlike `matmul` followed by a
//! softmax op, the pre-softmax scores `(B, H, T, S)` are never kept for backward: only the weights
//! are, and the backward recomputes nothing it does not need.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};

use super::fused::f32s;
use crate::Result;

struct CausalScores {
    scale: f32,
}

impl CustomOp2 for CausalScores {
    fn name(&self) -> &'static str {
        "chatforge-causal-scores"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (q, k) = (
            f32s(s1, l1, "attention scores")?,
            f32s(s2, l2, "attention scores")?,
        );
        let (qd, kd) = (l1.shape().dims(), l2.shape().dims());
        let [b, h, t, d] = qd else {
            candle_core::bail!("attention scores: q must be (B, H, T, D)")
        };
        let [kb, kh, s, kd_] = kd else {
            candle_core::bail!("attention scores: k must be (B, H, S, D)")
        };
        let (b, h, t, d, s) = (*b, *h, *t, *d, *s);
        if (*kb, *kh, *kd_) != (b, h, d) || s < t {
            candle_core::bail!("attention scores: q {qd:?} and k {kd:?} do not fit");
        }
        let mut out = vec![0f32; b * h * t * s];
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per = (b * h).div_ceil(threads).max(1);
        let scale = self.scale;
        std::thread::scope(|sc| {
            for (chunk, dst) in out.chunks_mut(per * t * s).enumerate() {
                sc.spawn(move || {
                    for (i, att) in dst.chunks_mut(t * s).enumerate() {
                        let bh = chunk * per + i;
                        let (qm, km) = (&q[bh * t * d..(bh + 1) * t * d], &k[bh * s * d..(bh + 1) * s * d]);
                        #[allow(unsafe_code)]
                        // SAFETY: `att` is t×s row-major (row stride s), `qm` is t×d row-major and
                        // `km` is s×d row-major, read as kᵀ (d×s: row stride 1, column stride d);
                        // all three slices have exactly those sizes and do not overlap.
                        unsafe {
                            gemm::gemm(
                                t,
                                s,
                                d,
                                att.as_mut_ptr(),
                                1,
                                s as isize,
                                false,
                                qm.as_ptr(),
                                1,
                                d as isize,
                                km.as_ptr(),
                                d as isize,
                                1,
                                0.0,
                                scale,
                                false,
                                false,
                                false,
                                gemm::Parallelism::None,
                            );
                        }
                        // Causal softmax in place: query i sees keys 0..=i + s − t.
                        for (r, row) in att.chunks_mut(s).enumerate() {
                            let visible = r + (s - t) + 1;
                            let (seen, hidden) = row.split_at_mut(visible);
                            let max = seen.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                            let mut sum = 0f32;
                            seen.iter_mut().for_each(|x| {
                                *x = (*x - max).exp();
                                sum += *x;
                            });
                            let inv = 1.0 / sum;
                            seen.iter_mut().for_each(|x| *x *= inv);
                            hidden.fill(0.0);
                        }
                    }
                });
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, h, t, s))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // dS = P ⊙ (dP − rowsum(dP ⊙ P)); dq = dS·k·scale; dk = dSᵀ·q·scale.
        let ds = res.apply_op2_no_bwd(&grad.contiguous()?, &super::fused::SoftmaxGrad)?;
        let scale = f64::from(self.scale);
        let dq = (ds.matmul(k)? * scale)?;
        let dk = (ds.transpose(2, 3)?.matmul(q)? * scale)?;
        Ok((Some(dq), Some(dk)))
    }
}

/// Causal attention weights `(B, H, T, S)` from `q` `(B, H, T, D)` and `k` `(B, H, S, D)`.
pub fn causal_attention_weights(q: &Tensor, k: &Tensor, scale: f64) -> Result<Tensor> {
    Ok(q.contiguous()?
        .apply_op2(&k.contiguous()?, CausalScores { scale: scale as f32 })?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::max_abs_diff;
    use candle_core::{D, Device, Var};
    use chatforge_base::Rng;

    #[test]
    fn matches_matmul_then_masked_softmax() {
        let mut rng = Rng::new(8);
        let mut var = |shape: &[usize]| {
            let n: usize = shape.iter().product();
            Var::from_vec((0..n).map(|_| rng.normal() as f32).collect(), shape, &Device::Cpu).unwrap()
        };
        for (t, s) in [(5, 5), (2, 6)] {
            let (q, k) = (var(&[2, 3, t, 4]), var(&[2, 3, s, 4]));
            let up = var(&[2, 3, t, s]).as_tensor().detach();
            let fused = causal_attention_weights(q.as_tensor(), k.as_tensor(), 0.5).unwrap();
            let scores = (q.as_tensor().matmul(&k.as_tensor().t().unwrap()).unwrap() * 0.5).unwrap();
            let mask = crate::ops::causal_mask(t, s, &Device::Cpu).unwrap();
            let plain = candle_nn::ops::softmax(&scores.broadcast_add(&mask).unwrap(), D::Minus1).unwrap();
            assert!(
                max_abs_diff(&fused, &plain) < 1e-6,
                "forward differs by {}",
                max_abs_diff(&fused, &plain)
            );
            let gf = (fused * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let gp = (plain * &up).unwrap().sum_all().unwrap().backward().unwrap();
            for v in [&q, &k] {
                let d = max_abs_diff(gf.get(v.as_tensor()).unwrap(), gp.get(v.as_tensor()).unwrap());
                assert!(d < 1e-5, "gradient differs by {d}");
            }
        }
    }
}
