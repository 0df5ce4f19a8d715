//! `POST /v1/completions`: OpenAI's legacy completions API over a run or an export: a prompt as
//! text or token ids (one or a batch), `max_tokens`, `temperature`, `top_p`, `seed`, `stop`,
//! `logprobs` and `echo`. With `echo` and `logprobs` the prompt's own tokens are scored, which is
//! how lm-evaluation-harness's `local-completions` model computes log-likelihoods.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use chatforge_infer::completion::{CompletionOptions, complete};
use serde::Deserialize;
use serde_json::{Value, json};

use super::openai::{Stop, StopOnDrop, internal, invalid, model_path, sampling};
use super::{ApiError, AppState, JsonBody};

/// Prompts in one request at most.
const MAX_PROMPTS: usize = 64;

#[derive(Deserialize)]
pub struct CompletionRequest {
    model: String,
    prompt: Prompt,
    #[serde(default)]
    max_tokens: Option<usize>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    stop: Option<Stop>,
    #[serde(default)]
    logprobs: Option<usize>,
    #[serde(default)]
    echo: bool,
    #[serde(default)]
    n: Option<usize>,
    #[serde(default)]
    stream: bool,
    #[serde(flatten)]
    _ignored: HashMap<String, Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Prompt {
    Text(String),
    Ids(Vec<u32>),
    Texts(Vec<String>),
    Batch(Vec<Vec<u32>>),
}

enum Input {
    Text(String),
    Ids(Vec<u32>),
}

pub async fn completions(
    State(st): State<AppState>,
    JsonBody(req): JsonBody<CompletionRequest>,
) -> Result<Response, ApiError> {
    if req.stream {
        return Err(invalid(
            "stream: /v1/completions answers whole; use /v1/chat/completions to stream",
        ));
    }
    if req.n.is_some_and(|n| n != 1) {
        return Err(invalid("n: only 1 completion per prompt"));
    }
    if req.logprobs.is_some_and(|k| k > 5) {
        return Err(invalid("logprobs: at most 5"));
    }
    let inputs: Vec<Input> = match req.prompt {
        Prompt::Text(t) => vec![Input::Text(t)],
        Prompt::Ids(ids) => vec![Input::Ids(ids)],
        Prompt::Texts(ts) => ts.into_iter().map(Input::Text).collect(),
        Prompt::Batch(b) => b.into_iter().map(Input::Ids).collect(),
    };
    if inputs.is_empty() || inputs.len() > MAX_PROMPTS {
        return Err(invalid(format!("prompt: 1 to {MAX_PROMPTS} prompts")));
    }
    let opts = CompletionOptions {
        max_tokens: req.max_tokens.unwrap_or(16),
        sampling: sampling(req.temperature, req.top_p, req.seed)?,
        stop: Stop::list(req.stop),
        logprobs: req.logprobs,
        echo: req.echo,
    };
    let dir = model_path(&st, &req.model)?;
    let permit = st.generations.clone().try_acquire_owned().map_err(|_| {
        ApiError::Busy(format!(
            "{} generations are running, the most this server runs at once: retry shortly",
            st.cfg.api.max_generations
        ))
    })?;
    let model = st
        .models
        .get(&req.model, &dir, &st.cfg.data_root)
        .await?
        .model
        .clone();
    // A client that goes away drops this future and with it the guard that stops the work.
    let gone = Arc::new(AtomicBool::new(false));
    let _stop_on_drop = StopOnDrop(gone.clone());
    let choices = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let tok = &model.tokenizer;
        let mut choices = Vec::new();
        let mut usage = (0, 0);
        for (index, input) in inputs.into_iter().enumerate() {
            let ids = match input {
                Input::Text(t) => tok.encode(&t).map_err(|e| invalid(format!("prompt: {e}")))?,
                Input::Ids(ids) => ids,
            };
            let c = complete(&model, &ids, &opts, Some(&gone)).map_err(|e| invalid(e.to_string()))?;
            usage.0 += c.prompt_tokens;
            usage.1 += c.generated.len();
            let piece = |id: u32| tok.decode(&[id], false).unwrap_or_default();
            let mut text = String::new();
            if opts.echo {
                text += &tok.decode(&ids, false).map_err(|e| invalid(e.to_string()))?;
            }
            text += &tok
                .decode(&c.generated, true)
                .map_err(|e| invalid(e.to_string()))?;
            let logprobs = opts.logprobs.map(|_| {
                let mut offset = 0;
                let mut offsets = Vec::new();
                for t in &c.tokens {
                    offsets.push(offset);
                    offset += piece(t.id).len();
                }
                json!({
                    "tokens": c.tokens.iter().map(|t| piece(t.id)).collect::<Vec<_>>(),
                    "token_logprobs": c.tokens.iter().map(|t| t.logprob).collect::<Vec<_>>(),
                    "top_logprobs": c.tokens.iter().enumerate().map(|(i, t)| {
                        if i == 0 && c.echoed > 0 {
                            Value::Null
                        } else {
                            Value::Object(t.top.iter().map(|&(id, lp)| (piece(id), json!(lp))).collect())
                        }
                    }).collect::<Vec<_>>(),
                    "text_offset": offsets,
                })
            });
            let finish = super::openai::finish_reason(c.finish);
            choices
                .push(json!({"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}));
        }
        Ok::<_, ApiError>((choices, usage))
    })
    .await
    .map_err(|e| internal(format!("completing: {e}")))??;
    let (choices, (prompt_tokens, completion_tokens)) = choices;
    Ok(axum::Json(json!({
        "id": format!("cmpl-{}", crate::new_id()),
        "object": "text_completion",
        "created": crate::now() as u64,
        "model": req.model,
        "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }))
    .into_response())
}
