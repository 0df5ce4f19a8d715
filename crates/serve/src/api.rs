//! The HTTP API (axum): one route per resource, one error type mapped to statuses, request bodies
//! validated into typed specs, every path kept inside the data root.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Path as UrlPath, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::sync::CancellationToken;

use crate::jobs::{ExportRequest, Spec, TokenizerRequest, TrainRequest};
use crate::paths::{check_id, inside};
use crate::store::{Job, JobKind, JobState, JobStore, NewJob};
use crate::{Error, ServeConfig, now};

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn JobStore>,
    pub cfg: Arc<ServeConfig>,
    /// Cancelled at shutdown, so open log streams end and the server can stop.
    pub shutdown: CancellationToken,
    /// Models that `/v1/chat/completions` has loaded.
    pub models: Arc<crate::openai::ModelCache>,
}

/// An error answer: a status and a message, as `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl ApiError {
    pub fn new(status: StatusCode, message: String) -> Self {
        ApiError(status, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            Error::Invalid(m) => ApiError(StatusCode::UNPROCESSABLE_ENTITY, m),
            Error::BadPath(m) => ApiError(StatusCode::BAD_REQUEST, m),
            Error::QueueFull(_) => ApiError(StatusCode::TOO_MANY_REQUESTS, e.to_string()),
            other => {
                // Logged with its context; the client gets no internals.
                eprintln!("internal error: {other}");
                ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal error".into())
            }
        }
    }
}

fn not_found(what: &str) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, format!("no {what}"))
}

type ApiResult<T> = Result<T, ApiError>;

/// A JSON body whose rejections are answered in the API's own shape: 400 for broken JSON, 413 for
/// a body over the limit, 415 without a JSON content type, 422 naming the field for the rest.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(JsonBody(v)),
            Err(rej) => {
                let status = match &rej {
                    JsonRejection::JsonDataError(_) => StatusCode::UNPROCESSABLE_ENTITY,
                    JsonRejection::JsonSyntaxError(_) => StatusCode::BAD_REQUEST,
                    JsonRejection::MissingJsonContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    _ => rej.status(),
                };
                Err(ApiError(status, rej.body_text()))
            }
        }
    }
}

/// Runs a store call off the async threads.
async fn blocking<T: Send + 'static>(
    st: &AppState,
    f: impl FnOnce(&dyn JobStore) -> crate::Result<T> + Send + 'static,
) -> ApiResult<T> {
    let store = st.store.clone();
    tokio::task::spawn_blocking(move || f(store.as_ref()))
        .await
        .map_err(|e| ApiError::from(Error::Store(format!("a store task failed: {e}"))))?
        .map_err(ApiError::from)
}

pub fn app(state: AppState) -> Router {
    let max_body = state.cfg.api.max_body;
    Router::new()
        .route("/tokenizers/train", post(train_tokenizer))
        .route("/tokenizers/{id}", get(get_tokenizer))
        .route("/runs/train", post(train_run))
        .route("/runs", get(list_runs))
        .route("/runs/{id}", get(get_run))
        .route("/runs/{id}/cancel", post(cancel_run))
        .route("/runs/{id}/resume", post(resume_run))
        .route("/runs/{id}/evaluate", post(evaluate_run))
        .route("/runs/{id}/eval", get(run_eval))
        .route("/runs/{id}/export", post(export_run))
        .route("/exports/{id}", get(get_export))
        .route("/runs/{id}/logs", get(run_logs))
        .route("/runs/{id}/logs/stream", get(run_log_stream))
        .route("/artifacts/{kind}/{id}", get(list_artifact))
        .route("/artifacts/{kind}/{id}/download", get(download))
        .route("/v1/chat/completions", post(crate::openai::chat_completions))
        .route(
            "/openapi.json",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    include_str!("openapi.json"),
                )
            }),
        )
        .route("/healthz", get(|| async { axum::Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// With a token configured, every route but the health checks needs `Authorization: Bearer TOKEN`
/// (compared in constant time).
async fn auth(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let Some(token) = st.cfg.api.token.as_deref() else {
        return next.run(req).await;
    };
    if matches!(req.uri().path(), "/healthz" | "/readyz") {
        return next.run(req).await;
    }
    use subtle::ConstantTimeEq;
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
        next.run(req).await
    } else {
        let mut r =
            ApiError(StatusCode::UNAUTHORIZED, "missing or wrong bearer token".into()).into_response();
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        r
    }
}

async fn enqueue(st: &AppState, spec: Spec, timeout_s: Option<f64>) -> ApiResult<Job> {
    let id = crate::new_id();
    // Evaluations write into their run; everything else writes an artifact named by the job.
    let target = match &spec {
        Spec::Evaluate { run } => run.clone(),
        _ => id.clone(),
    };
    let job = NewJob {
        id,
        kind: spec.kind(),
        target,
        spec: serde_json::to_value(&spec).map_err(|e| Error::Store(e.to_string()))?,
        max_attempts: st.cfg.queue.max_attempts,
        timeout_s,
        now: now(),
    };
    let limit = st.cfg.queue.max_queued;
    blocking(st, move |s| s.enqueue(job, limit)).await
}

async fn train_tokenizer(
    State(st): State<AppState>,
    JsonBody(req): JsonBody<TokenizerRequest>,
) -> ApiResult<Response> {
    let spec = req.resolve(&st.cfg.data_root)?;
    let job = enqueue(&st, spec, None).await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({"id": job.target, "state": job.state})),
    )
        .into_response())
}

