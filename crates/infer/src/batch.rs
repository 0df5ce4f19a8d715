//! Continuous batching: sequences join a running batch at any step and leave the step they finish.
//!
//! Each [`Batch::step`] is one pass over the weights for every sequence in it: the next piece of
//! each new prompt (up to a budget of prompt tokens a step, so a long prompt does not stall the
//! others' next tokens) beside one token of every sequence already decoding. Each sequence keeps
//! its own KV cache, sampler, stop rules and LoRA adapter, so whatever else shares its steps, a
//! greedy sequence gets the tokens it would get alone.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use chatforge_data::Rng;
use chatforge_tokenizer::ChatTokenizer;

use crate::adapter::Adapter;
use crate::engine::{Engine, Sequence};
use crate::generate::{Finish, Output, Request};
use crate::stream::{StopText, TextStream};
use crate::{Error, Result};

/// A request entering a batch.
#[derive(Debug, Clone)]
pub struct Admission<K> {
    /// One key per reply wanted (OpenAI's `n`): the prompt runs once, its cache is copied for
    /// the others, and reply `i` samples with the request's seed plus `i`.
    pub keys: Vec<K>,
    pub request: Request,
    pub adapter: Option<Arc<Adapter>>,
    /// Set from outside (a client that left) to end the replies at the next step.
    pub cancel: Option<Arc<AtomicBool>>,
    /// When the replies end with [`Finish::Timeout`].
    pub deadline: Option<Instant>,
}

impl<K> Admission<K> {
    pub fn new(key: K, request: Request) -> Self {
        Admission {
            keys: vec![key],
            request,
            adapter: None,
            cancel: None,
            deadline: None,
        }
    }
}

/// What a step reports for a reply.
#[derive(Debug)]
pub enum Event<'a> {
    /// Text that is final (held back while it could begin a stop string or split a character).
    Text(&'a str),
    /// The reply is over; it has left the batch.
    Done(Output),
}

/// What one step computed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepStats {
    /// Sequences in the pass.
    pub sequences: usize,
    /// Tokens fed (prompt pieces and one per decoding sequence).
    pub tokens: usize,
}

#[derive(Debug, Clone)]
struct Slot<K> {
    key: K,
    req: Arc<Request>,
    seq: Sequence,
    rng: Rng,
    seen: Vec<u32>,
    seen_mask: Vec<bool>,
    ids: Vec<u32>,
    /// Prompt tokens fed so far; the prompt is done at `req.prompt.len()`.
    fed: usize,
    /// Keys of the copies to make when the prompt is done.
    forks: Vec<K>,
    stream: TextStream,
    stop: StopText,
    adapter: Option<Arc<Adapter>>,
    cancel: Option<Arc<AtomicBool>>,
    deadline: Option<Instant>,
    started: Instant,
    prompt_done: Option<Instant>,
    finish: Option<Finish>,
}

impl<K> Slot<K> {
    fn note(&mut self, id: u32) {
        if let Some(seen) = self.seen_mask.get_mut(id as usize)
            && !*seen
        {
            *seen = true;
            self.seen.push(id);
        }
    }

    fn decoding(&self) -> bool {
        self.fed == self.req.prompt.len()
    }
}

/// Sequences being decoded together.
#[derive(Debug)]
pub struct Batch<K> {
    slots: Vec<Slot<K>>,
    prefill_budget: usize,
}

impl<K: Clone> Batch<K> {
    /// An empty batch that feeds at most `prefill_budget` prompt tokens a step (at least one).
    pub fn new(prefill_budget: usize) -> Self {
        Batch {
            slots: Vec::new(),
            prefill_budget: prefill_budget.max(1),
        }
    }

    /// Replies in the batch (a request's copies count once its prompt is done).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Adds a request; it starts at the next step. Refuses an empty prompt, or one that leaves no
    /// room in the context.
    pub fn admit(&mut self, engine: &Engine, a: Admission<K>) -> Result<()> {
        let cfg = engine.config();
        a.request.sampling.validate()?;
        let n = a.request.prompt.len();
        if n == 0 {
            return Err(Error::Invalid("the prompt is empty".into()));
        }
        if n >= cfg.n_ctx {
            return Err(Error::PromptTooLong {
                index: 1,
                tokens: n,
                n_ctx: cfg.n_ctx,
            });
        }
        let mut keys = a.keys.into_iter();
        let key = keys
            .next()
            .ok_or_else(|| Error::Invalid("an admission needs a key".into()))?;
        let mut slot = Slot {
            key,
            rng: Rng::new(a.request.sampling.seed),
            req: Arc::new(a.request),
            seq: engine.new_sequence(),
            seen: Vec::new(),
            seen_mask: vec![false; cfg.vocab_size],
            ids: Vec::new(),
            fed: 0,
            forks: keys.collect(),
            stream: TextStream::default(),
            stop: StopText::default(),
            adapter: a.adapter,
            cancel: a.cancel,
            deadline: a.deadline,
            started: Instant::now(),
            prompt_done: None,
            finish: None,
        };
        slot.stop = StopText::new(&slot.req.stop_strings);
        let prompt = slot.req.clone();
        prompt.prompt.iter().for_each(|&t| slot.note(t));
        self.slots.push(slot);
        Ok(())
    }

