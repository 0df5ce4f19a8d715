//! Readers for the formats people already have. The container (JSON list, JSON object holding a
//! list, JSONL, CSV/TSV, plain text, YAML; any of them gzip-compressed) and the record shape (OpenAI messages, ShareGPT, instruction
//! records, OpenAssistant messages or trees, transcripts, YAML dialogs) are both detected from the
//! content; `--format` forces the shape and `--field-map` names instruction fields.

mod csv;
mod json;
mod oasst;
#[cfg(feature = "parquet")]
mod parquet;
mod preference;
mod records;
mod text;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde_json::Value;

use crate::{Conversation, Error, Pos, Result};

/// The shape of the records in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataFormat {
    /// `{"messages":[{"role","content"}]}`: OpenAI chat format and chatforge's canonical JSONL.
    Messages,
    /// `{"conversations":[{"from":"human|gpt","value"}]}`.
    ShareGpt,
    /// Instruction/response records (Alpaca, Dolly, Q&A dumps) with auto-detected or mapped fields.
    Instruction,
    /// OpenAssistant oasst1 messages (`message_id`, `parent_id`, `role: prompter|assistant`).
    Oasst,
    /// OpenAssistant exported trees (`*.trees.jsonl`: `message_tree_id`, nested `prompt.replies`).
    OasstTrees,
    /// Plain `User: …` / `Assistant: …` transcripts, conversations separated by blank lines.
    Transcript,
    /// YAML dialog corpora: `conversations: [[turn, turn, …], …]`.
    YamlDialog,
    /// Group-chat exports (Discord-style channel files, in a zip or a directory): read as a
    /// whole by [`crate::read_chat_export`], not file by file.
    ChatExport,
    /// Plain-text documents for pre-training and tokenizers: a `.txt` corpus (paragraphs
    /// separated by blank lines), or records holding a `text` field.
    Documents,
    /// Preference pairs (DPO, ORPO): TRL's `prompt`/`chosen`/`rejected`, UltraFeedback-binarized,
    /// Anthropic HH-RLHF transcripts.
    Preference,
}

impl DataFormat {
    pub const NAMES: &'static str = "messages (openai), sharegpt, instruction (alpaca), oasst, oasst-trees, transcript, yaml-dialog, chat-export, documents, preference (trl, hh-rlhf, ultrafeedback)";

    pub fn name(self) -> &'static str {
        match self {
            DataFormat::Messages => "messages",
            DataFormat::ShareGpt => "sharegpt",
            DataFormat::Instruction => "instruction",
            DataFormat::Oasst => "oasst",
            DataFormat::OasstTrees => "oasst-trees",
            DataFormat::Transcript => "transcript",
            DataFormat::YamlDialog => "yaml-dialog",
            DataFormat::ChatExport => "chat-export",
            DataFormat::Documents => "documents",
            DataFormat::Preference => "preference",
        }
    }
}

impl FromStr for DataFormat {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "messages" | "openai" | "canonical" | "chatforge" => DataFormat::Messages,
            "sharegpt" => DataFormat::ShareGpt,
            "instruction" | "alpaca" | "qa" => DataFormat::Instruction,
            "oasst" | "oasst1" => DataFormat::Oasst,
            "oasst-trees" | "oasst_trees" | "trees" => DataFormat::OasstTrees,
            "transcript" | "text" | "txt" => DataFormat::Transcript,
            "yaml" | "yml" | "yaml-dialog" => DataFormat::YamlDialog,
            "chat-export" | "discord" => DataFormat::ChatExport,
            "documents" | "plain" | "corpus" => DataFormat::Documents,
            "preference" | "pairs" | "dpo" | "trl" | "hh-rlhf" | "hh" | "ultrafeedback" => {
                DataFormat::Preference
            }
            other => {
                return Err(Error::Invalid(format!(
                    "unknown format '{other}': expected one of {}",
                    DataFormat::NAMES
                )));
            }
        })
    }
}

/// How the records are stored in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Container {
    JsonList,
    /// A JSON object: one record (`key: None`) or a dict holding the list of records under `key`.
    JsonObject {
        key: Option<String>,
    },
    Jsonl,
    /// Comma- or tab-separated values with a header row.
    Csv {
        tabs: bool,
    },
    Text,
    Yaml,
    Parquet,
}

