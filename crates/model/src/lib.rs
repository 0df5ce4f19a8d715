//! The GPT: configuration, the weights' layout and files (safetensors, PyTorch archives), the
//! training engine (forward and hand-written backward on plain buffers), LoRA and QLoRA, and the
//! kernels they are built from. No tensor library: everything computes on slices.

mod config;
pub mod engine;
pub mod io;
pub mod kernels;
pub mod layout;
pub mod llama;
pub mod lora;
pub mod memory;
mod params;
pub mod precision;
pub mod profile;
pub mod quant;
mod tensor;

pub use config::{Activation, Arch, GptConfig, Llama3Scaling, default_inner};
pub use lora::LoraConfig;
pub use memory::{check_fits, human_bytes, machine_memory};
pub use params::{
    Init, ParamSpec, Weights, check_weights, init_specs, init_weights, load_hf, load_weights, param_specs,
    read_hf_config, save_weights, take_flat, weights_file, weights_files,
};
pub use precision::{Precision, PrecisionSetting};
pub use tensor::{Tensor, bf16_to_f32, f16_to_f32, f32_to_bf16, f32_to_f16};

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config: {0}")]
    Config(String),
    #[error("{}: {msg}", path.display())]
    Weights { path: PathBuf, msg: String },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
