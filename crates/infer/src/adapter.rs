//! LoRA adapters applied per sequence, unmerged: one decoder serves its base and every adapter of
//! it in the same batch. A row of a sequence with an adapter gets `s · (x A) B` added to each
//! adapted product, the way PEFT computes it before merging.

use std::path::Path;

use chatforge_model::GptConfig;
use chatforge_model::kernels::simd::vectorized;
use chatforge_model::lora::{LoraConfig, load_adapter};

use crate::engine::{PRODUCTS, product_of};
use crate::{Error, Result};

/// One adapted layer inside a decoder product: `rank` rows of `A` `(in)` and of `s · B` `(out)`,
/// added to the product's columns `col..col + n_out`.
#[derive(Debug, Clone)]
struct Delta {
    col: usize,
    n_in: usize,
    n_out: usize,
    rank: usize,
    /// `(rank, in)`: PEFT's `lora_A` as stored.
    a: Vec<f32>,
    /// `(rank, out)`: PEFT's `lora_B` transposed, times the scale.
    b: Vec<f32>,
}

/// A LoRA adapter in the decoder's terms: per block, per product, the deltas on it.
#[derive(Debug, Clone)]
pub struct Adapter {
    blocks: Vec<[Vec<Delta>; PRODUCTS]>,
    /// Bytes of its matrices.
    bytes: usize,
}

impl Adapter {
    /// Reads a PEFT adapter folder for a model with `cfg`.
    pub fn open(dir: &Path, cfg: &GptConfig) -> Result<Adapter> {
        let (lcfg, w) = load_adapter(dir, cfg)?;
        Adapter::new(&lcfg, &w, cfg)
    }

    /// The adapter `lcfg` with tensors `w` (named as inside the model) for a model with `cfg`.
    pub fn new(lcfg: &LoraConfig, w: &chatforge_model::Weights, cfg: &GptConfig) -> Result<Adapter> {
        let mut blocks: Vec<[Vec<Delta>; PRODUCTS]> = (0..cfg.n_layer).map(|_| Default::default()).collect();
        let scale = lcfg.scale() as f32;
        let mut bytes = 0;
        for t in lcfg.layers(cfg) {
            let (a_name, b_name) = chatforge_model::layout::lora_names(&t.path(cfg.arch));
            let get = |n: &str| {
                w.get(n)
                    .ok_or_else(|| Error::Invalid(format!("the adapter has no {n}")))
            };
            let (a, b) = (get(&a_name)?, get(&b_name)?);
            let (rank, n_in, n_out) = (a.dims()[0], a.dims()[1], b.dims()[0]);
            let (p, col) = product_of(cfg, t.linear)?;
            let mut bt = vec![0f32; rank * n_out];
            for (o, row) in b.data().chunks_exact(rank).enumerate() {
                for (k, &v) in row.iter().enumerate() {
                    bt[k * n_out + o] = v * scale;
                }
            }
            bytes += 4 * (a.data().len() + bt.len());
            blocks[t.layer][p].push(Delta {
                col,
                n_in,
                n_out,
                rank,
                a: a.data().to_vec(),
                b: bt,
            });
        }
        Ok(Adapter { blocks, bytes })
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Adds this adapter's deltas on product `p` of block `layer` to `out` (rows of `width`
    /// columns) for the inputs `x` (rows of `n_in`), for rows `rows`.
    pub(crate) fn apply(
        &self,
        layer: usize,
        p: usize,
        x: &[f32],
        out: &mut [f32],
        width: usize,
        rows: std::ops::Range<usize>,
    ) {
        for d in &self.blocks[layer][p] {
            vectorized(|| {
                let mut t = vec![0f32; d.rank];
                for r in rows.clone() {
                    let xr = &x[r * d.n_in..(r + 1) * d.n_in];
                    for (tk, ak) in t.iter_mut().zip(d.a.chunks_exact(d.n_in)) {
                        *tk = dot(xr, ak);
                    }
                    let o = &mut out[r * width + d.col..r * width + d.col + d.n_out];
                    for (&tk, bk) in t.iter().zip(d.b.chunks_exact(d.n_out)) {
                        o.iter_mut().zip(bk).for_each(|(o, b)| *o += tk * b);
                    }
                }
            });
        }
    }
}

/// A dot product in eight lanes (so the compiler vectorises it).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}
