//! PyTorch's `torch.save` files (`pytorch_model.bin`, `adapter_model.bin`): a zip archive of a
//! pickle (`<archive>/data.pkl`, the state dict whose tensors point at storages) and one raw
//! little-endian entry per storage (`<archive>/data/<key>`). The pickle runs on a small machine
//! that knows the opcodes `torch.save` writes and builds only lists, dicts, tuples, scalars and
//! tensor references: it calls nothing, so a hostile file cannot run code.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use crate::tensor::{Tensor, bf16_to_f32, f16_to_f32};
use crate::{Error, Result};

/// The largest pickle read (a state dict's pickle is kilobytes).
const MAX_PICKLE: u64 = 64 << 20;
/// The deepest the pickle's stack and memo may grow.
const MAX_ITEMS: usize = 1 << 22;

fn bad(path: &Path, msg: impl Into<String>) -> Error {
    Error::Weights {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// A tensor the pickle describes: its storage, element type and view.
#[derive(Debug, Clone, PartialEq)]
struct TensorRef {
    key: String,
    /// `F32`, `F16`, `BF16`, `F64`; other storages (masks, integers) are skipped.
    dtype: Option<&'static str>,
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq)]
enum V {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<V>),
    List(Vec<V>),
    Dict(Vec<(V, V)>),
    Global(String, String),
    /// A call the machine does not perform: what and with which arguments.
    Call(Box<V>, Vec<V>),
    Persistent(Box<V>),
    Tensor(TensorRef),
    Mark,
}

/// Every float tensor of a `torch.save` file, in f32, in the state dict's order.
pub fn read(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let file = std::fs::File::open(path).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
    let mut zip = zip::ZipArchive::new(file).map_err(|e| {
        bad(
            path,
            format!("not a PyTorch zip archive (torch ≥ 1.6 saves one): {e}"),
        )
    })?;
    let pkl = zip
        .file_names()
        .filter_map(|n| n.ok().map(|n| n.into_owned()))
        .filter(|n| n.ends_with("data.pkl"))
        .min_by_key(String::len)
        .ok_or_else(|| bad(path, "no data.pkl in the archive"))?;
    let prefix = pkl.trim_end_matches("data.pkl").to_string();
    let mut entry = |name: &str, cap: u64| -> Result<Vec<u8>> {
        let mut e = zip.by_name(name).map_err(|e| bad(path, format!("{name}: {e}")))?;
        if e.size() > cap {
            return Err(bad(
                path,
                format!("{name}: {} bytes is more than the file holds", e.size()),
            ));
        }
        let mut out = Vec::with_capacity(e.size() as usize);
        e.by_ref()
            .take(cap)
            .read_to_end(&mut out)
            .map_err(|e| bad(path, format!("{name}: {e}")))?;
        Ok(out)
    };
    let pickle = entry(&pkl, MAX_PICKLE)?;
    let root = Machine::default()
        .run(&pickle)
        .map_err(|m| bad(path, format!("data.pkl: {m}")))?;
    let V::Dict(items) = root else {
        return Err(bad(path, "data.pkl holds no state dict"));
    };
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut out = Vec::new();
    for (k, v) in items {
        let (V::Str(name), V::Tensor(t)) = (k, v) else {
            continue;
        };
        let Some(dtype) = t.dtype else { continue };
        if !storages.contains_key(&t.key) {
            let bytes = entry(&format!("{prefix}data/{}", t.key), size)?;
            storages.insert(t.key.clone(), bytes);
        }
        let bytes = &storages[&t.key];
        let data = gather(bytes, dtype, &t).map_err(|m| bad(path, format!("tensor {name}: {m}")))?;
        out.push((name, Tensor::new(t.shape, data)?));
    }
    Ok(out)
}

