//! A stand-in for the Hugging Face Hub on a loopback port, serving repositories a test builds
//! with the Hub's URL layout and headers: repo info with its files, the tree listing,
//! `resolve/{revision}/{file}` (git files answered directly with a git-blob ETag; LFS files
//! redirected to a "CDN" on another host name, `localhost`, with `X-Linked-Etag`/`X-Linked-Size`), byte ranges, and the 401/403/404
//! answers with `X-Error-Code`. Knobs cut a download short or corrupt one, and every request is
//! logged, so tests can prove a cache hit asked nothing.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use sha1::Digest as _;

/// Who may read a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    Public,
    /// Needs this bearer token (401 `RepoNotFound` without it, as the Hub hides private repos).
    Private(String),
    /// Needs this bearer token (403 `GatedRepo` for any other or none).
    Gated(String),
}

struct Repo {
    access: Access,
    /// Branch and tag names → commit.
    refs: BTreeMap<String, String>,
    /// Commit → files.
    commits: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
}

#[derive(Default)]
struct State {
    /// `models/org/name` or `datasets/org/name` → repository.
    repos: BTreeMap<String, Repo>,
    /// The next body sent for this file path is cut after this many bytes.
    cut: Option<(String, usize)>,
    /// Files whose bodies are served with one byte flipped.
    corrupt: Vec<String>,
    /// Old model ids → where the repository moved (answered with a relative 307, as the Hub
    /// answers `distilgpt2` with `distilbert/distilgpt2`).
    moved: BTreeMap<String, String>,
    log: Vec<String>,
}

/// The fixture Hub; it serves until the test process ends.
#[derive(Clone)]
pub struct FixtureHub {
    endpoint: String,
    state: Arc<Mutex<State>>,
}

