//! Weights on disk: saved and loaded back exactly, checked against the config, streamed from flat
//! buffers. (Reading files that PyTorch and `safetensors` wrote, f32, f16 and `torch.save`
//! archives, is in `hf_parity.rs`; transformers reading ours is in the export tests.)

#![allow(clippy::unwrap_used)] // tests: a failure should panic with its message

use chatforge_base::Rng;
use chatforge_model::io::safetensors;
use chatforge_model::{GptConfig, Tensor, init_weights};

#[test]
fn save_and_load_round_trip() {
    let cfg = GptConfig {
        n_ctx: 16,
        ..GptConfig::tiny(50)
    };
    let w = init_weights(&cfg, &mut Rng::new(1)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    chatforge_model::save_weights(&w.clone().into_iter().collect(), &path).unwrap();
    let back = chatforge_model::load_weights(dir.path(), &cfg).unwrap();
    assert_eq!(back, w, "every tensor, bit for bit");
    // A checkpoint of another shape is refused with the tensor named.
    let other = GptConfig { n_embd: 64, ..cfg };
    let err = chatforge_model::load_weights(dir.path(), &other)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.safetensors") && err.contains("transformer.wte.weight has shape [50, 32]"),
        "{err}"
    );
}

/// `safetensors::write_with` (how checkpoints write from the engine's flat buffers) writes a file that
/// safetensors readers take, each tensor's values under its own name whatever the order given;
/// data of the wrong length fails, names the tensor and leaves no file behind.
#[test]
fn streamed_safetensors_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.safetensors");
    let tensors = vec![
        ("b.weight".to_string(), vec![3, 5]),
        ("a.bias".to_string(), vec![7]),
        ("c".to_string(), vec![2, 1, 3]),
    ];
    let values: Vec<Vec<f32>> = tensors
        .iter()
        .enumerate()
        .map(|(i, (_, s))| {
            (0..s.iter().product::<usize>())
                .map(|j| i as f32 * 100.0 + j as f32 * 0.5 - 1.0)
                .collect()
        })
        .collect();
    safetensors::write_with(&path, &tensors, |i| {
        Ok(std::borrow::Cow::Borrowed(values[i].as_slice()))
    })
    .unwrap();
    let back: std::collections::HashMap<String, Tensor> =
        safetensors::read(&path).unwrap().into_iter().collect();
    assert_eq!(back.len(), 3);
    for ((name, shape), v) in tensors.iter().zip(&values) {
        let t = &back[name];
        assert_eq!(t.dims(), shape.as_slice(), "{name}");
        assert_eq!(t.data(), v.as_slice(), "{name}");
    }
    // The header is the format's: its length, then JSON padded to 8 bytes, then exactly the data.
    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!(n % 8, 0);
    assert_eq!(bytes.len(), 8 + n + 4 * (15 + 7 + 6));

    let bad = dir.path().join("bad.safetensors");
    let err = safetensors::write_with(&bad, &tensors, |i| {
        Ok(std::borrow::Cow::Owned(values[i][1..].to_vec()))
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("bad.safetensors") && err.contains("a.bias: 6 values for shape [7]"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "only the good file is left"
    );
}
