//! `train`: config first, named helpers, then one loop (nanoGPT's shape).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use chatforge_data::{Batch, BatchSampler, Rng, SamplerConfig, SamplerState, Shard, sha256_file};
use chatforge_model::engine::{StepBatch, TrainEngine};
use chatforge_model::{Dropout, Gpt, GptConfig, LoraConfig, ParamSpec, Params, Weights, init_weights};
use serde::Serialize;

use crate::autograd::{estimate_loss, optimizer_step};
use crate::checkpoint::{self, CheckpointState, write_json};
use crate::events::{Event, Log, trim_log};
use crate::optim::{AdamW, clip_grad_norm_flat, lr_at};
use crate::start::{check_memory, init_config, load_init, relative, resume_point};
use crate::{Error, Mode, Result, TrainConfig};

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
}

/// [`optimizer_step`] through the training engine (plain buffers, hand-written backward): the same
/// micro-batches, loss scaling, clipping, dropout masks (from `dropout`'s stream) and AdamW, on
/// the engine's flat parameters.
#[allow(clippy::too_many_arguments)] // the step's whole state, passed explicitly
pub fn engine_step(
    engine: &mut TrainEngine,
    specs: &[ParamSpec],
    opt: &mut AdamW,
    mut next: impl FnMut() -> Batch,
    micro: usize,
    mode: Mode,
    lr: f64,
    clip: f64,
    dropout: &mut Rng,
) -> Result<StepOutcome> {
    engine.zero_grad();
    let (mut loss_sum, mut used, mut positions) = (0f64, 0usize, 0usize);
    for _ in 0..micro {
        let batch = next();
        positions += batch.batch_size * batch.seq_len;
        let loss = engine.forward_backward(&step_batch(&batch, mode), 1.0 / micro as f32, dropout)?;
        if !loss.is_nan() {
            loss_sum += loss;
            used += 1;
        }
    }
    let grad_norm = clip_grad_norm_flat(&mut engine.grads, clip);
    if used == 0 {
        // As the autograd path: no parameter had a gradient, so none moves.
        opt.step += 1;
    } else {
        opt.update_flat(specs, &mut engine.params, &engine.grads, &engine.offsets, lr);
    }
    Ok(StepOutcome {
        loss: if used == 0 {
            f64::NAN
        } else {
            loss_sum / used as f64
        },
        used,
        grad_norm,
        positions,
    })
}

/// Whether `train` may use the engine: `train.engine` on, and the variables in the engine's order.
fn engine_fits(cfg: &TrainConfig, lora: Option<&LoraConfig>, params: &Params) -> bool {
    let specs = match lora {
        Some(l) => l.param_specs(&cfg.model),
        None => chatforge_model::param_specs(&cfg.model),
    };
    cfg.train.engine
        && specs.len() == params.vars.len()
        && specs.iter().zip(&params.vars).all(|(a, (b, _))| a.name == b.name)
}

/// The engine for this run, when it fits: the variables are its trainable parameters, and with
/// LoRA `frozen` (the base, by name) is its frozen model.
fn build_engine(
    cfg: &TrainConfig,
    lora: Option<&LoraConfig>,
    params: &Params,
    frozen: &Weights,
    seq_len: usize,
) -> Result<Option<TrainEngine>> {
    if !engine_fits(cfg, lora, params) {
        return Ok(None);
    }
    let trainable = params.flat()?;
    let (b, m) = (cfg.train.batch_size, &cfg.model);
    let engine = match lora {
        Some(l) => {
            let names = chatforge_model::param_specs(m);
            let base = names
                .iter()
                .map(|s| {
                    frozen
                        .get(&s.name)
                        .ok_or_else(|| Error::Config(format!("the base has no {}", s.name)))
                })
                .collect::<Result<Vec<_>>>()?;
            TrainEngine::with_lora(
                m,
                b,
                seq_len,
                chatforge_model::flatten(base.into_iter())?,
                l,
                trainable,
            )?
        }
        None => TrainEngine::new(m, b, seq_len, trainable)?,
    };
    Ok(Some(if cfg.train.grad_checkpoint {
        engine.checkpointed()
    } else {
        engine
    }))
}