impl fmt::Display for Container {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Container::JsonList => write!(f, "JSON list"),
            Container::JsonObject { key: Some(k) } => write!(f, "JSON dict, records under \"{k}\""),
            Container::JsonObject { key: None } => write!(f, "JSON object (one record)"),
            Container::Jsonl => write!(f, "JSONL"),
            Container::Csv { tabs: false } => write!(f, "CSV"),
            Container::Csv { tabs: true } => write!(f, "TSV"),
            Container::Text => write!(f, "text"),
            Container::Yaml => write!(f, "YAML"),
            Container::Parquet => write!(f, "parquet"),
        }
    }
}

/// What was detected (or forced) for one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    pub container: Container,
    pub format: DataFormat,
    /// For instruction records: which source field became what (`question→user, answer→assistant`).
    pub fields: Option<String>,
}

impl fmt::Display for Detected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} · {}", self.container, self.format.name())?;
        if let Some(fields) = &self.fields {
            write!(f, " ({fields})")?;
        }
        Ok(())
    }
}

/// Which source field feeds which part of an instruction record, from
/// `--field-map instruction=question,output=answer,domain=topic`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldMap {
    pub instruction: Option<String>,
    pub input: Option<String>,
    pub output: Option<String>,
    pub domain: Option<String>,
    pub system: Option<String>,
}

impl FieldMap {
    pub fn is_empty(&self) -> bool {
        *self == FieldMap::default()
    }
}

impl FromStr for FieldMap {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let mut map = FieldMap::default();
        for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((target, source)) = pair.split_once('=') else {
                return Err(Error::Invalid(format!(
                    "field map entry '{pair}' is not TARGET=FIELD (e.g. instruction=question)"
                )));
            };
            let source = Some(source.trim().to_string());
            match target.trim() {
                "instruction" | "user" | "prompt" | "question" => map.instruction = source,
                "input" | "context" => map.input = source,
                "output" | "assistant" | "response" | "answer" => map.output = source,
                "domain" | "hash" | "category" => map.domain = source,
                "system" => map.system = source,
                other => {
                    return Err(Error::Invalid(format!(
                        "unknown field map target '{other}': expected instruction, input, output, domain or system"
                    )));
                }
            }
        }
        Ok(map)
    }
}

/// How to read one file.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// Force the record shape instead of detecting it.
    pub format: Option<DataFormat>,
    pub field_map: FieldMap,
    /// OpenAssistant: keep only the best-ranked path of each tree.
    pub oasst_best_only: bool,
    /// OpenAssistant: preference pairs instead of conversations, from sibling replies ordered by
    /// rank (each better-ranked reply preferred to each worse-ranked one).
    pub pairs_from_ranks: bool,
    /// Skip and count malformed records instead of failing on the first.
    pub skip_invalid: bool,
}

/// The result of reading one file.
#[derive(Debug)]
pub struct FileRead {
    pub detected: Detected,
    /// Records seen (lines, list items, messages for `oasst`, conversations for text and YAML).
    pub records: usize,
    pub conversations: Vec<Conversation>,
    /// Malformed records that were skipped (only with `skip_invalid`).
    pub invalid: Vec<Error>,
}

/// Collects conversations and malformed records: fails on the first unless skipping.
pub(crate) struct Sink<'a> {
    path: &'a Path,
    source: String,
    skip_invalid: bool,
    /// Records are rows of a table (parquet), not lines.
    rows: bool,
    pub(crate) out: Vec<Conversation>,
    pub(crate) invalid: Vec<Error>,
}

impl<'a> Sink<'a> {
    fn new(path: &'a Path, skip_invalid: bool) -> Self {
        Sink {
            path,
            source: path.display().to_string(),
            skip_invalid,
            rows: false,
            out: Vec::new(),
            invalid: Vec::new(),
        }
    }

    /// Where record `n` is: a line of JSONL/CSV, a row of a table.
    pub(crate) fn at(&self, n: usize) -> Pos {
        if self.rows { Pos::Row(n) } else { Pos::Line(n) }
    }

    pub(crate) fn error(&self, pos: Pos, msg: impl Into<String>) -> Error {
        Error::record(self.path, pos, msg)
    }

