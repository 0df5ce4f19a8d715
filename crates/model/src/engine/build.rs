//! Building an engine: offsets of every parameter (the layout's names), LoRA adapters, QLoRA's
//! quantised base, and every buffer of a step, allocated once.

use super::*;

/// `(offset, len)` of each spec's tensor laid out one after another.
fn offsets_of(specs: &[ParamSpec]) -> Vec<(usize, usize)> {
    let mut at = 0;
    specs
        .iter()
        .map(|s| {
            let n: usize = s.shape.iter().product();
            at += n;
            (at - n, n)
        })
        .collect()
}

impl TrainEngine {
    #[inline]
    pub(super) fn build(
        cfg: &GptConfig,
        b: usize,
        t: usize,
        params: Vec<f32>,
        lora: Option<(&LoraConfig, Vec<f32>)>,
    ) -> Result<TrainEngine> {
        cfg.validate()?;
        if t > cfg.n_ctx || b == 0 || t == 0 {
            return Err(Error::Config(format!(
                "engine batch {b}×{t} does not fit n_ctx {}",
                cfg.n_ctx
            )));
        }
        let specs = param_specs(cfg);
        let offsets = offsets_of(&specs);
        let total: usize = offsets.iter().map(|o| o.1).sum();
        if params.len() != total {
            return Err(Error::Config(format!(
                "engine: {} parameters given, the config has {total}",
                params.len()
            )));
        }
        let lora_cfg = lora.as_ref().map(|(l, _)| *l);
        let (ad_specs, ad_offsets) = match lora_cfg {
            Some(l) => {
                let specs = l.param_specs(cfg);
                let offs = offsets_of(&specs);
                (specs, offs)
            }
            None => (Vec::new(), Vec::new()),
        };
        let mut model = Model::lay_out(cfg, b, t, (&specs, &offsets), lora_cfg, (&ad_specs, &ad_offsets))?;
        let mut params = params;
        // QLoRA: the linear weights leave the base for their quantised form.
        if let Some(kind) = lora_cfg.and_then(|l| l.quant) {
            params = model.quantize_linears(params, kind);
        }
        let (trainable, offsets) = match lora {
            Some((_, adapters)) => {
                let want: usize = ad_offsets.iter().map(|o| o.1).sum();
                if adapters.len() != want {
                    return Err(Error::Config(format!(
                        "engine: {} adapter values given, the LoRA config has {want}",
                        adapters.len()
                    )));
                }
                model.base = params;
                model.frozen = true;
                (adapters, ad_offsets)
            }
            None => (params, offsets),
        };
        let rank = lora_cfg.map_or(0, |l| l.rank);
        Ok(TrainEngine {
            grads: vec![0.0; trainable.len()],
            params: trainable,
            offsets,
            acts: Acts::allocate(&model, rank),
            scratch: Scratch::allocate(&model, rank),
            model,
            logps_of: None,
        })
    }
}

