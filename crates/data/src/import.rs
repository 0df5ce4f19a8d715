//! Import: many files of any format → one list of clean canonical conversations, then a seeded
//! train/validation split.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use crate::chat_export::{ChatExportOptions, ChatExportReport, read_chat_export};
use crate::formats::{DataFormat, Detected, ReadOptions, read_file};
use crate::{Conversation, Error, Result, Rng};

/// File extensions taken when a directory is given.
const DATA_EXTENSIONS: [&str; 9] = [
    "json", "jsonl", "ndjson", "csv", "tsv", "txt", "yaml", "yml", "parquet",
];

#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub read: ReadOptions,
    /// Drop conversations whose messages repeat an earlier conversation exactly.
    pub dedupe: bool,
    /// Drop conversations with fewer messages than this.
    pub min_turns: usize,
    /// Drop conversations with more characters than this.
    pub max_chars: Option<usize>,
    /// Prefix each user turn with the conversation's domain tag (`#cooking …`).
    pub domain_tag: bool,
    /// How a chat export (`--format chat-export`, or any `.zip` input) is read.
    pub chat: ChatExportOptions,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            read: ReadOptions::default(),
            dedupe: false,
            min_turns: 1,
            max_chars: None,
            domain_tag: false,
            chat: ChatExportOptions::default(),
        }
    }
}

/// What happened to one input file.
#[derive(Debug)]
pub struct FileReport {
    pub path: PathBuf,
    pub detected: Detected,
    pub records: usize,
    pub conversations: usize,
    /// Malformed records skipped with `--skip-invalid`, with the first few errors.
    pub invalid: usize,
    pub first_errors: Vec<String>,
}

/// The share of conversations `data import` holds out for validation by default.
pub const VAL_SPLIT: f64 = 0.05;

/// The seed of `data import`'s validation split by default.
pub const SPLIT_SEED: u64 = 7;

/// Where `data import` writes the validation split of `out`: `x.jsonl` → `x.val.jsonl`.
pub fn val_path_for(out: &Path) -> PathBuf {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    out.with_file_name(format!("{stem}.val.jsonl"))
}

/// What `data import` writes beside an output made from a chat export: `<output>.import.json`,
/// the [`ChatExportReport`] (consent applied, threads, what was dropped), which the studio shows.
pub const IMPORT_REPORT_SUFFIX: &str = ".import.json";

/// The import report's path for output file `out`.
pub fn import_report_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(IMPORT_REPORT_SUFFIX);
    out.with_file_name(name)
}

#[derive(Debug, Default)]
pub struct ImportReport {
    pub files: Vec<FileReport>,
    pub conversations: Vec<Conversation>,
    pub dropped_duplicates: usize,
    pub dropped_short: usize,
    pub dropped_long: usize,
    /// What reading a chat export did (consent, threads, what was dropped).
    pub chat: Option<ChatExportReport>,
}

/// Expands directories (recursively, sorted, data extensions only, hidden files skipped);
/// files named explicitly are taken whatever their extension.
pub fn collect_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for input in inputs {
        let meta = std::fs::metadata(input).map_err(|e| Error::io(input, e))?;
        if meta.is_dir() {
            walk(input, &DATA_EXTENSIONS, &mut out)?;
        } else if meta.is_file() {
            out.push(input.clone());
        } else {
            return Err(Error::file(
                input,
                "not a regular file (a pipe, socket or device)",
            ));
        }
    }
    if out.is_empty() {
        return Err(Error::Invalid(format!(
            "no data files found in {} (looked for .{})",
            inputs
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            DATA_EXTENSIONS.join(", .")
        )));
    }
    Ok(out)
}

/// The regular files under `dir` (recursively, sorted, hidden ones skipped) with one of
/// `extensions`. Symlinks are followed, but a directory is entered once: a link back up the tree
/// (or to a directory already walked) is not a loop.
pub(crate) fn walk(dir: &Path, extensions: &[&str], out: &mut Vec<PathBuf>) -> Result<()> {
    walk_once(dir, extensions, out, &mut std::collections::HashSet::new())
}

fn walk_once(
    dir: &Path,
    extensions: &[&str],
    out: &mut Vec<PathBuf>,
    seen: &mut std::collections::HashSet<PathBuf>,
) -> Result<()> {
    let canon = std::fs::canonicalize(dir).map_err(|e| Error::io(dir, e))?;
    if !seen.insert(canon) {
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .map(|e| e.map(|e| e.path()).map_err(|err| Error::io(dir, err)))
        .collect::<Result<_>>()?;
    entries.sort();
    for path in entries {
        let hidden = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if hidden {
            continue;
        }
        // A broken link or an unreadable entry is not a data file: skipped like hidden ones.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            walk_once(&path, extensions, out, seen)?;
        } else if meta.is_file() && extensions.contains(&crate::formats::data_extension(&path).as_str()) {
            out.push(path);
        }
    }
    Ok(())
}

