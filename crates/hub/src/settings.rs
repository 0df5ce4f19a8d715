//! Where the Hub is and where its files are kept, from the environment `huggingface_hub` reads.

use std::path::PathBuf;

/// The Hub client's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `HF_ENDPOINT`, without a trailing slash (default `https://huggingface.co`).
    pub endpoint: String,
    /// `HF_HUB_CACHE`, else `$HF_HOME/hub` (`HF_HOME` defaulting to `$XDG_CACHE_HOME/huggingface`,
    /// else `~/.cache/huggingface`).
    pub cache: PathBuf,
    /// `HF_TOKEN`, else the token file `huggingface-cli login` writes (`HF_TOKEN_PATH`, else
    /// `$HF_HOME/token`).
    pub token: Option<String>,
    /// `HF_HUB_OFFLINE` set to 1/true/yes/on: only the cache is read.
    pub offline: bool,
}

impl Settings {
    pub fn from_env() -> Settings {
        Settings::from_vars(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    /// The settings from a variable lookup (the environment, or a test's table).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Settings {
        let home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            let cache = var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .unwrap_or_else(|| PathBuf::from(".cache"));
            cache.join("huggingface")
        });
        let cache = var("HF_HUB_CACHE")
            .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join("hub"));
        let token_file = var("HF_TOKEN_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join("token"));
        let token = var("HF_TOKEN")
            .or_else(|| std::fs::read_to_string(token_file).ok())
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        let endpoint = var("HF_ENDPOINT").unwrap_or_else(|| "https://huggingface.co".into());
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        });
        Settings {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            cache,
            token,
            offline,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(pairs: &[(&str, &str)]) -> Settings {
        Settings::from_vars(|k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()))
    }

    #[test]
    fn defaults_follow_huggingface_hub() {
        let s = from(&[("HOME", "/home/u")]);
        assert_eq!(s.cache, PathBuf::from("/home/u/.cache/huggingface/hub"));
        assert_eq!(s.endpoint, "https://huggingface.co");
        assert!(!s.offline);
        let s = from(&[("HOME", "/home/u"), ("XDG_CACHE_HOME", "/x")]);
        assert_eq!(s.cache, PathBuf::from("/x/huggingface/hub"));
        let s = from(&[("HF_HOME", "/h"), ("HF_ENDPOINT", "http://127.0.0.1:9/")]);
        assert_eq!(s.cache, PathBuf::from("/h/hub"));
        assert_eq!(s.endpoint, "http://127.0.0.1:9");
        let s = from(&[
            ("HF_HOME", "/h"),
            ("HF_HUB_CACHE", "/c"),
            ("HF_HUB_OFFLINE", "TRUE"),
        ]);
        assert_eq!(s.cache, PathBuf::from("/c"));
        assert!(s.offline);
        assert!(!from(&[("HF_HUB_OFFLINE", "0")]).offline);
    }

    #[test]
    fn token_from_variable_or_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "hf_file\n").unwrap();
        let home = dir.path().to_str().unwrap();
        assert_eq!(from(&[("HF_HOME", home)]).token.as_deref(), Some("hf_file"));
        let s = from(&[("HF_HOME", home), ("HF_TOKEN", "hf_var")]);
        assert_eq!(s.token.as_deref(), Some("hf_var"));
        assert_eq!(from(&[("HF_HOME", "/nonexistent")]).token, None);
    }
}
