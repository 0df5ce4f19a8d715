//! AdamW as `torch.optim.AdamW` computes it, and nanoGPT's learning-rate schedule.

use candle_core::{Tensor, Var};
use chatforge_model::ParamSpec;
use serde::{Deserialize, Serialize};

use crate::Result;

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
    pub fn new(cfg: AdamWConfig, params: &[(ParamSpec, Var)]) -> Self {
        let zeros = || params.iter().map(|(_, p)| vec![0f32; p.elem_count()]).collect();
        AdamW {
            cfg,
            step: 0,
            m: zeros(),
            v: zeros(),
        }
    }

    /// One update at learning rate `lr`; `grads[i]` belongs to `params[i]` (None: no gradient, skipped).
    /// Weight decay applies only where the spec says so.
    pub fn update(&mut self, params: &[(ParamSpec, Var)], grads: &[Option<Tensor>], lr: f64) -> Result<()> {
        self.step += 1;
        let c = self.cfg;
        let bias1 = 1.0 - c.beta1.powi(self.step as i32);
        let bias2_sqrt = (1.0 - c.beta2.powi(self.step as i32)).sqrt();
        let step_size = (lr / bias1) as f32;
        let (b1, b2, eps) = (c.beta1 as f32, c.beta2 as f32, c.eps as f32);
        for (i, ((spec, var), grad)) in params.iter().zip(grads).enumerate() {
            let Some(grad) = grad else { continue };
            let g: Vec<f32> = grad.flatten_all()?.to_vec1()?;
            let mut p: Vec<f32> = var.as_tensor().flatten_all()?.to_vec1()?;
            let decay = if spec.decay {
                (1.0 - lr * c.weight_decay) as f32
            } else {
                1.0
            };
            let (m, v) = (&mut self.m[i], &mut self.v[i]);
            for k in 0..p.len() {
                p[k] *= decay;
                m[k] += (g[k] - m[k]) * (1.0 - b1); // lerp, as torch does
                v[k] = v[k] * b2 + (1.0 - b2) * g[k] * g[k];
                let denom = v[k].sqrt() / bias2_sqrt as f32 + eps;
                p[k] -= step_size * m[k] / denom;
            }
            var.set(&Tensor::from_vec(p, var.shape(), var.device())?)?;
        }
        Ok(())
    }
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

/// Scales gradients so their global L2 norm is at most `max_norm`; returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Option<Tensor>], max_norm: f64) -> Result<f64> {
    let mut sq = 0f64;
    for g in grads.iter().flatten() {
        sq += f64::from(g.sqr()?.sum_all()?.to_scalar::<f32>()?);
    }
    let norm = sq.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for g in grads.iter_mut().flatten() {
            *g = (&*g * scale)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;

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
