//! The backward pass, block by block from the head down (recomputing a block first with gradient
//! checkpointing).

use super::*;

#[inline]
pub(super) fn backward(
    m: &Model,
    params: &[f32],
    grads: &mut [f32],
    acts: &mut Acts,
    s: &mut Scratch,
    batch: &StepBatch<'_>,
) {
    let cfg = &m.cfg;
    let (c, v) = (cfg.n_embd, cfg.vocab_size);
    let dims = Dims::of(cfg);
    let n = batch.b * batch.t;
    let w = m.params(params);
    let (wts, frozen) = (w.wts, w.frozen);
    // Head: dlnf = dlogits · head; dhead += dlogitsᵀ · lnf (a frozen head has no gradient),
    // over the positions the head computed (the others' gradient is 0).
    let rows = acts.head_rows.len();
    let all = rows == n;
    // With fewer rows, dlnf's rows go through `dres` (zeroed below before its own use).
    let dlnf = if all { &mut s.dnarrow } else { &mut s.dres };
    if rows > 0 {
        gemm(
            dlnf,
            View::rows(0, rows, c, c),
            &acts.logits,
            View::rows(0, rows, v, v),
            wts,
            View::rows(m.head, v, c, c),
            w.how(false),
        );
    }
    if !all {
        // head_rows is ascending: each position finds its row, or has no gradient.
        let (dres, head_rows) = (&s.dres, &acts.head_rows);
        s.dnarrow
            .par_chunks_mut(c)
            .enumerate()
            .for_each(|(i, dst)| match head_rows.binary_search(&i) {
                Ok(k) => dst.copy_from_slice(&dres[k * c..(k + 1) * c]),
                Err(_) => dst.fill(0.0),
            });
    }
    if !frozen && rows > 0 {
        gemm(
            grads,
            View::rows(m.head, v, c, c),
            &acts.logits,
            View::rows(0, rows, v, v).t(),
            if all { &acts.lnf } else { &acts.lnf_rows },
            View::rows(0, rows, c, c),
            w.how(true),
        );
    }
    s.dres.par_chunks_mut(1 << 14).for_each(|x| x.fill(0.0));
    let mut g = Grads {
        w,
        n,
        grads: &mut *grads,
        wq: &mut s.wq,
        du: &mut s.du,
    };
    let last = &acts.layers[cfg.n_layer - 1].res3;
    g.layer_norm(
        &mut s.dres,
        &s.dnarrow,
        last,
        &acts.lnf_stats,
        ((m.lnf_w, m.lnf_b), c),
        m.rms,
    );
    for l in (0..cfg.n_layer).rev() {
        let (lp, lm) = (m.layers[l], &acts.masks[l]);
        let input = block_input(&acts.x0, &acts.layers, l);
        // With checkpointing the block's activations are recomputed from its kept input.
        if let Some(work) = acts.work.as_mut() {
            let block = Block {
                m,
                w,
                l,
                masks: lm,
                tiles: &acts.row_tiles,
                rope: (&acts.cos, &acts.sin),
                batch,
            };
            layer_forward(&block, input, work, s);
        }
        let a = acts.work.as_ref().unwrap_or(&acts.layers[l]);
        let mut g = Grads {
            w,
            n,
            grads: &mut *grads,
            wq: &mut s.wq,
            du: &mut s.du,
        };
        // res3 = res2 + dropout(fch_act · Wfcproj + b)
        let dy = through_mask(&mut s.dmask, &s.dres, lm.res[1].as_ref());
        let drop = drop_in(lm, 3, &mut s.xdrop);
        g.linear(&mut s.dwide, dy, &a.fch_act, lp.fcproj(cfg), &a.u[3], drop);
        // fch = ln2 · Wfc + b, through the activation (SwiGLU's gradient is twice as wide).
        let dfch: &[f32] = if cfg.activation == Activation::Silu {
            swiglu_bwd(&mut s.dfc, &s.dwide, &a.fch, cfg.n_inner);
            &s.dfc
        } else {
            gelu_backward(&mut s.dwide, &a.fch, cfg.activation);
            &s.dwide
        };
        let drop = drop_in(lm, 2, &mut s.xdrop);
        g.linear(&mut s.dnarrow, dfch, &a.ln2, lp.fc(cfg), &a.u[2], drop);
        g.layer_norm(
            &mut s.dres,
            &s.dnarrow,
            &a.res2,
            &a.ln2_stats,
            ((lp.ln2_w, lp.ln2_b), c),
            m.rms,
        );
        // res2 = input + dropout(atty · Wproj + b)
        let dy = through_mask(&mut s.dmask, &s.dres, lm.res[0].as_ref());
        let drop = drop_in(lm, 1, &mut s.xdrop);
        g.linear(&mut s.dnarrow, dy, &a.atty, lp.proj(cfg), &a.u[1], drop);
        attention_bwd(
            &mut s.dqkv,
            &mut s.att,
            &s.dnarrow,
            (&a.qkv, &a.att_stats),
            batch,
            &acts.row_tiles,
            dims,
            lm.att.as_ref(),
        );
        // Back through the rotation of q and k.
        if !m.inv_freq.is_empty() {
            rope(
                &mut s.dqkv,
                (&acts.cos, &acts.sin),
                (dims.w, dims.d, cfg.n_head + cfg.n_kv_head),
                true,
            );
        }
        // qkv = ln1 · Wattn + b
        let drop = drop_in(lm, 0, &mut s.xdrop);
        g.linear(&mut s.dnarrow, &s.dqkv, &a.ln1, lp.attn(cfg), &a.u[0], drop);
        g.layer_norm(
            &mut s.dres,
            &s.dnarrow,
            input,
            &a.ln1_stats,
            ((lp.ln1_w, lp.ln1_b), c),
            m.rms,
        );
    }
    // Embeddings: each row's gradient (through their dropout) to its token's and its position's
    // row.
    if !frozen {
        if let Some(mask) = &acts.emb_mask {
            apply_mask(&mut s.dres, None, mask, false);
        }
        for i in 0..n {
            let (tok, pos) = (batch.inputs[i] as usize, batch.positions[i] as usize);
            let g = &s.dres[i * c..(i + 1) * c];
            let dt = &mut grads[m.wte + tok * c..m.wte + (tok + 1) * c];
            dt.iter_mut().zip(g).for_each(|(a, b)| *a += b);
            if let Some(wpe) = m.wpe {
                let dp = &mut grads[wpe + pos * c..wpe + (pos + 1) * c];
                dp.iter_mut().zip(g).for_each(|(a, b)| *a += b);
            }
        }
    }
}

