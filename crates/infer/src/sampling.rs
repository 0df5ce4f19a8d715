//! How the next token is chosen: one settings struct, combined as transformers' `generate` does
//! (repetition penalty on the raw logits, then temperature, top-k, top-p).

use chatforge_data::Rng;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Sampling {
    /// 0: greedy (the most likely token).
    pub temperature: f32,
    /// Keep only the k most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches p (1: all).
    pub top_p: f32,
    /// Logits of tokens already in the prompt or the reply: divided by this when positive,
    /// multiplied when negative (1: off), once per distinct token.
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

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Rejects values that have no meaning, naming the setting.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(m));
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad(format!(
                "temperature {} must be 0 (greedy) or positive",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top-p {} must be in (0, 1]", self.top_p));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad(format!(
                "repetition penalty {} must be positive (1 is off)",
                self.repetition_penalty
            ));
        }
        Ok(())
    }

    /// Picks a token from one row of `logits` (modified in place). `seen` lists the distinct
    /// tokens of the prompt and the reply so far, for the repetition penalty.
    pub fn pick(&self, logits: &mut [f32], seen: &[u32], rng: &mut Rng) -> u32 {
        if self.repetition_penalty != 1.0 {
            for &t in seen {
                if let Some(x) = logits.get_mut(t as usize) {
                    *x = if *x > 0.0 {
                        *x / self.repetition_penalty
                    } else {
                        *x * self.repetition_penalty
                    };
                }
            }
        }
        let argmax = |l: &[f32]| {
            // The first of equal maxima, as torch.argmax.
            let mut best = 0;
            for (i, &x) in l.iter().enumerate() {
                if x > l[best] {
                    best = i;
                }
            }
            best as u32
        };
        if self.is_greedy() || self.top_k == 1 {
            return argmax(logits);
        }
        let desc = |a: &usize, b: &usize| logits[*b].total_cmp(&logits[*a]);
        let mut idx: Vec<usize> = (0..logits.len()).collect();
        if self.top_k > 0 && self.top_k < idx.len() {
            idx.select_nth_unstable_by(self.top_k - 1, desc);
            idx.truncate(self.top_k);
        }
        idx.sort_by(desc);
        let max = logits[idx[0]];
        let t = f64::from(self.temperature);
        let mut probs: Vec<f64> = idx
            .iter()
            .map(|&i| ((f64::from(logits[i]) - f64::from(max)) / t).exp())
            .collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if self.top_p < 1.0 {
            let mut acc = 0.0;
            let keep = probs
                .iter()
                .position(|p| {
                    acc += p;
                    acc >= f64::from(self.top_p)
                })
                .map_or(probs.len(), |k| k + 1);
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
        idx.last().map_or_else(|| argmax(logits), |&i| i as u32)
    }
}

/// What a model folder's `generation_config.json` says about decoding (transformers' keys); each
/// is `None` where the file is silent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct GenerationConfig {
    pub do_sample: Option<bool>,
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub max_new_tokens: Option<usize>,
}

impl GenerationConfig {
    /// Tokens a reply gets at most: `given`, else this config's, else chatforge's default (200).
    pub fn max_new_tokens(&self, given: Option<usize>) -> usize {
        given.or(self.max_new_tokens).unwrap_or(200)
    }

    /// The first `generation_config.json` found in `dirs`, or nothing said.
    pub fn find(dirs: &[&std::path::Path]) -> GenerationConfig {
        dirs.iter()
            .filter_map(|d| std::fs::read_to_string(d.join(chatforge_run::GENERATION_FILE)).ok())
            .find_map(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }

    /// The settings to decode with: what the user gave (`Some`), else what the model's file says,
    /// else chatforge's chat defaults ([`Sampling::default`]). `do_sample: false` in the file means
    /// greedy, as in transformers; greedy decoding (temperature 0) has no repetition penalty unless
    /// one is asked for or the file sets one, so it is transformers' plain greedy search.
    pub fn resolve(&self, given: SamplingGiven) -> Sampling {
        let d = Sampling::default();
        let temperature = given
            .temperature
            .or(match self.do_sample {
                Some(false) => Some(0.0),
                _ => self.temperature,
            })
            .unwrap_or(d.temperature);
        let repetition_penalty =
            given
                .repetition_penalty
                .or(self.repetition_penalty)
                .unwrap_or(if temperature == 0.0 {
                    1.0
                } else {
                    d.repetition_penalty
                });
        Sampling {
            temperature,
            top_k: given.top_k.or(self.top_k).unwrap_or(d.top_k),
            top_p: given.top_p.or(self.top_p).unwrap_or(d.top_p),
            repetition_penalty,
            seed: given.seed.unwrap_or(d.seed),
        }
    }
}

/// Sampling settings the user gave explicitly (flags, request fields); `None` where they did not.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SamplingGiven {
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub seed: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(s: &Sampling, logits: &[f32], seen: &[u32], rng: &mut Rng) -> u32 {
        s.pick(&mut logits.to_vec(), seen, rng)
    }

