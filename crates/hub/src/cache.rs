//! The cache layout Python's `huggingface_hub` uses, so both tools share downloads:
//!
//! ```text
//! {cache}/models--org--name/
//!     blobs/{etag}                      file contents, named by the Hub's ETag (sha256 or git blob id)
//!     blobs/{etag}.incomplete           a download in progress (resumed from its length)
//!     refs/{revision}                   the commit a branch or tag pointed at when last fetched
//!     snapshots/{commit}/{file}         relative symlinks into blobs/
//! {cache}/.locks/models--org--name/{etag}.lock
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use crate::repo::{RepoRef, is_commit};
use crate::{Error, Result};

/// A Hugging Face cache folder.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    pub fn new(root: impl Into<PathBuf>) -> Cache {
        Cache { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn repo_dir(&self, repo: &RepoRef) -> PathBuf {
        self.root.join(repo.folder())
    }

    pub fn snapshot_dir(&self, repo: &RepoRef, commit: &str) -> PathBuf {
        self.repo_dir(repo).join("snapshots").join(commit)
    }

    pub(crate) fn blob(&self, repo: &RepoRef, etag: &str) -> PathBuf {
        self.repo_dir(repo).join("blobs").join(etag)
    }

    pub(crate) fn lock_file(&self, repo: &RepoRef, etag: &str) -> PathBuf {
        self.root
            .join(".locks")
            .join(repo.folder())
            .join(format!("{etag}.lock"))
    }

    /// The commit `repo`'s revision resolves to from the cache alone: the revision itself when it
    /// is a commit, else what `refs/{revision}` recorded.
    pub fn cached_commit(&self, repo: &RepoRef) -> Option<String> {
        if is_commit(&repo.revision) {
            return Some(repo.revision.clone());
        }
        let recorded = fs::read_to_string(self.repo_dir(repo).join("refs").join(&repo.revision)).ok()?;
        let commit = recorded.trim();
        is_commit(commit).then(|| commit.to_string())
    }

    /// Records that `repo`'s revision (a branch or tag) points at `commit`.
    pub(crate) fn write_ref(&self, repo: &RepoRef, commit: &str) -> Result<()> {
        if repo.revision == commit {
            return Ok(());
        }
        let path = self.repo_dir(repo).join("refs").join(&repo.revision);
        if fs::read_to_string(&path).is_ok_and(|c| c.trim() == commit) {
            return Ok(());
        }
        chatforge_base::atomic_write(&path, |w| std::io::Write::write_all(w, commit.as_bytes()))
            .map_err(Error::io(&path))
    }

    /// The files of a cached snapshot (relative paths, `/`-separated) whose blobs are present.
    pub fn snapshot_files(&self, repo: &RepoRef, commit: &str) -> Vec<String> {
        fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) {
            let Ok(entries) = fs::read_dir(dir) else { return };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let rel = if prefix.is_empty() {
                    name
                } else {
                    format!("{prefix}/{name}")
                };
                let path = e.path();
                if path.is_dir() {
                    walk(&path, &rel, out);
                } else if path.is_file() {
                    out.push(rel);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.snapshot_dir(repo, commit), "", &mut out);
        out.sort();
        out
    }

    /// Points `snapshots/{commit}/{file}` at `blobs/{etag}` by a relative symlink, as
    /// `huggingface_hub` does (a copy where symlinks are unavailable).
    pub(crate) fn link(&self, repo: &RepoRef, commit: &str, file: &str, etag: &str) -> Result<()> {
        let link = self.snapshot_dir(repo, commit).join(file);
        let parent = link.parent().unwrap_or(&self.root);
        fs::create_dir_all(parent).map_err(Error::io(parent))?;
        let _ = fs::remove_file(&link);
        #[cfg(unix)]
        {
            let depth = file.split('/').count() + 1;
            let target = PathBuf::from("../".repeat(depth)).join("blobs").join(etag);
            std::os::unix::fs::symlink(&target, &link).map_err(Error::io(&link))
        }
        #[cfg(not(unix))]
        {
            fs::copy(self.blob(repo, etag), &link)
                .map(|_| ())
                .map_err(Error::io(&link))
        }
    }
}

/// A file name from the Hub is safe to join under a snapshot: relative, `/`-separated, with no
/// empty, `.` or `..` parts.
pub(crate) fn check_file_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 1024
        && !name.contains(['\\', '\0'])
        && name.split('/').all(|p| !p.is_empty() && p != "." && p != "..");
    if ok {
        Ok(())
    } else {
        Err(Error::Refused(format!(
            "the Hub listed a file with an unusable name: {name:?}"
        )))
    }
}

/// An ETag names a blob file: letters, digits, `-`, `_`, `.` (not leading).
pub(crate) fn check_etag(etag: &str) -> Result<()> {
    let ok = !etag.is_empty()
        && etag.len() <= 128
        && !etag.starts_with('.')
        && etag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::Refused(format!("the Hub sent an unusable ETag: {etag:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RepoKind;

    #[test]
    fn layout_refs_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let repo = RepoRef::parse(RepoKind::Model, "org/m").unwrap();
        let commit = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(cache.cached_commit(&repo), None);
        cache.write_ref(&repo, commit).unwrap();
        assert_eq!(cache.cached_commit(&repo).as_deref(), Some(commit));
        let blob = cache.blob(&repo, "e1");
        fs::create_dir_all(blob.parent().unwrap()).unwrap();
        fs::write(&blob, b"x").unwrap();
        cache.link(&repo, commit, "sub/a.json", "e1").unwrap();
        cache.link(&repo, commit, "b.json", "e1").unwrap();
        assert_eq!(cache.snapshot_files(&repo, commit), ["b.json", "sub/a.json"]);
        let snap = cache.snapshot_dir(&repo, commit);
        assert_eq!(fs::read(snap.join("sub/a.json")).unwrap(), b"x");
        assert_eq!(
            fs::read_link(snap.join("sub/a.json")).unwrap(),
            PathBuf::from("../../../blobs/e1")
        );
        for bad in ["../x", "/etc/passwd", "a//b", "a/./b", ""] {
            assert!(check_file_name(bad).is_err(), "{bad}");
        }
        assert!(check_etag("../x").is_err() && check_etag("abc-1").is_ok());
    }
}
