//! The forward pass: embeddings, each block, the final norm, the head and the loss with its
//! gradient written over the logits.

use super::*;

/// Forward of the whole model to the logits; also lays out this batch's attention tiles, which
/// backward reuses.
#[inline]
pub(super) fn forward(m: &Model, params: &[f32], acts: &mut Acts, s: &mut Scratch, batch: &StepBatch<'_>) {
    let t = batch.t;
    acts.row_tiles = (0..batch.b)
        .map(|r| row_tiles(&batch.segments[r * t..(r + 1) * t]))
        .collect();
    let cfg = &m.cfg;
    let (c, v, eps) = (cfg.n_embd, cfg.vocab_size, cfg.layer_norm_eps as f32);
    let n = batch.b * batch.t;
    let w = m.params(params);
    // Embeddings.
    let wte = &w.wts[m.wte..m.wte + v * c];
    let wpe = m.wpe.map(|at| &w.wts[at..at + cfg.n_ctx * c]);
    acts.x0.par_chunks_mut(c).enumerate().for_each(|(i, row)| {
        let (tok, pos) = (batch.inputs[i] as usize, batch.positions[i] as usize);
        row.copy_from_slice(&wte[tok * c..(tok + 1) * c]);
        if let Some(wpe) = wpe {
            row.iter_mut()
                .zip(&wpe[pos * c..(pos + 1) * c])
                .for_each(|(x, p)| *x += p);
        }
    });
    if !m.inv_freq.is_empty() {
        rope_tables(&mut acts.cos, &mut acts.sin, batch.positions, &m.inv_freq);
    }
    if let Some(mask) = &acts.emb_mask {
        apply_mask(&mut acts.x0, None, mask, false);
    }
    for l in 0..cfg.n_layer {
        let (before, rest) = acts.layers.split_at_mut(l);
        let input = block_input(&acts.x0, before, l);
        let block = Block {
            m,
            w,
            l,
            masks: &acts.masks[l],
            tiles: &acts.row_tiles,
            rope: (&acts.cos, &acts.sin),
            batch,
        };
        match acts.work.as_mut() {
            // Checkpointing: the shared buffers compute the block; its output is what is kept.
            Some(work) => {
                layer_forward(&block, input, work, s);
                std::mem::swap(&mut work.res3, &mut rest[0].res3);
            }
            None => layer_forward(&block, input, &mut rest[0], s),
        }
    }
    let last = &acts.layers[cfg.n_layer - 1].res3;
    let (nw, nb) = w.norm((m.lnf_w, m.lnf_b), c);
    layer_norm_fwd(&mut acts.lnf, &mut acts.lnf_stats, last, nw, nb, c, eps, m.rms);
    // logits = lnf · headᵀ, for the positions that carry a weight only.
    acts.head_rows.clear();
    acts.head_rows.extend((0..n).filter(|&i| batch.weights[i] != 0));
    let rows = acts.head_rows.len();
    if rows == 0 {
        return;
    }
    let lnf = if rows == n {
        &acts.lnf
    } else {
        let (lnf, head_rows) = (&acts.lnf, &acts.head_rows);
        acts.lnf_rows[..rows * c]
            .par_chunks_mut(c)
            .zip(head_rows.par_iter())
            .for_each(|(dst, &i)| dst.copy_from_slice(&lnf[i * c..(i + 1) * c]));
        &acts.lnf_rows
    };
    gemm(
        &mut acts.logits,
        View::rows(0, rows, v, v),
        lnf,
        View::rows(0, rows, c, c),
        w.wts,
        View::rows(m.head, v, c, c).t(),
        w.how(false),
    );
}

/// What one block's forward reads: the model, its weights, which block, and this micro-batch's
/// masks and attention tiles.
pub(super) struct Block<'a> {
    pub(super) m: &'a Model,
    pub(super) w: Params<'a>,
    pub(super) l: usize,
    pub(super) masks: &'a LayerMasks,
    pub(super) tiles: &'a [(Vec<Tile>, bool)],
    /// This micro-batch's rotary `cos` and `sin` (empty without rotary embeddings).
    pub(super) rope: (&'a [f32], &'a [f32]),
    pub(super) batch: &'a StepBatch<'a>,
}