    /// One pass over the weights for every sequence, then each sequence with a new token samples
    /// it; `on` gets each reply's text and end. `stop_all` cancels every reply.
    pub fn step(
        &mut self,
        engine: &Engine,
        tok: Option<&ChatTokenizer>,
        stop_all: bool,
        mut on: impl FnMut(&K, Event),
    ) -> Result<StepStats> {
        let now = Instant::now();
        for s in &mut self.slots {
            if stop_all || s.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed)) {
                s.finish = Some(Finish::Cancelled);
            } else if s.deadline.is_some_and(|d| now >= d) {
                s.finish = Some(Finish::Timeout);
            }
        }
        // What each sequence is fed: its last token, or the next piece of its prompt.
        let mut budget = self.prefill_budget;
        let mut feeds: Vec<(usize, std::ops::Range<usize>)> = Vec::new();
        for (i, s) in self.slots.iter().enumerate() {
            if s.finish.is_some() {
                continue;
            }
            if s.decoding() {
                feeds.push((i, 0..1));
            } else if budget > 0 {
                let take = (s.req.prompt.len() - s.fed).min(budget);
                budget -= take;
                feeds.push((i, s.fed..s.fed + take));
            }
        }
        let stats = StepStats {
            sequences: feeds.len(),
            tokens: feeds.iter().map(|(_, r)| r.len()).sum(),
        };
        if !feeds.is_empty() {
            self.forward(engine, &feeds)?;
        }
        self.finish_done(tok, &mut on)?;
        Ok(stats)
    }

    /// Runs the pass for `feeds` (slot, range of its prompt; `0..1` for a decoding slot's last
    /// token) and samples where a new token is due.
    fn forward(&mut self, engine: &Engine, feeds: &[(usize, std::ops::Range<usize>)]) -> Result<()> {
        let vocab = engine.config().vocab_size;
        let n_ctx = engine.config().n_ctx;
        let last: Vec<[u32; 1]> = feeds
            .iter()
            .map(|&(i, _)| [self.slots[i].ids.last().copied().unwrap_or(0)])
            .collect();
        // The requests and adapters are shared (`Arc`), so the borrows below are of these copies.
        let reqs: Vec<(Arc<Request>, bool, Option<Arc<Adapter>>)> = feeds
            .iter()
            .map(|&(i, _)| {
                let s = &self.slots[i];
                (s.req.clone(), s.decoding(), s.adapter.clone())
            })
            .collect();
        let logits = {
            let tokens: Vec<&[u32]> = feeds
                .iter()
                .zip(&reqs)
                .zip(&last)
                .map(|(((_, r), (req, decoding, _)), last)| {
                    if *decoding {
                        last.as_slice()
                    } else {
                        &req.prompt[r.clone()]
                    }
                })
                .collect();
            let adapters: Vec<Option<&Adapter>> = reqs.iter().map(|(_, _, a)| a.as_deref()).collect();
            let mut seqs: Vec<&mut Sequence> = Vec::with_capacity(feeds.len());
            let mut fed = feeds.iter().map(|(i, _)| *i).peekable();
            for (i, s) in self.slots.iter_mut().enumerate() {
                if fed.peek() == Some(&i) {
                    fed.next();
                    seqs.push(&mut s.seq);
                }
            }
            engine.forward_adapted(&mut seqs, &tokens, &adapters, false)?
        };
        let now = Instant::now();
        let mut forks = Vec::new();
        for ((i, r), row) in feeds.iter().zip(logits.chunks(vocab)) {
            let s = &mut self.slots[*i];
            if !s.decoding() {
                s.fed = r.end;
                if !s.decoding() {
                    continue; // more of the prompt next step
                }
                s.prompt_done = Some(now);
                // The other replies of the request start from this cache and these logits.
                for (n, key) in std::mem::take(&mut s.forks).into_iter().enumerate() {
                    let mut f = s.clone();
                    f.key = key;
                    f.rng = Rng::new(s.req.sampling.seed.wrapping_add(n as u64 + 1));
                    forks.push((f, row.to_vec()));
                }
            }
            sample(s, row.to_vec(), n_ctx);
        }
        for (mut f, row) in forks {
            sample(&mut f, row, n_ctx);
            self.slots.push(f);
        }
        Ok(())
    }

    /// Streams new text and removes finished replies, reporting each.
    fn finish_done(&mut self, tok: Option<&ChatTokenizer>, on: &mut impl FnMut(&K, Event)) -> Result<()> {
        let mut still = Vec::with_capacity(self.slots.len());
        for mut s in self.slots.drain(..) {
            if let Some(tok) = tok
                && s.decoding()
                && s.finish.is_none_or(|f| f != Finish::StopString)
                && let Some(&id) = s.ids.last()
                && s.stream.len() < s.ids.len()
            {
                let piece = s.stream.push(tok, id)?;
                if s.stop.push(&piece) {
                    s.finish = Some(Finish::StopString);
                }
            }
            let ready = s.stop.ready().to_string();
            if !ready.is_empty() {
                on(&s.key, Event::Text(&ready));
            }
            let Some(finish) = s.finish else {
                still.push(s);
                continue;
            };
            if let Some(tok) = tok
                && finish != Finish::StopString
            {
                let tail = s.stream.finish(tok)?;
                s.stop.push(&tail);
            }
            let rest = s.stop.rest().to_string();
            if !rest.is_empty() {
                on(&s.key, Event::Text(&rest));
            }
            let end = Instant::now();
            let decode = s.prompt_done.map_or(0.0, |t| (end - t).as_secs_f64());
            let out = Output {
                text: s.stop.text().to_string(),
                finish,
                prompt_tokens: s.req.prompt.len(),
                seconds: (end - s.started).as_secs_f64(),
                // The first new token comes from the prompt's pass; each later one from a step.
                tokens_per_s: if decode > 0.0 {
                    s.ids.len().saturating_sub(1) as f64 / decode
                } else {
                    0.0
                },
                ids: std::mem::take(&mut s.ids),
            };
            on(&s.key, Event::Done(out));
        }
        self.slots = still;
        Ok(())
    }
}

