//! Generation: many prompts decoded together, each with its own cache, sampler and stop rules.

use std::sync::atomic::{AtomicBool, Ordering};

use chatforge_tokenizer::ChatTokenizer;
use serde::Serialize;

use crate::batch::{Admission, Batch, Event};
use crate::engine::Engine;
use crate::sampling::Sampling;
use crate::{Error, Result};

/// Tokens a prompt may take so that `max_new` tokens (at most half the context) still fit after it.
pub fn prompt_budget(n_ctx: usize, max_new: usize) -> usize {
    n_ctx.saturating_sub(max_new.min(n_ctx / 2)).max(1)
}

/// One prompt to continue.
#[derive(Debug, Clone)]
pub struct Request {
    pub prompt: Vec<u32>,
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    /// Tokens that end the reply (not part of it): the template's end-of-turn, say.
    pub stop_ids: Vec<u32>,
    /// Text that ends the reply (not part of it).
    pub stop_strings: Vec<String>,
}

/// Why a reply ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    /// A stop token.
    Stop,
    /// A stop string.
    StopString,
    /// `max_new_tokens` reached.
    Length,
    /// The model's context is full.
    Context,
    /// Interrupted (Ctrl-C, or a client that left).
    Cancelled,
    /// The request's time ran out.
    Timeout,
}

#[derive(Debug, Clone, Serialize)]
pub struct Output {
    /// Generated ids (without the stop token).
    pub ids: Vec<u32>,
    /// Their text, cut at a stop string.
    pub text: String,
    pub finish: Finish,
    pub prompt_tokens: usize,
    /// Seconds from admission to the end: the prompt and every new token.
    pub seconds: f64,
    /// New tokens per second of this request's decoding (prompt excluded).
    pub tokens_per_s: f64,
}

/// Prompt tokens a step of [`generate`] feeds at most: every admitted prompt at once (it is a
/// batch job; a server interleaves smaller pieces with its replies).
const GENERATE_PREFILL: usize = usize::MAX;

/// Runs `requests`, up to `batch_size` at a time (a finished one makes room for the next), and
/// returns their outputs in input order. `on_text(i, piece)` receives each request's text as it
/// becomes final; `cancel` ends every reply at the next token.
pub fn generate(
    engine: &Engine,
    tok: Option<&ChatTokenizer>,
    requests: &[Request],
    batch_size: usize,
    cancel: Option<&AtomicBool>,
    mut on_text: impl FnMut(usize, &str),
) -> Result<Vec<Output>> {
    let n_ctx = engine.config().n_ctx;
    for (i, r) in requests.iter().enumerate() {
        r.sampling.validate()?;
        if r.prompt.is_empty() {
            return Err(Error::Invalid(format!("prompt {} is empty", i + 1)));
        }
        if r.prompt.len() >= n_ctx {
            return Err(Error::PromptTooLong {
                index: i + 1,
                tokens: r.prompt.len(),
                n_ctx,
            });
        }
    }
    let mut outputs: Vec<Option<Output>> = vec![None; requests.len()];
    let mut batch = Batch::new(GENERATE_PREFILL);
    let mut next = 0;
    let batch_size = batch_size.max(1);
    loop {
        while batch.len() < batch_size && next < requests.len() {
            batch.admit(engine, Admission::new(next, requests[next].clone()))?;
            next += 1;
        }
        if batch.is_empty() {
            break;
        }
        let stop = cancel.is_some_and(|c| c.load(Ordering::Relaxed));
        batch.step(engine, tok, stop, |&i, event| match event {
            Event::Text(piece) => on_text(i, piece),
            Event::Done(out) => outputs[i] = Some(out),
        })?;
    }
    outputs
        .into_iter()
        .map(|o| o.ok_or_else(|| Error::Invalid("a request produced no output".into())))
        .collect()
}

/// Token ids only: continues `prompt` by up to `max_new` tokens (no text, no stop strings).
pub fn generate_ids(
    engine: &Engine,
    prompt: &[u32],
    max_new: usize,
    stop_ids: &[u32],
    sampling: &Sampling,
) -> Result<Vec<u32>> {
    let req = Request {
        prompt: prompt.to_vec(),
        max_new_tokens: max_new,
        sampling: *sampling,
        stop_ids: stop_ids.to_vec(),
        stop_strings: Vec::new(),
    };
    let mut out = generate(engine, None, std::slice::from_ref(&req), 1, None, |_, _| {})?;
    Ok(out.pop().map(|o| o.ids).unwrap_or_default())
}
