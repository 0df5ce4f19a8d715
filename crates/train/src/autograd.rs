//! The training step on candle's autograd (`train.engine = false`): the model's forward as
//! tensor ops, `backward()`, and AdamW over candle variables. The engine replaces it in
//! production; it stays as an independent path the engine is tested against.

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor};
use chatforge_data::Batch;
use chatforge_model::{AttnMask, Dropout, Gpt, Params, ops};

use crate::optim::{AdamW, clip_grad_norm};
use crate::run::StepOutcome;
use crate::{Mode, Result};

fn to_tensor(v: &[u32], shape: (usize, usize), dev: &Device) -> Result<Tensor> {
    Ok(Tensor::from_slice(v, shape, dev)?)
}

/// A micro-batch as tensors: the model's inputs and what weights the loss.
struct Inputs {
    ids: Tensor,
    pos: Tensor,
    mask: AttnMask,
    targets: Tensor,
    weights: Tensor,
    /// Positions that carry loss.
    n: usize,
}

impl Inputs {
    /// `None` when no position carries loss (an SFT row of prompts only).
    fn new(batch: &Batch, mode: Mode, dev: &Device) -> Result<Option<Inputs>> {
        let (b, t) = (batch.batch_size, batch.seq_len);
        let weights: &[u8] = if mode.masked() {
            &batch.loss_mask
        } else {
            &batch.target_mask
        };
        let n: usize = weights.iter().map(|&w| w as usize).sum();
        if n == 0 {
            return Ok(None);
        }
        // Rows that hold one document and no padding need only the plain causal mask.
        let single = batch.segments.iter().all(|&s| s == 0) && batch.target_mask.iter().all(|&m| m == 1);
        let mask = if single {
            AttnMask::Causal
        } else {
            AttnMask::packed(&batch.segments, b, t, dev)?
        };
        let w: Vec<f32> = weights.iter().map(|&x| f32::from(x)).collect();
        Ok(Some(Inputs {
            ids: to_tensor(&batch.inputs, (b, t), dev)?,
            pos: to_tensor(&batch.positions, (b, t), dev)?,
            mask,
            targets: Tensor::from_slice(&batch.targets, b * t, dev)?,
            weights: Tensor::from_vec(w, b * t, dev)?,
            n,
        }))
    }

    /// The weighted mean cross-entropy of `logits` `(B, T, V)`.
    fn loss(&self, logits: &Tensor) -> chatforge_model::Result<Tensor> {
        let (b, t, v) = logits.dims3()?;
        ops::cross_entropy(&logits.reshape((b * t, v))?, &self.targets, &self.weights)
    }
}

/// The micro-batch's loss (a scalar with a graph) and how many positions carry it; `None` when
/// none does.
fn batch_loss(
    model: &Gpt,
    batch: &Batch,
    mode: Mode,
    dropout: Option<&mut Dropout>,
    dev: &Device,
) -> Result<Option<(Tensor, usize)>> {
    let Some(x) = Inputs::new(batch, mode, dev)? else {
        return Ok(None);
    };
    let logits = model.forward(&x.ids, &x.pos, &x.mask, None, dropout)?;
    Ok(Some((x.loss(&logits)?, x.n)))
}

/// One optimizer step: `micro` batches from `next`, gradients accumulated (each micro-batch's
/// mean loss / `micro`), clipped to `clip`, AdamW at `lr`. With `checkpoint`, each micro-batch's
/// backward recomputes block activations instead of keeping them ([`Gpt::backward_checkpointed`]).
#[allow(clippy::too_many_arguments)] // the step's whole state, passed explicitly
pub fn optimizer_step(
    model: &Gpt,
    params: &Params,
    opt: &mut AdamW,
    mut next: impl FnMut() -> Batch,
    micro: usize,
    mode: Mode,
    lr: f64,
    clip: f64,
    checkpoint: bool,
    dropout: &mut Dropout,
    dev: &Device,
) -> Result<StepOutcome> {
    let mut grads: Vec<Option<Tensor>> = vec![None; params.vars.len()];
    let (mut loss_sum, mut used, mut positions) = (0f64, 0usize, 0usize);
    for _ in 0..micro {
        let batch = next();
        positions += batch.batch_size * batch.seq_len;
        let Some(x) = Inputs::new(&batch, mode, dev)? else {
            continue;
        };
        // Always the stream: a site whose rate is 0 draws nothing, and an adapter's dropout
        // applies even when the model's is 0.
        let drop_ref = Some(&mut *dropout);
        // candle leaves a variable's gradient attached to the graph that computed it (the
        // activations it was multiplied with): detached, the graph is freed with the store.
        let mut sink = |g: &GradStore| -> chatforge_model::Result<()> {
            for (slot, (_, var)) in grads.iter_mut().zip(&params.vars) {
                if let Some(gv) = g.get(var.as_tensor()) {
                    let gv = gv.detach();
                    *slot = Some(match slot.take() {
                        Some(acc) => (acc + gv)?,
                        None => gv,
                    });
                }
            }
            Ok(())
        };
        let loss = if checkpoint {
            let scaled = |logits: &Tensor| Ok((x.loss(logits)? / micro as f64)?);
            let l = model.backward_checkpointed(&x.ids, &x.pos, &x.mask, drop_ref, scaled, &mut sink)?;
            (l * micro as f64)?
        } else {
            let logits = model.forward(&x.ids, &x.pos, &x.mask, None, drop_ref)?;
            let l = x.loss(&logits)?;
            sink(&(&l / micro as f64)?.backward()?)?;
            l
        };
        loss_sum += f64::from(loss.to_scalar::<f32>()?);
        used += 1;
    }
    let grad_norm = clip_grad_norm(&mut grads, clip)?;
    opt.update(&params.vars, &grads, lr)?;
    let loss = if used == 0 {
        f64::NAN
    } else {
        loss_sum / used as f64
    };
    Ok(StepOutcome {
        loss,
        used,
        grad_norm,
        positions,
    })
}

/// Mean loss over the validation batches, weighted by the positions that carry loss (`None`
/// when none does); no backward.
pub(crate) fn estimate_loss(model: &Gpt, batches: &[Batch], mode: Mode, dev: &Device) -> Result<Option<f64>> {
    let (mut total, mut count) = (0f64, 0usize);
    for batch in batches {
        if let Some((loss, n)) = batch_loss(model, batch, mode, None, dev)? {
            total += f64::from(loss.to_scalar::<f32>()?) * n as f64;
            count += n;
        }
    }
    Ok((count > 0).then(|| total / count as f64))
}
