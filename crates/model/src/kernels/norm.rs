//! Layer normalisation of one row: its statistics and the normalised, scaled and shifted values.
//! The training engine keeps the statistics for backward; the decoder only needs the values.

use super::fast_math as fm;

/// A row's `(mean, 1/√(var + eps))`.
#[inline]
pub fn row_stats(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = fm::sum(row) / n;
    let var = fm::sum_of(row, row, |v, _| (v - mean) * (v - mean)) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// `out = (x − mean) / √(var + eps) · w (+ b)` for one row; returns the row's statistics.
#[inline]
pub fn layer_norm_row(x: &[f32], w: &[f32], b: Option<&[f32]>, eps: f32, out: &mut [f32]) -> (f32, f32) {
    let (mean, rstd) = row_stats(x, eps);
    match b {
        Some(b) => {
            for i in 0..x.len() {
                out[i] = (x[i] - mean) * rstd * w[i] + b[i];
            }
        }
        None => {
            for i in 0..x.len() {
                out[i] = (x[i] - mean) * rstd * w[i];
            }
        }
    }
    (mean, rstd)
}

/// RMSNorm of one row (the Llama family's): `out = x / √(mean(x²) + eps) · w`; returns
/// `(0, 1/√(mean(x²) + eps))`, the statistics [`layer_norm_row`] returns with a mean of 0.
#[inline]
pub fn rms_norm_row(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) -> (f32, f32) {
    let ms = fm::sum_of(x, x, |v, _| v * v) / x.len() as f32;
    let rstd = 1.0 / (ms + eps).sqrt();
    for i in 0..x.len() {
        out[i] = x[i] * rstd * w[i];
    }
    (0.0, rstd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_norm_by_hand() {
        let (x, w, b) = ([1f32, 2., 3., 4.], [1f32, 1., 2., 2.], [0f32, 1., 0., 1.]);
        let mut y = [0f32; 4];
        let (mean, rstd) = layer_norm_row(&x, &w, Some(&b), 0.0, &mut y);
        // mean 2.5, variance 1.25
        let s = 1.25f32.sqrt();
        assert_eq!(mean, 2.5);
        assert!((rstd - 1.0 / s).abs() < 1e-6);
        let expected = [-1.5 / s, -0.5 / s + 1.0, 2.0 * 0.5 / s, 2.0 * 1.5 / s + 1.0];
        for (a, e) in y.iter().zip(expected) {
            assert!((a - e).abs() < 1e-6, "{y:?}");
        }
    }
}
