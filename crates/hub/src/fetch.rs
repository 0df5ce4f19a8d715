//! Fetching a repository's files into the cache: resolve the revision to a commit, pick the
//! files, download each blob once (resuming a partial one, checking its size and hash), and link
//! it into the commit's snapshot. Offline, or with the Hub unreachable, the cache alone serves.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::Digest as _;

use crate::cache::{Cache, check_etag, check_file_name};
use crate::http::{Http, Subject};
use crate::repo::RepoKind;
use crate::{Error, RepoRef, Result, Settings};

/// Progress of a fetch, for a progress bar; every method defaults to nothing.
pub trait Progress {
    /// A file starts downloading: its size if known and the bytes a resumed download already has.
    fn start(&self, _file: &str, _total: Option<u64>, _done: u64) {}
    fn advance(&self, _bytes: u64) {}
    fn finish(&self) {}
    /// Something the user should know (the cache served because the Hub was unreachable).
    fn note(&self, _msg: &str) {}
}

/// No progress shown.
pub struct Quiet;

impl Progress for Quiet {}

/// A revision of a repository as the Hub lists it.
#[derive(Debug, Clone)]
pub struct RepoInfo {
    pub commit: String,
    pub files: Vec<String>,
}

/// Files of a repository at a commit, in the cache.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub commit: String,
    /// `snapshots/{commit}` in the cache.
    pub dir: PathBuf,
    /// The files fetched (or found cached), relative to `dir`.
    pub files: Vec<String>,
}

/// A Hub client over one cache.
pub struct Hub {
    settings: Settings,
    cache: Cache,
    http: Http,
}

/// Picks the files a use needs from a repository's listing.
pub type Select<'a> = &'a dyn Fn(&[String]) -> Result<Vec<String>>;

