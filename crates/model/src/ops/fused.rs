//! Fused row-wise kernels with hand-written backward: softmax, layer normalisation (without the
//! affine part, which stays in autograd) and weighted cross-entropy. Each replaces a chain of
//! candle ops that would allocate a full-size tensor per step, forward and backward; each is
//! tested against that chain below.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor};

use crate::Result;

pub(crate) fn f32s<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{op}: expected f32")
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

fn u32s<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> candle_core::Result<&'a [u32]> {
    let CpuStorage::U32(v) = s else {
        candle_core::bail!("{op}: expected u32 targets")
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

/// Runs `f(row_index, out_row)` over rows of `d` values, split across the machine's cores.
pub(crate) fn par_rows(out: &mut [f32], d: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let rows = out.len() / d.max(1);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = rows.div_ceil(threads).max(1);
    if threads == 1 || out.len() < 1 << 15 {
        out.chunks_mut(d).enumerate().for_each(|(r, row)| f(r, row));
        return;
    }
    std::thread::scope(|s| {
        for (i, part) in out.chunks_mut(per * d).enumerate() {
            let f = &f;
            s.spawn(move || {
                part.chunks_mut(d)
                    .enumerate()
                    .for_each(|(r, row)| f(i * per + r, row))
            });
        }
    });
}

pub(crate) fn last_dim(l: &Layout) -> usize {
    l.shape().dims().last().copied().unwrap_or(1)
}

/// Softmax over the last dimension; with `causal`, rows are queries `(…, T, S)` and query `i`
/// sees keys `0..=i + S − T` only (the causal mask, applied without materialising it).
struct Softmax {
    causal: bool,
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "chatforge-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32s(s, l, "softmax")?;
        let d = last_dim(l);
        let dims = l.shape().dims();
        let t = if dims.len() >= 2 { dims[dims.len() - 2] } else { 1 };
        let causal = self.causal;
        if causal && t > d {
            candle_core::bail!("causal softmax: {t} queries but only {d} keys");
        }
        let mut y = vec![0f32; x.len()];
        par_rows(&mut y, d, |r, out| {
            let visible = if causal { r % t + (d - t) + 1 } else { d };
            let (out, _) = out.split_at_mut(visible);
            let row = &x[r * d..r * d + visible];
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for (o, &v) in out.iter_mut().zip(row) {
                *o = (v - max).exp();
                sum += *o;
            }
            let inv = 1.0 / sum;
            out.iter_mut().for_each(|o| *o *= inv);
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(res.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxGrad)?))
    }
}

/// `(y, dy) → y · (dy − Σ dy·y)` per row.
pub(crate) struct SoftmaxGrad;

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "chatforge-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (y, g) = (f32s(s1, l1, "softmax-grad")?, f32s(s2, l2, "softmax-grad")?);
        let d = last_dim(l1);
        let mut dx = vec![0f32; y.len()];
        par_rows(&mut dx, d, |r, out| {
            let (yr, gr) = (&y[r * d..(r + 1) * d], &g[r * d..(r + 1) * d]);
            let dot: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
            for ((o, &yv), &gv) in out.iter_mut().zip(yr).zip(gr) {
                *o = yv * (gv - dot);
            }
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// Softmax over the last dimension, with a fused backward.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(Softmax { causal: false })?)
}

/// Causal attention weights: softmax over keys `(…, T, S)` where query `i` sees keys
/// `0..=i + S − T` (the last `T` of `S` keys are the queries themselves). Masked weights are 0.
pub fn softmax_causal(x: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(Softmax { causal: true })?)
}

