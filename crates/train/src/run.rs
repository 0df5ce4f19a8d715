//! `train`: set-up, one loop of steps, finish (nanoGPT's shape). The set-up decides where the
//! weights come from (a checkpoint of this run, `--init`, or the seed) and builds the engine, the
//! sampler and the log; the loop steps, validates and checkpoints; finish writes the adapter, the
//! plot, the summary and the manifest.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use chatforge_base::Rng;
use chatforge_data::{Batch, BatchSampler, SamplerConfig, SamplerState, Shard, sha256_file};
use chatforge_model::engine::{StepBatch, TrainEngine};
use chatforge_model::{GptConfig, LoraConfig, ParamSpec, Weights, init_weights, take_flat};
use chatforge_run::RunDir;
use serde::Serialize;

use crate::checkpoint::{self, CheckpointState, write_json};
use crate::events::{Event, Log, trim_log};
use crate::group::{Group, Solo};
use crate::optim::{AdamW, clip_grad_norm, lr_at};
use crate::pairs::PairTraining;
use crate::preference::PrefMetrics;
use crate::start::{Resumed, check_memory, init_config, load_init, relative, resume_point};
use crate::{Adapter, Error, Mode, Result, TrainConfig};

#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    pub steps: u64,
    pub last_loss: Option<f64>,
    pub best_val_loss: Option<f64>,
    pub tokens: u64,
    pub seconds: f64,
    pub stopped: Option<String>,
    /// Per-step training losses of this invocation, in order.
    pub losses: Vec<f64>,
}

/// What one optimizer step did.
#[derive(Debug, Clone, Copy)]
pub struct StepOutcome {
    /// Mean of the micro-batches' losses (NaN when none carried loss).
    pub loss: f64,
    /// Micro-batches that carried loss.
    pub used: usize,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Positions processed.
    pub positions: usize,
    /// Preference modes: the step's metrics (TRL's names), means over its pairs.
    pub metrics: Option<PrefMetrics>,
    /// In a group of processes: seconds spent summing the gradients and scalars across them.
    pub sync_s: Option<f64>,
}

/// What a step's loss is: next-token cross-entropy on the positions `Mode` says, or a preference
/// objective on pairs.
pub enum StepLoss<'a> {
    Tokens(Mode),
    Pairs(&'a mut PairTraining),
}

/// One optimizer step on the engine: `micro` batches from `next` in each process of `group`,
/// gradients accumulated (each micro-batch's mean loss / all the group's micro-batches) and summed
/// over the group, clipped to `clip`, AdamW at `lr`; dropout masks from the `dropout` stream.
#[allow(clippy::too_many_arguments)] // the step's whole state, passed explicitly
pub fn optimizer_step(
    engine: &mut TrainEngine,
    specs: &[ParamSpec],
    opt: &mut AdamW,
    mut next: impl FnMut() -> Batch,
    micro: usize,
    mut objective: StepLoss<'_>,
    lr: f64,
    clip: f64,
    dropout: &mut Rng,
    group: &dyn Group,
) -> Result<StepOutcome> {
    engine.zero_grad();
    let (mut loss_sum, mut used, mut positions) = (0f64, 0usize, 0usize);
    let mut parts = Vec::new();
    let (size, start) = (group.size(), dropout.state());
    let mut stride = 0;
    for i in 0..micro {
        let batch = next();
        positions += batch.batch_size * batch.seq_len;
        let scale = 1.0 / (micro * size) as f32;
        // In a group, micro-batch i of this process is micro-batch i·size + rank of the step: its
        // dropout masks are the ones one process would draw for it.
        let mut own = None;
        if size > 1 {
            stride = engine.dropout_stride(batch.batch_size, batch.seq_len);
            let j = (i * size + group.rank()) as u64;
            own = Some(Rng::from_state(start.wrapping_add(j.wrapping_mul(stride))));
        }
        let dropout = own.as_mut().unwrap_or(&mut *dropout);
        let loss = match &mut objective {
            StepLoss::Tokens(mode) => engine.forward_backward(&step_batch(&batch, *mode), scale, dropout)?,
            StepLoss::Pairs(p) => match p.micro_step(engine, &batch, scale, dropout)? {
                Some((loss, metrics, pairs)) => {
                    parts.push((metrics, pairs));
                    loss
                }
                None => f64::NAN,
            },
        };
        if !loss.is_nan() {
            loss_sum += loss;
            used += 1;
        }
    }
    let mut sync_s = None;
    if size > 1 {
        let t0 = std::time::Instant::now();
        *dropout = Rng::from_state(start.wrapping_add(((micro * size) as u64).wrapping_mul(stride)));
        group.sum_f32(&mut engine.grads);
        let mut totals = [loss_sum, used as f64, positions as f64];
        group.sum_f64(&mut totals);
        (loss_sum, used, positions) = (totals[0], totals[1] as usize, totals[2] as usize);
        sync_s = Some(t0.elapsed().as_secs_f64());
    }
    let optimizer = chatforge_model::profile::span(chatforge_model::profile::Family::Optimizer);
    let grad_norm = clip_grad_norm(&mut engine.grads, clip);
    if used == 0 {
        // No position carried loss: no parameter has a gradient, so none moves.
        opt.step += 1;
    } else {
        opt.update(specs, &mut engine.params, &engine.grads, &engine.offsets, lr);
    }
    drop(optimizer);
    Ok(StepOutcome {
        loss: if used == 0 {
            f64::NAN
        } else {
            loss_sum / used as f64
        },
        used,
        grad_norm,
        positions,
        metrics: (!parts.is_empty()).then(|| PrefMetrics::mean(&parts)),
        sync_s,
    })
}

