//! The forward pass: embeddings, each block, the final norm, the head and the loss with its
//! gradient written over the logits.

use super::*;

impl TrainEngine {
    /// Forward of the whole model to the logits; also lays out this batch's attention tiles,
    /// which backward reuses.
    #[inline]
    pub(super) fn forward(&mut self, batch: &StepBatch<'_>) {
        let t = batch.t;
        self.row_tiles = (0..batch.b)
            .map(|r| row_tiles(&batch.segments[r * t..(r + 1) * t]))
            .collect();
        let cfg = self.cfg.clone();
        let mut wq = std::mem::take(&mut self.wq);
        let mut xdrop = std::mem::take(&mut self.xdrop);
        let mut pd = std::mem::take(&mut self.ascratch);
        let (c, v, eps) = (cfg.n_embd, cfg.vocab_size, cfg.layer_norm_eps as f32);
        let n = batch.b * batch.t;
        // Embeddings.
        {
            let wts = if self.frozen { &self.base } else { &self.params };
            let wte = &wts[self.wte..self.wte + v * c];
            let wpe = &wts[self.wpe..self.wpe + cfg.n_ctx * c];
            let x0 = &mut self.x0;
            x0.par_chunks_mut(c).enumerate().for_each(|(i, row)| {
                let (tok, pos) = (batch.inputs[i] as usize, batch.positions[i] as usize);
                for k in 0..c {
                    row[k] = wte[tok * c + k] + wpe[pos * c + k];
                }
            });
            if let Some(m) = &self.emb_mask {
                apply_mask(x0, None, m, false);
            }
        }
        for l in 0..cfg.n_layer {
            match self.work.take() {
                Some(mut w) => {
                    self.layer_forward(l, &mut w, batch, &mut wq, &mut xdrop, &mut pd);
                    std::mem::swap(&mut w.res3, &mut self.acts[l].res3);
                    self.work = Some(w);
                }
                None => {
                    let mut a = std::mem::replace(&mut self.acts[l], empty_acts());
                    self.layer_forward(l, &mut a, batch, &mut wq, &mut xdrop, &mut pd);
                    self.acts[l] = a;
                }
            }
        }
        let last = &self.acts[cfg.n_layer - 1].res3;
        let (lnf_w, lnf_b) = (self.lnf_w, self.lnf_b);
        let mut lnf = std::mem::take(&mut self.lnf);
        let mut lnf_stats = std::mem::take(&mut self.lnf_stats);
        layer_norm_fwd(
            &mut lnf,
            &mut lnf_stats,
            last,
            self.p(lnf_w, c),
            lnf_b.map(|o| self.p(o, c)),
            c,
            eps,
        );
        // logits = lnf · headᵀ
        let wts = if self.frozen { &self.base } else { &self.params };
        mm(
            &mut self.logits,
            View::rows(0, n, v, v),
            &lnf,
            View::rows(0, n, c, c),
            wts,
            View::rows(self.head, v, c, c).t(),
            false,
        );
        self.lnf = lnf;
        self.lnf_stats = lnf_stats;
        self.wq = wq;
        self.xdrop = xdrop;
        self.ascratch = pd;
    }

    /// Block `l`'s input: the embeddings, or block `l − 1`'s output.
    #[inline]
    pub(super) fn block_input(&self, l: usize) -> &[f32] {
        if l == 0 { &self.x0 } else { &self.acts[l - 1].res3 }
    }

    /// Block `l`'s forward from its input (the embeddings or block `l − 1`'s output) into `a`.
    /// `wq`, `xdrop` and `pd` are scratch.
    #[inline]
    pub(super) fn layer_forward(
        &self,
        l: usize,
        a: &mut LayerActs,
        batch: &StepBatch<'_>,
        wq: &mut [f32],
        xdrop: &mut [f32],
        pd: &mut [f32],
    ) {
        let cfg = &self.cfg;
        let (c, eps) = (cfg.n_embd, cfg.layer_norm_eps as f32);
        let n = batch.b * batch.t;
        let lp = self.layers[l];
        let lm = self.masks[l];
        // An adapter's input dropout, with the scratch its dropped-out input goes to.
        macro_rules! drop_in {
            ($k:expr) => {
                lm.ad[$k].as_ref().map(|m| (m, &mut xdrop[..]))
            };
        }
        let wts = if self.frozen { &self.base } else { &self.params };
        let trainable = &self.params;
        let [u_attn, u_proj, u_fc, u_fcproj] = &mut a.u;
        let input = self.block_input(l);
        layer_norm_fwd(
            &mut a.ln1,
            &mut a.ln1_stats,
            input,
            &wts[lp.ln1_w..lp.ln1_w + c],
            lp.ln1_b.map(|o| &wts[o..o + c]),
            c,
            eps,
        );
        linear_fwd(
            wts,
            (&self.quant, &mut *wq),
            trainable,
            &mut a.qkv,
            &a.ln1,
            n,
            lp.attn(c),
            u_attn,
            drop_in!(0),
        );
        self.attention_fwd(&mut a.att_stats, &mut a.atty, &a.qkv, batch, pd, lm.att.as_ref());
        // res2 = input + atty · Wproj + b
        linear_fwd(
            wts,
            (&self.quant, &mut *wq),
            trainable,
            &mut a.res2,
            &a.atty,
            n,
            lp.proj(c),
            u_proj,
            drop_in!(1),
        );
        if let Some(m) = &lm.res[0] {
            apply_mask(&mut a.res2, None, m, false);
        }
        add_into(&mut a.res2, input);
        layer_norm_fwd(
            &mut a.ln2,
            &mut a.ln2_stats,
            &a.res2,
            &wts[lp.ln2_w..lp.ln2_w + c],
            lp.ln2_b.map(|o| &wts[o..o + c]),
            c,
            eps,
        );
        linear_fwd(
            wts,
            (&self.quant, &mut *wq),
            trainable,
            &mut a.fch,
            &a.ln2,
            n,
            lp.fc(c),
            u_fc,
            drop_in!(2),
        );
        match cfg.activation {
            Activation::GeluTanh => map_into(&mut a.fch_act, &a.fch, |x| gelu_fast(Activation::GeluTanh, x)),
            Activation::GeluErf => map_into(&mut a.fch_act, &a.fch, |x| gelu_fast(Activation::GeluErf, x)),
        }
        // res3 = res2 + gelu · Wfcproj + b
        linear_fwd(
            wts,
            (&self.quant, &mut *wq),
            trainable,
            &mut a.res3,
            &a.fch_act,
            n,
            lp.fcproj(c),
            u_fcproj,
            drop_in!(3),
        );
        if let Some(m) = &lm.res[1] {
            apply_mask(&mut a.res3, None, m, false);
        }
        add_into(&mut a.res3, &a.res2);
    }

    /// The weighted cross-entropy summed over positions (in f64), with `(softmax − onehot) ·
    /// weight · scale` written over the logits.
    #[inline]
    pub(super) fn loss_and_dlogits(&mut self, batch: &StepBatch<'_>, scale: f32) -> f64 {
        let v = self.cfg.vocab_size;
        self.logits
            .par_chunks_mut(v)
            .enumerate()
            .map(|(i, row)| {
                let w = f32::from(batch.weights[i]);
                let target = batch.targets[i] as usize;
                let sum = vectorized(|| {
                    let max = row
                        .iter()
                        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
                    row.iter_mut().for_each(|x| *x = fm::exp(*x - max));
                    row.iter().sum::<f32>()
                });
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
}
