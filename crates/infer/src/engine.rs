//! The decoder: GPT-2's forward pass for generation, on plain slices with a KV cache per sequence.
//!
//! At one token per step the training engine's batched layout would cost more than the
//! arithmetic. Here every weight matrix is streamed once per step for all the sequences of a batch
//! (see [`crate::kernels`]), and each sequence keeps its own cache of keys and values, appended in
//! place, so sequences of different lengths batch together without padding and the cost of a new
//! token does not grow with recomputation of the prefix.
//!
//! The same weights give the same logits as the test oracle (`chatforge-oracle`, tested to 1e-4) and
//! as transformers' `GPT2LMHeadModel` (tested in `tests/hf_generate.rs`).

use chatforge_model::kernels::{
    gelu_fast, layer_norm_row, rms_norm_row, rope_angles, rotate_heads, simd::vectorized, swiglu_row,
};
use chatforge_model::layout::{self, Linear, Norm as LayerNormOf, Part, Slot};
use chatforge_model::{Activation, GptConfig, Tensor, Weights};
use rayon::prelude::*;

use crate::adapter::Adapter;
pub use crate::kernels::WeightType;
use crate::kernels::{self, Layout, Matrix};
use crate::{Error, Result};

#[derive(Debug, Clone)]
struct Norm {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

#[derive(Debug, Clone)]
struct Layer {
    ln_1: Norm,
    ln_2: Norm,
    /// The block's products (see [`PRODUCTS`]), each packed `(in, out)` for the kernels, and
    /// their biases.
    mats: [Matrix; PRODUCTS],
    biases: [Option<Vec<f32>>; PRODUCTS],
}

/// A block's products ([`chatforge_model::layout::products`]).
pub(crate) const PRODUCTS: usize = 4;
const QKV: usize = 0;
const ATTN_OUT: usize = 1;
const FC: usize = 2;
const DOWN: usize = 3;

/// Where `linear` sits in the decoder: its product and first column there.
pub(crate) fn product_of(cfg: &GptConfig, linear: Linear) -> Result<(usize, usize)> {
    for (p, parts) in layout::products(cfg.arch).iter().enumerate() {
        let mut col = 0;
        for &l in *parts {
            if l == linear {
                return Ok((p, col));
            }
            col += l.shape(cfg).1;
        }
    }
    Err(Error::Invalid(format!(
        "{linear:?} is not a layer of a {:?} model",
        cfg.arch
    )))
}

/// A GPT ready for generation.
#[derive(Debug, Clone)]
pub struct Engine {
    cfg: GptConfig,
    wte: Matrix,
    /// GPT-2's learned positions (empty in the Llama family, which rotates q and k by
    /// `inv_freq`).
    wpe: Vec<f32>,
    inv_freq: Vec<f32>,
    layers: Vec<Layer>,
    ln_f: Norm,
    /// `None`: tied to `wte`.
    lm_head: Option<Matrix>,
    weight_type: WeightType,
}

/// One sequence's keys and values, per layer `(len, n_kv_head · head_dim)` row-major.
#[derive(Debug, Clone, Default)]
pub struct Sequence {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    len: usize,
}

impl Sequence {
    /// Tokens cached so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets the cache (keeps the memory).
    pub fn clear(&mut self) {
        self.k.iter_mut().chain(self.v.iter_mut()).for_each(Vec::clear);
        self.len = 0;
    }

