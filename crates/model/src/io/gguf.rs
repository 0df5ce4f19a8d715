//! The GGUF container (llama.cpp's file format, versions 2 and 3): a header, typed metadata, the
//! tensors' names, shapes, types and offsets, then the aligned data. This module reads and writes
//! the container and converts tensor data (f32, f16, bf16 and the [`crate::quant`] blocks) to and
//! from f32; what the keys and tensor names mean for a model lives with its readers and writers.
//!
//! Reading bounds everything the file claims (counts, string and array lengths, nesting, shapes,
//! ranges) by the file's size before allocating for it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::quant::{BLOCK, QuantKind, dequantize_block, quantize_block};
use crate::tensor::{bf16_to_f32, f16_to_f32, f32_to_bf16, f32_to_f16};
use crate::{Error, Result};

/// GGUF's magic number: "GGUF" little-endian.
pub const MAGIC: u32 = 0x4655_4747;
/// The alignment of the data section and of each tensor when the file names none.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Most tensors or metadata keys a file may declare.
const MAX_COUNT: u64 = 1 << 20;
/// Deepest nesting of arrays.
const MAX_DEPTH: usize = 8;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// An integer value of any width, when it is one and not negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(x) => Some(u64::from(x)),
            Value::U16(x) => Some(u64::from(x)),
            Value::U32(x) => Some(u64::from(x)),
            Value::U64(x) => Some(x),
            Value::I8(x) => u64::try_from(x).ok(),
            Value::I16(x) => u64::try_from(x).ok(),
            Value::I32(x) => u64::try_from(x).ok(),
            Value::I64(x) => u64::try_from(x).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(x) => Some(f64::from(x)),
            Value::F64(x) => Some(x),
            _ => self.as_u64().map(|x| x as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// GGUF's type id of this value.
    fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::Str(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }
}

/// The tensor types chatforge reads and writes (ggml's ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q8_0,
    BF16,
}

impl GgmlType {
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q8_0 => 8,
            GgmlType::BF16 => 30,
        }
    }

    pub fn from_id(id: u32) -> Option<GgmlType> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            8 => GgmlType::Q8_0,
            30 => GgmlType::BF16,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "f32",
            GgmlType::F16 => "f16",
            GgmlType::Q4_0 => "q4_0",
            GgmlType::Q8_0 => "q8_0",
            GgmlType::BF16 => "bf16",
        }
    }

    fn quant(self) -> Option<QuantKind> {
        match self {
            GgmlType::Q4_0 => Some(QuantKind::Q4),
            GgmlType::Q8_0 => Some(QuantKind::Q8),
            _ => None,
        }
    }

    /// Bytes of `n` values (`n` a multiple of the block for block types), `None` on overflow.
    fn bytes(self, n: u64) -> Option<u64> {
        match self {
            GgmlType::F32 => n.checked_mul(4),
            GgmlType::F16 | GgmlType::BF16 => n.checked_mul(2),
            GgmlType::Q4_0 | GgmlType::Q8_0 => {
                let kind = self.quant()?;
                (n / BLOCK as u64).checked_mul(kind.block_bytes() as u64)
            }
        }
    }
}

/// One tensor as the header describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Row-major shape (ggml lists dimensions innermost first; this is the reverse).
    pub shape: Vec<usize>,
    /// ggml's type id (see [`GgmlType::from_id`]).
    pub type_id: u32,
    /// From the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    pub fn elem_count(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }

    /// The type's name (`f32`, `q8_0`, …), or `type N` for one chatforge does not read.
    pub fn type_name(&self) -> String {
        GgmlType::from_id(self.type_id).map_or_else(|| format!("type {}", self.type_id), |t| t.name().into())
    }
}

/// A GGUF file's header: everything but the tensor data.
#[derive(Debug, Clone)]
pub struct Gguf {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Where the data section starts in the file.
    pub data_start: u64,
}