    /// Takes one converted record: a valid conversation is kept (tagged with where it came from),
    /// anything else is an error or, when skipping, counted.
    pub(crate) fn push(
        &mut self,
        pos: Pos,
        conversation: std::result::Result<Conversation, String>,
    ) -> Result<()> {
        match conversation.and_then(|c| c.validate().map(|()| c)) {
            Ok(mut c) => {
                if !c.meta.contains_key("source") {
                    let at = match pos {
                        Pos::Line(n) => format!("{}:{n}", self.source),
                        other => format!("{} {other}", self.source),
                    };
                    c.meta.insert("source".into(), Value::String(at));
                }
                self.out.push(c);
                Ok(())
            }
            Err(msg) => self.invalid(self.error(pos, msg)),
        }
    }

    pub(crate) fn invalid(&mut self, err: Error) -> Result<()> {
        if self.skip_invalid {
            self.invalid.push(err);
            Ok(())
        } else {
            Err(err)
        }
    }
}

/// The most a compressed file may expand to in memory.
const MAX_EXPANDED: u64 = 8 << 30;

/// A gzip or zstd file's contents (by its magic bytes, whatever its name), or the bytes as they are.
fn expand(path: &Path, bytes: Vec<u8>) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    if bytes.starts_with(&[0x1F, 0x8B]) {
        flate2::read::MultiGzDecoder::new(bytes.as_slice())
            .take(MAX_EXPANDED + 1)
            .read_to_end(&mut out)
            .map_err(|e| Error::file(path, format!("not a readable gzip file: {e}")))?;
    } else if bytes.starts_with(&[0x28, 0xB5, 0x2F, 0xFD]) {
        #[cfg(feature = "zstd")]
        zstd::stream::read::Decoder::new(bytes.as_slice())
            .and_then(|d| d.take(MAX_EXPANDED + 1).read_to_end(&mut out))
            .map_err(|e| Error::file(path, format!("not a readable zstd file: {e}")))?;
        #[cfg(not(feature = "zstd"))]
        return Err(Error::file(
            path,
            "a zstd-compressed file: this build of chatforge reads gzip only (build with the `zstd` feature)",
        ));
    } else {
        return Ok(bytes);
    }
    if out.len() as u64 > MAX_EXPANDED {
        return Err(Error::file(path, "expands to more than 8 GiB"));
    }
    Ok(out)
}