/// The view's values from a storage's bytes.
fn gather(bytes: &[u8], dtype: &str, t: &TensorRef) -> std::result::Result<Vec<f32>, String> {
    let width = match dtype {
        "F64" => 8,
        "F32" => 4,
        _ => 2,
    };
    let numel = bytes.len() / width;
    let n: usize = t.shape.iter().product();
    if t.stride.len() != t.shape.len() {
        return Err("shape and stride disagree".into());
    }
    let last = t.shape.iter().zip(&t.stride).try_fold(t.offset, |a, (&d, &s)| {
        a.checked_add(d.saturating_sub(1).checked_mul(s)?)
    });
    if n > 0 && last.is_none_or(|l| l >= numel) {
        return Err(format!("the view reaches past its storage of {numel} values"));
    }
    let value = |i: usize| -> f32 {
        let b = &bytes[i * width..];
        match dtype {
            "F64" => f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32,
            "F32" => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            "F16" => f16_to_f32(u16::from_le_bytes([b[0], b[1]])),
            _ => bf16_to_f32(u16::from_le_bytes([b[0], b[1]])),
        }
    };
    let mut out = Vec::with_capacity(n);
    let mut idx = vec![0usize; t.shape.len()];
    for _ in 0..n {
        let at = t.offset + idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
        out.push(value(at));
        for d in (0..idx.len()).rev() {
            idx[d] += 1;
            if idx[d] < t.shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Ok(out)
}

#[derive(Default)]
struct Machine {
    stack: Vec<V>,
    memo: HashMap<u32, V>,
}

type Res<T> = std::result::Result<T, String>;

fn storage_dtype(class: &str) -> Option<&'static str> {
    Some(match class {
        "FloatStorage" => "F32",
        "HalfStorage" => "F16",
        "BFloat16Storage" => "BF16",
        "DoubleStorage" => "F64",
        _ => return None,
    })
}

fn int(v: &V) -> Res<usize> {
    match v {
        V::Int(i) if *i >= 0 => Ok(*i as usize),
        o => Err(format!("expected a size, got {o:?}")),
    }
}

fn sizes(v: &V) -> Res<Vec<usize>> {
    match v {
        V::Tuple(t) | V::List(t) => t.iter().map(int).collect(),
        o => Err(format!("expected sizes, got {o:?}")),
    }
}

/// `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, …)`.
fn rebuild_tensor(args: &[V]) -> Res<V> {
    let [V::Persistent(pid), offset, shape, stride, ..] = args else {
        return Err("a tensor without its storage".into());
    };
    let V::Tuple(pid) = pid.as_ref() else {
        return Err("a storage id that is not a tuple".into());
    };
    let (class, key) = match pid.as_slice() {
        [V::Str(kind), V::Global(_, class), key, ..] if kind == "storage" => (class, key),
        _ => return Err(format!("storage id {pid:?}")),
    };
    let key = match key {
        V::Str(s) => s.clone(),
        V::Int(i) => i.to_string(),
        o => return Err(format!("storage key {o:?}")),
    };
    if key.contains(['/', '\\']) || key.contains("..") {
        return Err(format!("storage key {key:?}"));
    }
    Ok(V::Tensor(TensorRef {
        key,
        dtype: storage_dtype(class),
        offset: int(offset)?,
        shape: sizes(shape)?,
        stride: sizes(stride)?,
    }))
}

impl Machine {
    fn pop(&mut self) -> Res<V> {
        self.stack.pop().ok_or_else(|| "stack underflow".to_string())
    }

    /// Everything above the topmost mark, which is removed.
    fn pop_mark(&mut self) -> Res<Vec<V>> {
        let at = self.stack.iter().rposition(|v| *v == V::Mark).ok_or("no mark")?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items)
    }

    fn push(&mut self, v: V) -> Res<()> {
        if self.stack.len() >= MAX_ITEMS {
            return Err("the pickle's stack is too deep".into());
        }
        self.stack.push(v);
        Ok(())
    }

    fn top(&mut self) -> Res<&mut V> {
        self.stack.last_mut().ok_or_else(|| "empty stack".to_string())
    }

    fn memoize(&mut self, k: u32) -> Res<()> {
        if self.memo.len() >= MAX_ITEMS {
            return Err("the pickle's memo is too large".into());
        }
        let v = self.stack.last().ok_or("memo of an empty stack")?.clone();
        self.memo.insert(k, v);
        Ok(())
    }

    fn reduce(&mut self, f: V, args: Vec<V>) -> Res<V> {
        Ok(match &f {
            V::Global(m, n) if m == "collections" && n == "OrderedDict" => V::Dict(Vec::new()),
            V::Global(m, n) if m == "torch._utils" && n == "_rebuild_tensor_v2" => rebuild_tensor(&args)?,
            V::Global(m, n) if m == "torch._utils" && n == "_rebuild_parameter" => {
                args.into_iter().next().ok_or("a parameter without its tensor")?
            }
            _ => V::Call(Box::new(f), args),
        })
    }

    /// The value a literal opcode pushes (`None` for any other opcode).
    fn literal(op: u8, r: &mut Reader<'_>) -> Res<Option<V>> {
        Ok(Some(match op {
            b'N' => V::None,
            0x88 => V::Bool(true),
            0x89 => V::Bool(false),
            b'}' => V::Dict(Vec::new()),
            b']' => V::List(Vec::new()),
            b')' => V::Tuple(Vec::new()),
            b'J' => V::Int(i64::from(i32::from_le_bytes(r.array()?))),
            b'K' => V::Int(i64::from(r.byte()?)),
            b'M' => V::Int(i64::from(u16::from_le_bytes(r.array()?))),
            0x8A => {
                let n = usize::from(r.byte()?);
                let b = r.take(n)?;
                if n > 8 {
                    return Err("an integer wider than 64 bits".into());
                }
                let mut v = [if b.last().is_some_and(|x| x & 0x80 != 0) {
                    0xFF
                } else {
                    0
                }; 8];
                v[..n].copy_from_slice(b);
                V::Int(i64::from_le_bytes(v))
            }
            b'G' => V::Float(f64::from_be_bytes(r.array()?)),
            b'X' | 0x8C | 0x8D => {
                let n = match op {
                    b'X' => u32::from_le_bytes(r.array()?) as usize,
                    0x8C => usize::from(r.byte()?),
                    _ => usize::try_from(u64::from_le_bytes(r.array()?)).map_err(|e| e.to_string())?,
                };
                let s = std::str::from_utf8(r.take(n)?).map_err(|e| e.to_string())?;
                V::Str(s.to_string())
            }
            b'C' | b'B' => {
                let n = if op == b'C' {
                    usize::from(r.byte()?)
                } else {
                    u32::from_le_bytes(r.array()?) as usize
                };
                V::Bytes(r.take(n)?.to_vec())
            }
            b'c' => {
                let module = r.line()?;
                let name = r.line()?;
                V::Global(module, name)
            }
            _ => return Ok(None),
        }))
    }

    fn run(mut self, code: &[u8]) -> Res<V> {
        let mut r = Reader { code, at: 0 };
        loop {
            let op = r.byte()?;
            if let Some(v) = Self::literal(op, &mut r)? {
                self.push(v)?;
                continue;
            }
            match op {
                0x80 => {
                    r.take(1)?; // PROTO
                }
                0x95 => {
                    r.take(8)?; // FRAME
                }
                b'.' => return self.pop(),
                b'(' => self.push(V::Mark)?,
                0x93 => {
                    let (name, module) = (self.pop()?, self.pop()?);
                    let (V::Str(module), V::Str(name)) = (module, name) else {
                        return Err("STACK_GLOBAL of non-strings".into());
                    };
                    self.push(V::Global(module, name))?
                }
                b'q' => {
                    let k = u32::from(r.byte()?);
                    self.memoize(k)?
                }
                b'r' => {
                    let k = u32::from_le_bytes(r.array()?);
                    self.memoize(k)?
                }
                0x94 => {
                    let k = self.memo.len() as u32;
                    self.memoize(k)?
                }
                b'h' | b'j' => {
                    let k = if op == b'h' {
                        u32::from(r.byte()?)
                    } else {
                        u32::from_le_bytes(r.array()?)
                    };
                    let v = self.memo.get(&k).ok_or("memo key not set")?.clone();
                    self.push(v)?
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(V::Tuple(items))?
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(V::List(items))?
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = pairs(items)?;
                    self.push(V::Dict(pairs))?
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    if self.stack.len() < n {
                        return Err("stack underflow".into());
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push(V::Tuple(items))?
                }
                b'a' => {
                    let v = self.pop()?;
                    match self.top()? {
                        V::List(l) => l.push(v),
                        _ => return Err("APPEND to a non-list".into()),
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    match self.top()? {
                        V::List(l) => l.extend(items),
                        _ => return Err("APPENDS to a non-list".into()),
                    }
                }
                b's' => {
                    let (v, k) = (self.pop()?, self.pop()?);
                    match self.top()? {
                        V::Dict(d) => d.push((k, v)),
                        _ => return Err("SETITEM on a non-dict".into()),
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let new = pairs(items)?;
                    match self.top()? {
                        V::Dict(d) => d.extend(new),
                        _ => return Err("SETITEMS on a non-dict".into()),
                    }
                }
                b'R' => {
                    let args = match self.pop()? {
                        V::Tuple(a) => a,
                        o => return Err(format!("REDUCE with arguments {o:?}")),
                    };
                    let f = self.pop()?;
                    let v = self.reduce(f, args)?;
                    self.push(v)?
                }
                0x81 => {
                    let args = match self.pop()? {
                        V::Tuple(a) => a,
                        o => return Err(format!("NEWOBJ with arguments {o:?}")),
                    };
                    let f = self.pop()?;
                    self.push(V::Call(Box::new(f), args))?
                }
                b'b' => {
                    self.pop()?; // BUILD: state for an object this machine does not build
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.push(V::Persistent(Box::new(pid)))?
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.push(v)?
                }
                o => return Err(format!("pickle opcode {o:#04x} at byte {}", r.at - 1)),
            }
        }
    }
}

fn pairs(items: Vec<V>) -> Res<Vec<(V, V)>> {
    if !items.len().is_multiple_of(2) {
        return Err("a dict with an odd number of items".into());
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

struct Reader<'a> {
    code: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Res<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.code.len());
        let end = end.ok_or("the pickle ends early")?;
        let s = &self.code[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn byte(&mut self) -> Res<u8> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Res<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn line(&mut self) -> Res<String> {
        let rest = &self.code[self.at..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("the pickle ends early")?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|e| e.to_string())?;
        self.at += n + 1;
        Ok(s.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_pickles_are_errors_not_panics() {
        for code in [
            &b""[..],
            b"\x80\x02",
            b"\x80\x02}q\x00(X\x01\x00\x00\x00au.",
            b"h\x05.",
            b"\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x00.",
            b"X\xff\xff\xff\xff",
            b"R.",
            b"\xff",
        ] {
            assert!(Machine::default().run(code).is_err(), "{code:?}");
        }
    }

    #[test]
    fn a_view_past_its_storage_is_refused() {
        let t = TensorRef {
            key: "0".into(),
            dtype: Some("F32"),
            offset: 1,
            shape: vec![2, 2],
            stride: vec![2, 1],
        };
        assert!(gather(&[0u8; 16], "F32", &t).is_err());
        let t = TensorRef { offset: 0, ..t };
        let bytes: Vec<u8> = [1f32, 2.0, 3.0, 4.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(gather(&bytes, "F32", &t).unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
        let t = TensorRef {
            stride: vec![1, 2],
            ..t
        };
        assert_eq!(
            gather(&bytes, "F32", &t).unwrap(),
            vec![1.0, 3.0, 2.0, 4.0],
            "a transposed view"
        );
    }
}
