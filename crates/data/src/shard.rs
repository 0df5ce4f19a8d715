//! The token shard: a memory-mapped file of token ids, a per-token loss mask and document
//! boundaries, written once by `chatforge data tokenize` and read without loading it whole.
//!
//! Layout (little-endian):
//! ```text
//! 0   8  magic "CFSHARD\0"          24  8  n_tokens
//! 8   4  version (1)                32  8  n_docs
//! 12  4  id width in bytes (2 | 4)  40  4  CRC-32 of everything after the header
//! 16  4  vocab size                 44  4  CRC-32 of header bytes 0..44
//! 20  4  flags (bit 0: pairs)       48 16  zero
//! 64     ids        n_tokens × width
//!        mask       n_tokens × u8 (1 = the token carries loss in SFT: assistant content and its end)
//!        padding    to a multiple of 8
//!        offsets    (n_docs + 1) × u64, document d is tokens offsets[d]..offsets[d+1]
//! ```
//!
//! A preference shard (flag bit 0) holds pairs: documents `2k` and `2k + 1` are pair `k`'s prompt
//! with the chosen and with the rejected reply, the mask marking each reply's tokens.

use std::fs::{self, File};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::{Error, Result};

const MAGIC: &[u8; 8] = b"CFSHARD\0";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 64;
/// Header flag: documents come in (chosen, rejected) pairs.
const FLAG_PAIRS: u32 = 1;

/// How many bytes each token id takes on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdWidth {
    U16,
    U32,
}

impl IdWidth {
    pub fn for_vocab(vocab_size: u32) -> IdWidth {
        if vocab_size <= 1 << 16 {
            IdWidth::U16
        } else {
            IdWidth::U32
        }
    }