async fn train_run(State(st): State<AppState>, JsonBody(req): JsonBody<TrainRequest>) -> ApiResult<Response> {
    let spec = req.resolve(&st.cfg.data_root)?;
    let job = enqueue(&st, spec, req.timeout_s).await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({"run_id": job.target, "state": job.state})),
    )
        .into_response())
}

async fn job_for(st: &AppState, id: &str, kind: JobKind) -> ApiResult<Job> {
    check_id(id)?;
    let key = id.to_string();
    blocking(st, move |s| s.latest_for(&key, Some(kind)))
        .await?
        .ok_or_else(|| not_found(&format!("{} job {id:?}", kind.as_str())))
}

fn job_json(j: &Job, id_key: &str) -> Value {
    json!({
        id_key: j.target,
        "state": j.state,
        "progress": j.progress,
        "attempts": j.attempts,
        "max_attempts": j.max_attempts,
        "error": j.error,
        "cancel_requested": j.cancel_requested,
        "created_at": j.created_at,
        "started_at": j.started_at,
        "finished_at": j.finished_at,
        "heartbeat_age_s": j.heartbeat_at.filter(|_| j.state == JobState::Running).map(|h| (now() - h).max(0.0)),
        "worker": j.worker,
    })
}

async fn get_tokenizer(State(st): State<AppState>, UrlPath(id): UrlPath<String>) -> ApiResult<Response> {
    let job = job_for(&st, &id, JobKind::Tokenizer).await?;
    let dir = st.cfg.data_root.join("tokenizers").join(&id);
    let stats: Option<Value> = std::fs::read_to_string(dir.join("stats.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let mut v = job_json(&job, "id");
    v["stats"] = json!(stats);
    v["artifact"] = json!(
        dir.join("tokenizer.json")
            .is_file()
            .then(|| format!("tokenizers/{id}/tokenizer.json"))
    );
    Ok(axum::Json(v).into_response())
}

async fn get_run(State(st): State<AppState>, UrlPath(id): UrlPath<String>) -> ApiResult<Response> {
    let job = job_for(&st, &id, JobKind::Train).await?;
    Ok(axum::Json(job_json(&job, "run_id")).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    state: Option<String>,
    limit: Option<usize>,
}

async fn list_runs(State(st): State<AppState>, Query(q): Query<ListQuery>) -> ApiResult<Response> {
    let state = match q.state.as_deref() {
        None => None,
        Some(s) => Some(JobState::parse(s).ok_or_else(|| {
            ApiError(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("state: {s:?} is not one of queued, running, succeeded, failed, cancelled"),
            )
        })?),
    };
    let limit = q.limit.unwrap_or(100).min(1000);
    let jobs = blocking(&st, move |s| s.list(Some(JobKind::Train), state, limit)).await?;
    let runs: Vec<Value> = jobs.iter().map(|j| job_json(j, "run_id")).collect();
    Ok(axum::Json(json!({ "runs": runs })).into_response())
}

async fn cancel_run(State(st): State<AppState>, UrlPath(id): UrlPath<String>) -> ApiResult<Response> {
    let job = job_for(&st, &id, JobKind::Train).await?;
    if job.state.is_final() {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("the run is already {}", job.state.as_str()),
        ));
    }
    let jid = job.id.clone();
    let job = blocking(&st, move |s| s.cancel(&jid, now()))
        .await?
        .ok_or_else(|| not_found("job"))?;
    Ok((StatusCode::ACCEPTED, axum::Json(job_json(&job, "run_id"))).into_response())
}

async fn resume_run(State(st): State<AppState>, UrlPath(id): UrlPath<String>) -> ApiResult<Response> {
    let job = job_for(&st, &id, JobKind::Train).await?;
    if !matches!(job.state, JobState::Failed | JobState::Cancelled) {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!(
                "only a failed or cancelled run resumes; this one is {}",
                job.state.as_str()
            ),
        ));
    }
    let jid = job.id.clone();
    let job = blocking(&st, move |s| s.resume(&jid, now()))
        .await?
        .ok_or_else(|| not_found("job"))?;
    Ok((StatusCode::ACCEPTED, axum::Json(job_json(&job, "run_id"))).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TailQuery {
    tail: Option<usize>,
}

fn run_dir(st: &AppState, id: &str) -> ApiResult<PathBuf> {
    check_id(id)?;
    Ok(st.cfg.data_root.join("runs").join(id))
}

/// Whole lines of `logs.jsonl` (a line still being written is left for later) from line `from`
/// on, with their line numbers.
fn read_lines(path: &Path, from: usize) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or(0, |i| i + 1);
    text[..complete]
        .lines()
        .enumerate()
        .skip(from)
        .map(|(i, l)| (i, l.to_string()))
        .collect()
}

