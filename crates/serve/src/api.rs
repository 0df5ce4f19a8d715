//! The HTTP API (axum): one route per resource, one error type mapped to statuses, request bodies
//! validated into typed specs, every path kept inside the data root.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{
    DefaultBodyLimit, FromRequest, FromRequestParts, Path as UrlPath, Query, Request, State,
};
use axum::http::request::Parts;
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
use crate::logs::{EventId, Follower, From as LogFrom};
use crate::paths::{Area, check_id, inside, scrub};
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
    /// Generations running at once (`api.max_generations`); more get 429.
    pub generations: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    pub fn new(store: Arc<dyn JobStore>, cfg: ServeConfig, shutdown: CancellationToken) -> AppState {
        AppState {
            store,
            generations: Arc::new(tokio::sync::Semaphore::new(cfg.api.max_generations)),
            cfg: Arc::new(cfg),
            shutdown,
            models: Default::default(),
        }
    }
}

/// An error answer: a status and a message, as `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl ApiError {
    pub fn new(status: StatusCode, message: String) -> Self {
        ApiError(status, message)
    }
}

/// How long a client told "too many" (429) or "not ready" (503) should wait, seconds.
const RETRY_AFTER_S: &str = "2";

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.0, axum::Json(json!({ "error": self.1 }))).into_response();
        if matches!(
            self.0,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_S));
        }
        r
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

/// An error for a client, without the data root's path in its message.
fn scrubbed(e: Error, root: &Path) -> ApiError {
    match e {
        Error::Invalid(m) => ApiError::from(Error::Invalid(scrub(&m, root))),
        Error::BadPath(m) => ApiError::from(Error::BadPath(scrub(&m, root))),
        other => ApiError::from(other),
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

/// A query string whose rejections are answered in the API's own shape (400, naming the field).
pub struct QueryArgs<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for QueryArgs<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(QueryArgs(v)),
            Err(rej) => {
                let rej: QueryRejection = rej;
                Err(ApiError(StatusCode::BAD_REQUEST, rej.body_text()))
            }
        }
    }
}

/// Runs a blocking closure (file I/O, parsing a request's files) off the async threads.
async fn off_thread<T: Send + 'static>(f: impl FnOnce() -> ApiResult<T> + Send + 'static) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::from(Error::Store(format!("a blocking task failed: {e}"))))?
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
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such route".into()) })
        .method_not_allowed_fallback(|| async {
            ApiError(
                StatusCode::METHOD_NOT_ALLOWED,
                "this route does not take that method".into(),
            )
        })
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn(crate::openai::error_shape))
        .with_state(state)
}

/// Whether the request carries the configured token (always true without one): `Bearer` in any
/// case, compared in constant time.
fn authorized(st: &AppState, headers: &HeaderMap) -> bool {
    let Some(token) = st.cfg.api.token.as_deref() else {
        return true;
    };
    use subtle::ConstantTimeEq;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map_or("", |(_, t)| t.trim());
    bool::from(given.as_bytes().ct_eq(token.as_bytes()))
}

/// With a token configured, every route but the health checks needs `Authorization: Bearer TOKEN`.
async fn auth(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if matches!(req.uri().path(), "/healthz" | "/readyz") || authorized(&st, req.headers()) {
        return next.run(req).await;
    }
    let mut r = ApiError(StatusCode::UNAUTHORIZED, "missing or wrong bearer token".into()).into_response();
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
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
    let root = st.cfg.data_root.clone();
    let spec = off_thread(move || req.resolve(&root).map_err(|e| scrubbed(e, &root))).await?;
    let job = enqueue(&st, spec, None).await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({"id": job.target, "state": job.state})),
    )
        .into_response())
}

