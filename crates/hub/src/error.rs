use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A malformed repo id, revision or `hf://` address.
    #[error("{0}")]
    Invalid(String),
    /// The Hub could not be reached (connection refused, DNS, timeout): the cache may still serve.
    #[error("cannot reach the Hub at {endpoint}: {msg}")]
    Unreachable { endpoint: String, msg: String },
    /// The Hub answered, but not with the file: 401/403/404 and the like, with what to do.
    #[error("{0}")]
    Refused(String),
    /// `HF_HUB_OFFLINE` is set (or the Hub is unreachable) and the cache lacks what is needed.
    #[error("{0}")]
    NotCached(String),
    /// A download that does not match the size or hash the Hub stated.
    #[error("{0}")]
    Corrupt(String),
    /// The repository holds something chatforge cannot use (no weights, another architecture).
    #[error("{0}")]
    Unsupported(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}
