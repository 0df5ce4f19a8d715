//! The HTTP API (axum), one module per resource, each with its `router()`: runs, tokenizers, logs,
//! artifacts, health, and the OpenAI-compatible chat. One error type decides every status; request
//! bodies and query strings are typed at the edge; every path stays inside the data root.

mod artifacts;
mod completions;
mod data;
mod health;
mod logs;
pub mod openai;
mod personas;
mod runs;
mod studio;
mod tokenizers;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::jobs::Spec;
use crate::paths::{Area, check_id, scrub};
use crate::store::{Job, JobKind, JobState, JobStore, NewJob};
use crate::{Error, ServeConfig, now};

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn JobStore>,
    pub cfg: Arc<ServeConfig>,
    /// Cancelled at shutdown, so open log streams end and the server can stop.
    pub shutdown: CancellationToken,
    /// Models loaded for generation, each with its decode thread.
    pub models: Arc<crate::models::Models>,
    /// `/v1/completions` requests running at once (`api.max_generations`); more get 429.
    pub generations: Arc<tokio::sync::Semaphore>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl AppState {
    pub fn new(store: Arc<dyn JobStore>, cfg: ServeConfig, shutdown: CancellationToken) -> AppState {
        let metrics: Arc<crate::metrics::Metrics> = Default::default();
        AppState {
            store,
            generations: Arc::new(tokio::sync::Semaphore::new(cfg.api.max_generations)),
            models: Arc::new(crate::models::Models::new(&cfg.api, metrics.clone())),
            metrics,
            cfg: Arc::new(cfg),
            shutdown,
        }
    }
}

/// Every way a request fails, and so every status the API answers with: decided here alone.
#[derive(Debug)]
pub enum ApiError {
    /// 400: a body or query string that does not parse, or a path out of the data root.
    BadRequest(String),
    /// 401: no token, or the wrong one.
    Unauthorized,
    /// 404
    NotFound(String),
    /// 405
    MethodNotAllowed,
    /// 409: the resource is in the wrong state for this (cancelling a finished run).
    Conflict(String),
    /// 413
    TooLarge(String),
    /// 415
    UnsupportedMediaType(String),
    /// 422: a request that parses but cannot work; the message names the field.
    Invalid(String),
    /// 429: the queue is full, or too many generations run; come back later.
    Busy(String),
    /// 503: the model is still loading; come back later.
    Loading(String),
    /// 504: a generation ran out of time.
    Timeout(String),
    /// 500: logged in full where it happens; the client gets a generic message.
    Internal,
}

/// How long a client told "too many" (429) or "not ready" (503) should wait, seconds.
pub const RETRY_AFTER_S: &str = "2";

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Busy(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Loading(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn message(self) -> String {
        match self {
            ApiError::BadRequest(m)
            | ApiError::NotFound(m)
            | ApiError::Conflict(m)
            | ApiError::TooLarge(m)
            | ApiError::UnsupportedMediaType(m)
            | ApiError::Invalid(m)
            | ApiError::Busy(m)
            | ApiError::Loading(m)
            | ApiError::Timeout(m) => m,
            ApiError::Unauthorized => "missing or wrong bearer token".into(),
            ApiError::MethodNotAllowed => "this route does not take that method".into(),
            ApiError::Internal => "internal error".into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut r = (status, axum::Json(json!({ "error": self.message() }))).into_response();
        let h = r.headers_mut();
        match status {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_S));
            }
            StatusCode::UNAUTHORIZED => {
                h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        r
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            Error::Invalid(m) => ApiError::Invalid(m),
            Error::BadPath(m) => ApiError::BadRequest(m),
            Error::QueueFull(_) => ApiError::Busy(e.to_string()),
            other => {
                // Logged with its context; the client gets no internals.
                crate::log::error("internal error", &[("error", &other)]);
                ApiError::Internal
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
    ApiError::NotFound(format!("no {what}"))
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
                let text = rej.body_text();
                Err(match rej {
                    JsonRejection::JsonDataError(_) => ApiError::Invalid(text),
                    JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType(text),
                    r if r.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge(text),
                    _ => ApiError::BadRequest(text),
                })
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
                Err(ApiError::BadRequest(rej.body_text()))
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
        .merge(tokenizers::router())
        .merge(runs::router())
        .merge(logs::router())
        .merge(artifacts::router())
        .merge(data::router())
        .merge(personas::router())
        .merge(health::router())
        .merge(openai::router())
        .merge(studio::router())
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth))
        .layer(axum::middleware::from_fn_with_state(state.clone(), count))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn(openai::error_shape))
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

/// With a token configured, every route but the health checks and the studio's files needs
/// `Authorization: Bearer TOKEN`.
async fn auth(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if matches!(path, "/healthz" | "/readyz") || studio::is_studio(path) || authorized(&st, req.headers()) {
        return next.run(req).await;
    }
    ApiError::Unauthorized.into_response()
}

/// Counts each answered request by its route pattern (not its path: ids would make the label set
/// unbounded) and status, for `/metrics`.
async fn count(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let r = next.run(req).await;
    st.metrics.request(&route, r.status().as_u16());
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
        queue: st.cfg.queue.name.clone(),
    };
    let limit = st.cfg.queue.max_queued;
    blocking(st, move |s| s.enqueue(job, limit)).await
}

async fn job_for(st: &AppState, id: &str, kind: JobKind) -> ApiResult<Job> {
    check_id(id)?;
    let key = id.to_string();
    blocking(st, move |s| s.latest_for(&key, Some(kind)))
        .await?
        .ok_or_else(|| not_found(&format!("{} job {id:?}", kind.as_str())))
}

fn job_json(st: &AppState, j: &Job, id_key: &str) -> Value {
    let mut v = json!({
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
        "queue": j.queue,
    });
    if j.kind == JobKind::Train {
        // What the run trains: the mode, and its data and starting point as the request gave them.
        let train = &j.spec["config"]["train"];
        let rel = |v: &Value| v.as_str().map(|p| scrub(p, &st.cfg.data_root));
        v["mode"] = train["mode"].clone();
        v["data"] = json!(rel(&train["data"]));
        v["init"] = json!(rel(&train["init"]));
    }
    v
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