/// Whether the Hub would keep `path` in LFS (weights, archives, data files).
fn is_lfs(path: &str) -> bool {
    [".safetensors", ".bin", ".parquet", ".gz", ".gguf", ".onnx"]
        .iter()
        .any(|e| path.ends_with(e))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256(data: &[u8]) -> String {
    hex(&sha2::Sha256::digest(data))
}

/// The git blob id of a file: sha1 over `blob {len}\0` and the bytes.
fn git_blob_id(data: &[u8]) -> String {
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", data.len()).as_bytes());
    h.update(data);
    hex(&h.finalize())
}

impl FixtureHub {
    pub fn start() -> FixtureHub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let hub = FixtureHub {
            endpoint,
            state: Arc::new(Mutex::new(State::default())),
        };
        let server = hub.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let server = server.clone();
                std::thread::spawn(move || server.serve(stream));
            }
        });
        hub
    }

    /// `http://127.0.0.1:PORT`, for `HF_ENDPOINT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Publishes `files` as a new commit of `repo` (`org/name`, or `datasets/org/name`) on `main`
    /// and returns the commit; earlier commits stay reachable by hash.
    pub fn publish(&self, repo: &str, files: &[(&str, &[u8])]) -> String {
        let key = Self::key(repo);
        let mut st = self.state.lock().unwrap();
        let n = st.repos.get(&key).map_or(0, |r| r.commits.len());
        let mut all = Vec::new();
        for (p, d) in files {
            all.extend_from_slice(p.as_bytes());
            all.extend_from_slice(d);
        }
        let commit = git_blob_id(&[key.as_bytes(), &n.to_le_bytes(), &all].concat());
        let r = st.repos.entry(key).or_insert_with(|| Repo {
            access: Access::Public,
            refs: BTreeMap::new(),
            commits: BTreeMap::new(),
        });
        let files = files.iter().map(|(p, d)| (p.to_string(), d.to_vec())).collect();
        r.commits.insert(commit.clone(), files);
        r.refs.insert("main".into(), commit.clone());
        commit
    }

    /// Publishes every file of the folder `dir` (an HF folder) as a new commit of `repo`.
    pub fn publish_folder(&self, repo: &str, dir: &std::path::Path) -> String {
        let files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .map(|p| {
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    std::fs::read(&p).unwrap(),
                )
            })
            .collect();
        let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect();
        self.publish(repo, &refs)
    }

    /// Points a branch or tag of `repo` at `commit`.
    pub fn tag(&self, repo: &str, name: &str, commit: &str) {
        let mut st = self.state.lock().unwrap();
        st.repos
            .get_mut(&Self::key(repo))
            .unwrap()
            .refs
            .insert(name.into(), commit.into());
    }

    /// Requests for model `old` are redirected to `new` (a relative 307), API and files alike.
    pub fn moved(&self, old: &str, new: &str) {
        self.state.lock().unwrap().moved.insert(old.into(), new.into());
    }

    pub fn set_access(&self, repo: &str, access: Access) {
        self.state
            .lock()
            .unwrap()
            .repos
            .get_mut(&Self::key(repo))
            .unwrap()
            .access = access;
    }

    /// The next body served for `file` stops after `bytes` bytes (the connection drops).
    pub fn cut_next(&self, file: &str, bytes: usize) {
        self.state.lock().unwrap().cut = Some((file.into(), bytes));
    }

    /// Every later body served for `file` has one byte flipped.
    pub fn corrupt(&self, file: &str) {
        self.state.lock().unwrap().corrupt.push(file.into());
    }

    /// The requests served so far (`METHOD /path [range]`), and forgets them.
    pub fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut self.state.lock().unwrap().log)
    }

    fn key(repo: &str) -> String {
        if repo.starts_with("datasets/") {
            repo.to_string()
        } else {
            format!("models/{repo}")
        }
    }

    fn serve(&self, stream: TcpStream) {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, target) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        let mut headers = BTreeMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let range = headers.get("range").cloned();
        self.state.lock().unwrap().log.push(
            format!("{method} {target} {}", range.as_deref().unwrap_or(""))
                .trim_end()
                .to_string(),
        );
        let token = headers
            .get("authorization")
            .and_then(|a| a.strip_prefix("Bearer "))
            .map(str::to_string);
        let reply = self.route(&target, token.as_deref(), range.as_deref());
        let _ = reply.send(stream, method == "HEAD");
    }

    fn route(&self, target: &str, token: Option<&str>, range: Option<&str>) -> Reply {
        let path = target.split('?').next().unwrap_or("");
        let path = decode(path);
        let moved = self.state.lock().unwrap().moved.clone();
        for (old, new) in &moved {
            for prefix in ["/api/models/", "/"] {
                if let Some(rest) = path.strip_prefix(&format!("{prefix}{old}/")) {
                    return Reply::status(307, "").header("Location", &format!("{prefix}{new}/{rest}"));
                }
            }
        }
        if let Some(sha) = path.strip_prefix("/cdn/") {
            return self.cdn(sha, range);
        }
        if let Some(rest) = path.strip_prefix("/api/") {
            return self.api(rest, token);
        }
        let (key, rest) = match path.strip_prefix("/datasets/") {
            Some(r) => ("datasets/", r),
            None => ("models/", &path[1.min(path.len())..]),
        };
        let Some((id, rest)) = split_id(rest, "/resolve/") else {
            return Reply::status(404, "NotFound");
        };
        let Some((rev, file)) = rest.split_once('/') else {
            return Reply::status(404, "EntryNotFound");
        };
        let st = self.state.lock().unwrap();
        let (repo, commit) = match st.lookup(&format!("{key}{id}"), rev, token) {
            Ok(x) => x,
            Err(r) => return r,
        };
        let Some(data) = repo.commits[&commit].get(file) else {
            return Reply::status(404, "EntryNotFound").header("X-Repo-Commit", &commit);
        };
        if is_lfs(file) {
            let sha = sha256(data);
            return Reply::status(302, "")
                .header(
                    "Location",
                    &format!("{}/cdn/{sha}", self.endpoint.replace("127.0.0.1", "localhost")),
                )
                .header("X-Linked-Etag", &format!("\"{sha}\""))
                .header("X-Linked-Size", &data.len().to_string())
                .header("X-Repo-Commit", &commit);
        }
        let (body, etag) = (st.body(file, data), git_blob_id(data));
        drop(st);
        Reply::bytes(body, range)
            .header("ETag", &format!("\"{etag}\""))
            .header("X-Repo-Commit", &commit)
            .cut(self.take_cut(file))
    }

    fn cdn(&self, sha: &str, range: Option<&str>) -> Reply {
        let st = self.state.lock().unwrap();
        let found = st
            .repos
            .values()
            .flat_map(|r| r.commits.values())
            .flat_map(|f| f.iter())
            .find(|(_, d)| sha256(d) == sha);
        let Some((file, data)) = found else {
            return Reply::status(404, "");
        };
        let (file, body) = (file.clone(), st.body(file, data));
        drop(st);
        Reply::bytes(body, range)
            .header("ETag", &format!("\"{sha}\""))
            .cut(self.take_cut(&file))
    }

    fn api(&self, rest: &str, token: Option<&str>) -> Reply {
        let (kind, rest) = rest.split_once('/').unwrap_or((rest, ""));
        let (id, rev, tree) = if let Some((id, rev)) = split_id(rest, "/revision/") {
            (id, rev, false)
        } else if let Some((id, rev)) = split_id(rest, "/tree/") {
            (id, rev, true)
        } else {
            return Reply::status(404, "NotFound");
        };
        let st = self.state.lock().unwrap();
        let (repo, commit) = match st.lookup(&format!("{kind}/{id}"), rev, token) {
            Ok(x) => x,
            Err(r) => return r,
        };
        let files = &repo.commits[&commit];
        let json = if tree {
            let entries: Vec<_> = files
                .iter()
                .map(|(p, d)| {
                    let mut e = serde_json::json!({"type": "file", "path": p, "size": d.len(), "oid": git_blob_id(d)});
                    if is_lfs(p) {
                        e["lfs"] = serde_json::json!({"oid": sha256(d), "size": d.len(), "pointerSize": 134});
                    }
                    e
                })
                .collect();
            serde_json::Value::Array(entries)
        } else {
            let siblings: Vec<_> = files
                .keys()
                .map(|p| serde_json::json!({"rfilename": p}))
                .collect();
            serde_json::json!({"id": id, "sha": commit, "private": repo.access != Access::Public, "siblings": siblings})
        };
        Reply::bytes(serde_json::to_vec(&json).unwrap(), None).header("Content-Type", "application/json")
    }

    fn take_cut(&self, file: &str) -> Option<usize> {
        let mut st = self.state.lock().unwrap();
        match &st.cut {
            Some((f, n)) if f == file => {
                let n = *n;
                st.cut = None;
                Some(n)
            }
            _ => None,
        }
    }
}

