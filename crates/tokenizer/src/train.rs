//! Training a tokenizer on conversations and writing it as an artifact directory:
//! `tokenizer.json`, `manifest.json` (inputs with hashes, options, seed, versions, duration) and
//! `stats.json` (measured on the validation conversations).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use chatforge_data::{Conversation, atomic_dir, atomic_write, read_jsonl, sha256_file, split};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::BpeTrainer;
use tokenizers::models::unigram::{Unigram, UnigramTrainer};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::metaspace::Metaspace;
use tokenizers::utils::ProgressFormat;
use tokenizers::{AddedToken, Tokenizer};

use crate::{ChatTokenizer, Error, Result, TokenizerStats, specials};

/// The `tokenizers` crate version this build uses (pinned in the workspace `Cargo.toml`).
pub const TOKENIZERS_VERSION: &str = "0.23.2";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenizerKind {
    /// Byte-level BPE, GPT-2 style: every byte is representable, nothing is ever unknown.
    Bpe,
    /// Unigram language model, SentencePiece style (`▁` marks word starts; unseen characters → `<unk>`).
    Unigram,
}

impl FromStr for TokenizerKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "bpe" | "byte-bpe" | "bytelevel" => Ok(TokenizerKind::Bpe),
            "unigram" | "sentencepiece" | "spm" => Ok(TokenizerKind::Unigram),
            other => Err(Error::Invalid(format!(
                "unknown tokenizer kind '{other}': expected bpe or unigram"
            ))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainOptions {
    pub kind: TokenizerKind,
    pub vocab_size: usize,
    /// BPE: a pair must occur this often to be merged.
    pub min_frequency: u64,
    pub seed: u64,
    /// Draw a progress bar (on a terminal).
    #[serde(skip)]
    pub show_progress: bool,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            kind: TokenizerKind::Bpe,
            vocab_size: 8000,
            min_frequency: 2,
            seed: 7,
            show_progress: false,
        }
    }
}

/// Where the validation text for `stats.json` comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ValSource {
    File(PathBuf),
    /// Hold out this fraction of the input conversations (seeded) from training.
    HoldOut(f64),
}

impl ValSource {
    /// The validation file `chatforge data import` wrote beside `input` (`x.jsonl` → `x.val.jsonl`),
    /// or a 5% hold-out when there is none.
    pub fn beside(input: &Path) -> ValSource {
        let stem = input
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let sibling = input.with_file_name(format!("{stem}.val.jsonl"));
        if sibling.is_file() {
            ValSource::File(sibling)
        } else {
            ValSource::HoldOut(0.05)
        }
    }
}

/// The texts a tokenizer learns from: every message's content.
fn texts(conversations: &[Conversation]) -> Vec<&str> {
    conversations
        .iter()
        .flat_map(|c| c.messages.iter().map(|m| m.content.as_str()))
        .collect()
}

/// Trains a tokenizer with the chat special tokens on `texts`.
pub fn train<S: AsRef<str> + Send>(
    texts: impl Iterator<Item = S> + Send,
    opts: &TrainOptions,
) -> Result<ChatTokenizer> {
    let special: Vec<AddedToken> = specials::CHAT
        .iter()
        .map(|t| AddedToken::from(*t, true))
        .collect();
    let progress = if opts.show_progress {
        ProgressFormat::Indicatif
    } else {
        ProgressFormat::Silent
    };
    if opts.vocab_size < 256 + specials::CHAT.len() && opts.kind == TokenizerKind::Bpe {
        return Err(Error::Invalid(format!(
            "vocab size {} is too small for byte-level BPE: it needs 256 byte tokens and {} special tokens",
            opts.vocab_size,
            special.len()
        )));
    }
    let tok = match opts.kind {
        TokenizerKind::Bpe => {
            let mut tok = Tokenizer::new(tokenizers::models::bpe::BPE::default());
            tok.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
            tok.with_decoder(Some(ByteLevel::default()));
            tok.with_post_processor(Some(ByteLevel::default().trim_offsets(false)));
            let trainer = BpeTrainer::builder()
                .vocab_size(opts.vocab_size)
                .min_frequency(opts.min_frequency)
                .special_tokens(special)
                .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
                .show_progress(opts.show_progress)
                .progress_format(progress)
                .build();
            tok.train(&mut TrainerWrapper::BpeTrainer(trainer), texts)?;
            tok
        }
        TokenizerKind::Unigram => {
            let mut tok = Tokenizer::new(Unigram::default());
            tok.with_pre_tokenizer(Some(Metaspace::default()));
            tok.with_decoder(Some(Metaspace::default()));
            let mut all = special;
            all.push(AddedToken::from(specials::UNK, true));
            let trainer = UnigramTrainer::builder()
                .vocab_size(opts.vocab_size as u32)
                .special_tokens(all)
                .unk_token(Some(specials::UNK.to_string()))
                .show_progress(opts.show_progress)
                .build()
                .map_err(|e| Error::Tokenizers(e.to_string()))?;
            tok.train(&mut TrainerWrapper::UnigramTrainer(trainer), texts)?;
            tok
        }
    };
    Ok(ChatTokenizer::new(tok))
}

