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

/// A model in shards with their index (`model.safetensors.index.json`, as transformers writes models
/// over its shard size) loads as the whole file does; an index naming a file outside its folder, a
/// missing shard, or a tensor in two shards is refused.
#[test]
fn sharded_weights_load_as_one_file() {
    let cfg = GptConfig::llama_tiny(50);
    let w = init_weights(&cfg, &mut Rng::new(2)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut names: Vec<&String> = w.keys().collect();
    names.sort();
    let (a, b) = names.split_at(names.len() / 2);
    let mut map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", a),
        ("model-00002-of-00002.safetensors", b),
    ] {
        let shard: std::collections::BTreeMap<String, Tensor> =
            part.iter().map(|n| ((*n).clone(), w[*n].clone())).collect();
        chatforge_model::save_weights(&shard, &d.join(file)).unwrap();
        for n in part.iter() {
            map.insert((*n).clone(), file.into());
        }
    }
    let index = |map: &serde_json::Map<String, serde_json::Value>| {
        let v = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": map});
        std::fs::write(d.join("model.safetensors.index.json"), v.to_string()).unwrap();
    };
    index(&map);
    assert_eq!(chatforge_model::load_weights(d, &cfg).unwrap(), w);
    assert_eq!(chatforge_model::weights_files(d).unwrap().len(), 2);
    let err = |m: &serde_json::Map<String, serde_json::Value>| {
        index(m);
        chatforge_model::load_weights(d, &cfg).unwrap_err().to_string()
    };
    let mut escape = map.clone();
    escape.insert("x".into(), "../model-00001-of-00002.safetensors".into());
    assert!(err(&escape).contains("not a file beside the index"));
    let mut missing = map.clone();
    missing.insert("x".into(), "model-00003-of-00003.safetensors".into());
    assert!(err(&missing).contains("missing"));
    // Both shards hold the embedding.
    let mut both = std::collections::BTreeMap::new();
    both.insert(a[0].clone(), w[a[0]].clone());
    both.extend(b.iter().map(|n| ((*n).clone(), w[*n].clone())));
    chatforge_model::save_weights(&both, &d.join("model-00002-of-00002.safetensors")).unwrap();
    assert!(err(&map).contains("more than one shard"));
}
