//! Block-quantised frozen weights for QLoRA: the base model's linear layers kept in 8 or 4 bits in
//! memory, dequantised block by block inside the matrix product, forward and backward.
//!
//! Format (symmetric, one f32 scale per block of [`BLOCK`] consecutive values along a row of the
//! `(in, out)` weight, in the spirit of llama.cpp's `q8_0`/`q4_0`):
//! - `q8`: `q = round(x / d)` in −127..=127 with `d = max|x| / 127`; error ≤ d/2 = max|x| / 254.
//! - `q4`: `q = round(x / d)` clamped to −8..=7 with `d = max|x| / 7`, two values a byte;
//!   error ≤ d/2 = max|x| / 14 (the clamp only touches −8, which rounding never reaches).
//!
//! candle's own quantised matmul has no backward; [`QuantMatMul`] is a custom op whose backward
//! gives the input's gradient `grad · Wᵀ` (dequantising again), and none for the frozen weight.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use serde::{Deserialize, Serialize};

use crate::ops::fused_f32s;
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
    /// The largest |error| of a value, as a fraction of its block's max |x|.
    pub fn error_bound(self) -> f32 {
        match self {
            QuantKind::Q8 => 1.0 / 254.0,
            QuantKind::Q4 => 1.0 / 14.0,
        }
    }

    fn levels(self) -> f32 {
        match self {
            QuantKind::Q8 => 127.0,
            QuantKind::Q4 => 7.0,
        }
    }
}

/// A `(rows, cols)` row-major matrix in blocks of [`BLOCK`] along each row.
#[derive(Debug, Clone)]
pub struct QuantWeight {
    pub kind: QuantKind,
    pub rows: usize,
    pub cols: usize,
    scales: Vec<f32>,
    /// q8: one i8 per value; q4: two values per byte (low nibble first), each stored as q + 8.
    data: Vec<u8>,
}

impl QuantWeight {
    fn blocks_per_row(cols: usize) -> usize {
        cols.div_ceil(BLOCK)
    }

    pub fn quantize(w: &[f32], rows: usize, cols: usize, kind: QuantKind) -> QuantWeight {
        let bpr = Self::blocks_per_row(cols);
        let mut scales = Vec::with_capacity(rows * bpr);
        let per_block = match kind {
            QuantKind::Q8 => BLOCK,
            QuantKind::Q4 => BLOCK / 2,
        };
        let mut data = vec![0u8; rows * bpr * per_block];
        for r in 0..rows {
            for b in 0..bpr {
                let (j0, j1) = (b * BLOCK, ((b + 1) * BLOCK).min(cols));
                let vals = &w[r * cols + j0..r * cols + j1];
                let max = vals.iter().fold(0f32, |m, x| m.max(x.abs()));
                let d = max / kind.levels();
                let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                scales.push(d);
                let out = &mut data[(r * bpr + b) * per_block..(r * bpr + b + 1) * per_block];
                for (i, &x) in vals.iter().enumerate() {
                    let q = (x * inv).round().clamp(-kind.levels() - 1.0, kind.levels()) as i32;
                    match kind {
                        QuantKind::Q8 => out[i] = q as i8 as u8,
                        QuantKind::Q4 => out[i / 2] |= ((q + 8) as u8 & 0x0F) << (4 * (i % 2)),
                    }
                }
            }
        }
        QuantWeight {
            kind,
            rows,
            cols,
            scales,
            data,
        }
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
        let bpr = Self::blocks_per_row(self.cols);
        out[..self.rows * self.cols]
            .par_chunks_mut(self.cols)
            .enumerate()
            .for_each(|(r, row)| {
                for (b, vals) in row.chunks_mut(BLOCK).enumerate() {
                    let d = self.scales[r * bpr + b];
                    match self.kind {
                        QuantKind::Q8 => {
                            let q = &self.data[(r * bpr + b) * BLOCK..];
                            vals.iter_mut()
                                .zip(q)
                                .for_each(|(v, &q)| *v = f32::from(q as i8) * d);
                        }
                        QuantKind::Q4 => {
                            let q = &self.data[(r * bpr + b) * BLOCK / 2..];
                            for (i, v) in vals.iter_mut().enumerate() {
                                let nib = (q[i / 2] >> (4 * (i % 2))) & 0x0F;
                                *v = f32::from(i16::from(nib) as i8 - 8) * d;
                            }
                        }
                    }
                }
            });
    }

    /// Bytes held (values and scales).
    pub fn bytes(&self) -> usize {
        self.data.len() + 4 * self.scales.len()
    }
}

/// `x · W` for a quantised `W: (in, out)`; `x: (m, in)`. Backward: `grad · Wᵀ` for `x` only.
#[derive(Debug, Clone)]
pub struct QuantMatMul(pub Arc<QuantWeight>);

fn product(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, transpose_w: bool) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    crate::ops::matmul_into(x, m, k, w, n, transpose_w, &mut out);
    out
}

impl CustomOp1 for QuantMatMul {
    fn name(&self) -> &'static str {
        "chatforge-quant-matmul"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = fused_f32s(s, l, "quant matmul")?;
        let (k, n) = (self.0.rows, self.0.cols);
        let (m, kk) = l.shape().dims2()?;
        if kk != k {
            candle_core::bail!("quant matmul: x must be (m, {k}), got {:?}", l.shape().dims());
        }
        let w = self.0.dequantize();
        Ok((
            CpuStorage::F32(product(x, m, k, &w, n, false)),
            Shape::from((m, n)),
        ))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(
            grad.contiguous()?
                .apply_op1_no_bwd(&QuantMatMulT(self.0.clone()))?,
        ))
    }
}