/// Mean loss over the validation batches, weighted by the positions that carry loss (`None`
/// when none does); no backward, no dropout.
/// Each process of `group` scores its share of the batches.
fn val_loss(
    engine: &mut TrainEngine,
    batches: &[Batch],
    mode: Mode,
    group: &dyn Group,
) -> Result<Option<f64>> {
    let mut totals = [0f64; 2]; // loss summed, positions
    for batch in batches.iter().skip(group.rank()).step_by(group.size()) {
        let (sum, n) = engine.eval_loss(&step_batch(batch, mode))?;
        totals[0] += sum;
        totals[1] += n as f64;
    }
    group.sum_f64(&mut totals);
    Ok((totals[1] > 0.0).then(|| totals[0] / totals[1]))
}

/// A batch as the engine takes it: the weights are the positions that carry loss in `mode`.
fn step_batch(batch: &Batch, mode: Mode) -> StepBatch<'_> {
    let weights = if mode.masked() {
        &batch.loss_mask
    } else {
        &batch.target_mask
    };
    engine_view(batch, weights)
}

/// A sampler's batch as the engine reads it, with `weights` saying which positions count.
pub(crate) fn engine_view<'a>(batch: &'a Batch, weights: &'a [u8]) -> StepBatch<'a> {
    StepBatch {
        b: batch.batch_size,
        t: batch.seq_len,
        inputs: &batch.inputs,
        targets: &batch.targets,
        positions: &batch.positions,
        segments: &batch.segments,
        weights,
    }
}

/// Everything the loop starts from, decided before the first step.
struct Setup {
    cfg: TrainConfig,
    lora: Option<LoraConfig>,
    data: PathBuf,
    shard: Shard,
    val_batches: Vec<Batch>,
    /// Preference modes: the objective and DPO's reference log-probabilities.
    pairs: Option<PairTraining>,
    seq_len: usize,
    specs: Vec<ParamSpec>,
    engine: TrainEngine,
    opt: AdamW,
    /// Where a resumed run continues: its step, sampler, dropout stream, best loss and how many
    /// evaluations since it.
    step: u64,
    sampler: SamplerState,
    dropout: Rng,
    best: Option<f64>,
    since_best: u64,
    resumed_from: Option<PathBuf>,
    warnings: Vec<String>,
}