#[derive(Debug)]
pub struct TrainReport {
    pub tokenizer: ChatTokenizer,
    pub stats: TokenizerStats,
    pub train_conversations: usize,
    pub val_conversations: usize,
    pub seconds: f64,
}

/// Trains on canonical conversation files and writes the artifact directory `out` atomically.
pub fn train_artifact(
    inputs: &[PathBuf],
    val: &ValSource,
    opts: &TrainOptions,
    out: &Path,
) -> Result<TrainReport> {
    let started = Instant::now();
    let mut conversations = Vec::new();
    let mut input_meta = Vec::new();
    for path in inputs {
        let convs = read_any(path)?;
        input_meta.push(json!({
            "path": path.display().to_string(),
            "sha256": sha256_file(path)?,
            "conversations": convs.len(),
        }));
        conversations.extend(convs);
    }
    if conversations.is_empty() {
        return Err(Error::Invalid(
            "the inputs hold no conversations to train on".into(),
        ));
    }
    let (train_set, val_set, val_meta) = match val {
        ValSource::File(path) => {
            let v = read_any(path)?;
            let meta = json!({"path": path.display().to_string(), "sha256": sha256_file(path)?});
            (conversations, v, meta)
        }
        ValSource::HoldOut(fraction) => {
            let (t, v) = split(conversations, *fraction, opts.seed)?;
            (t, v, json!({"held_out_fraction": fraction, "seed": opts.seed}))
        }
    };
    let tokenizer = train(texts(&train_set).into_iter(), opts)?;
    let stats = TokenizerStats::measure(&tokenizer, &texts(&val_set))?;
    let seconds = started.elapsed().as_secs_f64();
    let manifest = TokenizerManifest {
        origin: Origin::Trained,
        kind: Some(opts.kind),
        options: Some(opts.clone()),
        loaded_from: None,
        vocab_size: tokenizer.vocab_size(),
        template: format!("{:?}", tokenizer.template()),
        special_tokens: specials::CHAT.iter().map(|s| s.to_string()).collect(),
        inputs: input_meta,
        validation: Some(val_meta),
        train_conversations: train_set.len(),
        val_conversations: val_set.len(),
        seed: Some(opts.seed),
        versions: versions(),
        duration_secs: seconds,
        created_unix: now_unix(),
    };
    write_artifact(out, &tokenizer, &manifest, Some(&stats))?;
    Ok(TrainReport {
        tokenizer,
        stats,
        train_conversations: train_set.len(),
        val_conversations: val_set.len(),
        seconds,
    })
}

/// Saves `tokenizer.json` as other tools expect it: special tokens matched in text as usual.
/// Conversations (canonical `.jsonl`) or anything `data import` reads (a `.txt` corpus, CSV,
/// ShareGPT, gzip, …), imported as it would be.
fn read_any(path: &Path) -> Result<Vec<Conversation>> {
    if path.extension().is_some_and(|e| e == "jsonl") {
        return Ok(read_jsonl(path)?);
    }
    Ok(chatforge_data::import(&[path.to_path_buf()], &Default::default())?.conversations)
}

