//! Reference-based metrics of generated replies: corpus BLEU-4 as sacreBLEU computes it (13a
//! tokenisation, brevity penalty, "exp" smoothing) and ROUGE-1/2/L F1 as Google's `rouge-score`
//! does (lower-cased alphanumeric tokens, no stemming). Both are checked against those packages in
//! `tests/metrics_parity.rs`.

use std::collections::HashMap;
use std::sync::OnceLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

fn regexes() -> &'static [(Regex, &'static str); 4] {
    static RE: OnceLock<[(Regex, &'static str); 4]> = OnceLock::new();
    RE.get_or_init(|| {
        let re = |p: &str| match Regex::new(p) {
            Ok(r) => r,
            // The patterns are constants, covered by the tests below.
            Err(e) => panic!("bad built-in pattern {p}: {e}"),
        };
        [
            // Symbols and most punctuation become tokens of their own.
            (re(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), " $1 "),
            // Period and comma, unless preceded by a digit…
            (re(r"([^0-9])([\.,])"), "$1 $2 "),
            // …or followed by one.
            (re(r"([\.,])([^0-9])"), " $1 $2"),
            // A dash after a digit.
            (re(r"([0-9])(-)"), "$1 $2 "),
        ]
    })
}

/// sacreBLEU's default `13a` tokenisation (mteval-v13a).
pub fn tokenize_13a(line: &str) -> Vec<String> {
    let mut line = line
        .replace("<skipped>", "")
        .replace("-\n", "")
        .replace('\n', " ");
    if line.contains('&') {
        line = line
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">");
    }
    let mut s = format!(" {line} ");
    for (re, rep) in regexes() {
        s = re.replace_all(&s, *rep).into_owned();
    }
    s.split_whitespace().map(str::to_string).collect()
}

fn ngrams(tokens: &[String], n: usize) -> HashMap<&[String], usize> {
    let mut m = HashMap::new();
    if tokens.len() >= n {
        for w in tokens.windows(n) {
            *m.entry(w).or_insert(0) += 1;
        }
    }
    m
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bleu {
    /// 0–100.
    pub score: f64,
    /// n-gram precisions, 0–100.
    pub precisions: [f64; 4],
    pub brevity_penalty: f64,
    pub sys_len: usize,
    pub ref_len: usize,
}

/// Corpus BLEU-4 of `hypotheses` against one reference each.
pub fn corpus_bleu(hypotheses: &[String], references: &[String]) -> Bleu {
    let mut correct = [0usize; 4];
    let mut total = [0usize; 4];
    let (mut sys_len, mut ref_len) = (0, 0);
    for (h, r) in hypotheses.iter().zip(references) {
        let (h, r) = (tokenize_13a(h), tokenize_13a(r));
        sys_len += h.len();
        ref_len += r.len();
        for n in 1..=4 {
            let (hn, rn) = (ngrams(&h, n), ngrams(&r, n));
            total[n - 1] += h.len().saturating_sub(n - 1);
            correct[n - 1] += hn
                .iter()
                .map(|(g, &c)| c.min(rn.get(g).copied().unwrap_or(0)))
                .sum::<usize>();
        }
    }
    let bp = if sys_len < ref_len {
        if sys_len > 0 {
            (1.0 - ref_len as f64 / sys_len as f64).exp()
        } else {
            0.0
        }
    } else {
        1.0
    };
    let mut precisions = [0f64; 4];
    let mut smooth = 1.0;
    for n in 0..4 {
        if total[n] == 0 {
            break;
        }
        precisions[n] = if correct[n] == 0 {
            smooth *= 2.0;
            100.0 / (smooth * total[n] as f64)
        } else {
            100.0 * correct[n] as f64 / total[n] as f64
        };
    }
    let log = |p: f64| if p == 0.0 { -9_999_999_999.0 } else { p.ln() };
    let score = bp * (precisions.iter().map(|&p| log(p)).sum::<f64>() / 4.0).exp();
    Bleu {
        score,
        precisions,
        brevity_penalty: bp,
        sys_len,
        ref_len,
    }
}

/// `rouge-score`'s tokens: lower-case, runs of anything but `[a-z0-9]` split, no stemming.
pub fn tokenize_rouge(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Prf {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

impl Prf {
    fn new(overlap: usize, pred: usize, target: usize) -> Prf {
        let precision = overlap as f64 / pred.max(1) as f64;
        let recall = overlap as f64 / target.max(1) as f64;
        let f1 = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        Prf {
            precision,
            recall,
            f1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Rouge {
    pub rouge1: Prf,
    pub rouge2: Prf,
    #[serde(rename = "rougeL")]
    pub rouge_l: Prf,
}

fn rouge_n(target: &[String], pred: &[String], n: usize) -> Prf {
    let (t, p) = (ngrams(target, n), ngrams(pred, n));
    let overlap = p
        .iter()
        .map(|(g, &c)| c.min(t.get(g).copied().unwrap_or(0)))
        .sum();
    Prf::new(overlap, p.values().sum(), t.values().sum())
}

fn lcs(a: &[String], b: &[String]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                prev[j + 1].max(cur[j])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// ROUGE-1, ROUGE-2 and ROUGE-L of one prediction against its target.
pub fn rouge(target: &str, prediction: &str) -> Rouge {
    let (t, p) = (tokenize_rouge(target), tokenize_rouge(prediction));
    let rouge_l = if t.is_empty() || p.is_empty() {
        Prf::default()
    } else {
        Prf::new(lcs(&t, &p), p.len(), t.len())
    };
    Rouge {
        rouge1: rouge_n(&t, &p, 1),
        rouge2: rouge_n(&t, &p, 2),
        rouge_l,
    }
}

/// Mean ROUGE over pairs (what `rouge-score` users average per example).
pub fn mean_rouge(targets: &[String], predictions: &[String]) -> Rouge {
    let n = targets.len().min(predictions.len());
    let mut sum = Rouge::default();
    for (t, p) in targets.iter().zip(predictions) {
        let r = rouge(t, p);
        for (s, x) in [
            (&mut sum.rouge1, r.rouge1),
            (&mut sum.rouge2, r.rouge2),
            (&mut sum.rouge_l, r.rouge_l),
        ] {
            s.precision += x.precision;
            s.recall += x.recall;
            s.f1 += x.f1;
        }
    }
    if n > 0 {
        for s in [&mut sum.rouge1, &mut sum.rouge2, &mut sum.rouge_l] {
            s.precision /= n as f64;
            s.recall /= n as f64;
            s.f1 /= n as f64;
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenisation_13a() {
        assert_eq!(
            tokenize_13a("Hello, world. It costs $3.50 (approx.) - e.g. 1-2 &amp; more!"),
            [
                "Hello", ",", "world", ".", "It", "costs", "$", "3.50", "(", "approx", ".", ")", "-", "e",
                ".", "g", ".", "1", "-", "2", "&", "more", "!"
            ]
        );
    }

    #[test]
    fn bleu_of_identical_and_disjoint() {
        let h = vec!["the cat sat on the mat".to_string()];
        assert!((corpus_bleu(&h, &h).score - 100.0).abs() < 1e-9);
        let r = vec!["a dog ran in a park".to_string()];
        // No n-gram matches: "exp" smoothing gives 100/(2·6), 100/(4·5), 100/(8·4), 100/(16·3).
        let want = (100f64 / 12.0 * 100.0 / 20.0 * 100.0 / 32.0 * 100.0 / 48.0).powf(0.25);
        assert!((corpus_bleu(&h, &r).score - want).abs() < 1e-9);
        // A shorter hypothesis pays the brevity penalty.
        let short = vec!["the cat sat".to_string()];
        let b = corpus_bleu(&short, &h);
        assert!((b.brevity_penalty - (1.0f64 - 6.0 / 3.0).exp()).abs() < 1e-12);
    }

    #[test]
    fn rouge_by_hand() {
        let r = rouge("The cat sat on the mat.", "the cat is on the mat");
        // Unigrams: the×2, cat, on, mat shared = 5 of 6 each way.
        assert!((r.rouge1.f1 - 5.0 / 6.0).abs() < 1e-12);
        // Bigrams: "the cat", "on the", "the mat" = 3 of 5.
        assert!((r.rouge2.f1 - 0.6).abs() < 1e-12);
        // LCS: the cat on the mat = 5.
        assert!((r.rouge_l.f1 - 5.0 / 6.0).abs() < 1e-12);
        assert_eq!(rouge("", "x").rouge_l.f1, 0.0);
    }
}
