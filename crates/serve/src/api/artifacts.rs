//! `/artifacts/{kind}/{id}`: the files of a run, tokenizer or export, listed and downloaded
//! (single byte ranges, `If-Range`).

use std::path::{Path, PathBuf};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::{ApiResult, AppState, QueryArgs, not_found, off_thread};
use crate::Error;
use crate::paths::{Area, inside};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/artifacts/{kind}/{id}", get(list_artifact))
        .route("/artifacts/{kind}/{id}/download", get(download))
}

fn artifact_dir(st: &AppState, kind: &str, id: &str) -> ApiResult<PathBuf> {
    let area = Area::parse(kind).ok_or_else(|| {
        not_found(&format!(
            "artifact kind {kind:?} (runs (also models), tokenizers or exports)"
        ))
    })?;
    let dir = area.dir(&st.cfg.data_root, id)?;
    if !dir.is_dir() {
        return Err(not_found(&format!("{kind}/{id}")));
    }
    Ok(dir)
}

async fn list_artifact(
    State(st): State<AppState>,
    UrlPath((kind, id)): UrlPath<(String, String)>,
) -> ApiResult<Response> {
    let dir = artifact_dir(&st, &kind, &id)?;
    /// Listed at most, so a folder of millions of files cannot make one answer huge.
    const MAX_FILES: usize = 10_000;
    fn walk(root: &Path, dir: &Path, out: &mut Vec<Value>) {
        if out.len() >= MAX_FILES {
            return;
        }
        let mut entries: Vec<_> = std::fs::read_dir(dir).into_iter().flatten().flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            // Symlinks are neither followed nor listed.
            let Ok(meta) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if meta.is_dir() {
                walk(root, &p, out);
            } else if meta.is_file() && out.len() < MAX_FILES {
                let rel = p.strip_prefix(root).unwrap_or(&p).to_string_lossy().to_string();
                out.push(json!({"path": rel, "bytes": meta.len()}));
            }
        }
    }
    let files = off_thread(move || {
        let mut files = Vec::new();
        walk(&dir, &dir, &mut files);
        Ok(files)
    })
    .await?;
    Ok(axum::Json(json!({"kind": kind, "id": id, "files": files})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DownloadQuery {
    path: String,
}

/// A single byte range of a file of `len` bytes from a `Range` header: `Ok(None)` to send it
/// whole (no range, several, another unit, or a header that does not parse: RFC 9110 says to
/// ignore it), `Err` when well-formed but unsatisfiable.
fn parse_range(h: &str, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let h = h.trim();
    let Some(spec) = h
        .get(..6)
        .filter(|unit| unit.eq_ignore_ascii_case("bytes="))
        .map(|_| &h[6..])
    else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None); // several ranges: the whole file is a valid answer
    }
    let Some((a, b)) = spec.split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    let number = |s: &str| {
        s.parse::<u64>()
            .ok()
            .filter(|_| s.bytes().all(|c| c.is_ascii_digit()))
    };
    let range = if a.is_empty() {
        let Some(n) = number(b) else {
            return Ok(None);
        };
        if n == 0 {
            return Err(());
        }
        (len.saturating_sub(n), len.checked_sub(1).ok_or(())?)
    } else {
        let Some(start) = number(a) else {
            return Ok(None);
        };
        let end = if b.is_empty() {
            len.saturating_sub(1)
        } else {
            let Some(end) = number(b) else {
                return Ok(None);
            };
            if end < start {
                return Ok(None); // invalid range-spec: ignored
            }
            end.min(len.saturating_sub(1))
        };
        (start, end)
    };
    if range.0 >= len || range.0 > range.1 {
        return Err(());
    }
    Ok(Some(range))
}

async fn download(
    State(st): State<AppState>,
    UrlPath((kind, id)): UrlPath<(String, String)>,
    QueryArgs(q): QueryArgs<DownloadQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let dir = artifact_dir(&st, &kind, &id)?;
    let path = inside(&dir, &q.path)?;
    let meta = std::fs::symlink_metadata(&path).map_err(|_| not_found(&format!("file {:?}", q.path)))?;
    if !meta.is_file() {
        return Err(not_found(&format!("file {:?}", q.path)));
    }
    let len = meta.len();
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .unwrap_or_default();
    let etag = format!("\"{len:x}-{:x}\"", mtime.as_nanos());
    let last_modified = crate::http_date(mtime.as_secs());
    // If-Range: the range applies only while the file is the one the client has.
    let if_range_ok = headers
        .get(header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v == etag || v == last_modified);
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(h) if if_range_ok => parse_range(h, len),
        _ => Ok(None),
    };
    let mut file = tokio::fs::File::open(&path).await.map_err(|e| Error::Io {
        path: path.clone(),
        source: e,
    })?;
    let mut builder = Response::builder()
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, &etag)
        .header(header::LAST_MODIFIED, &last_modified)
        .header(header::CONTENT_TYPE, "application/octet-stream");
    let (status, start, n) = match range {
        Err(()) => {
            return Ok(Response::builder()
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{len}"))
                .body(Body::empty())
                .unwrap_or_default());
        }
        Ok(None) => (StatusCode::OK, 0, len),
        Ok(Some((a, b))) => {
            builder = builder.header(header::CONTENT_RANGE, format!("bytes {a}-{b}/{len}"));
            (StatusCode::PARTIAL_CONTENT, a, b - a + 1)
        }
    };
    file.seek(std::io::SeekFrom::Start(start))
        .await
        .map_err(|e| Error::Io {
            path: path.clone(),
            source: e,
        })?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file.take(n)));
    Ok(builder
        .status(status)
        .header(header::CONTENT_LENGTH, n)
        .body(body)
        .unwrap_or_default())
}