    pub fn bytes(self) -> usize {
        match self {
            IdWidth::U16 => 2,
            IdWidth::U32 => 4,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardHeader {
    pub width: IdWidth,
    pub vocab_size: u32,
    pub n_tokens: u64,
    pub n_docs: u64,
    pub body_crc: u32,
    /// Documents come in preference pairs (chosen, rejected).
    pub pairs: bool,
}

impl ShardHeader {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..8].copy_from_slice(MAGIC);
        h[8..12].copy_from_slice(&VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&(self.width.bytes() as u32).to_le_bytes());
        h[16..20].copy_from_slice(&self.vocab_size.to_le_bytes());
        let flags = if self.pairs { FLAG_PAIRS } else { 0 };
        h[20..24].copy_from_slice(&flags.to_le_bytes());
        h[24..32].copy_from_slice(&self.n_tokens.to_le_bytes());
        h[32..40].copy_from_slice(&self.n_docs.to_le_bytes());
        h[40..44].copy_from_slice(&self.body_crc.to_le_bytes());
        let crc = crc32fast::hash(&h[0..44]);
        h[44..48].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Byte offsets of the mask and offsets tables, and the total file size, from the counts.
    fn layout(&self) -> Option<(usize, usize, usize)> {
        let n = usize::try_from(self.n_tokens).ok()?;
        let docs = usize::try_from(self.n_docs).ok()?;
        let mask = HEADER_LEN.checked_add(n.checked_mul(self.width.bytes())?)?;
        let offsets = mask.checked_add(n)?.checked_next_multiple_of(8)?;
        let end = offsets.checked_add(docs.checked_add(1)?.checked_mul(8)?)?;
        Some((mask, offsets, end))
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Streams documents into a new shard. Ids go straight to a temporary file; the mask and the
/// document offsets are kept in memory (9 bytes a token at most) and appended by [`finish`],
/// which renames the file into place. Dropped unfinished, it removes its temporary file.
///
/// [`finish`]: ShardWriter::finish
pub struct ShardWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
    width: IdWidth,
    vocab_size: u32,
    crc: crc32fast::Hasher,
    mask: Vec<u8>,
    offsets: Vec<u64>,
    buf: Vec<u8>,
    pairs: bool,
}

impl ShardWriter {
    pub fn create(path: &Path, vocab_size: u32) -> Result<ShardWriter> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
        let mut out = BufWriter::with_capacity(1 << 20, File::create(&tmp).map_err(|e| Error::io(&tmp, e))?);
        out.write_all(&[0u8; HEADER_LEN])
            .map_err(|e| Error::io(&tmp, e))?;
        Ok(ShardWriter {
            path: path.to_path_buf(),
            tmp,
            out: Some(out),
            width: IdWidth::for_vocab(vocab_size),
            vocab_size,
            crc: crc32fast::Hasher::new(),
            mask: Vec::new(),
            offsets: vec![0],
            buf: Vec::new(),
            pairs: false,
        })
    }

    /// A preference shard: documents are pushed as (chosen, rejected) pairs.
    pub fn create_pairs(path: &Path, vocab_size: u32) -> Result<ShardWriter> {
        let mut w = Self::create(path, vocab_size)?;
        w.pairs = true;
        Ok(w)
    }

    /// Appends a preference pair: the prompt with the chosen reply, then with the rejected one;
    /// each mask marks its reply's tokens.
    pub fn push_pair(&mut self, chosen: (&[u32], &[u8]), rejected: (&[u32], &[u8])) -> Result<()> {
        if !self.pairs {
            return Err(Error::Invalid("a pair pushed to a shard of documents".into()));
        }
        self.push_doc(chosen.0, chosen.1)?;
        self.push_doc(rejected.0, rejected.1)
    }

    /// Appends one document. `mask[i]` is 1 where token `i` carries loss in SFT.
    pub fn push(&mut self, ids: &[u32], mask: &[u8]) -> Result<()> {
        if self.pairs {
            return Err(Error::Invalid("a document pushed to a shard of pairs".into()));
        }
        self.push_doc(ids, mask)
    }

    fn push_doc(&mut self, ids: &[u32], mask: &[u8]) -> Result<()> {
        if ids.len() != mask.len() {
            return Err(Error::Invalid(format!(
                "{} ids but {} mask values",
                ids.len(),
                mask.len()
            )));
        }
        if let Some(bad) = ids.iter().find(|&&id| id >= self.vocab_size) {
            return Err(Error::Invalid(format!(
                "token id {bad} is outside the vocabulary of {} tokens",
                self.vocab_size
            )));
        }
        self.buf.clear();
        match self.width {
            IdWidth::U16 => ids
                .iter()
                .for_each(|&id| self.buf.extend_from_slice(&(id as u16).to_le_bytes())),
            IdWidth::U32 => ids
                .iter()
                .for_each(|&id| self.buf.extend_from_slice(&id.to_le_bytes())),
        }
        self.crc.update(&self.buf);
        let out = self
            .out
            .as_mut()
            .ok_or_else(|| Error::Invalid("shard already finished".into()))?;
        out.write_all(&self.buf).map_err(|e| Error::io(&self.tmp, e))?;
        self.mask.extend(mask.iter().map(|&m| u8::from(m != 0)));
        self.offsets.push(self.mask.len() as u64);
        Ok(())
    }

    pub fn tokens(&self) -> u64 {
        self.mask.len() as u64
    }

    /// Whether this writes a shard of pairs ([`ShardWriter::create_pairs`]).
    pub fn is_pairs(&self) -> bool {
        self.pairs
    }

    /// Writes the tables and the header, syncs, and renames the shard into place.
    pub fn finish(mut self) -> Result<ShardHeader> {
        let mut out = self
            .out
            .take()
            .ok_or_else(|| Error::Invalid("shard already finished".into()))?;
        let n_tokens = self.mask.len();
        let pad = (HEADER_LEN + n_tokens * self.width.bytes() + n_tokens).next_multiple_of(8)
            - (HEADER_LEN + n_tokens * self.width.bytes() + n_tokens);
        let mut tail = std::mem::take(&mut self.mask);
        tail.extend(std::iter::repeat_n(0u8, pad));
        for o in &self.offsets {
            tail.extend_from_slice(&o.to_le_bytes());
        }
        self.crc.update(&tail);
        let header = ShardHeader {
            width: self.width,
            vocab_size: self.vocab_size,
            n_tokens: n_tokens as u64,
            n_docs: (self.offsets.len() - 1) as u64,
            body_crc: self.crc.clone().finalize(),
            pairs: self.pairs,
        };
        let tmp = self.tmp.clone();
        let io = |e| Error::io(&tmp, e);
        out.write_all(&tail).map_err(io)?;
        out.seek(SeekFrom::Start(0)).map_err(io)?;
        out.write_all(&header.encode()).map_err(io)?;
        let file = out.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e))?;
        Ok(header)
    }
}