fn bad(path: &Path, msg: impl Into<String>) -> Error {
    Error::Weights {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// A reader that knows how many bytes are left, so no claimed length can exceed them.
struct Input<R> {
    r: R,
    left: u64,
}

impl<R: Read> Input<R> {
    fn bytes(&mut self, n: u64) -> std::result::Result<Vec<u8>, String> {
        if n > self.left {
            return Err(format!("a length of {n} bytes runs past the end of the file"));
        }
        let mut b = vec![0u8; n as usize];
        self.r.read_exact(&mut b).map_err(|e| e.to_string())?;
        self.left -= n;
        Ok(b)
    }

    fn arr<const N: usize>(&mut self) -> std::result::Result<[u8; N], String> {
        let b = self.bytes(N as u64)?;
        let mut a = [0u8; N];
        a.copy_from_slice(&b);
        Ok(a)
    }

    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.arr()?))
    }

    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.arr()?))
    }

    fn string(&mut self) -> std::result::Result<String, String> {
        let n = self.u64()?;
        String::from_utf8(self.bytes(n)?).map_err(|_| "a string that is not UTF-8".to_string())
    }

    fn value(&mut self, ty: u32, depth: usize) -> std::result::Result<Value, String> {
        Ok(match ty {
            0 => Value::U8(self.arr::<1>()?[0]),
            1 => Value::I8(self.arr::<1>()?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.arr()?)),
            3 => Value::I16(i16::from_le_bytes(self.arr()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.arr()?)),
            6 => Value::F32(f32::from_le_bytes(self.arr()?)),
            7 => Value::Bool(self.arr::<1>()?[0] != 0),
            8 => Value::Str(self.string()?),
            9 => {
                if depth >= MAX_DEPTH {
                    return Err("arrays nested too deep".into());
                }
                let (inner, n) = (self.u32()?, self.u64()?);
                // Every element takes at least a byte: a longer array cannot be in the file.
                if n > self.left {
                    return Err(format!("an array of {n} items runs past the end of the file"));
                }
                let mut items = Vec::with_capacity(n.min(1 << 16) as usize);
                for _ in 0..n {
                    items.push(self.value(inner, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.arr()?)),
            12 => Value::F64(f64::from_le_bytes(self.arr()?)),
            t => return Err(format!("metadata value type {t}")),
        })
    }
}

/// Reads the header of the GGUF file at `path`, checking every tensor's range and alignment.
pub fn read_header(path: &Path) -> Result<Gguf> {
    let file = File::open(path).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut input = Input {
        r: BufReader::new(file),
        left: len,
    };
    header(&mut input, len).map_err(|m| bad(path, format!("not a readable GGUF file: {m}")))
}

fn header<R: Read>(input: &mut Input<R>, len: u64) -> std::result::Result<Gguf, String> {
    if input.u32()? != MAGIC {
        return Err("no GGUF magic number".into());
    }
    let version = input.u32()?;
    if !(2..=3).contains(&version) {
        return Err(format!("version {version} (chatforge reads 2 and 3)"));
    }
    let (n_tensors, n_kv) = (input.u64()?, input.u64()?);
    if n_tensors > MAX_COUNT || n_kv > MAX_COUNT {
        return Err(format!("{n_tensors} tensors and {n_kv} keys claimed"));
    }
    let mut metadata = BTreeMap::new();
    for _ in 0..n_kv {
        let key = input.string()?;
        let ty = input.u32()?;
        let v = input.value(ty, 0)?;
        metadata.insert(key, v);
    }
    let mut tensors = Vec::with_capacity(n_tensors as usize);
    for _ in 0..n_tensors {
        let name = input.string()?;
        let n_dims = input.u32()?;
        if n_dims > 4 {
            return Err(format!("tensor {name}: {n_dims} dimensions"));
        }
        let mut shape = (0..n_dims)
            .map(|_| input.u64().map(|d| d as usize))
            .collect::<std::result::Result<Vec<usize>, String>>()?;
        shape.reverse();
        let (type_id, offset) = (input.u32()?, input.u64()?);
        tensors.push(TensorInfo {
            name,
            shape,
            type_id,
            offset,
        });
    }
    let alignment = metadata
        .get("general.alignment")
        .and_then(Value::as_u64)
        .filter(|&a| a > 0 && a <= 1 << 16)
        .unwrap_or(DEFAULT_ALIGNMENT);
    let data_start = (len - input.left).next_multiple_of(alignment);
    let data_len = len.saturating_sub(data_start);
    for t in &tensors {
        // Data must start on the alignment: an offset off it is a corrupt or crafted file whose
        // values would be read from the wrong bytes.
        if t.offset % alignment != 0 {
            return Err(format!(
                "tensor {} starts at offset {}, not a multiple of the alignment {alignment}",
                t.name, t.offset
            ));
        }
        let n = t
            .shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
            .ok_or_else(|| format!("tensor {}: shape {:?} overflows", t.name, t.shape))?;
        if let Some(ty) = GgmlType::from_id(t.type_id) {
            let row = t.shape.last().copied().unwrap_or(1) as u64;
            if ty.quant().is_some() && !row.is_multiple_of(BLOCK as u64) {
                return Err(format!("tensor {}: rows of {row} are not whole blocks", t.name));
            }
            let end = ty.bytes(n).and_then(|b| b.checked_add(t.offset));
            if end.is_none_or(|e| e > data_len) {
                return Err(format!(
                    "tensor {}: its data runs past the end of the file",
                    t.name
                ));
            }
        }
    }
    Ok(Gguf {
        version,
        metadata,
        tensors,
        alignment,
        data_start,
    })
}

