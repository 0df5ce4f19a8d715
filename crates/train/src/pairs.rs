//! Training on preference pairs: the reference pass (DPO's reference log-probabilities, computed
//! once with the starting model and kept in the run directory, TRL's `precompute_ref_log_probs`),
//! the micro-step and validation of [`crate::preference`]'s objectives on the engine.

use std::path::{Path, PathBuf};

use chatforge_base::Rng;
use chatforge_data::{Batch, BatchSampler, SamplerConfig, Shard};
use chatforge_model::engine::{StepBatch, TrainEngine};

use crate::run::engine_view;
use serde::{Deserialize, Serialize};

use crate::preference::{Objective, Pairs, PrefMetrics, evaluate, reply_logps};
use crate::{Error, Result};

/// What a preference step needs besides the engine: the objective, the reference
/// log-probabilities of every sequence of the training and validation shards (DPO), and a
/// buffer of per-position log-probabilities.
pub struct PairTraining {
    pub objective: Objective,
    train_refs: Vec<f64>,
    val_refs: Vec<f64>,
    logps: Vec<f32>,
}

/// A shard's reference log-probabilities, as kept in `reference/<name>.json` of the run.
#[derive(Debug, Serialize, Deserialize)]
struct RefFile {
    /// The shard's checksum and the row length: what the numbers were computed for.
    shard_crc: u32,
    seq_len: usize,
    /// Each document's (sequence's) reply log-probability.
    logps: Vec<f64>,
}

impl PairTraining {
    /// Sets up `objective` for the run in `run`. DPO's reference log-probabilities are read from
    /// `reference/` when a resumed run computed them already, else computed now with the engine
    /// as it starts (with LoRA, the base without its adapters) and written there.
    pub fn new(
        objective: Objective,
        engine: &mut TrainEngine,
        run: &Path,
        shards: [Option<&Shard>; 2],
        (seq_len, batch_size): (usize, usize),
        may_compute: bool,
    ) -> Result<PairTraining> {
        let mut refs = [Vec::new(), Vec::new()];
        if matches!(objective, Objective::Dpo { .. }) {
            for ((shard, name), out) in shards.into_iter().zip(["train", "val"]).zip(&mut refs) {
                if let Some(shard) = shard {
                    let path = ref_path(run, name);
                    *out = match read_reference(shard, &path, seq_len) {
                        Some(r) => r,
                        None if may_compute => reference(engine, shard, &path, seq_len, batch_size)?,
                        None => {
                            return Err(Error::Checkpoint(format!(
                                "{} is missing or was made for other data; a resumed full fine-tune cannot make it again (its model has moved): start the run anew",
                                path.display()
                            )));
                        }
                    };
                }
            }
        }
        let (b, t) = engine.shape();
        let [train_refs, val_refs] = refs;
        Ok(PairTraining {
            objective,
            train_refs,
            val_refs,
            logps: vec![0.0; b * t],
        })
    }

    /// The objective with the reference log-probabilities of the training sequences given,
    /// indexed by [`Batch::docs`] (benches, tests).
    pub fn with_references(objective: Objective, train_refs: Vec<f64>, engine: &TrainEngine) -> PairTraining {
        let (b, t) = engine.shape();
        PairTraining {
            objective,
            train_refs,
            val_refs: Vec::new(),
            logps: vec![0.0; b * t],
        }
    }

    /// Each sequence's reply log-probability in `batch` under the engine as it is (no dropout):
    /// what the reference pass computes.
    pub fn sequence_logps(engine: &mut TrainEngine, batch: &Batch) -> Result<Vec<f64>> {
        let (b, t) = engine.shape();
        let mut logps = vec![0f32; b * t];
        engine.forward_logps(&engine_view(batch, &batch.loss_mask), None, &mut logps)?;
        let pairs = Pairs {
            seqs: &batch.seqs,
            reply: &batch.loss_mask,
            n_seqs: batch.docs.len(),
        };
        Ok(reply_logps(&logps, &pairs).0)
    }

    /// Forward and backward of one micro-batch of pairs (`scale` times its gradient): its loss,
    /// metrics and pair count; `None` when it holds no pair.
    pub fn micro_step(
        &mut self,
        engine: &mut TrainEngine,
        batch: &Batch,
        scale: f32,
        dropout: &mut Rng,
    ) -> Result<Option<(f64, PrefMetrics, usize)>> {
        let (sb, pairs, refs) = self.layout(batch, true);
        if pairs.n_seqs < 2 {
            return Ok(None);
        }
        engine.forward_logps(&sb, Some(dropout), &mut self.logps)?;
        let out = evaluate(self.objective, &self.logps, &pairs, &refs, f64::from(scale));
        engine.backward_logps(&sb, &out.coef)?;
        Ok(Some((out.loss, out.metrics, out.pairs)))
    }