/// Resolves the config (vocabulary from the shard, the model from `--init`, QLoRA's
/// quantisation), checks it against the machine, finds the weights and builds the engine.
fn set_up(cfg: &TrainConfig, run: &Path, resume: bool, group: &dyn Group) -> Result<Setup> {
    let mut cfg = cfg.clone();
    let data = cfg
        .train
        .data
        .clone()
        .ok_or_else(|| Error::Config("no training data (train.data or --data)".into()))?;
    let shard = Shard::open(&data)?;
    if cfg.model.vocab_size == 0 {
        cfg.model.vocab_size = shard.vocab_size() as usize; // "0: take the tokenizer's size from the shard"
    }
    cfg.validate()?;
    check_memory(&cfg)?;
    std::fs::create_dir_all(run).map_err(|e| Error::Io {
        path: run.to_path_buf(),
        source: e,
    })?;
    // What a crash left half-written (a checkpoint's or best/'s temporary, a log being trimmed).
    let mut warnings: Vec<String> = Vec::new();
    let writer = group.rank() == 0;
    for dir in [run.to_path_buf(), RunDir::new(run).checkpoints()]
        .into_iter()
        .filter(|_| writer)
    {
        for name in chatforge_data::clear_leftovers(&dir)? {
            warnings.push(format!("cleared {name}, left by a crash"));
        }
    }
    // LoRA: the base always comes from --init and stays frozen; the adapter is what trains.
    // QLoRA is LoRA on a quantised base (q4 unless the config says q8); plain LoRA never quantises.
    let t = cfg.train.clone();
    if group.size() > 1 && t.mode.pairs() {
        return Err(Error::Config(format!(
            "mode {:?} runs in one process: preference tuning over MPI is not supported yet",
            t.mode
        )));
    }
    if shard.is_pairs() != t.mode.pairs() {
        return Err(Error::Config(if shard.is_pairs() {
            format!(
                "{} holds preference pairs: train it with --mode dpo or orpo",
                data.display()
            )
        } else {
            format!(
                "mode {:?} trains on preference pairs, and {} holds conversations: tokenize a preference file (docs/preference.md)",
                t.mode,
                data.display()
            )
        }));
    }
    cfg.lora.quant = match t.adapter() {
        Some(Adapter::Qlora) => Some(cfg.lora.quant.unwrap_or(chatforge_model::quant::QuantKind::Q4)),
        _ => None,
    };
    let lora = t.adapter().is_some().then(|| cfg.lora.clone());
    if let Some(init) = &t.init {
        cfg.model = GptConfig {
            dropout: cfg.model.dropout,
            ..init_config(init)?
        };
    } else if lora.is_some() {
        return Err(Error::Config(
            "mode lora adapts a pretrained model: give train.init (--init)".into(),
        ));
    }
    let seq_len = t.seq_len.unwrap_or(cfg.model.n_ctx);
    if seq_len > cfg.model.n_ctx {
        return Err(Error::Config(format!(
            "train.seq_len = {seq_len} is above the model's position table (n_ctx = {})",
            cfg.model.n_ctx
        )));
    }
    if shard.vocab_size() as usize > cfg.model.vocab_size {
        return Err(Error::Config(format!(
            "the tokenizer of {} has {} tokens but model.vocab_size is {}",
            data.display(),
            shard.vocab_size(),
            cfg.model.vocab_size
        )));
    }
    let (val_shard, val_batches) = val_batches(&cfg, &shard, seq_len)?;
    // Where the weights come from: a checkpoint of this run (the newest that loads), an --init
    // model, or the seed.
    let resumed = if resume {
        resume_point(run, &cfg, lora.as_ref(), &mut warnings)?
    } else {
        None
    };
    let (mut engine, specs, opt, resumed) = build(&cfg, lora.as_ref(), seq_len, resumed)?;
    let pairs = match t.objective() {
        Some(objective) => Some(PairTraining::new(
            objective,
            &mut engine,
            run,
            [Some(&shard), val_shard.as_ref()],
            (seq_len, t.batch_size),
            // A resumed full fine-tune no longer holds the starting model.
            resumed.is_none() || lora.is_some(),
        )?),
        None => None,
    };
    let mut s = Setup {
        pairs,
        resumed_from: resumed.as_ref().map(|r| relative(run, &r.dir)),
        step: 0,
        sampler: SamplerState::default(),
        dropout: Rng::new(t.seed ^ 0xD0D0),
        best: None,
        since_best: 0,
        cfg,
        lora,
        data,
        shard,
        val_batches,
        seq_len,
        specs,
        engine,
        opt,
        warnings,
    };
    if let Some(state) = resumed.map(|r| r.state) {
        s.opt.step = state.step;
        (s.step, s.sampler, s.dropout) = (state.step, state.sampler, Rng::from_state(state.dropout_rng));
        (s.best, s.since_best) = (state.best_val_loss, state.evals_since_best);
    }
    Ok(s)
}