impl Hub {
    pub fn new(settings: Settings) -> Result<Hub> {
        if !settings.endpoint.starts_with("https://") && !settings.endpoint.starts_with("http://") {
            return Err(Error::Invalid(format!(
                "HF_ENDPOINT '{}' is not an http(s) URL",
                settings.endpoint
            )));
        }
        Ok(Hub {
            cache: Cache::new(&settings.cache),
            http: Http::new(&settings.endpoint, settings.token.clone()),
            settings,
        })
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The commit `repo`'s revision points at, and its files.
    pub fn info(&self, repo: &RepoRef) -> Result<RepoInfo> {
        let subject = Subject {
            repo: &repo.id,
            revision: &repo.revision,
            file: None,
        };
        let v = self
            .http
            .json(&repo.info_url(&self.settings.endpoint, &repo.revision), &subject)?;
        let commit = v["sha"]
            .as_str()
            .filter(|c| crate::repo::is_commit(c))
            .ok_or_else(|| Error::Refused(format!("{repo}: the Hub's answer names no commit (\"sha\")")))?;
        let mut files = Vec::new();
        for s in v["siblings"].as_array().into_iter().flatten() {
            if let Some(name) = s["rfilename"].as_str() {
                check_file_name(name)?;
                files.push(name.to_string());
            }
        }
        Ok(RepoInfo {
            commit: commit.to_string(),
            files,
        })
    }

    /// The files `select` picks from `repo`, in the cache: fetched unless there already, or
    /// read from the cache alone when offline or when the Hub cannot be reached. For a model,
    /// `config.json` comes first and a model chatforge cannot run stops the fetch.
    pub fn snapshot(&self, repo: &RepoRef, select: Select<'_>, progress: &dyn Progress) -> Result<Snapshot> {
        if self.settings.offline {
            return self.cached(repo, select, "HF_HUB_OFFLINE is set");
        }
        let info = match self.info(repo) {
            Ok(info) => info,
            Err(e @ Error::Unreachable { .. }) => {
                let snap = self.cached(repo, select, &e.to_string())?;
                progress.note(&format!("{e}; using the cached snapshot {}", snap.commit));
                return Ok(snap);
            }
            Err(e) => return Err(e),
        };
        let mut files = select(&info.files)?;
        if repo.kind == RepoKind::Model
            && let Some(i) = files.iter().position(|f| f == "config.json")
        {
            files.swap(0, i);
        }
        self.cache.write_ref(repo, &info.commit)?;
        let dir = self.cache.snapshot_dir(repo, &info.commit);
        for (i, file) in files.iter().enumerate() {
            self.fetch_file(repo, &info.commit, file, progress)?;
            if i == 0 && file == "config.json" {
                crate::select::check_model_config(&dir.join(file))?;
            }
        }
        Ok(Snapshot {
            commit: info.commit,
            dir,
            files,
        })
    }

    fn cached(&self, repo: &RepoRef, select: Select<'_>, why: &str) -> Result<Snapshot> {
        let not_cached = |what: String| {
            Error::NotCached(format!(
                "{what} in the Hugging Face cache at {} and {why}: fetch it once with network access, or point HF_HUB_CACHE at a cache that has it",
                self.cache.root().display()
            ))
        };
        let Some(commit) = self.cache.cached_commit(repo) else {
            return Err(not_cached(format!("{repo} is not")));
        };
        let dir = self.cache.snapshot_dir(repo, &commit);
        let cached = self.cache.snapshot_files(repo, &commit);
        let files =
            select(&cached).map_err(|e| not_cached(format!("{repo}@{commit} is incomplete ({e})")))?;
        if repo.kind == RepoKind::Model && files.iter().any(|f| f == "config.json") {
            crate::select::check_model_config(&dir.join("config.json"))?;
        }
        Ok(Snapshot { commit, dir, files })
    }

    /// Makes `snapshots/{commit}/{file}` present: linked to its blob, downloaded if missing.
    fn fetch_file(&self, repo: &RepoRef, commit: &str, file: &str, progress: &dyn Progress) -> Result<()> {
        check_file_name(file)?;
        let link = self.cache.snapshot_dir(repo, commit).join(file);
        if link.is_file() {
            return Ok(());
        }
        let subject = Subject {
            repo: &repo.id,
            revision: commit,
            file: Some(file),
        };
        let url = repo.file_url(&self.settings.endpoint, commit, file);
        let meta = self.http.file_meta(&url, &subject)?;
        check_etag(&meta.etag)?;
        let blob = self.cache.blob(repo, &meta.etag);
        // One process downloads a blob at a time (the lock file huggingface_hub uses too).
        let lock_path = self.cache.lock_file(repo, &meta.etag);
        if let Some(dir) = lock_path.parent() {
            fs::create_dir_all(dir).map_err(Error::io(dir))?;
        }
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(Error::io(&lock_path))?;
        lock.lock().map_err(Error::io(&lock_path))?;
        let present = fs::metadata(&blob).is_ok_and(|m| meta.size.is_none_or(|s| m.len() == s));
        if !present {
            self.download_blob(&blob, &meta, &subject, file, progress)?;
        }
        drop(lock);
        self.cache.link(repo, commit, file, &meta.etag)
    }

    fn download_blob(
        &self,
        blob: &Path,
        meta: &crate::http::FileMeta,
        subject: &Subject,
        file: &str,
        progress: &dyn Progress,
    ) -> Result<()> {
        let partial = PathBuf::from(format!("{}.incomplete", blob.display()));
        if let Some(dir) = blob.parent() {
            fs::create_dir_all(dir).map_err(Error::io(dir))?;
        }
        let mut hash = Hash::for_etag(&meta.etag, meta.size);
        let mut have = fs::metadata(&partial).map_or(0, |m| m.len());
        if meta.size.is_some_and(|s| have > s) {
            have = 0;
        }
        let (ranged, mut body) = self.http.download(&meta.location, have, subject)?;
        let mut out = if ranged && have > 0 {
            // Resume: the hash takes the bytes already there first.
            let mut f = File::open(&partial).map_err(Error::io(&partial))?;
            copy_into(&mut f, &mut hash, &partial)?;
            OpenOptions::new()
                .append(true)
                .open(&partial)
                .map_err(Error::io(&partial))?
        } else {
            have = 0;
            File::create(&partial).map_err(Error::io(&partial))?
        };
        progress.start(file, meta.size, have);
        let mut total = have;
        let mut buf = vec![0u8; 1 << 18];
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    progress.finish();
                    return Err(self.http.unreachable(format!(
                        "the download of {file} stopped after {total} bytes ({e}); run again to resume it"
                    )));
                }
            };
            total += n as u64;
            if meta.size.is_some_and(|s| total > s) {
                let _ = fs::remove_file(&partial);
                return Err(Error::Corrupt(format!(
                    "{file}: the Hub sent more than the {} bytes it announced; the partial download was removed",
                    meta.size.unwrap_or_default()
                )));
            }
            out.write_all(&buf[..n]).map_err(Error::io(&partial))?;
            hash.update(&buf[..n]);
            progress.advance(n as u64);
        }
        progress.finish();
        out.sync_all().map_err(Error::io(&partial))?;
        drop(out);
        if let Some(s) = meta.size
            && total < s
        {
            return Err(self.http.unreachable(format!(
                "the download of {file} ended after {total} of {s} bytes; run again to resume it"
            )));
        }
        if let Some(got) = hash.mismatch(&meta.etag) {
            let _ = fs::remove_file(&partial);
            return Err(Error::Corrupt(format!(
                "{file} ({}@{}): the downloaded bytes hash to {got}, not the {} the Hub states; the corrupt download was removed, run again to fetch it anew",
                subject.repo, subject.revision, meta.etag
            )));
        }
        fs::rename(&partial, blob).map_err(Error::io(blob))
    }
}

fn copy_into(f: &mut File, hash: &mut Hash, path: &Path) -> Result<()> {
    let mut buf = vec![0u8; 1 << 18];
    loop {
        let n = f.read(&mut buf).map_err(Error::io(path))?;
        if n == 0 {
            return Ok(());
        }
        hash.update(&buf[..n]);
    }
}

/// The check an ETag allows: a 64-hex ETag is the LFS file's sha256; a 40-hex one is the git
/// blob id (sha1 over `blob {len}\0` and the bytes, so the size must be known up front); anything
/// else (Xet hashes) is checked by size only.
enum Hash {
    Sha256(sha2::Sha256),
    GitBlob(sha1::Sha1),
    None,
}

impl Hash {
    fn for_etag(etag: &str, size: Option<u64>) -> Hash {
        let hex = etag.bytes().all(|b| b.is_ascii_hexdigit());
        match (etag.len(), size) {
            (64, _) if hex => Hash::Sha256(sha2::Sha256::new()),
            (40, Some(len)) if hex => {
                let mut h = sha1::Sha1::new();
                h.update(format!("blob {len}\0").as_bytes());
                Hash::GitBlob(h)
            }
            _ => Hash::None,
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            Hash::Sha256(h) => h.update(bytes),
            Hash::GitBlob(h) => h.update(bytes),
            Hash::None => {}
        }
    }

    /// The hash found, when it is not the ETag.
    fn mismatch(self, etag: &str) -> Option<String> {
        let got = match self {
            Hash::Sha256(h) => hex(&h.finalize()),
            Hash::GitBlob(h) => hex(&h.finalize()),
            Hash::None => return None,
        };
        (!got.eq_ignore_ascii_case(etag)).then_some(got)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
