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

/// Every float tensor of `file` in f32: safetensors by its extension, else a `torch.save` archive.
pub fn read_tensors(file: &Path) -> Result<Vec<(String, Tensor)>> {
    if file.extension().is_some_and(|e| e == "safetensors") {
        safetensors::read(file)
    } else {
        torch::read(file)
    }
}
