//! Models and datasets by Hub id (`distilgpt2`, `openai-community/gpt2@main`,
//! `hf://datasets/OpenAssistant/oasst1`), fetched over HTTPS into the cache layout Python's
//! `huggingface_hub` uses (`models--org--name/{blobs,snapshots,refs}`), so a model either tool
//! downloaded serves the other.
//!
//! The environment is `huggingface_hub`'s: `HF_ENDPOINT`, `HF_HOME`, `HF_HUB_CACHE`, `HF_TOKEN`
//! (or the token file), `HF_HUB_OFFLINE`. Downloads resume from a partial blob, are checked
//! against the size and hash the Hub states, and take only the files a model or a split needs.

mod cache;
mod error;
mod fetch;
mod http;
mod repo;
mod select;
mod settings;

pub use cache::Cache;
pub use error::{Error, Result};
pub use fetch::{Hub, Progress, Quiet, RepoInfo, Select, Snapshot};
pub use repo::{RepoKind, RepoRef};
pub use select::{dataset_files, model_files, tokenizer_files};
pub use settings::Settings;

use std::path::{Path, PathBuf};

/// What a model argument names: a local path, or a repository on the Hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Local(PathBuf),
    Hub(RepoRef),
}

impl Location {
    /// Reads a `--model`/`--init`/`--tokenizer` argument. `hf://…` is always the Hub; an existing
    /// path is always local. Otherwise a well-formed repo id (`name`, `org/name`, optionally
    /// `@revision`) is the Hub unless its first part is an existing local folder, so a typo in
    /// `runs/chat1` reports a missing path instead of asking the network.
    pub fn parse(spec: &str) -> Location {
        if let Some(rest) = spec.strip_prefix("hf://") {
            if let Ok(r) = RepoRef::parse_url(rest) {
                return Location::Hub(r);
            }
            return Location::Local(PathBuf::from(spec));
        }
        let path = Path::new(spec);
        if path.exists() || path.is_absolute() || spec.starts_with('.') {
            return Location::Local(path.to_path_buf());
        }
        let first = spec.split('/').next().unwrap_or_default();
        if spec.contains('/') && Path::new(first).is_dir() {
            return Location::Local(path.to_path_buf());
        }
        match RepoRef::parse(RepoKind::Model, spec) {
            Ok(r) => Location::Hub(r),
            Err(_) => Location::Local(path.to_path_buf()),
        }
    }
}

/// The local folder a model argument stands for: the path itself, or the snapshot of the Hub
/// repository it names (fetched unless cached; only config, weights, tokenizer and generation
/// files). A repo holding a model chatforge cannot run is refused before its weights download.
pub fn model_path(spec: &Path, progress: &dyn Progress) -> Result<PathBuf> {
    fetch_as(spec, progress, &model_files)
}

/// Like [`model_path`] for a tokenizer: only the tokenizer files are fetched.
pub fn tokenizer_path(spec: &Path, progress: &dyn Progress) -> Result<PathBuf> {
    fetch_as(spec, progress, &tokenizer_files)
}

fn fetch_as(spec: &Path, progress: &dyn Progress, select: Select<'_>) -> Result<PathBuf> {
    let Some(s) = spec.to_str() else {
        return Ok(spec.to_path_buf());
    };
    match Location::parse(s) {
        Location::Local(p) => Ok(p),
        Location::Hub(repo) => {
            let hub = Hub::new(Settings::from_env())?;
            Ok(hub.snapshot(&repo, select, progress)?.dir)
        }
    }
}