impl Grads<'_> {
    /// Backward of the layer norm whose weight (and bias) sit at `at`: `dx += ` its input's
    /// gradient from `dy`, and a trainable model's weight and bias gradients.
    #[inline]
    fn layer_norm(
        &mut self,
        dx: &mut [f32],
        dy: &[f32],
        x: &[f32],
        stats: &[(f32, f32)],
        (at, c): ((usize, Option<usize>), usize),
        rms: bool,
    ) {
        let (gw, gb) = norm_grads(self.grads, self.w.frozen, at.0, at.1, c);
        layer_norm_bwd(dx, gw, gb, dy, x, stats, self.w.norm(at, c).0, c, rms);
    }
}

/// `dwide ⊙= gelu'(fch)`, one loop per activation so each is vectorised with its function inlined.
#[inline]
fn gelu_backward(dwide: &mut [f32], fch: &[f32], act: Activation) {
    let _span = span(Family::Activation);
    match act {
        Activation::GeluTanh => scale_by(dwide, fch, |x| gelu_fast_grad(Activation::GeluTanh, x)),
        Activation::GeluErf => scale_by(dwide, fch, |x| gelu_fast_grad(Activation::GeluErf, x)),
        // SwiGLU goes through `swiglu_bwd`.
        Activation::Silu => {}
    }
}
