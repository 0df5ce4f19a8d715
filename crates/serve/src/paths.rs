//! Paths from requests, kept inside the data root: relative, no `..`, and no symlink leading out.

use std::path::{Component, Path, PathBuf};

use crate::{Error, Result};

/// Ids name directories: letters, digits, `-`, `_` and `.`, not starting with a dot.
pub fn check_id(id: &str) -> Result<()> {
    if id.is_empty()
        || id.len() > 128
        || id.starts_with('.')
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(Error::BadPath(format!("{id:?} is not a valid id")));
    }
    Ok(())
}

/// `rel` resolved under `root`: it must be relative and must not climb out, and when it exists
/// its canonical form (symlinks followed) must still lie inside the canonical root.
pub fn inside(root: &Path, rel: &str) -> Result<PathBuf> {
    let p = Path::new(rel);
    if rel.is_empty() || p.is_absolute() || rel.contains('\0') {
        return Err(Error::BadPath(format!(
            "{rel:?}: give a path relative to the data root"
        )));
    }
    for c in p.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            _ => return Err(Error::BadPath(format!("{rel:?}: '..' and roots are not allowed"))),
        }
    }
    let full = root.join(p);
    // Follow symlinks of whatever part exists.
    let mut existing = full.clone();
    while !existing.exists() {
        match existing.parent() {
            Some(parent) => existing = parent.to_path_buf(),
            None => break,
        }
    }
    if existing.exists() {
        let canon_root = root.canonicalize().map_err(|e| Error::Io {
            path: root.to_path_buf(),
            source: e,
        })?;
        let canon = existing.canonicalize().map_err(|e| Error::Io {
            path: existing.clone(),
            source: e,
        })?;
        if !canon.starts_with(&canon_root) {
            return Err(Error::BadPath(format!("{rel:?} leads outside the data root")));
        }
    }
    Ok(full)
}

/// The directories requests name by id, each resolved through [`inside`]: a symlink under the
/// data root that leads out of it is refused like `..`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    Runs,
    Tokenizers,
    Exports,
}

impl Area {
    pub fn parse(s: &str) -> Option<Area> {
        Some(match s {
            // Seed 002 keeps trained models under `artifacts/models/<run_id>`.
            "runs" | "models" => Area::Runs,
            "tokenizers" => Area::Tokenizers,
            "exports" => Area::Exports,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Area::Runs => "runs",
            Area::Tokenizers => "tokenizers",
            Area::Exports => "exports",
        }
    }

    /// `<root>/<area>/<id>`, checked: a valid id, and no symlink out of the root.
    pub fn dir(self, root: &Path, id: &str) -> Result<PathBuf> {
        check_id(id)?;
        inside(root, &format!("{}/{id}", self.as_str()))
    }
}

/// `text` with the data root's absolute path taken out (error messages, metrics), so answers
/// never show where the server keeps its files.
pub fn scrub(text: &str, root: &Path) -> String {
    let mut out = text.to_string();
    let canon = root.canonicalize().ok();
    for r in canon.iter().map(PathBuf::as_path).chain([root]) {
        let r = r.display().to_string();
        if r.len() > 1 {
            out = out.replace(&format!("{r}/"), "").replace(&r, ".");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn paths_stay_inside_the_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("data")).unwrap();
        std::fs::write(d.path().join("secret"), "x").unwrap();
        assert!(inside(&root, "data/train.bin").is_ok());
        assert!(inside(&root, "new/dir/file").is_ok());
        for bad in [
            "",
            "/etc/passwd",
            "../secret",
            "data/../../secret",
            "data/./../..",
        ] {
            assert!(inside(&root, bad).is_err(), "{bad:?} accepted");
        }
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(d.path(), root.join("escape")).unwrap();
            assert!(inside(&root, "escape/secret").is_err());
            assert!(inside(&root, "escape").is_err());
        }
        assert!(check_id("20261122-064512-3f9a1c").is_ok());
        #[cfg(unix)]
        {
            // A run id whose directory is a symlink out of the root is refused.
            std::fs::create_dir_all(root.join("runs")).unwrap();
            std::os::unix::fs::symlink(d.path(), root.join("runs/evil")).unwrap();
            assert!(Area::Runs.dir(&root, "evil").is_err());
            assert!(Area::Runs.dir(&root, "fine").is_ok());
        }
        let msg = format!("{}/runs/x/best: missing", root.display());
        assert_eq!(scrub(&msg, &root), "runs/x/best: missing");
        for bad in ["", "..", ".hidden", "a/b", "a b", "x\0"] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
    }
}
