//! Dropout masks: drawn from the run's stream exactly as [`crate::Dropout`] draws them, applied
//! forward and again in backward.

use super::*;

/// One dropout site's mask, as [`crate::Dropout::apply_p`] draws it: element `i` is kept (and
/// scaled by `1 / (1 - p)`) when the stream's `i`-th draw past `rng`, as a uniform in `[0, 1)`, is
/// below `1 - p`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Mask {
    pub(super) rng: Rng,
    /// `(1 - p) · 2⁵³`: a draw's top 53 bits below it is a uniform below `1 - p`, exactly.
    pub(super) thr: f64,
    pub(super) scale: f32,
}

impl Mask {
    /// The mask of a site of `len` elements at the stream's position, which moves past it; none
    /// (and no draw) when `p` is 0, as the autograd path.
    #[inline]
    pub(super) fn take(rng: &mut Rng, p: f32, len: usize) -> Option<Mask> {
        if p <= 0.0 {
            return None;
        }
        let keep = 1.0 - p;
        let mask = Mask {
            rng: *rng,
            thr: f64::from(keep) * (1u64 << 53) as f64,
            scale: 1.0 / keep,
        };
        rng.skip(len as u64);
        Some(mask)
    }

    /// The factor of element `i`: `1 / (1 - p)` or 0.
    #[inline(always)]
    pub(super) fn factor(&self, i: usize) -> f32 {
        if ((self.rng.peek_u64(i as u64) >> 11) as f64) < self.thr {
            self.scale
        } else {
            0.0
        }
    }
}

/// The dropout sites of one block, in the order they are drawn.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct LayerMasks {
    /// The inputs of the four adapters (c_attn, attn.c_proj, c_fc, mlp.c_proj).
    pub(super) ad: [Option<Mask>; 4],
    /// The attention weights `(B, H, T, T)`.
    pub(super) att: Option<Mask>,
    /// The attention's and the MLP's outputs, before each residual addition.
    pub(super) res: [Option<Mask>; 2],
}

/// With a mask: `dst = src ⊙ mask` (or `+=` with `add`); without `src`, `dst ⊙= mask`. `dst`'s
/// element `i` takes the mask's element `i`.
#[inline]
pub(super) fn apply_mask(dst: &mut [f32], src: Option<&[f32]>, m: &Mask, add: bool) {
    const CHUNK: usize = 1 << 12;
    dst.par_chunks_mut(CHUNK).enumerate().for_each(|(ci, d)| {
        let at = ci * CHUNK;
        vectorized(|| match src {
            None => d.iter_mut().enumerate().for_each(|(j, x)| *x *= m.factor(at + j)),
            Some(s) => {
                let s = &s[at..at + d.len()];
                if add {
                    d.iter_mut()
                        .zip(s)
                        .enumerate()
                        .for_each(|(j, (x, &y))| *x += y * m.factor(at + j));
                } else {
                    d.iter_mut()
                        .zip(s)
                        .enumerate()
                        .for_each(|(j, (x, &y))| *x = y * m.factor(at + j));
                }
            }
        })
    });
}

/// The gradient `g` through a dropout mask, in `scratch`; `g` itself without one.
#[inline]
pub(super) fn through_mask<'a>(scratch: &'a mut [f32], g: &'a [f32], m: Option<&Mask>) -> &'a [f32] {
    match m {
        Some(m) => {
            apply_mask(scratch, Some(g), m, false);
            scratch
        }
        None => g,
    }
}

/// `pd = p ⊙ mask` over a tile of one `(t, t)` block of causal attention weights whose mask
/// elements start at `at`; above the diagonal both are 0.
#[inline]
pub(super) fn dropped_weights(pd: &mut [f32], p: &[f32], m: &Mask, at: usize, t: usize, tile: Tile) {
    vectorized(|| {
        for i in tile.r0..tile.r1 {
            let span = i * t + tile.s..i * t + tile.r1;
            let (d, a) = (&mut pd[span.clone()], &p[span]);
            let n = i - tile.s + 1;
            for j in 0..n {
                d[j] = a[j] * m.factor(at + i * t + tile.s + j);
            }
            d[n..].fill(0.0);
        }
    })
}

/// Places this micro-batch's dropout sites in the stream, in the oracle's order: the
/// embeddings, then per block c_attn's adapter input, the attention weights, attn.c_proj's
/// adapter input, the attention's output, c_fc's and mlp.c_proj's adapter inputs, and the MLP's
/// output.
#[inline]
pub(super) fn draw_masks(m: &Model, acts: &mut Acts, rng: &mut Rng, b: usize, t: usize) {
    let (c, h, n, inner) = (m.cfg.n_embd, m.cfg.n_head, b * t, m.cfg.n_inner);
    let (p, lp) = (m.p, m.lora_p);
    acts.emb_mask = Mask::take(rng, p, n * c);
    for (masks, layer) in acts.masks.iter_mut().zip(&m.layers) {
        // One mask per product's input, shared by its parts' adapters.
        let adapter = |k: usize, rng: &mut Rng, len: usize| {
            layer.ad[k]
                .iter()
                .any(Option::is_some)
                .then(|| Mask::take(rng, lp, len))
                .flatten()
        };
        let ad0 = adapter(0, rng, n * c);
        let att = Mask::take(rng, p, b * h * t * t);
        let ad1 = adapter(1, rng, n * c);
        let res0 = Mask::take(rng, p, n * c);
        let ad2 = adapter(2, rng, n * c);
        let ad3 = adapter(3, rng, n * inner);
        let res1 = Mask::take(rng, p, n * c);
        *masks = LayerMasks {
            ad: [ad0, ad1, ad2, ad3],
            att,
            res: [res0, res1],
        };
    }
}

/// An adapter's input dropout at block site `k`, with the scratch its dropped-out input goes to.
#[inline]
pub(super) fn drop_in<'a>(masks: &'a LayerMasks, k: usize, xdrop: &'a mut [f32]) -> DropIn<'a> {
    masks.ad[k].as_ref().map(|m| (m, xdrop))
}
