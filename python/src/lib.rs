//! `chatforge._chatforge`: the library crates as a Python module. Structured values cross as JSON
//! text (conversations, configs, events, metrics), which the Python layer (`python/chatforge/`)
//! turns into dicts and classes; the long calls (training, decoding, export) run with the GIL
//! released, training and streamed replies on threads of their own.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use chatforge_data::{Conversation, ImportOptions, ReadOptions};
use chatforge_infer::{Checkpoint, LoadedModel, Request, WeightType, generate};
use chatforge_tokenizer::{ChatTokenizer, Persona, RenderOptions};
use chatforge_train::{Event, TrainConfig};
use pyo3::prelude::*;

mod convert;

use convert::{err, json_err, to_json};

pyo3::create_exception!(
    _chatforge,
    ChatforgeError,
    pyo3::exceptions::PyException,
    "A chatforge operation failed; the message is the one the CLI prints."
);

/// Locks `m`; a thread that panicked while holding it left a value that is still usable here
/// (a model or a channel end).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Conversations read from files in any supported format, as JSON: `{"conversations": […],
/// "files": [{"path", "detected", "records", "conversations", "invalid"}], "dropped": {…}}`.
#[pyfunction]
#[pyo3(signature = (paths, format=None, skip_invalid=false, dedupe=false, min_turns=1, max_chars=None))]
fn read_data(
    py: Python<'_>,
    paths: Vec<PathBuf>,
    format: Option<String>,
    skip_invalid: bool,
    dedupe: bool,
    min_turns: usize,
    max_chars: Option<usize>,
) -> PyResult<String> {
    let format = format.map(|f| f.parse()).transpose().map_err(err)?;
    let opts = ImportOptions {
        read: ReadOptions {
            format,
            skip_invalid,
            ..ReadOptions::default()
        },
        dedupe,
        min_turns,
        max_chars,
        ..ImportOptions::default()
    };
    py.detach(|| {
        let r = chatforge_data::import(&paths, &opts).map_err(err)?;
        let files: Vec<serde_json::Value> = r
            .files
            .iter()
            .map(|f| {
                serde_json::json!({
                    "path": f.path, "detected": f.detected.to_string(), "records": f.records,
                    "conversations": f.conversations, "invalid": f.invalid,
                    "errors": f.first_errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
                })
            })
            .collect();
        to_json(&serde_json::json!({
            "conversations": r.conversations,
            "files": files,
            "dropped": {"duplicates": r.dropped_duplicates, "short": r.dropped_short, "long": r.dropped_long},
        }))
    })
}

/// Writes conversations (JSON list) as canonical JSONL, with a seeded validation split.
/// `val_out` defaults to `data import`'s place beside `out`, `seed` to its seed.
#[pyfunction]
#[pyo3(signature = (conversations, out, val_out=None, val_split=0.0, seed=None))]
fn write_data(
    py: Python<'_>,
    conversations: &str,
    out: PathBuf,
    val_out: Option<PathBuf>,
    val_split: f64,
    seed: Option<u64>,
) -> PyResult<(usize, usize)> {
    let convs: Vec<Conversation> = serde_json::from_str(conversations).map_err(json_err)?;
    let seed = seed.unwrap_or(chatforge_data::SPLIT_SEED);
    py.detach(|| {
        let (train, val) = chatforge_data::split(convs, val_split, seed).map_err(err)?;
        chatforge_data::write_jsonl(&out, &train).map_err(err)?;
        if val_split > 0.0 {
            let v = val_out.unwrap_or_else(|| chatforge_data::val_path_for(&out));
            chatforge_data::write_jsonl(&v, &val).map_err(err)?;
        }
        Ok((train.len(), val.len()))
    })
}

/// Where `data import` writes the validation split of `out`.
#[pyfunction]
fn val_path_for(out: PathBuf) -> PathBuf {
    chatforge_data::val_path_for(&out)
}

/// A tokenizer with its chat template.
#[pyclass(module = "chatforge._chatforge", frozen)]
struct Tokenizer {
    inner: ChatTokenizer,
}

