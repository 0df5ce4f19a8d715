//! The one training loop: pre-training and supervised fine-tuning of a GPT on token shards,
//! with AdamW, warm-up + cosine schedule, gradient clipping and accumulation, validation, early
//! stopping, and checkpoints from which a killed run resumes with identical per-step losses.

mod checkpoint;
mod config;
mod events;
mod group;
mod optim;
mod pairs;
mod plot;
pub mod preference;
mod run;
mod start;
mod tensorboard;

pub use checkpoint::{CheckpointState, read_state};
pub use config::{Adapter, Mode, TrainConfig, TrainSettings};
pub use events::{Event, line_step};
pub use group::{Group, Solo};
pub use optim::{AdamW, AdamWConfig, clip_grad_norm, lr_at};
pub use pairs::PairTraining;
pub use plot::{loss_plot, read_curves};
pub use run::{StepLoss, StepOutcome, TrainSummary, optimizer_step, train, train_in, unigram_baseline};
pub use start::{check_memory, init_config, load_init};

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config: {0}")]
    Config(String),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// The loss or the gradient stopped being a number: the run ends rather than train on NaN.
    #[error("the run diverged at step {step}: {what} (lower train.lr, or clip with train.grad_clip)")]
    Diverged { step: u64, what: String },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Data(#[from] chatforge_data::Error),
    #[error(transparent)]
    Model(#[from] chatforge_model::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
