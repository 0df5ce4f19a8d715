//! `/runs`: training runs as jobs (submit, list, state, cancel, resume), their evaluation and
//! their exports.

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use serde::Deserialize;
use serde_json::Value;

use super::{
    ApiError, ApiResult, AppState, JsonBody, QueryArgs, blocking, enqueue, job_for, job_json, not_found,
    off_thread, read_json, run_dir, scrubbed,
};
use chatforge_run::RunDir;

use crate::jobs::{ExportRequest, Spec, TrainRequest};
use crate::now;
use crate::paths::scrub;
use crate::store::{Job, JobKind, JobState};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/runs/train", post(train_run))
        .route("/runs", get(list_runs))
        .route("/runs/{id}", get(get_run))
        .route("/runs/{id}/cancel", post(cancel_run))
        .route("/runs/{id}/resume", post(resume_run))
        .route("/runs/{id}/evaluate", post(evaluate_run))
        .route("/runs/{id}/eval", get(run_eval))
        .route("/runs/{id}/export", post(export_run))
        .route("/presets", get(list_presets))
        .route("/exports", get(list_exports))
        .route("/exports/{id}", get(get_export))
}

async fn train_run(State(st): State<AppState>, JsonBody(req): JsonBody<TrainRequest>) -> ApiResult<Response> {
    let root = st.cfg.data_root.clone();
    let timeout_s = req.timeout_s;
    let max = st.cfg.worker.max_processes;
    let spec = off_thread(move || req.resolve(&root, max).map_err(|e| scrubbed(e, &root))).await?;
    let job = enqueue(&st, spec, timeout_s).await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({"run_id": job.target, "state": job.state})),
    )
        .into_response())
}

/// The bundled presets (`configs/*.toml`) as the `model` and `train` of a request.
async fn list_presets() -> ApiResult<Response> {
    let mut list = Vec::new();
    for (name, text) in chatforge_pipeline::presets::PRESETS {
        let v = chatforge_pipeline::presets::as_json(text)
            .map_err(|e| ApiError::from(crate::Error::Store(e.to_string())))?;
        list.push(json!({"name": name, "model": v["model"], "train": v["train"]}));
    }
    Ok(axum::Json(json!({ "presets": list })).into_response())
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
            ApiError::Invalid(format!(
                "state: {s:?} is not one of queued, running, succeeded, failed, cancelled"
            ))
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
        return Err(ApiError::Conflict(format!(
            "the run is already {}",
            job.state.as_str()
        )));
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
        return Err(ApiError::Conflict(format!(
            "only a failed or cancelled run resumes; this one is {}",
            job.state.as_str()
        )));
    }
    let jid = job.id.clone();
    let limit = st.cfg.queue.max_queued;
    let job = blocking(&st, move |s| s.resume(&jid, now(), limit))
        .await?
        .ok_or_else(|| not_found("job"))?;
    Ok((StatusCode::ACCEPTED, axum::Json(job_json(&st, &job, "run_id"))).into_response())
}

/// A run that finished training (evaluation and export need its best checkpoint).
async fn finished_run(st: &AppState, id: &str) -> ApiResult<Job> {
    let job = job_for(st, id, JobKind::Train).await?;
    if job.state != JobState::Succeeded && !RunDir::new(run_dir(st, id)?).best().is_dir() {
        return Err(ApiError::Conflict(format!(
            "the run is {} and has no best checkpoint yet",
            job.state.as_str()
        )));
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
    // Multiple-choice task results (`chatforge eval --task`), without their per-document detail.
    let tasks_dir = RunDir::new(&dir).task_results();
    let tasks: Vec<Value> = off_thread(move || {
        Ok(chatforge_infer::tasks::read_results(&tasks_dir)
            .into_iter()
            .map(|t| {
                json!({"task": t.task, "docs": t.docs, "num_fewshot": t.num_fewshot, "acc": t.acc,
                       "acc_stderr": t.acc_stderr, "acc_norm": t.acc_norm, "acc_norm_stderr": t.acc_norm_stderr,
                       "centered": t.centered, "random_baseline": t.random_baseline})
            })
            .collect())
    })
    .await?;
    if metrics.is_none() && job.is_none() && tasks.is_empty() {
        return Err(not_found(&format!("evaluation of run {id:?}")));
    }
    Ok(axum::Json(json!({
        "run_id": id,
        "state": job.as_ref().map(|j| j.state),
        "error": job.as_ref().and_then(|j| j.error.as_deref()).map(|e| scrub(e, &st.cfg.data_root)),
        "metrics": metrics,
        "tasks": tasks,
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
    Ok(axum::Json(export_json(&st, &job)).into_response())
}

fn export_json(st: &AppState, j: &Job) -> Value {
    let mut v = job_json(st, j, "export_id");
    v["artifact"] = json!(format!("exports/{}", j.target));
    for k in ["run", "format", "quant"] {
        v[k] = j.spec[k].clone();
    }
    v
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportsQuery {
    /// Only this run's exports.
    run: Option<String>,
}

/// The newest exports first, at most 1000 (of one run with `?run=ID`).
async fn list_exports(
    State(st): State<AppState>,
    QueryArgs(q): QueryArgs<ExportsQuery>,
) -> ApiResult<Response> {
    let jobs = blocking(&st, |s| s.list(Some(JobKind::Export), None, 1000)).await?;
    let list: Vec<Value> = jobs
        .iter()
        .filter(|j| q.run.as_deref().is_none_or(|r| j.spec["run"] == r))
        .map(|j| export_json(&st, j))
        .collect();
    Ok(axum::Json(json!({ "exports": list })).into_response())
}
