//! A faster encoder for byte-level BPE tokenizers (GPT-2 style, and the ones chatforge trains).
//!
//! `tokenizers` builds a full `Encoding` per call (offsets, a `String` per token) and splits words
//! with a backtracking regex. Rendering a conversation needs only ids, so this path splits with
//! the DFA-based `regex` crate and caches the ids of every word it has seen; only unseen words go
//! to the BPE model itself. The result is identical to `Tokenizer::encode` (tested against it and
//! against Python `tokenizers`).

use std::collections::HashMap;

use regex::Regex;
use tokenizers::models::ModelWrapper;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{Model, Tokenizer};

use crate::{Error, Result};

/// GPT-2's split pattern without its `\s+(?!\S)` look-ahead, which [`split`] applies by hand.
const PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+";

/// Words cached per encoder before the cache is cleared (bounds memory on huge vocabularies of words).
const CACHE_LIMIT: usize = 1 << 18;

#[derive(Debug, Clone)]
pub(crate) struct FastBpe {
    regex: Regex,
    byte_chars: [char; 256],
}

/// GPT-2's reversible byte → printable character map.
fn byte_chars() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut extra = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        map[b as usize] = if printable {
            char::from(b)
        } else {
            extra += 1;
            char::from_u32(255 + extra).unwrap_or('\0')
        };
    }
    map
}

impl FastBpe {
    /// The fast path applies only where it is exactly equivalent: a BPE model without dropout,
    /// no normalizer, and the GPT-2 byte-level pre-tokenizer without an added prefix space.
    pub(crate) fn detect(tok: &Tokenizer) -> Option<FastBpe> {
        let ModelWrapper::BPE(bpe) = tok.get_model() else {
            return None;
        };
        let Some(PreTokenizerWrapper::ByteLevel(bl)) = tok.get_pre_tokenizer() else {
            return None;
        };
        if bpe.dropout.is_some() || tok.get_normalizer().is_some() || !bl.use_regex || bl.add_prefix_space {
            return None;
        }
        Some(FastBpe {
            regex: Regex::new(PATTERN).ok()?,
            byte_chars: byte_chars(),
        })
    }
}

/// Splits `text` as GPT-2's pre-tokenizer does, calling `piece` for each word.
fn split(regex: &Regex, text: &str, mut piece: impl FnMut(&str) -> Result<()>) -> Result<()> {
    let mut pos = 0;
    while pos < text.len() {
        let Some(m) = regex.find_at(text, pos) else {
            return piece(&text[pos..]);
        };
        if m.start() > pos {
            piece(&text[pos..m.start()])?;
        }
        let mut end = m.end();
        let word = m.as_str();
        // `\s+(?!\S)`: a run of whitespace followed by a word leaves its last character to that word.
        if end < text.len()
            && word.chars().all(char::is_whitespace)
            && let Some((last, _)) = word.char_indices().last().filter(|(i, _)| *i > 0)
        {
            end = m.start() + last;
        }
        piece(&text[m.start()..end])?;
        pos = end;
    }
    Ok(())
}

/// Encodes text into ids, reusing the ids of words it has already seen.
pub struct Encoder<'a> {
    tokenizer: &'a Tokenizer,
    fast: Option<&'a FastBpe>,
    cache: HashMap<String, Vec<u32>>,
    chars: String,
}

impl<'a> Encoder<'a> {
    pub(crate) fn new(tokenizer: &'a Tokenizer, fast: Option<&'a FastBpe>) -> Self {
        Encoder {
            tokenizer,
            fast,
            cache: HashMap::new(),
            chars: String::new(),
        }
    }

    /// Appends the ids of `text` to `out`. Special-token spellings in `text` stay text.
    pub fn encode_into(&mut self, text: &str, out: &mut Vec<u32>) -> Result<()> {
        let Some(fast) = self.fast else {
            let enc = self.tokenizer.encode_fast(text, false)?;
            out.extend_from_slice(enc.get_ids());
            return Ok(());
        };
        let (tokenizer, cache, chars) = (self.tokenizer, &mut self.cache, &mut self.chars);
        split(&fast.regex, text, |word| {
            if let Some(ids) = cache.get(word) {
                out.extend_from_slice(ids);
                return Ok(());
            }
            chars.clear();
            chars.extend(word.bytes().map(|b| fast.byte_chars[b as usize]));
            let ids: Vec<u32> = tokenizer
                .get_model()
                .tokenize(chars)
                .map_err(|e| Error::Tokenizers(e.to_string()))?
                .iter()
                .map(|t| t.id)
                .collect();
            out.extend_from_slice(&ids);
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(word.to_string(), ids);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_matches_gpt2() {
        let m = byte_chars();
        assert_eq!(m[b' ' as usize], 'Ġ');
        assert_eq!(m[b'\n' as usize], 'Ċ');
        assert_eq!(m[b'a' as usize], 'a');
        let mut all: Vec<char> = m.to_vec();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 256);
    }

    fn pieces(text: &str) -> Vec<String> {
        let re = Regex::new(PATTERN).unwrap();
        let mut out = Vec::new();
        split(&re, text, |p| {
            out.push(p.to_string());
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn splits_like_gpt2() {
        assert_eq!(pieces("Hello world"), ["Hello", " world"]);
        assert_eq!(
            pieces("don't  stop\n\nnow "),
            ["don", "'t", " ", " stop", "\n", "\n", "now", " "]
        );
        assert_eq!(pieces("a\t b"), ["a", "\t", " b"]);
        assert_eq!(pieces("x \n y"), ["x", " \n", " y"]);
        assert_eq!(pieces("1,000.5!!"), ["1", ",", "000", ".", "5", "!!"]);
    }
}