impl Gguf {
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The values of `t` in f32, row-major, read from `file` (the file at `path`, opened once for
    /// all its tensors).
    pub fn read_f32(&self, file: &mut File, path: &Path, t: &TensorInfo) -> Result<Vec<f32>> {
        let ty = GgmlType::from_id(t.type_id).ok_or_else(|| {
            bad(
                path,
                format!("tensor {}: ggml type {} is not supported", t.name, t.type_id),
            )
        })?;
        let n = t.elem_count();
        let bytes = ty.bytes(n).unwrap_or(u64::MAX); // checked by `read_header`
        let mut buf = vec![0u8; bytes as usize];
        file.seek(SeekFrom::Start(self.data_start + t.offset))
            .and_then(|_| file.read_exact(&mut buf))
            .map_err(|e| bad(path, format!("tensor {}: {e}", t.name)))?;
        Ok(decode(&buf, ty, n as usize))
    }
}

/// `n` values of type `ty` from `bytes`.
pub fn decode(bytes: &[u8], ty: GgmlType, n: usize) -> Vec<f32> {
    match ty {
        GgmlType::F32 => super::f32s_le(bytes),
        GgmlType::F16 => bytes
            .chunks_exact(2)
            .map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
            .collect(),
        GgmlType::BF16 => bytes
            .chunks_exact(2)
            .map(|b| bf16_to_f32(u16::from_le_bytes([b[0], b[1]])))
            .collect(),
        GgmlType::Q4_0 | GgmlType::Q8_0 => {
            let kind = ty.quant().unwrap_or(QuantKind::Q8);
            let mut out = vec![0f32; n];
            for (vals, block) in out.chunks_mut(BLOCK).zip(bytes.chunks_exact(kind.block_bytes())) {
                dequantize_block(block, kind, vals);
            }
            out
        }
    }
}

/// A tensor to write: its name, row-major shape, type and encoded bytes.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub name: String,
    pub shape: Vec<usize>,
    pub ty: GgmlType,
    pub data: Vec<u8>,
}

/// Encodes row-major `values` of `shape` as `ty`; a block type whose rows are not whole blocks
/// (or a vector) falls back to f32, as llama.cpp's converters do.
pub fn encode(name: String, shape: Vec<usize>, values: &[f32], ty: GgmlType) -> Encoded {
    let row = shape.last().copied().unwrap_or(1);
    // Vectors (norms, biases) stay f32, as llama.cpp's converter keeps them (its CPU adds and
    // norms take no f16 operand); block formats need whole blocks per row.
    let ty = match ty.quant() {
        _ if shape.len() < 2 => GgmlType::F32,
        Some(_) if row % BLOCK != 0 => GgmlType::F32,
        _ => ty,
    };
    let data = match ty {
        GgmlType::F32 => values.iter().flat_map(|x| x.to_le_bytes()).collect(),
        GgmlType::F16 => values.iter().flat_map(|&x| f32_to_f16(x).to_le_bytes()).collect(),
        GgmlType::BF16 => values
            .iter()
            .flat_map(|&x| f32_to_bf16(x).to_le_bytes())
            .collect(),
        GgmlType::Q4_0 | GgmlType::Q8_0 => {
            let kind = ty.quant().unwrap_or(QuantKind::Q8);
            let bb = kind.block_bytes();
            let mut out = vec![0u8; values.len() / BLOCK * bb];
            for (vals, block) in values.chunks(BLOCK).zip(out.chunks_exact_mut(bb)) {
                quantize_block(vals, kind, block);
            }
            out
        }
    };
    Encoded {
        name,
        shape,
        ty,
        data,
    }
}

