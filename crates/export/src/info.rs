//! `chatforge export info`: what an exported file or folder holds.

use std::collections::BTreeMap;
use std::path::Path;

use chatforge_model::io::{gguf, safetensors};
use serde::Serialize;

use crate::{Error, Result, io_err};

/// What an export holds.
#[derive(Debug, Clone, Serialize)]
pub struct Info {
    pub path: String,
    /// `hf`, `onnx`, `gguf`.
    pub format: String,
    pub tensors: usize,
    pub parameters: u64,
    /// Tensor count per dtype (for ONNX: node count per operator).
    pub dtypes: BTreeMap<String, usize>,
    /// Bytes on disk (the folder's files, or the file).
    pub bytes: u64,
    /// Tokenizer: vocabulary size and chat template presence.
    pub tokenizer: serde_json::Value,
    /// `export_manifest.json` beside it, if any (with the producing run's manifest).
    pub manifest: Option<serde_json::Value>,
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

fn read_json(p: &Path) -> Option<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()
}

/// Inspects an export directory, an HF folder or a GGUF file.
pub fn info(path: &Path) -> Result<Info> {
    let (dir, gguf) = if path.is_dir() {
        let g = path.join("model.gguf");
        (path.to_path_buf(), g.is_file().then_some(g))
    } else {
        let dir = path
            .parent()
            .map_or_else(|| Path::new(".").to_path_buf(), Path::to_path_buf);
        (
            dir,
            chatforge_run::gguf::is_gguf(path).then(|| path.to_path_buf()),
        )
    };
    let manifest = read_json(&dir.join("export_manifest.json"));
    let onnx = if path.is_dir() {
        path.join("model.onnx")
    } else {
        path.to_path_buf()
    };
    if onnx.extension().is_some_and(|e| e == "onnx") && onnx.is_file() {
        let s = crate::onnx::verify(&onnx)?;
        let vocab = chatforge_tokenizer::ChatTokenizer::load(&dir)
            .ok()
            .map(|t| t.vocab_size());
        return Ok(Info {
            path: onnx.display().to_string(),
            format: "onnx".into(),
            tensors: s.initializers,
            parameters: s.parameters,
            dtypes: s.ops.clone(),
            bytes: dir_bytes(&dir),
            tokenizer: serde_json::json!({
                "tokens": vocab,
                "opset": s.opset,
                "kv_cache_layers": s.layers,
                "external_initializers": s.external,
            }),
            manifest,
        });
    }
    if let Some(g) = gguf {
        let c = gguf::read_header(&g)?;
        let mut dtypes = BTreeMap::new();
        let mut parameters = 0u64;
        for t in &c.tensors {
            *dtypes.entry(t.type_name()).or_insert(0) += 1;
            parameters += t.elem_count();
        }
        let vocab = c
            .metadata
            .get("tokenizer.ggml.tokens")
            .and_then(gguf::Value::as_array)
            .map(<[gguf::Value]>::len);
        return Ok(Info {
            path: g.display().to_string(),
            format: "gguf".into(),
            tensors: c.tensors.len(),
            parameters,
            dtypes,
            bytes: std::fs::metadata(&g).map_err(io_err(&g))?.len(),
            tokenizer: serde_json::json!({
                "tokens": vocab,
                "chat_template": c.metadata.contains_key("tokenizer.chat_template"),
                "huggingface_json": c.metadata.contains_key("tokenizer.huggingface.json"),
            }),
            manifest,
        });
    }
    let weights = chatforge_model::weights_file(path).map_err(|_| {
        Error::Invalid(format!(
            "{}: not an export (no model.gguf or model.safetensors)",
            path.display()
        ))
    })?;
    let (tensors, _) = safetensors::header(&weights)?;
    let mut dtypes = BTreeMap::new();
    let mut parameters = 0u64;
    for t in &tensors {
        *dtypes.entry(t.dtype.to_lowercase()).or_insert(0) += 1;
        parameters += t.elem_count() as u64;
    }
    let tc = read_json(&path.join("tokenizer_config.json"));
    let vocab = chatforge_tokenizer::ChatTokenizer::load(path)
        .ok()
        .map(|t| t.vocab_size());
    Ok(Info {
        path: path.display().to_string(),
        format: "hf".into(),
        tensors: tensors.len(),
        parameters,
        dtypes,
        bytes: dir_bytes(path),
        tokenizer: serde_json::json!({
            "tokens": vocab,
            "chat_template": tc.as_ref().is_some_and(|t| t.get("chat_template").is_some()),
        }),
        manifest,
    })
}