    #[test]
    fn greedy_and_filters() {
        let logits = [1.0f32, 3.0, 2.0, -1.0];
        let mut rng = Rng::new(1);
        assert_eq!(pick(&Sampling::greedy(), &logits, &[], &mut rng), 1);
        // Repetition penalty 10 on token 1 makes token 2 the most likely.
        let s = Sampling {
            repetition_penalty: 10.0,
            ..Sampling::greedy()
        };
        assert_eq!(pick(&s, &logits, &[1], &mut rng), 2);
        // A negative logit is multiplied: token 3 falls further.
        let mut l = logits.to_vec();
        s.pick(&mut l, &[3], &mut rng);
        assert_eq!(l[3], -10.0);
        // top_k = 1 is greedy whatever the temperature.
        let s = Sampling {
            temperature: 5.0,
            top_k: 1,
            ..Sampling::greedy()
        };
        assert!((0..50).all(|_| pick(&s, &logits, &[], &mut rng) == 1));
        // top_k = 2 never picks the other two.
        let s = Sampling {
            temperature: 5.0,
            top_k: 2,
            ..Sampling::greedy()
        };
        assert!((0..200).all(|_| matches!(pick(&s, &logits, &[], &mut rng), 1 | 2)));
        // top_p small keeps only the best token.
        let s = Sampling {
            temperature: 1.0,
            top_p: 0.1,
            ..Sampling::greedy()
        };
        assert!((0..50).all(|_| pick(&s, &logits, &[], &mut rng) == 1));
        // Sampling at temperature 1 follows the softmax: token 1 about 66% of the time.
        let s = Sampling {
            temperature: 1.0,
            ..Sampling::greedy()
        };
        let hits = (0..10_000)
            .filter(|_| pick(&s, &logits, &[], &mut rng) == 1)
            .count();
        assert!((6300..6900).contains(&hits), "{hits}");
        // The same seed gives the same draws.
        let draws = |seed| {
            let mut r = Rng::new(seed);
            (0..20)
                .map(|_| pick(&s, &logits, &[], &mut r))
                .collect::<Vec<_>>()
        };
        assert_eq!(draws(5), draws(5));
        assert_ne!(draws(5), draws(6));
    }

    #[test]
    fn invalid_values_are_named() {
        for (s, word) in [
            (
                Sampling {
                    temperature: -0.1,
                    ..Sampling::default()
                },
                "temperature",
            ),
            (
                Sampling {
                    top_p: 0.0,
                    ..Sampling::default()
                },
                "top-p",
            ),
            (
                Sampling {
                    top_p: 1.5,
                    ..Sampling::default()
                },
                "top-p",
            ),
            (
                Sampling {
                    repetition_penalty: 0.0,
                    ..Sampling::default()
                },
                "repetition",
            ),
        ] {
            let e = s.validate().unwrap_err().to_string();
            assert!(e.contains(word), "{e}");
        }
        assert!(Sampling::default().validate().is_ok());
    }

    #[test]
    fn defaults_come_from_the_flags_then_the_model_then_chatforge() {
        let none = GenerationConfig::default();
        let given = |t: Option<f32>, r: Option<f32>| SamplingGiven {
            temperature: t,
            repetition_penalty: r,
            ..SamplingGiven::default()
        };
        // No file: chatforge's chat defaults; greedy without an asked-for penalty is plain greedy.
        assert_eq!(none.resolve(given(None, None)), Sampling::default());
        let greedy = none.resolve(given(Some(0.0), None));
        assert_eq!((greedy.temperature, greedy.repetition_penalty), (0.0, 1.0));
        assert_eq!(none.resolve(given(Some(0.0), Some(1.3))).repetition_penalty, 1.3);
        // The model's file fills what the flags leave open; do_sample false is greedy.
        let file: GenerationConfig = serde_json::from_str(
            r#"{"temperature": 0.6, "top_p": 0.9, "repetition_penalty": 1.05, "eos_token_id": 2}"#,
        )
        .unwrap();
        let s = file.resolve(given(None, None));
        assert_eq!(
            (s.temperature, s.top_p, s.repetition_penalty, s.top_k),
            (0.6, 0.9, 1.05, 40)
        );
        assert_eq!(file.resolve(given(Some(1.0), None)).temperature, 1.0);
        let off: GenerationConfig =
            serde_json::from_str(r#"{"do_sample": false, "temperature": 0.7}"#).unwrap();
        let s = off.resolve(given(None, None));
        assert_eq!((s.temperature, s.repetition_penalty), (0.0, 1.0));
    }
}