/// How a tokenizer artifact came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// Trained by chatforge on conversations.
    Trained,
    /// Loaded from another tool's files (`tokenizer load --out`).
    Loaded,
}

/// `manifest.json` of a tokenizer artifact (`tokenizers/<id>/` or `tokenizer train --out`): one
/// schema whether it was trained or loaded; what does not apply is absent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenizerManifest {
    pub origin: Origin,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<TokenizerKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<TrainOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loaded_from: Option<String>,
    pub vocab_size: usize,
    /// The chat template the tokenizer renders with (`Chat` or `Plain { … }`).
    pub template: String,
    pub special_tokens: Vec<String>,
    /// Each input: path, SHA-256, conversations.
    #[serde(default)]
    pub inputs: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<serde_json::Value>,
    #[serde(default)]
    pub train_conversations: usize,
    #[serde(default)]
    pub val_conversations: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    pub versions: serde_json::Value,
    #[serde(default)]
    pub duration_secs: f64,
    pub created_unix: u64,
}

impl TokenizerManifest {
    /// The manifest of a tokenizer loaded from `path`.
    pub fn loaded(tok: &ChatTokenizer, path: &Path) -> TokenizerManifest {
        TokenizerManifest {
            origin: Origin::Loaded,
            kind: None,
            options: None,
            loaded_from: Some(path.display().to_string()),
            vocab_size: tok.vocab_size(),
            template: format!("{:?}", tok.template()),
            special_tokens: tok
                .inner()
                .get_added_tokens_decoder()
                .values()
                .filter(|t| t.special)
                .map(|t| t.content.clone())
                .collect(),
            inputs: Vec::new(),
            validation: None,
            train_conversations: 0,
            val_conversations: 0,
            seed: None,
            versions: versions(),
            duration_secs: 0.0,
            created_unix: now_unix(),
        }
    }
}

/// The versions an artifact records: chatforge's and the `tokenizers` crate's.
fn versions() -> serde_json::Value {
    json!({"chatforge": env!("CARGO_PKG_VERSION"), "tokenizers": TOKENIZERS_VERSION})
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Writes a tokenizer artifact into the directory `out` (built under a temporary name):
/// `tokenizer.json`, `manifest.json` and, when measured, `stats.json`. The one writer of the
/// layout, for trained and loaded tokenizers alike.
pub fn write_artifact(
    out: &Path,
    tok: &ChatTokenizer,
    manifest: &TokenizerManifest,
    stats: Option<&TokenizerStats>,
) -> Result<()> {
    atomic_dir(out, |dir| -> Result<()> {
        save_tokenizer_json(tok, &dir.join("tokenizer.json"))?;
        write_json(&dir.join("manifest.json"), manifest)?;
        if let Some(s) = stats {
            write_json(&dir.join("stats.json"), s)?;
        }
        Ok(())
    })
}

pub(crate) fn save_tokenizer_json(tok: &ChatTokenizer, path: &Path) -> Result<()> {
    let mut plain = tok.inner().clone();
    plain.set_encode_special_tokens(false);
    let text = plain.to_string(true)?;
    atomic_write(path, |w| std::io::Write::write_all(w, text.as_bytes()))?;
    Ok(())
}

pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    atomic_write(path, |w| {
        serde_json::to_writer_pretty(&mut *w, value)?;
        std::io::Write::write_all(w, b"\n")
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_seed_002_spm() {
        for (name, want) in [
            ("bpe", TokenizerKind::Bpe),
            ("unigram", TokenizerKind::Unigram),
            ("spm", TokenizerKind::Unigram),
            ("SentencePiece", TokenizerKind::Unigram),
        ] {
            assert_eq!(name.parse::<TokenizerKind>().unwrap(), want, "{name}");
        }
        assert!("wordpiece".parse::<TokenizerKind>().is_err());
    }
}