/// Block `l`'s forward from its `input` (the embeddings or block `l − 1`'s output) into `a`.
#[inline]
pub(super) fn layer_forward(k: &Block<'_>, input: &[f32], a: &mut LayerActs, s: &mut Scratch) {
    let cfg = &k.m.cfg;
    let (c, eps, rms) = (cfg.n_embd, cfg.layer_norm_eps as f32, k.m.rms);
    let dims = Dims::of(cfg);
    let n = k.batch.b * k.batch.t;
    let (w, lp, lm) = (&k.w, k.m.layers[k.l], k.masks);
    let (wq, xdrop) = (&mut s.wq, &mut s.xdrop);
    let [u_attn, u_proj, u_fc, u_fcproj] = &mut a.u;
    let (nw, nb) = w.norm((lp.ln1_w, lp.ln1_b), c);
    layer_norm_fwd(&mut a.ln1, &mut a.ln1_stats, input, nw, nb, c, eps, rms);
    linear_fwd(
        w,
        wq,
        &mut a.qkv,
        &a.ln1,
        n,
        lp.attn(cfg),
        u_attn,
        drop_in(lm, 0, xdrop),
    );
    if !k.m.inv_freq.is_empty() {
        rope(
            &mut a.qkv,
            k.rope,
            (dims.w, dims.d, cfg.n_head + cfg.n_kv_head),
            false,
        );
    }
    attention_fwd(
        dims,
        k.tiles,
        &mut a.att_stats,
        &mut a.atty,
        &a.qkv,
        k.batch,
        &mut s.att,
        lm.att.as_ref(),
    );
    // res2 = input + atty · Wproj + b
    linear_fwd(
        w,
        wq,
        &mut a.res2,
        &a.atty,
        n,
        lp.proj(cfg),
        u_proj,
        drop_in(lm, 1, xdrop),
    );
    if let Some(mask) = &lm.res[0] {
        apply_mask(&mut a.res2, None, mask, false);
    }
    add_into(&mut a.res2, input);
    let (nw, nb) = w.norm((lp.ln2_w, lp.ln2_b), c);
    layer_norm_fwd(&mut a.ln2, &mut a.ln2_stats, &a.res2, nw, nb, c, eps, rms);
    linear_fwd(
        w,
        wq,
        &mut a.fch,
        &a.ln2,
        n,
        lp.fc(cfg),
        u_fc,
        drop_in(lm, 2, xdrop),
    );
    match cfg.activation {
        Activation::GeluTanh => {
            let _span = span(Family::Activation);
            map_into(&mut a.fch_act, &a.fch, |x| gelu_fast(Activation::GeluTanh, x))
        }
        Activation::GeluErf => {
            let _span = span(Family::Activation);
            map_into(&mut a.fch_act, &a.fch, |x| gelu_fast(Activation::GeluErf, x))
        }
        Activation::Silu => swiglu_fwd(&mut a.fch_act, &a.fch, cfg.n_inner),
    }
    // res3 = res2 + gelu · Wfcproj + b
    linear_fwd(
        w,
        wq,
        &mut a.res3,
        &a.fch_act,
        n,
        lp.fcproj(cfg),
        u_fcproj,
        drop_in(lm, 3, xdrop),
    );
    if let Some(mask) = &lm.res[1] {
        apply_mask(&mut a.res3, None, mask, false);
    }
    add_into(&mut a.res3, &a.res2);
}

/// The weighted cross-entropy summed over positions (in f64), with `(softmax − onehot) · weight ·
/// scale` written over the logits (`v` a row; row `k` is position `rows[k]`'s).
#[inline]
pub(super) fn loss_and_dlogits(
    logits: &mut [f32],
    rows: &[usize],
    v: usize,
    batch: &StepBatch<'_>,
    scale: f32,
) -> f64 {
    let _span = span(Family::Loss);
    logits[..rows.len() * v]
        .par_chunks_mut(v)
        .zip(rows.par_iter())
        .map(|(row, &i)| {
            let w = f32::from(batch.weights[i]);
            let target = batch.targets[i] as usize;
            let (_, sum) = super::logps::exp_row(row);
            let p_target = row[target] / sum;
            if w == 0.0 {
                row.fill(0.0);
                return 0.0;
            }
            let k = w * scale / sum;
            vectorized(|| row.iter_mut().for_each(|x| *x *= k));
            row[target] -= w * scale;
            -f64::from(p_target.max(f32::MIN_POSITIVE)).ln() * f64::from(w)
        })
        .collect::<Vec<f64>>()
        .iter()
        .sum()
}
