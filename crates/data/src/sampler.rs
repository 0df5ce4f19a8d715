//! The seeded batch sampler: packs whole documents (conversations) into rows of `seq_len`
//! positions, so no position is wasted on padding where a short conversation fits, and no token
//! is trained to predict across a document boundary.
//!
//! A document of `n` tokens becomes one piece of `n - 1` (input, target) pairs; a document longer
//! than a row is cut into pieces of `seq_len` pairs that overlap by one token. Pieces are packed
//! greedily into rows in a seeded per-epoch order; the rest of a row is padding. Each position
//! carries its `segment` (which piece of the row it belongs to, for block-diagonal causal attention)
//! and its `position` within that piece (restarting at 0, for position embeddings).
//!
//! A shard of preference pairs is packed pair by pair: a pair's chosen and rejected sequences
//! share a row (so a micro-batch always holds whole pairs) and are never cut; a pair longer than
//! a row keeps the start of each sequence, each getting at least half the row.

use serde::{Deserialize, Serialize};

use crate::{Error, Result, Rng, Shard};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplerConfig {
    pub batch_size: usize,
    pub seq_len: usize,
    pub seed: u64,
    /// Shuffle documents each epoch (training) or keep file order (validation).
    pub shuffle: bool,
}

/// Where the sampler is: saved in checkpoints so a resumed run sees exactly the batches an
/// uninterrupted run would have.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplerState {
    pub epoch: u64,
    /// The next row of this epoch's plan.
    pub row: u64,
}

/// `batch_size × seq_len` positions, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub batch_size: usize,
    pub seq_len: usize,
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
    /// 1 where the target is a real next token of the same document (0 on padding).
    pub target_mask: Vec<u8>,
    /// `target_mask` and the shard's loss mask of the target token: the assistant's tokens (SFT).
    pub loss_mask: Vec<u8>,
    pub positions: Vec<u32>,
    pub segments: Vec<u32>,
    /// Which sequence of the batch each position belongs to (`u32::MAX` on padding); in a batch
    /// of pairs, sequences `2k` and `2k + 1` are pair `k`'s chosen and rejected ones.
    pub seqs: Vec<u32>,
    /// Each sequence's document in the shard.
    pub docs: Vec<u64>,
}

impl Batch {
    fn new(batch_size: usize, seq_len: usize) -> Batch {
        let n = batch_size * seq_len;
        Batch {
            batch_size,
            seq_len,
            inputs: vec![0; n],
            targets: vec![0; n],
            target_mask: vec![0; n],
            loss_mask: vec![0; n],
            positions: vec![0; n],
            segments: vec![0; n],
            seqs: vec![u32::MAX; n],
            docs: Vec::new(),
        }
    }

    /// Positions with a real target.
    pub fn target_tokens(&self) -> usize {
        self.target_mask.iter().map(|&m| m as usize).sum()
    }

    /// Positions that carry loss in SFT.
    pub fn loss_tokens(&self) -> usize {
        self.loss_mask.iter().map(|&m| m as usize).sum()
    }
}

/// Tokens `start..end` of the shard: `end - start - 1` (input, target) pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Piece {
    start: usize,
    end: usize,
    doc: usize,
}

#[derive(Debug)]
pub struct BatchSampler<'a> {
    shard: &'a Shard,
    cfg: SamplerConfig,
    state: SamplerState,
    pieces: Vec<Piece>,
    /// Row `r` holds `pieces[rows[r]..rows[r + 1]]`.
    rows: Vec<usize>,
    ids: Vec<u32>,
}

impl<'a> BatchSampler<'a> {
    pub fn new(shard: &'a Shard, cfg: SamplerConfig) -> Result<Self> {
        Self::resume(shard, cfg, SamplerState::default())
    }

    /// A sampler that continues from a saved [`SamplerState`].
    pub fn resume(shard: &'a Shard, cfg: SamplerConfig, state: SamplerState) -> Result<Self> {
        if cfg.batch_size == 0 || cfg.seq_len == 0 {
            return Err(Error::Invalid(
                "batch size and sequence length must be at least 1".into(),
            ));
        }
        if !(0..shard.n_docs()).any(|d| shard.doc(d).len() >= 2) {
            return Err(Error::shard(
                shard.path(),
                "no document has two tokens: nothing to train on",
            ));
        }
        let mut s = BatchSampler {
            shard,
            cfg,
            state,
            pieces: Vec::new(),
            rows: Vec::new(),
            ids: Vec::new(),
        };
        s.plan(state.epoch);
        if state.row > s.rows_in_epoch() as u64 {
            return Err(Error::Invalid(format!(
                "sampler state row {} is past the {} rows of epoch {}: the checkpoint belongs to other data",
                state.row,
                s.rows_in_epoch(),
                state.epoch
            )));
        }
        Ok(s)
    }

