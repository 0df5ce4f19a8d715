//! AdamW as `torch.optim.AdamW` computes it, and nanoGPT's learning-rate schedule.

use chatforge_model::ParamSpec;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        }
    }
}

/// First and second moments per parameter; `step` counts updates made.
#[derive(Debug, Clone)]
pub struct AdamW {
    pub cfg: AdamWConfig,
    pub step: u64,
    pub m: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
}

impl AdamW {
    /// Moments for parameters of these lengths (the training engine's flat parameters).
    pub fn for_lengths(cfg: AdamWConfig, lens: impl Iterator<Item = usize>) -> Self {
        let lens: Vec<usize> = lens.collect();
        AdamW {
            cfg,
            step: 0,
            m: lens.iter().map(|&n| vec![0f32; n]).collect(),
            v: lens.iter().map(|&n| vec![0f32; n]).collect(),
        }
    }

    /// One update at learning rate `lr` on flat buffers (the training engine's): `params` and
    /// `grads` hold every parameter at `offsets`, in the order of `specs` and of the moments.
    /// Weight decay applies only where the spec says so. One fused pass per parameter, on all
    /// cores; nothing is allocated.
    pub fn update(
        &mut self,
        specs: &[ParamSpec],
        params: &mut [f32],
        grads: &[f32],
        offsets: &[(usize, usize)],
        lr: f64,
    ) {
        self.step += 1;
        let c = self.cfg;
        let bias1 = 1.0 - c.beta1.powi(self.step as i32);
        let bias2_sqrt = ((1.0 - c.beta2.powi(self.step as i32)).sqrt()) as f32;
        let step_size = (lr / bias1) as f32;
        let (b1, b2, eps) = (c.beta1 as f32, c.beta2 as f32, c.eps as f32);
        for (i, (spec, &(off, len))) in specs.iter().zip(offsets).enumerate() {
            let decay = if spec.decay {
                (1.0 - lr * c.weight_decay) as f32
            } else {
                1.0
            };
            let (p, g) = (&mut params[off..off + len], &grads[off..off + len]);
            let (m, v) = (&mut self.m[i], &mut self.v[i]);
            const CHUNK: usize = 1 << 14;
            p.par_chunks_mut(CHUNK)
                .zip(g.par_chunks(CHUNK))
                .zip(m.par_chunks_mut(CHUNK))
                .zip(v.par_chunks_mut(CHUNK))
                .for_each(|(((p, g), m), v)| {
                    chatforge_model::kernels::simd::vectorized(|| {
                        for k in 0..p.len() {
                            p[k] *= decay;
                            m[k] += (g[k] - m[k]) * (1.0 - b1);
                            v[k] = v[k] * b2 + (1.0 - b2) * g[k] * g[k];
                            let denom = v[k].sqrt() / bias2_sqrt + eps;
                            p[k] -= step_size * m[k] / denom;
                        }
                    })
                });
        }
    }
}

/// Scales a flat gradient buffer so its global L2 norm is at most `max_norm`; returns the norm
/// before clipping.
pub fn clip_grad_norm(grads: &mut [f32], max_norm: f64) -> f64 {
    // Partial sums collected in order, so the norm is the same on every run.
    let sq: f64 = grads
        .par_chunks(1 << 14)
        .map(|c| c.iter().map(|&g| f64::from(g) * f64::from(g)).sum::<f64>())
        .collect::<Vec<f64>>()
        .iter()
        .sum();
    let norm = sq.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let scale = (max_norm / (norm + 1e-6)) as f32;
        grads
            .par_chunks_mut(1 << 14)
            .for_each(|c| c.iter_mut().for_each(|g| *g *= scale));
    }
    norm
}

/// nanoGPT's schedule: linear warm-up to `lr` over `warmup` steps, cosine decay to `min_lr` at
/// `max_steps`, then `min_lr`.
pub fn lr_at(step: u64, lr: f64, min_lr: f64, warmup: u64, max_steps: u64) -> f64 {
    if step < warmup {
        // 1. warm-up: (step + 1) / warmup of the peak
        return lr * (step + 1) as f64 / warmup as f64;
    }
    if step >= max_steps {
        // 3. after the schedule: the floor
        return min_lr;
    }
    // 2. cosine from lr down to min_lr
    let progress = (step - warmup) as f64 / (max_steps - warmup).max(1) as f64;
    let coeff = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
    min_lr + coeff * (lr - min_lr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_scales_to_the_norm_and_reports_it_before() {
        let mut g = vec![3.0f32, 4.0, 0.0];
        assert_eq!(clip_grad_norm(&mut g, 10.0), 5.0);
        assert_eq!(g, [3.0, 4.0, 0.0], "under the limit: untouched");
        let n = clip_grad_norm(&mut g, 1.0);
        assert_eq!(n, 5.0);
        assert!((g[0] - 0.6).abs() < 1e-6 && (g[1] - 0.8).abs() < 1e-6, "{g:?}");
        assert_eq!(
            clip_grad_norm(&mut g, 0.0),
            clip_grad_norm(&mut g.clone(), 0.0),
            "0: no clipping"
        );
    }

    #[test]
    fn schedule_has_three_phases() {
        assert_eq!(lr_at(0, 1.0, 0.1, 10, 100), 0.1);
        assert_eq!(lr_at(9, 1.0, 0.1, 10, 100), 1.0);
        assert!((lr_at(10, 1.0, 0.1, 10, 100) - 1.0).abs() < 1e-12);
        assert!((lr_at(55, 1.0, 0.1, 10, 100) - 0.55).abs() < 1e-12);
        assert_eq!(lr_at(100, 1.0, 0.1, 10, 100), 0.1);
        assert_eq!(lr_at(500, 1.0, 0.1, 10, 100), 0.1);
    }
}