#[pymethods]
impl Tokenizer {
    /// Loads a tokenizer.json, a folder holding one (a run, an HF folder), or GPT-2's two files.
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<Tokenizer> {
        py.detach(|| {
            let path = chatforge_hub::tokenizer_path(&path, &chatforge_hub::Quiet).map_err(err)?;
            let file = chatforge_pipeline::tokenizer_file(&path);
            let src = if file.is_file() { file } else { path };
            Ok(Tokenizer {
                inner: ChatTokenizer::load(&src).map_err(err)?,
            })
        })
    }

    /// Trains on conversation files and writes the tokenizer folder `out` (tokenizer.json,
    /// manifest.json, stats.json); returns the tokenizer and its stats (JSON).
    #[staticmethod]
    #[allow(clippy::too_many_arguments)] // Python's keyword arguments
    #[pyo3(signature = (inputs, out, vocab_size, kind="bpe", min_frequency=None, seed=None, val=None))]
    fn train(
        py: Python<'_>,
        inputs: Vec<PathBuf>,
        out: PathBuf,
        vocab_size: usize,
        kind: &str,
        min_frequency: Option<u64>,
        seed: Option<u64>,
        val: Option<PathBuf>,
    ) -> PyResult<(Tokenizer, String)> {
        let first = inputs
            .first()
            .ok_or_else(|| ChatforgeError::new_err("give at least one conversation file"))?
            .clone();
        let defaults = chatforge_tokenizer::TrainOptions::default();
        let opts = chatforge_tokenizer::TrainOptions {
            kind: kind.parse().map_err(err)?,
            vocab_size,
            min_frequency: min_frequency.unwrap_or(defaults.min_frequency),
            seed: seed.unwrap_or(defaults.seed),
            show_progress: false,
        };
        py.detach(|| {
            let val = match val {
                Some(v) => chatforge_tokenizer::ValSource::File(v),
                None => chatforge_tokenizer::ValSource::beside(&first),
            };
            let r = chatforge_tokenizer::train_artifact(&inputs, &val, &opts, &out).map_err(err)?;
            let stats = to_json(&r.stats)?;
            Ok((Tokenizer { inner: r.tokenizer }, stats))
        })
    }

    fn encode(&self, text: &str) -> PyResult<Vec<u32>> {
        self.inner.encode(text).map_err(err)
    }

    #[pyo3(signature = (ids, skip_special_tokens=false))]
    fn decode(&self, ids: Vec<u32>, skip_special_tokens: bool) -> PyResult<String> {
        self.inner.decode(&ids, skip_special_tokens).map_err(err)
    }

    /// The ids of a conversation (JSON) rendered for the assistant's next reply.
    #[pyo3(signature = (conversation, system=None))]
    fn render_prompt(&self, conversation: &str, system: Option<String>) -> PyResult<Vec<u32>> {
        let conv: Conversation = serde_json::from_str(conversation).map_err(json_err)?;
        let opts = RenderOptions {
            system,
            ..RenderOptions::default()
        };
        self.inner.render_prompt(&conv, &opts).map_err(err)
    }

    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }

    fn save(&self, path: PathBuf) -> PyResult<()> {
        self.inner.inner().save(&path, false).map_err(err)?;
        Ok(())
    }
}

/// A config file's text (TOML, or JSON) over the defaults, checked; as JSON: every key when
/// `resolve`, else only the keys the text sets (so that settings derived from others, such as
/// `n_kv_head` from `n_head`, follow later changes).
#[pyfunction]
#[pyo3(signature = (text, resolve=true))]
fn parse_config(text: &str, resolve: bool) -> PyResult<String> {
    let given: serde_json::Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(json_err)?
    } else {
        let table: toml::Table = toml::from_str(text).map_err(err)?;
        serde_json::to_value(table).map_err(err)?
    };
    let cfg: TrainConfig = serde_json::from_value(given.clone()).map_err(err)?;
    if resolve { to_json(&cfg) } else { to_json(&given) }
}