impl Drop for ShardWriter {
    fn drop(&mut self) {
        if self.out.is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// A read-only, memory-mapped token shard, checked on open.
pub struct Shard {
    path: PathBuf,
    map: Mmap,
    header: ShardHeader,
    mask_at: usize,
    offsets_at: usize,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("path", &self.path)
            .field("header", &self.header)
            .finish()
    }
}

impl Shard {
    /// Whether `path` starts like a shard (its magic bytes); says nothing of the rest.
    pub fn is_shard(path: &Path) -> bool {
        let mut magic = [0u8; 8];
        File::open(path)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
            .is_ok_and(|()| &magic == MAGIC)
    }

    /// Opens and verifies a shard: header, size, checksum of the contents and document table.
    /// Nothing is copied to the heap; the pages are read through the mapping.
    pub fn open(path: &Path) -> Result<Shard> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len < HEADER_LEN as u64 {
            return Err(Error::shard(
                path,
                format!("truncated: {len} bytes, the header alone is {HEADER_LEN}"),
            ));
        }
        #[allow(unsafe_code)]
        // SAFETY: shards are only ever written to a temporary name and renamed into place, so the
        // mapped file is never truncated or rewritten underneath this mapping by chatforge.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let h = &map[..HEADER_LEN];
        if &h[0..8] != MAGIC {
            return Err(Error::shard(
                path,
                "not a chatforge token shard (bad magic at byte 0)",
            ));
        }
        let version = u32_at(h, 8);
        if version != VERSION {
            return Err(Error::shard(
                path,
                format!("version {version} at byte 8, this build reads {VERSION}"),
            ));
        }
        if u32_at(h, 44) != crc32fast::hash(&h[0..44]) {
            return Err(Error::shard(
                path,
                "header checksum mismatch (bytes 0..48): the header is corrupt",
            ));
        }
        let width = match u32_at(h, 12) {
            2 => IdWidth::U16,
            4 => IdWidth::U32,
            w => {
                return Err(Error::shard(
                    path,
                    format!("id width {w} at byte 12, expected 2 or 4"),
                ));
            }
        };
        let header = ShardHeader {
            width,
            vocab_size: u32_at(h, 16),
            n_tokens: u64_at(h, 24),
            n_docs: u64_at(h, 32),
            body_crc: u32_at(h, 40),
            pairs: u32_at(h, 20) & FLAG_PAIRS != 0,
        };
        if header.pairs && header.n_docs % 2 == 1 {
            return Err(Error::shard(
                path,
                "a shard of pairs with an odd number of documents",
            ));
        }
        let (mask_at, offsets_at, end) = header
            .layout()
            .ok_or_else(|| Error::shard(path, "token and document counts overflow"))?;
        if end as u64 != len {
            return Err(Error::shard(
                path,
                format!("truncated or padded: the header describes {end} bytes, the file has {len}"),
            ));
        }
        if crc32fast::hash(&map[HEADER_LEN..]) != header.body_crc {
            return Err(Error::shard(
                path,
                "checksum mismatch: the contents after byte 64 are corrupt",
            ));
        }
        let shard = Shard {
            path: path.to_path_buf(),
            map,
            header,
            mask_at,
            offsets_at,
        };
        let mut prev = 0;
        for d in 0..=shard.header.n_docs as usize {
            let o = shard.offset(d);
            if (d == 0 && o != 0) || o < prev || o > header.n_tokens {
                return Err(Error::shard(
                    path,
                    format!("document table broken at byte {}", offsets_at + 8 * d),
                ));
            }
            prev = o;
        }
        if prev != header.n_tokens {
            return Err(Error::shard(
                path,
                "document table does not end at the last token",
            ));
        }
        Ok(shard)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn header(&self) -> &ShardHeader {
        &self.header
    }

    pub fn len(&self) -> usize {
        self.header.n_tokens as usize
    }

    pub fn is_empty(&self) -> bool {
        self.header.n_tokens == 0
    }

    /// Whether documents come in preference pairs (chosen, rejected).
    pub fn is_pairs(&self) -> bool {
        self.header.pairs
    }

    pub fn n_docs(&self) -> usize {
        self.header.n_docs as usize
    }

    pub fn vocab_size(&self) -> u32 {
        self.header.vocab_size
    }

