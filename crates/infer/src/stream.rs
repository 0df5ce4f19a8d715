//! Text as tokens arrive: UTF-8-safe incremental decoding and stop strings.

use chatforge_tokenizer::ChatTokenizer;

use crate::Result;

/// Turns a growing list of token ids into text pieces. A character split across byte-level
/// tokens is held back until it is whole (the decoder would show U+FFFD), and each step decodes
/// only a short window, not the whole reply.
#[derive(Debug, Clone, Default)]
pub struct TextStream {
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
}

impl TextStream {
    /// Adds one token; returns the new text it completes (often empty for a split character).
    pub fn push(&mut self, tok: &ChatTokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let before = tok.decode(&self.ids[self.prefix..self.read], true)?;
        let after = tok.decode(&self.ids[self.prefix..], true)?;
        if after.ends_with('\u{FFFD}') || after.len() <= before.len() {
            return Ok(String::new());
        }
        let Some(new) = after.get(before.len()..) else {
            return Ok(String::new());
        };
        let new = new.to_string();
        self.prefix = self.read;
        self.read = self.ids.len();
        Ok(new)
    }

    /// Tokens pushed so far.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Whatever is still held back (an incomplete character at the end), decoded as it is.
    pub fn finish(&mut self, tok: &ChatTokenizer) -> Result<String> {
        let before = tok.decode(&self.ids[self.prefix..self.read], true)?;
        let after = tok.decode(&self.ids[self.prefix..], true)?;
        self.prefix = self.ids.len();
        self.read = self.ids.len();
        Ok(after.get(before.len()..).unwrap_or_default().to_string())
    }
}

/// The text of a reply so far, cut at the first stop string. Text that could still turn out to
/// begin a stop string is held back from [`StopText::ready`].
#[derive(Debug, Clone, Default)]
pub struct StopText {
    stops: Vec<String>,
    text: String,
    sent: usize,
    stopped: bool,
}

impl StopText {
    pub fn new(stops: &[String]) -> StopText {
        StopText {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            ..StopText::default()
        }
    }

    /// Appends a piece; returns true when a stop string has now appeared (the text is cut before it).
    pub fn push(&mut self, piece: &str) -> bool {
        if self.stopped {
            return true;
        }
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let from = floor_boundary(&self.text, self.text.len().saturating_sub(longest));
        self.text.push_str(piece);
        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i))
            .min();
        if let Some(at) = hit {
            self.text.truncate(at);
            self.stopped = true;
        }
        self.stopped
    }

    /// Text that is final and not yet returned.
    pub fn ready(&mut self) -> &str {
        let end = if self.stopped {
            self.text.len()
        } else {
            let hold = self
                .stops
                .iter()
                .map(String::len)
                .max()
                .unwrap_or(1)
                .saturating_sub(1);
            floor_boundary(&self.text, self.text.len().saturating_sub(hold))
        };
        let start = self.sent.min(end);
        self.sent = end.max(self.sent);
        &self.text[start..end]
    }

    /// Everything not yet returned (the reply is over).
    pub fn rest(&mut self) -> &str {
        let start = self.sent.min(self.text.len());
        self.sent = self.text.len();
        &self.text[start..]
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn stopped(&self) -> bool {
        self.stopped
    }
}

fn floor_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_cut_and_hold_back() {
        let mut s = StopText::new(&["\nUser:".to_string()]);
        assert!(!s.push("Hello"));
        // Up to len("\nUser:") - 1 bytes are held back.
        assert_eq!(s.ready(), "");
        assert!(!s.push(" there, friend"));
        assert_eq!(s.ready(), "Hello there, f");
        assert!(!s.push("\nUs"));
        assert!(s.push("er: hi"));
        assert_eq!(s.text(), "Hello there, friend");
        assert_eq!(s.ready(), "riend");
        assert_eq!(s.rest(), "");
        // Multi-byte characters never split.
        let mut s = StopText::new(&["zz".to_string()]);
        s.push("é");
        assert_eq!(s.ready(), "");
        s.push("ü");
        assert_eq!(s.ready(), "é");
        assert_eq!(s.rest(), "ü");
    }
}
