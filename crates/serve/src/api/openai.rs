//! `POST /v1/chat/completions`: the OpenAI chat API's common subset against a trained run or an
//! export, so existing chat clients can talk to it; `GET /v1/models` lists what answers. `model`
//! is a run or export id; `messages` (system, user, assistant;
//! string contents), `max_tokens` / `max_completion_tokens`, `temperature`, `top_p`, `seed`, `stop`
//! and `stream` are honoured. Other OpenAI fields are accepted and ignored, as clients send many.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chatforge_data::{Message, Role};
use chatforge_infer::chat::ReplyText;
use chatforge_infer::{ChatSession, Finish, Output, Sampling};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, AppState, JsonBody};
use chatforge_run::RunDir;

use crate::models::{Gen, Submission};
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
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    /// Replies wanted (1 to 16): the prompt runs once, each reply samples from its own seed.
    #[serde(default)]
    n: Option<usize>,
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
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// Replies one chat request may ask for.
const MAX_N: usize = 16;

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
        let persona_base = || {
            chatforge_data::personas::PersonaRun::read(&run)
                .ok()
                .flatten()
                .is_some_and(|p| p.base.is_some())
        };
        if !RunDir::new(&run).best().is_dir()
            && chatforge_infer::source::checkpoints(&run).is_empty()
            && !persona_base()
        {
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

/// What a chat request's `model` (and `persona`) name: the model to load, where it is, and the
/// adapter to apply. `model` is a run or export id, `RUN:ADAPTER`, or a persona's name (the
/// newest run with an adapter for it); `persona` picks that persona's adapter of the run when it
/// has one (then the persona instruction is not added).
async fn resolve(
    st: &AppState,
    model: &str,
    persona: Option<&str>,
) -> Result<(String, std::path::PathBuf, Option<String>), ApiError> {
    if let Some((run, adapter)) = model.split_once(':') {
        crate::paths::check_id(adapter)
            .map_err(|_| invalid(format!("model: {adapter:?} is not an adapter name")))?;
        return Ok((run.to_string(), model_path(st, run)?, Some(adapter.to_string())));
    }
    match model_path(st, model) {
        Ok(path) => {
            let adapter = persona.and_then(|p| persona_adapter(&path, p));
            Ok((model.to_string(), path, adapter))
        }
        Err(ApiError::NotFound(msg)) => {
            let root = st.cfg.data_root.clone();
            let name = model.to_string();
            let found = super::off_thread(move || {
                // The newest run first; a bounded number of them, each resolved as an id is
                // (no symlink out of the data root).
                let mut dirs: Vec<(std::time::SystemTime, std::path::PathBuf)> =
                    std::fs::read_dir(root.join(Area::Runs.as_str()))
                        .into_iter()
                        .flatten()
                        .flatten()
                        .take(MAX_RUNS_SEARCHED)
                        .filter_map(|e| {
                            let dir = Area::Runs.dir(&root, e.file_name().to_str()?).ok()?;
                            Some((e.metadata().ok()?.modified().ok()?, dir))
                        })
                        .collect();
                dirs.sort_by_key(|d| std::cmp::Reverse(d.0));
                Ok(dirs.into_iter().find_map(|(_, dir)| {
                    let adapter = persona_adapter(&dir, &name)?;
                    let id = dir.file_name()?.to_str()?.to_string();
                    Some((id, dir, adapter))
                }))
            })
            .await?;
            match found {
                Some((run, dir, adapter)) => Ok((run, dir, Some(adapter))),
                None => Err(ApiError::NotFound(format!(
                    "{msg}, nor a persona with an adapter"
                ))),
            }
        }
        Err(e) => Err(e),
    }
}

/// Runs looked through for a persona named as a model, at most.
const MAX_RUNS_SEARCHED: usize = 1000;

/// The adapter folder of persona `name` (its name or folder name) in persona run `dir`.
fn persona_adapter(dir: &std::path::Path, name: &str) -> Option<String> {
    let run = chatforge_data::personas::PersonaRun::read(dir).ok().flatten()?;
    let slug = chatforge_data::personas::slug(name);
    run.personas
        .iter()
        .find(|p| p.name == name || p.adapter == name || p.adapter == slug)
        .map(|p| p.adapter.clone())
        .filter(|a| chatforge_model::lora::is_adapter_dir(&RunDir::new(dir).adapter(a)))
}

pub async fn chat_completions(
    State(st): State<AppState>,
    JsonBody(req): JsonBody<ChatRequest>,
) -> Result<Response, ApiError> {
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
    let n = req.n.unwrap_or(1);
    if n == 0 || n > MAX_N.min(st.cfg.api.max_batch) {
        return Err(invalid(format!("n: 1 to {}", MAX_N.min(st.cfg.api.max_batch))));
    }
    let persona = req.persona.clone().filter(|p| !p.trim().is_empty());
    let (id, dir, adapter_name) = resolve(&st, &req.model, persona.as_deref()).await?;
    let served = st.models.get(&id, &dir, &st.cfg.data_root).await?;
    let adapter = match adapter_name.clone() {
        Some(a) => {
            let s = served.clone();
            let root = st.cfg.data_root.clone();
            Some(
                super::off_thread(move || {
                    s.adapter(&a)
                        .map_err(|e| invalid(crate::paths::scrub(&format!("model: {e}"), &root)))
                })
                .await?,
            )
        }
        None => None,
    };
    let model = served.model.clone();
    let mut session = ChatSession::new(Default::default(), sampling, max_new.min(model.config.n_ctx));
    if adapter.is_none() {
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
    let request = session
        .request(&model, &last.content)
        .map_err(|e| invalid(e.to_string()))?;
    let prompt_tokens = request.prompt.len();
    let timeout = st.cfg.api.request_timeout_s;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let cancel = Arc::new(AtomicBool::new(false));
    served.submit(Submission {
        request,
        n,
        adapter,
        cancel: cancel.clone(),
        deadline: Instant::now() + Duration::from_secs_f64(timeout),
        events: tx,
    })?;
    // A client that goes away drops this future (or the stream), and with it the guard that
    // ends the replies at the next step.
    let stop_on_drop = StopOnDrop(cancel);
    let reply = Reply {
        id: format!("chatcmpl-{}", crate::new_id()),
        created: crate::now() as u64,
        model: req.model.clone(),
        prompt_tokens,
        timeout,
    };
    if !req.stream {
        let mut texts = vec![String::new(); n];
        let mut outs: Vec<Option<Output>> = vec![None; n];
        while outs.iter().any(Option::is_none) {
            match rx.recv().await {
                Some(Gen::Text(..)) => {}
                Some(Gen::Done(i, out)) => {
                    if out.finish == Finish::Timeout {
                        return Err(ApiError::Timeout(reply.timed_out()));
                    }
                    texts[i] = out.text.trim().to_string();
                    outs[i] = Some(out);
                }
                Some(Gen::Failed(msg)) => return Err(invalid(msg)),
                None => return Err(internal("the decode thread ended".into())),
            }
        }
        drop(stop_on_drop);
        let outs: Vec<Output> = outs.into_iter().flatten().collect();
        let choices: Vec<Value> = outs
            .iter()
            .zip(texts)
            .enumerate()
            .map(|(i, (o, text))| {
                json!({"index": i, "message": {"role": "assistant", "content": text},
                       "finish_reason": finish_reason(o.finish)})
            })
            .collect();
        let completion: usize = outs.iter().map(|o| o.ids.len()).sum();
        return Ok(axum::Json(json!({
            "id": reply.id, "object": "chat.completion", "created": reply.created,
            "model": reply.model, "choices": choices, "usage": reply.usage(completion),
        }))
        .into_response());
    }
    let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
    let mut events: Vec<String> = (0..n)
        .map(|i| {
            reply
                .chunk(i, json!({"role": "assistant", "content": ""}), None)
                .to_string()
        })
        .collect();
    events.reverse();
    let state = Streaming {
        rx,
        reply,
        queued: events,
        trims: vec![ReplyText::default(); n],
        left: n,
        completion: 0,
        include_usage,
        done: false,
        _stop: stop_on_drop,
    };
    let stream = futures_util::stream::unfold(state, |mut s| async move {
        let data = s.next().await?;
        Some((
            Ok::<_, std::convert::Infallible>(SseEvent::default().data(data)),
            s,
        ))
    });
    Ok(Sse::new(stream).into_response())
}

/// OpenAI's `finish_reason` for how a reply ended.
pub(super) fn finish_reason(f: Finish) -> &'static str {
    match f {
        Finish::Length | Finish::Context => "length",
        _ => "stop",
    }
}

/// What every response and chunk of one request repeats.
struct Reply {
    id: String,
    created: u64,
    model: String,
    prompt_tokens: usize,
    timeout: f64,
}

impl Reply {
    fn chunk(&self, i: usize, delta: Value, reason: Option<&str>) -> Value {
        json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
               "model": self.model, "choices": [{"index": i, "delta": delta, "finish_reason": reason}]})
    }

    fn usage(&self, completion: usize) -> Value {
        json!({"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
               "total_tokens": self.prompt_tokens + completion})
    }

    fn timed_out(&self) -> String {
        format!(
            "the request ran out of its {} s (api.request_timeout_s)",
            self.timeout
        )
    }
}