/// [`estimate_loss`] on the engine.
fn engine_val_loss(engine: &mut TrainEngine, batches: &[Batch], mode: Mode) -> Result<Option<f64>> {
    let (mut total, mut count) = (0f64, 0usize);
    for batch in batches {
        let (sum, n) = engine.eval_loss(&step_batch(batch, mode))?;
        total += sum;
        count += n;
    }
    Ok((count > 0).then(|| total / count as f64))
}

/// A batch as the engine takes it: the weights are the positions that carry loss in `mode`.
fn step_batch(batch: &Batch, mode: Mode) -> StepBatch<'_> {
    StepBatch {
        b: batch.batch_size,
        t: batch.seq_len,
        inputs: &batch.inputs,
        targets: &batch.targets,
        positions: &batch.positions,
        segments: &batch.segments,
        weights: if mode.masked() {
            &batch.loss_mask
        } else {
            &batch.target_mask
        },
    }
}

/// What takes a run's steps, validates it and holds its trainable values: the engine (its flat
/// buffer), or (when it does not fit) candle's autograd through a model with the trainable
/// variables and a detached copy for validation.
#[allow(clippy::large_enum_variant)] // one per run, on the stack of `train`
enum Stepper {
    Engine(TrainEngine),
    Autograd {
        model: Gpt,
        eval_model: Gpt,
        params: Params,
    },
}

