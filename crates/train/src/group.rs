//! The processes one run spans (data parallelism). Each holds the whole model and takes its share
//! of every step's micro-batches; their gradients are summed before the (identical) AdamW step, so
//! every process keeps the same weights. One process is [`Solo`]; MPI's is in `chatforge-mpi`.

/// A group of processes training one run together.
pub trait Group {
    /// This process's place, `0..size()`; process 0 writes the run directory.
    fn rank(&self) -> usize;
    /// How many processes train the run.
    fn size(&self) -> usize;
    /// Element-wise sum over every process, in place (the same values come back to each).
    fn sum_f32(&self, values: &mut [f32]);
    /// As [`Group::sum_f32`], for the step's scalars (losses, counts, flags).
    fn sum_f64(&self, values: &mut [f64]);
    /// Waits until every process has called it.
    fn barrier(&self);
}

/// A run in one process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Solo;

impl Group for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn sum_f32(&self, _: &mut [f32]) {}
    fn sum_f64(&self, _: &mut [f64]) {}
    fn barrier(&self) {}
}