/// The engine with its trainable values (a checkpoint's, an adapter's fresh ones, the `--init`
/// weights or the seed's), the frozen base for LoRA, and AdamW (with a checkpoint's moments).
/// Only the engine keeps the weights: the process holds one copy of them.
fn build(
    cfg: &TrainConfig,
    lora: Option<&LoraConfig>,
    seq_len: usize,
    mut resumed: Option<Resumed>,
) -> Result<(TrainEngine, Vec<ParamSpec>, AdamW, Option<Resumed>)> {
    let t = &cfg.train;
    let m = &cfg.model;
    let specs = match lora {
        Some(l) => l.param_specs(m),
        None => chatforge_model::param_specs(m),
    };
    // The frozen base (LoRA), or the --init weights a full fine-tune starts from.
    let mut frozen: Weights = match &t.init {
        Some(init) if lora.is_some() || resumed.is_none() => load_init(init)?.1,
        _ => Weights::new(),
    };
    let mut weights = match (&mut resumed, lora) {
        (Some(r), _) => std::mem::take(&mut r.weights),
        (None, Some(l)) => l.init(m, &mut Rng::new(t.seed ^ 0x10_4A))?,
        (None, None) if t.init.is_some() => std::mem::take(&mut frozen),
        (None, None) => init_weights(m, &mut Rng::new(t.seed))?,
    };
    let trainable = take_flat(&specs, &mut weights)?;
    drop(weights);
    let engine = match lora {
        Some(l) => {
            let base = take_flat(&chatforge_model::param_specs(m), &mut frozen)
                .map_err(|e| Error::Config(format!("the base: {e}")))?;
            TrainEngine::with_lora(m, t.batch_size, seq_len, base, l, trainable)?
        }
        None => TrainEngine::new(m, t.batch_size, seq_len, trainable)?,
    };
    let engine = if t.grad_checkpoint {
        engine.checkpointed()
    } else {
        engine
    };
    let engine = engine.with_precision(t.precision.resolve().map_err(Error::Config)?);
    let mut opt = AdamW::for_lengths(t.adamw(), specs.iter().map(|s| s.shape.iter().product()));
    if let Some(r) = &mut resumed {
        (opt.m, opt.v) = std::mem::take(&mut r.moments);
    }
    Ok((engine, specs, opt, resumed))
}

/// The validation shard and its batches (at most `train.eval_batches`), in order.
fn val_batches(cfg: &TrainConfig, shard: &Shard, seq_len: usize) -> Result<(Option<Shard>, Vec<Batch>)> {
    let t = &cfg.train;
    let Some(path) = &t.val else {
        return Ok((None, Vec::new()));
    };
    let v = Shard::open(path)?;
    if v.vocab_size() != shard.vocab_size() {
        return Err(Error::Config(
            "training and validation shards come from different tokenizers".into(),
        ));
    }
    if v.is_pairs() != shard.is_pairs() {
        return Err(Error::Config(
            "one of the training and validation shards holds preference pairs and the other does not".into(),
        ));
    }
    let mut s = BatchSampler::new(&v, sampler_config(cfg, seq_len, false))?;
    let mut b = s.epoch_batches();
    if let Some(n) = t.eval_batches {
        b.truncate(n);
    }
    Ok((Some(v), b))
}

fn sampler_config(cfg: &TrainConfig, seq_len: usize, shuffle: bool) -> SamplerConfig {
    SamplerConfig {
        batch_size: cfg.train.batch_size,
        seq_len,
        seed: cfg.train.seed,
        shuffle,
    }
}

/// `logs.jsonl` for appending, after dropping the steps a checkpoint at `step` does not hold.
fn open_log(run: &RunDir, step: u64) -> Result<Log> {
    let path = run.logs();
    // Steps logged after the checkpoint (by a run that died), or by a run that left no usable
    // checkpoint at all, happen again: drop them, so the log holds each step once.
    trim_log(&path, step)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| Error::Io { path, source: e })?;
    Ok(Log(file))
}