fn row_stats(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = row.iter().sum::<f32>() / n;
    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

struct Normalize(f32);

impl CustomOp1 for Normalize {
    fn name(&self) -> &'static str {
        "chatforge-normalize"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32s(s, l, "normalize")?;
        let d = last_dim(l);
        let mut y = vec![0f32; x.len()];
        par_rows(&mut y, d, |r, out| {
            let row = &x[r * d..(r + 1) * d];
            let (mean, rstd) = row_stats(row, self.0);
            out.iter_mut().zip(row).for_each(|(o, &v)| *o = (v - mean) * rstd);
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(
            arg.contiguous()?
                .apply_op2_no_bwd(&grad.contiguous()?, &NormalizeGrad(self.0))?,
        ))
    }
}

/// `(x, dy) → rstd · (dy − mean(dy) − x̂ · mean(dy · x̂))` per row.
struct NormalizeGrad(f32);

impl CustomOp2 for NormalizeGrad {
    fn name(&self) -> &'static str {
        "chatforge-normalize-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, g) = (f32s(s1, l1, "normalize-grad")?, f32s(s2, l2, "normalize-grad")?);
        let d = last_dim(l1);
        let mut dx = vec![0f32; x.len()];
        par_rows(&mut dx, d, |r, out| {
            let (xr, gr) = (&x[r * d..(r + 1) * d], &g[r * d..(r + 1) * d]);
            let (mean, rstd) = row_stats(xr, self.0);
            let n = d as f32;
            let g_mean = gr.iter().sum::<f32>() / n;
            let gx_mean = xr
                .iter()
                .zip(gr)
                .map(|(&v, &gv)| (v - mean) * rstd * gv)
                .sum::<f32>()
                / n;
            for ((o, &v), &gv) in out.iter_mut().zip(xr).zip(gr) {
                *o = rstd * (gv - g_mean - (v - mean) * rstd * gx_mean);
            }
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// `(x − mean) / √(var + eps)` over the last dimension, with a fused backward.
pub fn normalize(x: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(Normalize(eps as f32))?)
}

/// Weighted mean cross-entropy: `Σ wᵢ · nllᵢ / Σ wᵢ` over rows of logits.
struct CrossEntropy;

/// The checked inputs of the cross-entropy kernels.
struct CeInputs<'a> {
    logits: &'a [f32],
    targets: &'a [u32],
    weights: &'a [f32],
    vocab: usize,
    total: f32,
}

impl CrossEntropy {
    fn inputs<'a>(
        s1: &'a CpuStorage,
        l1: &Layout,
        s2: &'a CpuStorage,
        l2: &Layout,
        s3: &'a CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<CeInputs<'a>> {
        let logits = f32s(s1, l1, "cross-entropy")?;
        let targets = u32s(s2, l2, "cross-entropy")?;
        let weights = f32s(s3, l3, "cross-entropy")?;
        let v = last_dim(l1);
        if targets.len() * v != logits.len() || weights.len() != targets.len() {
            candle_core::bail!(
                "cross-entropy: {} logits, {} targets, {} weights",
                logits.len(),
                targets.len(),
                weights.len()
            );
        }
        if let Some(&t) = targets.iter().find(|&&t| t as usize >= v) {
            candle_core::bail!("cross-entropy: target {t} outside the vocabulary of {v}");
        }
        let total: f32 = weights.iter().sum();
        Ok(CeInputs {
            logits,
            targets,
            weights,
            vocab: v,
            total,
        })
    }
}

impl CustomOp3 for CrossEntropy {
    fn name(&self) -> &'static str {
        "chatforge-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CeInputs {
            logits,
            targets,
            weights,
            vocab: v,
            total,
        } = Self::inputs(s1, l1, s2, l2, s3, l3)?;
        let mut nll = vec![0f32; targets.len()];
        par_rows(&mut nll, 1, |r, out| {
            if weights[r] == 0.0 {
                return;
            }
            let row = &logits[r * v..(r + 1) * v];
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let lse = max + row.iter().map(|&x| (x - max).exp()).sum::<f32>().ln();
            out[0] = weights[r] * (lse - row[targets[r] as usize]);
        });
        let loss = nll.iter().map(|&x| f64::from(x)).sum::<f64>() / f64::from(total);
        Ok((CpuStorage::F32(vec![loss as f32]), Shape::from(())))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        weights: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = logits.apply_op3_no_bwd(targets, weights, &CrossEntropyGrad)?;
        Ok((Some(d.broadcast_mul(grad)?), None, None))
    }
}

