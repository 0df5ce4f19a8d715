//! Tokenizers for chatforge: training byte-level BPE (GPT-2 style) and Unigram (SentencePiece
//! style) tokenizers with the `tokenizers` crate, loading `tokenizer.json` or GPT-2's
//! `vocab.json` + `merges.txt`, and rendering conversations through the chat template into token
//! ids and a loss mask ([`ChatTokenizer::render_chat`]).

mod chat;
mod error;
mod fast;
pub mod hf_template;
mod shard;
mod stats;
mod train;

pub use chat::{ChatTokenizer, Persona, RenderOptions, Rendered, Template, specials};
pub use error::{Error, Result};
pub use fast::Encoder;
pub use hf_template::HfTemplate;
pub use shard::{TokenizeReport, tokenize_file};
pub use stats::TokenizerStats;
pub use train::{
    Origin, TOKENIZERS_VERSION, TokenizerKind, TokenizerManifest, TrainOptions, TrainReport, ValSource,
    train, train_artifact, write_artifact,
};
