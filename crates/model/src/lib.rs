//! The GPT: configuration, weights in Hugging Face's GPT-2 layout, the forward pass with a KV cache
//! and packed-sequence attention, and the numerical ops it is built from.

mod config;
pub mod engine;
mod gpt;
pub mod layout;
pub mod lora;
pub mod memory;
pub mod ops;
mod params;
pub mod quant;

pub use config::{Activation, GptConfig};
pub use gpt::{AttnMask, Block, Dropout, Gpt, KvCache, LayerNorm, Linear};
pub use lora::LoraConfig;
pub use memory::{check_fits, human_bytes, machine_memory};
pub use params::{
    Init, ParamSpec, Params, Weights, check_weights, flatten, init_specs, init_weights, load_hf,
    load_weights, param_specs, save_f32_tensors, save_weights, weights_file,
};

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config: {0}")]
    Config(String),
    #[error("{}: {msg}", path.display())]
    Weights { path: PathBuf, msg: String },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