    fn offset(&self, d: usize) -> u64 {
        u64_at(&self.map, self.offsets_at + 8 * d)
    }

    /// Token range of document `d`.
    pub fn doc(&self, d: usize) -> Range<usize> {
        self.offset(d) as usize..self.offset(d + 1) as usize
    }

    pub fn id(&self, i: usize) -> u32 {
        match self.header.width {
            IdWidth::U16 => {
                let at = HEADER_LEN + 2 * i;
                u32::from(u16::from_le_bytes([self.map[at], self.map[at + 1]]))
            }
            IdWidth::U32 => u32_at(&self.map, HEADER_LEN + 4 * i),
        }
    }

    /// Appends the ids of `range` to `out`.
    pub fn ids_into(&self, range: Range<usize>, out: &mut Vec<u32>) {
        match self.header.width {
            IdWidth::U16 => {
                let bytes = &self.map[HEADER_LEN + 2 * range.start..HEADER_LEN + 2 * range.end];
                out.extend(
                    bytes
                        .chunks_exact(2)
                        .map(|c| u32::from(u16::from_le_bytes([c[0], c[1]]))),
                );
            }
            IdWidth::U32 => {
                let bytes = &self.map[HEADER_LEN + 4 * range.start..HEADER_LEN + 4 * range.end];
                out.extend(
                    bytes
                        .chunks_exact(4)
                        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                );
            }
        }
    }

    /// The loss mask of `range` (1 = carries loss in SFT).
    pub fn mask(&self, range: Range<usize>) -> &[u8] {
        &self.map[self.mask_at + range.start..self.mask_at + range.end]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, vocab: u32, docs: &[(Vec<u32>, Vec<u8>)]) -> ShardHeader {
        let mut w = ShardWriter::create(path, vocab).unwrap();
        for (ids, mask) in docs {
            w.push(ids, mask).unwrap();
        }
        w.finish().unwrap()
    }

    #[test]
    fn round_trip_u16_and_u32() {
        let dir = tempfile::tempdir().unwrap();
        for vocab in [300u32, 70_000] {
            let path = dir.path().join(format!("s{vocab}.bin"));
            let big = vocab - 1;
            let docs = vec![
                (vec![1, 2, big], vec![0, 1, 1]),
                (vec![], vec![]),
                (vec![7, 8], vec![1, 0]),
            ];
            let h = write(&path, vocab, &docs);
            assert_eq!((h.n_tokens, h.n_docs), (5, 3));
            let s = Shard::open(&path).unwrap();
            assert_eq!(s.header().width, IdWidth::for_vocab(vocab));
            assert_eq!((s.len(), s.n_docs(), s.vocab_size()), (5, 3, vocab));
            assert_eq!((s.doc(0), s.doc(1), s.doc(2)), (0..3, 3..3, 3..5));
            let mut ids = Vec::new();
            s.ids_into(0..5, &mut ids);
            assert_eq!(ids, [1, 2, big, 7, 8]);
            assert_eq!(s.id(2), big);
            assert_eq!(s.mask(0..5), [0, 1, 1, 1, 0]);
        }
    }

    #[test]
    fn ids_outside_vocab_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ShardWriter::create(&dir.path().join("s.bin"), 10).unwrap();
        assert!(w.push(&[10], &[0]).is_err());
        drop(w);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            0,
            "temp file left behind"
        );
    }

    #[test]
    fn corruption_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.bin");
        write(&path, 100, &[(vec![1, 2, 3, 4], vec![1, 1, 0, 0])]);
        let good = fs::read(&path).unwrap();
        let check = |bytes: &[u8], expect: &str| {
            fs::write(&path, bytes).unwrap();
            let err = Shard::open(&path).unwrap_err().to_string();
            assert!(err.contains(expect), "expected '{expect}' in: {err}");
            assert!(err.contains("s.bin"), "{err}");
        };
        check(&good[..good.len() - 3], "truncated");
        check(&good[..10], "truncated: 10 bytes");
        let mut flipped = good.clone();
        flipped[HEADER_LEN + 1] ^= 0x40;
        check(&flipped, "checksum mismatch");
        let mut header = good.clone();
        header[17] ^= 1;
        check(&header, "header checksum");
        let mut magic = good.clone();
        magic[0] = b'X';
        check(&magic, "bad magic");
    }
}
