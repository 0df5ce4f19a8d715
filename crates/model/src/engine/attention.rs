//! Causal attention over packed segments, in tiles of query rows: forward keeps only each row's
//! softmax maximum and `1/sum`; backward makes the weights again.

use super::*;

/// For a row whose segments are runs (each id in one stretch), where each position's run starts;
/// `None` when an id comes back after another (then attention masks position by position).
#[inline]
pub(super) fn segment_starts(seg: &[u32]) -> Option<Vec<usize>> {
    let mut starts = Vec::with_capacity(seg.len());
    let mut seen = Vec::new();
    let mut start = 0;
    for (i, &s) in seg.iter().enumerate() {
        if i > 0 && s != seg[i - 1] {
            if seen.contains(&s) {
                return None;
            }
            seen.push(seg[i - 1]);
            start = i;
        }
        starts.push(start);
    }
    Some(starts)
}

/// Rows of attention computed together: rows `r0..r1` of one segment that starts at `s`, against
/// columns `s..r1`. Tiles skip what the mask zeroes: the upper causal triangle and, in packed
/// rows, every other segment's columns.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tile {
    pub(super) r0: usize,
    pub(super) r1: usize,
    pub(super) s: usize,
}

/// Rows per attention tile.
pub(super) const ATT_TILE: usize = 64;

/// The tiles of one batch row, and whether it is masked position by position: when a segment id
/// comes back after another, one tile covers the whole row and the mask compares ids.
#[inline]
pub(super) fn row_tiles(seg: &[u32]) -> (Vec<Tile>, bool) {
    let t = seg.len();
    match segment_starts(seg) {
        Some(st) => {
            let mut tiles = Vec::new();
            let mut s = 0;
            while s < t {
                let e = (s..t).find(|&j| st[j] != s).unwrap_or(t);
                let mut r0 = s;
                while r0 < e {
                    let r1 = (r0 + ATT_TILE).min(e);
                    tiles.push(Tile { r0, r1, s });
                    r0 = r1;
                }
                s = e;
            }
            (tiles, false)
        }
        None => (vec![Tile { r0: 0, r1: t, s: 0 }], true),
    }
}

/// Runs `f(bh, a, b)` for every `bh < count`, in parallel: the tasks are dealt to as many groups
/// as `scratch` holds pairs of `tt`-value matrices (task `bh` to group `bh mod groups`, so uneven
/// rows spread), and each group runs its tasks in turn with its own pair `a`, `b`.
#[inline]
pub(super) fn per_head(
    scratch: &mut [f32],
    tt: usize,
    count: usize,
    f: impl Fn(usize, &mut [f32], &mut [f32]) + Sync,
) {
    let groups = scratch.len() / (2 * tt);
    assert!(groups > 0, "attention scratch");
    scratch.par_chunks_mut(2 * tt).enumerate().for_each(|(g, s)| {
        let (a, b) = s.split_at_mut(tt);
        for bh in (g..count).step_by(groups) {
            f(bh, a, b);
        }
    });
}

/// Each row's softmax maximum and `1/sum`: written when the weights are computed, read when they
/// are made again.
pub(super) enum Stats<'a> {
    Write(&'a mut [f32]),
    Read(&'a [f32]),
}

impl Stats<'_> {
    /// Row `i`'s stats when replaying; `None` when they are to be computed.
    #[inline]
    pub(super) fn get(&self, i: usize) -> Option<(f32, f32)> {
        match self {
            Stats::Read(s) => Some((s[2 * i], s[2 * i + 1])),
            Stats::Write(_) => None,
        }
    }

    #[inline]
    pub(super) fn put(&mut self, i: usize, (max, inv): (f32, f32)) {
        if let Stats::Write(s) = self {
            s[2 * i] = max;
            s[2 * i + 1] = inv;
        }
    }
}

