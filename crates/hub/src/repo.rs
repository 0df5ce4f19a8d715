//! Repository ids and revisions, and the addresses and cache folder they give.

use std::fmt;

use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoKind {
    Model,
    Dataset,
}

impl RepoKind {
    /// The plural the Hub's API and the cache use (`models`, `datasets`).
    pub fn plural(self) -> &'static str {
        match self {
            RepoKind::Model => "models",
            RepoKind::Dataset => "datasets",
        }
    }
}

/// A repository at a revision (a branch, a tag or a commit; `main` when not given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoRef {
    pub kind: RepoKind,
    /// `name` or `org/name`.
    pub id: String,
    pub revision: String,
}

/// File names that are surely not a repository (`model.gguf` mistyped stays a missing path).
const FILE_SUFFIXES: [&str; 12] = [
    ".gguf",
    ".safetensors",
    ".bin",
    ".json",
    ".jsonl",
    ".txt",
    ".onnx",
    ".pt",
    ".zip",
    ".csv",
    ".parquet",
    ".gz",
];

impl RepoRef {
    /// `org/name@revision` (the revision optional).
    pub fn parse(kind: RepoKind, spec: &str) -> Result<RepoRef> {
        let (id, revision) = match spec.split_once('@') {
            Some((id, rev)) => (id, rev),
            None => (spec, "main"),
        };
        check_id(id)?;
        check_revision(revision)?;
        if !id.contains('/') && FILE_SUFFIXES.iter().any(|s| id.to_ascii_lowercase().ends_with(s)) {
            return Err(Error::Invalid(format!(
                "'{id}' looks like a file name, not a repository id"
            )));
        }
        Ok(RepoRef {
            kind,
            id: id.to_string(),
            revision: revision.to_string(),
        })
    }

    /// What follows `hf://`: `org/name[@rev]` (a model), `models/…` or `datasets/org/name[@rev]`.
    pub fn parse_url(rest: &str) -> Result<RepoRef> {
        if let Some(d) = rest.strip_prefix("datasets/") {
            return RepoRef::parse(RepoKind::Dataset, d);
        }
        RepoRef::parse(RepoKind::Model, rest.strip_prefix("models/").unwrap_or(rest))
    }

    /// The folder under the cache: `models--org--name`.
    pub fn folder(&self) -> String {
        format!("{}--{}", self.kind.plural(), self.id.replace('/', "--"))
    }

    /// `{endpoint}/api/models/{id}/revision/{revision}`: the commit and file list.
    pub fn info_url(&self, endpoint: &str, revision: &str) -> String {
        format!(
            "{endpoint}/api/{}/{}/revision/{}",
            self.kind.plural(),
            self.id,
            encode(revision, false)
        )
    }

    /// `{endpoint}/{id}/resolve/{commit}/{file}` (datasets under `datasets/`).
    pub fn file_url(&self, endpoint: &str, commit: &str, file: &str) -> String {
        let prefix = match self.kind {
            RepoKind::Model => "",
            RepoKind::Dataset => "datasets/",
        };
        format!(
            "{endpoint}/{prefix}{}/resolve/{}/{}",
            self.id,
            encode(commit, false),
            encode(file, true)
        )
    }
}

impl fmt::Display for RepoRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind == RepoKind::Dataset {
            write!(f, "datasets/")?;
        }
        write!(f, "{}", self.id)?;
        if self.revision != "main" {
            write!(f, "@{}", self.revision)?;
        }
        Ok(())
    }
}

/// Whether `s` is a full commit hash (40 lowercase hex digits).
pub(crate) fn is_commit(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The Hub's id rules: one or two parts of letters, digits, `.`, `_`, `-`; no `--` or `..`, no
/// part starting or ending with `.` or `-`; at most 96 characters.
fn check_id(id: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::Invalid(format!(
            "'{id}' is not a Hub repository id: {why}"
        )))
    };
    if id.is_empty() || id.len() > 96 {
        return bad("expected 1 to 96 characters");
    }
    let parts: Vec<&str> = id.split('/').collect();
    if parts.len() > 2 {
        return bad("expected NAME or ORG/NAME");
    }
    for p in parts {
        if p.is_empty()
            || !p
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return bad("only letters, digits, '.', '_' and '-' are allowed");
        }
        if p.contains("--") || p.contains("..") {
            return bad("'--' and '..' are not allowed");
        }
        if p.starts_with(['.', '-']) || p.ends_with(['.', '-']) {
            return bad("a part may not start or end with '.' or '-'");
        }
    }
    Ok(())
}

/// A branch, tag or commit: it names a file under `refs/`, so no `..`, no empty or hidden parts.
fn check_revision(rev: &str) -> Result<()> {
    let ok = !rev.is_empty()
        && rev.len() <= 256
        && rev.split('/').all(|p| !p.is_empty() && !p.starts_with('.'))
        && rev.bytes().all(|b| b.is_ascii_graphic() && b != b'\\');
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "'{rev}' is not a revision (a branch, tag or commit)"
        )))
    }
}

/// Percent-encodes all but unreserved characters (and `/` when `keep_slash`), as
/// `urllib.parse.quote` does for the Hub's URLs.
fn encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_revisions_and_urls() {
        let r = RepoRef::parse(RepoKind::Model, "openai-community/gpt2@v1.0").unwrap();
        assert_eq!(
            (r.id.as_str(), r.revision.as_str()),
            ("openai-community/gpt2", "v1.0")
        );
        assert_eq!(r.folder(), "models--openai-community--gpt2");
        assert_eq!(r.to_string(), "openai-community/gpt2@v1.0");
        let d = RepoRef::parse_url("datasets/OpenAssistant/oasst1@refs/convert/parquet").unwrap();
        assert_eq!(d.folder(), "datasets--OpenAssistant--oasst1");
        assert_eq!(
            d.info_url("http://h", &d.revision),
            "http://h/api/datasets/OpenAssistant/oasst1/revision/refs%2Fconvert%2Fparquet"
        );
        assert_eq!(
            d.file_url("http://h", "abc", "data/train 1.parquet"),
            "http://h/datasets/OpenAssistant/oasst1/resolve/abc/data/train%201.parquet"
        );
        assert_eq!(
            RepoRef::parse(RepoKind::Model, "distilgpt2").unwrap().revision,
            "main"
        );
        for bad in [
            "",
            "a/b/c",
            "../x",
            "a--b",
            "-a",
            "a b",
            "a/.b",
            "x@",
            "x@../y",
            "model.gguf",
            "chat.json",
        ] {
            assert!(RepoRef::parse(RepoKind::Model, bad).is_err(), "{bad}");
        }
        assert!(RepoRef::parse(RepoKind::Model, "Qwen/Qwen2.5-0.5B").is_ok());
    }
}