/// A bundled preset (`configs/NAME.toml`): the keys it sets, as JSON.
#[pyfunction]
fn preset(name: &str) -> PyResult<String> {
    let text = chatforge_pipeline::presets::PRESETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| *t)
        .ok_or_else(|| {
            let names: Vec<&str> = chatforge_pipeline::presets::PRESETS
                .iter()
                .map(|(n, _)| *n)
                .collect();
            ChatforgeError::new_err(format!("no preset {name:?}: one of {}", names.join(", ")))
        })?;
    parse_config(text, false)
}

/// Checks a config (JSON) as `chatforge train` does before it starts.
#[pyfunction]
fn validate_config(config: &str) -> PyResult<()> {
    let mut cfg: TrainConfig = serde_json::from_str(config).map_err(json_err)?;
    if cfg.model.vocab_size == 0 {
        cfg.model.vocab_size = 1; // the tokenizer's, known once the data is tokenized
    }
    cfg.validate().map_err(err)
}

/// A training run on a thread of its own: events arrive through [`Training::next_event`], and
/// [`Training::stop`] ends it after the current step with a checkpoint.
#[pyclass(module = "chatforge._chatforge", frozen)]
struct Training {
    events: Mutex<Receiver<String>>,
    /// With `sync`, the loop waits after each step until the caller has seen it (its callback
    /// may stop the run at exactly that step).
    acks: Mutex<Sender<()>>,
    stop: Arc<AtomicBool>,
    handle: Mutex<Option<JoinHandle<Result<String, String>>>>,
    out: PathBuf,
}

#[pymethods]
impl Training {
    /// Starts `config` (JSON, with `train.data` set) into the run directory `out`. With `sync`,
    /// each step waits for [`Training::ack`] (or a stop) before the next.
    #[staticmethod]
    #[pyo3(signature = (config, out, tokenizer=None, resume=false, evaluate=true, sync=false))]
    fn start(
        py: Python<'_>,
        config: &str,
        out: PathBuf,
        tokenizer: Option<PathBuf>,
        resume: bool,
        evaluate: bool,
        sync: bool,
    ) -> PyResult<Training> {
        let mut config: TrainConfig = serde_json::from_str(config).map_err(json_err)?;
        if config.train.data.is_none() {
            return Err(ChatforgeError::new_err("give the training data (data=…)"));
        }
        let (config, tokenizer) = py.detach(|| -> PyResult<_> {
            let quiet = chatforge_hub::Quiet;
            if let Some(init) = &config.train.init {
                config.train.init = Some(chatforge_hub::model_path(init, &quiet).map_err(err)?);
            }
            let tokenizer = tokenizer
                .map(|t| chatforge_hub::tokenizer_path(&t, &quiet))
                .transpose()
                .map_err(err)?;
            Ok((config, tokenizer))
        })?;
        let (tx, rx): (Sender<String>, Receiver<String>) = channel();
        let (ack_tx, ack_rx) = channel::<()>();
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, run) = (stop.clone(), out.clone());
        let handle = std::thread::spawn(move || {
            let job = chatforge_pipeline::TrainJob { config, tokenizer };
            let resume = if resume {
                chatforge_pipeline::Resume::Yes
            } else {
                chatforge_pipeline::Resume::No
            };
            let mut on_event = |e: &Event| {
                if let Ok(line) = serde_json::to_string(e) {
                    let _ = tx.send(line);
                }
                if sync && matches!(e, Event::Step { .. }) {
                    // Until the caller has seen the step, it stops the run, or it is gone.
                    loop {
                        match ack_rx.recv_timeout(Duration::from_millis(50)) {
                            Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
                            Err(RecvTimeoutError::Timeout) if flag.load(Ordering::Relaxed) => break,
                            Err(RecvTimeoutError::Timeout) => {}
                        }
                    }
                }
            };
            let outcome = chatforge_pipeline::train_run(&job, &run, resume, evaluate, &mut on_event, &flag)
                .map_err(|e| e.to_string())?;
            serde_json::to_string(&serde_json::json!({
                "summary": outcome.summary,
                "metrics": outcome.metrics,
                "eval_error": outcome.eval_error,
            }))
            .map_err(|e| e.to_string())
        });
        Ok(Training {
            events: Mutex::new(rx),
            acks: Mutex::new(ack_tx),
            stop,
            handle: Mutex::new(Some(handle)),
            out,
        })
    }

    /// The next event (JSON, as logs.jsonl has it), waiting up to `timeout` seconds; `None` when
    /// none came in that time or the run has ended and every event was taken.
    #[pyo3(signature = (timeout=0.1))]
    fn next_event(&self, py: Python<'_>, timeout: f64) -> Option<String> {
        let wait = Duration::from_secs_f64(timeout.clamp(0.0, 3600.0));
        py.detach(|| lock(&self.events).recv_timeout(wait).ok())
    }

    /// The caller has seen the last step (see `sync`).
    fn ack(&self) {
        let _ = lock(&self.acks).send(());
    }

    /// Asks the run to stop after the current step; it saves a checkpoint first.
    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Whether the run's thread has ended (every event was sent by then).
    #[getter]
    fn finished(&self) -> bool {
        lock(&self.handle).as_ref().is_none_or(JoinHandle::is_finished)
    }

    #[getter]
    fn out(&self) -> PathBuf {
        self.out.clone()
    }

    /// Waits for the end: the summary and evaluation (JSON), or the run's error raised.
    fn result(&self, py: Python<'_>) -> PyResult<String> {
        let handle = lock(&self.handle)
            .take()
            .ok_or_else(|| ChatforgeError::new_err("the run's result was taken already"))?;
        py.detach(|| match handle.join() {
            Ok(Ok(json)) => Ok(json),
            Ok(Err(e)) => Err(ChatforgeError::new_err(e)),
            Err(_) => Err(ChatforgeError::new_err("training panicked")),
        })
    }
}

