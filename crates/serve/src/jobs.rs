//! What jobs do: the request specs (validated, paths resolved inside the data root) and their
//! execution by a worker, reporting progress and stopping when asked.
//!
//! Layout under the data root: `runs/<run_id>/` (the run directory of ARCHITECTURE.md),
//! `tokenizers/<id>/` (tokenizer.json, manifest.json, stats.json), `queue.sqlite`.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;

use chatforge_model::{GptConfig, LoraConfig};
use chatforge_train::{Event, Mode, TrainConfig, TrainSettings};
use serde::{Deserialize, Serialize};

use crate::paths::{Area, inside};
use crate::store::JobKind;
use crate::{Error, Result};

/// `POST /tokenizers/train`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerRequest {
    /// Conversation or text files (or one), relative to the data root; seed 002's `corpus_path`.
    #[serde(alias = "corpus_path", deserialize_with = "one_or_many")]
    pub input: Vec<String>,
    /// Validation conversations [default: the `.val.jsonl` beside the first input, or a 5% hold-out].
    #[serde(default)]
    pub val: Option<String>,
    /// `bpe` (default) or `unigram`.
    #[serde(default)]
    pub kind: Option<String>,
    pub vocab_size: usize,
    #[serde(default)]
    pub min_frequency: Option<u64>,
    #[serde(default)]
    pub seed: Option<u64>,
}

/// A list of strings, or one string as a list of one.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// `POST /runs/train`: the CLI's `chatforge train`, as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainRequest {
    #[serde(default)]
    pub mode: Option<Mode>,
    /// A token shard, or conversations (`.jsonl`, tokenized in the job with `tokenizer`), relative
    /// to the data root; seed 002's `corpus_path`.
    #[serde(alias = "corpus_path")]
    pub data: String,
    #[serde(default)]
    pub val: Option<String>,
    /// A tokenizer id (`tokenizers/<id>`) or a path to a tokenizer.json / folder.
    #[serde(default)]
    pub tokenizer: Option<String>,
    /// A run id, or an HF folder relative to the data root.
    #[serde(default)]
    pub init: Option<String>,
    /// The model (as in `[model]` of a config file) [default: the CLI's].
    #[serde(default)]
    pub model: Option<GptConfig>,
    /// Training settings (as in `[train]`); `data`, `val`, `init` and `mode` above win.
    #[serde(default)]
    pub train: Option<TrainSettings>,
    #[serde(default)]
    pub lora: Option<LoraConfig>,
    /// Per-job time limit, seconds.
    #[serde(default)]
    pub timeout_s: Option<f64>,
    /// Processes that train the run together over MPI [default: 1]; up to `worker.max_processes`
    /// (docs/scaling.md).
    #[serde(default)]
    pub processes: Option<usize>,
}

/// What a worker runs: the resolved spec, stored with the job.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "job", rename_all = "lowercase")]
pub enum Spec {
    Tokenizer {
        inputs: Vec<PathBuf>,
        val: Option<PathBuf>,
        kind: String,
        vocab_size: usize,
        min_frequency: u64,
        seed: u64,
    },
    Train {
        config: Box<TrainConfig>,
        tokenizer: Option<PathBuf>,
        /// Over MPI when more than one.
        #[serde(default = "one", skip_serializing_if = "is_one")]
        processes: usize,
    },
    /// Evaluates a run's best checkpoint into `runs/<run>/eval/metrics.json`.
    Evaluate { run: String },
    /// Exports a run's best checkpoint into `exports/<target>/`.
    Export {
        run: String,
        format: String,
        quant: Option<String>,
        int8: bool,
    },
}

/// `POST /runs/{id}/export`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportRequest {
    /// hf, onnx or gguf.
    pub format: String,
    /// GGUF: f32, f16, q8_0 or q4_0.
    #[serde(default)]
    pub quant: Option<String>,
    /// ONNX: "int8".
    #[serde(default)]
    pub quantize: Option<String>,
}

