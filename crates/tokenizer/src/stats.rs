//! How well a tokenizer fits text: compression, unknown tokens, coverage.

use serde::Serialize;

use crate::{ChatTokenizer, Result, specials};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenizerStats {
    pub vocab_size: usize,
    /// Texts (messages) the figures below were measured on.
    pub texts: usize,
    pub characters: usize,
    pub bytes: usize,
    pub tokens: usize,
    pub chars_per_token: f64,
    pub bytes_per_token: f64,
    /// Share of tokens that are the unknown token (always 0 for byte-level BPE).
    pub unknown_rate: f64,
    /// Share of characters encoded by something other than the unknown token.
    pub char_coverage: f64,
    /// Share of the vocabulary that occurs at least once.
    pub vocab_used: f64,
}

impl TokenizerStats {
    pub fn measure<S: AsRef<str>>(tok: &ChatTokenizer, texts: &[S]) -> Result<TokenizerStats> {
        let unk = tok.token_to_id(specials::UNK);
        let vocab_size = tok.vocab_size();
        let mut used = vec![false; vocab_size];
        let (mut characters, mut bytes, mut tokens, mut unknown, mut unknown_chars) = (0, 0, 0, 0, 0);
        for text in texts {
            let text = text.as_ref();
            characters += text.chars().count();
            bytes += text.len();
            let enc = tok.inner().encode(text, false)?;
            tokens += enc.len();
            for (&id, &(start, end)) in enc.get_ids().iter().zip(enc.get_offsets()) {
                if let Some(u) = used.get_mut(id as usize) {
                    *u = true;
                }
                if Some(id) == unk {
                    unknown += 1;
                    unknown_chars += text.get(start..end).map_or(1, |s| s.chars().count());
                }
            }
        }
        let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        Ok(TokenizerStats {
            vocab_size,
            texts: texts.len(),
            characters,
            bytes,
            tokens,
            chars_per_token: ratio(characters, tokens),
            bytes_per_token: ratio(bytes, tokens),
            unknown_rate: ratio(unknown, tokens),
            char_coverage: 1.0 - ratio(unknown_chars, characters),
            vocab_used: ratio(used.iter().filter(|&&u| u).count(), vocab_size),
        })
    }
}
