//! The foundations every chatforge crate shares and nothing else: the seeded random number
//! generator a checkpoint can store, atomic file writes and calendar dates. It depends on no other crate, so the
//! model does not depend on the data pipeline to draw its weights or save them.

mod fs;
mod rng;
mod time;

pub use fs::{atomic_write, temp_sibling};
pub use rng::Rng;
pub use time::civil_from_days;
