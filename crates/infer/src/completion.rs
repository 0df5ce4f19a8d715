//! Plain-text completion with log-probabilities, as OpenAI's legacy completions API gives them
//! (`echo` scores the prompt's own tokens): what lm-evaluation-harness's `local-completions`
//! model needs to score log-likelihood tasks against `chatforge serve`.

use std::sync::atomic::{AtomicBool, Ordering};

use chatforge_data::Rng;

use crate::{Error, Finish, LoadedModel, Result, Sampling};

/// What to do with a prompt.
#[derive(Debug, Clone)]
pub struct CompletionOptions {
    pub max_tokens: usize,
    pub sampling: Sampling,
    /// Text that ends the completion (not included).
    pub stop: Vec<String>,
    /// Log-probabilities of each token and of this many likeliest alternatives (0..=5).
    pub logprobs: Option<usize>,
    /// Give (and score) the prompt's tokens too.
    pub echo: bool,
}

/// One token of the answer: its id, log-probability (`None` for the prompt's first token, which
/// nothing predicts), and the likeliest tokens at its place.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub id: u32,
    pub logprob: Option<f64>,
    pub top: Vec<(u32, f64)>,
}

#[derive(Debug, Clone)]
pub struct Completion {
    /// The prompt's tokens (with `echo`), then the generated ones (and the end token that
    /// stopped them, which is not in `generated`).
    pub tokens: Vec<Scored>,
    /// How many of `tokens` are the prompt's.
    pub echoed: usize,
    pub generated: Vec<u32>,
    pub prompt_tokens: usize,
    pub finish: Finish,
}

/// Log-softmax of one row of logits, in f64.
fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let lse = max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
    row.iter().map(|&x| x as f64 - lse).collect()
}

/// The `k` likeliest tokens of a row of log-probabilities, likeliest first.
fn top_k(lp: &[f64], k: usize) -> Vec<(u32, f64)> {
    let mut idx: Vec<usize> = (0..lp.len()).collect();
    let k = k.min(idx.len());
    if k == 0 {
        return Vec::new();
    }
    idx.select_nth_unstable_by(k - 1, |a, b| lp[*b].total_cmp(&lp[*a]));
    idx.truncate(k);
    idx.sort_by(|a, b| lp[*b].total_cmp(&lp[*a]));
    idx.into_iter().map(|i| (i as u32, lp[i])).collect()
}

/// Completes `prompt` (token ids): scores it when `echo` asks for log-probabilities, then
/// generates up to `max_tokens` tokens. `cancel` stops the generation at its next token.
pub fn complete(
    model: &LoadedModel,
    prompt: &[u32],
    opts: &CompletionOptions,
    cancel: Option<&AtomicBool>,
) -> Result<Completion> {
    let eng = &model.engine;
    let n_ctx = model.config.n_ctx;
    let v = model.config.vocab_size;
    if prompt.is_empty() {
        return Err(Error::Invalid("prompt: empty".into()));
    }
    if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= v) {
        return Err(Error::Invalid(format!(
            "prompt: token {bad} is outside the vocabulary of {v}"
        )));
    }
    if prompt.len() + opts.max_tokens > n_ctx {
        return Err(Error::Invalid(format!(
            "prompt: {} tokens and max_tokens {} exceed the model's context of {n_ctx}",
            prompt.len(),
            opts.max_tokens
        )));
    }
    let k = opts.logprobs.unwrap_or(0);
    let scoring = opts.echo && opts.logprobs.is_some();
    let mut seq = eng.new_sequence();
    let logits = eng.forward(&mut [&mut seq], &[prompt], scoring)?;
    let mut tokens = Vec::new();
    if opts.echo {
        tokens.push(Scored {
            id: prompt[0],
            logprob: None,
            top: Vec::new(),
        });
        for (i, &t) in prompt.iter().enumerate().skip(1) {
            let (logprob, top) = if scoring {
                let lp = log_softmax(&logits[(i - 1) * v..i * v]);
                (Some(lp[t as usize]), top_k(&lp, k))
            } else {
                (None, Vec::new())
            };
            tokens.push(Scored { id: t, logprob, top });
        }
    }
    let echoed = tokens.len();
    let mut last = if scoring {
        logits[(prompt.len() - 1) * v..].to_vec()
    } else {
        logits
    };
    let mut rng = Rng::new(opts.sampling.seed);
    let mut generated = Vec::new();
    let mut seen: Vec<u32> = prompt.to_vec();
    let stops = model.tokenizer.stop_ids();
    let mut finish = Finish::Length;
    while generated.len() < opts.max_tokens {
        if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            finish = Finish::Cancelled;
            break;
        }
        let lp = log_softmax(&last);
        let next = opts.sampling.pick(&mut last, &seen, &mut rng);
        tokens.push(Scored {
            id: next,
            logprob: opts.logprobs.map(|_| lp[next as usize]),
            top: top_k(&lp, k),
        });
        if stops.contains(&next) {
            // The end token is scored (as the servers lm-eval talks to score it) but not text.
            finish = Finish::Stop;
            break;
        }
        generated.push(next);
        seen.push(next);
        if !opts.stop.is_empty() {
            let text = model.tokenizer.decode(&generated, true)?;
            if let Some(cut) = opts.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
                // Drop the tokens that reach into the stop text.
                while !generated.is_empty() && model.tokenizer.decode(&generated, true)?.len() > cut {
                    generated.pop();
                    tokens.pop();
                }
                finish = Finish::StopString;
                break;
            }
        }
        if generated.len() < opts.max_tokens {
            last = eng.forward(&mut [&mut seq], &[&[next]], false)?;
        }
    }
    Ok(Completion {
        tokens,
        echoed,
        generated,
        prompt_tokens: prompt.len(),
        finish,
    })
}
