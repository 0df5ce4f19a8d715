//! Health (`/healthz`, `/readyz`) and the OpenAPI document.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::{AppState, authorized, blocking, off_thread};
use crate::now;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/openapi.json",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    include_str!("../openapi.json"),
                )
            }),
        )
        .route("/healthz", get(|| async { axum::Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// Jobs counted per state at most (a scrape stays cheap however many the store keeps).
const JOBS_COUNTED: usize = 100_000;

/// `GET /metrics`: Prometheus' text format.
async fn metrics(State(st): State<AppState>) -> Response {
    use crate::store::JobState;
    let lease = st.cfg.worker.lease_s;
    let jobs = blocking(&st, |s| {
        [
            JobState::Queued,
            JobState::Running,
            JobState::Succeeded,
            JobState::Failed,
            JobState::Cancelled,
        ]
        .into_iter()
        .map(|state| Ok((state.as_str(), s.list(None, Some(state), JOBS_COUNTED)?.len())))
        .collect()
    })
    .await
    .unwrap_or_default();
    let workers = blocking(&st, move |s| s.live_workers(now() - lease))
        .await
        .unwrap_or_default();
    let models = st
        .models
        .loaded()
        .iter()
        .map(|m| (m.id.clone(), m.waiting(), m.running()))
        .collect();
    let gauges = crate::metrics::Gauges {
        models,
        jobs,
        workers,
    };
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        st.metrics.render(&gauges),
    )
        .into_response()
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