fn write_value(w: &mut impl Write, v: &Value) -> std::io::Result<()> {
    match v {
        Value::U8(x) => w.write_all(&[*x]),
        Value::I8(x) => w.write_all(&x.to_le_bytes()),
        Value::U16(x) => w.write_all(&x.to_le_bytes()),
        Value::I16(x) => w.write_all(&x.to_le_bytes()),
        Value::U32(x) => w.write_all(&x.to_le_bytes()),
        Value::I32(x) => w.write_all(&x.to_le_bytes()),
        Value::F32(x) => w.write_all(&x.to_le_bytes()),
        Value::Bool(b) => w.write_all(&[u8::from(*b)]),
        Value::Str(s) => {
            w.write_all(&(s.len() as u64).to_le_bytes())?;
            w.write_all(s.as_bytes())
        }
        Value::Array(items) => {
            // An empty array's element type is not recorded anywhere: u32 (any would do).
            let inner = items.first().map_or(4, Value::type_id);
            w.write_all(&inner.to_le_bytes())?;
            w.write_all(&(items.len() as u64).to_le_bytes())?;
            items.iter().try_for_each(|x| write_value(w, x))
        }
        Value::U64(x) => w.write_all(&x.to_le_bytes()),
        Value::I64(x) => w.write_all(&x.to_le_bytes()),
        Value::F64(x) => w.write_all(&x.to_le_bytes()),
    }
}

/// Writes a GGUF v3 file (through a temporary file): `metadata` in order, then `tensors`, each
/// aligned to [`DEFAULT_ALIGNMENT`].
pub fn write(path: &Path, metadata: &[(String, Value)], tensors: &[Encoded]) -> Result<()> {
    let a = DEFAULT_ALIGNMENT as usize;
    let pad = |n: usize| (a - n % a) % a;
    let mut head: Vec<u8> = Vec::new();
    let result = (|| -> std::io::Result<()> {
        let w = &mut head;
        w.write_all(&MAGIC.to_le_bytes())?;
        w.write_all(&3u32.to_le_bytes())?;
        w.write_all(&(tensors.len() as u64).to_le_bytes())?;
        w.write_all(&(metadata.len() as u64).to_le_bytes())?;
        for (k, v) in metadata {
            write_value(w, &Value::Str(k.clone()))?;
            w.write_all(&v.type_id().to_le_bytes())?;
            write_value(w, v)?;
        }
        let mut offset = 0usize;
        for t in tensors {
            write_value(w, &Value::Str(t.name.clone()))?;
            w.write_all(&(t.shape.len() as u32).to_le_bytes())?;
            for &d in t.shape.iter().rev() {
                w.write_all(&(d as u64).to_le_bytes())?;
            }
            w.write_all(&t.ty.id().to_le_bytes())?;
            w.write_all(&(offset as u64).to_le_bytes())?;
            offset += t.data.len() + pad(t.data.len());
        }
        let n = w.len();
        w.extend(std::iter::repeat_n(0u8, pad(n)));
        Ok(())
    })();
    result.map_err(|e| bad(path, e.to_string()))?;
    chatforge_base::atomic_write(path, |w| {
        w.write_all(&head)?;
        for t in tensors {
            w.write_all(&t.data)?;
            w.write_all(&vec![0u8; pad(t.data.len())])?;
        }
        Ok(())
    })
    .map_err(|e| bad(path, e.to_string()))
}

/// For a tensor llama.cpp's `llama` architecture stores with its rotary pairs interleaved (q and
/// k of `LlamaForCausalLM`, which HF keeps as two halves per head: `rotate_half`), its number of
/// heads; `None` for every other tensor (Qwen2 keeps HF's order: llama.cpp rotates it as NeoX).
pub fn rope_permuted(cfg: &crate::GptConfig, slot: crate::layout::Slot) -> Option<usize> {
    use crate::layout::{Linear, Part, Slot};
    if cfg.arch != crate::Arch::Llama {
        return None;
    }
    match slot {
        Slot::BlockLinear(_, Linear::Q, Part::Weight) => Some(cfg.n_head),
        Slot::BlockLinear(_, Linear::K, Part::Weight) => Some(cfg.n_kv_head),
        _ => None,
    }
}

