//! `/data`: the data files under `<data_root>/data/` that runs and tokenizers train on, listed,
//! and uploaded (`PUT /data/{name}`, streamed to disk, bounded by `api.max_upload`).

use std::path::{Path, PathBuf};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use super::{ApiError, ApiResult, AppState, QueryArgs, off_thread};
use crate::Error;
use crate::paths::{check_id, inside};

/// The folder of the data root that holds data files.
pub const DATA_DIR: &str = "data";

/// Listed at most, so a folder of millions of files cannot make one answer huge.
const MAX_FILES: usize = 10_000;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/data", get(list_data))
        .route("/data/{name}", put(upload))
}

/// The data files, as paths relative to the data root (what `data` and `input` of a request take).
async fn list_data(State(st): State<AppState>) -> ApiResult<Response> {
    let root = st.cfg.data_root.clone();
    let files = off_thread(move || {
        let dir = inside(&root, DATA_DIR)?;
        let mut out = Vec::new();
        walk(&root, &dir, 0, &mut out);
        Ok(out)
    })
    .await?;
    Ok(axum::Json(json!({ "files": files })).into_response())
}

fn walk(root: &Path, dir: &Path, depth: usize, out: &mut Vec<Value>) {
    if depth > 8 || out.len() >= MAX_FILES {
        return;
    }
    let mut entries: Vec<_> = std::fs::read_dir(dir).into_iter().flatten().flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let name = e.file_name();
        // Symlinks are neither followed nor listed; partial uploads (hidden) and import reports
        // are not data.
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        let name = name.to_string_lossy();
        if name.starts_with('.') || name.ends_with(chatforge_data::IMPORT_REPORT_SUFFIX) {
            continue;
        }
        if meta.is_dir() {
            walk(root, &p, depth + 1, out);
        } else if meta.is_file() && out.len() < MAX_FILES {
            let rel = p.strip_prefix(root).unwrap_or(&p).to_string_lossy().to_string();
            let modified = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs_f64());
            out.push(json!({"path": rel, "bytes": meta.len(), "modified": modified}));
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadQuery {
    /// Replace a file of that name (otherwise 409).
    #[serde(default)]
    replace: bool,
}

/// Writes the body to `data/<name>`: into a hidden temporary file first, renamed into place when
/// the whole body arrived, so a cut upload leaves nothing behind and readers never see half a file.
async fn upload(
    State(st): State<AppState>,
    UrlPath(name): UrlPath<String>,
    QueryArgs(q): QueryArgs<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    check_id(&name)?;
    let max = st.cfg.api.max_upload;
    let too_large = || ApiError::TooLarge(format!("uploads are limited to {max} bytes (api.max_upload)"));
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large());
    }
    let root = st.cfg.data_root.clone();
    let rel = format!("{DATA_DIR}/{name}");
    let (dest, dir) = off_thread(move || {
        let dir = inside(&root, DATA_DIR)?;
        std::fs::create_dir_all(&dir).map_err(|e| Error::Io {
            path: dir.clone(),
            source: e,
        })?;
        Ok((inside(&root, &rel)?, dir))
    })
    .await?;
    if dest.exists() && !q.replace {
        return Err(ApiError::Conflict(format!(
            "data/{name} exists: add ?replace=true to replace it"
        )));
    }
    let tmp = dir.join(format!(".upload-{}", crate::new_id()));
    let written = receive(body, &tmp, max).await;
    let bytes = match written {
        Ok(n) => n,
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e.unwrap_or_else(too_large));
        }
    };
    if let Err(e) = tokio::fs::rename(&tmp, &dest).await {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(ApiError::from(Error::Io {
            path: dest,
            source: e,
        }));
    }
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"path": format!("{DATA_DIR}/{name}"), "bytes": bytes})),
    )
        .into_response())
}

/// Streams `body` into `tmp`: its length, or `Err(None)` when it passed `max` bytes, or the error.
async fn receive(body: Body, tmp: &PathBuf, max: u64) -> Result<u64, Option<ApiError>> {
    let io = |e: std::io::Error| {
        Some(ApiError::from(Error::Io {
            path: tmp.clone(),
            source: e,
        }))
    };
    let mut file = tokio::fs::File::create(tmp).await.map_err(io)?;
    let mut stream = body.into_data_stream();
    let mut n = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Some(ApiError::BadRequest(format!("the upload broke off: {e}"))))?;
        n += chunk.len() as u64;
        if n > max {
            return Err(None);
        }
        file.write_all(&chunk).await.map_err(io)?;
    }
    file.sync_all().await.map_err(io)?;
    Ok(n)
}
