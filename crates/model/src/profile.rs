//! Where a training step's time goes, by kernel family, for `chatforge bench train`: each family's
//! entry points open a [`span`], and the time between a span's opening and its end is added to
//! the family's total. Only spans on a thread that [`enable`]d profiling count, and only the
//! outermost one (a linear layer's matrix products are the layer's time, not twice), so the
//! totals are wall time of the step's own thread and their sum is at most the step's time; the
//! rest (embeddings, residual additions, dropout, rotary angles, hand-offs) is what no span
//! covers. Off, a span costs a thread-local read.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// The kernel families a step is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Matrix products: the linear layers (forward and backward, adapters included) and the head.
    Gemm,
    /// Attention's scores, softmax and weighted sums, forward and backward.
    Attention,
    /// Layer norm and RMSNorm, forward and backward.
    Norm,
    /// GELU and SwiGLU, forward and backward.
    Activation,
    /// The head's softmax and cross-entropy with the logits' gradient.
    Loss,
    /// Gradient clipping's norm and AdamW.
    Optimizer,
}

impl Family {
    pub const ALL: [Family; 6] = [
        Family::Gemm,
        Family::Attention,
        Family::Norm,
        Family::Activation,
        Family::Loss,
        Family::Optimizer,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Family::Gemm => "matmul",
            Family::Attention => "attention",
            Family::Norm => "norms",
            Family::Activation => "activations",
            Family::Loss => "loss",
            Family::Optimizer => "optimizer",
        }
    }
}

static NANOS: [AtomicU64; 6] = [const { AtomicU64::new(0) }; 6];

thread_local! {
    static ON: Cell<bool> = const { Cell::new(false) };
    static OPEN: Cell<bool> = const { Cell::new(false) };
}

/// Counts (or stops counting) the spans opened on this thread.
pub fn enable(on: bool) {
    ON.with(|c| c.set(on));
}

/// Each family's seconds since the last call, and the counters back at zero.
pub fn take() -> Vec<(Family, f64)> {
    Family::ALL
        .iter()
        .map(|&f| (f, NANOS[f as usize].swap(0, Ordering::Relaxed) as f64 * 1e-9))
        .collect()
}

/// Time spent until the span is dropped, added to `family` when it counts.
#[must_use = "the span measures until it is dropped"]
pub struct Span {
    open: Option<(Family, Instant)>,
}

/// Opens a span of `family` (see the module's rules for when it counts).
#[inline]
pub fn span(family: Family) -> Span {
    let counts = ON.with(Cell::get) && !OPEN.with(|o| o.replace(true));
    Span {
        open: counts.then(|| (family, Instant::now())),
    }
}

impl Drop for Span {
    #[inline]
    fn drop(&mut self) {
        if let Some((f, t)) = self.open.take() {
            NANOS[f as usize].fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
            OPEN.with(|o| o.set(false));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_outer_spans_on_an_enabled_thread_count() {
        let _ = take();
        {
            let _off = span(Family::Norm);
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        enable(true);
        {
            let _outer = span(Family::Gemm);
            let _inner = span(Family::Loss);
            std::thread::spawn(|| {
                let _elsewhere = span(Family::Attention);
            })
            .join()
            .ok();
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        enable(false);
        let got: std::collections::HashMap<&str, f64> =
            take().into_iter().map(|(f, s)| (f.name(), s)).collect();
        assert!(got["matmul"] >= 0.005, "{got:?}");
        assert_eq!(got["loss"], 0.0);
        assert_eq!(got["attention"], 0.0);
        assert_eq!(got["norms"], 0.0);
        assert!(take().iter().all(|(_, s)| *s == 0.0));
    }
}
