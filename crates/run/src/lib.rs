//! Runs and model sources: the run directory's layout ([`RunDir`]), and where a model's weights,
//! tokenizer and adapters come from (a run directory, a Hugging Face folder, a GGUF file), shared
//! by training, generation, evaluation and export.

mod dir;
pub mod gguf;
pub mod source;

pub use dir::{CONFIG_FILE, GENERATION_FILE, RunDir, STATE_FILE, TASKS_DIR, TOKENIZER_FILE};
pub use source::{Checkpoint, ModelKind, ModelSource, model_tokenizer};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Model(#[from] chatforge_model::Error),
    #[error(transparent)]
    Tokenizer(#[from] chatforge_tokenizer::Error),
    #[error(transparent)]
    Data(#[from] chatforge_data::Error),
    #[error("{0}")]
    Invalid(String),
    #[error("{}: {msg}", path.display())]
    Load { path: std::path::PathBuf, msg: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
