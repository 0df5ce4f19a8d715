//! JSON containers: a list of records, an object holding such a list, one record, or JSONL.
//! Every record keeps the line it starts on, so errors can name it.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use serde_json::value::RawValue;

use super::{Container, Sink, records};
use crate::{Error, Pos, Result};

/// Keys under which datasets usually keep their list of records, most likely first.
const LIST_KEYS: [&str; 9] = [
    "data",
    "records",
    "examples",
    "items",
    "rows",
    "train",
    "dataset",
    "conversations",
    "messages",
];

fn syntax_error(path: &Path, e: &serde_json::Error) -> Error {
    Error::file(
        path,
        format!(
            "invalid JSON at line {}, column {}: {}",
            e.line(),
            e.column(),
            message(e)
        ),
    )
}

/// serde_json's message without its " at line L column C" suffix (we report the file's own line).
fn message(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

pub(super) fn detect_container(path: &Path, text: &str) -> Result<Container> {
    if text.trim_start().starts_with('[') {
        return Ok(Container::JsonList);
    }
    if matches!(super::data_extension(path).as_str(), "jsonl" | "ndjson") {
        return Ok(Container::Jsonl);
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(obj)) => {
            if records::looks_like_record(&obj) {
                return Ok(Container::JsonObject { key: None });
            }
            let is_record_list = |v: &Value| {
                v.as_array()
                    .is_some_and(|a| !a.is_empty() && a.iter().all(Value::is_object))
            };
            let key = LIST_KEYS
                .iter()
                .find(|k| obj.get(**k).is_some_and(is_record_list))
                .map(|k| k.to_string())
                .or_else(|| {
                    obj.iter()
                        .filter(|(_, v)| is_record_list(v))
                        .max_by_key(|(_, v)| v.as_array().map_or(0, Vec::len))
                        .map(|(k, _)| k.clone())
                });
            match key {
                Some(key) => Ok(Container::JsonObject { key: Some(key) }),
                None => Err(Error::file(
                    path,
                    "JSON object is neither a record nor a dict holding a list of records",
                )),
            }
        }
        Ok(_) => Err(Error::file(path, "expected a JSON object or list")),
        Err(e) => {
            // Several objects one after another: JSONL (a bad line is reported by the reader).
            let first_line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            let first_is_object = serde_json::from_str::<Value>(first_line).is_ok_and(|v| v.is_object());
            if first_is_object || e.to_string().contains("trailing characters") {
                Ok(Container::Jsonl)
            } else {
                Err(syntax_error(path, &e))
            }
        }
    }
}

/// Byte offset → 1-based line number.
struct Lines(Vec<usize>);

impl Lines {
    fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Lines(starts)
    }

    fn line_of(&self, offset: usize) -> usize {
        self.0.partition_point(|&s| s <= offset)
    }

    fn line_of_raw(&self, text: &str, raw: &RawValue) -> usize {
        // `raw` borrows from `text`, so its start is an offset into it.
        let offset = (raw.get().as_ptr() as usize).saturating_sub(text.as_ptr() as usize);
        self.line_of(offset)
    }
}

fn parse_items(path: &Path, text: &str, lines: &Lines, raws: Vec<&RawValue>) -> Result<Vec<(usize, Value)>> {
    raws.into_iter()
        .map(|raw| {
            let line = lines.line_of_raw(text, raw);
            serde_json::from_str(raw.get())
                .map(|v| (line, v))
                .map_err(|e| Error::record(path, Pos::Line(line), message(&e)))
        })
        .collect()
}

pub(super) fn records(
    path: &Path,
    text: &str,
    container: &Container,
    sink: &mut Sink<'_>,
) -> Result<Vec<(usize, Value)>> {
    let lines = Lines::new(text);
    match container {
        Container::JsonList => {
            let raws: Vec<&RawValue> = serde_json::from_str(text).map_err(|e| syntax_error(path, &e))?;
            parse_items(path, text, &lines, raws)
        }
        Container::JsonObject { key: Some(key) } => {
            let obj: BTreeMap<String, &RawValue> =
                serde_json::from_str(text).map_err(|e| syntax_error(path, &e))?;
            let list = obj
                .get(key)
                .ok_or_else(|| Error::file(path, format!("no \"{key}\" list in the JSON object")))?;
            let raws: Vec<&RawValue> = serde_json::from_str(list.get())
                .map_err(|e| Error::file(path, format!("\"{key}\" is not a list of records: {e}")))?;
            parse_items(path, text, &lines, raws)
        }
        Container::JsonObject { key: None } => {
            let value: Value = serde_json::from_str(text).map_err(|e| syntax_error(path, &e))?;
            let start = text.len() - text.trim_start().len();
            Ok(vec![(lines.line_of(start), value)])
        }
        Container::Jsonl => {
            let mut out = Vec::new();
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str::<Value>(line) {
                    Ok(v) => out.push((i + 1, v)),
                    Err(e) => sink.invalid(Error::record(
                        path,
                        Pos::Line(i + 1),
                        format!("invalid JSON at column {}: {}", e.column(), message(&e)),
                    ))?,
                }
            }
            Ok(out)
        }
        Container::Csv { .. } | Container::Text | Container::Yaml | Container::Parquet => {
            Err(Error::file(path, "not a JSON container"))
        }
    }
}