/// Trains `cfg` into the run directory `run`. With `resume`, continues from the newest checkpoint
/// that verifies. `stop` ends the run after the current step (with a checkpoint).
pub fn train(
    cfg: &TrainConfig,
    run: &Path,
    resume: bool,
    on_event: &mut dyn FnMut(&Event),
    stop: &AtomicBool,
) -> Result<TrainSummary> {
    train_in(cfg, run, resume, on_event, stop, &Solo)
}

/// [`train`] as one process of `group` (data parallelism). Every step takes `micro` micro-batches
/// in each process: the sampler's stream is dealt out in turn (micro-batch `j` of a step to
/// process `j mod size`), so the processes read disjoint parts of it, and its state after a step is
/// the same in each and the same as one process that accumulated all of them. Process 0 writes
/// the log, the checkpoints and the manifest and gets the events; a checkpoint resumes in a group
/// of any size.
pub fn train_in(
    cfg: &TrainConfig,
    run: &Path,
    resume: bool,
    on_event: &mut dyn FnMut(&Event),
    stop: &AtomicBool,
    group: &dyn Group,
) -> Result<TrainSummary> {
    let started = Instant::now();
    let mut s = set_up(cfg, run, resume, group)?;
    let dir = RunDir::new(run);
    // Process 0 writes the run directory; the others only train.
    let writer = group.rank() == 0;
    let mut log = writer.then(|| open_log(&dir, s.step)).transpose()?;
    // TensorBoard's copy of the numbers: a failure there is a warning, never the run's end.
    let mut tb = match writer.then(|| crate::tensorboard::EventFile::create(&dir.tensorboard(), s.step)) {
        Some(Ok(f)) => Some(f),
        Some(Err(e)) => {
            s.warnings.push(format!("no TensorBoard events: {e}"));
            None
        }
        None => None,
    };
    let mut emit = |e: Event| {
        let Some(log) = log.as_mut() else {
            return;
        };
        log.write(&e);
        if let Some(f) = tb.as_mut()
            && let Err(err) = f.write(&e)
        {
            let message = format!("TensorBoard events stopped: {}: {err}", f.path().display());
            tb = None;
            log.write(&Event::Warning {
                step: e.step(),
                message,
            });
        }
        on_event(&e);
    };
    for w in std::mem::take(&mut s.warnings) {
        emit(Event::Warning {
            step: s.step,
            message: w,
        });
    }
    let (cfg, t) = (s.cfg.clone(), s.cfg.train.clone());
    let mut sampler = BatchSampler::resume(&s.shard, sampler_config(&cfg, s.seq_len, true), s.sampler)?;
    // Micro-batches per step in each process: train.tokens_per_step is the whole group's.
    let micro = t
        .tokens_per_step
        .map_or(1, |n| n.div_ceil(t.batch_size * s.seq_len * group.size()).max(1));
    let steps = t.max_steps.unwrap_or_else(|| {
        let rows = t.epochs.unwrap_or(1.0) * sampler.rows_in_epoch() as f64;
        (rows / (t.batch_size * micro * group.size()) as f64)
            .ceil()
            .max(1.0) as u64
    });
    if writer {
        write_manifest(&dir, &cfg, &s.data, "running", group.size())?;
        write_json(&dir.config(), &cfg.model.to_hf())?;
    }
    let trainable = s
        .specs
        .iter()
        .map(|p| p.shape.iter().product::<usize>())
        .sum::<usize>();
    emit(Event::Start {
        steps,
        start_step: s.step,
        params: trainable,
        total_params: trainable + if s.lora.is_some() { cfg.model.n_params() } else { 0 },
        rows_per_epoch: sampler.rows_in_epoch(),
        micro_batches: micro,
        resumed_from: s.resumed_from.clone(),
    });
    let mut summary = TrainSummary {
        steps: s.step,
        last_loss: None,
        best_val_loss: s.best,
        tokens: 0,
        seconds: 0.0,
        stopped: None,
        losses: Vec::new(),
    };
    let mut step = s.step;
    while step < steps {
        let t0 = Instant::now();
        let lr = lr_at(step, t.lr, t.min_lr, t.warmup_steps, steps);
        let objective = match s.pairs.as_mut() {
            Some(p) => StepLoss::Pairs(p),
            None => StepLoss::Tokens(t.mode),
        };
        // This process's share of the stream: every size()-th micro-batch, from its rank on.
        let (rank, size) = (group.rank(), group.size());
        let next = || {
            let mut mine = sampler.next_batch();
            for j in 1..size {
                let b = sampler.next_batch();
                if j == rank {
                    mine = b;
                }
            }
            mine
        };
        let out = optimizer_step(
            &mut s.engine,
            &s.specs,
            &mut s.opt,
            next,
            micro,
            objective,
            lr,
            t.grad_clip,
            &mut s.dropout,
            group,
        )?;
        step += 1;
        let (loss, grad_norm) = (out.loss, out.grad_norm);
        // NaN loss with no position carrying loss is an empty step, not divergence.
        if (out.used > 0 && !loss.is_finite()) || !grad_norm.is_finite() {
            let what = format!("loss {loss}, gradient norm {grad_norm}");
            return Err(Error::Diverged { step, what });
        }
        summary.tokens += out.positions as u64;
        summary.losses.push(loss);
        summary.last_loss = Some(loss);
        emit(Event::Step {
            step,
            loss,
            lr,
            grad_norm,
            tokens_per_s: out.positions as f64 / t0.elapsed().as_secs_f64(),
            epoch: sampler.epoch_progress(),
            elapsed_s: started.elapsed().as_secs_f64(),
            sync_s: out.sync_s,
            metrics: out.metrics,
        });
        // A stop asked of any process stops them all, after the same step.
        let mut asked = [f64::from(u8::from(stop.load(Ordering::Relaxed)))];
        group.sum_f64(&mut asked);
        let mut stop_reason = (asked[0] > 0.0).then(|| "stop requested".to_string());
        if !s.val_batches.is_empty() && (step % t.eval_every == 0 || step == steps) {
            let (val, metrics) = match s.pairs.as_mut() {
                Some(p) => match p.validate(&mut s.engine, &s.val_batches)? {
                    Some((loss, m)) => (Some(loss), Some(m)),
                    None => (None, None),
                },
                None => (val_loss(&mut s.engine, &s.val_batches, t.mode, group)?, None),
            };
            if let Some(v) = val.filter(|v| !v.is_finite()) {
                let what = format!("validation loss {v}");
                return Err(Error::Diverged { step, what });
            }
            // No validation position carries loss: nothing to compare, never best.
            let val = val.unwrap_or(f64::NAN);
            let improved = !val.is_nan() && s.best.is_none_or(|b| val < b);
            if improved {
                (s.best, s.since_best) = (Some(val), 0);
                if writer {
                    save(&s, &dir.best(), step, &sampler, None)?;
                }
            } else {
                s.since_best += 1;
            }
            let best_val_loss = s.best.unwrap_or(val);
            emit(Event::Eval {
                step,
                val_loss: val,
                best_val_loss,
                improved,
                metrics,
            });
            if t.patience.is_some_and(|p| s.since_best >= p) {
                stop_reason = Some(format!(
                    "early stopping: no better validation loss in {} evaluations",
                    s.since_best
                ));
            }
        }
        if writer && (step % t.checkpoint_every == 0 || step == steps || stop_reason.is_some()) {
            let ckpt = dir.checkpoint(step);
            save(&s, &ckpt, step, &sampler, Some(&s.opt))?;
            checkpoint::prune(run, t.keep_last)?;
            emit(Event::Checkpoint {
                step,
                path: relative(run, &ckpt),
            });
        }
        if let Some(reason) = stop_reason {
            emit(Event::Stopped {
                step,
                reason: reason.clone(),
            });
            summary.stopped = Some(reason);
            break;
        }
    }
    summary.steps = step;
    summary.best_val_loss = s.best;
    if writer {
        finish(&s, &dir, step, &mut summary, started, group.size(), &mut emit)?;
    }
    // The others end when the run directory is complete.
    group.barrier();
    Ok(summary)
}

