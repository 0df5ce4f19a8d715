//! The safetensors format: an 8-byte little-endian header length, a JSON header (per tensor its
//! dtype, shape and byte range; an optional `__metadata__`), then the data. Reading checks every
//! range against the file and converts F32/F16/BF16 to f32 one tensor at a time, so memory holds
//! the result and one tensor's bytes.

use std::borrow::Cow;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::tensor::{Tensor, bf16_to_f32, f16_to_f32};
use crate::{Error, Result};

/// The largest header read (the real ones are kilobytes; a hostile one could claim exabytes).
const MAX_HEADER: u64 = 100 << 20;

/// One tensor of a file, as its header describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub name: String,
    /// As the file spells it: `F32`, `F16`, `BF16`, …
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Byte range within the data section.
    pub start: u64,
    pub end: u64,
}

impl Entry {
    pub fn elem_count(&self) -> usize {
        self.shape.iter().product()
    }
}

fn bad(path: &Path, msg: impl Into<String>) -> Error {
    Error::Weights {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

fn width(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" => 1,
        _ => return None,
    })
}

/// The header of `path`: its tensors (sorted by where their data starts) and where the data
/// section begins. Every entry's range is checked against its dtype, shape and the file's size.
pub fn header(path: &Path) -> Result<(Vec<Entry>, u64)> {
    let mut f = File::open(path).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let size = f
        .metadata()
        .map_err(|e| Error::Io {
            path: path.to_path_buf(),
            source: e,
        })?
        .len();
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|_| bad(path, "not a safetensors file (shorter than its header length)"))?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER || n + 8 > size {
        return Err(bad(
            path,
            format!("safetensors header of {n} bytes does not fit the file"),
        ));
    }
    let mut head = vec![0u8; n as usize];
    f.read_exact(&mut head)
        .map_err(|e| bad(path, format!("reading the header: {e}")))?;
    let v: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&head).map_err(|e| bad(path, format!("safetensors header: {e}")))?;
    let data_len = size - 8 - n;
    let mut out = Vec::with_capacity(v.len());
    for (name, t) in v {
        if name == "__metadata__" {
            continue;
        }
        let e: RawEntry = serde_json::from_value(t).map_err(|e| bad(path, format!("tensor {name}: {e}")))?;
        let w = width(&e.dtype).ok_or_else(|| bad(path, format!("tensor {name}: dtype {}", e.dtype)))?;
        let bytes = e
            .shape
            .iter()
            .try_fold(w, |a, &d| a.checked_mul(d as u64))
            .ok_or_else(|| bad(path, format!("tensor {name}: shape {:?} overflows", e.shape)))?;
        let [start, end] = e.data_offsets;
        if start > end || end > data_len || end - start != bytes {
            return Err(bad(
                path,
                format!(
                    "tensor {name}: bytes {start}..{end} do not hold {:?} {} in {data_len} bytes of data",
                    e.shape, e.dtype
                ),
            ));
        }
        out.push(Entry {
            name,
            dtype: e.dtype,
            shape: e.shape,
            start,
            end,
        });
    }
    out.sort_by_key(|e| e.start);
    Ok((out, 8 + n))
}

#[derive(serde::Deserialize)]
struct RawEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

/// Every tensor of `path` in f32, in file order. Floating dtypes only (F32, F16, BF16).
pub fn read(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let (entries, base) = header(path)?;
    let mut f = File::open(path).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let mut buf = Vec::new();
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let convert: fn(&[u8]) -> f32 = match e.dtype.as_str() {
            "F32" => |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            "F16" => |b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])),
            "BF16" => |b| bf16_to_f32(u16::from_le_bytes([b[0], b[1]])),
            d => {
                return Err(bad(
                    path,
                    format!("tensor {}: dtype {d} is not a float weight", e.name),
                ));
            }
        };
        buf.resize((e.end - e.start) as usize, 0);
        f.seek(SeekFrom::Start(base + e.start))
            .and_then(|_| f.read_exact(&mut buf))
            .map_err(|err| bad(path, format!("tensor {}: {err}", e.name)))?;
        let w = width(&e.dtype).unwrap_or(4) as usize;
        let data: Vec<f32> = buf.chunks_exact(w).map(convert).collect();
        out.push((e.name, Tensor::new(e.shape, data)?));
    }
    Ok(out)
}

