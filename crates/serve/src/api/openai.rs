//! `POST /v1/chat/completions`: the OpenAI chat API's common subset against a trained run or an
//! export, so existing chat clients can talk to it; `GET /v1/models` lists what answers. `model`
//! is a run or export id; `messages` (system, user, assistant;
//! string contents), `max_tokens` / `max_completion_tokens`, `temperature`, `top_p`, `seed`, `stop`
//! and `stream` are honoured. Other OpenAI fields are accepted and ignored, as clients send many.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chatforge_data::{Message, Role};
use chatforge_infer::{ChatSession, Checkpoint, Finish, LoadedModel, Sampling, WeightType};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, AppState, JsonBody};
use chatforge_run::RunDir;

use crate::paths::Area;

#[derive(Deserialize)]
pub struct ChatRequest {
    model: String,
    messages: Vec<ChatMessage>,
    #[serde(default)]
    max_tokens: Option<usize>,
    #[serde(default)]
    max_completion_tokens: Option<usize>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    stop: Option<Stop>,
    #[serde(default)]
    stream: bool,
    /// chatforge's: answer as this persona (its adapter when the run has one, otherwise the
    /// persona instruction `Respond as NAME:`).
    #[serde(default)]
    persona: Option<String>,
    /// chatforge's: the channel the persona speaks in.
    #[serde(default)]
    channel: Option<String>,
    #[serde(flatten)]
    _ignored: HashMap<String, Value>,
}

#[derive(Deserialize)]
struct ChatMessage {
    role: String,
    content: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    /// `stop` as a list of texts (none when absent).
    pub(super) fn list(stop: Option<Stop>) -> Vec<String> {
        match stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(v)) => v,
        }
    }
}

/// Loaded models by id and adapter; a few stay in memory between requests.
#[derive(Default)]
pub struct ModelCache(Mutex<Vec<(String, Arc<LoadedModel>)>>);

const CACHED_MODELS: usize = 3;

impl ModelCache {
    pub(super) fn get(
        &self,
        id: &str,
        adapter: Option<&str>,
        path: &std::path::Path,
        root: &std::path::Path,
    ) -> Result<Arc<LoadedModel>, ApiError> {
        let key = format!("{id}#{}", adapter.unwrap_or(""));
        if let Ok(c) = self.0.lock()
            && let Some((_, m)) = c.iter().find(|(k, _)| *k == key)
        {
            return Ok(m.clone());
        }
        let m = Arc::new(
            LoadedModel::open_with(path, &Checkpoint::Best, None, adapter, WeightType::F32)
                .map_err(|e| ApiError::Invalid(crate::paths::scrub(&format!("model: {e}"), root)))?,
        );
        if let Ok(mut c) = self.0.lock() {
            c.retain(|(k, _)| *k != key);
            c.push((key, m.clone()));
            if c.len() > CACHED_MODELS {
                c.remove(0);
            }
        }
        Ok(m)
    }
}

/// The OpenAI routes' sampling fields, checked: `temperature` in 0..=2 (default 1; 0 is greedy),
/// `top_p` in (0, 1] (default 1), `seed` (default 0).
pub(super) fn sampling(
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<u64>,
) -> Result<Sampling, ApiError> {
    let temperature = temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(invalid("temperature: must be in 0..=2"));
    }
    let top_p = top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(invalid("top_p: must be in (0, 1]"));
    }
    Ok(Sampling {
        temperature,
        top_k: 0,
        top_p,
        repetition_penalty: 1.0,
        seed: seed.unwrap_or(0),
    })
}

pub(super) fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::Invalid(msg.into())
}

/// A task that failed to run (it panicked): logged, answered generically.
pub(super) fn internal(what: String) -> ApiError {
    crate::log::error("internal error", &[("error", &what)]);
    ApiError::Internal
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(list_models))
        .route("/v1/completions", post(super::completions::completions))
}