/// A checkpoint of the engine's trainable values at `step` into `dir` (with the optimizer's
/// moments when given: `best/` holds none).
fn save(s: &Setup, dir: &Path, step: u64, sampler: &BatchSampler, opt: Option<&AdamW>) -> Result<()> {
    let state = CheckpointState {
        step,
        sampler: sampler.state(),
        dropout_rng: s.dropout.state(),
        best_val_loss: s.best,
        evals_since_best: s.since_best,
        config: s.cfg.clone(),
        files: Default::default(),
    };
    let values = checkpoint::Values {
        specs: &s.specs,
        flat: &s.engine.params,
        offsets: &s.engine.offsets,
    };
    checkpoint::save(dir, &s.cfg.model, s.lora.as_ref(), values, opt, &state)
}

/// After the last step: the adapter under `adapters/<name>/` (LoRA), the loss plot, the summary
/// and the manifest's final status.
fn finish(
    s: &Setup,
    run: &RunDir,
    step: u64,
    summary: &mut TrainSummary,
    started: Instant,
    processes: usize,
    emit: &mut dyn FnMut(Event),
) -> Result<()> {
    if let (Some(name), Some(_)) = (&s.cfg.train.adapter_name, &s.lora) {
        // The best adapter (or the last, without validation) under adapters/<name>/, PEFT layout.
        let src = if chatforge_model::lora::is_adapter_dir(&run.best()) {
            run.best()
        } else {
            run.checkpoint(step)
        };
        let dst = run.adapter(name);
        chatforge_data::atomic_dir(&dst, |tmp| -> Result<()> {
            for f in ["adapter_config.json", "adapter_model.safetensors"] {
                std::fs::copy(src.join(f), tmp.join(f)).map_err(|e| Error::Io {
                    path: src.join(f),
                    source: e,
                })?;
            }
            Ok(())
        })?;
    }
    if let Err(e) = crate::plot::loss_plot(&run.logs(), &run.loss_plot()) {
        emit(Event::Warning {
            step,
            message: format!("no loss plot: {e}"),
        });
    }
    summary.seconds = started.elapsed().as_secs_f64();
    write_json(&run.summary(), summary)?;
    let status = if summary.stopped.is_some() {
        "stopped"
    } else {
        "done"
    };
    write_manifest(run, &s.cfg, &s.data, status, processes)
}