impl Model {
    /// Where every weight of `cfg` sits (`specs` at `offsets`), and each adapter's `A` and `B` in
    /// the trainable buffer (`ad_specs` at `ad_offsets`). The base is attached by the caller.
    fn lay_out(
        cfg: &GptConfig,
        b: usize,
        t: usize,
        (specs, offsets): (&[ParamSpec], &[(usize, usize)]),
        lora: Option<&LoraConfig>,
        (ad_specs, ad_offsets): (&[ParamSpec], &[(usize, usize)]),
    ) -> Result<Model> {
        let find = |slot: Slot| -> Option<usize> {
            let name = slot.name(cfg.arch);
            specs.iter().position(|s| s.name == name).map(|i| offsets[i].0)
        };
        let need = |slot: Slot| -> Result<usize> {
            find(slot).ok_or_else(|| Error::Config(format!("engine: no parameter {}", slot.name(cfg.arch))))
        };
        let arch = cfg.arch;
        // The adapters on a product's parts: GPT-2's one linear per product, the Llama
        // family's q, k, v and gate, up side by side.
        let adapters = |i: usize, parts: &[Linear]| -> [Option<Adapter>; PARTS] {
            let mut out = [None; PARTS];
            let mut col = 0;
            for (k, &lin) in parts.iter().enumerate() {
                let n_out = lin.shape(cfg).1;
                out[k] = lora.and_then(|l| {
                    let at = |name: String| {
                        ad_specs
                            .iter()
                            .position(|s| s.name == name)
                            .map(|i| ad_offsets[i].0)
                    };
                    let (a, b) = layout::lora_names(&layout::linear_path(i, lin, arch));
                    Some(Adapter {
                        a: at(a)?,
                        b: at(b)?,
                        r: l.rank,
                        scale: l.scale() as f32,
                        col,
                        n_out,
                    })
                });
                col += n_out;
            }
            out
        };
        let groups = crate::layout::products(arch);
        let layers = (0..cfg.n_layer)
            .map(|i| -> Result<LayerParams> {
                // A fused product's weight and bias start at its first part's: the layout keeps
                // the parts next to each other.
                let w = |g: &[Linear]| need(Slot::BlockLinear(i, g[0], Part::Weight));
                let b = |g: &[Linear]| find(Slot::BlockLinear(i, g[0], Part::Bias));
                let norm = |n, p| Slot::BlockNorm(i, n, p);
                Ok(LayerParams {
                    q: [None; 4],
                    ad: groups.map(|g| adapters(i, g)),
                    ln1_w: need(norm(Norm::Attn, Part::Weight))?,
                    ln1_b: find(norm(Norm::Attn, Part::Bias)),
                    attn_w: w(groups[0])?,
                    attn_b: b(groups[0]),
                    proj_w: w(groups[1])?,
                    proj_b: b(groups[1]),
                    ln2_w: need(norm(Norm::Mlp, Part::Weight))?,
                    ln2_b: find(norm(Norm::Mlp, Part::Bias)),
                    fc_w: w(groups[2])?,
                    fc_b: b(groups[2]),
                    fcproj_w: w(groups[3])?,
                    fcproj_b: b(groups[3]),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let wte = need(Slot::TokenEmbedding)?;
        Ok(Model {
            cfg: cfg.clone(),
            b,
            t,
            base: Vec::new(),
            frozen: false,
            quant: Vec::new(),
            wte,
            wpe: find(Slot::PositionEmbedding),
            inv_freq: if arch.is_llama() {
                crate::llama::rope_inv_freq(cfg)
            } else {
                Vec::new()
            },
            rms: arch.is_llama(),
            layers,
            lnf_w: need(Slot::FinalNorm(Part::Weight))?,
            lnf_b: find(Slot::FinalNorm(Part::Bias)),
            head: if cfg.tie_embeddings {
                wte
            } else {
                need(Slot::LmHead)?
            },
            p: cfg.dropout,
            lora_p: lora.map_or(0.0, |l| l.dropout),
            prec: Precision::F32,
        })
    }

    /// QLoRA: every block's four linear weights move from `params` into `quant` in `kind`'s
    /// blocks; returns the rest of `params`, every offset remapped past what left.
    fn quantize_linears(&mut self, params: Vec<f32>, kind: crate::quant::QuantKind) -> Vec<f32> {
        let cfg = self.cfg.clone();
        let mut removed: Vec<(usize, usize)> = Vec::new();
        for lp in self.layers.iter_mut() {
            let lins = [lp.attn(&cfg), lp.proj(&cfg), lp.fc(&cfg), lp.fcproj(&cfg)];
            for (k, lin) in lins.into_iter().enumerate() {
                let (w, n_in, n_out) = (lin.w, lin.n_in, lin.n_out);
                // Blocks run along the stored rows: `(in, out)`'s outputs, `(out, in)`'s inputs
                // (as GGUF holds them).
                let (rows, cols) = if lin.t { (n_out, n_in) } else { (n_in, n_out) };
                let q = QuantWeight::quantize(&params[w..w + n_in * n_out], rows, cols, kind);
                self.quant.push(q);
                lp.q[k] = Some(self.quant.len() - 1);
                removed.push((w, n_in * n_out));
            }
        }
        removed.sort_unstable();
        let mut kept = Vec::with_capacity(params.len() - removed.iter().map(|r| r.1).sum::<usize>());
        let mut at = 0;
        for &(o, len) in &removed {
            kept.extend_from_slice(&params[at..o]);
            at = o + len;
        }
        kept.extend_from_slice(&params[at..]);
        let remap = |o: usize| o - removed.iter().filter(|r| r.0 < o).map(|r| r.1).sum::<usize>();
        for lp in self.layers.iter_mut() {
            for o in [&mut lp.ln1_w, &mut lp.ln2_w] {
                *o = remap(*o);
            }
            for o in [
                &mut lp.ln1_b,
                &mut lp.attn_b,
                &mut lp.proj_b,
                &mut lp.ln2_b,
                &mut lp.fc_b,
                &mut lp.fcproj_b,
            ]
            .into_iter()
            .flatten()
            {
                *o = remap(*o);
            }
        }
        self.wte = remap(self.wte);
        self.wpe = self.wpe.map(remap);
        (self.lnf_w, self.head) = (remap(self.lnf_w), remap(self.head));
        self.lnf_b = self.lnf_b.map(remap);
        kept
    }
}

impl Acts {
    /// Every activation buffer of a `b × t` step (adapters of rank `rank` keep `x Aᵀ`).
    fn allocate(m: &Model, rank: usize) -> Acts {
        let cfg = &m.cfg;
        let (c, h, v, b, t) = (cfg.n_embd, cfg.n_head, cfg.vocab_size, m.b, m.t);
        let n = b * t;
        let z = |len: usize| vec![0f32; len];
        let layers = m
            .layers
            .iter()
            .map(|lp| LayerActs {
                u: std::array::from_fn(|k| z(n * rank * lp.ad[k].iter().flatten().count())),
                ln1: z(n * c),
                ln1_stats: vec![(0.0, 0.0); n],
                qkv: z(n * cfg.qkv_dim()),
                att_stats: z(b * h * t * 2),
                atty: z(n * c),
                res2: z(n * c),
                ln2: z(n * c),
                ln2_stats: vec![(0.0, 0.0); n],
                fch: z(n * cfg.mlp_in_dim()),
                fch_act: z(n * cfg.n_inner),
                res3: z(n * c),
            })
            .collect();
        let half = if m.inv_freq.is_empty() {
            0
        } else {
            cfg.head_dim() / 2
        };
        Acts {
            x0: z(n * c),
            cos: z(n * half),
            sin: z(n * half),
            layers,
            work: None,
            lnf: z(n * c),
            lnf_stats: vec![(0.0, 0.0); n],
            head_rows: Vec::with_capacity(n),
            lnf_rows: z(n * c),
            logits: z(n * v),
            row_tiles: Vec::new(),
            emb_mask: None,
            masks: vec![LayerMasks::default(); cfg.n_layer],
        }
    }
}

impl Scratch {
    /// The scratch of a `b × t` step: only what the model's options need (a dequantised weight
    /// with QLoRA, masked gradients with dropout, dropped-out adapter inputs with adapter dropout).
    fn allocate(m: &Model, rank: usize) -> Scratch {
        let cfg = &m.cfg;
        let (c, h, b, t, inner) = (cfg.n_embd, cfg.n_head, m.b, m.t, cfg.n_inner);
        let n = b * t;
        let z = |len: usize| vec![0f32; len];
        let adapters = m
            .layers
            .iter()
            .any(|l| l.ad.iter().flatten().any(Option::is_some));
        let widest = [c * cfg.qkv_dim(), c * c, c * cfg.mlp_in_dim(), inner * c]
            .into_iter()
            .max()
            .unwrap_or(0);
        Scratch {
            wq: if m.quant.is_empty() { Vec::new() } else { z(widest) },
            xdrop: if m.lora_p > 0.0 && adapters {
                z(n * c.max(inner))
            } else {
                Vec::new()
            },
            att: z(2 * t * t * (b * h).min(rayon::current_num_threads()).max(1)),
            dres: z(n * c),
            dwide: z(n * inner),
            dfc: if cfg.activation == crate::Activation::Silu {
                z(n * cfg.mlp_in_dim())
            } else {
                Vec::new()
            },
            dnarrow: z(n * c),
            dqkv: z(n * cfg.qkv_dim()),
            du: z(n * rank * PARTS),
            dmask: if m.p > 0.0 { z(n * c) } else { Vec::new() },
        }
    }
}