/// A streamed chat reply: the decode thread's events as SSE data lines, then `[DONE]`.
struct Streaming {
    rx: tokio::sync::mpsc::UnboundedReceiver<Gen>,
    reply: Reply,
    /// Lines ready to send, last first.
    queued: Vec<String>,
    trims: Vec<ReplyText>,
    left: usize,
    completion: usize,
    include_usage: bool,
    done: bool,
    _stop: StopOnDrop,
}

impl Streaming {
    async fn next(&mut self) -> Option<String> {
        loop {
            if let Some(v) = self.queued.pop() {
                return Some(v);
            }
            if self.done {
                return None;
            }
            if self.left == 0 {
                self.done = true;
                self.queued.push("[DONE]".into());
                if self.include_usage {
                    let mut last = self.reply.chunk(0, json!({}), None);
                    last["choices"] = json!([]);
                    last["usage"] = self.reply.usage(self.completion);
                    self.queued.push(last.to_string());
                }
                continue;
            }
            match self.rx.recv().await {
                Some(Gen::Text(i, piece)) => {
                    if let Some(p) = self.trims[i].piece(&piece) {
                        return Some(self.reply.chunk(i, json!({"content": p}), None).to_string());
                    }
                }
                Some(Gen::Done(i, out)) => {
                    self.left -= 1;
                    self.completion += out.ids.len();
                    if out.finish == Finish::Timeout {
                        let msg = self.reply.timed_out();
                        self.left = 0;
                        self.include_usage = false;
                        return Some(json!({"error": {"message": msg, "code": "504"}}).to_string());
                    }
                    return Some(
                        self.reply
                            .chunk(i, json!({}), Some(finish_reason(out.finish)))
                            .to_string(),
                    );
                }
                Some(Gen::Failed(msg)) => {
                    self.left = 0;
                    self.include_usage = false;
                    return Some(json!({"error": {"message": msg}}).to_string());
                }
                None => {
                    self.left = 0;
                    self.include_usage = false;
                }
            }
        }
    }
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