impl Stepper {
    /// The current trainable values, for checkpoints.
    fn values<'a>(&'a self, specs: &'a [ParamSpec]) -> checkpoint::Values<'a> {
        match self {
            Stepper::Engine(e) => checkpoint::Values::Flat {
                specs,
                flat: &e.params,
                offsets: &e.offsets,
            },
            Stepper::Autograd { params, .. } => checkpoint::Values::Vars(&params.vars),
        }
    }
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
    let started = Instant::now();
    let dev = Device::Cpu;
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
    let t = cfg.train.clone();
    std::fs::create_dir_all(run).map_err(|e| Error::Io {
        path: run.to_path_buf(),
        source: e,
    })?;
    // What a crash left half-written (a checkpoint's or best/'s temporary, a log being trimmed).
    let mut warnings: Vec<String> = Vec::new();
    for dir in [run.to_path_buf(), run.join("checkpoints")] {
        for name in chatforge_data::clear_leftovers(&dir)? {
            warnings.push(format!("cleared {name}, left by a crash"));
        }
    }
    // LoRA: the base always comes from --init and stays frozen; the adapter is what trains.
    // QLoRA is LoRA on a quantised base (q4 unless the config says q8); plain LoRA never quantises.
    cfg.lora.quant = match t.mode {
        Mode::Qlora => Some(cfg.lora.quant.unwrap_or(chatforge_model::quant::QuantKind::Q4)),
        _ => None,
    };
    let lora = t.mode.adapter().then(|| cfg.lora.clone());
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
    // Where the weights come from: a checkpoint of this run (the newest that loads), an --init
    // model, or the seed.
    let resumed = if resume {
        resume_point(run, &cfg, lora.as_ref(), &mut warnings, &dev)?
    } else {
        None
    };
    let resumed_from = resumed.as_ref().map(|r| relative(run, &r.dir));
    // Steps logged after the checkpoint (by a run that died), or by a run that left no usable
    // checkpoint at all, happen again: drop them, so the log holds each step once.
    trim_log(
        &run.join("logs.jsonl"),
        resumed.as_ref().map_or(0, |r| r.state.step),
    )?;
    let mut log = Log(std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run.join("logs.jsonl"))
        .map_err(|e| Error::Io {
            path: run.join("logs.jsonl"),
            source: e,
        })?);
    let mut emit = |e: Event, log: &mut Log| {
        log.write(&e);
        on_event(&e);
    };
    for w in warnings {
        emit(
            Event::Warning {
                step: resumed.as_ref().map_or(0, |r| r.state.step),
                message: w,
            },
            &mut log,
        );
    }
    // The frozen base (LoRA), or the --init weights a full fine-tune starts from.
    let mut frozen: Weights = match &t.init {
        Some(init) if lora.is_some() || resumed.is_none() => load_init(init, &dev)?.1,
        _ => Weights::new(),
    };
    let weights = match (&resumed, &lora) {
        (Some(r), _) => r.weights.clone(),
        (None, Some(l)) => l.init(&cfg.model, &mut Rng::new(t.seed ^ 0x10_4A), &dev)?,
        (None, None) if t.init.is_some() => std::mem::take(&mut frozen),
        (None, None) => init_weights(&cfg.model, &mut Rng::new(t.seed), &dev)?,
    };
    let seq_len = t.seq_len.unwrap_or(cfg.model.n_ctx);
    if seq_len > cfg.model.n_ctx {
        return Err(Error::Config(format!(
            "train.seq_len = {seq_len} is above the model's position table (n_ctx = {})",
            cfg.model.n_ctx
        )));
    }

    let data = t
        .data
        .clone()
        .ok_or_else(|| Error::Config("no training data (train.data or --data)".into()))?;
    let shard = Shard::open(&data)?;
    if shard.vocab_size() as usize > cfg.model.vocab_size {
        return Err(Error::Config(format!(
            "the tokenizer of {} has {} tokens but model.vocab_size is {}",
            data.display(),
            shard.vocab_size(),
            cfg.model.vocab_size
        )));
    }
    let val_shard = t.val.as_ref().map(|p| Shard::open(p)).transpose()?;
    if let Some(v) = &val_shard
        && v.vocab_size() != shard.vocab_size()
    {
        return Err(Error::Config(
            "training and validation shards come from different tokenizers".into(),
        ));
    }

    let params = match &lora {
        Some(l) => Params::from_adapter(&cfg.model, l, weights)?,
        None => Params::from_weights(&cfg.model, weights)?,
    };
    let total_params = cfg.model.n_params();
    let specs: Vec<ParamSpec> = params.vars.iter().map(|(s, _)| s.clone()).collect();
    let trainable = params.count();
    // The engine trains several times faster than autograd, and validates too: then no candle
    // model is built and the variables are dropped (checkpoints are written from the engine's
    // buffer), so the process holds one copy of the weights.
    let mut stepper = match build_engine(&cfg, lora.as_ref(), &params, &frozen, seq_len)? {
        Some(e) => {
            drop(params);
            Stepper::Engine(e)
        }
        None => {
            // The trainable vars, and for LoRA the frozen base beside them (plain tensors: no
            // gradient).
            let mut ts: HashMap<String, Tensor> = frozen.clone();
            ts.extend(
                params
                    .vars
                    .iter()
                    .map(|(s, v)| (s.name.clone(), v.as_tensor().clone())),
            );
            let model = Gpt::with_lora(
                &cfg.model,
                candle_nn::VarBuilder::from_tensors(ts, DType::F32, &dev),
                lora.as_ref(),
            )?;
            // The same weights, detached: validation through it records no graph for backward.
            let mut ts: HashMap<String, Tensor> = frozen.clone();
            ts.extend(params.tensors());
            let eval_model = Gpt::with_lora(
                &cfg.model,
                candle_nn::VarBuilder::from_tensors(ts, DType::F32, &dev),
                lora.as_ref(),
            )?;
            Stepper::Autograd {
                model,
                eval_model,
                params,
            }
        }
    };
    drop(frozen);
    let mut opt = AdamW::for_lengths(t.adamw(), specs.iter().map(|s| s.shape.iter().product()));
    let scfg = SamplerConfig {
        batch_size: t.batch_size,
        seq_len,
        seed: t.seed,
        shuffle: true,
    };
    let (mut step, mut sampler_state, mut dropout_rng) = (0, SamplerState::default(), t.seed ^ 0xD0D0);
    let (mut best, mut since_best) = (None::<f64>, 0u64);
    if let Some(r) = resumed {
        let state = r.state;
        (opt.m, opt.v) = r.moments;
        opt.step = state.step;
        (step, sampler_state, dropout_rng) = (state.step, state.sampler, state.dropout_rng);
        (best, since_best) = (state.best_val_loss, state.evals_since_best);
    }
    let mut sampler = BatchSampler::resume(&shard, scfg, sampler_state)?;
    let mut dropout = Dropout {
        p: cfg.model.dropout,
        rng: Rng::from_state(dropout_rng),
    };
    let val_batches: Vec<Batch> = match &val_shard {
        Some(v) => {
            let mut s = BatchSampler::new(
                v,
                SamplerConfig {
                    shuffle: false,
                    ..scfg
                },
            )?;
            let mut b = s.epoch_batches();
            if let Some(n) = t.eval_batches {
                b.truncate(n);
            }
            b
        }
        None => Vec::new(),
    };

    let micro = t
        .tokens_per_step
        .map_or(1, |n| n.div_ceil(t.batch_size * seq_len).max(1));
    let steps = t.max_steps.unwrap_or_else(|| {
        let rows = t.epochs.unwrap_or(1.0) * sampler.rows_in_epoch() as f64;
        (rows / (t.batch_size * micro) as f64).ceil().max(1.0) as u64
    });
    write_manifest(run, &cfg, &data, t.val.as_deref(), "running")?;
    write_json(&run.join("config.json"), &cfg.model.to_hf())?;
    emit(
        Event::Start {
            steps,
            start_step: step,
            params: trainable,
            total_params: if lora.is_some() {
                total_params + trainable
            } else {
                trainable
            },
            rows_per_epoch: sampler.rows_in_epoch(),
            micro_batches: micro,
            resumed_from: resumed_from.clone(),
        },
        &mut log,
    );

    let save = |values: checkpoint::Values<'_>,
                step: u64,
                sampler: &BatchSampler,
                dropout: &Dropout,
                best: Option<f64>,
                since: u64,
                opt: &AdamW|
     -> Result<PathBuf> {
        let state = CheckpointState {
            step,
            sampler: sampler.state(),
            dropout_rng: dropout.rng.state(),
            best_val_loss: best,
            evals_since_best: since,
            config: cfg.clone(),
            files: Default::default(),
        };
        let dir = checkpoint::step_dir(run, step);
        checkpoint::save(&dir, &cfg.model, lora.as_ref(), values, Some(opt), &state)?;
        checkpoint::prune(run, t.keep_last)?;
        Ok(dir)
    };

    let mut summary = TrainSummary {
        steps: step,
        last_loss: None,
        best_val_loss: best,
        tokens: 0,
        seconds: 0.0,
        stopped: None,
        losses: Vec::new(),
    };
    while step < steps {
        let t0 = Instant::now();
        let lr = lr_at(step, t.lr, t.min_lr, t.warmup_steps, steps);
        let out = match &mut stepper {
            Stepper::Engine(e) => engine_step(
                e,
                &specs,
                &mut opt,
                || sampler.next_batch(),
                micro,
                t.mode,
                lr,
                t.grad_clip,
                &mut dropout.rng,
            )?,
            Stepper::Autograd { model, params, .. } => optimizer_step(
                model,
                params,
                &mut opt,
                || sampler.next_batch(),
                micro,
                t.mode,
                lr,
                t.grad_clip,
                t.grad_checkpoint,
                &mut dropout,
                &dev,
            )?,
        };
        summary.tokens += out.positions as u64;
        let (loss, grad_norm) = (out.loss, out.grad_norm);
        step += 1;
        // NaN loss with no position carrying loss is an empty step, not divergence.
        if (out.used > 0 && !loss.is_finite()) || !grad_norm.is_finite() {
            return Err(Error::Diverged {
                step,
                what: format!("loss {loss}, gradient norm {grad_norm}"),
            });
        }
        summary.losses.push(loss);
        summary.last_loss = Some(loss);
        let secs = t0.elapsed().as_secs_f64();
        emit(
            Event::Step {
                step,
                loss,
                lr,
                grad_norm,
                tokens_per_s: (micro * t.batch_size * seq_len) as f64 / secs,
                epoch: sampler.epoch_progress(),
                elapsed_s: started.elapsed().as_secs_f64(),
            },
            &mut log,
        );

        let mut stop_reason = stop.load(Ordering::Relaxed).then(|| "stop requested".to_string());
        let evaluate = !val_batches.is_empty() && (step % t.eval_every == 0 || step == steps);
        if evaluate {
            let val = match &mut stepper {
                Stepper::Engine(e) => engine_val_loss(e, &val_batches, t.mode)?,
                Stepper::Autograd { eval_model, .. } => {
                    estimate_loss(eval_model, &val_batches, t.mode, &dev)?
                }
            };
            if let Some(v) = val.filter(|v| !v.is_finite()) {
                return Err(Error::Diverged {
                    step,
                    what: format!("validation loss {v}"),
                });
            }
            // No validation position carries loss: nothing to compare, never best.
            let val = val.unwrap_or(f64::NAN);
            let improved = !val.is_nan() && best.is_none_or(|b| val < b);
            if improved {
                best = Some(val);
                since_best = 0;
                let state = CheckpointState {
                    step,
                    sampler: sampler.state(),
                    dropout_rng: dropout.rng.state(),
                    best_val_loss: best,
                    evals_since_best: 0,
                    config: cfg.clone(),
                    files: Default::default(),
                };
                checkpoint::save(
                    &run.join("best"),
                    &cfg.model,
                    lora.as_ref(),
                    stepper.values(&specs),
                    None,
                    &state,
                )?;
            } else {
                since_best += 1;
            }
            emit(
                Event::Eval {
                    step,
                    val_loss: val,
                    best_val_loss: best.unwrap_or(val),
                    improved,
                },
                &mut log,
            );
            if t.patience.is_some_and(|p| since_best >= p) {
                stop_reason = Some(format!(
                    "early stopping: no better validation loss in {since_best} evaluations"
                ));
            }
        }
        if step % t.checkpoint_every == 0 || step == steps || stop_reason.is_some() {
            let dir = save(
                stepper.values(&specs),
                step,
                &sampler,
                &dropout,
                best,
                since_best,
                &opt,
            )?;
            emit(
                Event::Checkpoint {
                    step,
                    path: relative(run, &dir),
                },
                &mut log,
            );
        }
        if let Some(reason) = stop_reason {
            emit(
                Event::Stopped {
                    step,
                    reason: reason.clone(),
                },
                &mut log,
            );
            summary.stopped = Some(reason);
            break;
        }
    }
    summary.steps = step;
    summary.best_val_loss = best;
    if let (Some(name), Some(_)) = (&t.adapter_name, &lora) {
        // The best adapter (or the last, without validation) under adapters/<name>/, PEFT layout.
        let src = if chatforge_model::lora::is_adapter_dir(&run.join("best")) {
            run.join("best")
        } else {
            checkpoint::step_dir(run, step)
        };
        let dst = run.join("adapters").join(name);
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
    if let Err(e) = crate::plot::loss_plot(&run.join("logs.jsonl"), &run.join("plots/loss.png")) {
        emit(
            Event::Warning {
                step,
                message: format!("no loss plot: {e}"),
            },
            &mut log,
        );
    }
    summary.seconds = started.elapsed().as_secs_f64();
    write_json(&run.join("summary.json"), &summary)?;
    write_manifest(
        run,
        &cfg,
        &data,
        t.val.as_deref(),
        if summary.stopped.is_some() {
            "stopped"
        } else {
            "done"
        },
    )?;
    Ok(summary)
}

fn write_manifest(
    run: &Path,
    cfg: &TrainConfig,
    data: &Path,
    val: Option<&Path>,
    status: &str,
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
        "inputs": {"train": input(data)?, "val": val.map(input).transpose()?},
        "seed": cfg.train.seed,
        "versions": {"chatforge": env!("CARGO_PKG_VERSION"), "candle": "0.11.1"},
        "threads": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "dtype": format!("{:?}", DType::F32),
    });
    write_json(&run.join("manifest.json"), &manifest)
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