/// The rows of an `(heads · d, cols)` matrix from HF's order (each head's first halves, then
/// second halves) to llama.cpp's (pairs side by side), as its converter permutes them; with
/// `inverse`, back.
pub fn permute_rope_rows(data: &[f32], rows: usize, heads: usize, inverse: bool) -> Vec<f32> {
    let cols = data.len().checked_div(rows).unwrap_or(0);
    let d = rows.checked_div(heads).unwrap_or(0);
    if cols == 0 || d < 2 || rows * cols != data.len() || d * heads != rows {
        return data.to_vec();
    }
    let half = d / 2;
    let mut out = vec![0f32; data.len()];
    for h in 0..heads {
        for j in 0..half {
            for s in 0..2 {
                let hf = h * d + s * half + j;
                let gg = h * d + 2 * j + s;
                let (from, to) = if inverse { (gg, hf) } else { (hf, gg) };
                out[to * cols..(to + 1) * cols].copy_from_slice(&data[from * cols..(from + 1) * cols]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trips_metadata_and_every_type() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.gguf");
        let values: Vec<f32> = (0..64).map(|i| (i as f32 - 20.0) / 8.0).collect();
        let meta = vec![
            ("general.architecture".to_string(), Value::Str("gpt2".into())),
            ("n".to_string(), Value::U32(7)),
            (
                "xs".to_string(),
                Value::Array(vec![Value::I32(-1), Value::I32(2)]),
            ),
        ];
        let types = [
            GgmlType::F32,
            GgmlType::F16,
            GgmlType::BF16,
            GgmlType::Q8_0,
            GgmlType::Q4_0,
        ];
        let tensors: Vec<Encoded> = types
            .iter()
            .map(|&ty| encode(ty.name().into(), vec![2, 32], &values, ty))
            .chain([encode("vec".into(), vec![64], &values, GgmlType::Q8_0)])
            .collect();
        write(&p, &meta, &tensors).unwrap();
        let g = read_header(&p).unwrap();
        assert_eq!(g.version, 3);
        assert_eq!(g.metadata["n"].as_u64(), Some(7));
        assert_eq!(g.metadata["xs"], meta[2].1);
        assert_eq!(g.tensor("vec").unwrap().type_name(), "f32", "a vector stays f32");
        for (ty, bound) in types.iter().zip([0.0, 2e-3, 1e-2, 0.03, 0.4]) {
            let t = g.tensor(ty.name()).unwrap();
            assert_eq!(t.shape, [2, 32]);
            let back = g.read_f32(&mut File::open(&p).unwrap(), &p, t).unwrap();
            let err = back
                .iter()
                .zip(&values)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(err <= bound, "{ty:?}: {err}");
        }
    }

    #[test]
    fn claims_the_file_cannot_hold_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.gguf");
        let header = |n_t: u64, n_kv: u64, rest: &[u8]| -> Vec<u8> {
            let mut b = MAGIC.to_le_bytes().to_vec();
            b.extend(3u32.to_le_bytes());
            b.extend(n_t.to_le_bytes());
            b.extend(n_kv.to_le_bytes());
            b.extend(rest);
            b
        };
        let mut huge_string = 4u64.to_le_bytes().to_vec();
        huge_string.extend(b"key\0");
        huge_string.extend(8u32.to_le_bytes());
        huge_string.extend(u64::MAX.to_le_bytes());
        let mut huge_array = 1u64.to_le_bytes().to_vec();
        huge_array.extend(b"k");
        huge_array.extend(9u32.to_le_bytes());
        huge_array.extend(4u32.to_le_bytes());
        huge_array.extend((1u64 << 40).to_le_bytes());
        let mut past_end = 1u64.to_le_bytes().to_vec();
        past_end.extend(b"t");
        past_end.extend(1u32.to_le_bytes());
        past_end.extend(1000u64.to_le_bytes());
        past_end.extend(0u32.to_le_bytes());
        past_end.extend(0u64.to_le_bytes());
        for (bytes, why) in [
            (b"GGUF".to_vec(), "short"),
            (header(u64::MAX, 0, &[]), "count"),
            (header(0, 1, &huge_string), "string"),
            (header(0, 1, &huge_array), "array"),
            (header(1, 0, &past_end), "range"),
        ] {
            std::fs::write(&p, &bytes).unwrap();
            let e = read_header(&p).unwrap_err().to_string();
            assert!(e.contains("bad.gguf"), "{why}: {e}");
        }
    }

    #[test]
    fn rope_rows_permute_as_llama_cpp_and_back() {
        // Two heads of d = 4, one column: HF's halves [a0 a1 | b0 b1] become [a0 b0 a1 b1].
        let hf: Vec<f32> = (0..8).map(|x| x as f32).collect();
        let gg = super::permute_rope_rows(&hf, 8, 2, false);
        assert_eq!(gg, [0., 2., 1., 3., 4., 6., 5., 7.]);
        assert_eq!(super::permute_rope_rows(&gg, 8, 2, true), hf);
    }
}