/// One head's attention weights over a tile of the batch row that starts at `row0`: q·kᵀ/√d
/// over the tile's columns, then [`tile_softmax`]. Forward (computing the stats) and backward
/// (replaying them) both go through here, so they make the same weights.
#[inline]
pub(super) fn tile_weights(
    p: &mut [f32],
    qkv: &[f32],
    (row0, hi, t): (usize, usize, usize),
    dims: Dims,
    (tile, general, seg): (Tile, bool, &[u32]),
    stats: Stats<'_>,
) {
    let (c, d, w) = (dims.c, dims.d, dims.w);
    let kh = hi / dims.g;
    let (m, nc) = (tile.r1 - tile.r0, tile.r1 - tile.s);
    #[allow(unsafe_code)]
    // SAFETY: `p` is borrowed uniquely and `qkv` shared, so they do not overlap; the views are
    // checked against both lengths.
    unsafe {
        gemm_raw(
            Out::new(
                p.as_mut_ptr(),
                p.len(),
                View::rows(tile.r0 * t + tile.s, m, nc, t),
            ),
            In::new(
                qkv.as_ptr(),
                qkv.len(),
                View::rows((row0 + tile.r0) * w + hi * d, m, d, w),
            ),
            In::new(
                qkv.as_ptr(),
                qkv.len(),
                View::rows((row0 + tile.s) * w + c + kh * d, nc, d, w).t(),
            ),
            Gemm::serial(false, 1.0 / (d as f32).sqrt()),
        );
    }
    tile_softmax(p, t, tile, general, seg, stats);
}

/// A tile's causal softmax in place, row by row over the row's visible columns (`j ≤ i` in its
/// segment), zero elsewhere in the tile. Computing, it writes each row's maximum and `1/sum` to
/// `stats`; replaying, it reads them and gives the same weights bit for bit (`exp(x − max) ·
/// inv`, the same two roundings).
#[inline]
pub(super) fn tile_softmax(
    p: &mut [f32],
    t: usize,
    tile: Tile,
    general: bool,
    seg: &[u32],
    mut stats: Stats<'_>,
) {
    for i in tile.r0..tile.r1 {
        if general {
            let row = &mut p[i * t..(i + 1) * t];
            let visible = |j: usize| j <= i && seg[j] == seg[i];
            let (max, inv) = stats.get(i).unwrap_or_else(|| {
                let max = row[..=i]
                    .iter()
                    .enumerate()
                    .filter(|&(j, _)| visible(j))
                    .fold(f32::NEG_INFINITY, |m, (_, &x)| if x > m { x } else { m });
                let mut sum = 0f32;
                for (j, x) in row.iter().enumerate() {
                    if visible(j) {
                        sum += fm::exp(*x - max);
                    }
                }
                (max, 1.0 / sum)
            });
            for (j, x) in row.iter_mut().enumerate() {
                *x = if visible(j) { fm::exp(*x - max) * inv } else { 0.0 };
            }
            stats.put(i, (max, inv));
        } else {
            let row = &mut p[i * t + tile.s..i * t + tile.r1];
            let n = i - tile.s + 1;
            vectorized(|| {
                // The same two roundings either way: `exp(x − max)`, then `· inv`.
                match stats.get(i) {
                    Some((max, inv)) => row[..n].iter_mut().for_each(|x| *x = fm::exp(*x - max) * inv),
                    None => {
                        let max = fm::max(&row[..n]);
                        row[..n].iter_mut().for_each(|x| *x = fm::exp(*x - max));
                        let inv = 1.0 / fm::sum(&row[..n]);
                        row[..n].iter_mut().for_each(|x| *x *= inv);
                        stats.put(i, (max, inv));
                    }
                }
                row[n..].fill(0.0);
            });
        }
    }
}

/// Through a tile's softmax: `dP` (in `dp`, through the dropout `mask` whose elements start at
/// `at`) becomes `dS = P ⊙ (dP − rowsum(dP ⊙ P))`, where `p` holds the weights `P`.
#[inline]
fn softmax_grad(p: &[f32], dp: &mut [f32], mask: Option<(&Mask, usize)>, t: usize, tile: Tile) {
    // Through the dropout: dP ⊙ mask (where the weights are 0 it does not matter).
    if let Some((mk, at)) = mask {
        vectorized(|| {
            for i in tile.r0..tile.r1 {
                let row = &mut dp[i * t + tile.s..=i * t + i];
                row.iter_mut()
                    .enumerate()
                    .for_each(|(j, x)| *x *= mk.factor(at + i * t + tile.s + j));
            }
        });
    }
    // dS = P ⊙ (dP − rowsum(dP ⊙ P)); masked weights are 0, so their dS is too.
    vectorized(|| {
        for i in tile.r0..tile.r1 {
            let span = i * t + tile.s..i * t + tile.r1;
            let (prow, drow) = (&p[span.clone()], &mut dp[span]);
            let n = i - tile.s + 1;
            let dot = fm::sum_of(&prow[..n], &drow[..n], |p, d| p * d);
            for (d, &p) in drow.iter_mut().zip(prow) {
                *d = p * (*d - dot);
            }
        }
    });
}

