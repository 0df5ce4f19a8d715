//! Sequence-level objectives (preference tuning: DPO, ORPO): a forward pass that gives each
//! position's log-probability of its target, and a backward pass of any weighted sum of them.
//! The caller turns the log-probabilities into per-sequence sums, its loss and the loss's
//! derivative by each log-probability; the engine does the rest.

use super::*;

impl TrainEngine {
    /// Forward of a micro-batch: `logps[i]` is position `i`'s log-probability of its target
    /// where `batch.weights[i]` is 1, and 0 elsewhere. With `rng` (training) dropout is drawn from
    /// it as [`TrainEngine::forward_backward`] draws it, and each weighted position's gradient of
    /// its log-probability is kept for [`TrainEngine::backward_logps`]; without it (evaluation)
    /// there is no dropout.
    pub fn forward_logps(
        &mut self,
        batch: &StepBatch<'_>,
        rng: Option<&mut Rng>,
        logps: &mut [f32],
    ) -> Result<()> {
        self.check_batch(batch)?;
        if logps.len() != batch.b * batch.t {
            return Err(Error::Config(format!(
                "engine: {} log-probabilities for {} positions",
                logps.len(),
                batch.b * batch.t
            )));
        }
        let TrainEngine {
            params,
            model,
            acts,
            scratch,
            ..
        } = self;
        match rng {
            Some(rng) => draw_masks(model, acts, rng, batch.b, batch.t),
            None => {
                acts.emb_mask = None;
                acts.masks.fill(LayerMasks::default());
            }
        }
        forward(model, params, acts, scratch, batch);
        let v = model.cfg.vocab_size;
        // The head computed the weighted positions only (row k is position head_rows[k]).
        let rows = &acts.head_rows;
        let found: Vec<f32> = acts.logits[..rows.len() * v]
            .par_chunks_mut(v)
            .zip(rows.par_iter())
            .map(|(row, &i)| {
                let target = batch.targets[i] as usize;
                let x = row[target];
                let (max, sum) = exp_row(row);
                // d logp / d logits = onehot − softmax; kept negated, as cross-entropy's gradient.
                let k = 1.0 / sum;
                vectorized(|| row.iter_mut().for_each(|p| *p *= k));
                row[target] -= 1.0;
                x - max - sum.ln()
            })
            .collect();
        logps.fill(0.0);
        for (&i, lp) in rows.iter().zip(found) {
            logps[i] = lp;
        }
        self.logps_of = Some(batch.b * batch.t);
        Ok(())
    }

    /// Backward of the last [`TrainEngine::forward_logps`] (of the same batch): adds to `grads`
    /// the gradient of `Σ_i coef[i] · logps[i]`.
    pub fn backward_logps(&mut self, batch: &StepBatch<'_>, coef: &[f32]) -> Result<()> {
        let n = batch.b * batch.t;
        if self.logps_of.take() != Some(n) || coef.len() != n {
            return Err(Error::Config(
                "engine: backward_logps needs the same batch's forward_logps first".into(),
            ));
        }
        let TrainEngine {
            params,
            grads,
            model,
            acts,
            scratch,
            ..
        } = self;
        let v = model.cfg.vocab_size;
        let rows = &acts.head_rows;
        acts.logits[..rows.len() * v]
            .par_chunks_mut(v)
            .zip(rows.par_iter())
            .for_each(|(row, &i)| {
                let k = -coef[i];
                vectorized(|| row.iter_mut().for_each(|g| *g *= k));
            });
        backward(model, params, grads, acts, scratch, batch);
        Ok(())
    }

    /// Runs `f` with the LoRA adapters switched off (the frozen base alone: DPO's reference
    /// model); without adapters, with the model as it is.
    pub fn without_adapters<R>(&mut self, f: impl FnOnce(&mut TrainEngine) -> R) -> R {
        if !self.model.frozen {
            return f(self);
        }
        // Zero adapters add nothing to any product: the base alone.
        let zeros = vec![0.0; self.params.len()];
        let kept = std::mem::replace(&mut self.params, zeros);
        let r = f(self);
        self.params = kept;
        r
    }
}

/// Exponentiates a row of logits in place, shifted by its maximum: returns `(max, Σ exp)`.
#[inline]
pub(super) fn exp_row(row: &mut [f32]) -> (f32, f32) {
    vectorized(|| {
        let max = fm::max(row);
        row.iter_mut().for_each(|x| *x = fm::exp(*x - max));
        (max, fm::sum(row))
    })
}
