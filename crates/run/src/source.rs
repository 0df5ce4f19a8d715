//! Where a model comes from: a chatforge run directory (its best checkpoint, the newest, or a
//! chosen step), a Hugging Face GPT-2-family folder or a GGUF file, with the tokenizer that goes
//! with it and any LoRA adapter to fold in.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use chatforge_model::lora::{is_adapter_dir, load_adapter, merge};
use chatforge_model::{GptConfig, LoraConfig, Weights, load_hf};
use chatforge_tokenizer::ChatTokenizer;

use crate::{CONFIG_FILE, Error, Result, RunDir, STATE_FILE, TOKENIZER_FILE};

/// Which checkpoint of a run to load.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Checkpoint {
    /// `best/` (lowest validation loss); the newest checkpoint when the run has no `best/`.
    #[default]
    Best,
    /// The newest `checkpoints/step_*`.
    Latest,
    Step(u64),
    Path(PathBuf),
}

impl FromStr for Checkpoint {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s {
            "best" => Checkpoint::Best,
            "latest" => Checkpoint::Latest,
            _ => match s.trim_start_matches("step_").parse::<u64>() {
                Ok(n) => Checkpoint::Step(n),
                Err(_) => Checkpoint::Path(PathBuf::from(s)),
            },
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// A chatforge run directory.
    Run,
    /// A Hugging Face GPT-2-family folder.
    Hf,
    /// A GGUF file (as `chatforge export --format gguf` writes).
    Gguf,
    /// An ONNX export folder (`chatforge export --format onnx`): its graph's weights, read back
    /// by their names, run in chatforge's decoder.
    Onnx,
}

fn is_weights_dir(d: &Path) -> bool {
    (d.join(CONFIG_FILE).is_file() && chatforge_model::weights_file(d).is_ok()) || is_adapter_dir(d)
}

/// A run's checkpoints that hold weights, newest first.
pub fn checkpoints(run: &Path) -> Vec<(u64, PathBuf)> {
    RunDir::new(run)
        .list_checkpoints()
        .into_iter()
        .filter(|(_, d)| is_weights_dir(d))
        .collect()
}

fn is_run(path: &Path) -> bool {
    RunDir::new(path).exists()
}

/// The folder of weights `path` + `checkpoint` name, and whether `path` is a run.
pub fn resolve(path: &Path, checkpoint: &Checkpoint) -> Result<(ModelKind, PathBuf)> {
    let err = |msg: String| Error::Load {
        path: path.to_path_buf(),
        msg,
    };
    if !path.exists() {
        return Err(err("no such file or directory".into()));
    }
    if !is_run(path) {
        if *checkpoint != Checkpoint::Best {
            return Err(err(
                "--checkpoint applies to a run directory; this is not one".into()
            ));
        }
        if is_weights_dir(path) {
            return Ok((ModelKind::Hf, path.to_path_buf()));
        }
        return Err(err(
            "not a model: expected a chatforge run (best/ or checkpoints/) or an HF folder (config.json with model.safetensors or pytorch_model.bin)".into(),
        ));
    }
    let latest = || {
        checkpoints(path)
            .into_iter()
            .next()
            .map(|(_, d)| d)
            .ok_or_else(|| err("the run has no checkpoint yet".into()))
    };
    let dir = match checkpoint {
        Checkpoint::Best if is_weights_dir(&RunDir::new(path).best()) => RunDir::new(path).best(),
        Checkpoint::Best | Checkpoint::Latest => latest()?,
        Checkpoint::Step(n) => checkpoints(path)
            .into_iter()
            .find(|(s, _)| s == n)
            .map(|(_, d)| d)
            .ok_or_else(|| {
                let have: Vec<String> = checkpoints(path).iter().map(|(s, _)| s.to_string()).collect();
                err(format!(
                    "no checkpoint at step {n} (have: {})",
                    if have.is_empty() {
                        "none".into()
                    } else {
                        have.join(", ")
                    }
                ))
            })?,
        Checkpoint::Path(p) => {
            let p = if p.is_absolute() || p.exists() {
                p.clone()
            } else {
                path.join(p)
            };
            if !is_weights_dir(&p) {
                return Err(err(format!("{} holds no checkpoint", p.display())));
            }
            p
        }
    };
    Ok((ModelKind::Run, dir))
}

/// The tokenizer that belongs to a model (a run or an HF folder): its `tokenizer.json`, or the
/// folder holding `vocab.json` and `merges.txt`.
pub fn model_tokenizer(model: &Path) -> Option<PathBuf> {
    let (kind, weights) = resolve(model, &Checkpoint::Best).ok()?;
    let dir = find_tokenizer(kind, model, &weights, None)?;
    let file = dir.join(TOKENIZER_FILE);
    Some(if file.is_file() { file } else { dir })
}

fn find_tokenizer(kind: ModelKind, root: &Path, weights: &Path, base: Option<&Path>) -> Option<PathBuf> {
    let mut dirs = vec![weights.to_path_buf(), root.to_path_buf()];
    if kind == ModelKind::Run {
        dirs.push(root.join("tokenizer"));
    }
    if let Some(b) = base {
        dirs.push(b.to_path_buf());
        dirs.extend(b.parent().map(Path::to_path_buf));
    }
    dirs.into_iter().find(|d| {
        d.join(TOKENIZER_FILE).is_file() || (d.join("vocab.json").is_file() && d.join("merges.txt").is_file())
    })
}

/// Whether an HF folder declares a chat template (`tokenizer_config.json`'s `chat_template`).
pub fn declares_chat_template(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|v| v.get("chat_template").is_some_and(|t| !t.is_null()))
}