/// A file's extension as its contents have it: `train.jsonl.gz` is `jsonl`.
pub(crate) fn data_extension(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let name = name
        .strip_suffix(".gz")
        .or_else(|| name.strip_suffix(".zst"))
        .unwrap_or(&name);
    Path::new(name)
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Reads one file of any supported format into canonical conversations.
pub fn read_file(path: &Path, opts: &ReadOptions) -> Result<FileRead> {
    let bytes = expand(path, crate::io::read_regular(path)?)?;
    if bytes.starts_with(b"PAR1") {
        return read_parquet(path, bytes, opts);
    }
    // Skipping invalid records, a line that is not UTF-8 is one: it is counted and blanked (so
    // the other lines keep their numbers), and the rest of the file is read.
    let mut bad_lines = Vec::new();
    let owned;
    let text = match decode_utf8(path, &bytes) {
        Ok(t) => t,
        Err(e) if !opts.skip_invalid => return Err(e),
        Err(_) => {
            let body = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
            let lines: Vec<&str> = body
                .split(|&b| b == b'\n')
                .enumerate()
                .map(|(i, l)| {
                    std::str::from_utf8(l).unwrap_or_else(|_| {
                        bad_lines.push(Error::record(path, Pos::Line(i + 1), "not valid UTF-8"));
                        ""
                    })
                })
                .collect();
            owned = lines.join("\n");
            owned.as_str()
        }
    };
    if text.trim().is_empty() {
        return Err(Error::file(path, "file is empty"));
    }
    let mut sink = Sink::new(path, opts.skip_invalid);
    sink.invalid = bad_lines;
    let (detected, records) = match container_for(path, text, opts.format)? {
        container @ (Container::Text | Container::Yaml) => {
            let documents = opts.format == Some(DataFormat::Documents)
                || (opts.format.is_none() && !text::looks_like_transcript(text));
            let (format, records) = if container == Container::Text && documents {
                (DataFormat::Documents, text::read_documents(text, &mut sink)?)
            } else if container == Container::Text {
                (DataFormat::Transcript, text::read_transcripts(text, &mut sink)?)
            } else {
                (DataFormat::YamlDialog, text::read_yaml(path, text, &mut sink)?)
            };
            let detected = Detected {
                container,
                format,
                fields: None,
            };
            (detected, records)
        }
        container => {
            let items = match container {
                Container::Csv { tabs } => csv::records(path, text, if tabs { b'\t' } else { b',' })?,
                _ => json::records(path, text, &container, &mut sink)?,
            };
            read_records(path, container, items, opts, &mut sink)?
        }
    };
    Ok(FileRead {
        detected,
        records,
        conversations: sink.out,
        invalid: sink.invalid,
    })
}

/// The records of a JSONL, JSON or parquet file (gzip too) as JSON values, each with its line (or,
/// for parquet, row) number: documents of another kind than conversations (evaluation tasks).
pub fn read_rows(path: &Path) -> Result<Vec<(Pos, Value)>> {
    let bytes = expand(path, crate::io::read_regular(path)?)?;
    if bytes.starts_with(b"PAR1") {
        #[cfg(feature = "parquet")]
        {
            let rows = parquet::records(path, bytes)?;
            return Ok(rows.into_iter().map(|(i, v)| (Pos::Row(i), v)).collect());
        }
        #[cfg(not(feature = "parquet"))]
        return Err(Error::file(
            path,
            "a parquet file: build chatforge with the `parquet` feature",
        ));
    }
    let text = decode_utf8(path, &bytes)?;
    let container = container_for(path, text, None)?;
    if !matches!(
        container,
        Container::Jsonl | Container::JsonList | Container::JsonObject { .. }
    ) {
        return Err(Error::file(
            path,
            format!("{container}: expected JSONL, JSON or parquet records"),
        ));
    }
    let mut sink = Sink::new(path, false);
    let rows = json::records(path, text, &container, &mut sink)?;
    Ok(rows.into_iter().map(|(i, v)| (Pos::Line(i), v)).collect())
}

/// A parquet file: its rows, as records.
fn read_parquet(path: &Path, bytes: Vec<u8>, opts: &ReadOptions) -> Result<FileRead> {
    #[cfg(feature = "parquet")]
    {
        let items = parquet::records(path, bytes)?;
        if items.is_empty() {
            return Err(Error::file(path, "the parquet file has no rows"));
        }
        let mut sink = Sink::new(path, opts.skip_invalid);
        sink.rows = true;
        let (detected, records) = read_records(path, Container::Parquet, items, opts, &mut sink)?;
        Ok(FileRead {
            detected,
            records,
            conversations: sink.out,
            invalid: sink.invalid,
        })
    }
    #[cfg(not(feature = "parquet"))]
    {
        let _ = (bytes, opts);
        Err(Error::file(
            path,
            "a parquet file: this build of chatforge has no parquet reader (build with the `parquet` feature)",
        ))
    }
}

/// Records (JSON items, CSV or parquet rows) of a detected or forced shape into conversations;
/// returns what was detected and how many records there were.
fn read_records(
    path: &Path,
    container: Container,
    items: Vec<(usize, Value)>,
    opts: &ReadOptions,
    sink: &mut Sink,
) -> Result<(Detected, usize)> {
    let pos = |n: usize| sink.at(n);
    let format = match opts.format {
        Some(f) => f,
        None if !opts.field_map.is_empty() => DataFormat::Instruction,
        None => detect_format(path, &items, pos)?,
    };
    let fields = (format == DataFormat::Instruction)
        .then(|| {
            items
                .first()
                .map(|(_, v)| records::describe_fields(v, &opts.field_map))
        })
        .flatten();
    let n = items.len();
    match format {
        DataFormat::Oasst => oasst::read_messages(items, oasst::Paths::of(opts), sink)?,
        DataFormat::OasstTrees => oasst::read_trees(items, oasst::Paths::of(opts), sink)?,
        DataFormat::Documents => {
            for (at, value) in items {
                let c = match value.get("text").and_then(Value::as_str) {
                    Some(t) => Ok(Conversation::text(t)),
                    None => Err("a document record needs a \"text\" string".to_string()),
                };
                sink.push(sink.at(at), c)?;
            }
        }
        DataFormat::Preference => {
            for (at, value) in items {
                let c = match value {
                    Value::Object(obj) => preference::convert(obj),
                    other => Err(format!("expected a JSON object, got {}", records::kind(&other))),
                };
                sink.push(sink.at(at), c)?;
            }
        }
        DataFormat::Transcript | DataFormat::YamlDialog | DataFormat::ChatExport => {
            return Err(Error::file(
                path,
                format!("--format {} does not fit a {container} file", format.name()),
            ));
        }
        _ => {
            for (at, value) in items {
                let c = records::convert(format, value, &opts.field_map);
                sink.push(sink.at(at), c)?;
            }
        }
    }
    let detected = Detected {
        container,
        format,
        fields,
    };
    Ok((detected, n))
}

/// UTF-8 check with the line and byte of the first bad sequence; a BOM is dropped.
fn decode_utf8<'a>(path: &Path, bytes: &'a [u8]) -> Result<&'a str> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    std::str::from_utf8(bytes).map_err(|e| {
        let at = e.valid_up_to();
        let line = bytes[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        Error::file(
            path,
            format!("not valid UTF-8 at line {line} (byte {at}); re-encode the file as UTF-8"),
        )
    })
}