impl ExportRequest {
    pub fn resolve(&self, run: &str) -> Result<Spec> {
        let format: chatforge_export::Format = self
            .format
            .parse()
            .map_err(|e: chatforge_export::Error| Error::Invalid(format!("format: {e}")))?;
        if let Some(q) = &self.quant {
            q.parse::<chatforge_export::GgufQuant>()
                .map_err(|e| Error::Invalid(format!("quant: {e}")))?;
            if format != chatforge_export::Format::Gguf {
                return Err(Error::Invalid("quant: applies to format gguf".into()));
            }
        }
        match self.quantize.as_deref() {
            None => {}
            Some("int8") if format == chatforge_export::Format::Onnx => {}
            Some(other) => {
                return Err(Error::Invalid(format!(
                    "quantize: {other:?} (only \"int8\", with format onnx)"
                )));
            }
        }
        Ok(Spec::Export {
            run: run.to_string(),
            format: self.format.clone(),
            quant: self.quant.clone(),
            int8: self.quantize.is_some(),
        })
    }
}

fn one() -> usize {
    1
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

impl Spec {
    /// How many processes run the job.
    pub fn processes(&self) -> usize {
        match self {
            Spec::Train { processes, .. } => *processes,
            _ => 1,
        }
    }

    pub fn kind(&self) -> JobKind {
        match self {
            Spec::Tokenizer { .. } => JobKind::Tokenizer,
            Spec::Train { .. } => JobKind::Train,
            Spec::Evaluate { .. } => JobKind::Evaluate,
            Spec::Export { .. } => JobKind::Export,
        }
    }
}

/// `hf://{id}` for a model id on the Hub, as the job's spec records it.
fn hub_id(spec: &str) -> Option<PathBuf> {
    let id = spec.strip_prefix("hf://").unwrap_or(spec);
    chatforge_hub::RepoRef::parse(chatforge_hub::RepoKind::Model, id)
        .ok()
        .map(|r| PathBuf::from(format!("hf://{}@{}", r.id, r.revision)))
}

fn existing(root: &Path, rel: &str, field: &str) -> Result<PathBuf> {
    let p = inside(root, rel).map_err(|e| match e {
        Error::BadPath(m) => Error::BadPath(format!("{field}: {m}")),
        other => other,
    })?;
    if !p.exists() {
        return Err(Error::Invalid(format!(
            "{field}: {rel:?} does not exist under the data root"
        )));
    }
    Ok(p)
}

impl TokenizerRequest {
    pub fn resolve(&self, root: &Path) -> Result<Spec> {
        if self.input.is_empty() {
            return Err(Error::Invalid(
                "input: give at least one conversation file".into(),
            ));
        }
        if !(64..=1_000_000).contains(&self.vocab_size) {
            return Err(Error::Invalid(format!(
                "vocab_size: {} is outside 64..=1000000",
                self.vocab_size
            )));
        }
        let kind = self.kind.clone().unwrap_or_else(|| "bpe".into());
        kind.parse::<chatforge_tokenizer::TokenizerKind>()
            .map_err(|e| Error::Invalid(format!("kind: {e}")))?;
        Ok(Spec::Tokenizer {
            inputs: self
                .input
                .iter()
                .map(|i| existing(root, i, "input"))
                .collect::<Result<_>>()?,
            val: self
                .val
                .as_deref()
                .map(|v| existing(root, v, "val"))
                .transpose()?,
            kind,
            vocab_size: self.vocab_size,
            min_frequency: self
                .min_frequency
                .unwrap_or(chatforge_tokenizer::TrainOptions::default().min_frequency),
            seed: self
                .seed
                .unwrap_or(chatforge_tokenizer::TrainOptions::default().seed),
        })
    }
}

impl TrainRequest {
    /// The spec of the job, with paths inside `root`; `max_processes` is the worker's bound.
    pub fn resolve(&self, root: &Path, max_processes: usize) -> Result<Spec> {
        // The defaults are the CLI's (one table: `TrainConfig::default()`); the request overrides.
        let mut cfg = TrainConfig {
            model: self.model.clone().unwrap_or_default(),
            train: self.train.clone().unwrap_or_default(),
            lora: self.lora.clone().unwrap_or_default(),
        };
        let t = &mut cfg.train;
        if let Some(m) = self.mode {
            t.mode = m;
        }
        t.data = Some(existing(root, &self.data, "data")?);
        t.val = self
            .val
            .as_deref()
            .map(|v| existing(root, v, "val"))
            .transpose()?;
        t.init = match self.init.as_deref() {
            None => None,
            Some(i) => Some(match Area::Runs.dir(root, i) {
                Ok(run) if run.is_dir() => run,
                _ => match existing(root, i, "init") {
                    Ok(p) => p,
                    // A Hub id (`distilgpt2`, `org/name@rev`, `hf://…`): fetched by the job into
                    // the server's Hugging Face cache.
                    Err(e) => hub_id(i).ok_or(e)?,
                },
            }),
        };
        if t.max_steps.is_none() && t.epochs.is_none() {
            return Err(Error::Invalid(
                "train: give train.max_steps or train.epochs".into(),
            ));
        }
        // vocab_size 0 means "the tokenizer's", known once the data is tokenized.
        let mut check = cfg.clone();
        if check.model.vocab_size == 0 {
            check.model.vocab_size = 1;
        }
        check.validate().map_err(|e| Error::Invalid(e.to_string()))?;
        if let Some(s) = self.timeout_s
            && (s.is_nan() || s <= 0.0)
        {
            return Err(Error::Invalid("timeout_s: must be positive".into()));
        }
        let processes = self.processes.unwrap_or(1);
        if processes == 0 || processes > max_processes {
            return Err(Error::Invalid(match max_processes {
                1 => format!(
                    "processes: {processes}, but this service trains each run in one process \
                     (set worker.mpi_launcher and worker.max_processes; docs/scaling.md)"
                ),
                n => format!("processes: {processes} is outside 1..={n} (worker.max_processes)"),
            }));
        }
        if processes > 1 && cfg.train.mode.pairs() {
            return Err(Error::Invalid(
                "processes: preference tuning runs in one process".into(),
            ));
        }
        let tokenizer = match self.tokenizer.as_deref() {
            None => None,
            Some(tok) => {
                let by_id = match Area::Tokenizers.dir(root, tok) {
                    Ok(d) => Some(d.join(chatforge_run::TOKENIZER_FILE)).filter(|p| p.is_file()),
                    // A valid id whose directory leads out of the data root.
                    Err(Error::BadPath(m)) if crate::paths::check_id(tok).is_ok() => {
                        return Err(Error::BadPath(format!("tokenizer: {m}")));
                    }
                    Err(_) => None,
                };
                Some(match by_id {
                    Some(p) => p,
                    None => {
                        let p = existing(root, tok, "tokenizer")?;
                        chatforge_pipeline::tokenizer_file(&p)
                    }
                })
            }
        };
        // Anything but a token shard (conversations, CSV, ShareGPT, …) is tokenized in the job.
        let needs_tokenizer =
            |p: &Option<PathBuf>| p.as_ref().is_some_and(|p| !chatforge_data::Shard::is_shard(p));
        // A model trained from brings its tokenizer; a Hub model's is known once the job fetched it
        // (and the trainer checks the memory then).
        let hub_init = cfg.train.init.as_ref().is_some_and(|p| p.starts_with("hf:"));
        let init_tokenizer = cfg
            .train
            .init
            .as_deref()
            .filter(|_| !hub_init)
            .and_then(chatforge_run::model_tokenizer);
        let tokenizer_known = tokenizer.is_some() || hub_init || init_tokenizer.is_some();
        if !tokenizer_known && (needs_tokenizer(&cfg.train.data) || needs_tokenizer(&cfg.train.val)) {
            return Err(Error::Invalid(
                "tokenizer: data that is not a token shard (conversations, CSV, …) needs a tokenizer to be tokenized with"
                    .into(),
            ));
        }
        if !hub_init {
            check_memory(&cfg, tokenizer.as_deref().or(init_tokenizer.as_deref()))?;
        }
        Ok(Spec::Train {
            config: Box::new(cfg),
            tokenizer,
            processes,
        })
    }
}

/// Refuses (422, with the estimate) a run this machine cannot hold. A model whose vocabulary is
/// "the tokenizer's" (0) is sized with the tokenizer's, or the token shard's.
fn check_memory(cfg: &TrainConfig, tokenizer: Option<&Path>) -> Result<()> {
    let mut cfg = cfg.clone();
    if cfg.model.vocab_size == 0 {
        let invalid = |e: String| Error::Invalid(e);
        cfg.model.vocab_size = match (tokenizer, &cfg.train.data) {
            (Some(t), _) => chatforge_tokenizer::ChatTokenizer::load(t)
                .map_err(|e| invalid(format!("tokenizer: {e}")))?
                .vocab_size(),
            (None, Some(d)) => chatforge_data::Shard::open(d)
                .map_err(|e| invalid(format!("data: {e}")))?
                .vocab_size() as usize,
            (None, None) => 1,
        };
    }
    chatforge_train::check_memory(&cfg).map_err(|e| Error::Invalid(e.to_string()))
}

/// Progress a worker reports with each heartbeat.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Progress {
    pub step: u64,
    pub total: u64,
    pub loss: Option<f64>,
    pub tokens_per_s: Option<f64>,
    pub eta_s: Option<f64>,
    pub val_loss: Option<f64>,
    /// Preference runs: the last step's metrics (`rewards/accuracies`, …, TRL's names) and the
    /// last validation's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<chatforge_train::preference::PrefMetrics>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_metrics: Option<chatforge_train::preference::PrefMetrics>,
}

