//! `/tokenizers`: train one as a job, see its state and stats.

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use super::{
    ApiResult, AppState, JsonBody, blocking, enqueue, job_for, job_json, off_thread, read_json, scrubbed,
};
use crate::jobs::TokenizerRequest;
use crate::paths::Area;
use crate::store::JobKind;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/tokenizers/train", post(train_tokenizer))
        .route("/tokenizers", get(list_tokenizers))
        .route("/tokenizers/{id}", get(get_tokenizer))
}

/// The newest tokenizer jobs first, at most 1000.
async fn list_tokenizers(State(st): State<AppState>) -> ApiResult<Response> {
    let jobs = blocking(&st, |s| s.list(Some(JobKind::Tokenizer), None, 1000)).await?;
    let list: Vec<_> = jobs
        .iter()
        .map(|j| {
            let mut v = job_json(&st, j, "id");
            v["vocab_size"] = j.spec["vocab_size"].clone();
            v["kind"] = j.spec["kind"].clone();
            v
        })
        .collect();
    Ok(axum::Json(json!({ "tokenizers": list })).into_response())
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

async fn get_tokenizer(State(st): State<AppState>, UrlPath(id): UrlPath<String>) -> ApiResult<Response> {
    let job = job_for(&st, &id, JobKind::Tokenizer).await?;
    let dir = Area::Tokenizers.dir(&st.cfg.data_root, &id)?;
    let stats = read_json(dir.join("stats.json")).await;
    let mut v = job_json(&st, &job, "id");
    v["stats"] = json!(stats);
    v["artifact"] = json!(
        dir.join(chatforge_run::TOKENIZER_FILE)
            .is_file()
            .then(|| format!("tokenizers/{id}/tokenizer.json"))
    );
    Ok(axum::Json(v).into_response())
}