/// Picks a slot's next token from `logits`, or ends it.
fn sample<K>(s: &mut Slot<K>, mut logits: Vec<f32>, n_ctx: usize) {
    if s.finish.is_some() {
        return;
    }
    let r = s.req.clone();
    if s.ids.len() >= r.max_new_tokens {
        s.finish = Some(Finish::Length);
        return;
    }
    let id = r.sampling.pick(&mut logits, &s.seen, &mut s.rng);
    if r.stop_ids.contains(&id) {
        s.finish = Some(Finish::Stop);
        return;
    }
    s.ids.push(id);
    s.note(id);
    if s.ids.len() >= r.max_new_tokens {
        s.finish = Some(Finish::Length);
    } else if s.seq.len() + 1 > n_ctx {
        s.finish = Some(Finish::Context);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use chatforge_model::lora::{LoraConfig, merge};
    use chatforge_model::{GptConfig, Weights, init_weights};

    use super::*;
    use crate::engine::WeightType;
    use crate::sampling::Sampling;

    fn request(prompt: &[u32], max_new: usize) -> Request {
        Request {
            prompt: prompt.to_vec(),
            max_new_tokens: max_new,
            sampling: Sampling::greedy(),
            stop_ids: Vec::new(),
            stop_strings: Vec::new(),
        }
    }

    /// Runs admissions, each entering at its step, to the end: the ids of each key.
    fn run(engine: &Engine, budget: usize, mut arrivals: Vec<(usize, Admission<usize>)>) -> Vec<Vec<u32>> {
        let mut batch = Batch::new(budget);
        let mut out: Vec<Vec<u32>> = Vec::new();
        let mut step = 0;
        while !arrivals.is_empty() || !batch.is_empty() {
            while let Some(i) = arrivals.iter().position(|(at, _)| *at <= step) {
                batch.admit(engine, arrivals.remove(i).1).unwrap();
            }
            batch
                .step(engine, None, false, |&k, e| {
                    if let Event::Done(o) = e {
                        if out.len() <= k {
                            out.resize(k + 1, Vec::new());
                        }
                        out[k] = o.ids;
                    }
                })
                .unwrap();
            step += 1;
        }
        out
    }

    /// A LoRA adapter on every linear layer with nonzero `B`, and the weights with it merged.
    fn adapter(cfg: &GptConfig, base: &Weights, seed: u64) -> (Adapter, Weights) {
        let lcfg = LoraConfig {
            rank: 4,
            targets: vec!["all-linear".into()],
            ..LoraConfig::default()
        };
        let mut rng = Rng::new(seed);
        let mut w = lcfg.init(cfg, &mut rng).unwrap();
        for (name, t) in w.iter_mut() {
            if name.contains("lora_B") {
                t.data_mut()
                    .iter_mut()
                    .for_each(|x| *x = (rng.next_f64() as f32 - 0.5) * 0.4);
            }
        }
        let merged = merge(base, &lcfg, &w, cfg).unwrap();
        (Adapter::new(&lcfg, &w, cfg).unwrap(), merged)
    }

    #[test]
    fn late_arrivals_adapters_copies_and_small_budgets_change_no_token() {
        for cfg in [GptConfig::tiny(61), GptConfig::llama_tiny(61)] {
            let base = init_weights(&cfg, &mut Rng::new(5)).unwrap();
            let eng = Engine::new(&cfg, &base, WeightType::F32).unwrap();
            let (ad, merged) = adapter(&cfg, &base, 9);
            let merged_eng = Engine::new(&cfg, &merged, WeightType::F32).unwrap();
            let prompts: [&[u32]; 3] = [&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], &[12, 13], &[14, 15, 16, 17]];
            // Alone: each prompt, with the base and with the adapter merged in.
            let solo =
                |e: &Engine, p: &[u32]| run(e, usize::MAX, vec![(0, Admission::new(0, request(p, 12)))]);
            let want_base: Vec<Vec<u32>> = prompts.iter().map(|p| solo(&eng, p)[0].clone()).collect();
            let want_lora: Vec<Vec<u32>> = prompts.iter().map(|p| solo(&merged_eng, p)[0].clone()).collect();
            assert_ne!(want_base, want_lora, "the adapter changes the replies");
            // Together: arriving at different steps, with and without the unmerged adapter, two
            // replies of one request, prompts fed three tokens a step.
            let arc = Arc::new(ad);
            let mut arrivals = Vec::new();
            for (i, p) in prompts.iter().enumerate() {
                arrivals.push((i * 2, Admission::new(2 * i, request(p, 12))));
                let mut a = Admission::new(2 * i + 1, request(p, 12));
                a.adapter = Some(arc.clone());
                arrivals.push((i * 3 + 1, a));
            }
            let mut copies = Admission::new(6, request(prompts[1], 12));
            copies.keys.push(7);
            arrivals.push((2, copies));
            let got = run(&eng, 3, arrivals);
            for i in 0..3 {
                assert_eq!(got[2 * i], want_base[i], "{:?} base {i}", cfg.arch);
                assert_eq!(got[2 * i + 1], want_lora[i], "{:?} adapter {i}", cfg.arch);
            }
            assert_eq!(got[6], want_base[1]);
            assert_eq!(got[7], want_base[1], "greedy copies agree");
        }
    }

    #[test]
    fn cancel_and_deadline_end_a_reply_and_free_its_place() {
        let cfg = GptConfig::tiny(61);
        let eng = Engine::new(
            &cfg,
            &init_weights(&cfg, &mut Rng::new(5)).unwrap(),
            WeightType::F32,
        )
        .unwrap();
        let mut batch = Batch::new(64);
        let flag = Arc::new(AtomicBool::new(false));
        let mut a = Admission::new(0, request(&[1, 2], 40));
        a.cancel = Some(flag.clone());
        batch.admit(&eng, a).unwrap();
        let mut b = Admission::new(1, request(&[3], 40));
        b.deadline = Some(Instant::now());
        batch.admit(&eng, b).unwrap();
        batch.admit(&eng, Admission::new(2, request(&[4], 3))).unwrap();
        let mut ends = Vec::new();
        let mut record = |k: &usize, e: Event| {
            if let Event::Done(o) = e {
                ends.push((*k, o.finish));
            }
        };
        batch.step(&eng, None, false, &mut record).unwrap();
        flag.store(true, Ordering::Relaxed);
        batch.step(&eng, None, false, &mut record).unwrap();
        while !batch.is_empty() {
            batch.step(&eng, None, false, &mut record).unwrap();
        }
        assert_eq!(
            ends,
            [(1, Finish::Timeout), (0, Finish::Cancelled), (2, Finish::Length)]
        );
        let long = request(&vec![1; cfg.n_ctx], 1);
        assert!(batch.admit(&eng, Admission::new(3, long)).is_err());
    }
}
