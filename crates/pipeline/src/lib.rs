//! One way to make a run, for the CLI (`chatforge train`) and the service (`POST /runs/train`)
//! alike: **prepare** (the tokenizer copied into the run, conversation files tokenized into its
//! `data/`) → **train** → **evaluate** (the best checkpoint on the validation conversations and
//! the test prompts). The defaults are `TrainConfig::default()`'s, one table for both; a request
//! only overrides them.

pub mod presets;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use chatforge_infer::eval::{LossOn, Metrics};
use chatforge_run::RunDir;
use chatforge_train::{Event, Mode, TrainConfig, TrainSummary};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Train(#[from] chatforge_train::Error),
    #[error(transparent)]
    Infer(#[from] chatforge_infer::Error),
    #[error(transparent)]
    Tokenizer(#[from] chatforge_tokenizer::Error),
    #[error(transparent)]
    Data(#[from] chatforge_data::Error),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A training request: the config (defaults overridden) and the tokenizer its conversations are
/// tokenized with (and which the run keeps).
#[derive(Debug, Clone)]
pub struct TrainJob {
    pub config: TrainConfig,
    /// A `tokenizer.json`, or a folder holding one.
    pub tokenizer: Option<PathBuf>,
}

/// Whether a run continues from its newest checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Start over (the CLI without `--resume`).
    No,
    /// Continue; a run without checkpoints starts (the CLI's `--resume`).
    Yes,
    /// Continue when an earlier attempt left checkpoints (a service job that is retried).
    IfCheckpoints,
}

/// What a run produced.
#[derive(Debug)]
pub struct Outcome {
    pub summary: TrainSummary,
    /// The best checkpoint's evaluation, when asked for and it succeeded.
    pub metrics: Option<Metrics>,
    /// Why there is no evaluation although one was asked for: the run itself is done and saved,
    /// so a failed evaluation does not fail it.
    pub eval_error: Option<String>,
}

/// The tokenizer file a `--tokenizer` argument names.
pub fn tokenizer_file(tok: &Path) -> PathBuf {
    if tok.is_dir() {
        tok.join(chatforge_run::TOKENIZER_FILE)
    } else {
        tok.to_path_buf()
    }
}

/// Puts the job's inputs into the run: its tokenizer as `tokenizer.json`, and inputs that are not
/// token shards tokenized into `data/train.bin` and `data/val.bin`. Conversations (`.jsonl`) are
/// tokenized as they are; any other file `data import` reads (CSV, ShareGPT, Alpaca, gzip, …) is
/// imported into `data/{train,val}.jsonl` first. A shard is made again only when its input or the
/// tokenizer changed (their SHA-256 are kept beside it), or kept as it is with `reuse` (a resumed
/// run trains on what it started with). Returns the config that trains on what the run holds.
pub fn prepare(job: &TrainJob, run: &RunDir, reuse: bool) -> Result<TrainConfig> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    std::fs::create_dir_all(run.root()).map_err(io(run.root()))?;
    // A fine-tuned model decodes as the model it came from did.
    if let Some(init) = &job.config.train.init {
        let src = init.join(chatforge_run::GENERATION_FILE);
        let dst = run.root().join(chatforge_run::GENERATION_FILE);
        if src.is_file() && src != dst {
            std::fs::copy(&src, &dst).map_err(io(&src))?;
        }
    }
    // Fine-tuning without --tokenizer: the tokenizer of the model trained from.
    let source = job.tokenizer.clone().or_else(|| {
        let init = job.config.train.init.as_deref()?;
        chatforge_run::model_tokenizer(init)
    });
    if let Some(tok) = &source {
        let src = tokenizer_file(tok);
        if src.is_file() {
            if src != run.tokenizer() {
                std::fs::copy(&src, run.tokenizer()).map_err(io(&src))?;
                // The model's own chat template travels with its tokenizer.
                if let Some(dir) = src.parent() {
                    for name in chatforge_tokenizer::hf_template::TEMPLATE_FILES {
                        let (from, to) = (dir.join(name), run.root().join(name));
                        if from.is_file() {
                            std::fs::copy(&from, &to).map_err(io(&from))?;
                        }
                    }
                }
            }
        } else {
            // GPT-2's two files (vocab.json, merges.txt): the run keeps one tokenizer.json.
            chatforge_tokenizer::ChatTokenizer::load(tok)?
                .inner()
                .save(run.tokenizer(), false)
                .map_err(|e| Error::Invalid(format!("{}: {e}", run.tokenizer().display())))?;
        }
    }
    let mut config = job.config.clone();
    let t = &mut config.train;
    // The tokenizer, hashed and loaded once for both inputs, and only when one needs it.
    let mut tokenizer: Option<Tokenizer> = None;
    for (slot, shard) in [(&mut t.data, run.train_shard()), (&mut t.val, run.val_shard())] {
        let Some(path) = slot.clone().filter(|p| !chatforge_data::Shard::is_shard(p)) else {
            continue;
        };
        if !(reuse && shard.is_file()) {
            let tok = match &mut tokenizer {
                Some(t) => t,
                None => tokenizer.insert(Tokenizer::of(source.is_some().then(|| run.tokenizer()), &path)?),
            };
            tokenize_into(tok, run, &path, &shard)?;
        }
        *slot = Some(shard);
    }
    Ok(config)
}

/// The job's tokenizer file and its SHA-256; the tokenizer itself is loaded when a shard is made.
struct Tokenizer {
    file: PathBuf,
    sha256: String,
    loaded: Option<chatforge_tokenizer::ChatTokenizer>,
}

impl Tokenizer {
    /// The job's tokenizer, which `input` needs to become tokens.
    fn of(tok: Option<PathBuf>, input: &Path) -> Result<Tokenizer> {
        let tok = tok.ok_or_else(|| {
            Error::Invalid(format!(
                "{}: conversations need a tokenizer to be tokenized with (--tokenizer)",
                input.display()
            ))
        })?;
        let file = tokenizer_file(&tok);
        Ok(Tokenizer {
            sha256: chatforge_data::sha256_file(&file)?,
            file,
            loaded: None,
        })
    }

    fn get(&mut self) -> Result<&chatforge_tokenizer::ChatTokenizer> {
        let tok = match self.loaded.take() {
            Some(t) => t,
            None => chatforge_tokenizer::ChatTokenizer::load(&self.file)?,
        };
        Ok(self.loaded.insert(tok))
    }
}

/// What a shard was made from, kept beside it (`train.bin.source.json`): the input's and the
/// tokenizer's SHA-256.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Source {
    input: String,
    tokenizer: String,
}

/// Tokenizes `input` into `shard` with `tok`, unless the shard there was made from the same input
/// and tokenizer.
fn tokenize_into(tok: &mut Tokenizer, run: &RunDir, input: &Path, shard: &Path) -> Result<()> {
    let source = Source {
        input: chatforge_data::sha256_file(input)?,
        tokenizer: tok.sha256.clone(),
    };
    let mut record = shard.as_os_str().to_owned();
    record.push(".source.json");
    let record = PathBuf::from(record);
    let made_from = std::fs::read_to_string(&record)
        .ok()
        .and_then(|t| serde_json::from_str::<Source>(&t).ok());
    if shard.is_file() && made_from.as_ref() == Some(&source) {
        return Ok(());
    }
    std::fs::create_dir_all(run.data()).map_err(|e| Error::Io {
        path: run.data(),
        source: e,
    })?;
    let conversations = if input.extension().is_some_and(|e| e == "jsonl") {
        input.to_path_buf()
    } else {
        // Any format `data import` reads, canonicalised beside the shard.
        let imported = chatforge_data::import(&[input.to_path_buf()], &Default::default())?;
        let jsonl = shard.with_extension("jsonl");
        chatforge_data::write_jsonl(&jsonl, &imported.conversations)?;
        jsonl
    };
    chatforge_tokenizer::tokenize_file(&conversations, tok.get()?, &Default::default(), shard)?;
    let text = serde_json::to_string(&source).map_err(|e| Error::Invalid(e.to_string()))?;
    chatforge_data::atomic_write(&record, |w| std::io::Write::write_all(w, text.as_bytes()))?;
    Ok(())
}

/// The config [`prepare`] made, for the other processes of a multi-process run, which must not
/// write the run directory: imported inputs become the shards process 0 wrote.
pub fn prepared(job: &TrainJob, run: &RunDir) -> Result<TrainConfig> {
    let mut config = job.config.clone();
    let t = &mut config.train;
    for (slot, shard) in [(&mut t.data, run.train_shard()), (&mut t.val, run.val_shard())] {
        if slot
            .as_deref()
            .is_some_and(|p| !chatforge_data::Shard::is_shard(p))
        {
            if !shard.is_file() {
                return Err(Error::Invalid(format!(
                    "{} is missing: process 0 writes it first",
                    shard.display()
                )));
            }
            *slot = Some(shard);
        }
    }
    Ok(config)
}

/// prepare → train → evaluate (when `evaluate`) into the run directory `run`. Events go to
/// `on_event` as they happen; `stop` ends training after the current step, with a checkpoint.
pub fn train_run(
    job: &TrainJob,
    run: &Path,
    resume: Resume,
    evaluate: bool,
    on_event: &mut dyn FnMut(&Event),
    stop: &AtomicBool,
) -> Result<Outcome> {
    train_run_in(job, run, resume, evaluate, on_event, stop, &chatforge_train::Solo)
}

/// [`train_run`] as one process of `group` (MPI, docs/scaling.md): process 0 prepares the run
/// directory while the others wait, then all train; process 0 alone evaluates.
pub fn train_run_in(
    job: &TrainJob,
    run: &Path,
    resume: Resume,
    evaluate: bool,
    on_event: &mut dyn FnMut(&Event),
    stop: &AtomicBool,
    group: &dyn chatforge_train::Group,
) -> Result<Outcome> {
    let dir = RunDir::new(run);
    // Decided by each process before any of them writes.
    let resume = match resume {
        Resume::No => false,
        Resume::Yes => true,
        Resume::IfCheckpoints => dir.checkpoints().is_dir(),
    };
    let config = if group.rank() == 0 {
        let config = prepare(job, &dir, resume);
        // The others wait for the shards whether or not they could be made (they then fail to
        // find them, and the job ends with process 0's error).
        group.barrier();
        config?
    } else {
        group.barrier();
        prepared(job, &dir)?
    };
    let summary = chatforge_train::train_in(&config, run, resume, on_event, stop, group)?;
    let evaluate = evaluate && group.rank() == 0;
    let (metrics, eval_error) = if evaluate {
        match evaluate_run(&config, run) {
            Ok(m) => (Some(m), None),
            Err(e) => (None, Some(e.to_string())),
        }
    } else {
        (None, None)
    };
    Ok(Outcome {
        summary,
        metrics,
        eval_error,
    })
}

/// Evaluates a finished run's best checkpoint, on the conversations its validation shard was made
/// from (found through the shard's sidecar) and the default test prompts; loss on the assistant's
/// tokens unless the run pre-trained. Writes `eval/metrics.json`.
pub fn evaluate_run(cfg: &TrainConfig, run: &Path) -> Result<Metrics> {
    evaluate_checkpoint(
        cfg,
        run,
        &chatforge_infer::Checkpoint::Best,
        cfg.train.val.as_deref(),
    )
}

/// [`evaluate_run`] of any checkpoint, on `val` (a validation shard; `None`: the default prompts
/// only), written to the run's `eval/metrics.json` as `chatforge eval` writes it.
pub fn evaluate_checkpoint(
    cfg: &TrainConfig,
    run: &Path,
    checkpoint: &chatforge_infer::Checkpoint,
    val: Option<&Path>,
) -> Result<Metrics> {
    use chatforge_infer::{LoadedModel, WeightType};
    let m = LoadedModel::open(run, checkpoint, None, WeightType::F32)?;
    let loss_on = match cfg.train.mode {
        Mode::Pretrain => LossOn::All,
        _ => LossOn::Assistant,
    };
    let (metrics, _) = chatforge_infer::eval::evaluate_run(&m, val, loss_on)?;
    Ok(metrics)
}

/// The config a run was trained with, from its manifest (`None` for a run without one).
pub fn run_config(run: &Path) -> Option<TrainConfig> {
    let text = std::fs::read_to_string(RunDir::new(run).manifest()).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    serde_json::from_value(v["config"].clone()).ok()
}