/// A model's parts as found on disk, before an engine is built: what export and the loader share.
#[derive(Debug, Clone)]
pub struct ModelSource {
    pub config: GptConfig,
    /// The base weights (HF names, f32), before any adapter.
    pub base: Weights,
    pub tokenizer: ChatTokenizer,
    /// The tokenizer's file (`tokenizer.json` or the folder of `vocab.json` + `merges.txt`);
    /// `None` when it came from inside a GGUF file.
    pub tokenizer_path: Option<PathBuf>,
    pub kind: ModelKind,
    /// The run directory, HF folder or GGUF file given.
    pub root: PathBuf,
    /// The folder (or GGUF file) whose weights were loaded.
    pub weights_dir: PathBuf,
    /// The LoRA adapter to fold into the base, if any.
    pub adapter: Option<PathBuf>,
    /// The base of a LoRA run (its `--init`), when the checkpoint is an adapter.
    pub base_dir: Option<PathBuf>,
    /// The QLoRA quantisation the adapter was trained against (the base went through it).
    pub quant: Option<chatforge_model::quant::QuantKind>,
}

impl ModelSource {
    /// Finds and reads `path` (a run, an HF folder or a GGUF file); `tokenizer` overrides the one
    /// found beside it; `adapter` (a PEFT LoRA folder, or the name of one in the run's
    /// `adapters/`) is recorded to be folded in.
    pub fn open(
        path: &Path,
        checkpoint: &Checkpoint,
        tokenizer: Option<&Path>,
        adapter: Option<&str>,
    ) -> Result<ModelSource> {
        // An export folder holding a GGUF file and no HF weights stands for the file.
        let gguf_in_dir = path.join("model.gguf");
        let path = if path.is_dir() && gguf_in_dir.is_file() && !path.join(CONFIG_FILE).is_file() {
            gguf_in_dir.as_path()
        } else {
            path
        };
        if crate::gguf::is_gguf(path) {
            if *checkpoint != Checkpoint::Best || adapter.is_some() {
                return Err(Error::Load {
                    path: path.to_path_buf(),
                    msg: "a GGUF file has one set of weights: --checkpoint and --adapter do not apply".into(),
                });
            }
            let (config, base, tok) = crate::gguf::read(path)?;
            let tokenizer = match tokenizer {
                Some(t) => ChatTokenizer::load(t)?,
                None => tok,
            };
            return Ok(ModelSource {
                config,
                base,
                tokenizer,
                tokenizer_path: None,
                kind: ModelKind::Gguf,
                root: path.to_path_buf(),
                weights_dir: path.to_path_buf(),
                adapter: None,
                base_dir: None,
                quant: None,
            });
        }
        if let Some(graph) = onnx_graph(path) {
            return open_onnx(path, &graph, checkpoint, tokenizer, adapter);
        }
        if let Some(base) = persona_run_base(path)? {
            // A persona run (`train --persona-strategy adapters`): its base, with its adapters/.
            let tok = tokenizer
                .map(Path::to_path_buf)
                .or_else(|| find_tokenizer(ModelKind::Run, path, path, None));
            let mut src = ModelSource::open(&base, checkpoint, tok.as_deref(), None)?;
            if src.adapter.is_some() {
                return Err(Error::Load {
                    path: path.to_path_buf(),
                    msg: format!(
                        "the persona run's base {} is itself a LoRA adapter",
                        base.display()
                    ),
                });
            }
            src.kind = ModelKind::Run;
            src.root = path.to_path_buf();
            src.adapter = adapter.map(|a| find_adapter(path, a)).transpose()?;
            return Ok(src);
        }
        let (kind, weights_dir) = resolve(path, checkpoint)?;
        // A LoRA run's checkpoints are adapters: the base is the run's --init.
        let (base_dir, run_adapter) = if is_adapter_dir(&weights_dir) {
            (Some(lora_base(path, &weights_dir)?), Some(weights_dir.clone()))
        } else {
            (None, None)
        };
        let (config, mut base) = load_hf(base_dir.as_deref().unwrap_or(&weights_dir))?;
        let quant = trained_quant(&weights_dir);
        if let Some(kind) = quant {
            // A QLoRA adapter learnt against the quantised base: decode with that base.
            quant_round_trip(&mut base, kind)?;
        }
        let tok_path = match tokenizer {
            Some(t) => t.to_path_buf(),
            None => {
                find_tokenizer(kind, path, &weights_dir, base_dir.as_deref()).ok_or_else(|| Error::Load {
                    path: path.to_path_buf(),
                    msg: "no tokenizer.json (or vocab.json + merges.txt) beside the model: pass --tokenizer"
                        .into(),
                })?
            }
        };
        let tok = ChatTokenizer::load(&tok_path)?;
        if tok.vocab_size() > config.vocab_size {
            return Err(Error::Load {
                path: tok_path,
                msg: format!(
                    "the tokenizer has {} tokens but the model only {}: they do not belong together",
                    tok.vocab_size(),
                    config.vocab_size
                ),
            });
        }
        let adapter = match adapter {
            Some(a) => Some(find_adapter(path, a)?),
            None => run_adapter,
        };
        Ok(ModelSource {
            config,
            base,
            tokenizer: tok,
            tokenizer_path: Some(tok_path),
            kind,
            root: path.to_path_buf(),
            weights_dir,
            adapter,
            base_dir,
            quant,
        })
    }