async fn run_logs(
    State(st): State<AppState>,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<TailQuery>,
) -> ApiResult<Response> {
    job_for(&st, &id, JobKind::Train).await?;
    let path = run_dir(&st, &id)?.join("logs.jsonl");
    let all = read_lines(&path, 0);
    let tail = q.tail.unwrap_or(200).min(10_000);
    let events: Vec<Value> = all[all.len().saturating_sub(tail)..]
        .iter()
        .map(|(_, l)| serde_json::from_str(l).unwrap_or(Value::String(l.clone())))
        .collect();
    Ok(axum::Json(json!({ "events": events, "total": all.len() })).into_response())
}

/// Server-Sent Events: each line of `logs.jsonl` as one event whose id is its line number; live
/// until the run's job ends. `Last-Event-ID` resumes after that line; otherwise the last `tail`
/// lines come first.
async fn run_log_stream(
    State(st): State<AppState>,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<TailQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let job = job_for(&st, &id, JobKind::Train).await?;
    let path = run_dir(&st, &id)?.join("logs.jsonl");
    let all = read_lines(&path, 0);
    let start = match headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        Some(last) => last + 1,
        None => all.len().saturating_sub(q.tail.unwrap_or(200)),
    };
    struct S {
        st: AppState,
        path: PathBuf,
        job: String,
        next: usize,
        pending: std::collections::VecDeque<(usize, String)>,
        ended: bool,
    }
    let init = S {
        st: st.clone(),
        path,
        job: job.id,
        next: start,
        pending: Default::default(),
        ended: false,
    };
    let stream = futures_util::stream::unfold(init, |mut s| async move {
        loop {
            if let Some((i, line)) = s.pending.pop_front() {
                let ev = SseEvent::default().id(i.to_string()).event("log").data(line);
                return Some((Ok::<_, std::convert::Infallible>(ev), s));
            }
            if s.ended || s.st.shutdown.is_cancelled() {
                return None;
            }
            // The job's state first, then the file: lines written before the job ended are read.
            let jid = s.job.clone();
            let state = blocking(&s.st, move |st| st.get(&jid))
                .await
                .ok()
                .flatten()
                .map(|j| j.state);
            let lines = read_lines(&s.path, s.next);
            if let Some((i, _)) = lines.last() {
                s.next = i + 1;
            }
            s.pending.extend(lines);
            if s.pending.is_empty() {
                if state.is_none_or(JobState::is_final) {
                    s.ended = true;
                    let end = SseEvent::default()
                        .event("end")
                        .data(json!({"state": state}).to_string());
                    return Some((Ok(end), s));
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(250)) => {}
                    () = s.st.shutdown.cancelled() => {}
                }
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}

/// A run that finished training (evaluation and export need its best checkpoint).
async fn finished_run(st: &AppState, id: &str) -> ApiResult<Job> {
    let job = job_for(st, id, JobKind::Train).await?;
    if job.state != JobState::Succeeded && !run_dir(st, id)?.join("best").is_dir() {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("the run is {} and has no best checkpoint yet", job.state.as_str()),
        ));
    }
    Ok(job)
}