fn content_hash(c: &Conversation) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    // A pair's replies are part of it: one prompt can have many pairs.
    for (part, messages) in [&c.messages, &c.chosen, &c.rejected].into_iter().enumerate() {
        part.hash(&mut h);
        for m in messages {
            m.role.hash(&mut h);
            m.content.trim().hash(&mut h);
        }
    }
    h.finish()
}

/// Reads and merges every input, then filters: length, turns, duplicates, domain tags. A chat
/// export (`--format chat-export`, or `.zip` inputs, or the `.zip` files in an input folder) is
/// read as a whole: replies, threads and consent span its channel files.
pub fn import(inputs: &[PathBuf], opts: &ImportOptions) -> Result<ImportReport> {
    let mut report = ImportReport::default();
    let mut seen = HashSet::new();
    let chat = opts.read.format == Some(DataFormat::ChatExport)
        || inputs
            .iter()
            .any(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("zip")));
    let mut read = Vec::new();
    if chat {
        let (convs, chat_report) = read_chat_export(inputs, &opts.chat)?;
        read.push(convs);
        report.chat = Some(chat_report);
    } else {
        // Chat exports (`.zip`) found in input folders are read together, as one export (seed
        // 003's results/ folder of `training_data_*.zip`).
        let mut zips = Vec::new();
        for dir in inputs.iter().filter(|p| p.is_dir()) {
            walk(dir, &["zip"], &mut zips)?;
        }
        if !zips.is_empty() {
            let (convs, chat_report) = read_chat_export(&zips, &opts.chat)?;
            read.push(convs);
            report.chat = Some(chat_report);
        }
        for path in collect_inputs(inputs)? {
            let r = read_file(&path, &opts.read)?;
            report.files.push(FileReport {
                path: path.clone(),
                detected: r.detected,
                records: r.records,
                conversations: r.conversations.len(),
                invalid: r.invalid.len(),
                first_errors: r.invalid.iter().take(3).map(ToString::to_string).collect(),
            });
            read.push(r.conversations);
        }
    }
    for mut c in read.into_iter().flatten() {
        if c.messages.len() < opts.min_turns {
            report.dropped_short += 1;
            continue;
        }
        if opts.max_chars.is_some_and(|max| c.chars() > max) {
            report.dropped_long += 1;
            continue;
        }
        if opts.dedupe && !seen.insert(content_hash(&c)) {
            report.dropped_duplicates += 1;
            continue;
        }
        if opts.domain_tag {
            c.apply_domain_tag();
        }
        report.conversations.push(c);
    }
    Ok(report)
}

/// Seeded train/validation split: the same seed and input always give the same split, and both
/// parts keep the input order. A non-zero fraction holds out at least one conversation (when
/// there are at least two).
pub fn split(
    conversations: Vec<Conversation>,
    val_fraction: f64,
    seed: u64,
) -> Result<(Vec<Conversation>, Vec<Conversation>)> {
    if !(0.0..1.0).contains(&val_fraction) {
        return Err(Error::Invalid(format!(
            "validation split must be in [0, 1), got {val_fraction}"
        )));
    }
    let n = conversations.len();
    let mut n_val = (n as f64 * val_fraction).round() as usize;
    if val_fraction > 0.0 && n >= 2 {
        n_val = n_val.clamp(1, n - 1);
    }
    let mut order: Vec<usize> = (0..n).collect();
    Rng::new(seed).shuffle(&mut order);
    let mut is_val = vec![false; n];
    for &i in &order[..n_val] {
        is_val[i] = true;
    }
    let (mut train, mut val) = (Vec::with_capacity(n - n_val), Vec::with_capacity(n_val));
    for (c, v) in conversations.into_iter().zip(is_val) {
        if v { val.push(c) } else { train.push(c) }
    }
    Ok((train, val))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Message, Role};

    fn conv(i: usize) -> Conversation {
        Conversation::new(vec![
            Message::new(Role::User, format!("q{i}")),
            Message::new(Role::Assistant, format!("a{i}")),
        ])
    }

    #[test]
    fn split_is_seeded_and_order_preserving() {
        let all: Vec<_> = (0..100).map(conv).collect();
        let (t1, v1) = split(all.clone(), 0.1, 7).unwrap();
        let (t2, v2) = split(all.clone(), 0.1, 7).unwrap();
        assert_eq!((t1.len(), v1.len()), (90, 10));
        assert_eq!(v1, v2);
        assert_eq!(t1, t2);
        let (_, v3) = split(all.clone(), 0.1, 8).unwrap();
        assert_ne!(v1, v3);
        // Order preserved: the val part is a subsequence of the input.
        let pos: Vec<usize> = v1
            .iter()
            .map(|c| all.iter().position(|a| a == c).unwrap())
            .collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn split_edges() {
        let (t, v) = split((0..3).map(conv).collect(), 0.01, 1).unwrap();
        assert_eq!((t.len(), v.len()), (2, 1));
        let (t, v) = split((0..3).map(conv).collect(), 0.0, 1).unwrap();
        assert_eq!((t.len(), v.len()), (3, 0));
        assert!(split(vec![], 1.5, 1).is_err());
    }
}