    /// The weights to run: the base with the adapter, if any, folded in.
    pub fn merged(&self) -> Result<Weights> {
        match &self.adapter {
            Some(a) => with_adapter(&self.base, &self.config, a),
            None => Ok(self.base.clone()),
        }
    }
}

/// The graph of an ONNX export: `model.onnx` in a folder without HF weights, or the file itself.
fn onnx_graph(path: &Path) -> Option<PathBuf> {
    if path.is_file() {
        return path
            .extension()
            .is_some_and(|e| e == "onnx")
            .then(|| path.to_path_buf());
    }
    let graph = path.join("model.onnx");
    (graph.is_file() && chatforge_model::weights_file(path).is_err()).then_some(graph)
}

/// An ONNX export: `config.json` beside the graph, the graph's weights read back (a graph some
/// other exporter wrote names its weights otherwise and is refused), the tokenizer beside it.
fn open_onnx(
    path: &Path,
    graph: &Path,
    checkpoint: &Checkpoint,
    tokenizer: Option<&Path>,
    adapter: Option<&str>,
) -> Result<ModelSource> {
    let err = |msg: String| Error::Load {
        path: path.to_path_buf(),
        msg,
    };
    if *checkpoint != Checkpoint::Best || adapter.is_some() {
        return Err(err(
            "an ONNX export has one set of weights: --checkpoint and --adapter do not apply".into(),
        ));
    }
    let dir = graph.parent().unwrap_or(Path::new(".")).to_path_buf();
    let config = chatforge_model::read_hf_config(&dir)?;
    let weights = chatforge_model::io::onnx::read_weights(graph)?;
    let base = chatforge_model::check_weights(&config, weights, graph)
        .map_err(|e| err(format!("not a graph chatforge can run ({e})")))?;
    let tok_path = match tokenizer {
        Some(t) => t.to_path_buf(),
        None => find_tokenizer(ModelKind::Onnx, &dir, &dir, None)
            .ok_or_else(|| err("no tokenizer.json beside the graph: pass --tokenizer".into()))?,
    };
    let tokenizer = ChatTokenizer::load(&tok_path)?;
    Ok(ModelSource {
        config,
        base,
        tokenizer,
        tokenizer_path: Some(tok_path),
        kind: ModelKind::Onnx,
        root: path.to_path_buf(),
        weights_dir: dir,
        adapter: None,
        base_dir: None,
        quant: None,
    })
}