/// A model loaded for decoding.
#[pyclass(module = "chatforge._chatforge", frozen)]
struct Model {
    inner: Arc<Mutex<LoadedModel>>,
}

/// What one call decodes: the JSON the Python layer sends.
#[derive(serde::Deserialize)]
struct DecodeArgs {
    conversations: Vec<Conversation>,
    /// Plain text continuation instead of the chat template [default: the model's].
    raw: Option<bool>,
    system: Option<String>,
    persona: Option<String>,
    temperature: Option<f32>,
    top_k: Option<usize>,
    top_p: Option<f32>,
    repetition_penalty: Option<f32>,
    #[serde(default = "one")]
    seed: u64,
    max_new_tokens: Option<usize>,
    #[serde(default)]
    stop: Vec<String>,
    #[serde(default = "eight")]
    batch_size: usize,
}

fn one() -> u64 {
    1
}

fn eight() -> usize {
    8
}

/// The requests of `args` for `m`, as `chatforge generate` builds them.
fn requests(m: &LoadedModel, args: &DecodeArgs) -> PyResult<Vec<Request>> {
    let raw = args.raw.unwrap_or(!m.chat);
    let sampling = m.generation.resolve(chatforge_infer::SamplingGiven {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        repetition_penalty: args.repetition_penalty,
        seed: Some(args.seed),
    });
    sampling.validate().map_err(err)?;
    let max_new_tokens = m.generation.max_new_tokens(args.max_new_tokens);
    let opts = RenderOptions {
        system: args.system.clone(),
        persona: args.persona.clone().map_or(Persona::None, Persona::Fixed),
        ..RenderOptions::default()
    };
    args.conversations
        .iter()
        .map(|c| {
            m.request(c, raw, &opts, sampling, max_new_tokens, &args.stop)
                .map_err(err)
        })
        .collect()
}

fn output_json(o: &chatforge_infer::Output) -> serde_json::Value {
    serde_json::json!({
        "text": o.text.trim(), "finish": o.finish, "ids": o.ids, "prompt_tokens": o.prompt_tokens,
        "new_tokens": o.ids.len(), "seconds": o.seconds, "tokens_per_s": o.tokens_per_s,
    })
}

