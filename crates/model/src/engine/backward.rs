//! The backward pass, block by block from the head down (recomputing a block first with gradient
//! checkpointing).

use super::*;

impl TrainEngine {
    #[inline]
    pub(super) fn backward(&mut self, batch: &StepBatch<'_>) {
        let cfg = self.cfg.clone();
        let (c, v, h) = (cfg.n_embd, cfg.vocab_size, cfg.n_head);
        let n = batch.b * batch.t;
        let mut grads = std::mem::take(&mut self.grads);
        let mut dres = std::mem::take(&mut self.dres);
        let mut dnarrow = std::mem::take(&mut self.dnarrow);
        let mut dwide = std::mem::take(&mut self.dwide);
        let mut dqkv = std::mem::take(&mut self.dqkv);
        let mut datt = std::mem::take(&mut self.ascratch);
        let mut du = std::mem::take(&mut self.du);
        let mut wq = std::mem::take(&mut self.wq);
        let mut dmask = std::mem::take(&mut self.dmask);
        let mut xdrop = std::mem::take(&mut self.xdrop);
        let frozen = self.frozen;
        let wts = if frozen { &self.base } else { &self.params };
        let trainable = &self.params;
        // Head: dlnf = dlogits · head; dhead += dlogitsᵀ · lnf (a frozen head has no gradient).
        mm(
            &mut dnarrow,
            View::rows(0, n, c, c),
            &self.logits,
            View::rows(0, n, v, v),
            wts,
            View::rows(self.head, v, c, c),
            false,
        );
        if !frozen {
            mm(
                &mut grads,
                View::rows(self.head, v, c, c),
                &self.logits,
                View::rows(0, n, v, v).t(),
                &self.lnf,
                View::rows(0, n, c, c),
                true,
            );
        }
        dres.par_chunks_mut(1 << 14).for_each(|x| x.fill(0.0));
        {
            let (gw, gb) = norm_grads(&mut grads, frozen, self.lnf_w, self.lnf_b, c);
            layer_norm_bwd(
                &mut dres,
                gw,
                gb,
                &dnarrow,
                &self.acts[cfg.n_layer - 1].res3,
                &self.lnf_stats,
                &wts[self.lnf_w..self.lnf_w + c],
                c,
            );
        }
        let act = cfg.activation;
        // A linear layer's backward (a macro, so it borrows the gradients only while it runs).
        macro_rules! lin {
            ($dx:expr, $dy:expr, $x:expr, $spec:expr, $u:expr, $drop:expr) => {
                linear_bwd(
                    wts,
                    (&self.quant, &mut wq),
                    trainable,
                    &mut grads,
                    frozen,
                    $dx,
                    $dy,
                    $x,
                    n,
                    $spec,
                    $u,
                    &mut du,
                    $drop,
                )
            };
        }
        // With checkpointing each block's activations are recomputed from its kept input.
        let mut work = self.work.take();
        for l in (0..cfg.n_layer).rev() {
            let lp = self.layers[l];
            let lm = self.masks[l];
            if let Some(w) = work.as_mut() {
                self.layer_forward(l, w, batch, &mut wq, &mut xdrop, &mut datt);
            }
            let a = work.as_ref().unwrap_or(&self.acts[l]);
            let input = self.block_input(l);
            macro_rules! drop_in {
                ($k:expr) => {
                    lm.ad[$k].as_ref().map(|m| (m, &mut xdrop[..]))
                };
            }
            // res3 = res2 + dropout(fch_act · Wfcproj + b)
            let dy = through_mask(&mut dmask, &dres, lm.res[1].as_ref());
            lin!(&mut dwide, dy, &a.fch_act, lp.fcproj(c), &a.u[3], drop_in!(3));
            // One loop per activation, so each is vectorised with its function inlined.
            match act {
                Activation::GeluTanh => dwide
                    .par_chunks_mut(1 << 12)
                    .zip(a.fch.par_chunks(1 << 12))
                    .for_each(|(g, x)| {
                        vectorized(|| {
                            g.iter_mut()
                                .zip(x)
                                .for_each(|(g, &x)| *g *= gelu_fast_grad(Activation::GeluTanh, x))
                        })
                    }),
                Activation::GeluErf => dwide
                    .par_chunks_mut(1 << 12)
                    .zip(a.fch.par_chunks(1 << 12))
                    .for_each(|(g, x)| {
                        vectorized(|| {
                            g.iter_mut()
                                .zip(x)
                                .for_each(|(g, &x)| *g *= gelu_fast_grad(Activation::GeluErf, x))
                        })
                    }),
            }
            // fch = ln2 · Wfc + b
            lin!(&mut dnarrow, &dwide, &a.ln2, lp.fc(c), &a.u[2], drop_in!(2));
            {
                let (gw, gb) = norm_grads(&mut grads, frozen, lp.ln2_w, lp.ln2_b, c);
                layer_norm_bwd(
                    &mut dres,
                    gw,
                    gb,
                    &dnarrow,
                    &a.res2,
                    &a.ln2_stats,
                    &wts[lp.ln2_w..lp.ln2_w + c],
                    c,
                );
            }
            // res2 = input + dropout(atty · Wproj + b)
            let dy = through_mask(&mut dmask, &dres, lm.res[0].as_ref());
            lin!(&mut dnarrow, dy, &a.atty, lp.proj(c), &a.u[1], drop_in!(1));
            attention_bwd(
                &mut dqkv,
                &mut datt,
                &dnarrow,
                (&a.qkv, &a.att_stats),
                batch,
                &self.row_tiles,
                (c, h),
                lm.att.as_ref(),
            );
            // qkv = ln1 · Wattn + b
            lin!(&mut dnarrow, &dqkv, &a.ln1, lp.attn(c), &a.u[0], drop_in!(0));
            {
                let (gw, gb) = norm_grads(&mut grads, frozen, lp.ln1_w, lp.ln1_b, c);
                layer_norm_bwd(
                    &mut dres,
                    gw,
                    gb,
                    &dnarrow,
                    input,
                    &a.ln1_stats,
                    &wts[lp.ln1_w..lp.ln1_w + c],
                    c,
                );
            }
        }
        // Embeddings: each row's gradient (through their dropout) to its token's and its
        // position's row.
        if !frozen {
            if let Some(m) = &self.emb_mask {
                apply_mask(&mut dres, None, m, false);
            }
            for i in 0..n {
                let (tok, pos) = (batch.inputs[i] as usize, batch.positions[i] as usize);
                let g = &dres[i * c..(i + 1) * c];
                let dt = &mut grads[self.wte + tok * c..self.wte + (tok + 1) * c];
                dt.iter_mut().zip(g).for_each(|(a, b)| *a += b);
                let dp = &mut grads[self.wpe + pos * c..self.wpe + (pos + 1) * c];
                dp.iter_mut().zip(g).for_each(|(a, b)| *a += b);
            }
        }
        self.work = work;
        self.grads = grads;
        self.dres = dres;
        self.dnarrow = dnarrow;
        self.dwide = dwide;
        self.dqkv = dqkv;
        self.ascratch = datt;
        self.du = du;
        self.wq = wq;
        self.dmask = dmask;
        self.xdrop = xdrop;
    }
}