impl Progress {
    /// Follows a training run's events.
    fn update(&mut self, e: &Event) {
        match e {
            Event::Start {
                steps, start_step, ..
            } => {
                self.total = *steps;
                self.step = *start_step;
            }
            Event::Step {
                step,
                loss,
                tokens_per_s,
                elapsed_s,
                metrics,
                ..
            } => {
                self.metrics = *metrics;
                self.step = *step;
                self.loss = Some(*loss);
                self.tokens_per_s = Some(*tokens_per_s);
                let done = (*step).max(1) as f64;
                self.eta_s = Some(elapsed_s / done * (self.total.saturating_sub(*step)) as f64);
            }
            Event::Eval {
                val_loss, metrics, ..
            } => {
                self.val_loss = Some(*val_loss);
                self.val_metrics = *metrics;
            }
            _ => {}
        }
    }
}

/// Runs `spec` for job `target` under `root`; `stop` ends it early (a training run saves a
/// checkpoint first). The worker knows why it set `stop`, and so how the job ended.
pub fn execute(
    spec: &Spec,
    target: &str,
    root: &Path,
    stop: &AtomicBool,
    progress: &Mutex<Progress>,
    group: &dyn chatforge_train::Group,
) -> Result<()> {
    if group.size() != spec.processes() {
        return Err(Error::Invalid(format!(
            "the job is for {} processes, and {} were started",
            spec.processes(),
            group.size()
        )));
    }
    match spec {
        Spec::Tokenizer {
            inputs,
            val,
            kind,
            vocab_size,
            min_frequency,
            seed,
        } => {
            let out = root.join("tokenizers").join(target);
            let val = match val {
                Some(v) => chatforge_tokenizer::ValSource::File(v.clone()),
                None => chatforge_tokenizer::ValSource::beside(&inputs[0]),
            };
            let opts = chatforge_tokenizer::TrainOptions {
                kind: kind
                    .parse()
                    .map_err(|e: chatforge_tokenizer::Error| Error::Invalid(e.to_string()))?,
                vocab_size: *vocab_size,
                min_frequency: *min_frequency,
                seed: *seed,
                show_progress: false,
            };
            let started = crate::now();
            let result = chatforge_tokenizer::train_artifact(inputs, &val, &opts, &out);
            // The artifact's logs.jsonl (seed 002's layout), written once the folder is in place.
            let mut lines = vec![serde_json::json!({
                "event": "start", "ts": crate::log::rfc3339(started), "target": target,
                "inputs": inputs, "kind": kind, "vocab_size": vocab_size,
            })];
            lines.push(match &result {
                Ok(r) => serde_json::json!({
                    "event": "done", "ts": crate::log::rfc3339(crate::now()),
                    "vocab_size": r.stats.vocab_size, "seconds": crate::now() - started,
                }),
                Err(e) => serde_json::json!({
                    "event": "failed", "ts": crate::log::rfc3339(crate::now()), "error": e.to_string(),
                }),
            });
            let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
            let log = out.join("logs.jsonl");
            let _ = std::fs::create_dir_all(&out);
            if let Err(e) = std::fs::write(&log, text) {
                crate::log::warn(
                    "writing the tokenizer's logs.jsonl failed",
                    &[("target", &target), ("error", &e)],
                );
            }
            result.map_err(|e| Error::Invalid(format!("tokenizer training failed: {e}")))?;
            Ok(())
        }
        Spec::Train {
            config, tokenizer, ..
        } => {
            let run = root.join("runs").join(target);
            let mut job = chatforge_pipeline::TrainJob {
                config: (**config).clone(),
                tokenizer: tokenizer.clone(),
            };
            if let Some(init) = &job.config.train.init {
                let local = chatforge_hub::model_path(init, &chatforge_hub::Quiet)
                    .map_err(|e| Error::Invalid(format!("init: {e}")))?;
                job.config.train.init = Some(local);
            }
            let mut on_event = |e: &Event| {
                if let Ok(mut p) = progress.lock() {
                    p.update(e);
                }
            };
            // A run that has a checkpoint (an earlier attempt, killed or cancelled) continues
            // from it; evaluation is a job of its own (`POST /runs/{id}/evaluate`).
            let resume = chatforge_pipeline::Resume::IfCheckpoints;
            chatforge_pipeline::train_run_in(&job, &run, resume, false, &mut on_event, stop, group)
                .map_err(|e| Error::Invalid(format!("training failed: {e}")))?;
            Ok(())
        }
        Spec::Evaluate { run } => {
            let dir = root.join("runs").join(run);
            let cfg = chatforge_pipeline::run_config(&dir).unwrap_or_default();
            chatforge_pipeline::evaluate_run(&cfg, &dir)
                .map_err(|e| Error::Invalid(format!("evaluation failed: {e}")))?;
            Ok(())
        }
        Spec::Export {
            run,
            format,
            quant,
            int8,
        } => {
            let src = chatforge_infer::ModelSource::open(
                &root.join("runs").join(run),
                &chatforge_infer::Checkpoint::Best,
                None,
                None,
            )
            .map_err(|e| Error::Invalid(format!("loading the run: {e}")))?;
            let invalid = |e: chatforge_export::Error| Error::Invalid(e.to_string());
            let opts = chatforge_export::ExportOptions {
                format: format.parse().map_err(invalid)?,
                gguf_quant: quant.as_deref().unwrap_or("f32").parse().map_err(invalid)?,
                onnx: chatforge_export::onnx::OnnxOptions {
                    int8: *int8,
                    external_data: false,
                },
                force: true,
            };
            chatforge_export::export(&src, &opts, &root.join("exports").join(target))
                .map_err(|e| Error::Invalid(format!("export failed: {e}")))?;
            Ok(())
        }
    }
}