#[pymethods]
impl Model {
    /// Loads a run directory, an HF folder, a Hub id or a GGUF file.
    #[staticmethod]
    #[pyo3(signature = (path, checkpoint="best", tokenizer=None, weights="f32", adapter=None))]
    fn load(
        py: Python<'_>,
        path: PathBuf,
        checkpoint: &str,
        tokenizer: Option<PathBuf>,
        weights: &str,
        adapter: Option<String>,
    ) -> PyResult<Model> {
        let checkpoint: Checkpoint = checkpoint.parse().map_err(err)?;
        let weights: WeightType = weights.parse().map_err(err)?;
        py.detach(|| {
            let quiet = chatforge_hub::Quiet;
            let path = chatforge_hub::model_path(&path, &quiet).map_err(err)?;
            let tokenizer = tokenizer
                .map(|t| chatforge_hub::tokenizer_path(&t, &quiet))
                .transpose()
                .map_err(err)?;
            let m = LoadedModel::open_with(
                &path,
                &checkpoint,
                tokenizer.as_deref(),
                adapter.as_deref(),
                weights,
            )
            .map_err(err)?;
            Ok(Model {
                inner: Arc::new(Mutex::new(m)),
            })
        })
    }

    /// What was loaded (JSON): parameters, context, whether it chats, the weights' folder.
    fn info(&self) -> PyResult<String> {
        let m = lock(&self.inner);
        to_json(&serde_json::json!({
            "params": m.config.n_params(), "n_ctx": m.config.n_ctx, "vocab_size": m.config.vocab_size,
            "chat": m.chat, "root": m.root, "weights_dir": m.weights_dir, "adapter": m.adapter,
        }))
    }

    #[getter]
    fn tokenizer(&self) -> Tokenizer {
        Tokenizer {
            inner: lock(&self.inner).tokenizer.clone(),
        }
    }

    /// Decodes every conversation of `args` (JSON, see `DecodeArgs`) in batches; a JSON list of
    /// results.
    fn generate(&self, py: Python<'_>, args: &str) -> PyResult<String> {
        let args: DecodeArgs = serde_json::from_str(args).map_err(json_err)?;
        let model = self.inner.clone();
        py.detach(|| {
            let m = lock(&model);
            let reqs = requests(&m, &args)?;
            let outs = generate(
                &m.engine,
                Some(&m.tokenizer),
                &reqs,
                args.batch_size.max(1),
                None,
                |_, _| {},
            )
            .map_err(err)?;
            to_json(&outs.iter().map(output_json).collect::<Vec<_>>())
        })
    }

    /// Decodes the first conversation of `args` on a thread, its text piece by piece.
    fn stream(&self, args: &str) -> PyResult<Stream> {
        let args: DecodeArgs = serde_json::from_str(args).map_err(json_err)?;
        if args.conversations.len() != 1 {
            return Err(ChatforgeError::new_err("a stream decodes one prompt"));
        }
        let (tx, rx) = channel::<Piece>();
        let cancel = Arc::new(AtomicBool::new(false));
        let (model, flag) = (self.inner.clone(), cancel.clone());
        std::thread::spawn(move || {
            let m = lock(&model);
            let result = requests(&m, &args).map_err(|e| e.to_string()).and_then(|reqs| {
                let mut reply = chatforge_infer::chat::ReplyText::default();
                let raw = args.raw.unwrap_or(!m.chat);
                generate(
                    &m.engine,
                    Some(&m.tokenizer),
                    &reqs,
                    1,
                    Some(&flag),
                    |_, piece| {
                        let piece = if raw { Some(piece) } else { reply.piece(piece) };
                        if let Some(p) = piece {
                            let _ = tx.send(Piece::Text(p.to_string()));
                        }
                    },
                )
                .map_err(|e| e.to_string())
            });
            let end = match result {
                Ok(outs) => Piece::End(outs.first().map(output_json).unwrap_or_default()),
                Err(e) => Piece::Error(e),
            };
            let _ = tx.send(end);
        });
        Ok(Stream {
            pieces: Mutex::new(rx),
            cancel,
            end: Mutex::new(None),
        })
    }
}

enum Piece {
    Text(String),
    End(serde_json::Value),
    Error(String),
}

/// A reply's text as it is generated; closing it (or dropping it half-read) stops the decoding.
#[pyclass(module = "chatforge._chatforge", frozen)]
struct Stream {
    pieces: Mutex<Receiver<Piece>>,
    cancel: Arc<AtomicBool>,
    end: Mutex<Option<String>>,
}

