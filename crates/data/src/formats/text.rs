//! Text shapes: `User:`/`Assistant:` transcripts and YAML dialog corpora.

use std::path::Path;

use serde_json::Value;

use super::Sink;
use crate::{Conversation, Error, Message, Pos, Result, Role};

/// `"User: hello"` → `(User, "hello")`; only names that map to a role count as a prefix.
fn role_prefix(line: &str) -> Option<(Role, &str)> {
    let (name, rest) = line.split_once(':')?;
    if name.len() > 16 || name.trim().is_empty() {
        return None;
    }
    let role = Role::parse_loose(name)?;
    Some((role, rest.strip_prefix(' ').unwrap_or(rest)))
}

pub(super) fn looks_like_transcript(text: &str) -> bool {
    text.lines()
        .find(|l| !l.trim().is_empty())
        .is_some_and(|l| role_prefix(l.trim_start()).is_some())
}

pub(super) fn looks_like_yaml_dialog(text: &str) -> bool {
    text.lines()
        .map(str::trim_end)
        .any(|l| l == "conversations:" || l.starts_with("conversations: ["))
}

/// Plain-text documents: paragraphs separated by one or more blank lines, each kept as it is
/// (inner line breaks included) and recorded at the line it starts on.
pub(super) fn read_documents(text: &str, sink: &mut Sink<'_>) -> Result<usize> {
    let mut count = 0;
    let mut paragraph: Vec<&str> = Vec::new();
    let mut start = 0;
    let lines = text.lines().chain(std::iter::once(""));
    for (i, line) in lines.enumerate() {
        if line.trim().is_empty() {
            if !paragraph.is_empty() {
                count += 1;
                let doc = Conversation::text(paragraph.join("\n"));
                sink.push(Pos::Line(start), Ok(doc))?;
                paragraph.clear();
            }
        } else {
            if paragraph.is_empty() {
                start = i + 1;
            }
            paragraph.push(line.trim_end());
        }
    }
    Ok(count)
}

/// Conversations separated by blank lines; a line without a role prefix continues the message above.
pub(super) fn read_transcripts(text: &str, sink: &mut Sink<'_>) -> Result<usize> {
    let mut count = 0;
    let mut current: Vec<Message> = Vec::new();
    let mut start = 0;
    let mut broken: Option<(usize, String)> = None;
    let mut flush = |current: &mut Vec<Message>,
                     start: usize,
                     broken: &mut Option<(usize, String)>,
                     sink: &mut Sink<'_>|
     -> Result<()> {
        if let Some((line, msg)) = broken.take() {
            current.clear();
            count += 1;
            return sink.invalid(sink.error(Pos::Line(line), msg));
        }
        if !current.is_empty() {
            count += 1;
            sink.push(Pos::Line(start), Ok(Conversation::new(std::mem::take(current))))?;
        }
        Ok(())
    };
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_end();
        if line.trim().is_empty() {
            flush(&mut current, start, &mut broken, sink)?;
            continue;
        }
        if current.is_empty() && broken.is_none() {
            start = i + 1;
        }
        match (role_prefix(line.trim_start()), current.last_mut()) {
            (Some((role, content)), _) => current.push(Message::new(role, content.trim())),
            (None, Some(last)) => {
                last.content.push('\n');
                last.content.push_str(line);
            }
            (None, None) => {
                if broken.is_none() {
                    broken = Some((
                        i + 1,
                        "expected a line starting with a role, e.g. `User:` or `Assistant:`".into(),
                    ));
                }
            }
        }
    }
    flush(&mut current, start, &mut broken, sink)?;
    Ok(count)
}

/// `conversations: [[turn, turn, …], …]`, turns alternating user and assistant;
/// `categories: [name]` becomes the domain.
/// Deepest flow nesting (`[`, `{`) accepted in YAML: a dialog corpus needs three or four levels,
/// and the parser's time grows with the square of the depth.
const MAX_YAML_DEPTH: usize = 64;

/// The deepest flow nesting of `text`, brackets inside quoted scalars and comments not counted.
fn flow_depth(text: &str) -> (usize, usize) {
    let (mut depth, mut max, mut at_line) = (0usize, 0usize, 1usize);
    for (i, line) in text.lines().enumerate() {
        let mut quote: Option<char> = None;
        for c in line.chars() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '"' | '\'') => quote = Some(c),
                (None, '#') => break,
                (None, '[' | '{') => {
                    depth += 1;
                    if depth > max {
                        (max, at_line) = (depth, i + 1);
                    }
                }
                (None, ']' | '}') => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
    }
    (max, at_line)
}

pub(super) fn read_yaml(path: &Path, text: &str, sink: &mut Sink<'_>) -> Result<usize> {
    let (depth, line) = flow_depth(text);
    if depth > MAX_YAML_DEPTH {
        return Err(Error::record(
            path,
            Pos::Line(line),
            format!("YAML nested {depth} levels deep (at most {MAX_YAML_DEPTH}); not a dialog corpus"),
        ));
    }
    let doc: Value =
        yaml_serde::from_str(text).map_err(|e| Error::file(path, format!("invalid YAML: {e}")))?;
    let domain = doc
        .get("categories")
        .and_then(|c| c.as_array().and_then(|a| a.first()).or(Some(c)))
        .and_then(Value::as_str)
        .map(str::to_string);
    let Some(list) = doc.get("conversations").and_then(Value::as_array) else {
        return Err(Error::file(path, "YAML has no `conversations:` list"));
    };
    for (i, conv) in list.iter().enumerate() {
        let converted = conv
            .as_array()
            .ok_or_else(|| "conversation should be a list of turns".to_string())
            .and_then(|turns| {
                turns
                    .iter()
                    .enumerate()
                    .map(|(t, turn)| {
                        let text = match turn {
                            Value::String(s) => s.clone(),
                            Value::Number(n) => n.to_string(),
                            Value::Bool(b) => b.to_string(),
                            _ => return Err(format!("turn {} should be text", t + 1)),
                        };
                        let role = if t % 2 == 0 { Role::User } else { Role::Assistant };
                        Ok(Message::new(role, text))
                    })
                    .collect::<std::result::Result<Vec<_>, String>>()
            })
            .map(|messages| {
                let mut c = Conversation::new(messages);
                if let Some(d) = &domain {
                    c.meta.insert("domain".into(), Value::String(d.clone()));
                }
                c
            });
        sink.push(Pos::Item(i + 1), converted)?;
    }
    Ok(list.len())
}