/// Writes f32 tensors as safetensors through a temporary file, one tensor at a time: `data(i)`
/// gives the values of `tensors[i]` (name, shape) when its turn comes, so the set is never copied
/// whole (a checkpoint of the training engine writes straight from its flat buffers). Names are
/// sorted; the header is padded with spaces to 8 bytes.
pub fn write_with<'a>(
    path: &Path,
    tensors: &[(String, Vec<usize>)],
    mut data: impl FnMut(usize) -> Result<Cow<'a, [f32]>>,
) -> Result<()> {
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by(|&a, &b| tensors[a].0.cmp(&tensors[b].0));
    let mut header = serde_json::Map::new();
    let mut at = 0usize;
    for &i in &order {
        let (name, shape) = &tensors[i];
        let bytes = 4 * shape.iter().product::<usize>();
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [at, at + bytes]}),
        );
        at += bytes;
    }
    let mut head = serde_json::Value::Object(header).to_string().into_bytes();
    head.resize(head.len().next_multiple_of(8), b' ');
    // The first error from `data` (the write stops there and the temporary file is removed).
    let mut failed = None;
    chatforge_base::atomic_write(path, |w| {
        w.write_all(&(head.len() as u64).to_le_bytes())?;
        w.write_all(&head)?;
        let mut buf = Vec::with_capacity(1 << 16);
        for &i in &order {
            let (name, shape) = &tensors[i];
            let values = match data(i) {
                Ok(v) => v,
                Err(e) => {
                    failed = Some(e);
                    return Err(std::io::Error::other("no data"));
                }
            };
            if values.len() != shape.iter().product::<usize>() {
                failed = Some(bad(
                    path,
                    format!("{name}: {} values for shape {shape:?}", values.len()),
                ));
                return Err(std::io::Error::other("wrong length"));
            }
            for chunk in values.chunks(1 << 14) {
                buf.clear();
                buf.extend(chunk.iter().flat_map(|x| x.to_le_bytes()));
                w.write_all(&buf)?;
            }
        }
        Ok(())
    })
    .map_err(|e| failed.take().unwrap_or_else(|| bad(path, e.to_string())))
}

/// Writes named tensors as safetensors (sorted names), through a temporary file.
pub fn write<'a>(path: &Path, tensors: impl IntoIterator<Item = (&'a String, &'a Tensor)>) -> Result<()> {
    let all: Vec<(&String, &Tensor)> = tensors.into_iter().collect();
    let specs: Vec<(String, Vec<usize>)> = all
        .iter()
        .map(|(n, t)| ((*n).clone(), t.dims().to_vec()))
        .collect();
    write_with(path, &specs, |i| Ok(Cow::Borrowed(all[i].1.data())))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn file_with(header: &str, data: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
        f.write_all(header.as_bytes()).unwrap();
        f.write_all(data).unwrap();
        f
    }

    #[test]
    fn round_trips_and_reads_half_precision() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.safetensors");
        let a = Tensor::new([2, 2], vec![1.0, -2.0, 0.5, 3.25]).unwrap();
        let b = Tensor::new([3], vec![7.0, 8.0, 9.0]).unwrap();
        let (na, nb) = ("b.a".to_string(), "a.b".to_string());
        write(&p, [(&na, &a), (&nb, &b)]).unwrap();
        let back = read(&p).unwrap();
        assert_eq!(
            back,
            vec![(nb.clone(), b), (na.clone(), a)],
            "sorted by name, values exact"
        );
        // F16 and BF16 convert on reading.
        let f = file_with(
            r#"{"h":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},"g":{"dtype":"BF16","shape":[1],"data_offsets":[4,6]}}"#,
            &[0x00, 0x3C, 0x00, 0xC0, 0x80, 0x3F],
        );
        let back = read(f.path()).unwrap();
        assert_eq!(back[0].1.data(), &[1.0, -2.0]);
        assert_eq!(back[1].1.data(), &[1.0]);
    }

    #[test]
    fn a_range_outside_the_file_or_a_wrong_size_is_refused() {
        for (header, why) in [
            (
                r#"{"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
                "past the end",
            ),
            (
                r#"{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,8]}}"#,
                "size",
            ),
            (
                r#"{"x":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,8]}}"#,
                "overflow",
            ),
            (
                r#"{"x":{"dtype":"Q9","shape":[1],"data_offsets":[0,8]}}"#,
                "dtype",
            ),
            (r#"{"x":[1,2]}"#, "entry"),
            ("not json", "json"),
        ] {
            let f = file_with(header, &[0u8; 8]);
            let e = read(f.path()).unwrap_err().to_string();
            assert!(e.contains(&f.path().display().to_string()), "{why}: {e}");
        }
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&u64::MAX.to_le_bytes()).unwrap();
        assert!(read(f.path()).unwrap_err().to_string().contains("does not fit"));
    }
}