/// Backward of attention for every (row, head), tile by tile: `dqkv` from `datty` (the gradient
/// of the attention's output) and qkv, with the weights made again from the kept softmax `stats`.
/// One task per (row, key/value head) runs the query heads that share it in turn, so a task
/// alone writes its keys' and values' gradients. `scratch` as in [`attention_fwd`].
#[inline]
#[allow(clippy::too_many_arguments)]
pub(super) fn attention_bwd(
    dqkv: &mut [f32],
    scratch: &mut [f32],
    datty: &[f32],
    (qkv, stats): (&[f32], &[f32]),
    batch: &StepBatch<'_>,
    row_tiles: &[(Vec<Tile>, bool)],
    dims: Dims,
    mask: Option<&Mask>,
) {
    let _span = span(Family::Attention);
    let t = batch.t;
    let (c, h, d, w, g) = (dims.c, dims.h, dims.d, dims.w, dims.g);
    let kvh = h / g;
    let scale = 1.0 / (d as f32).sqrt();
    let (qkv_len, datty_len, dqkv_len, tt) = (qkv.len(), datty.len(), dqkv.len(), t * t);
    let dq = SendPtr(dqkv.as_mut_ptr());
    per_head(scratch, tt, batch.b * kvh, |bk, p, dp| {
        let (bi, kh) = (bk / kvh, bk % kvh);
        let row0 = bi * t;
        let seg = &batch.segments[row0..row0 + t];
        let (tiles, general) = &row_tiles[bi];
        // dk and dv gather over tiles and query heads: start them at zero.
        for r in row0..row0 + t {
            for off in [c, c + dims.kv] {
                #[allow(unsafe_code)]
                // SAFETY: this batch row's rows, this key/value head's columns of k and v: this
                // task's alone.
                unsafe {
                    std::slice::from_raw_parts_mut(dq.get().add(r * w + off + kh * d), d).fill(0.0);
                }
            }
        }
        let k_rows = |s: usize, n: usize| View::rows((row0 + s) * w + c + kh * d, n, d, w);
        let v_rows = |s: usize, n: usize| View::rows((row0 + s) * w + c + dims.kv + kh * d, n, d, w);
        for hi in kh * g..(kh + 1) * g {
            let bh = bi * h + hi;
            let st = &stats[bh * t * 2..(bh + 1) * t * 2];
            let q_rows = |r0: usize, m: usize| View::rows((row0 + r0) * w + hi * d, m, d, w);
            for &tile in tiles {
                let (m, nc) = (tile.r1 - tile.r0, tile.r1 - tile.s);
                let pv = View::rows(tile.r0 * t + tile.s, m, nc, t);
                let dy = View::rows((row0 + tile.r0) * c + hi * d, m, d, c);
                #[allow(unsafe_code)]
                // SAFETY: `p` and `dp` are this task's own scratch; the dq, dk and dv blocks
                // written here (this batch row's rows; its query heads' columns of q, its key/value
                // head's of k and v) belong to this task alone; everything else is read only.
                unsafe {
                    // The softmax's weights, again.
                    tile_weights(
                        p,
                        qkv,
                        (row0, hi, t),
                        dims,
                        (tile, *general, seg),
                        Stats::Read(st),
                    );
                    // dv += P'ᵀ · dy, where P' are the weights v was multiplied by: the
                    // softmax's, or with dropout their dropped-out copy, made in `dp` before it
                    // takes dP.
                    let pw = match mask {
                        Some(mk) => {
                            dropped_weights(dp, p, mk, bh * tt, t, tile);
                            dp.as_ptr()
                        }
                        None => p.as_ptr(),
                    };
                    gemm_raw(
                        Out::new(dq.get(), dqkv_len, v_rows(tile.s, nc)),
                        In::new(pw, tt, pv.t()),
                        In::new(datty.as_ptr(), datty_len, dy),
                        Gemm::serial(true, 1.0),
                    );
                    // dP = dy · vᵀ
                    gemm_raw(
                        Out::new(dp.as_mut_ptr(), tt, pv),
                        In::new(datty.as_ptr(), datty_len, dy),
                        In::new(qkv.as_ptr(), qkv_len, v_rows(tile.s, nc).t()),
                        Gemm::serial(false, 1.0),
                    );
                }
                softmax_grad(p, dp, mask.map(|mk| (mk, bh * tt)), t, tile);
                #[allow(unsafe_code)]
                // SAFETY: as above.
                unsafe {
                    // dq = dS · k / √d (each query row is in one tile)
                    gemm_raw(
                        Out::new(dq.get(), dqkv_len, q_rows(tile.r0, m)),
                        In::new(dp.as_ptr(), tt, pv),
                        In::new(qkv.as_ptr(), qkv_len, k_rows(tile.s, nc)),
                        Gemm::serial(false, scale),
                    );
                    // dk += dSᵀ · q / √d
                    gemm_raw(
                        Out::new(dq.get(), dqkv_len, k_rows(tile.s, nc)),
                        In::new(dp.as_ptr(), tt, pv.t()),
                        In::new(qkv.as_ptr(), qkv_len, q_rows(tile.r0, m)),
                        Gemm::serial(true, scale),
                    );
                }
            }
        }
    });
}

