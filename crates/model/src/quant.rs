//! Block quantisation in llama.cpp's `q8_0` and `q4_0` formats (the ones GGUF stores): blocks of
//! [`BLOCK`] consecutive values along a row, each an f16 scale `d` and its quantised values. QLoRA
//! keeps its frozen base in this form and dequantises it block by block inside the matrix product;
//! a GGUF export writes the same bytes.
//!
//! - `q8_0`: `d = max|x| / 127`, `q = round(x / d)` in −127..=127, 34 bytes a block.
//! - `q4_0`: `d = m / −8` where `m` is the block's value of largest magnitude (sign kept),
//!   `q = min(15, ⌊x / d + 8.5⌋)`, stored as two nibbles a byte (value `j` low, `j + 16` high),
//!   value `(q − 8) · d`; 18 bytes a block.

use serde::{Deserialize, Serialize};

use crate::tensor::{f16_to_f32, f32_to_f16};
use crate::{Error, Result};

/// Values per scale.
pub const BLOCK: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuantKind {
    Q8,
    Q4,
}

impl std::str::FromStr for QuantKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "q8" => Ok(QuantKind::Q8),
            "q4" => Ok(QuantKind::Q4),
            o => Err(Error::Config(format!("quantization {o:?}: expected q4 or q8"))),
        }
    }
}

impl QuantKind {
    /// The largest |error| of a value, as a fraction of its block's max |x|: half a step, plus
    /// the f16 scale's rounding; q4_0's one-sided range costs a whole step at the far end.
    pub fn error_bound(self) -> f32 {
        match self {
            QuantKind::Q8 => 0.5 / 127.0 + 2.0 / 2048.0,
            QuantKind::Q4 => 1.0 / 8.0 + 1.0 / 2048.0,
        }
    }

    /// Bytes of one block (scale and values).
    pub fn block_bytes(self) -> usize {
        match self {
            QuantKind::Q8 => 2 + BLOCK,
            QuantKind::Q4 => 2 + BLOCK / 2,
        }
    }
}

