//! Which files of a repository a use needs: a model's config, weights, tokenizer and generation
//! settings (never its other formats); a tokenizer's files; a dataset split's data files.

use std::path::Path;

use crate::{Error, Result};

/// Tokenizer files, as `transformers` looks for them.
const TOKENIZER: [&str; 9] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
];

/// A model's files at the repository's top level: `config.json`, `generation_config.json`, the
/// tokenizer's, and one weights format (safetensors, single or sharded with its index, else
/// `pytorch_model.bin`). ONNX, TensorFlow, Flax and GGUF copies are left on the Hub.
pub fn model_files(listing: &[String]) -> Result<Vec<String>> {
    let has = |f: &str| listing.iter().any(|l| l == f);
    if !has("config.json") {
        return Err(Error::Unsupported(
            "the repository has no config.json at its top level: it is not a transformers model".into(),
        ));
    }
    let top = |pred: &dyn Fn(&str) -> bool| -> Vec<String> {
        listing
            .iter()
            .filter(|f| !f.contains('/') && pred(f))
            .cloned()
            .collect()
    };
    let mut weights = top(&|f| f == "model.safetensors" || is_shard(f, "model", "safetensors"));
    if !weights.is_empty() && has("model.safetensors.index.json") {
        weights.push("model.safetensors.index.json".into());
    }
    if weights.is_empty() {
        weights = top(&|f| f == "pytorch_model.bin" || is_shard(f, "pytorch_model", "bin"));
        if !weights.is_empty() && has("pytorch_model.bin.index.json") {
            weights.push("pytorch_model.bin.index.json".into());
        }
    }
    if weights.is_empty() {
        return Err(Error::Unsupported(
            "the repository has no model.safetensors or pytorch_model.bin weights".into(),
        ));
    }
    let mut files = vec!["config.json".to_string()];
    files.extend(top(&|f| f == "generation_config.json" || TOKENIZER.contains(&f)));
    files.extend(weights);
    Ok(files)
}

/// A tokenizer's files (`tokenizer.json`, or `vocab.json` with `merges.txt`, and its config).
pub fn tokenizer_files(listing: &[String]) -> Result<Vec<String>> {
    let files: Vec<String> = listing
        .iter()
        .filter(|f| TOKENIZER.contains(&f.as_str()))
        .cloned()
        .collect();
    let has = |f: &str| files.iter().any(|l| l == f);
    let usable = has("tokenizer.json") || (has("vocab.json") && has("merges.txt"));
    if !usable {
        return Err(Error::Unsupported(
            "the repository has no tokenizer.json (or vocab.json with merges.txt)".into(),
        ));
    }
    Ok(files)
}

/// `model-00001-of-00002.safetensors`.
fn is_shard(f: &str, stem: &str, ext: &str) -> bool {
    f.strip_prefix(stem)
        .and_then(|r| r.strip_prefix('-'))
        .and_then(|r| r.strip_suffix(ext))
        .and_then(|r| r.strip_suffix('.'))
        .and_then(|r| r.split_once("-of-"))
        .is_some_and(|(a, b)| {
            !a.is_empty() && !b.is_empty() && (a.bytes().chain(b.bytes())).all(|c| c.is_ascii_digit())
        })
}

/// Data file extensions a dataset's split is read from, parquet first.
const DATA_EXTENSIONS: [&str; 6] = [".parquet", ".jsonl", ".json", ".csv", ".tsv", ".txt"];

/// A dataset split's data files: its parquet files if the repository has any, else its
/// JSON/JSONL/CSV/TSV/text files (gzip- or zstd-compressed too). A file belongs to a split when
/// the split's name (or a usual alias: `validation` is also `valid`, `val`, `dev`) is a word of
/// its path (`data/train-00000-of-00001.parquet`, `train/part.jsonl`, `oasst_train.jsonl.gz`);
/// a repository whose files name no split has only `train`.
pub fn dataset_files(listing: &[String], split: &str) -> Result<Vec<String>> {
    let data: Vec<&String> = listing
        .iter()
        .filter(|f| data_extension(f).is_some())
        .filter(|f| {
            !f.rsplit('/')
                .next()
                .is_some_and(|n| n.starts_with("dataset_info") || n.starts_with("dataset_infos"))
        })
        .collect();
    let parquet: Vec<&String> = data
        .iter()
        .copied()
        .filter(|f| data_extension(f) == Some(".parquet"))
        .collect();
    let pool = if parquet.is_empty() { data } else { parquet };
    if pool.is_empty() {
        return Err(Error::Unsupported(
            "the dataset has no data files (parquet, JSON, JSONL, CSV, TSV or text)".into(),
        ));
    }
    let names = split_names(split);
    let mut chosen: Vec<String> = pool
        .iter()
        .filter(|f| words(f).any(|w| names.contains(&w.to_ascii_lowercase())))
        .map(|f| f.to_string())
        .collect();
    let any_split = |f: &&String| {
        words(f).any(|w| {
            let w = w.to_ascii_lowercase();
            ["train", "test", "validation", "valid", "val", "dev"].contains(&w.as_str())
        })
    };
    if chosen.is_empty() && split == "train" && !pool.iter().any(any_split) {
        chosen = pool.iter().map(|f| f.to_string()).collect();
    }
    if chosen.is_empty() {
        let files: Vec<&str> = pool.iter().map(|f| f.as_str()).take(20).collect();
        return Err(Error::Unsupported(format!(
            "no data files of split '{split}' (files: {})",
            files.join(", ")
        )));
    }
    chosen.sort();
    Ok(chosen)
}

