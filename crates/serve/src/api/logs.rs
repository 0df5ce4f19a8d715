//! `/runs/{id}/logs`: a run's `logs.jsonl`, its tail as JSON or followed live as Server-Sent
//! Events (read through [`crate::logs::Follower`], off the async threads).

use std::time::Duration;

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiResult, AppState, QueryArgs, blocking, job_for, off_thread, run_dir};
use chatforge_run::RunDir;

use crate::Error;
use crate::logs::{EventId, Follower, From as LogFrom};
use crate::store::{JobKind, JobState};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/runs/{id}/logs", get(run_logs))
        .route("/runs/{id}/logs/stream", get(run_log_stream))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TailQuery {
    tail: Option<usize>,
}

/// Most lines one log read hands over.
const LOG_BATCH: usize = 1000;

async fn run_logs(
    State(st): State<AppState>,
    UrlPath(id): UrlPath<String>,
    QueryArgs(q): QueryArgs<TailQuery>,
) -> ApiResult<Response> {
    job_for(&st, &id, JobKind::Train).await?;
    let path = RunDir::new(run_dir(&st, &id)?).logs();
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
    let path = RunDir::new(run_dir(&st, &id)?).logs();
    let from = match headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<EventId>().ok())
    {
        Some(last) => LogFrom::After(last),
        None => LogFrom::Tail(q.tail.unwrap_or(200).min(10_000)),
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