#[pymethods]
impl Stream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<String>> {
        loop {
            // Short waits, so Ctrl-C in the caller is seen between them.
            let next = py.detach(|| lock(&self.pieces).recv_timeout(Duration::from_millis(100)));
            match next {
                Ok(Piece::Text(t)) => return Ok(Some(t)),
                Ok(Piece::End(v)) => {
                    *lock(&self.end) = Some(v.to_string());
                    return Ok(None);
                }
                Ok(Piece::Error(e)) => return Err(ChatforgeError::new_err(e)),
                Err(RecvTimeoutError::Disconnected) => return Ok(None),
                Err(RecvTimeoutError::Timeout) => {
                    if let Err(e) = py.check_signals() {
                        self.close();
                        return Err(e);
                    }
                }
            }
        }
    }

    /// Stops the decoding (the pieces already made stay unread).
    fn close(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// The whole reply's result (JSON: text, finish, token counts, speed) once the stream ended.
    #[getter]
    fn result(&self) -> Option<String> {
        lock(&self.end).clone()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

/// Evaluates a run's checkpoint (loss, perplexity, BLEU, ROUGE on its validation data, or on
/// `val`, a validation shard): the metrics as JSON, also written to the run's `eval/metrics.json`.
#[pyfunction]
#[pyo3(signature = (run, val=None, checkpoint="best"))]
fn evaluate(py: Python<'_>, run: PathBuf, val: Option<PathBuf>, checkpoint: &str) -> PyResult<String> {
    let checkpoint: Checkpoint = checkpoint.parse().map_err(err)?;
    py.detach(|| {
        let cfg = chatforge_pipeline::run_config(&run).unwrap_or_default();
        let val = val.or_else(|| cfg.train.val.clone());
        let metrics =
            chatforge_pipeline::evaluate_checkpoint(&cfg, &run, &checkpoint, val.as_deref()).map_err(err)?;
        to_json(&metrics)
    })
}

/// Exports a run or model to `out`: `hf`, `onnx`, `gguf` (`quant` f32, f16, q8_0, q4_0) or
/// `peft`; the export's manifest as JSON.
#[pyfunction]
#[allow(clippy::too_many_arguments)] // Python's keyword arguments
#[pyo3(signature = (model, out, format="hf", quant=None, int8=false, checkpoint="best", force=false))]
fn export(
    py: Python<'_>,
    model: PathBuf,
    out: PathBuf,
    format: &str,
    quant: Option<&str>,
    int8: bool,
    checkpoint: &str,
    force: bool,
) -> PyResult<String> {
    let checkpoint: Checkpoint = checkpoint.parse().map_err(err)?;
    let opts = chatforge_export::ExportOptions {
        format: format.parse().map_err(err)?,
        gguf_quant: quant.unwrap_or("f32").parse().map_err(err)?,
        onnx: chatforge_export::onnx::OnnxOptions {
            int8,
            external_data: false,
        },
        force,
    };
    py.detach(|| {
        let model = chatforge_hub::model_path(&model, &chatforge_hub::Quiet).map_err(err)?;
        let src = chatforge_infer::ModelSource::open(&model, &checkpoint, None, None).map_err(err)?;
        to_json(&chatforge_export::export(&src, &opts, &out).map_err(err)?)
    })
}

#[pymodule]
fn _chatforge(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("ChatforgeError", m.py().get_type::<ChatforgeError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(read_data, m)?)?;
    m.add_function(wrap_pyfunction!(write_data, m)?)?;
    m.add_function(wrap_pyfunction!(val_path_for, m)?)?;
    m.add("VAL_SPLIT", chatforge_data::VAL_SPLIT)?;
    m.add_function(wrap_pyfunction!(parse_config, m)?)?;
    m.add_function(wrap_pyfunction!(preset, m)?)?;
    m.add_function(wrap_pyfunction!(validate_config, m)?)?;
    m.add_function(wrap_pyfunction!(evaluate, m)?)?;
    m.add_function(wrap_pyfunction!(export, m)?)?;
    m.add_class::<Tokenizer>()?;
    m.add_class::<Training>()?;
    m.add_class::<Model>()?;
    m.add_class::<Stream>()?;
    Ok(())
}