/// The quantisation a QLoRA checkpoint's base was trained in (from its `state.json`).
fn trained_quant(dir: &Path) -> Option<chatforge_model::quant::QuantKind> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(STATE_FILE)).ok()?).ok()?;
    serde_json::from_value(v["config"]["lora"]["quant"].clone()).ok()
}

/// Replaces every linear weight by its quantised-then-dequantised value.
fn quant_round_trip(w: &mut Weights, kind: chatforge_model::quant::QuantKind) -> Result<()> {
    use chatforge_model::layout::{Part, Slot};
    use chatforge_model::quant::QuantWeight;
    for (name, t) in w.iter_mut() {
        if let Some(Slot::BlockLinear(_, _, Part::Weight)) = Slot::from_name(name) {
            let (r, c) = (t.dims()[0], t.dims()[1]);
            let q = QuantWeight::quantize(t.data(), r, c, kind);
            t.data_mut().copy_from_slice(&q.dequantize());
        }
    }
    Ok(())
}

/// The base model of a persona run (a folder with `persona_run.json` naming its base and
/// `adapters/`), or `None` for anything else.
fn persona_run_base(path: &Path) -> Result<Option<PathBuf>> {
    if is_run(path) {
        return Ok(None);
    }
    // Only the adapters strategy has a base; the others are ordinary runs.
    Ok(chatforge_data::personas::PersonaRun::read(path)?
        .and_then(|r| r.base)
        .map(|b| path.join(b)))
}

/// A PEFT adapter folder: `a` itself, or `root/adapters/a`.
pub fn find_adapter(root: &Path, a: &str) -> Result<PathBuf> {
    let direct = PathBuf::from(a);
    for d in [direct.clone(), RunDir::new(root).adapter(a)] {
        if is_adapter_dir(&d) {
            return Ok(d);
        }
    }
    Err(Error::Load {
        path: direct,
        msg: format!(
            "no LoRA adapter here (adapter_config.json + adapter_model.safetensors), nor in {}",
            RunDir::new(root).adapters().display()
        ),
    })
}

/// Base weights with the adapter in `dir` folded in.
pub fn with_adapter(base: &Weights, config: &GptConfig, dir: &Path) -> Result<Weights> {
    let (lcfg, adapter): (LoraConfig, Weights) = load_adapter(dir, config)?;
    Ok(merge(base, &lcfg, &adapter, config)?)
}

/// The base model of a LoRA run: its `train.init`, from the checkpoint's state or the adapter's
/// config (which records the absolute path).
fn lora_base(run: &Path, adapter: &Path) -> Result<PathBuf> {
    let read = |p: PathBuf| -> Option<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()
    };
    let mut candidates = Vec::new();
    if let Some(v) = read(adapter.join("adapter_config.json"))
        && let Some(b) = v["base_model_name_or_path"].as_str()
    {
        candidates.push(PathBuf::from(b));
    }
    if let Some(v) = read(adapter.join(STATE_FILE))
        && let Some(b) = v["config"]["train"]["init"].as_str()
    {
        candidates.push(PathBuf::from(b));
        candidates.push(run.join("..").join(b));
    }
    for c in &candidates {
        if let Ok((_, dir)) = resolve(c, &Checkpoint::Best)
            && !is_adapter_dir(&dir)
        {
            return Ok(dir);
        }
    }
    Err(Error::Load {
        path: adapter.to_path_buf(),
        msg: format!("a LoRA checkpoint whose base model cannot be found (looked for {candidates:?})"),
    })
}