    pub fn state(&self) -> SamplerState {
        self.state
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    pub fn rows_in_epoch(&self) -> usize {
        self.rows.len() - 1
    }

    /// Progress in epochs, e.g. 1.25.
    pub fn epoch_progress(&self) -> f64 {
        self.state.epoch as f64 + self.state.row as f64 / self.rows_in_epoch() as f64
    }

    /// Packs the documents of `epoch` into rows.
    fn plan(&mut self, epoch: u64) {
        let t = self.cfg.seq_len;
        let mut docs: Vec<usize> = (0..self.shard.n_docs()).collect();
        if self.cfg.shuffle {
            Rng::new(self.cfg.seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15)).shuffle(&mut docs);
        }
        self.pieces.clear();
        self.rows.clear();
        self.rows.push(0);
        if self.shard.is_pairs() {
            self.plan_pairs(epoch);
            return;
        }
        let mut free = t;
        for d in docs {
            let range = self.shard.doc(d);
            let mut start = range.start;
            while start + 1 < range.end {
                let end = (start + t + 1).min(range.end);
                let pairs = end - start - 1;
                if pairs > free {
                    self.rows.push(self.pieces.len());
                    free = t;
                }
                self.pieces.push(Piece { start, end, doc: d });
                free -= pairs;
                start = end - 1;
            }
        }
        if free < t {
            self.rows.push(self.pieces.len());
        }
    }