/// What `model` names: a run with a checkpoint, or an export (HF folder or GGUF file).
pub(super) fn model_path(st: &AppState, id: &str) -> Result<std::path::PathBuf, ApiError> {
    let root = &st.cfg.data_root;
    let not_id = || invalid(format!("model: {id:?} is not a run or export id"));
    let run = Area::Runs.dir(root, id).map_err(|_| not_id())?;
    if run.is_dir() {
        if !RunDir::new(&run).best().is_dir() && chatforge_infer::source::checkpoints(&run).is_empty() {
            return Err(ApiError::NotFound(format!("no trained run {id:?}")));
        }
        return Ok(run);
    }
    let export = Area::Exports.dir(root, id).map_err(|_| not_id())?;
    if export.is_dir() {
        return Ok(export);
    }
    Err(ApiError::NotFound(format!("no trained run or export {id:?}")))
}

/// `GET /v1/models`: the runs that have a best checkpoint and the HF and GGUF exports, newest
/// first, in OpenAI's list shape; a persona run's personas under `personas` (chatforge's field).
async fn list_models(State(st): State<AppState>) -> Result<Response, ApiError> {
    use crate::store::{JobKind, JobState};
    let runs = super::blocking(&st, |s| s.list(Some(JobKind::Train), None, 1000)).await?;
    let exports = super::blocking(&st, |s| {
        s.list(Some(JobKind::Export), Some(JobState::Succeeded), 1000)
    })
    .await?;
    let root = st.cfg.data_root.clone();
    let data = super::off_thread(move || {
        let mut out = Vec::new();
        for j in &runs {
            let Ok(dir) = Area::Runs.dir(&root, &j.target) else {
                continue;
            };
            if !RunDir::new(&dir).best().is_dir() {
                continue;
            }
            let personas: Vec<String> = chatforge_data::personas::PersonaRun::read(&dir)
                .ok()
                .flatten()
                .map(|p| p.personas.into_iter().map(|e| e.name).collect())
                .unwrap_or_default();
            out.push(
                json!({"id": j.target, "object": "model", "created": j.created_at as u64,
                            "owned_by": "chatforge", "kind": "run", "personas": personas}),
            );
        }
        for j in exports
            .iter()
            .filter(|j| matches!(j.spec["format"].as_str(), Some("hf" | "gguf")))
        {
            out.push(
                json!({"id": j.target, "object": "model", "created": j.created_at as u64,
                            "owned_by": "chatforge", "kind": "export", "format": j.spec["format"],
                            "run": j.spec["run"], "personas": []}),
            );
        }
        Ok(out)
    })
    .await?;
    Ok(axum::Json(json!({"object": "list", "data": data})).into_response())
}

