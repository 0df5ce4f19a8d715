//! Generation and evaluation: the decoder with a KV cache per sequence, sampling, streaming text
//! with stop strings, batched generation, chat sessions, and the evaluation metrics.

pub mod adapter;
pub mod batch;
pub mod chat;
pub mod completion;
pub mod engine;
pub mod eval;
pub mod generate;
pub mod kernels;
pub mod metrics;
pub mod sampling;
pub mod source;
pub mod stream;
pub mod tasks;

pub use adapter::Adapter;
pub use chat::ChatSession;
pub use chatforge_run::gguf;
pub use engine::{Engine, Sequence, WeightType};
pub use generate::{Finish, Output, Request, generate, generate_ids, prompt_budget};
pub use sampling::{GenerationConfig, Sampling, SamplingGiven};
pub use source::{Checkpoint, LoadedModel, ModelKind, ModelSource};
pub use stream::{StopText, TextStream};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Model(#[from] chatforge_model::Error),
    #[error(transparent)]
    Tokenizer(#[from] chatforge_tokenizer::Error),
    #[error(transparent)]
    Data(#[from] chatforge_data::Error),
    #[error(transparent)]
    Run(#[from] chatforge_run::Error),
    #[error("{0}")]
    Invalid(String),
    #[error("{}: {msg}", path.display())]
    Load { path: std::path::PathBuf, msg: String },
    #[error("the model's context of {n_ctx} tokens is full ({needed} needed)")]
    ContextFull { needed: usize, n_ctx: usize },
    #[error(
        "prompt {index} has {tokens} tokens, the model's context is {n_ctx}: shorten it, or pass --truncate to keep its end"
    )]
    PromptTooLong {
        index: usize,
        tokens: usize,
        n_ctx: usize,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
