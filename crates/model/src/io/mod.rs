//! Reading and writing weight files without a tensor library: safetensors (read and write),
//! GGUF (read and write), PyTorch's `torch.save` archives (read) and ONNX (the protobuf schema,
//! and the weights of graphs chatforge exported).

pub mod gguf;
pub mod onnx;
pub mod safetensors;
pub mod torch;

use std::path::Path;

use crate::Result;
use crate::tensor::Tensor;

/// Little-endian f32 values packed in `bytes` (a trailing partial value is ignored).
pub fn f32s_le(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Every float tensor of `file` in f32: safetensors by its extension, else a `torch.save` archive.
pub fn read_tensors(file: &Path) -> Result<Vec<(String, Tensor)>> {
    if file.extension().is_some_and(|e| e == "safetensors") {
        safetensors::read(file)
    } else {
        torch::read(file)
    }
}
