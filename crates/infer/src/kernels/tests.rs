//! The decoder's kernels against naive products and softmaxes, every path and weight type.

use super::*;

fn naive(x: &[f32], m: usize, w: &[f32], k: usize, n: usize, layout: Layout) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    for r in 0..m {
        for j in 0..n {
            let mut s = 0f64;
            for i in 0..k {
                let wv = match layout {
                    Layout::InOut => w[i * n + j],
                    Layout::OutIn => w[j * k + i],
                };
                s += f64::from(x[r * k + i]) * f64::from(wv);
            }
            out[r * n + j] = s as f32;
        }
    }
    out
}

fn data(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = chatforge_data::Rng::new(seed);
    (0..len).map(|_| rng.normal() as f32).collect()
}

/// One head's attention over a cache of rows `c` wide (the head at `off`), in f64.
fn naive_attend(q: &[f32], k: &[f32], v: &[f32], c: usize, off: usize, n: usize, scale: f32) -> Vec<f64> {
    let d = q.len();
    let s: Vec<f64> = (0..n)
        .map(|j| {
            (0..d)
                .map(|i| f64::from(q[i]) * f64::from(k[j * c + off + i]))
                .sum::<f64>()
                * f64::from(scale)
        })
        .collect();
    let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
    let z: f64 = e.iter().sum();
    (0..d)
        .map(|i| (0..n).map(|j| e[j] / z * f64::from(v[j * c + off + i])).sum())
        .collect()
}

#[test]
fn attention_matches_the_naive_softmax() {
    // Head width 64 takes the register-held sums, 24 the general loop; odd and even numbers
    // of positions (the pairs' remainder), the second head of each row.
    for d in [64, 24] {
        for n in [1, 2, 7, 64, 301] {
            let c = 3 * d;
            let (q, k, v) = (data(d, 1), data(n * c, 2), data(n * c, 3));
            let mut scores = vec![0f32; n];
            let mut y = vec![0f32; d];
            attend(&q, &k, &v, c, d, 0.125, &mut scores, &mut y);
            let want = naive_attend(&q, &k, &v, c, d, n, 0.125);
            let worst = y
                .iter()
                .zip(&want)
                .map(|(a, b)| (f64::from(*a) - b).abs())
                .fold(0.0, f64::max);
            assert!(worst < 1e-5, "d {d}, n {n}: {worst}");
        }
    }
}

#[test]
fn every_path_matches_the_naive_product() {
    // Odd sizes: remainders of the row pairs, the 16-lane dots and the output blocks.
    for (m, k, n) in [
        (1, 37, 515),
        (3, 300, 77),
        (8, 129, 600),
        (20, 65, 33),
        (33, 130, 515),
        (1, 1024, 300),
    ] {
        let x = data(m * k, 1);
        for layout in [Layout::InOut, Layout::OutIn] {
            let (rows, cols) = match layout {
                Layout::InOut => (k, n),
                Layout::OutIn => (n, k),
            };
            if layout == Layout::InOut {
                assert_eq!(
                    unpack_panels(&pack_panels(&data(k * n, 2), k, n), k, n),
                    data(k * n, 2)
                );
            }
            let w = data(k * n, 2);
            let want = naive(&x, m, &w, k, n, layout);
            let bias = data(n, 3);
            for wt in [WeightType::F32, WeightType::Bf16, WeightType::Q8] {
                let mat = Matrix::new(w.clone(), rows, cols, layout, wt);
                let mut out = vec![0f32; m * n];
                matmul(&x, m, &mat, Some(&bias), &mut out);
                let tol = match wt {
                    WeightType::F32 => 1e-4,
                    WeightType::Bf16 => 0.05,
                    WeightType::Q8 => 0.05,
                } * (k as f32).sqrt();
                for (i, (o, e)) in out.iter().zip(&want).enumerate() {
                    let e = e + bias[i % n];
                    assert!((o - e).abs() <= tol, "{m}x{k}x{n} {layout:?} {wt:?}: {o} vs {e}");
                }
                if wt == WeightType::Q8 {
                    // Each weight is within q8_0's bound of its block's largest (half a step
                    // and the f16 scale's rounding), and the product is exactly that of the
                    // dequantised weights.
                    let deq = mat.to_f32();
                    for i in 0..k {
                        for j in 0..n {
                            let at = |v: &[f32]| match layout {
                                Layout::InOut => v[i * n + j],
                                Layout::OutIn => v[j * k + i],
                            };
                            let b0 = i / QBLOCK * QBLOCK;
                            let max = (b0..(b0 + QBLOCK).min(k)).fold(0f32, |mx, ii| {
                                mx.max(match layout {
                                    Layout::InOut => w[ii * n + j].abs(),
                                    Layout::OutIn => w[j * k + ii].abs(),
                                })
                            });
                            let err = (at(&deq) - at(&w)).abs();
                            let bound = max * chatforge_model::quant::QuantKind::Q8.error_bound();
                            assert!(err <= bound * 1.0001, "q8 ({i}, {j}): {err} > {bound}");
                        }
                    }
                    let exact = naive(&x, m, &deq, k, n, layout);
                    for (i, (o, e)) in out.iter().zip(&exact).enumerate() {
                        let e = e + bias[i % n];
                        assert!(
                            (o - e).abs() <= 1e-4 * (k as f32).sqrt(),
                            "q8 {m}x{k}x{n} {layout:?}: {o} vs {e}"
                        );
                    }
                    if layout == Layout::OutIn {
                        let mut row = vec![0f32; k];
                        mat.row_into(n - 1, &mut row);
                        assert_eq!(row, deq[(n - 1) * k..]);
                    }
                }
            }
        }
    }
}