    /// Keeps the first `len` tokens only.
    pub fn truncate(&mut self, len: usize, c: usize) {
        // `c`: the cache's row width, `n_kv_head · head_dim`.
        if len < self.len {
            self.k
                .iter_mut()
                .chain(self.v.iter_mut())
                .for_each(|x| x.truncate(len * c));
            self.len = len;
        }
    }
}

fn tensor_vec(w: &Weights, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    let t = w
        .get(name)
        .ok_or_else(|| Error::Invalid(format!("weights have no {name}")))?;
    if t.dims() != shape {
        return Err(Error::Invalid(format!(
            "{name} has shape {:?}, the config needs {shape:?}",
            t.dims()
        )));
    }
    Ok(t.data().to_vec())
}

impl Engine {
    /// Builds the decoder from weights named as the layout names them (HF's; see
    /// [`chatforge_model::load_hf`]).
    pub fn new(cfg: &GptConfig, w: &Weights, weight_type: WeightType) -> Result<Engine> {
        cfg.validate()?;
        let (c, v, arch) = (cfg.n_embd, cfg.vocab_size, cfg.arch);
        let get = |name: &str, shape: &[usize]| tensor_vec(w, name, shape);
        // Each tensor by its slot in the layout, with the shape the layout gives it.
        let tensor = |slot: Slot| get(&slot.name(arch), &slot.shape(cfg));
        let has = |slot: Slot| chatforge_model::layout::slots(cfg).contains(&slot);
        let opt = |slot: Slot| -> Result<Option<Vec<f32>>> {
            if has(slot) {
                tensor(slot).map(Some)
            } else {
                Ok(None)
            }
        };
        let norm = |slot: &dyn Fn(Part) -> Slot| -> Result<Norm> {
            Ok(Norm {
                weight: tensor(slot(Part::Weight))?,
                bias: opt(slot(Part::Bias))?.unwrap_or_else(|| vec![0.0; c]),
            })
        };
        // A block's product: its parts' weights side by side as one `(in, out)` matrix packed for
        // the kernels (the Llama family's `(out, in)` weights transposed once, here), and the
        // parts' biases.
        let out_in = chatforge_model::layout::linear_out_in(arch);
        let linear = |i: usize, parts: &[Linear]| -> Result<(Matrix, Option<Vec<f32>>)> {
            let n_in = parts[0].shape(cfg).0;
            let n_out: usize = parts.iter().map(|l| l.shape(cfg).1).sum();
            let mut data = vec![0f32; n_in * n_out];
            let mut bias: Option<Vec<f32>> = None;
            let mut col = 0;
            for &l in parts {
                let (_, o) = l.shape(cfg);
                let wt = tensor(Slot::BlockLinear(i, l, Part::Weight))?;
                for r in 0..n_in {
                    for j in 0..o {
                        data[r * n_out + col + j] = if out_in { wt[j * n_in + r] } else { wt[r * o + j] };
                    }
                }
                if let Some(b) = opt(Slot::BlockLinear(i, l, Part::Bias))? {
                    bias.get_or_insert_with(|| vec![0.0; n_out])[col..col + o].copy_from_slice(&b);
                }
                col += o;
            }
            Ok((Matrix::new(data, n_in, n_out, Layout::InOut, weight_type), bias))
        };
        let llama = arch.is_llama();
        let layers = (0..cfg.n_layer)
            .map(|i| {
                let mut mats = Vec::with_capacity(PRODUCTS);
                let mut biases = Vec::with_capacity(PRODUCTS);
                for parts in layout::products(arch) {
                    let (m, b) = linear(i, parts)?;
                    mats.push(m);
                    biases.push(b);
                }
                Ok(Layer {
                    ln_1: norm(&|p| Slot::BlockNorm(i, LayerNormOf::Attn, p))?,
                    ln_2: norm(&|p| Slot::BlockNorm(i, LayerNormOf::Mlp, p))?,
                    mats: mats
                        .try_into()
                        .map_err(|_| Error::Invalid("four products a block".into()))?,
                    biases: biases
                        .try_into()
                        .map_err(|_| Error::Invalid("four products a block".into()))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let lm_head = if cfg.tie_embeddings {
            None
        } else {
            Some(Matrix::new(
                tensor(Slot::LmHead)?,
                v,
                c,
                Layout::OutIn,
                weight_type,
            ))
        };
        Ok(Engine {
            cfg: cfg.clone(),
            wte: Matrix::new(tensor(Slot::TokenEmbedding)?, v, c, Layout::OutIn, weight_type),
            wpe: opt(Slot::PositionEmbedding)?.unwrap_or_default(),
            inv_freq: if llama {
                chatforge_model::llama::rope_inv_freq(cfg)
            } else {
                Vec::new()
            },
            layers,
            ln_f: norm(&Slot::FinalNorm)?,
            lm_head,
            weight_type,
        })
    }

    /// Builds the decoder from named tensors.
    pub fn from_tensors<'a>(
        cfg: &GptConfig,
        tensors: impl IntoIterator<Item = (&'a String, &'a Tensor)>,
        weight_type: WeightType,
    ) -> Result<Engine> {
        let w: Weights = tensors.into_iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        Engine::new(cfg, &w, weight_type)
    }

    pub fn config(&self) -> &GptConfig {
        &self.cfg
    }

    pub fn weight_type(&self) -> WeightType {
        self.weight_type
    }

    /// Bytes of weights one decoding step reads.
    pub fn weight_bytes(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| l.mats.iter().map(Matrix::bytes).sum::<usize>())
            .sum();
        layers + self.lm_head.as_ref().unwrap_or(&self.wte).bytes()
    }

    pub fn new_sequence(&self) -> Sequence {
        Sequence {
            k: vec![Vec::new(); self.cfg.n_layer],
            v: vec![Vec::new(); self.cfg.n_layer],
            len: 0,
        }
    }

    /// Appends `tokens[i]` to `seqs[i]` for every `i` in one pass over the weights, and returns the
    /// logits `(rows, V)`: of every new token when `all_logits`, else of each sequence's last.
    pub fn forward(
        &self,
        seqs: &mut [&mut Sequence],
        tokens: &[&[u32]],
        all_logits: bool,
    ) -> Result<Vec<f32>> {
        self.forward_adapted(seqs, tokens, &[], all_logits)
    }

    /// [`forward`](Self::forward) with a LoRA adapter per sequence (`adapters[i]` for `seqs[i]`;
    /// none for a sequence past the list's end), applied unmerged, so sequences of one base with
    /// different adapters share the pass over the weights.
    pub fn forward_adapted(
        &self,
        seqs: &mut [&mut Sequence],
        tokens: &[&[u32]],
        adapters: &[Option<&Adapter>],
        all_logits: bool,
    ) -> Result<Vec<f32>> {
        if seqs.len() != tokens.len() || adapters.len() > seqs.len() {
            return Err(Error::Invalid(
                "one token list (and at most one adapter) per sequence".into(),
            ));
        }
        let cfg = &self.cfg;
        let (c, n_ctx, kv, w) = (cfg.n_embd, cfg.n_ctx, cfg.kv_dim(), cfg.qkv_dim());
        let rms = cfg.arch.is_llama();
        // Rows: (sequence, position) of every new token, sequence by sequence.
        let mut rows: Vec<(usize, usize)> = Vec::new();
        for (s, (seq, toks)) in seqs.iter().zip(tokens).enumerate() {
            if toks.is_empty() {
                return Err(Error::Invalid("nothing to feed a sequence".into()));
            }
            if seq.len + toks.len() > n_ctx {
                return Err(Error::ContextFull {
                    needed: seq.len + toks.len(),
                    n_ctx,
                });
            }
            for &t in toks.iter() {
                if t as usize >= self.cfg.vocab_size {
                    return Err(Error::Invalid(format!(
                        "token id {t} is outside the model's vocabulary of {}",
                        self.cfg.vocab_size
                    )));
                }
            }
            rows.extend((0..toks.len()).map(|i| (s, seq.len + i)));
        }
        let m = rows.len();
        let ids: Vec<u32> = tokens.iter().flat_map(|t| t.iter().copied()).collect();
        let mut x = vec![0f32; m * c];
        for (r, (row, &id)) in x.chunks_mut(c).zip(&ids).enumerate() {
            self.wte.row_into(id as usize, row);
            let p = rows[r].1;
            if !self.wpe.is_empty() {
                row.iter_mut()
                    .zip(&self.wpe[p * c..(p + 1) * c])
                    .for_each(|(a, b)| *a += b);
            }
        }
        let rope = (!self.inv_freq.is_empty()).then(|| rope_tables(&rows, &self.inv_freq));
        let (eps, inner) = (cfg.layer_norm_eps, cfg.n_inner);
        let mut h = vec![0f32; m * c];
        let mut qkv = vec![0f32; m * w];
        let mut att = vec![0f32; m * c];
        let mut proj = vec![0f32; m * c];
        let mut fc = vec![0f32; m * cfg.mlp_in_dim()];
        let mut act = vec![0f32; if rms { m * inner } else { 0 }];
        // Each sequence's rows, for its adapter.
        let mut spans = Vec::with_capacity(adapters.len());
        let mut start = 0;
        for (a, t) in adapters.iter().zip(tokens) {
            if let Some(a) = a {
                spans.push((*a, start..start + t.len()));
            }
            start += t.len();
        }
        let product = |li: usize, p: usize, input: &[f32], out: &mut [f32]| {
            let l = &self.layers[li];
            kernels::matmul(input, m, &l.mats[p], l.biases[p].as_deref(), out);
            let width = l.mats[p].n_out();
            for (a, rows) in &spans {
                a.apply(li, p, input, out, width, rows.clone());
            }
        };
        for (li, l) in self.layers.iter().enumerate() {
            norm(&x, &l.ln_1, eps, rms, &mut h);
            product(li, QKV, &h, &mut qkv);
            if let Some(tables) = &rope {
                rotate(&mut qkv, tables, cfg);
            }
            // Append this layer's keys and values, then attend.
            for (r, &(s, _)) in rows.iter().enumerate() {
                let row = &qkv[r * w..(r + 1) * w];
                seqs[s].k[li].extend_from_slice(&row[c..c + kv]);
                seqs[s].v[li].extend_from_slice(&row[c + kv..]);
            }
            self.attention(seqs, li, &rows, &qkv, &mut att);
            product(li, ATTN_OUT, &att, &mut proj);
            x.iter_mut().zip(&proj).for_each(|(a, b)| *a += b);
            norm(&x, &l.ln_2, eps, rms, &mut h);
            product(li, FC, &h, &mut fc);
            let hidden = if rms {
                swiglu(&fc, inner, &mut act);
                &act
            } else {
                gelu(&mut fc, cfg.activation);
                &fc
            };
            product(li, DOWN, hidden, &mut proj);
            x.iter_mut().zip(&proj).for_each(|(a, b)| *a += b);
        }
        for (seq, toks) in seqs.iter_mut().zip(tokens) {
            seq.len += toks.len();
        }
        // Final norm and the head, for the rows whose logits are wanted.
        let keep: Vec<usize> = if all_logits {
            (0..m).collect()
        } else {
            let mut last = Vec::new();
            let mut end = 0;
            for t in tokens {
                end += t.len();
                last.push(end - 1);
            }
            last
        };
        let sel: Vec<f32> = keep
            .iter()
            .flat_map(|&r| x[r * c..(r + 1) * c].iter().copied())
            .collect();
        let mut hs = vec![0f32; sel.len()];
        norm(&sel, &self.ln_f, eps, rms, &mut hs);
        let v = self.cfg.vocab_size;
        let mut logits = vec![0f32; keep.len() * v];
        let head = self.lm_head.as_ref().unwrap_or(&self.wte);
        kernels::matmul(&hs, keep.len(), head, None, &mut logits);
        Ok(logits)
    }

    /// Causal attention of each row over its own sequence's cache (which already holds the row).
    fn attention(
        &self,
        seqs: &[&mut Sequence],
        li: usize,
        rows: &[(usize, usize)],
        qkv: &[f32],
        out: &mut [f32],
    ) {
        let cfg = &self.cfg;
        let (c, nh, d, kv, w) = (
            cfg.n_embd,
            cfg.n_head,
            cfg.head_dim(),
            cfg.kv_dim(),
            cfg.qkv_dim(),
        );
        // Grouped-query attention: query head `h` reads key/value head `h / g`.
        let g = nh / cfg.n_kv_head;
        let scale = 1.0 / (d as f32).sqrt();
        let one = |scores: &mut Vec<f32>, (i, y): (usize, &mut [f32])| {
            let (r, h) = (i / nh, i % nh);
            let (s, pos) = rows[r];
            let (k, v) = (&seqs[s].k[li], &seqs[s].v[li]);
            let q = &qkv[r * w + h * d..r * w + (h + 1) * d];
            scores.resize(pos + 1, 0.0);
            kernels::attend(q, k, v, kv, (h / g) * d, scale, scores, y);
        };
        // One task per (row, head): `out` viewed as (rows·heads, D), on all threads unless the
        // work is too small to be worth handing out.
        if attention_work(rows, c) < SERIAL_ATTENTION_WORK {
            let mut scores = Vec::new();
            out.chunks_mut(d).enumerate().for_each(|t| one(&mut scores, t));
        } else {
            out.par_chunks_mut(d).enumerate().for_each_init(Vec::new, one);
        }
    }
}

/// Below this many query-key products a step's attention runs on the calling thread: it takes a
/// few microseconds there, less than handing tasks to the others (GPT-2 small goes parallel from
/// 85 cached positions at batch 1).
const SERIAL_ATTENTION_WORK: usize = 1 << 16;

/// Query-key products of one step's attention: each row against every position up to its own.
fn attention_work(rows: &[(usize, usize)], c: usize) -> usize {
    rows.iter().map(|&(_, pos)| (pos + 1) * c).sum()
}

/// Layer norm, or with `rms` the Llama family's RMSNorm, of every row.
fn norm(x: &[f32], n: &Norm, eps: f64, rms: bool, out: &mut [f32]) {
    let c = n.weight.len();
    vectorized(|| {
        for (row, o) in x.chunks(c).zip(out.chunks_mut(c)) {
            if rms {
                rms_norm_row(row, &n.weight, eps as f32, o);
            } else {
                layer_norm_row(row, &n.weight, Some(&n.bias), eps as f32, o);
            }
        }
    })
}

/// Each row's rotary `cos` and `sin` (`d/2` each) at its position, as the training engine makes
/// them.
fn rope_tables(rows: &[(usize, usize)], inv_freq: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let half = inv_freq.len();
    let (mut cos, mut sin) = (vec![0f32; rows.len() * half], vec![0f32; rows.len() * half]);
    for ((&(_, pos), c), s) in rows.iter().zip(cos.chunks_mut(half)).zip(sin.chunks_mut(half)) {
        rope_angles(pos as u32, inv_freq, c, s);
    }
    (cos, sin)
}

/// Rotates each row's query and key heads.
fn rotate(qkv: &mut [f32], (cos, sin): &(Vec<f32>, Vec<f32>), cfg: &GptConfig) {
    let (d, w) = (cfg.head_dim(), cfg.qkv_dim());
    let half = d / 2;
    let heads = cfg.n_head + cfg.n_kv_head;
    for ((row, c), s) in qkv.chunks_mut(w).zip(cos.chunks(half)).zip(sin.chunks(half)) {
        rotate_heads(row, (c, s), (d, heads), false);
    }
}

/// SwiGLU: `act = silu(gate) · up`, where a row of `fc` is `[gate | up]`.
fn swiglu(fc: &[f32], inner: usize, act: &mut [f32]) {
    vectorized(|| {
        for (x, o) in fc.chunks(2 * inner).zip(act.chunks_mut(inner)) {
            swiglu_row(x, o);
        }
    })
}

/// GELU in place, with the vectorised `fast_math` functions the training engine uses.
fn gelu(x: &mut [f32], a: Activation) {
    let run = |c: &mut [f32]| vectorized(|| c.iter_mut().for_each(|v| *v = gelu_fast(a, *v)));
    if x.len() < 1 << 16 {
        run(x);
    } else {
        x.par_chunks_mut(1 << 14).for_each(run);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use chatforge_data::Rng;
    use chatforge_model::init_weights;

    use super::*;

    fn weights(cfg: &GptConfig) -> Weights {
        init_weights(cfg, &mut Rng::new(3)).unwrap()
    }

    /// The oracle's logits, one row a position.
    fn oracle_logits(cfg: &GptConfig, w: &Weights, ids: &[u32]) -> Vec<Vec<f32>> {
        let flat = chatforge_oracle::logits(cfg, None, w, &[ids.to_vec()]);
        flat.chunks(cfg.vocab_size).map(<[f32]>::to_vec).collect()
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    #[test]
    fn matches_the_training_forward_with_and_without_cache() {
        for tie in [true, false] {
            let cfg = GptConfig {
                tie_embeddings: tie,
                activation: if tie {
                    Activation::GeluTanh
                } else {
                    Activation::GeluErf
                },
                n_ctx: 128,
                ..GptConfig::tiny(97)
            };
            let w = weights(&cfg);
            let eng = Engine::new(&cfg, &w, WeightType::F32).unwrap();
            let ids: Vec<u32> = (0..100).map(|i| (i * 7 + 3) % 97).collect();
            // The prompt's attention runs on all threads, each cached step's on one.
            let rows: Vec<(usize, usize)> = (0..ids.len()).map(|p| (0, p)).collect();
            assert!(attention_work(&rows, cfg.n_embd) >= SERIAL_ATTENTION_WORK);
            assert!(attention_work(&[(0, ids.len() - 1)], cfg.n_embd) < SERIAL_ATTENTION_WORK);
            let want = oracle_logits(&cfg, &w, &ids);
            // Whole prompt at once (the gemm path, more than 8 rows), every row's logits.
            let mut seq = eng.new_sequence();
            let all = eng.forward(&mut [&mut seq], &[&ids], true).unwrap();
            for (r, row) in all.chunks(97).enumerate() {
                assert!(max_diff(row, &want[r]) < 1e-4, "prompt row {r}");
            }
            // Token by token through the cache (the streaming path).
            let mut seq = eng.new_sequence();
            for (r, id) in ids.iter().enumerate() {
                let l = eng.forward(&mut [&mut seq], &[&[*id]], false).unwrap();
                assert!(max_diff(&l, &want[r]) < 1e-4, "cached step {r}");
            }
            assert_eq!(seq.len(), ids.len());
        }
    }

    #[test]
    fn batched_sequences_of_different_lengths_match_single_ones() {
        let cfg = GptConfig::tiny(61);
        let w = weights(&cfg);
        let eng = Engine::new(&cfg, &w, WeightType::F32).unwrap();
        let prompts: [&[u32]; 3] = [&[1, 2, 3], &[4, 5, 6, 7, 8, 9, 10], &[11]];
        let mut single = Vec::new();
        for p in prompts {
            let mut s = eng.new_sequence();
            eng.forward(&mut [&mut s], &[p], false).unwrap();
            single.push(eng.forward(&mut [&mut s], &[&[42]], false).unwrap());
        }
        let mut seqs: Vec<Sequence> = prompts.iter().map(|_| eng.new_sequence()).collect();
        let mut refs: Vec<&mut Sequence> = seqs.iter_mut().collect();
        let first = eng.forward(&mut refs, &prompts, false).unwrap();
        assert_eq!(first.len(), 3 * 61);
        let next = eng.forward(&mut refs, &[&[42], &[42], &[42]], false).unwrap();
        for (i, want) in single.iter().enumerate() {
            assert!(max_diff(&next[i * 61..(i + 1) * 61], want) < 1e-5, "sequence {i}");
        }
    }

    #[test]
    fn bf16_and_q8_weights_stay_close_and_context_is_enforced() {
        let cfg = GptConfig::tiny(61);
        let w = weights(&cfg);
        let f = Engine::new(&cfg, &w, WeightType::F32).unwrap();
        let b = Engine::new(&cfg, &w, WeightType::Bf16).unwrap();
        assert!(b.weight_bytes() * 2 == f.weight_bytes());
        let ids = [5u32, 9, 13, 2];
        let lf = f.forward(&mut [&mut f.new_sequence()], &[&ids], false).unwrap();
        let lb = b.forward(&mut [&mut b.new_sequence()], &[&ids], false).unwrap();
        assert!(max_diff(&lf, &lb) < 0.05, "{}", max_diff(&lf, &lb));
        // q8: a little over a quarter of the bytes; a prompt of more than 8 tokens takes the
        // gemm path (the dequantised matrix), a short one the streaming kernels.
        let q = Engine::new(&cfg, &w, WeightType::Q8).unwrap();
        assert!(
            q.weight_bytes() * 3 < f.weight_bytes(),
            "{} vs {}",
            q.weight_bytes(),
            f.weight_bytes()
        );
        let lq = q.forward(&mut [&mut q.new_sequence()], &[&ids], false).unwrap();
        assert!(max_diff(&lf, &lq) < 0.05, "{}", max_diff(&lf, &lq));
        let prompt: Vec<u32> = (0..12).map(|i| (i * 7 % 61) as u32).collect();
        let lf = f
            .forward(&mut [&mut f.new_sequence()], &[&prompt], false)
            .unwrap();
        let lq = q
            .forward(&mut [&mut q.new_sequence()], &[&prompt], false)
            .unwrap();
        assert!(max_diff(&lf, &lq) < 0.05, "{}", max_diff(&lf, &lq));
        let long = vec![1u32; cfg.n_ctx + 1];
        let err = f
            .forward(&mut [&mut f.new_sequence()], &[&long], false)
            .unwrap_err();
        assert!(err.to_string().contains("context"), "{err}");
        let err = f
            .forward(&mut [&mut f.new_sequence()], &[&[61]], false)
            .unwrap_err();
        assert!(err.to_string().contains("vocabulary"), "{err}");
    }
}