    /// The objective's mean loss and metrics over validation batches (no dropout, no backward).
    pub fn validate(
        &mut self,
        engine: &mut TrainEngine,
        batches: &[Batch],
    ) -> Result<Option<(f64, PrefMetrics)>> {
        let (mut loss, mut parts) = (0f64, Vec::new());
        for batch in batches {
            let batch = padded(batch, engine.shape());
            let (sb, pairs, refs) = self.layout(&batch, false);
            if pairs.n_seqs < 2 {
                continue;
            }
            engine.forward_logps(&sb, None, &mut self.logps)?;
            let out = evaluate(self.objective, &self.logps, &pairs, &refs, 0.0);
            loss += out.loss * out.pairs as f64;
            parts.push((out.metrics, out.pairs));
        }
        let n: usize = parts.iter().map(|p| p.1).sum();
        Ok((n > 0).then(|| (loss / n as f64, PrefMetrics::mean(&parts))))
    }

    /// The engine's view of a batch of pairs, its pair layout and the pairs' reference
    /// log-probabilities.
    fn layout<'a>(&self, batch: &'a Batch, train: bool) -> (StepBatch<'a>, Pairs<'a>, Vec<(f64, f64)>) {
        let refs = if train { &self.train_refs } else { &self.val_refs };
        let n_seqs = batch.docs.len() & !1;
        let pair_refs = (0..n_seqs / 2)
            .map(|k| {
                let at = |s: usize| refs.get(batch.docs[s] as usize).copied().unwrap_or(0.0);
                (at(2 * k), at(2 * k + 1))
            })
            .collect();
        // DPO reads the replies' log-probabilities only (the head skips the prompts); ORPO's
        // likelihood term covers every target of a chosen sequence.
        let weights = match self.objective {
            Objective::Dpo { .. } => &batch.loss_mask,
            Objective::Orpo { .. } => &batch.target_mask,
        };
        let sb = engine_view(batch, weights);
        let pairs = Pairs {
            seqs: &batch.seqs,
            reply: &batch.loss_mask,
            n_seqs,
        };
        (sb, pairs, pair_refs)
    }
}

fn ref_path(run: &Path, name: &str) -> PathBuf {
    chatforge_run::RunDir::new(run)
        .reference()
        .join(format!("{name}.json"))
}

/// The reply log-probability of every sequence of `shard` under the engine as it is now (with
/// LoRA, the base without its adapters), packed as training packs it; written to `path`.
fn reference(
    engine: &mut TrainEngine,
    shard: &Shard,
    path: &Path,
    seq_len: usize,
    batch_size: usize,
) -> Result<Vec<f64>> {
    let crc = shard.header().body_crc;
    let cfg = SamplerConfig {
        batch_size,
        seq_len,
        seed: 0,
        shuffle: false,
    };
    let mut sampler = BatchSampler::new(shard, cfg)?;
    let mut out = vec![0f64; shard.n_docs()];
    engine.without_adapters(|engine| -> Result<()> {
        for batch in sampler.epoch_batches() {
            let batch = padded(&batch, engine.shape());
            let sums = PairTraining::sequence_logps(engine, &batch)?;
            for (s, &doc) in batch.docs.iter().enumerate() {
                out[doc as usize] = sums[s];
            }
        }
        Ok(())
    })?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::Io {
            path: dir.to_path_buf(),
            source: e,
        })?;
    }
    let file = RefFile {
        shard_crc: crc,
        seq_len,
        logps: out,
    };
    crate::checkpoint::write_json(path, &file)?;
    Ok(file.logps)
}

/// The reference log-probabilities an earlier start of this run wrote for the same shard and
/// row length.
fn read_reference(shard: &Shard, path: &Path, seq_len: usize) -> Option<Vec<f64>> {
    let f: RefFile = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    (f.shard_crc == shard.header().body_crc && f.seq_len == seq_len && f.logps.len() == shard.n_docs())
        .then_some(f.logps)
}

/// A batch with fewer rows than the engine's (an epoch's last) padded with empty rows.
fn padded(batch: &Batch, (b, t): (usize, usize)) -> Batch {
    let mut p = batch.clone();
    if p.batch_size < b && p.seq_len == t {
        let n = b * t;
        for v in [&mut p.inputs, &mut p.targets, &mut p.positions, &mut p.segments] {
            v.resize(n, 0);
        }
        p.seqs.resize(n, u32::MAX);
        p.target_mask.resize(n, 0);
        p.loss_mask.resize(n, 0);
        p.batch_size = b;
    }
    p
}