#[test]
fn bf16_rounds_to_nearest_even() {
    assert_eq!(Bf16::from_f32(1.0).to_f32(), 1.0);
    assert_eq!(Bf16::from_f32(-2.5).to_f32(), -2.5);
    // 1 + 2^-8 is halfway between two bf16 values: ties go to the even one (1.0).
    assert_eq!(Bf16::from_f32(1.0 + 1.0 / 256.0).to_f32(), 1.0);
    assert_eq!(Bf16::from_f32(1.0 + 3.0 / 256.0).to_f32(), 1.0 + 4.0 / 256.0);
    assert!(Bf16::from_f32(f32::NAN).to_f32().is_nan());
    assert_eq!(Bf16::from_f32(f32::INFINITY).to_f32(), f32::INFINITY);
}

/// Not a test: GFLOP/s of `matmul` by rows, for tuning (`cargo test --release -p chatforge-infer
/// --lib kernels::tests::throughput -- --ignored --nocapture`).
#[test]
#[ignore]
fn throughput() {
    for (k, n, layout) in [
        (768, 2304, Layout::InOut),
        (3072, 768, Layout::InOut),
        (768, 50257, Layout::OutIn),
    ] {
        let (rows, cols) = match layout {
            Layout::InOut => (k, n),
            Layout::OutIn => (n, k),
        };
        let mat = Matrix::new(data(k * n, 2), rows, cols, layout, WeightType::F32);
        let plain = data(k * n, 2);
        for m in [1, 4, 8, 9, 16, 32, 64, 256] {
            let x = data(m * k, 1);
            let mut out = vec![0f32; m * n];
            matmul(&x, m, &mat, None, &mut out);
            // The best of 7 runs of 5 (the machine is shared).
            let s = (0..7)
                .map(|_| {
                    let t = std::time::Instant::now();
                    for _ in 0..5 {
                        matmul(&x, m, &mat, None, &mut out);
                    }
                    t.elapsed().as_secs_f64() / 5.0
                })
                .fold(f64::MAX, f64::min);
            let g = (0..7)
                .map(|_| {
                    let t = std::time::Instant::now();
                    chatforge_model::kernels::matmul_into(
                        &x,
                        m,
                        k,
                        &plain,
                        n,
                        layout == Layout::OutIn,
                        &mut out,
                    );
                    t.elapsed().as_secs_f64()
                })
                .fold(f64::MAX, f64::min);
            let gf = |s: f64| 2.0 * (m * k * n) as f64 / s / 1e9;
            println!(
                "{k}x{n} {layout:?} m {m:>3}: {:6.2} ms, {:6.1} GFLOP/s (gemm crate, plain: {:6.1})",
                s * 1e3,
                gf(s),
                gf(g)
            );
        }
    }
}

/// Not a test: the streaming kernels' share of the machine's read bandwidth at one row, over
/// matrices that do not fit in cache (`… kernels::tests::bandwidth -- --ignored --nocapture`).
#[test]
#[ignore]
fn bandwidth() {
    let (k, n) = (768, 3072);
    for layout in [Layout::InOut, Layout::OutIn] {
        let (rows, cols) = if layout == Layout::InOut { (k, n) } else { (n, k) };
        let mats: Vec<Matrix> = (0..24)
            .map(|s| Matrix::new(data(k * n, s), rows, cols, layout, WeightType::F32))
            .collect();
        let bytes: usize = mats.iter().map(Matrix::bytes).sum();
        let x = data(k, 1);
        let mut out = vec![0f32; n];
        let best = |f: &mut dyn FnMut()| {
            (0..5)
                .map(|_| {
                    let t = std::time::Instant::now();
                    f();
                    t.elapsed().as_secs_f64()
                })
                .fold(f64::MAX, f64::min)
        };
        let s = best(&mut || mats.iter().for_each(|w| matmul(&x, 1, w, None, &mut out)));
        let sum = best(&mut || {
            let t: f32 = mats
                .par_iter()
                .map(|w| match &w.store {
                    Store::F32(v) => v
                        .chunks_exact(16)
                        .fold([0f32; 16], |mut a, c| {
                            a.iter_mut().zip(c).for_each(|(a, c)| *a += c);
                            a
                        })
                        .iter()
                        .sum::<f32>(),
                    _ => 0.0,
                })
                .sum();
            std::hint::black_box(t);
        });
        println!(
            "{layout:?}: matmul {:.1} GB/s, parallel sum {:.1} GB/s",
            bytes as f64 / s / 1e9,
            bytes as f64 / sum / 1e9
        );
    }
}
