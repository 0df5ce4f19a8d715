//! Exports a model (a run, an HF folder or a GGUF file, with an optional LoRA adapter folded in)
//! to the formats other tools read: a Hugging Face folder for transformers, a GGUF file for
//! llama.cpp. Every export is written to a temporary directory beside the output and renamed into
//! place, so a failure leaves nothing behind; `export_manifest.json` records where it came from.

mod gguf;
mod hf;
mod info;
pub mod onnx;

use std::path::{Path, PathBuf};

use chatforge_run::{ModelKind, ModelSource};
use serde::Serialize;

pub use gguf::{GgufQuant, write_gguf};
pub use hf::write_hf;
pub use info::{Info, info};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Source(#[from] chatforge_run::Error),
    #[error(transparent)]
    Model(#[from] chatforge_model::Error),
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

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `config.json`, `model.safetensors`, `tokenizer.json`, `tokenizer_config.json` (with the chat
    /// template), `generation_config.json`.
    Hf,
    /// `model.gguf`: weights (f32, f16, q8_0 or q4_0), architecture keys and the tokenizer.
    Gguf,
    /// `model.onnx` (+ `model.onnx.data`): the decoder with KV-cache inputs and outputs, beside the
    /// HF folder's config and tokenizer files.
    Onnx,
}

impl std::str::FromStr for Format {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "hf" => Ok(Format::Hf),
            "gguf" => Ok(Format::Gguf),
            "onnx" => Ok(Format::Onnx),
            other => Err(Error::Invalid(format!(
                "unknown export format {other:?}: expected hf, onnx or gguf"
            ))),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub format: Format,
    /// GGUF weight type [default f32].
    pub gguf_quant: GgufQuant,
    /// ONNX: int8 linear layers, external data.
    pub onnx: onnx::OnnxOptions,
    /// Replace an existing output directory.
    pub force: bool,
}

/// One file of an export, as the manifest lists it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

/// Writes `src` (with its adapter folded in) to the directory `out` in `opts.format`, and
/// `export_manifest.json` beside it. Returns the manifest.
pub fn export(src: &ModelSource, opts: &ExportOptions, out: &Path) -> Result<serde_json::Value> {
    if out.exists() && !opts.force {
        return Err(Error::Invalid(format!(
            "{} exists: choose another output, or pass --force to replace it",
            out.display()
        )));
    }
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    if opts.format == Format::Gguf && out.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
        return export_gguf_file(src, opts, out);
    }
    let mut manifest = serde_json::Value::Null;
    chatforge_data::atomic_dir(out, |tmp| -> Result<()> {
        let weights = src.merged()?;
        let quantization = match opts.format {
            Format::Hf => {
                write_hf(src, &weights, tmp)?;
                None
            }
            Format::Gguf => {
                write_gguf(src, &weights, opts.gguf_quant, &tmp.join("model.gguf"))?;
                Some(opts.gguf_quant.name())
            }
            Format::Onnx => {
                onnx::write_onnx(&src.config, &weights, opts.onnx, tmp)?;
                // The tokenizer, config and chat template travel with the graph, as Optimum lays out.
                hf::write_side_files(src, tmp)?;
                onnx::verify(tmp)?;
                opts.onnx.int8.then_some("int8")
            }
        };
        let mut files: Vec<_> = std::fs::read_dir(tmp)
            .map_err(io_err(tmp))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        manifest = make_manifest(src, opts.format, quantization, &files)?;
        let text = serde_json::to_string_pretty(&manifest).map_err(|e| Error::Invalid(e.to_string()))?;
        let path = tmp.join("export_manifest.json");
        std::fs::write(&path, text + "\n").map_err(io_err(&path))
    })?;
    Ok(manifest)
}

/// `-o model.gguf`: the one file, as llama.cpp's tools write it (written beside and renamed into
/// place); its provenance is returned, not written: a GGUF carries its own metadata.
fn export_gguf_file(src: &ModelSource, opts: &ExportOptions, out: &Path) -> Result<serde_json::Value> {
    let tmp = chatforge_base::temp_sibling(out);
    let written = (|| -> Result<()> {
        write_gguf(src, &src.merged()?, opts.gguf_quant, &tmp)?;
        std::fs::rename(&tmp, out).map_err(io_err(out))
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    make_manifest(
        src,
        Format::Gguf,
        Some(opts.gguf_quant.name()),
        &[out.to_path_buf()],
    )
}

fn make_manifest(
    src: &ModelSource,
    format: Format,
    quantization: Option<&str>,
    paths: &[std::path::PathBuf],
) -> Result<serde_json::Value> {
    let mut files = Vec::new();
    for p in paths {
        files.push(FileEntry {
            path: p
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default(),
            bytes: std::fs::metadata(p).map_err(io_err(p))?.len(),
            sha256: chatforge_data::sha256_file(p)?,
        });
    }
    // The weights that went in, by hash, so an export can be traced to its checkpoint.
    let weight_files: Vec<serde_json::Value> = [
        Some(src.weights_dir.as_path()),
        src.adapter.as_deref(),
        src.base_dir.as_deref(),
    ]
    .into_iter()
    .flatten()
    .filter_map(|d| {
        let f = if d.is_file() {
            d.to_path_buf()
        } else {
            chatforge_model::weights_file(d)
                .ok()
                .or_else(|| Some(d.join("adapter_model.safetensors")).filter(|p| p.is_file()))?
        };
        let sha = chatforge_data::sha256_file(&f).ok()?;
        Some(serde_json::json!({"path": f.display().to_string(), "sha256": sha}))
    })
    .collect();
    let run_manifest = (src.kind == ModelKind::Run)
        .then(|| std::fs::read_to_string(chatforge_run::RunDir::new(&src.root).manifest()).ok())
        .flatten()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
    let state = std::fs::read_to_string(src.weights_dir.join(chatforge_run::STATE_FILE))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
    Ok(serde_json::json!({
        "format": format,
        "quantization": quantization,
        "source": {
            "path": src.root.display().to_string(),
            "kind": src.kind,
            "checkpoint": src.weights_dir.display().to_string(),
            "step": state.as_ref().and_then(|s| s.get("step").cloned()),
            "adapter": src.adapter.as_ref().map(|a| a.display().to_string()),
            "base": src.base_dir.as_ref().map(|b| b.display().to_string()),
            "qlora_base": src.quant,
            "weights": weight_files,
        },
        "model": src.config.to_hf(),
        "n_params": src.config.n_params(),
        "files": files,
        "run_manifest": run_manifest,
        "chatforge": env!("CARGO_PKG_VERSION"),
        "created_unix": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    }))
}
