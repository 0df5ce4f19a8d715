//! The Hub's HTTP protocol: JSON API calls, the `HEAD` that tells a file's blob id, size and
//! download location, and ranged `GET`s. Redirects are followed by hand, as `huggingface_hub`
//! does: relative ones (renamed repos) always, absolute ones (the CDN holding LFS files) only
//! for the download, and without the token when the host changes.

use std::io::Read;
use std::time::Duration;

use ureq::http::{HeaderMap, Response};

use crate::{Error, Result};

/// The most a JSON answer (repo info with its file list) may be.
const MAX_JSON: u64 = 64 << 20;
const MAX_REDIRECTS: usize = 8;

pub(crate) struct Http {
    agent: ureq::Agent,
    endpoint: String,
    token: Option<String>,
}

/// What a `HEAD` on `resolve/{commit}/{file}` tells.
#[derive(Debug)]
pub(crate) struct FileMeta {
    /// The blob id (`X-Linked-Etag` for LFS files, else `ETag`), unquoted.
    pub etag: String,
    pub size: Option<u64>,
    /// Where to `GET` the bytes (the CDN for LFS files).
    pub location: String,
}

/// Names what a request was for, to turn 401/403/404 into advice.
pub(crate) struct Subject<'a> {
    pub repo: &'a str,
    pub revision: &'a str,
    pub file: Option<&'a str>,
}

