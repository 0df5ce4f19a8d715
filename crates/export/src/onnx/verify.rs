//! `chatforge export verify`: checks an ONNX export without running it — the opset, the decoder's
//! inputs and outputs, that every node reads only values defined before it, and that every
//! initializer's bytes (inline or in the external data file) match its shape and type.

use std::collections::HashSet;
use std::path::Path;

use prost::Message;
use serde::Serialize;

use crate::{Error, Result, io_err};
use chatforge_model::io::onnx::{ModelProto, dtype};

/// What a verified ONNX file holds.
#[derive(Debug, Clone, Serialize)]
pub struct OnnxSummary {
    pub opset: i64,
    pub ir_version: i64,
    pub nodes: usize,
    pub initializers: usize,
    pub parameters: u64,
    /// Initializers stored in the external data file.
    pub external: usize,
    pub layers: usize,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    /// Node counts by operator.
    pub ops: std::collections::BTreeMap<String, usize>,
}

fn bad(path: &Path, msg: String) -> Error {
    Error::Invalid(format!("{}: {msg}", path.display()))
}

/// Reads and checks `model.onnx` (a file, or a directory holding one).
pub fn verify(path: &Path) -> Result<OnnxSummary> {
    let file = if path.is_dir() {
        path.join("model.onnx")
    } else {
        path.to_path_buf()
    };
    let bytes = std::fs::read(&file).map_err(io_err(&file))?;
    let model =
        ModelProto::decode(bytes.as_slice()).map_err(|e| bad(&file, format!("not an ONNX model: {e}")))?;
    let opset = model
        .opset_import
        .iter()
        .filter(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .max()
        .ok_or_else(|| bad(&file, "no opset_import for the default domain".into()))?;
    if opset < 17 {
        return Err(bad(&file, format!("opset {opset}: at least 17 is required")));
    }
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| bad(&file, "no graph".into()))?;
    let inputs: Vec<String> = graph.input.iter().map(|v| v.name.clone()).collect();
    let outputs: Vec<String> = graph.output.iter().map(|v| v.name.clone()).collect();
    let layers = inputs
        .iter()
        .filter(|n| n.starts_with("past_key_values.") && n.ends_with(".key"))
        .count();
    let mut required: Vec<String> = vec!["input_ids".into(), "attention_mask".into(), "position_ids".into()];
    let mut required_out: Vec<String> = vec!["logits".into()];
    for i in 0..layers {
        for kv in ["key", "value"] {
            required.push(format!("past_key_values.{i}.{kv}"));
            required_out.push(format!("present.{i}.{kv}"));
        }
    }
    if layers == 0 {
        return Err(bad(
            &file,
            "no past_key_values inputs: not a decoder with a KV cache".into(),
        ));
    }
    for r in &required {
        if !inputs.contains(r) {
            return Err(bad(&file, format!("missing input {r}")));
        }
    }
    for r in &required_out {
        if !outputs.contains(r) {
            return Err(bad(&file, format!("missing output {r}")));
        }
    }
    // Initializers: bytes match shape × type, inline or external.
    let dir = file.parent().unwrap_or(Path::new("."));
    let mut defined: HashSet<&str> = inputs.iter().map(String::as_str).collect();
    let (mut parameters, mut external) = (0u64, 0usize);
    for t in &graph.initializer {
        let n: usize = t.dims.iter().map(|&d| d.max(0) as usize).product();
        let size = dtype::size(t.data_type).ok_or_else(|| {
            bad(
                &file,
                format!("initializer {}: unsupported type {}", t.name, t.data_type),
            )
        })?;
        let len = match chatforge_model::io::onnx::external_range(t) {
            Some(range) => {
                let (loc, offset, length) = range.map_err(|m| bad(&file, format!("{}: {m}", t.name)))?;
                let data = dir.join(&loc);
                let have = std::fs::metadata(&data).map_err(io_err(&data))?.len();
                if offset.checked_add(length).is_none_or(|end| end > have) {
                    return Err(bad(
                        &file,
                        format!(
                            "{}: bytes {offset}..{} beyond the end of {loc} ({have} bytes)",
                            t.name,
                            offset + length
                        ),
                    ));
                }
                external += 1;
                length as usize
            }
            None => t.raw_data.len(),
        };
        if len != n * size {
            return Err(bad(
                &file,
                format!(
                    "initializer {} holds {len} bytes, its shape {:?} needs {}",
                    t.name,
                    t.dims,
                    n * size
                ),
            ));
        }
        parameters += n as u64;
        if !defined.insert(t.name.as_str()) {
            return Err(bad(&file, format!("{} is defined twice", t.name)));
        }
    }
    let mut ops = std::collections::BTreeMap::new();
    for node in &graph.node {
        for i in node.input.iter().filter(|i| !i.is_empty()) {
            if !defined.contains(i.as_str()) {
                return Err(bad(
                    &file,
                    format!(
                        "node {} ({}) reads {i}, which nothing defines before it",
                        node.name, node.op_type
                    ),
                ));
            }
        }
        for o in &node.output {
            if !defined.insert(o.as_str()) {
                return Err(bad(&file, format!("{o} is defined twice")));
            }
        }
        *ops.entry(node.op_type.clone()).or_insert(0) += 1;
    }
    for o in &outputs {
        if !defined.contains(o.as_str()) {
            return Err(bad(&file, format!("output {o} is never computed")));
        }
    }
    Ok(OnnxSummary {
        opset,
        ir_version: model.ir_version,
        nodes: graph.node.len(),
        initializers: graph.initializer.len(),
        parameters,
        external,
        layers,
        inputs,
        outputs,
        ops,
    })
}