async fn train_run(State(st): State<AppState>, JsonBody(req): JsonBody<TrainRequest>) -> ApiResult<Response> {
    let root = st.cfg.data_root.clone();
    let timeout_s = req.timeout_s;
    let spec = off_thread(move || req.resolve(&root).map_err(|e| scrubbed(e, &root))).await?;
    let job = enqueue(&st, spec, timeout_s).await?;
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

fn job_json(st: &AppState, j: &Job, id_key: &str) -> Value {
    json!({
        id_key: j.target,
        "state": j.state,
        "progress": j.progress,
        "attempts": j.attempts,
        "max_attempts": j.max_attempts,
        "error": j.error.as_deref().map(|e| scrub(e, &st.cfg.data_root)),
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
    let dir = Area::Tokenizers.dir(&st.cfg.data_root, &id)?;
    let stats = read_json(dir.join("stats.json")).await;
    let mut v = job_json(&st, &job, "id");
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
    Ok(axum::Json(job_json(&st, &job, "run_id")).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    state: Option<String>,
    limit: Option<usize>,
}

async fn list_runs(State(st): State<AppState>, QueryArgs(q): QueryArgs<ListQuery>) -> ApiResult<Response> {
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
    let runs: Vec<Value> = jobs.iter().map(|j| job_json(&st, j, "run_id")).collect();
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
    Ok((StatusCode::ACCEPTED, axum::Json(job_json(&st, &job, "run_id"))).into_response())
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
    let limit = st.cfg.queue.max_queued;
    let job = blocking(&st, move |s| s.resume(&jid, now(), limit))
        .await?
        .ok_or_else(|| not_found("job"))?;
    Ok((StatusCode::ACCEPTED, axum::Json(job_json(&st, &job, "run_id"))).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TailQuery {
    tail: Option<usize>,
}

fn run_dir(st: &AppState, id: &str) -> ApiResult<PathBuf> {
    Ok(Area::Runs.dir(&st.cfg.data_root, id)?)
}

/// A small JSON file of an artifact (stats, metrics), read off the async threads; `None` when
/// missing, unreadable or over 16 MB.
async fn read_json(path: PathBuf) -> Option<Value> {
    off_thread(move || {
        Ok(chatforge_data::read_capped(&path, 16 << 20)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok()))
    })
    .await
    .ok()
    .flatten()
}

/// Most lines one log read hands over.
const LOG_BATCH: usize = 1000;

async fn run_logs(
    State(st): State<AppState>,
    UrlPath(id): UrlPath<String>,
    QueryArgs(q): QueryArgs<TailQuery>,
) -> ApiResult<Response> {
    job_for(&st, &id, JobKind::Train).await?;
    let path = run_dir(&st, &id)?.join("logs.jsonl");
    let tail = q.tail.unwrap_or(200).min(10_000);
    let lines = off_thread(move || {
        let mut f = Follower::new(&path, LogFrom::Tail(tail));
        let mut out = Vec::new();
        while out.len() < tail {
            let got = f.read(tail - out.len()).map_err(|e| Error::Io {
                path: path.clone(),
                source: e,
            })?;
            if got.is_empty() {
                break;
            }
            out.extend(got);
        }
        Ok(out)
    })
    .await?;
    let last_id = lines.last().map(|l| l.id.to_string());
    let events: Vec<Value> = lines
        .into_iter()
        .map(|l| serde_json::from_str(&l.text).unwrap_or(Value::String(l.text)))
        .collect();
    Ok(axum::Json(json!({ "events": events, "last_id": last_id })).into_response())
}

/// Server-Sent Events: each line of `logs.jsonl` as one event with its id (`STEP:K`, see
/// [`crate::logs`]); live until the run's job ends. `Last-Event-ID` resumes after that event,
/// across crashes and restarts; otherwise the last `tail` lines come first.
async fn run_log_stream(
    State(st): State<AppState>,
    UrlPath(id): UrlPath<String>,
    QueryArgs(q): QueryArgs<TailQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let job = job_for(&st, &id, JobKind::Train).await?;
    let path = run_dir(&st, &id)?.join("logs.jsonl");
    let from = match headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<EventId>().ok())
    {
        Some(last) => LogFrom::After(last),
        None => LogFrom::Tail(q.tail.unwrap_or(200)),
    };
    struct S {
        st: AppState,
        follower: Option<Follower>,
        job: String,
        pending: std::collections::VecDeque<crate::logs::LogLine>,
        ended: bool,
    }
    let init = S {
        st: st.clone(),
        follower: Some(Follower::new(&path, from)),
        job: job.id,
        pending: Default::default(),
        ended: false,
    };
    let stream = futures_util::stream::unfold(init, |mut s| async move {
        loop {
            if let Some(l) = s.pending.pop_front() {
                let ev = SseEvent::default().id(l.id.to_string()).event("log").data(l.text);
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
            let mut f = s.follower.take()?;
            let (f, lines) = tokio::task::spawn_blocking(move || {
                let lines = f.read(LOG_BATCH).unwrap_or_default();
                (f, lines)
            })
            .await
            .ok()?;
            s.follower = Some(f);
            let more = lines.len() == LOG_BATCH;
            s.pending.extend(lines);
            if s.pending.is_empty() && !more {
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
    let metrics = read_json(dir.join("eval/metrics.json")).await;
    if metrics.is_none() && job.is_none() {
        return Err(not_found(&format!("evaluation of run {id:?}")));
    }
    Ok(axum::Json(json!({
        "run_id": id,
        "state": job.as_ref().map(|j| j.state),
        "error": job.as_ref().and_then(|j| j.error.as_deref()).map(|e| scrub(e, &st.cfg.data_root)),
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
    let mut v = job_json(&st, &job, "export_id");
    v["artifact"] = json!(format!("exports/{id}"));
    Ok(axum::Json(v).into_response())
}

fn artifact_dir(st: &AppState, kind: &str, id: &str) -> ApiResult<PathBuf> {
    let area = Area::parse(kind)
        .ok_or_else(|| not_found(&format!("artifact kind {kind:?} (runs, tokenizers or exports)")))?;
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

/// Readiness: the store answers, the data root is writable, a worker heartbeated within a
/// lease. Worker ids are shown only to a request that carries the token (when one is set).
async fn readyz(State(st): State<AppState>, headers: HeaderMap) -> Response {
    let lease = st.cfg.worker.lease_s;
    let store = blocking(&st, |s| s.ping()).await.is_ok();
    let workers = blocking(&st, move |s| s.live_workers(now() - lease))
        .await
        .unwrap_or_default();
    let probe = st.cfg.data_root.join(format!(".readyz-{}", std::process::id()));
    let writable = off_thread(move || {
        let ok = std::fs::write(&probe, b"ok").is_ok();
        let _ = std::fs::remove_file(&probe);
        Ok(ok)
    })
    .await
    .unwrap_or(false);
    let ready = store && writable && !workers.is_empty();
    let mut body = json!({"ready": ready, "store": store, "data_root_writable": writable,
                          "live_workers": workers.len()});
    if authorized(&st, &headers) {
        body["workers"] = json!(workers);
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}