async fn evaluate_run(State(st): State<AppState>, UrlPath(id): UrlPath<String>) -> ApiResult<Response> {
    finished_run(&st, &id).await?;
    let job = enqueue(&st, Spec::Evaluate { run: id.clone() }, None).await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({"run_id": id, "job_id": job.id, "state": job.state})),
    )
        .into_response())
}

async fn run_eval(State(st): State<AppState>, UrlPath(id): UrlPath<String>) -> ApiResult<Response> {
    let dir = run_dir(&st, &id)?;
    let key = id.clone();
    let job = blocking(&st, move |s| s.latest_for(&key, Some(JobKind::Evaluate))).await?;
    let metrics: Option<Value> = std::fs::read_to_string(dir.join("eval/metrics.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    if metrics.is_none() && job.is_none() {
        return Err(not_found(&format!("evaluation of run {id:?}")));
    }
    Ok(axum::Json(json!({
        "run_id": id,
        "state": job.as_ref().map(|j| j.state),
        "error": job.as_ref().and_then(|j| j.error.clone()),
        "metrics": metrics,
    }))
    .into_response())
}

async fn export_run(
    State(st): State<AppState>,
    UrlPath(id): UrlPath<String>,
    JsonBody(req): JsonBody<ExportRequest>,
) -> ApiResult<Response> {
    finished_run(&st, &id).await?;
    let spec = req.resolve(&id)?;
    let job = enqueue(&st, spec, None).await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({"run_id": id, "export_id": job.target, "state": job.state})),
    )
        .into_response())
}

async fn get_export(State(st): State<AppState>, UrlPath(id): UrlPath<String>) -> ApiResult<Response> {
    let job = job_for(&st, &id, JobKind::Export).await?;
    let mut v = job_json(&job, "export_id");
    v["artifact"] = json!(format!("exports/{id}"));
    Ok(axum::Json(v).into_response())
}

fn artifact_dir(st: &AppState, kind: &str, id: &str) -> ApiResult<PathBuf> {
    if !matches!(kind, "runs" | "tokenizers" | "exports") {
        return Err(not_found(&format!(
            "artifact kind {kind:?} (runs, tokenizers or exports)"
        )));
    }
    check_id(id)?;
    let dir = inside(&st.cfg.data_root, &format!("{kind}/{id}"))?;
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
    fn walk(root: &Path, dir: &Path, out: &mut Vec<Value>) {
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
            } else if meta.is_file() {
                let rel = p.strip_prefix(root).unwrap_or(&p).to_string_lossy().to_string();
                out.push(json!({"path": rel, "bytes": meta.len()}));
            }
        }
    }
    let mut files = Vec::new();
    walk(&dir, &dir, &mut files);
    Ok(axum::Json(json!({"kind": kind, "id": id, "files": files})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DownloadQuery {
    path: String,
}

/// A single byte range of a file of `len` bytes from a `Range` header: `Ok(None)` to send it
/// whole (no range, or several), `Err` when unsatisfiable.
fn parse_range(h: &str, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None); // several ranges: the whole file is a valid answer
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (a, b) = (a.trim(), b.trim());
    let range = if a.is_empty() {
        let n: u64 = b.parse().map_err(|_| ())?;
        if n == 0 {
            return Err(());
        }
        (len.saturating_sub(n), len.checked_sub(1).ok_or(())?)
    } else {
        let start: u64 = a.parse().map_err(|_| ())?;
        let end = if b.is_empty() {
            len.saturating_sub(1)
        } else {
            b.parse::<u64>().map_err(|_| ())?.min(len.saturating_sub(1))
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
    Query(q): Query<DownloadQuery>,
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

async fn readyz(State(st): State<AppState>) -> Response {
    let lease = st.cfg.worker.lease_s;
    let store = blocking(&st, |s| s.ping()).await.is_ok();
    let workers = blocking(&st, move |s| s.live_workers(now() - lease))
        .await
        .unwrap_or_default();
    let probe = st.cfg.data_root.join(format!(".readyz-{}", std::process::id()));
    let writable = std::fs::write(&probe, b"ok").is_ok();
    let _ = std::fs::remove_file(&probe);
    let ready = store && writable && !workers.is_empty();
    let body = json!({"ready": ready, "store": store, "data_root_writable": writable, "workers": workers});
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}
