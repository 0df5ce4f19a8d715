use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Data(#[from] chatforge_data::Error),
    #[error("{}: {msg}", path.display())]
    Load { path: PathBuf, msg: String },
    #[error("tokenizer: {0}")]
    Tokenizers(String),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<tokenizers::Error> for Error {
    fn from(e: tokenizers::Error) -> Self {
        Error::Tokenizers(e.to_string())
    }
}
