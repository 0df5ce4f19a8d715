//! The kernels the training engine and the decoder are built from, on plain slices: the one gemm
//! entry point, layer norm, GELU, vectorisable math and the SIMD dispatch. (The q8_0/q4_0 blocks
//! are [`crate::quant`].) `unsafe` lives here and nowhere else in the model.

pub mod bf16;
pub mod fast_math;
mod gelu;
pub mod gemm;
mod norm;
mod rope;
pub mod simd;

pub use gelu::{gelu_fast, gelu_fast_grad};
pub use gemm::{Precision, matmul_into};
pub use norm::{layer_norm_row, rms_norm_row, row_stats};
pub use rope::{rope_angles, rotate_heads, swiglu_row};