fn split_names(split: &str) -> Vec<String> {
    let s = split.to_ascii_lowercase();
    let mut names = vec![s.clone()];
    if ["validation", "valid", "val", "dev"].contains(&s.as_str()) {
        names.extend(["validation", "valid", "val", "dev"].map(String::from));
    }
    names
}

/// The words of a path: its parts split at `/`, `-`, `_`, `.` and spaces.
fn words(path: &str) -> impl Iterator<Item = &str> {
    path.split(['/', '-', '_', '.', ' ']).filter(|w| !w.is_empty())
}

/// The data extension of a file name, looking through `.gz`/`.zst`.
fn data_extension(f: &str) -> Option<&'static str> {
    let lower = f.to_ascii_lowercase();
    let inner = lower
        .strip_suffix(".gz")
        .or_else(|| lower.strip_suffix(".zst"))
        .unwrap_or(&lower);
    DATA_EXTENSIONS.into_iter().find(|e| inner.ends_with(e))
}

/// Refuses a model chatforge cannot run, from its `config.json`, before its weights download.
pub(crate) fn check_model_config(path: &Path) -> Result<()> {
    let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::Unsupported(format!("{}: not JSON: {e}", path.display())))?;
    chatforge_model::GptConfig::from_hf(&v)
        .map(|_| ())
        .map_err(|e| Error::Unsupported(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn model_files_take_one_weights_format() {
        let gpt2 = list(&[
            ".gitattributes",
            "README.md",
            "config.json",
            "generation_config.json",
            "merges.txt",
            "model.safetensors",
            "pytorch_model.bin",
            "tf_model.h5",
            "flax_model.msgpack",
            "onnx/decoder_model.onnx",
            "tokenizer.json",
            "tokenizer_config.json",
            "vocab.json",
            "64-8bits.tflite",
            "rust_model.ot",
        ]);
        assert_eq!(
            model_files(&gpt2).unwrap(),
            list(&[
                "config.json",
                "generation_config.json",
                "merges.txt",
                "tokenizer.json",
                "tokenizer_config.json",
                "vocab.json",
                "model.safetensors"
            ])
        );
        let bin = list(&["config.json", "pytorch_model.bin", "vocab.json", "merges.txt"]);
        assert!(
            model_files(&bin)
                .unwrap()
                .contains(&"pytorch_model.bin".to_string())
        );
        let sharded = list(&[
            "config.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
        ]);
        assert_eq!(model_files(&sharded).unwrap().len(), 4);
        assert!(model_files(&list(&["config.json", "model.gguf"])).is_err());
        assert!(model_files(&list(&["model.safetensors"])).is_err());
        assert_eq!(tokenizer_files(&gpt2).unwrap().len(), 4);
        assert!(tokenizer_files(&list(&["config.json"])).is_err());
    }

    #[test]
    fn dataset_splits() {
        let oasst = list(&[
            ".gitattributes",
            "README.md",
            "2023-04-12_oasst_ready.trees.jsonl.gz",
            "data/train-00000-of-00001-b42a775f407cee45.parquet",
            "data/validation-00000-of-00001-134b8fd0c89408b6.parquet",
        ]);
        assert_eq!(
            dataset_files(&oasst, "train").unwrap(),
            list(&["data/train-00000-of-00001-b42a775f407cee45.parquet"])
        );
        assert_eq!(dataset_files(&oasst, "val").unwrap().len(), 1);
        assert!(dataset_files(&oasst, "test").is_err());
        let plain = list(&["README.md", "alpaca_data.json", "dataset_info.json"]);
        assert_eq!(
            dataset_files(&plain, "train").unwrap(),
            list(&["alpaca_data.json"])
        );
        assert!(dataset_files(&plain, "test").is_err());
        let dirs = list(&["train/a.jsonl", "train/b.jsonl", "test/c.jsonl"]);
        assert_eq!(dataset_files(&dirs, "train").unwrap().len(), 2);
        assert!(dataset_files(&list(&["README.md"]), "train").is_err());
    }
}
