use std::fmt;
use std::path::PathBuf;

/// Where in an input a problem was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pos {
    /// 1-based line number.
    Line(usize),
    /// Byte offset (binary files such as shards).
    Offset(u64),
    /// 1-based item number where the format gives no lines (YAML lists).
    Item(usize),
    /// 1-based row of a table (parquet).
    Row(usize),
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pos::Line(n) => write!(f, "line {n}"),
            Pos::Offset(n) => write!(f, "byte {n}"),
            Pos::Item(n) => write!(f, "item {n}"),
            Pos::Row(n) => write!(f, "row {n}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// One record is malformed; the rest of the file may be fine (`--skip-invalid` skips it).
    #[error("{}, {pos}: {msg}", path.display())]
    Record { path: PathBuf, pos: Pos, msg: String },
    /// The file as a whole cannot be read: empty, not UTF-8, unknown format, bad syntax.
    #[error("{}: {msg}", path.display())]
    File { path: PathBuf, msg: String },
    /// A token shard is truncated, corrupt or of another version.
    #[error("{}: corrupt shard: {msg}", path.display())]
    Shard { path: PathBuf, msg: String },
    /// An option or argument that cannot work.
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn file(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::File {
            path: path.into(),
            msg: msg.into(),
        }
    }

    pub(crate) fn record(path: impl Into<PathBuf>, pos: Pos, msg: impl Into<String>) -> Self {
        Error::Record {
            path: path.into(),
            pos,
            msg: msg.into(),
        }
    }

    pub(crate) fn shard(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Shard {
            path: path.into(),
            msg: msg.into(),
        }
    }
}