/// The run's manifest; `processes` is the size of the group that trained it (MPI's world size).
fn write_manifest(
    run: &RunDir,
    cfg: &TrainConfig,
    data: &Path,
    status: &str,
    processes: usize,
) -> Result<()> {
    let input = |p: &Path| -> Result<serde_json::Value> {
        let sidecar = chatforge_tokenizer::TokenizeReport::sidecar(p);
        let meta = std::fs::read_to_string(&sidecar)
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok());
        Ok(serde_json::json!({"path": p.display().to_string(), "sha256": sha256_file(p)?, "tokenized": meta}))
    };
    let manifest = serde_json::json!({
        "kind": "train",
        "status": status,
        "config": cfg,
        "inputs": {"train": input(data)?, "val": cfg.train.val.as_deref().map(input).transpose()?},
        "seed": cfg.train.seed,
        "versions": {"chatforge": env!("CARGO_PKG_VERSION")},
        "threads": rayon::current_num_threads(),
        "processes": processes,
        "dtype": "F32",
        "precision": cfg.train.precision.resolve().ok().map(|p| serde_json::json!({"products": p.name(), "kernel": p.kernel()})),
    });
    write_json(&run.manifest(), &manifest)
}

/// The loss of a model that ignores context: cross-entropy, on the targets of `val` that carry
/// loss in `mode`, of the token frequencies of `train` (add-one smoothed). A trained model should
/// be well below it.
pub fn unigram_baseline(train: &Shard, val: &Shard, mode: Mode) -> f64 {
    let targets = |s: &Shard| -> Vec<u32> {
        let mut out = Vec::new();
        let mut ids = Vec::new();
        for d in 0..s.n_docs() {
            let r = s.doc(d);
            ids.clear();
            s.ids_into(r.clone(), &mut ids);
            let mask = s.mask(r);
            for i in 1..ids.len() {
                if mode == Mode::Pretrain || mask[i] == 1 {
                    out.push(ids[i]);
                }
            }
        }
        out
    };
    let v = train.vocab_size() as usize;
    let mut counts = vec![1f64; v];
    let train_targets = targets(train);
    for &t in &train_targets {
        counts[t as usize] += 1.0;
    }
    let total = train_targets.len() as f64 + v as f64;
    let val_targets = targets(val);
    let nll: f64 = val_targets
        .iter()
        .map(|&t| -(counts[t as usize] / total).ln())
        .sum();
    nll / val_targets.len().max(1) as f64
}