pub async fn chat_completions(
    State(st): State<AppState>,
    JsonBody(req): JsonBody<ChatRequest>,
) -> Result<Response, ApiError> {
    let dir = model_path(&st, &req.model)?;
    let (last, history) = req
        .messages
        .split_last()
        .ok_or_else(|| invalid("messages: empty"))?;
    if last.role != "user" {
        return Err(invalid("messages: the last message must be the user's"));
    }
    let role = |r: &str| match r {
        "system" | "developer" => Ok(Role::System),
        "user" => Ok(Role::User),
        "assistant" => Ok(Role::Assistant),
        other => Err(invalid(format!(
            "messages: role {other:?} (system, user or assistant)"
        ))),
    };
    let sampling = sampling(req.temperature, req.top_p, req.seed)?;
    let max_new = req.max_completion_tokens.or(req.max_tokens).unwrap_or(256);
    if max_new == 0 {
        return Err(invalid("max_tokens: must be at least 1"));
    }
    // Each generation takes the machine's cores; beyond the bound, ask the client to come back.
    let permit = st.generations.clone().try_acquire_owned().map_err(|_| {
        ApiError::Busy(format!(
            "{} generations are running, the most this server runs at once: retry shortly",
            st.cfg.api.max_generations
        ))
    })?;
    let cache = st.models.clone();
    let persona = req.persona.clone().filter(|p| !p.trim().is_empty());
    let (model, adapter) = {
        let (id, dir, root, persona) = (
            req.model.clone(),
            dir.clone(),
            st.cfg.data_root.clone(),
            persona.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let base = cache.get(&id, None, &dir, &root)?;
            // A persona with its own adapter (`adapters/NAME` of a persona run) answers with it.
            match persona.as_deref().and_then(|p| base.persona_adapter(p)) {
                Some(a) => Ok::<_, ApiError>((cache.get(&id, Some(&a), &dir, &root)?, true)),
                None => Ok((base, false)),
            }
        })
        .await
        .map_err(|e| internal(format!("loading a model: {e}")))??
    };
    let mut session = ChatSession::new(Default::default(), sampling, max_new.min(model.config.n_ctx));
    if !adapter {
        session.set_persona(persona.as_deref());
    }
    session.set_channel(req.channel.as_deref());
    session.stop_strings = Stop::list(req.stop);
    for m in history {
        session
            .conversation
            .messages
            .push(Message::new(role(&m.role)?, m.content.clone()));
    }
    let user = last.content.clone();
    let id = format!("chatcmpl-{}", crate::new_id());
    let created = crate::now() as u64;
    let run = req.model.clone();
    let finish = |f: Finish| match f {
        Finish::Length | Finish::Context => "length",
        _ => "stop",
    };
    if !req.stream {
        // A client that goes away drops this future, and with it the guard that stops the
        // generation at its next token.
        let gone = Arc::new(AtomicBool::new(false));
        let _stop_on_drop = StopOnDrop(gone.clone());
        let out = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            session.send(&model, &user, Some(&gone), |_| {})
        })
        .await
        .map_err(|e| internal(format!("generating: {e}")))?
        .map_err(|e| invalid(e.to_string()))?;
        return Ok(axum::Json(json!({
            "id": id, "object": "chat.completion", "created": created, "model": run,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": out.text},
                         "finish_reason": finish(out.finish)}],
            "usage": {"prompt_tokens": out.prompt_tokens, "completion_tokens": out.ids.len(),
                      "total_tokens": out.prompt_tokens + out.ids.len()},
        }))
        .into_response());
    }
    // Streaming: chunks as the text comes; a client that goes away stops the generation.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let gone = Arc::new(AtomicBool::new(false));
    let chunk = {
        let (id, run) = (id.clone(), run.clone());
        move |delta: Value, reason: Option<&str>| {
            json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": run,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": reason}]})
        }
    };
    let _ = tx.send(chunk(json!({"role": "assistant"}), None));
    {
        let (tx, gone, chunk) = (tx.clone(), gone.clone(), chunk.clone());
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let result = session.send(&model, &user, Some(&gone), |piece| {
                if tx.send(chunk(json!({"content": piece}), None)).is_err() {
                    gone.store(true, Ordering::Relaxed);
                }
            });
            let last = match result {
                Ok(out) => chunk(json!({}), Some(finish(out.finish))),
                Err(e) => json!({"error": {"message": e.to_string()}}),
            };
            let _ = tx.send(last);
        });
    }
    drop(tx);
    let stream = futures_util::stream::unfold((rx, false), |(mut rx, done)| async move {
        if done {
            return None;
        }
        match rx.recv().await {
            Some(v) => Some((
                Ok::<_, std::convert::Infallible>(SseEvent::default().data(v.to_string())),
                (rx, false),
            )),
            None => Some((Ok(SseEvent::default().data("[DONE]")), (rx, true))),
        }
    });
    Ok(Sse::new(stream).into_response())
}

/// Sets the flag when dropped: the handler's future is dropped when its client disconnects.
pub(super) struct StopOnDrop(pub(super) Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Errors of the OpenAI-compatible routes in OpenAI's shape
/// (`{"error": {"message", "type", "param", "code"}}`), so official clients show the message;
/// the rest of the API keeps `{"error": "message"}`.
pub async fn error_shape(req: Request, next: Next) -> Response {
    if !req.uri().path().starts_with("/v1/") {
        return next.run(req).await;
    }
    let r = next.run(req).await;
    let status = r.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return r;
    }
    let (mut parts, body) = r.into_parts();
    let bytes = axum::body::to_bytes(body, 64 << 10).await.unwrap_or_default();
    let message = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
    let kind = match status {
        StatusCode::UNAUTHORIZED => "authentication_error",
        StatusCode::NOT_FOUND => "not_found_error",
        StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
        s if s.is_server_error() => "server_error",
        _ => "invalid_request_error",
    };
    let param = message
        .split_once(':')
        .map(|(p, _)| p.trim())
        .filter(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    let body = json!({"error": {"message": message, "type": kind, "param": param,
                                "code": status.as_u16().to_string()}});
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::Json(body).into_response().into_body())
}
