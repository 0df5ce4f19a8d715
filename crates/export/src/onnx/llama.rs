//! The Llama family's decoder graph (`LlamaForCausalLM`, `Qwen2ForCausalLM`), with the same inputs,
//! outputs and KV cache as GPT-2's (the cache holds `n_kv_head` heads): RMSNorm from plain ops,
//! rotary embeddings from `cos`/`sin` tables gathered by `position_ids` (HF's `rotate_half`),
//! grouped-query attention by folding each key/value head's query heads into its rows, SwiGLU.
//! Weights keep HF's names and `(out, in)` shapes (each product multiplies by a transpose, which
//! onnxruntime folds once), so the graph's weights read back as the HF folder's.

use super::*;

/// `x · Wᵀ (+ b)` for block `layer`'s `which` linear (an `nn.Linear` weight `(out, in)`).
fn linear(
    g: &mut Builder,
    w: &Weights,
    x: &str,
    layer: usize,
    which: Linear,
    bias: bool,
    arch: Arch,
) -> Result<String> {
    let slot = |p| Slot::BlockLinear(layer, which, p);
    let wt = g.weight(w, &slot(Part::Weight).name(arch))?;
    let wt = g.op("Transpose", &[&wt], vec![attr_ints("perm", &[1, 0])]);
    let y = g.op("MatMul", &[x, &wt], vec![]);
    if bias {
        let b = g.weight(w, &slot(Part::Bias).name(arch))?;
        Ok(g.op("Add", &[&y, &b], vec![]))
    } else {
        Ok(y)
    }
}

/// RMSNorm: `x / √(mean(x²) + eps) · weight`, the mean as a product with a column of `1/c`.
fn rms_norm(g: &mut Builder, w: &Weights, x: &str, name: &str, c: usize, eps: f32) -> Result<String> {
    let weight = g.weight(w, name)?;
    let mean_col = if g.inits.iter().any(|t| t.name == "const.mean_col") {
        "const.mean_col".to_string()
    } else {
        g.init(
            "const.mean_col",
            dtype::FLOAT,
            &[c, 1],
            f32_bytes(&vec![1.0 / c as f32; c]),
        )
    };
    let eps = g.const_f32("const.rms_eps", eps);
    let sq = g.op("Mul", &[x, x], vec![]);
    let ms = g.op("MatMul", &[&sq, &mean_col], vec![]); // [B, T, 1]
    let ms = g.op("Add", &[&ms, &eps], vec![]);
    let rms = g.op("Sqrt", &[&ms], vec![]);
    let y = g.op("Div", &[x, &rms], vec![]);
    Ok(g.op("Mul", &[&y, &weight], vec![]))
}

/// `z · cos + rotate_half(z) · sin` for heads `z` `(B, H, T, d)`.
fn rotate(g: &mut Builder, z: &str, (cos, sin): (&str, &str), half: usize) -> String {
    let split = g.const_i64("const.rope_split", &[half as i64, half as i64]);
    g.next += 1;
    let (a, b) = (format!("rope_a_{}", g.next), format!("rope_b_{}", g.next));
    g.op_into("Split", &[z, &split], vec![attr_i("axis", 3)], &[&a, &b]);
    let minus = g.const_f32("const.minus_one", -1.0);
    let nb = g.op("Mul", &[&b, &minus], vec![]);
    let rot = g.op("Concat", &[&nb, &a], vec![attr_i("axis", 3)]);
    let zc = g.op("Mul", &[z, cos], vec![]);
    let rs = g.op("Mul", &[&rot, sin], vec![]);
    g.op("Add", &[&zc, &rs], vec![])
}

