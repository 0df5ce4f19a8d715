//! Generation: sampling settings, token-by-token decoding with a KV cache, and chat replies.

use candle_core::{Device, Tensor};
use chatforge_data::{Conversation, Rng};
use chatforge_model::{AttnMask, Gpt, KvCache};
use chatforge_tokenizer::{ChatTokenizer, RenderOptions};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Model(#[from] chatforge_model::Error),
    #[error(transparent)]
    Tokenizer(#[from] chatforge_tokenizer::Error),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Sampling {
    /// 0: greedy (the most likely token).
    pub temperature: f32,
    /// Keep only the k most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1: all).
    pub top_p: f32,
    /// Divide the logits of tokens already generated or in the prompt by this (1: off).
    pub repetition_penalty: f32,
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            repetition_penalty: 1.1,
            seed: 0,
        }
    }
}

impl Sampling {
    pub fn greedy() -> Self {
        Sampling {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }

    /// Picks a token from `logits` (one row), given what came before.
    pub fn pick(&self, logits: &[f32], history: &[u32], rng: &mut Rng) -> u32 {
        let mut l = logits.to_vec();
        if self.repetition_penalty != 1.0 {
            for &t in history {
                if let Some(x) = l.get_mut(t as usize) {
                    *x = if *x > 0.0 {
                        *x / self.repetition_penalty
                    } else {
                        *x * self.repetition_penalty
                    };
                }
            }
        }
        let argmax = || {
            l.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(i, _)| i as u32)
        };
        if self.temperature <= 0.0 {
            return argmax();
        }
        let mut idx: Vec<usize> = (0..l.len()).collect();
        idx.sort_by(|&a, &b| l[b].total_cmp(&l[a]));
        if self.top_k > 0 {
            idx.truncate(self.top_k);
        }
        let max = l[idx[0]];
        let mut probs: Vec<f64> = idx
            .iter()
            .map(|&i| f64::from((l[i] - max) / self.temperature).exp())
            .collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if self.top_p < 1.0 {
            let mut acc = 0.0;
            let keep = probs.iter().position(|p| {
                acc += p;
                acc >= f64::from(self.top_p)
            });
            let keep = keep.map_or(probs.len(), |k| k + 1);
            idx.truncate(keep);
            probs.truncate(keep);
            let total: f64 = probs.iter().sum();
            probs.iter_mut().for_each(|p| *p /= total);
        }
        let r = rng.next_f64();
        let mut acc = 0.0;
        for (i, p) in idx.iter().zip(&probs) {
            acc += p;
            if r < acc {
                return *i as u32;
            }
        }
        idx.last().map_or_else(argmax, |&i| i as u32)
    }
}

/// Generates up to `max_new` tokens after `prompt`, stopping at any of `stop` (not included).
/// The prompt is cut from the left to fit the context.
pub fn generate(
    model: &Gpt,
    prompt: &[u32],
    max_new: usize,
    stop: &[u32],
    sampling: &Sampling,
) -> Result<Vec<u32>> {
    let dev = Device::Cpu;
    let n_ctx = model.config().n_ctx;
    if prompt.is_empty() {
        return Err(Error::Invalid("empty prompt".into()));
    }
    let budget = n_ctx.saturating_sub(1).max(1);
    let prompt = &prompt[prompt.len().saturating_sub(budget)..];
    let max_new = max_new.min(n_ctx - prompt.len());
    let mut cache = KvCache::new(model.config().n_layer);
    let mut rng = Rng::new(sampling.seed);
    let mut history: Vec<u32> = prompt.to_vec();
    let mut out = Vec::new();
    let mut input = prompt.to_vec();
    for _ in 0..max_new {
        let t = input.len();
        let ids = Tensor::from_slice(&input, (1, t), &dev)?;
        let pos = Gpt::positions(1, t, cache.len(), &dev)?;
        let logits = model.forward(&ids, &pos, &AttnMask::Causal, Some(&mut cache), None)?; // (1, T, V)
        let last: Vec<f32> = logits.squeeze(0)?.get(t - 1)?.to_vec1()?;
        let next = sampling.pick(&last, &history, &mut rng);
        if stop.contains(&next) {
            break;
        }
        out.push(next);
        history.push(next);
        input = vec![next];
    }
    Ok(out)
}

/// The assistant's reply to a conversation whose last message is the user's.
pub fn reply(
    model: &Gpt,
    tok: &ChatTokenizer,
    conv: &Conversation,
    opts: &RenderOptions,
    max_new: usize,
    sampling: &Sampling,
) -> Result<String> {
    let prompt = tok.render_prompt(conv, opts)?;
    let ids = generate(model, &prompt, max_new, &tok.stop_ids(), sampling)?;
    Ok(tok.decode(&ids, true)?.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_filters() {
        let logits = [1.0f32, 3.0, 2.0, -1.0];
        let mut rng = Rng::new(1);
        assert_eq!(Sampling::greedy().pick(&logits, &[], &mut rng), 1);
        // Repetition penalty 10 on token 1 makes token 2 the most likely.
        let s = Sampling {
            repetition_penalty: 10.0,
            ..Sampling::greedy()
        };
        assert_eq!(s.pick(&logits, &[1], &mut rng), 2);
        // top_k = 1 is greedy whatever the temperature.
        let s = Sampling {
            temperature: 5.0,
            top_k: 1,
            ..Sampling::greedy()
        };
        assert!((0..50).all(|_| s.pick(&logits, &[], &mut rng) == 1));
        // top_p small keeps only the best token.
        let s = Sampling {
            temperature: 1.0,
            top_p: 0.1,
            ..Sampling::greedy()
        };
        assert!((0..50).all(|_| s.pick(&logits, &[], &mut rng) == 1));
        // Sampling at temperature 1 follows the softmax: token 1 about 66% of the time.
        let s = Sampling {
            temperature: 1.0,
            ..Sampling::greedy()
        };
        let hits = (0..10_000)
            .filter(|_| s.pick(&logits, &[], &mut rng) == 1)
            .count();
        assert!((6300..6900).contains(&hits), "{hits}");
    }
}