/// `g · Wᵀ`: the input's gradient of [`QuantMatMul`].
struct QuantMatMulT(Arc<QuantWeight>);

impl CustomOp1 for QuantMatMulT {
    fn name(&self) -> &'static str {
        "chatforge-quant-matmul-t"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = fused_f32s(s, l, "quant matmul backward")?;
        let (k, n) = (self.0.rows, self.0.cols);
        let Ok((m, nn)) = l.shape().dims2() else {
            candle_core::bail!("quant matmul backward: grad must be 2-D")
        };
        if nn != n {
            candle_core::bail!("quant matmul backward: grad has {nn} columns, W has {n}");
        }
        let w = self.0.dequantize(); // (k, n) row-major = Wᵀ read as (n, k) transposed
        Ok((
            CpuStorage::F32(product(g, m, n, &w, k, true)),
            Shape::from((m, k)),
        ))
    }
}

/// `x · W` (or `x · Wᵀ`) for a frozen f32 `W`: the backward gives the input's gradient only.
/// candle's matmul backward computes the weight's gradient too, even for a tensor that is not a
/// variable; for LoRA on a frozen base that is a third of the step's arithmetic and a
/// weight-sized buffer per layer, for nothing.
#[derive(Debug, Clone)]
pub struct FrozenMatMul {
    pub w: Tensor,
    /// Multiply by `Wᵀ` (`W: (out, in)`, the output head) instead of `W: (in, out)`.
    pub transposed: bool,
}

impl CustomOp1 for FrozenMatMul {
    fn name(&self) -> &'static str {
        "chatforge-frozen-matmul"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = fused_f32s(s, l, "frozen matmul")?;
        let (m, k) = l.shape().dims2()?;
        let (storage, wl) = self.w.storage_and_layout();
        let candle_core::Storage::Cpu(ws) = &*storage else {
            candle_core::bail!("frozen matmul: the weight must be on the CPU")
        };
        let w = fused_f32s(ws, wl, "frozen matmul weight")?;
        let (r, c) = self.w.dims2()?;
        let (wk, n) = if self.transposed { (c, r) } else { (r, c) };
        if wk != k {
            candle_core::bail!("frozen matmul: x has {k} columns, the weight expects {wk}");
        }
        Ok((
            CpuStorage::F32(product(x, m, k, w, n, self.transposed)),
            Shape::from((m, n)),
        ))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let w = self.w.detach();
        Ok(Some(if self.transposed {
            grad.matmul(&w)?
        } else {
            grad.matmul(&w.t()?)?
        }))
    }
}

/// `x · W` through the quantised weight (`x: (m, in)`).
pub fn quant_matmul(x: &Tensor, w: &Arc<QuantWeight>) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(QuantMatMul(w.clone()))?)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};
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
            // 4 blocks a row (the last padded): a byte or half a byte a value, 4 bytes a scale.
            let per_value = if kind == QuantKind::Q8 { BLOCK } else { BLOCK / 2 };
            assert_eq!(q.bytes(), rows * 4 * (per_value + 4));
        }
    }

    #[test]
    fn frozen_matmul_matches_matmul_and_leaves_the_weight_alone() {
        let (m, k, n) = (6, 40, 24);
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::from_vec(data(m * k, 5), (m, k), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::from_vec(data(k * n, 6), (k, n), &dev).unwrap()).unwrap();
        let up = Tensor::from_vec(data(m * n, 7), (m, n), &dev).unwrap();
        for transposed in [false, true] {
            let wt = if transposed {
                w.as_tensor().t().unwrap().contiguous().unwrap()
            } else {
                w.as_tensor().clone()
            };
            let op = FrozenMatMul { w: wt, transposed };
            let ours = x.as_tensor().contiguous().unwrap().apply_op1(op).unwrap();
            let plain = x.as_tensor().matmul(w.as_tensor()).unwrap();
            let d = (&ours - &plain)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap();
            assert!(d.to_scalar::<f32>().unwrap() < 1e-5);
            let g1 = (ours * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (plain * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let gx = (g1.get(x.as_tensor()).unwrap() - g2.get(x.as_tensor()).unwrap()).unwrap();
            let gx = gx.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
            assert!(gx.to_scalar::<f32>().unwrap() < 1e-5);
            assert!(
                g1.get(w.as_tensor()).is_none(),
                "no gradient for the frozen weight"
            );
        }
    }

    #[test]
    fn forward_and_input_gradient_match_the_dequantised_matmul() {
        let (m, k, n) = (5, 64, 96);
        let dev = Device::Cpu;
        let wq = Arc::new(QuantWeight::quantize(&data(k * n, 2), k, n, QuantKind::Q4));
        let deq = Tensor::from_vec(wq.dequantize(), (k, n), &dev).unwrap();
        let x = Var::from_tensor(&Tensor::from_vec(data(m * k, 3), (m, k), &dev).unwrap()).unwrap();
        let up = Tensor::from_vec(data(m * n, 4), (m, n), &dev).unwrap();
        let ours = quant_matmul(x.as_tensor(), &wq).unwrap();
        let plain = x.as_tensor().matmul(&deq).unwrap();
        let diff = |a: &Tensor, b: &Tensor| -> f32 {
            (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        assert!(diff(&ours, &plain) < 1e-5);
        let g1 = (ours * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (plain * &up).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(diff(g1.get(x.as_tensor()).unwrap(), g2.get(x.as_tensor()).unwrap()) < 1e-5);
    }
}