/// The decoder graph of a Llama-family `cfg` with `w` (HF names, f32): nodes and initializers in `g`.
pub(super) fn build(g: &mut Builder, cfg: &GptConfig, w: &Weights) -> Result<()> {
    let arch = cfg.arch;
    let (c, h, kv, d) = (cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.head_dim());
    let (half, grp) = (d / 2, cfg.n_head / cfg.n_kv_head);
    let eps = cfg.layer_norm_eps as f32;
    let wte = g.weight(w, &Slot::TokenEmbedding.name(arch))?;
    let mut x = g.op("Gather", &[&wte, "input_ids"], vec![attr_i("axis", 0)]);
    // Rotary tables `(n_ctx, d)` (each frequency twice, as HF's `cat(freqs, freqs)`), gathered at
    // the positions: `(B, 1, T, d)`.
    let inv = chatforge_model::llama::rope_inv_freq(cfg);
    let (mut cos, mut sin) = (vec![0f32; cfg.n_ctx * d], vec![0f32; cfg.n_ctx * d]);
    let (mut pc, mut ps) = (vec![0f32; half], vec![0f32; half]);
    for p in 0..cfg.n_ctx {
        chatforge_model::kernels::rope_angles(p as u32, &inv, &mut pc, &mut ps);
        // HF's `cat(freqs, freqs)`: each half of a head takes the same angles.
        let rows = cos[p * d..(p + 1) * d]
            .iter_mut()
            .zip(&mut sin[p * d..(p + 1) * d]);
        for (k, (co, si)) in rows.enumerate() {
            (*co, *si) = (pc[k % half], ps[k % half]);
        }
    }
    let one = g.const_i64("const.one", &[1]);
    let tables: Vec<String> = [("rope.cos", cos), ("rope.sin", sin)]
        .into_iter()
        .map(|(name, t)| {
            let t = g.init(name, dtype::FLOAT, &[cfg.n_ctx, d], f32_bytes(&t));
            let at = g.op("Gather", &[&t, "position_ids"], vec![attr_i("axis", 0)]);
            g.op("Unsqueeze", &[&at, &one], vec![])
        })
        .collect();
    let rope = (tables[0].as_str(), tables[1].as_str());
    let bias = attention_bias(g);
    let q_shape = g.const_i64("const.q_shape", &[0, 0, h as i64, d as i64]);
    let kv_shape = g.const_i64("const.kv_shape", &[0, 0, kv as i64, d as i64]);
    // Query heads grouped under their key/value head: `(B, kv, g·T, d)` and back.
    let grouped = g.const_i64("const.grouped", &[0, kv as i64, -1, d as i64]);
    let per_head = g.const_i64("const.per_head", &[0, h as i64, -1, 0]);
    let grouped_t = g.const_i64("const.grouped_t", &[0, kv as i64, -1, 0]);
    let per_head_d = g.const_i64("const.per_head_d", &[0, h as i64, -1, d as i64]);
    let merge_shape = g.const_i64("const.merge_shape", &[0, 0, c as i64]);
    let scale = g.const_f32("const.attn_scale", 1.0 / (d as f32).sqrt());
    let heads = |g: &mut Builder, z: &str, shape: &str| {
        let r = g.op("Reshape", &[z, shape], vec![]);
        g.op("Transpose", &[&r], vec![attr_ints("perm", &[0, 2, 1, 3])])
    };
    for i in 0..cfg.n_layer {
        let hdn = rms_norm(
            g,
            w,
            &x,
            &Slot::BlockNorm(i, Norm::Attn, Part::Weight).name(arch),
            c,
            eps,
        )?;
        let q = linear(g, w, &hdn, i, Linear::Q, cfg.bias, arch)?;
        let k = linear(g, w, &hdn, i, Linear::K, cfg.bias, arch)?;
        let v = linear(g, w, &hdn, i, Linear::V, cfg.bias, arch)?;
        let q = heads(g, &q, &q_shape);
        let k = heads(g, &k, &kv_shape);
        let v = heads(g, &v, &kv_shape);
        let q = rotate(g, &q, rope, half);
        let k = rotate(g, &k, rope, half);
        let (ck, cv) = g.cache(i, &k, &v);
        let kt = g.op("Transpose", &[&ck], vec![attr_ints("perm", &[0, 1, 3, 2])]);
        let qg = if grp > 1 {
            g.op("Reshape", &[&q, &grouped], vec![])
        } else {
            q
        };
        let scores = g.op("MatMul", &[&qg, &kt], vec![]);
        let scores = if grp > 1 {
            g.op("Reshape", &[&scores, &per_head], vec![])
        } else {
            scores
        };
        let scores = g.op("Mul", &[&scores, &scale], vec![]);
        let scores = g.op("Add", &[&scores, &bias], vec![]);
        let probs = g.op("Softmax", &[&scores], vec![attr_i("axis", -1)]);
        let probs = if grp > 1 {
            g.op("Reshape", &[&probs, &grouped_t], vec![])
        } else {
            probs
        };
        let y = g.op("MatMul", &[&probs, &cv], vec![]);
        let y = if grp > 1 {
            g.op("Reshape", &[&y, &per_head_d], vec![])
        } else {
            y
        };
        let y = g.op("Transpose", &[&y], vec![attr_ints("perm", &[0, 2, 1, 3])]);
        let y = g.op("Reshape", &[&y, &merge_shape], vec![]);
        let y = linear(g, w, &y, i, Linear::AttnOut, false, arch)?;
        x = g.op("Add", &[&x, &y], vec![]);
        let hdn = rms_norm(
            g,
            w,
            &x,
            &Slot::BlockNorm(i, Norm::Mlp, Part::Weight).name(arch),
            c,
            eps,
        )?;
        let gate = linear(g, w, &hdn, i, Linear::Gate, false, arch)?;
        let up = linear(g, w, &hdn, i, Linear::MlpUp, false, arch)?;
        let sig = g.op("Sigmoid", &[&gate], vec![]);
        let act = g.op("Mul", &[&gate, &sig], vec![]);
        let act = g.op("Mul", &[&act, &up], vec![]);
        let m = linear(g, w, &act, i, Linear::MlpDown, false, arch)?;
        x = g.op("Add", &[&x, &m], vec![]);
    }
    let x = rms_norm(g, w, &x, &Slot::FinalNorm(Part::Weight).name(arch), c, eps)?;
    let head = if cfg.tie_embeddings {
        wte
    } else {
        g.weight(w, &Slot::LmHead.name(arch))?
    };
    let head_t = g.op("Transpose", &[&head], vec![attr_ints("perm", &[1, 0])]);
    g.op_into("MatMul", &[&x, &head_t], vec![], &["logits"]);
    Ok(())
}
