//! The foundations every chatforge crate shares and nothing else: the seeded random number
//! generator a checkpoint can store, and atomic file writes. It depends on no other crate, so the
//! model does not depend on the data pipeline to draw its weights or save them.

mod fs;
mod rng;

pub use fs::{atomic_write, temp_sibling};
pub use rng::Rng;
