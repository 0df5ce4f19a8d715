//! Building an engine: offsets of every parameter (the layout's names), LoRA adapters, QLoRA's
//! quantised base, and every buffer of a step, allocated once.

use super::*;

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
        let mut offsets = Vec::with_capacity(specs.len());
        let mut at = 0;
        for s in &specs {
            let n: usize = s.shape.iter().product();
            offsets.push((at, n));
            at += n;
        }
        if params.len() != at {
            return Err(Error::Config(format!(
                "engine: {} parameters given, the config has {at}",
                params.len()
            )));
        }
        let starts: Vec<usize> = offsets.iter().map(|o| o.0).collect();
        let find = |slot: Slot| -> Option<usize> {
            let name = slot.name();
            specs.iter().position(|s| s.name == name).map(|i| starts[i])
        };
        let need = |slot: Slot| -> Result<usize> {
            find(slot).ok_or_else(|| Error::Config(format!("engine: no parameter {}", slot.name())))
        };
        // Adapters: where each one's A and B sit in the trainable buffer.
        let (ad_specs, ad_offsets): (Vec<ParamSpec>, Vec<(usize, usize)>) = match &lora {
            Some((l, _)) => {
                let specs = l.param_specs(cfg);
                let mut offs = Vec::with_capacity(specs.len());
                let mut at = 0;
                for s in &specs {
                    let n: usize = s.shape.iter().product();
                    offs.push((at, n));
                    at += n;
                }
                (specs, offs)
            }
            None => (Vec::new(), Vec::new()),
        };
        let adapter = |i: usize, lin: Linear| -> Option<Adapter> {
            let (l, _) = lora.as_ref()?;
            let at = |name: String| {
                ad_specs
                    .iter()
                    .position(|s| s.name == name)
                    .map(|i| ad_offsets[i].0)
            };
            let (a, b) = layout::lora_names(&layout::linear_path(i, lin));
            Some(Adapter {
                a: at(a)?,
                b: at(b)?,
                r: l.rank,
                scale: l.scale() as f32,
            })
        };
        let layers = (0..cfg.n_layer)
            .map(|i| -> Result<LayerParams> {
                let lin = |l, p| Slot::BlockLinear(i, l, p);
                let norm = |n, p| Slot::BlockNorm(i, n, p);
                Ok(LayerParams {
                    q: [None; 4],
                    ad: Linear::ALL.map(|l| adapter(i, l)),
                    ln1_w: need(norm(Norm::Attn, Part::Weight))?,
                    ln1_b: find(norm(Norm::Attn, Part::Bias)),
                    attn_w: need(lin(Linear::AttnQkv, Part::Weight))?,
                    attn_b: find(lin(Linear::AttnQkv, Part::Bias)),
                    proj_w: need(lin(Linear::AttnOut, Part::Weight))?,
                    proj_b: find(lin(Linear::AttnOut, Part::Bias)),
                    ln2_w: need(norm(Norm::Mlp, Part::Weight))?,
                    ln2_b: find(norm(Norm::Mlp, Part::Bias)),
                    fc_w: need(lin(Linear::MlpUp, Part::Weight))?,
                    fc_b: find(lin(Linear::MlpUp, Part::Bias)),
                    fcproj_w: need(lin(Linear::MlpDown, Part::Weight))?,
                    fcproj_b: find(lin(Linear::MlpDown, Part::Bias)),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let wte = need(Slot::TokenEmbedding)?;
        let (c, n, h, v) = (cfg.n_embd, b * t, cfg.n_head, cfg.vocab_size);
        let z = |len: usize| vec![0f32; len];
        let rank = lora.as_ref().map_or(0, |(l, _)| l.rank);
        let lora_p = lora.as_ref().map_or(0.0, |(l, _)| l.dropout);
        let acts = (0..cfg.n_layer)
            .map(|i| LayerActs {
                u: std::array::from_fn(|k| {
                    if layers[i].ad[k].is_some() {
                        z(n * rank)
                    } else {
                        Vec::new()
                    }
                }),
                ln1: z(n * c),
                ln1_stats: vec![(0.0, 0.0); n],
                qkv: z(n * 3 * c),
                att_stats: z(b * h * t * 2),
                atty: z(n * c),
                res2: z(n * c),
                ln2: z(n * c),
                ln2_stats: vec![(0.0, 0.0); n],
                fch: z(n * 4 * c),
                fch_act: z(n * 4 * c),
                res3: z(n * c),
            })
            .collect();
        // QLoRA: the linear weights leave the base for their quantised form.
        let mut layers = layers;
        let (mut params, mut quant) = (params, Vec::new());
        let (mut wte, mut wpe) = (wte, need(Slot::PositionEmbedding)?);
        let (mut lnf_w, mut lnf_b) = (
            need(Slot::FinalNorm(Part::Weight))?,
            find(Slot::FinalNorm(Part::Bias)),
        );
        let mut head = if cfg.tie_embeddings {
            wte
        } else {
            need(Slot::LmHead)?
        };
        if let Some(kind) = lora.as_ref().and_then(|(l, _)| l.quant) {
            let mut removed: Vec<(usize, usize)> = Vec::new();
            for lp in layers.iter_mut() {
                let ws = [
                    (lp.attn_w, c, 3 * c),
                    (lp.proj_w, c, c),
                    (lp.fc_w, c, 4 * c),
                    (lp.fcproj_w, 4 * c, c),
                ];
                for (k, (w, n_in, n_out)) in ws.into_iter().enumerate() {
                    quant.push(QuantWeight::quantize(
                        &params[w..w + n_in * n_out],
                        n_in,
                        n_out,
                        kind,
                    ));
                    lp.q[k] = Some(quant.len() - 1);
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
            params = kept;
            let remap = |o: usize| o - removed.iter().filter(|r| r.0 < o).map(|r| r.1).sum::<usize>();
            for lp in layers.iter_mut() {
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
            (wte, wpe, lnf_w, head) = (remap(wte), remap(wpe), remap(lnf_w), remap(head));
            lnf_b = lnf_b.map(remap);
        }
        let (trainable, offsets, base, frozen) = match lora {
            Some((_, adapters)) => {
                let want: usize = ad_offsets.iter().map(|o| o.1).sum();
                if adapters.len() != want {
                    return Err(Error::Config(format!(
                        "engine: {} adapter values given, the LoRA config has {want}",
                        adapters.len()
                    )));
                }
                (adapters, ad_offsets, params, true)
            }
            None => (params, offsets, Vec::new(), false),
        };
        let model = Model {
            cfg: cfg.clone(),
            b,
            t,
            base,
            frozen,
            quant,
            wte,
            wpe,
            layers,
            lnf_w,
            lnf_b,
            head,
            p: cfg.dropout,
            lora_p,
        };
        let scratch = Scratch {
            wq: if model.quant.is_empty() {
                Vec::new()
            } else {
                z(4 * c * c)
            },
            xdrop: if lora_p > 0.0 && model.layers.iter().any(|l| l.ad.iter().any(Option::is_some)) {
                z(n * 4 * c)
            } else {
                Vec::new()
            },
            att: z(2 * t * t * (b * h).min(rayon::current_num_threads()).max(1)),
            dres: z(n * c),
            dwide: z(n * 4 * c),
            dnarrow: z(n * c),
            dqkv: z(n * 3 * c),
            du: z(n * rank),
            dmask: if cfg.dropout > 0.0 { z(n * c) } else { Vec::new() },
        };
        let acts = Acts {
            x0: z(n * c),
            layers: acts,
            work: None,
            lnf: z(n * c),
            lnf_stats: vec![(0.0, 0.0); n],
            logits: z(n * v),
            row_tiles: Vec::new(),
            emb_mask: None,
            masks: vec![LayerMasks::default(); cfg.n_layer],
        };
        Ok(TrainEngine {
            grads: z(trainable.len()),
            params: trainable,
            offsets,
            model,
            acts,
            scratch,
        })
    }
}
