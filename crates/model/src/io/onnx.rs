//! ONNX files: the part of ONNX's protobuf schema (`onnx.proto3`, IR version 8+) that a decoder
//! graph needs, as prost messages (field numbers are the schema's; fields we never write are left
//! out, and prost skips them when decoding), and [`read_weights`], which reads the weights of a
//! graph chatforge exported back by their Hugging Face names.

#![allow(clippy::derive_partial_eq_without_eq)]

/// `TensorProto.DataType`.
pub mod dtype {
    pub const FLOAT: i32 = 1;
    pub const UINT8: i32 = 2;
    pub const INT8: i32 = 3;
    pub const INT32: i32 = 6;
    pub const INT64: i32 = 7;
    pub const BOOL: i32 = 9;

    /// Bytes per element.
    pub fn size(t: i32) -> Option<usize> {
        match t {
            FLOAT | INT32 => Some(4),
            UINT8 | INT8 | BOOL => Some(1),
            INT64 => Some(8),
            _ => None,
        }
    }
}

/// `AttributeProto.AttributeType`.
pub mod attr_type {
    pub const FLOAT: i32 = 1;
    pub const INT: i32 = 2;
    pub const INTS: i32 = 7;
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelProto {
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
    #[prost(string, tag = "2")]
    pub producer_name: String,
    #[prost(string, tag = "3")]
    pub producer_version: String,
    #[prost(string, tag = "6")]
    pub doc_string: String,
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    #[prost(message, repeated, tag = "14")]
    pub metadata_props: Vec<StringStringEntryProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct OperatorSetIdProto {
    #[prost(string, tag = "1")]
    pub domain: String,
    #[prost(int64, tag = "2")]
    pub version: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StringStringEntryProto {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    #[prost(string, tag = "10")]
    pub doc_string: String,
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(string, tag = "4")]
    pub op_type: String,
    #[prost(string, tag = "7")]
    pub domain: String,
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct AttributeProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(int32, tag = "20")]
    pub r#type: i32,
    #[prost(float, tag = "2")]
    pub f: f32,
    #[prost(int64, tag = "3")]
    pub i: i64,
    #[prost(message, optional, tag = "5")]
    pub t: Option<TensorProto>,
    #[prost(int64, repeated, tag = "8")]
    pub ints: Vec<i64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    pub dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    #[prost(string, tag = "8")]
    pub name: String,
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
    #[prost(message, repeated, tag = "13")]
    pub external_data: Vec<StringStringEntryProto>,
    /// 0 DEFAULT (in `raw_data`), 1 EXTERNAL.
    #[prost(int32, tag = "14")]
    pub data_location: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueInfoProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TypeProto {
    #[prost(message, optional, tag = "1")]
    pub tensor_type: Option<TypeProtoTensor>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TypeProtoTensor {
    #[prost(int32, tag = "1")]
    pub elem_type: i32,
    #[prost(message, optional, tag = "2")]
    pub shape: Option<TensorShapeProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShapeProto {
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<Dimension>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Dimension {
    #[prost(oneof = "DimValue", tags = "1, 2")]
    pub value: Option<DimValue>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum DimValue {
    #[prost(int64, tag = "1")]
    DimValue(i64),
    #[prost(string, tag = "2")]
    DimParam(String),
}

/// Where an initializer stored outside the graph lies: the file (relative to the model's folder),
/// the offset and the length; `None` for one stored inline. A location that leaves the folder, or
/// a missing location or length, is an error message.
pub fn external_range(t: &TensorProto) -> Option<Result<(String, u64, u64), String>> {
    if t.data_location != 1 {
        return None;
    }
    let get = |k: &str| {
        t.external_data
            .iter()
            .find(|e| e.key == k)
            .map(|e| e.value.clone())
    };
    Some((|| {
        let loc = get("location").ok_or("external data without a location")?;
        if loc.contains("..") || std::path::Path::new(&loc).is_absolute() {
            return Err(format!(
                "external data location {loc:?} leaves the model's folder"
            ));
        }
        let offset: u64 = get("offset").and_then(|o| o.parse().ok()).unwrap_or(0);
        let length: u64 = get("length")
            .and_then(|o| o.parse().ok())
            .ok_or("external data without a length")?;
        Ok((loc, offset, length))
    })())
}

/// The bytes of an initializer: inline, or in the external data file beside `file`.
pub fn initializer_bytes(file: &std::path::Path, t: &TensorProto) -> crate::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let bad = |msg: String| crate::Error::Weights {
        path: file.to_path_buf(),
        msg: format!("{}: {msg}", t.name),
    };
    let (loc, offset, length) = match external_range(t) {
        None => return Ok(t.raw_data.clone()),
        Some(r) => r.map_err(bad)?,
    };
    let data = file.parent().unwrap_or(std::path::Path::new(".")).join(&loc);
    let io = |e: std::io::Error| crate::Error::Io {
        path: data.clone(),
        source: e,
    };
    let mut f = std::fs::File::open(&data).map_err(io)?;
    let have = f.metadata().map_err(io)?.len();
    if offset.checked_add(length).is_none_or(|end| end > have) {
        return Err(bad(format!(
            "bytes {offset}+{length} beyond the end of {loc} ({have} bytes)"
        )));
    }
    f.seek(SeekFrom::Start(offset)).map_err(io)?;
    let mut out = vec![0u8; length as usize];
    f.read_exact(&mut out).map_err(io)?;
    Ok(out)
}

/// The weights of a decoder graph chatforge exported (`model.onnx`, a file or its folder), by
/// their Hugging Face names: the f32 initializers named as checkpoint tensors, and the int8
/// export's quantised linear weights (`NAME.int8` with its per-column `NAME.scale`) dequantised.
/// Graphs from other exporters name their initializers otherwise and are refused by the caller
/// when tensors are missing.
pub fn read_weights(path: &std::path::Path) -> crate::Result<crate::Weights> {
    use prost::Message as _;
    let file = if path.is_dir() {
        path.join("model.onnx")
    } else {
        path.to_path_buf()
    };
    let bytes = std::fs::read(&file).map_err(|e| crate::Error::Io {
        path: file.clone(),
        source: e,
    })?;
    let bad = |msg: String| crate::Error::Weights {
        path: file.clone(),
        msg,
    };
    let model = ModelProto::decode(bytes.as_slice()).map_err(|e| bad(format!("not an ONNX model: {e}")))?;
    let graph = model.graph.ok_or_else(|| bad("no graph".into()))?;
    let mut out = crate::Weights::new();
    let mut quant: std::collections::HashMap<String, (Vec<usize>, Vec<u8>)> = Default::default();
    let mut scales: std::collections::HashMap<String, Vec<f32>> = Default::default();
    for t in &graph.initializer {
        let dims: Vec<usize> = t.dims.iter().map(|&d| d.max(0) as usize).collect();
        let known = |name: &str| crate::layout::Slot::from_name(name).is_some();
        if t.data_type == dtype::FLOAT && known(&t.name) {
            let data = super::f32s_le(&initializer_bytes(&file, t)?);
            let tensor = crate::Tensor::new(dims, data).map_err(|e| bad(format!("{}: {e}", t.name)))?;
            out.insert(t.name.clone(), tensor);
        } else if let Some(name) = t.name.strip_suffix(".int8").filter(|n| known(n)) {
            quant.insert(name.to_string(), (dims, initializer_bytes(&file, t)?));
        } else if let Some(name) = t.name.strip_suffix(".scale").filter(|n| known(n)) {
            scales.insert(name.to_string(), super::f32s_le(&initializer_bytes(&file, t)?));
        }
    }
    for (name, (dims, q)) in quant {
        let scale = scales
            .remove(&name)
            .ok_or_else(|| bad(format!("{name}.int8 has no {name}.scale")))?;
        let cols = *dims.last().unwrap_or(&0);
        if cols == 0 || scale.len() != cols || q.len() % cols != 0 {
            return Err(bad(format!(
                "{name}: int8 weights {dims:?} do not fit {} scales",
                scale.len()
            )));
        }
        let data = q
            .iter()
            .enumerate()
            .map(|(i, &b)| f32::from(b as i8) * scale[i % cols])
            .collect();
        let tensor = crate::Tensor::new(dims, data).map_err(|e| bad(format!("{name}: {e}")))?;
        out.insert(name, tensor);
    }
    if out.is_empty() {
        return Err(bad(
            "no initializer carries a GPT-2 tensor name: not a graph chatforge exported".into(),
        ));
    }
    Ok(out)
}
