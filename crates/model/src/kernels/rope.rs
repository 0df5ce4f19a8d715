//! The Llama family's row kernels, shared by the training engine, the decoder and the ONNX
//! exporter: rotary embeddings (HF's `rotate_half` form) and SwiGLU.

use super::gelu_fast;
use crate::Activation;

/// One position's rotary `cos` and `sin`, one per pair of a head's dimensions, as transformers
/// computes them: the angle `pos · inv_freq` in f32, its cosine and sine.
#[inline]
pub fn rope_angles(pos: u32, inv_freq: &[f32], cos: &mut [f32], sin: &mut [f32]) {
    for (j, &f) in inv_freq.iter().enumerate() {
        let angle = f64::from(pos as f32 * f);
        cos[j] = angle.cos() as f32;
        sin[j] = angle.sin() as f32;
    }
}

/// Turns each of the first `heads` heads (`d` wide) of `row`: the pair `(x_j, x_{j+d/2})` by the
/// angle whose `cos` and `sin` are given; with `inverse`, back (the rotation's gradient).
#[inline(always)]
pub fn rotate_heads(
    row: &mut [f32],
    (cos, sin): (&[f32], &[f32]),
    (d, heads): (usize, usize),
    inverse: bool,
) {
    let half = d / 2;
    let s = if inverse { -1.0f32 } else { 1.0 };
    for head in row[..heads * d].chunks_mut(d) {
        let (a, b) = head.split_at_mut(half);
        for j in 0..half {
            let (x, y, sj) = (a[j], b[j], s * sin[j]);
            a[j] = x * cos[j] - y * sj;
            b[j] = y * cos[j] + x * sj;
        }
    }
}

/// SwiGLU of one row: `out = silu(gate) · up`, where `gate_up` is `[gate | up]`.
#[inline(always)]
pub fn swiglu_row(gate_up: &[f32], out: &mut [f32]) {
    let (g, u) = gate_up.split_at(out.len());
    for j in 0..out.len() {
        out[j] = gelu_fast(Activation::Silu, g[j]) * u[j];
    }
}
