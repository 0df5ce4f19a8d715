//! Generation: many prompts decoded together, each with its own cache, sampler and stop rules.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use chatforge_data::Rng;
use chatforge_tokenizer::ChatTokenizer;
use serde::Serialize;

use crate::engine::{Engine, Sequence};
use crate::sampling::Sampling;
use crate::stream::{StopText, TextStream};
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
    /// Interrupted (Ctrl-C).
    Cancelled,
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

struct Slot {
    req: usize,
    seq: Sequence,
    rng: Rng,
    seen: Vec<u32>,
    seen_mask: Vec<bool>,
    ids: Vec<u32>,
    stream: TextStream,
    stop: StopText,
    logits: Vec<f32>,
    started: Instant,
    prompt_done: Option<Instant>,
    finish: Option<Finish>,
}

impl Slot {
    fn note(&mut self, id: u32) {
        if let Some(seen) = self.seen_mask.get_mut(id as usize)
            && !*seen
        {
            *seen = true;
            self.seen.push(id);
        }
    }
}

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
    let vocab = engine.config().vocab_size;
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
    let mut next = 0;
    let mut active: Vec<Slot> = Vec::new();
    let batch_size = batch_size.max(1);
    loop {
        // Admit waiting requests and run their prompts in one pass.
        let mut admitted = Vec::new();
        while active.len() + admitted.len() < batch_size && next < requests.len() {
            let r = &requests[next];
            let mut slot = Slot {
                req: next,
                seq: engine.new_sequence(),
                rng: Rng::new(r.sampling.seed),
                seen: Vec::new(),
                seen_mask: vec![false; vocab],
                ids: Vec::new(),
                stream: TextStream::default(),
                stop: StopText::new(&r.stop_strings),
                logits: Vec::new(),
                started: Instant::now(),
                prompt_done: None,
                finish: None,
            };
            r.prompt.iter().for_each(|&t| slot.note(t));
            admitted.push(slot);
            next += 1;
        }
        if !admitted.is_empty() {
            let prompts: Vec<&[u32]> = admitted
                .iter()
                .map(|s| requests[s.req].prompt.as_slice())
                .collect();
            let mut seqs: Vec<&mut Sequence> = admitted.iter_mut().map(|s| &mut s.seq).collect();
            let logits = engine.forward(&mut seqs, &prompts, false)?;
            let now = Instant::now();
            for (s, l) in admitted.iter_mut().zip(logits.chunks(vocab)) {
                s.logits = l.to_vec();
                s.prompt_done = Some(now);
            }
            active.extend(admitted);
        }
        if active.is_empty() {
            break;
        }
        // Pick each slot's next token; finished slots leave.
        let cancelled = cancel.is_some_and(|c| c.load(Ordering::Relaxed));
        for slot in &mut active {
            let r = &requests[slot.req];
            if cancelled {
                slot.finish = Some(Finish::Cancelled);
                continue;
            }
            if slot.ids.len() >= r.max_new_tokens {
                slot.finish = Some(Finish::Length);
                continue;
            }
            let id = r.sampling.pick(&mut slot.logits, &slot.seen, &mut slot.rng);
            if r.stop_ids.contains(&id) {
                slot.finish = Some(Finish::Stop);
                continue;
            }
            slot.ids.push(id);
            slot.note(id);
            if let Some(tok) = tok {
                let piece = slot.stream.push(tok, id)?;
                if slot.stop.push(&piece) {
                    slot.finish = Some(Finish::StopString);
                }
                let ready = slot.stop.ready();
                if !ready.is_empty() {
                    on_text(slot.req, ready);
                }
            }
            if slot.finish.is_none() && slot.ids.len() >= r.max_new_tokens {
                slot.finish = Some(Finish::Length);
            } else if slot.finish.is_none() && slot.seq.len() + 1 > n_ctx {
                slot.finish = Some(Finish::Context);
            }
        }
        let mut still = Vec::with_capacity(active.len());
        for mut slot in active.drain(..) {
            let Some(finish) = slot.finish else {
                still.push(slot);
                continue;
            };
            if let Some(tok) = tok
                && finish != Finish::StopString
            {
                let tail = slot.stream.finish(tok)?;
                slot.stop.push(&tail);
            }
            let rest = slot.stop.rest().to_string();
            if !rest.is_empty() {
                on_text(slot.req, &rest);
            }
            let end = Instant::now();
            let decode = slot.prompt_done.map_or(0.0, |t| (end - t).as_secs_f64());
            outputs[slot.req] = Some(Output {
                text: slot.stop.text().to_string(),
                finish,
                prompt_tokens: requests[slot.req].prompt.len(),
                seconds: (end - slot.started).as_secs_f64(),
                // The first new token comes from the prompt's pass; each later one from a step.
                tokens_per_s: if decode > 0.0 {
                    slot.ids.len().saturating_sub(1) as f64 / decode
                } else {
                    0.0
                },
                ids: std::mem::take(&mut slot.ids),
            });
        }
        active = still;
        if active.is_empty() {
            continue;
        }
        // Feed every active slot its newest token, all in one pass over the weights.
        let feed: Vec<[u32; 1]> = active.iter().map(|s| [s.ids[s.ids.len() - 1]]).collect();
        let feed_refs: Vec<&[u32]> = feed.iter().map(|f| f.as_slice()).collect();
        let mut seqs: Vec<&mut Sequence> = active.iter_mut().map(|s| &mut s.seq).collect();
        let logits = engine.forward(&mut seqs, &feed_refs, false)?;
        for (s, l) in active.iter_mut().zip(logits.chunks(vocab)) {
            s.logits.copy_from_slice(l);
        }
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