impl Http {
    pub fn new(endpoint: &str, token: Option<String>) -> Http {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(Duration::from_secs(20)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_per_read(Some(Duration::from_secs(60)))
            .user_agent(concat!("chatforge/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Http {
            agent,
            endpoint: endpoint.to_string(),
            token,
        }
    }

    fn send(&self, method: &str, url: &str, range_from: u64, auth: bool) -> Result<Response<ureq::Body>> {
        let mut req = match method {
            "HEAD" => self.agent.head(url),
            _ => self.agent.get(url),
        }
        .header("Accept-Encoding", "identity");
        if auth && let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        if range_from > 0 {
            req = req.header("Range", format!("bytes={range_from}-"));
        }
        req.call().map_err(|e| match e {
            ureq::Error::Io(_)
            | ureq::Error::Timeout(_)
            | ureq::Error::HostNotFound
            | ureq::Error::ConnectionFailed => Error::Unreachable {
                endpoint: self.endpoint.clone(),
                msg: e.to_string(),
            },
            other => Error::Refused(format!("{method} {url}: {other}")),
        })
    }

    /// Sends `method`, following redirects: all of them, or (`all = false`) only relative ones.
    /// The token goes only to the endpoint's host.
    fn follow(
        &self,
        method: &str,
        url: &str,
        range_from: u64,
        all: bool,
    ) -> Result<(String, Response<ureq::Body>)> {
        let mut url = url.to_string();
        for _ in 0..MAX_REDIRECTS {
            let auth = origin(&url) == origin(&self.endpoint);
            let resp = self.send(method, &url, range_from, auth)?;
            if !resp.status().is_redirection() {
                return Ok((url, resp));
            }
            let Some(loc) = header(resp.headers(), "location") else {
                return Ok((url, resp));
            };
            let relative = loc.starts_with('/');
            if !relative && !all {
                return Ok((url, resp));
            }
            url = if relative {
                format!("{}{loc}", origin(&url))
            } else {
                loc
            };
        }
        Err(Error::Refused(format!(
            "{url}: more than {MAX_REDIRECTS} redirects"
        )))
    }

    /// `GET` a JSON document.
    pub fn json(&self, url: &str, subject: &Subject) -> Result<serde_json::Value> {
        let (_, resp) = self.follow("GET", url, 0, true)?;
        self.check(&resp, subject)?;
        let mut body = Vec::new();
        resp.into_body()
            .into_reader()
            .take(MAX_JSON + 1)
            .read_to_end(&mut body)
            .map_err(|e| self.unreachable(e))?;
        if body.len() as u64 > MAX_JSON {
            return Err(Error::Refused(format!("{url}: the answer is larger than 64 MiB")));
        }
        serde_json::from_slice(&body).map_err(|e| Error::Refused(format!("{url}: not the Hub's JSON: {e}")))
    }

    /// `HEAD` a file's `resolve` URL: its blob id, size and where to download it.
    pub fn file_meta(&self, url: &str, subject: &Subject) -> Result<FileMeta> {
        let (at, resp) = self.follow("HEAD", url, 0, false)?;
        if !resp.status().is_redirection() {
            self.check(&resp, subject)?;
        }
        let h = resp.headers();
        let etag = header(h, "x-linked-etag")
            .or_else(|| header(h, "etag"))
            .map(|e| e.trim_start_matches("W/").trim_matches('"').to_string())
            .ok_or_else(|| {
                Error::Refused(format!(
                    "{url}: the answer has no ETag; is HF_ENDPOINT ({}) a Hugging Face Hub?",
                    self.endpoint
                ))
            })?;
        let size = header(h, "x-linked-size")
            .or_else(|| {
                (!resp.status().is_redirection())
                    .then(|| header(h, "content-length"))
                    .flatten()
            })
            .and_then(|s| s.parse().ok());
        let location = match header(h, "location").filter(|_| resp.status().is_redirection()) {
            Some(l) if l.starts_with('/') => format!("{}{l}", origin(&at)),
            Some(l) => l,
            None => at,
        };
        Ok(FileMeta { etag, size, location })
    }

    /// `GET`s `url` from byte `from`. Returns whether the server honoured the range (206), and
    /// the body to read.
    pub fn download(&self, url: &str, from: u64, subject: &Subject) -> Result<(bool, impl Read + use<>)> {
        let (_, mut resp) = self.follow("GET", url, from, true)?;
        if from > 0 && resp.status().as_u16() == 416 {
            // The partial file is not a prefix the server recognises: start over.
            resp = self.follow("GET", url, 0, true)?.1;
        }
        let partial = resp.status().as_u16() == 206;
        if !partial {
            self.check(&resp, subject)?;
        }
        Ok((partial, resp.into_body().into_reader()))
    }

    pub fn unreachable(&self, e: impl std::fmt::Display) -> Error {
        Error::Unreachable {
            endpoint: self.endpoint.clone(),
            msg: e.to_string(),
        }
    }

    /// A non-success answer as advice: what is missing, or what the token needs.
    fn check(&self, resp: &Response<ureq::Body>, s: &Subject) -> Result<()> {
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        let code = header(resp.headers(), "x-error-code").unwrap_or_default();
        let message = header(resp.headers(), "x-error-message").unwrap_or_default();
        let repo = s.repo;
        let what = match s.file {
            Some(f) => format!("{f} in {repo}@{}", s.revision),
            None => format!("{repo}@{}", s.revision),
        };
        let token_hint = if self.token.is_some() {
            "the token in HF_TOKEN (or the saved login) has no access to it"
        } else {
            "no token was sent: set HF_TOKEN to a token that can read it"
        };
        let msg = match (status, code.as_str()) {
            (403, "GatedRepo") | (401, "GatedRepo") => format!(
                "{repo} is gated: accept its conditions at {}/{repo} while logged in, then set HF_TOKEN to a token of that account",
                self.endpoint
            ),
            (404, "RevisionNotFound") => format!("{repo} has no revision '{}'", s.revision),
            (404, "EntryNotFound") => format!("{what}: no such file"),
            (401, _) => format!(
                "{repo}: the Hub refused access (401): the repository does not exist or is private, and {token_hint}"
            ),
            (403, _) => format!("{repo}: the Hub refused access (403): {token_hint}"),
            (404, _) => format!("{repo}: no such repository on {}", self.endpoint),
            (429, _) => format!("{what}: the Hub is rate-limiting requests (429); try again later"),
            _ => format!("{what}: the Hub answered HTTP {status}"),
        };
        let msg = if message.is_empty() {
            msg
        } else {
            format!("{msg} (the Hub says: {message})")
        };
        Err(Error::Refused(msg))
    }
}

fn header(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// `scheme://host[:port]` of a URL.
fn origin(url: &str) -> &str {
    let after = url.find("://").map_or(0, |i| i + 3);
    match url[after..].find('/') {
        Some(i) => &url[..after + i],
        None => url,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn origin_of_urls() {
        assert_eq!(super::origin("https://h.co/a/b"), "https://h.co");
        assert_eq!(super::origin("http://127.0.0.1:8/x"), "http://127.0.0.1:8");
        assert_eq!(super::origin("http://h"), "http://h");
    }
}