/// Per (row, head): causal softmax(q·kᵀ/√d) over the row's segment, times v, tile by tile
/// ([`Tile`]): only the causal triangle of each segment's block is computed. The weights are
/// not kept: `stats` gets each row's softmax maximum and `1/sum` (2 values per row), from which
/// backward makes the same weights again. `scratch` holds a pair of `(t, t)` matrices per
/// group of tasks ([`per_head`]); with dropout v is multiplied by the weights' dropped-out copy.
#[inline]
#[allow(clippy::too_many_arguments)]
pub(super) fn attention_fwd(
    dims: Dims,
    row_tiles: &[(Vec<Tile>, bool)],
    stats_all: &mut [f32],
    atty_all: &mut [f32],
    qkv: &[f32],
    batch: &StepBatch<'_>,
    scratch: &mut [f32],
    mask: Option<&Mask>,
) {
    let _span = span(Family::Attention);
    let t = batch.t;
    let (c, h, d, w) = (dims.c, dims.h, dims.d, dims.w);
    let kh = |hi: usize| hi / dims.g;
    let (qkv_len, atty_len, tt) = (qkv.len(), atty_all.len(), t * t);
    let atty = SendPtr(atty_all.as_mut_ptr());
    let stats_ptr = SendPtr(stats_all.as_mut_ptr());
    assert_eq!(stats_all.len(), batch.b * h * t * 2, "attention stats");
    per_head(scratch, tt, batch.b * h, |bh, p, pd| {
        let (bi, hi) = (bh / h, bh % h);
        let row0 = bi * t;
        let seg = &batch.segments[row0..row0 + t];
        let (tiles, general) = &row_tiles[bi];
        #[allow(unsafe_code)]
        // SAFETY: rows `bh·t..(bh+1)·t` of the stats belong to this task alone.
        let stats = unsafe { std::slice::from_raw_parts_mut(stats_ptr.get().add(bh * t * 2), t * 2) };
        for &tile in tiles {
            let (m, nc) = (tile.r1 - tile.r0, tile.r1 - tile.s);
            let pv = View::rows(tile.r0 * t + tile.s, m, nc, t);
            tile_weights(
                p,
                qkv,
                (row0, hi, t),
                dims,
                (tile, *general, seg),
                Stats::Write(&mut *stats),
            );
            // The weights v is multiplied by: the softmax's, or their dropped-out copy.
            let weights: &[f32] = match mask {
                Some(mk) => {
                    dropped_weights(pd, p, mk, bh * tt, t, tile);
                    pd
                }
                None => p,
            };
            #[allow(unsafe_code)]
            // SAFETY: the output block (this tile's rows of this batch row, this head's
            // columns) belongs to this task alone; `weights` and `qkv` are read only.
            unsafe {
                gemm_raw(
                    Out::new(
                        atty.get(),
                        atty_len,
                        View::rows((row0 + tile.r0) * c + hi * d, m, d, c),
                    ),
                    In::new(weights.as_ptr(), tt, pv),
                    In::new(
                        qkv.as_ptr(),
                        qkv_len,
                        View::rows((row0 + tile.s) * w + c + dims.kv + kh(hi) * d, nc, d, w),
                    ),
                    Gemm::serial(false, 1.0),
                );
            }
        }
    });
}