fn container_for(path: &Path, text: &str, forced: Option<DataFormat>) -> Result<Container> {
    let ext = data_extension(path);
    let first = text.trim_start().chars().next();
    match forced {
        Some(DataFormat::Transcript) => return Ok(Container::Text),
        Some(DataFormat::YamlDialog) => return Ok(Container::Yaml),
        Some(DataFormat::Documents) if !matches!(first, Some('[' | '{')) => return Ok(Container::Text),
        _ => {}
    }
    if ext == "csv" || ext == "tsv" {
        return Ok(Container::Csv { tabs: ext == "tsv" });
    }
    if matches!(first, Some('[' | '{')) {
        return json::detect_container(path, text);
    }
    if text::looks_like_transcript(text) {
        return Ok(Container::Text);
    }
    if ext == "yaml" || ext == "yml" || text::looks_like_yaml_dialog(text) {
        return Ok(Container::Yaml);
    }
    // Any other text file is a corpus of documents.
    if ext == "txt" || ext == "text" || ext == "md" {
        return Ok(Container::Text);
    }
    Err(Error::file(
        path,
        "unknown format: expected JSON, JSONL, CSV/TSV (by extension), a `User:`/`Assistant:` transcript, \
         a YAML dialog corpus (`conversations:`) or a plain-text corpus (`.txt`); see docs/formats.md",
    ))
}

/// Tells the record shape from the keys of the first records.
fn detect_format(path: &Path, items: &[(usize, Value)], pos: impl Fn(usize) -> Pos) -> Result<DataFormat> {
    let Some((line, first)) = items.iter().find(|(_, v)| v.is_object()) else {
        return Err(Error::file(path, "no JSON object records found"));
    };
    let obj = first.as_object().into_iter().flatten();
    let keys: BTreeMap<&str, &Value> = obj.map(|(k, v)| (k.as_str(), v)).collect();
    let has = |k: &str| keys.contains_key(k);
    if keys.get("author").is_some_and(|v| v.is_object()) && has("timestamp") {
        return Err(Error::record(
            path,
            pos(*line),
            "this is a chat export's message: read the export with --format chat-export (see docs/personas.md)",
        ));
    }
    // Before `messages`: UltraFeedback-binarized's pairs carry a `messages` list too.
    if preference::looks_like_pair(&has) {
        return Ok(DataFormat::Preference);
    }
    if keys.get("messages").is_some_and(|v| v.is_array()) {
        return Ok(DataFormat::Messages);
    }
    if ["conversations", "conversation"]
        .iter()
        .any(|k| keys.get(k).is_some_and(|v| v.is_array()))
    {
        return Ok(DataFormat::ShareGpt);
    }
    if has("message_tree_id") && keys.get("prompt").is_some_and(|v| v.is_object()) {
        return Ok(DataFormat::OasstTrees);
    }
    if has("message_id") && has("parent_id") && has("text") {
        return Ok(DataFormat::Oasst);
    }
    if records::looks_like_instruction(first) {
        return Ok(DataFormat::Instruction);
    }
    if keys.get("text").is_some_and(|v| v.is_string()) {
        return Ok(DataFormat::Documents);
    }
    let names: Vec<&str> = keys.keys().copied().collect();
    Err(Error::record(
        path,
        pos(*line),
        format!(
            "cannot tell the format from the record's fields [{}]; use --format ({}) or \
             --field-map instruction=FIELD,output=FIELD",
            names.join(", "),
            DataFormat::NAMES
        ),
    ))
}