/// `∂loss/∂logits = wᵢ / Σw · (softmax(row) − onehot(target))`.
struct CrossEntropyGrad;

impl CustomOp3 for CrossEntropyGrad {
    fn name(&self) -> &'static str {
        "chatforge-cross-entropy-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CeInputs {
            logits,
            targets,
            weights,
            vocab: v,
            total,
        } = CrossEntropy::inputs(s1, l1, s2, l2, s3, l3)?;
        let mut d = vec![0f32; logits.len()];
        par_rows(&mut d, v, |r, out| {
            let scale = weights[r] / total;
            if scale == 0.0 {
                return;
            }
            let row = &logits[r * v..(r + 1) * v];
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for (o, &x) in out.iter_mut().zip(row) {
                *o = (x - max).exp();
                sum += *o;
            }
            let k = scale / sum;
            out.iter_mut().for_each(|o| *o *= k);
            out[targets[r] as usize] -= scale;
        });
        Ok((CpuStorage::F32(d), l1.shape().clone()))
    }
}

/// Fused weighted cross-entropy of `logits` `(N, V)` f32 against `targets` `(N)` u32.
pub fn cross_entropy_fused(logits: &Tensor, targets: &Tensor, weights: &Tensor) -> Result<Tensor> {
    Ok(logits
        .contiguous()?
        .apply_op3(&targets.contiguous()?, &weights.contiguous()?, CrossEntropy)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::max_abs_diff;
    use candle_core::{D, DType, Device, Var};
    use chatforge_base::Rng;

    fn random(shape: &[usize], seed: u64) -> Var {
        let mut rng = Rng::new(seed);
        let n: usize = shape.iter().product();
        Var::from_vec(
            (0..n).map(|_| (rng.normal() * 2.0) as f32).collect(),
            shape,
            &Device::Cpu,
        )
        .unwrap()
    }

    /// Compares `fused` with `plain` on x: forward, and backward of Σ out · w for a random w.
    fn check(
        shape: &[usize],
        fused: impl Fn(&Tensor) -> Tensor,
        plain: impl Fn(&Tensor) -> Tensor,
        tol: f32,
    ) {
        let x = random(shape, 1);
        let w = random(shape, 2).as_tensor().detach();
        let (a, b) = (fused(x.as_tensor()), plain(x.as_tensor()));
        assert!(
            max_abs_diff(&a, &b) < tol,
            "forward differs by {}",
            max_abs_diff(&a, &b)
        );
        let ga = (a * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (b * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let (ga, gb) = (ga.get(x.as_tensor()).unwrap(), gb.get(x.as_tensor()).unwrap());
        assert!(
            max_abs_diff(ga, gb) < tol,
            "backward differs by {}",
            max_abs_diff(ga, gb)
        );
    }

    #[test]
    fn softmax_matches_candle() {
        check(
            &[3, 5, 70],
            |x| softmax_last_dim(x).unwrap(),
            |x| candle_nn::ops::softmax(x, D::Minus1).unwrap(),
            1e-6,
        );
    }

    #[test]
    fn softmax_with_masked_entries() {
        let m = crate::ops::causal_mask(4, 4, &Device::Cpu).unwrap();
        check(
            &[2, 4, 4],
            |x| softmax_last_dim(&x.broadcast_add(&m).unwrap()).unwrap(),
            |x| candle_nn::ops::softmax(&x.broadcast_add(&m).unwrap(), D::Minus1).unwrap(),
            1e-6,
        );
    }

    #[test]
    fn causal_softmax_equals_masked_softmax() {
        for (t, s) in [(4, 4), (2, 5)] {
            let m = crate::ops::causal_mask(t, s, &Device::Cpu).unwrap();
            check(
                &[3, t, s],
                |x| softmax_causal(x).unwrap(),
                |x| candle_nn::ops::softmax(&x.broadcast_add(&m).unwrap(), D::Minus1).unwrap(),
                1e-6,
            );
        }
    }

    #[test]
    fn normalize_matches_the_composition() {
        let plain = |x: &Tensor| {
            let mean = x.mean_keepdim(D::Minus1).unwrap();
            let xc = x.broadcast_sub(&mean).unwrap();
            let var = xc.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
            xc.broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap()).unwrap()
        };
        check(&[6, 7, 96], |x| normalize(x, 1e-5).unwrap(), plain, 2e-5);
    }

    #[test]
    fn cross_entropy_matches_the_composition() {
        let logits = random(&[50, 37], 3);
        let mut rng = Rng::new(4);
        let targets = Tensor::from_vec(
            (0..50).map(|_| rng.below(37) as u32).collect::<Vec<_>>(),
            50,
            &Device::Cpu,
        )
        .unwrap();
        let weights = Tensor::from_vec(
            (0..50).map(|i| (i % 3 != 0) as u8 as f32).collect::<Vec<_>>(),
            50,
            &Device::Cpu,
        )
        .unwrap();
        let fused = cross_entropy_fused(logits.as_tensor(), &targets, &weights).unwrap();
        let logp = candle_nn::ops::log_softmax(logits.as_tensor(), D::Minus1).unwrap();
        let picked = logp
            .gather(&targets.unsqueeze(1).unwrap(), 1)
            .unwrap()
            .squeeze(1)
            .unwrap();
        let plain = (picked.mul(&weights).unwrap().sum_all().unwrap().neg().unwrap()
            / weights.sum_all().unwrap())
        .unwrap();
        assert!(max_abs_diff(&fused, &plain) < 1e-5);
        let (gf, gp) = (
            (&fused * 3.0).unwrap().backward().unwrap(),
            (plain * 3.0).unwrap().backward().unwrap(),
        );
        let d = max_abs_diff(
            gf.get(logits.as_tensor()).unwrap(),
            gp.get(logits.as_tensor()).unwrap(),
        );
        assert!(d < 1e-6, "gradient differs by {d}");
        assert_eq!(fused.dtype(), DType::F32);
    }
}

/// Column sums of a row-major `(rows, cols)` matrix, rows split across cores.
fn column_sums(g: &[f32], cols: usize) -> Vec<f32> {
    let rows = g.len() / cols.max(1);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(rows.max(1));
    let per = rows.div_ceil(threads.max(1)).max(1);
    let partial: Vec<Vec<f32>> = std::thread::scope(|s| {
        let handles: Vec<_> = g
            .chunks(per * cols)
            .map(|part| {
                s.spawn(move || {
                    let mut acc = vec![0f32; cols];
                    for row in part.chunks_exact(cols) {
                        acc.iter_mut().zip(row).for_each(|(a, &v)| *a += v);
                    }
                    acc
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let mut out = vec![0f32; cols];
    for p in partial {
        out.iter_mut().zip(p).for_each(|(o, v)| *o += v);
    }
    out
}

/// `x + b` for `x` `(…, C)` and `b` `(C)`; backward: `dx = dy`, `db = Σ_rows dy`.
struct AddBias;

impl CustomOp2 for AddBias {
    fn name(&self) -> &'static str {
        "chatforge-add-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, b) = (f32s(s1, l1, "add-bias")?, f32s(s2, l2, "add-bias")?);
        let c = last_dim(l1);
        if b.len() != c {
            candle_core::bail!("add-bias: {} bias values for rows of {c}", b.len());
        }
        let mut y = vec![0f32; x.len()];
        par_rows(&mut y, c, |r, out| {
            out.iter_mut()
                .zip(&x[r * c..(r + 1) * c])
                .zip(b)
                .for_each(|((o, &v), &bv)| *o = v + bv);
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.contiguous()?;
        let c = b.dim(0)?;
        let db = {
            let (storage, layout) = g.storage_and_layout();
            let candle_core::Storage::Cpu(cpu) = &*storage else {
                candle_core::bail!("add-bias: only the CPU backend is supported")
            };
            column_sums(f32s(cpu, layout, "add-bias-grad")?, c)
        };
        Ok((Some(g.clone()), Some(Tensor::from_vec(db, c, b.device())?)))
    }
}

/// `x + bias` broadcast over the last dimension, with a fused backward for the bias.
pub fn add_bias(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op2(&bias.contiguous()?, AddBias)?)
}

#[cfg(test)]
mod bias_tests {
    use super::*;
    use crate::ops::max_abs_diff;
    use candle_core::{Device, Var};

    #[test]
    fn add_bias_matches_broadcast_add() {
        let x = Var::from_vec(
            (0..600).map(|i| (i as f32 * 0.37).sin()).collect(),
            (4, 10, 15),
            &Device::Cpu,
        )
        .unwrap();
        let b = Var::from_vec((0..15).map(|i| i as f32 * 0.1).collect(), 15, &Device::Cpu).unwrap();
        let w = Tensor::from_vec(
            (0..600).map(|i| (i as f32 * 0.11).cos()).collect(),
            (4, 10, 15),
            &Device::Cpu,
        )
        .unwrap();
        let fused = add_bias(x.as_tensor(), b.as_tensor()).unwrap();
        let plain = x.as_tensor().broadcast_add(b.as_tensor()).unwrap();
        assert_eq!(max_abs_diff(&fused, &plain), 0.0);
        let gf = (fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gp = (plain * &w).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(max_abs_diff(gf.get(b.as_tensor()).unwrap(), gp.get(b.as_tensor()).unwrap()) < 1e-5);
        assert_eq!(
            max_abs_diff(gf.get(x.as_tensor()).unwrap(), gp.get(x.as_tensor()).unwrap()),
            0.0
        );
    }
}

/// Layer norm with its affine part in one op: `y = (x − mean)·rstd·w + b` per row of `x` `(…, C)`.
struct LayerNormOp(f32);

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "chatforge-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w, b) = (
            f32s(s1, l1, "layer-norm")?,
            f32s(s2, l2, "layer-norm")?,
            f32s(s3, l3, "layer-norm")?,
        );
        let c = last_dim(l1);
        if w.len() != c || b.len() != c {
            candle_core::bail!(
                "layer-norm: weight {} and bias {} for rows of {c}",
                w.len(),
                b.len()
            );
        }
        let mut y = vec![0f32; x.len()];
        par_rows(&mut y, c, |r, out| {
            let row = &x[r * c..(r + 1) * c];
            let (mean, rstd) = row_stats(row, self.0);
            for (((o, &v), &wv), &bv) in out.iter_mut().zip(row).zip(w).zip(b) {
                *o = (v - mean) * rstd * wv + bv;
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = w.dim(0)?;
        let n = x.elem_count();
        // One kernel computes all three gradients, packed as [dx | dw | db].
        let packed = x.apply_op3_no_bwd(w, &grad.contiguous()?, &LayerNormGrad(self.0))?;
        let dx = packed.narrow(0, 0, n)?.reshape(x.shape())?;
        // Copied out: a view would keep the whole packed buffer alive with the parameter's gradient.
        let dw = packed.narrow(0, n, c)?.copy()?;
        let db = packed.narrow(0, n + c, c)?.copy()?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// `(x, w, dy) → [dx | dw | db]` of [`LayerNormOp`].
struct LayerNormGrad(f32);

impl CustomOp3 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "chatforge-layer-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w, g) = (
            f32s(s1, l1, "layer-norm-grad")?,
            f32s(s2, l2, "layer-norm-grad")?,
            f32s(s3, l3, "layer-norm-grad")?,
        );
        let c = last_dim(l1);
        let n = x.len();
        let mut dx = vec![0f32; n];
        // Per row: x̂, dx̂ = dy·w, dx = rstd · (dx̂ − mean(dx̂) − x̂ · mean(dx̂ · x̂)).
        par_rows(&mut dx, c, |r, out| {
            let (xr, gr) = (&x[r * c..(r + 1) * c], &g[r * c..(r + 1) * c]);
            let (mean, rstd) = row_stats(xr, self.0);
            let (mut sum_g, mut sum_gx) = (0f32, 0f32);
            for ((&v, &gv), &wv) in xr.iter().zip(gr).zip(w) {
                let gh = gv * wv;
                sum_g += gh;
                sum_gx += gh * (v - mean) * rstd;
            }
            let (mg, mgx) = (sum_g / c as f32, sum_gx / c as f32);
            for (((o, &v), &gv), &wv) in out.iter_mut().zip(xr).zip(gr).zip(w) {
                *o = rstd * (gv * wv - mg - (v - mean) * rstd * mgx);
            }
        });
        // dw = Σ_rows dy · x̂, db = Σ_rows dy.
        let mut gx = vec![0f32; n];
        par_rows(&mut gx, c, |r, out| {
            let (xr, gr) = (&x[r * c..(r + 1) * c], &g[r * c..(r + 1) * c]);
            let (mean, rstd) = row_stats(xr, self.0);
            out.iter_mut()
                .zip(xr)
                .zip(gr)
                .for_each(|((o, &v), &gv)| *o = gv * (v - mean) * rstd);
        });
        let dw = column_sums(&gx, c);
        let db = column_sums(g, c);
        dx.extend(dw);
        dx.extend(db);
        let len = dx.len();
        Ok((CpuStorage::F32(dx), Shape::from(len)))
    }
}

/// Layer normalisation with weight and bias, forward and backward each in one kernel.
pub fn layer_norm_fused(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        LayerNormOp(eps as f32),
    )?)
}

#[cfg(test)]
mod layer_norm_tests {
    use super::*;
    use crate::ops::max_abs_diff;
    use candle_core::{D, Device, Var};

    #[test]
    fn fused_layer_norm_matches_the_composition() {
        let v = |n: usize, k: f32| -> Vec<f32> { (0..n).map(|i| (i as f32 * k).sin() * 2.0 + 0.3).collect() };
        let x = Var::from_vec(v(6 * 40, 0.37), (6, 40), &Device::Cpu).unwrap();
        let w = Var::from_vec(v(40, 0.5), 40, &Device::Cpu).unwrap();
        let b = Var::from_vec(v(40, 0.9), 40, &Device::Cpu).unwrap();
        let up = Tensor::from_vec(v(6 * 40, 0.13), (6, 40), &Device::Cpu).unwrap();
        let fused = layer_norm_fused(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5).unwrap();
        let plain = {
            let t = x.as_tensor();
            let mean = t.mean_keepdim(D::Minus1).unwrap();
            let xc = t.broadcast_sub(&mean).unwrap();
            let var = xc.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
            let xhat = xc.broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap()).unwrap();
            xhat.broadcast_mul(w.as_tensor())
                .unwrap()
                .broadcast_add(b.as_tensor())
                .unwrap()
        };
        assert!(max_abs_diff(&fused, &plain) < 1e-5);
        let gf = (fused * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let gp = (plain * &up).unwrap().sum_all().unwrap().backward().unwrap();
        for var in [&x, &w, &b] {
            let d = max_abs_diff(gf.get(var.as_tensor()).unwrap(), gp.get(var.as_tensor()).unwrap());
            assert!(d < 1e-4, "gradient differs by {d}");
        }
    }
}