    /// Packs the pairs of `epoch` into rows, each pair's two sequences in one row.
    fn plan_pairs(&mut self, epoch: u64) {
        let t = self.cfg.seq_len;
        let mut pairs: Vec<usize> = (0..self.shard.n_docs() / 2).collect();
        if self.cfg.shuffle {
            Rng::new(self.cfg.seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15)).shuffle(&mut pairs);
        }
        let mut free = t;
        for k in pairs {
            let (c, r) = (self.shard.doc(2 * k), self.shard.doc(2 * k + 1));
            let (pc, pr) = (c.len().saturating_sub(1), r.len().saturating_sub(1));
            // Targets each sequence keeps: all of them when the pair fits a row, else the start.
            let (kc, kr) = if pc + pr <= t {
                (pc, pr)
            } else {
                let kc = pc.min((t / 2).max(t.saturating_sub(pr)));
                (kc, pr.min(t - kc))
            };
            if kc + kr > free {
                self.rows.push(self.pieces.len());
                free = t;
            }
            for (range, keep, doc) in [(c, kc, 2 * k), (r, kr, 2 * k + 1)] {
                self.pieces.push(Piece {
                    start: range.start,
                    end: range.start + keep + 1,
                    doc,
                });
            }
            free -= kc + kr;
        }
        if free < t {
            self.rows.push(self.pieces.len());
        }
    }

    fn fill_row(&mut self, row: usize, batch: &mut Batch, b: usize) {
        let t = self.cfg.seq_len;
        let base = b * t;
        let mut at = 0;
        for (seg, piece) in self.pieces[self.rows[row]..self.rows[row + 1]].iter().enumerate() {
            let seq = batch.docs.len() as u32;
            batch.docs.push(piece.doc as u64);
            self.ids.clear();
            self.shard.ids_into(piece.start..piece.end, &mut self.ids);
            let mask = self.shard.mask(piece.start + 1..piece.end);
            let pairs = self.ids.windows(2).zip(mask);
            for (k, (pair, &loss)) in pairs.enumerate() {
                let i = base + at + k;
                batch.inputs[i] = pair[0];
                batch.targets[i] = pair[1];
                batch.target_mask[i] = 1;
                batch.loss_mask[i] = loss;
                batch.positions[i] = k as u32;
                batch.segments[i] = seg as u32;
                batch.seqs[i] = seq;
            }
            at += piece.end - piece.start - 1;
        }
        let pad_segment = (self.rows[row + 1] - self.rows[row]) as u32;
        for k in at..t {
            batch.segments[base + k] = pad_segment;
            batch.positions[base + k] = (k - at) as u32;
        }
    }

    /// The next training batch; epochs follow one another without end, each in a new order.
    pub fn next_batch(&mut self) -> Batch {
        let mut batch = Batch::new(self.cfg.batch_size, self.cfg.seq_len);
        for b in 0..self.cfg.batch_size {
            if self.state.row as usize >= self.rows_in_epoch() {
                self.state = SamplerState {
                    epoch: self.state.epoch + 1,
                    row: 0,
                };
                self.plan(self.state.epoch);
            }
            self.fill_row(self.state.row as usize, &mut batch, b);
            self.state.row += 1;
        }
        batch
    }

    /// One pass over the current epoch's plan in order, for validation; the last batch may have
    /// fewer rows. Does not move the sampler's state.
    pub fn epoch_batches(&mut self) -> Vec<Batch> {
        let rows = self.rows_in_epoch();
        let mut out = Vec::new();
        let mut r = 0;
        while r < rows {
            let n = self.cfg.batch_size.min(rows - r);
            let mut batch = Batch::new(n, self.cfg.seq_len);
            for b in 0..n {
                self.fill_row(r + b, &mut batch, b);
            }
            out.push(batch);
            r += n;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ShardWriter;

    /// Documents whose tokens encode (doc, index) so every window can be checked by hand.
    fn shard(dir: &std::path::Path, lens: &[usize]) -> Shard {
        let path = dir.join("s.bin");
        let mut w = ShardWriter::create(&path, 10_000).unwrap();
        for (d, &n) in lens.iter().enumerate() {
            let ids: Vec<u32> = (0..n).map(|i| (d * 100 + i) as u32).collect();
            let mask: Vec<u8> = (0..n).map(|i| (i % 2) as u8).collect();
            w.push(&ids, &mask).unwrap();
        }
        w.finish().unwrap();
        Shard::open(&path).unwrap()
    }

    #[test]
    fn packs_whole_documents_without_crossing() {
        let dir = tempfile::tempdir().unwrap();
        let s = shard(dir.path(), &[4, 3, 5, 1]);
        let cfg = SamplerConfig {
            batch_size: 2,
            seq_len: 6,
            seed: 0,
            shuffle: false,
        };
        let mut sampler = BatchSampler::new(&s, cfg).unwrap();
        // Pairs per doc: 3, 2, 4, 0 → rows [doc0, doc1] (5 of 6), [doc2] (4 of 6).
        assert_eq!(sampler.rows_in_epoch(), 2);
        let b = sampler.next_batch();
        assert_eq!(b.inputs[..6], [0, 1, 2, 100, 101, 0]);
        assert_eq!(b.targets[..6], [1, 2, 3, 101, 102, 0]);
        assert_eq!(b.target_mask[..6], [1, 1, 1, 1, 1, 0]);
        assert_eq!(b.segments[..6], [0, 0, 0, 1, 1, 2]);
        assert_eq!(b.positions[..6], [0, 1, 2, 0, 1, 0]);
        // Loss mask is the shard mask of the *target* token (odd indices are 1).
        assert_eq!(b.loss_mask[..6], [1, 0, 1, 1, 0, 0]);
        assert_eq!(b.inputs[6..], [200, 201, 202, 203, 0, 0]);
        assert_eq!(b.target_tokens(), 9);
        assert_eq!(sampler.state(), SamplerState { epoch: 0, row: 2 });
        assert_eq!(sampler.epoch_progress(), 1.0);
    }

    #[test]
    fn long_documents_are_cut_with_one_token_overlap() {
        let dir = tempfile::tempdir().unwrap();
        let s = shard(dir.path(), &[10]);
        let cfg = SamplerConfig {
            batch_size: 3,
            seq_len: 4,
            seed: 0,
            shuffle: false,
        };
        let b = BatchSampler::new(&s, cfg).unwrap().next_batch();
        // 9 pairs → 4 + 4 + 1.
        assert_eq!(b.inputs, [0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0]);
        assert_eq!(b.targets, [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 0, 0]);
        assert_eq!(b.target_mask, [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]);
    }

    #[test]
    fn seeded_order_and_exact_resume() {
        let dir = tempfile::tempdir().unwrap();
        let lens: Vec<usize> = (0..40).map(|i| 2 + (i * 7) % 9).collect();
        let s = shard(dir.path(), &lens);
        let cfg = SamplerConfig {
            batch_size: 3,
            seq_len: 16,
            seed: 11,
            shuffle: true,
        };
        let mut a = BatchSampler::new(&s, cfg).unwrap();
        let run: Vec<Batch> = (0..20).map(|_| a.next_batch()).collect();
        let mut again = BatchSampler::new(&s, cfg).unwrap();
        assert_eq!(run, (0..20).map(|_| again.next_batch()).collect::<Vec<_>>());
        // Stop after 7 batches, save the state, resume: the rest is identical.
        let mut first = BatchSampler::new(&s, cfg).unwrap();
        (0..7).for_each(|_| drop(first.next_batch()));
        let mut resumed = BatchSampler::resume(&s, cfg, first.state()).unwrap();
        assert_eq!(
            run[7..],
            (7..20).map(|_| resumed.next_batch()).collect::<Vec<_>>()[..]
        );
        // Another seed, another order; epochs differ from each other.
        let other = BatchSampler::new(&s, SamplerConfig { seed: 12, ..cfg })
            .unwrap()
            .next_batch();
        assert_ne!(other, run[0]);
        assert!(a.state().epoch >= 1);
    }

    #[test]
    fn pairs_share_a_row_and_long_pairs_keep_their_starts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.bin");
        let mut w = ShardWriter::create_pairs(&path, 10_000).unwrap();
        // (chosen, rejected) lengths: (4, 3) fits a row of 8 with room; (9, 3) must be cut.
        for (k, (lc, lr)) in [(4usize, 3usize), (9, 3), (3, 3)].into_iter().enumerate() {
            let doc = |d: usize, n: usize| -> (Vec<u32>, Vec<u8>) {
                (
                    (0..n).map(|i| (d * 100 + i) as u32).collect(),
                    (0..n).map(|i| u8::from(i >= 2)).collect(),
                )
            };
            let (c, r) = (doc(2 * k, lc), doc(2 * k + 1, lr));
            w.push_pair((&c.0, &c.1), (&r.0, &r.1)).unwrap();
        }
        assert!(w.push(&[1], &[0]).is_err(), "a document in a shard of pairs");
        w.finish().unwrap();
        let s = Shard::open(&path).unwrap();
        assert!(s.is_pairs());
        let cfg = SamplerConfig {
            batch_size: 3,
            seq_len: 8,
            seed: 0,
            shuffle: false,
        };
        let b = BatchSampler::new(&s, cfg).unwrap().next_batch();
        // Row 0: pair 0 (3 + 2 targets); pair 1 (8 + 2) does not fit: row 1 keeps 6 + 2.
        assert_eq!(b.docs, [0, 1, 2, 3, 4, 5]);
        assert_eq!(b.seqs[..8], [0, 0, 0, 1, 1, u32::MAX, u32::MAX, u32::MAX]);
        assert_eq!(b.inputs[8..16], [200, 201, 202, 203, 204, 205, 300, 301]);
        assert_eq!(b.seqs[8..16], [2, 2, 2, 2, 2, 2, 3, 3]);
        assert_eq!(b.seqs[16..], [4, 4, 5, 5, u32::MAX, u32::MAX, u32::MAX, u32::MAX]);
        // The loss mask is the reply's (targets from index 2 on).
        assert_eq!(b.loss_mask[..5], [0, 1, 1, 0, 1]);
    }

    #[test]
    fn every_pair_is_seen_once_per_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let lens = [5usize, 1, 9, 2, 30, 3];
        let s = shard(dir.path(), &lens);
        let cfg = SamplerConfig {
            batch_size: 2,
            seq_len: 8,
            seed: 3,
            shuffle: true,
        };
        let mut sampler = BatchSampler::new(&s, cfg).unwrap();
        let mut pairs = Vec::new();
        for b in sampler.epoch_batches() {
            for i in 0..b.inputs.len() {
                if b.target_mask[i] == 1 {
                    assert_eq!(b.targets[i], b.inputs[i] + 1, "target crosses a document");
                    pairs.push(b.inputs[i]);
                }
            }
        }
        pairs.sort_unstable();
        let expected: Vec<u32> = lens
            .iter()
            .enumerate()
            .flat_map(|(d, &n)| (0..n.saturating_sub(1)).map(move |i| (d * 100 + i) as u32))
            .collect();
        assert_eq!(pairs, expected);
    }
}