/// Quantises one block of up to [`BLOCK`] values (a short last block is zero-padded) into `out`
/// (`kind.block_bytes()` bytes), as llama.cpp's `quantize_row_q8_0`/`q4_0_ref` do.
pub fn quantize_block(vals: &[f32], kind: QuantKind, out: &mut [u8]) {
    let mut x = [0f32; BLOCK];
    x[..vals.len()].copy_from_slice(vals);
    match kind {
        QuantKind::Q8 => {
            let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            out[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
            for (o, &v) in out[2..2 + BLOCK].iter_mut().zip(&x) {
                *o = (v * id).round() as i8 as u8;
            }
        }
        QuantKind::Q4 => {
            let m = x.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
            let d = m / -8.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            out[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
            let q = |v: f32| ((v * id + 8.5) as i32).clamp(0, 15) as u8;
            for j in 0..BLOCK / 2 {
                out[2 + j] = q(x[j]) | (q(x[j + BLOCK / 2]) << 4);
            }
        }
    }
}

/// Dequantises one block into `out` (up to [`BLOCK`] values: a short last block's first ones).
pub fn dequantize_block(block: &[u8], kind: QuantKind, out: &mut [f32]) {
    let d = f16_to_f32(u16::from_le_bytes([block[0], block[1]]));
    match kind {
        QuantKind::Q8 => {
            for (o, &q) in out.iter_mut().zip(&block[2..2 + BLOCK]) {
                *o = f32::from(q as i8) * d;
            }
        }
        QuantKind::Q4 => {
            for (i, o) in out.iter_mut().enumerate() {
                let b = block[2 + i % (BLOCK / 2)];
                let q = if i < BLOCK / 2 { b & 0x0F } else { b >> 4 };
                *o = (f32::from(q) - 8.0) * d;
            }
        }
    }
}

/// A `(rows, cols)` row-major matrix in blocks of [`BLOCK`] along each row (a row's last block
/// zero-padded when `cols` is not a multiple of it).
#[derive(Debug, Clone)]
pub struct QuantWeight {
    pub kind: QuantKind,
    pub rows: usize,
    pub cols: usize,
    /// The blocks, row after row, in the format's bytes.
    data: Vec<u8>,
}

impl QuantWeight {
    fn blocks_per_row(cols: usize) -> usize {
        cols.div_ceil(BLOCK)
    }

    pub fn quantize(w: &[f32], rows: usize, cols: usize, kind: QuantKind) -> QuantWeight {
        let bb = kind.block_bytes();
        let bpr = Self::blocks_per_row(cols);
        let mut data = vec![0u8; rows * bpr * bb];
        for r in 0..rows {
            let row = &w[r * cols..(r + 1) * cols];
            for (b, vals) in row.chunks(BLOCK).enumerate() {
                let at = (r * bpr + b) * bb;
                quantize_block(vals, kind, &mut data[at..at + bb]);
            }
        }
        QuantWeight {
            kind,
            rows,
            cols,
            data,
        }
    }

    /// The blocks in the format's bytes (what GGUF stores when `cols` is a multiple of [`BLOCK`]).
    pub fn bytes_of_blocks(&self) -> &[u8] {
        &self.data
    }

    /// The matrix in f32.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        self.dequantize_into(&mut out);
        out
    }

    /// The matrix in f32, written into `out` (`rows × cols` values), rows on all cores.
    pub fn dequantize_into(&self, out: &mut [f32]) {
        use rayon::prelude::*;
        let (bb, bpr) = (self.kind.block_bytes(), Self::blocks_per_row(self.cols));
        out[..self.rows * self.cols]
            .par_chunks_mut(self.cols.max(1))
            .enumerate()
            .for_each(|(r, row)| {
                for (b, vals) in row.chunks_mut(BLOCK).enumerate() {
                    let at = (r * bpr + b) * bb;
                    dequantize_block(&self.data[at..at + bb], self.kind, vals);
                }
            });
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use chatforge_base::Rng;

    use super::*;

    fn data(n: usize, seed: u64) -> Vec<f32> {
        let mut r = Rng::new(seed);
        (0..n).map(|_| (r.normal() * 0.05) as f32).collect()
    }

    #[test]
    fn quantisation_error_stays_within_the_bound() {
        let (rows, cols) = (48, 100); // 100 = 3 full blocks + a partial one
        let w = data(rows * cols, 1);
        for kind in [QuantKind::Q8, QuantKind::Q4] {
            let q = QuantWeight::quantize(&w, rows, cols, kind);
            let d = q.dequantize();
            for r in 0..rows {
                for (b, (orig, deq)) in w[r * cols..(r + 1) * cols]
                    .chunks(BLOCK)
                    .zip(d[r * cols..(r + 1) * cols].chunks(BLOCK))
                    .enumerate()
                {
                    let max = orig.iter().fold(0f32, |m, x| m.max(x.abs()));
                    let err = orig
                        .iter()
                        .zip(deq)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0f32, f32::max);
                    assert!(
                        err <= max * kind.error_bound() * 1.0001,
                        "{kind:?} row {r} block {b}: {err} > {}",
                        max * kind.error_bound()
                    );
                }
            }
            // 4 blocks a row (the last padded).
            assert_eq!(q.bytes(), rows * 4 * kind.block_bytes());
        }
    }

    /// Bytes llama.cpp's reference quantisers write for the block 0, 1, …, 31 (scaled by 1/10).
    #[test]
    fn blocks_are_llama_cpp_bytes() {
        let x: Vec<f32> = (0..32).map(|i| i as f32 / 10.0).collect();
        let mut q8 = [0u8; 34];
        quantize_block(&x, QuantKind::Q8, &mut q8);
        // d = 3.1 / 127 in f16; q = round(x · 127 / 3.1).
        assert_eq!(u16::from_le_bytes([q8[0], q8[1]]), f32_to_f16(3.1 / 127.0));
        assert_eq!(&q8[2..6], &[0, 4, 8, 12]);
        assert_eq!(q8[33], 127);
        let mut q4 = [0u8; 18];
        quantize_block(&x, QuantKind::Q4, &mut q4);
        // d = 3.1 / −8; x = 0 → q = 8; x = 3.1 → q = 0 (−8 · d).
        assert_eq!(u16::from_le_bytes([q4[0], q4[1]]), f32_to_f16(-3.1 / 8.0));
        assert_eq!(q4[2] & 0x0F, 8);
        assert_eq!(q4[17] >> 4, 0);
        let mut back = [0f32; 32];
        dequantize_block(&q4, QuantKind::Q4, &mut back);
        assert!((back[31] - 3.1).abs() < 3e-3, "{}", back[31]);
    }
}