impl State {
    fn lookup(&self, key: &str, rev: &str, token: Option<&str>) -> Result<(&Repo, String), Reply> {
        let Some(repo) = self.repos.get(key) else {
            return Err(Reply::status(
                if token.is_some() { 404 } else { 401 },
                "RepoNotFound",
            ));
        };
        match &repo.access {
            Access::Private(t) if token != Some(t) => return Err(Reply::status(401, "RepoNotFound")),
            Access::Gated(t) if token != Some(t) => return Err(Reply::status(403, "GatedRepo")),
            _ => {}
        }
        let commit = match repo.refs.get(rev) {
            Some(c) => c.clone(),
            None if repo.commits.contains_key(rev) => rev.to_string(),
            None => return Err(Reply::status(404, "RevisionNotFound")),
        };
        Ok((repo, commit))
    }

    fn body(&self, file: &str, data: &[u8]) -> Vec<u8> {
        let mut body = data.to_vec();
        if self.corrupt.iter().any(|f| f == file)
            && let Some(b) = body.get_mut(data.len() / 2)
        {
            *b ^= 0xFF;
        }
        body
    }
}

/// `org/name/resolve/rest` split at `sep` into `("org/name", "rest")` (ids have one or two parts).
fn split_id<'a>(path: &'a str, sep: &str) -> Option<(&'a str, &'a str)> {
    let at = path.find(sep)?;
    Some((&path[..at], &path[at + sep.len()..]))
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    cut: Option<usize>,
}

impl Reply {
    fn status(status: u16, code: &str) -> Reply {
        let mut r = Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            cut: None,
        };
        if !code.is_empty() {
            r = r
                .header("X-Error-Code", code)
                .header("X-Error-Message", &format!("fixture: {code}"));
        }
        r
    }

    /// The bytes, or the range `bytes=N-` of them (206).
    fn bytes(data: Vec<u8>, range: Option<&str>) -> Reply {
        let from = range
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|n| n.parse::<usize>().ok());
        match from {
            Some(n) if n >= data.len() => Reply::status(416, ""),
            Some(n) => {
                let total = data.len();
                Reply {
                    status: 206,
                    headers: vec![("Content-Range".into(), format!("bytes {n}-{}/{total}", total - 1))],
                    body: data[n..].to_vec(),
                    cut: None,
                }
            }
            None => Reply {
                status: 200,
                headers: Vec::new(),
                body: data,
                cut: None,
            },
        }
    }

    fn header(mut self, k: &str, v: &str) -> Reply {
        self.headers.push((k.into(), v.into()));
        self
    }

    fn cut(mut self, at: Option<usize>) -> Reply {
        self.cut = at;
        self
    }

    fn send(self, mut stream: TcpStream, head: bool) -> std::io::Result<()> {
        let reason = match self.status {
            200 => "OK",
            206 => "Partial Content",
            307 => "Temporary Redirect",
            302 => "Found",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            416 => "Range Not Satisfiable",
            _ => "Status",
        };
        let mut out = format!("HTTP/1.1 {} {reason}\r\n", self.status);
        for (k, v) in &self.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.body.len()
        ));
        stream.write_all(out.as_bytes())?;
        if !head {
            let n = self.cut.unwrap_or(self.body.len()).min(self.body.len());
            stream.write_all(&self.body[..n])?;
        }
        stream.flush()
    }
}
