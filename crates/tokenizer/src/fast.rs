//! A faster encoder for byte-level BPE tokenizers (GPT-2 style, and the ones chatforge trains).
//!
//! `tokenizers` builds a full `Encoding` per call (offsets, a `String` per token) and splits words
//! with a backtracking regex. Rendering a conversation needs only ids, so this path splits ASCII
//! text with a hand-written scanner (other text with the DFA-based `regex` crate) and caches the
//! ids of every word it has seen; only unseen words go to the BPE model itself. The result is identical to `Tokenizer::encode` (tested against it and
//! against Python `tokenizers`).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

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

#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Letter,
    Number,
    Space,
    Other,
}

/// `\p{L}`, `\p{N}`, `\s` (Unicode White_Space) and the rest, for ASCII bytes.
fn class(b: u8) -> Class {
    match b {
        b'a'..=b'z' | b'A'..=b'Z' => Class::Letter,
        b'0'..=b'9' => Class::Number,
        0x09..=0x0D | b' ' => Class::Space,
        _ => Class::Other,
    }
}

const CONTRACTIONS: [&[u8]; 7] = [b"'s", b"'t", b"'re", b"'ve", b"'m", b"'ll", b"'d"];

/// GPT-2's split of ASCII text, written out: the same pieces as the regex, without its cost.
fn split_ascii(text: &str, mut piece: impl FnMut(&str) -> Result<()>) -> Result<()> {
    let b = text.as_bytes();
    let n = b.len();
    let mut i = 0;
    while i < n {
        let run_end = |from: usize| {
            let c = class(b[from]);
            from + b[from..].iter().take_while(|&&x| class(x) == c).count()
        };
        let end = if let Some(c) = CONTRACTIONS.iter().find(|c| b[i..].starts_with(c)) {
            i + c.len()
        } else if class(b[i]) != Class::Space {
            run_end(i)
        } else if b[i] == b' ' && i + 1 < n && class(b[i + 1]) != Class::Space {
            run_end(i + 1) // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`
        } else {
            // `\s+(?!\S)|\s+`: before a word, a run of two or more leaves its last character.
            let end = run_end(i);
            if end < n && end - i >= 2 { end - 1 } else { end }
        };
        piece(&text[i..end])?;
        i = end;
    }
    Ok(())
}

/// Splits `text` as GPT-2's pre-tokenizer does, calling `piece` for each word.
fn split(regex: &Regex, text: &str, piece: impl FnMut(&str) -> Result<()>) -> Result<()> {
    if text.is_ascii() {
        split_ascii(text, piece)
    } else {
        split_regex(regex, text, piece)
    }
}

fn split_regex(regex: &Regex, text: &str, mut piece: impl FnMut(&str) -> Result<()>) -> Result<()> {
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

/// FxHash (rustc's hasher): the word cache is keyed by short strings, where SipHash dominates.
#[derive(Default)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
        }
        for &x in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(x)).wrapping_mul(K);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Encodes text into ids, reusing the ids of words it has already seen.
pub struct Encoder<'a> {
    tokenizer: &'a Tokenizer,
    fast: Option<&'a FastBpe>,
    cache: HashMap<String, Vec<u32>, BuildHasherDefault<FxHasher>>,
    chars: String,
}

impl<'a> Encoder<'a> {
    pub(crate) fn new(tokenizer: &'a Tokenizer, fast: Option<&'a FastBpe>) -> Self {
        Encoder {
            tokenizer,
            fast,
            cache: HashMap::default(),
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

    static RE: std::sync::LazyLock<Regex> = std::sync::LazyLock::new(|| Regex::new(PATTERN).unwrap());

    fn pieces(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        split_regex(&RE, text, |p| {
            out.push(p.to_string());
            Ok(())
        })
        .unwrap();
        if text.is_ascii() {
            let mut ascii = Vec::new();
            split_ascii(text, |p| {
                ascii.push(p.to_string());
                Ok(())
            })
            .unwrap();
            assert_eq!(ascii, out, "ASCII scanner and regex disagree on {text:?}");
        }
        out
    }

    #[test]
    fn ascii_scanner_equals_the_regex_on_random_ascii() {
        // Every ASCII byte, weighted toward the ones the pattern treats specially.
        let alphabet: Vec<u8> = (0u8..128).chain(*b"     \n\n\t''sstmdlrve09aZ!?.").collect();
        let mut rng = chatforge_data::Rng::new(9);
        for _ in 0..3000 {
            let len = rng.below(24) as usize;
            let text: String = (0..len)
                .map(|_| char::from(alphabet[rng.below(alphabet.len() as u64) as usize]))
                .collect();
            pieces(&text);
        }
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
