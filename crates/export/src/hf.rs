//! A Hugging Face folder: what `transformers.AutoModelForCausalLM` and `AutoTokenizer` load.

use std::collections::BTreeMap;
use std::path::Path;

use chatforge_model::{Weights, save_weights};
use chatforge_run::{GENERATION_FILE, ModelSource};
use chatforge_tokenizer::{Template, specials};
use serde_json::{Value, json};

use crate::{Error, Result, io_err};

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| Error::Invalid(e.to_string()))?;
    std::fs::write(path, text + "\n").map_err(io_err(path))
}

/// The tokens that begin and end a sequence and a reply, by template.
pub(crate) struct SpecialIds {
    pub bos: Option<u32>,
    /// Ends generation: `<|end|>` (end of turn) with chat tokens, else the end-of-text token.
    pub eos: Option<u32>,
    /// Every id that should stop generation.
    pub stop: Vec<u32>,
}

pub(crate) fn special_ids(src: &ModelSource) -> SpecialIds {
    match src.tokenizer.template() {
        Template::Chat { end_of_text, end, .. } => SpecialIds {
            bos: Some(end_of_text),
            eos: Some(end),
            stop: vec![end, end_of_text],
        },
        Template::Plain { eos } => SpecialIds {
            bos: eos,
            eos,
            stop: eos.into_iter().collect(),
        },
        Template::Model { eos, .. } => SpecialIds {
            bos: src
                .tokenizer
                .model_template()
                .and_then(|t| t.bos_token())
                .and_then(|t| src.tokenizer.token_to_id(t)),
            eos,
            stop: src.tokenizer.stop_ids(),
        },
    }
}

/// Writes `config.json`, `model.safetensors`, `tokenizer.json`, `tokenizer_config.json` and
/// `generation_config.json` for `weights` (HF names already) into `dir`.
pub fn write_hf(src: &ModelSource, weights: &Weights, dir: &Path) -> Result<()> {
    let sorted: BTreeMap<String, chatforge_model::Tensor> =
        weights.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    save_weights(&sorted, &dir.join("model.safetensors"))?;
    write_side_files(src, dir)
}

/// Everything of the HF folder but the weights: config, tokenizer, chat template, generation defaults.
pub(crate) fn write_side_files(src: &ModelSource, dir: &Path) -> Result<()> {
    let tok = &src.tokenizer;
    let ids = special_ids(src);
    let token = |id: Option<u32>| id.and_then(|i| tok.inner().id_to_token(i));
    let mut config = src.config.to_hf();
    config["bos_token_id"] = json!(ids.bos);
    config["eos_token_id"] = json!(ids.eos);
    write_json(&dir.join(chatforge_run::CONFIG_FILE), &config)?;
    let path = dir.join(chatforge_run::TOKENIZER_FILE);
    std::fs::write(&path, tok.to_json()?).map_err(io_err(&path))?;
    let unk = tok
        .inner()
        .token_to_id(specials::UNK)
        .and_then(|i| tok.inner().id_to_token(i));
    write_json(
        &dir.join("tokenizer_config.json"),
        &json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": token(ids.bos),
            "eos_token": token(ids.eos),
            "unk_token": unk,
            "pad_token": token(ids.eos),
            "model_max_length": src.config.n_ctx,
            "clean_up_tokenization_spaces": false,
            "add_bos_token": false,
            "chat_template": tok.jinja_template(),
        }),
    )?;
    // Decoding settings the model came with (a run keeps its --init folder's) travel on; the
    // token ids are this tokenizer's.
    let mut generation = std::fs::read_to_string(src.root.join(GENERATION_FILE))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .filter(serde_json::Value::is_object)
        .unwrap_or_else(|| json!({}));
    for (k, v) in [
        ("bos_token_id", json!(ids.bos)),
        ("eos_token_id", json!(ids.stop)),
        ("pad_token_id", json!(ids.eos)),
        ("max_length", json!(src.config.n_ctx)),
    ] {
        generation[k] = v;
    }
    write_json(&dir.join(GENERATION_FILE), &generation)
}
