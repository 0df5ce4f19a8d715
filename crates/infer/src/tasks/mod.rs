//! Multiple-choice tasks, scored as EleutherAI's lm-evaluation-harness scores them: each choice's
//! log-likelihood as a continuation of the document's context, then `acc` (the likeliest choice
//! is the gold one), `acc_norm` (log-likelihood per character of the choice, lm-eval's
//! normalisation), `acc_bytes` (per UTF-8 byte), their standard errors, and CORE-style centred
//! accuracy against the random baseline.
//!
//! Contexts and continuations are tokenized as lm-eval's causal models do (`_encode_pair`):
//! trailing whitespace of the context moves to the continuation, the continuation's tokens are
//! those of `encode(context + continuation)` after `encode(context)`'s length. The context is
//! run through the decoder once per document and its KV cache shared by every choice.

mod read;

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use read::{TaskOptions, read_task};

use crate::{Error, LoadedModel, Result, Sequence};

/// One document: its context (the question, as the task renders it), the choices, the gold one.
#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    pub text: String,
    pub choices: Vec<String>,
    pub gold: usize,
    /// The record it came from, to leave it out of its own few-shot examples.
    pub source: serde_json::Value,
}

/// A multiple-choice task.
#[derive(Debug, Clone)]
pub struct Task {
    pub name: String,
    pub docs: Vec<Doc>,
    /// Few-shot examples, taken in order (lm-eval's `first_n` sampler).
    pub fewshot: Vec<Doc>,
    pub num_fewshot: usize,
    /// Between a context and its answer (lm-eval's `target_delimiter`, `" "`).
    pub target_delimiter: String,
    /// After each few-shot example (`fewshot_delimiter`, `"\n\n"`).
    pub fewshot_delimiter: String,
}

impl Task {
    /// The context document `doc` is scored after: `num_fewshot` examples (text, delimiter,
    /// gold answer, few-shot delimiter; never the document itself) and then its text.
    pub fn context(&self, doc: &Doc) -> Result<String> {
        let mut out = String::new();
        let examples = self.fewshot.iter().filter(|e| e.source != doc.source);
        let mut n = 0;
        for e in examples.take(self.num_fewshot) {
            let answer = &e.choices[e.gold];
            out += &format!(
                "{}{}{}{}",
                e.text, self.target_delimiter, answer, self.fewshot_delimiter
            );
            n += 1;
        }
        if n < self.num_fewshot {
            return Err(Error::Invalid(format!(
                "task {}: {} few-shot examples asked for, {n} available",
                self.name, self.num_fewshot
            )));
        }
        Ok(out + &doc.text)
    }
}

/// Scores of one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    pub task: String,
    pub docs: usize,
    pub num_fewshot: usize,
    pub acc: f64,
    pub acc_stderr: f64,
    pub acc_norm: f64,
    pub acc_norm_stderr: f64,
    pub acc_bytes: f64,
    pub acc_bytes_stderr: f64,
    /// The accuracy of guessing: the mean over documents of 1 / choices.
    pub random_baseline: f64,
    /// `(acc − baseline) / (1 − baseline)`: 0 for guessing, 1 for all right (DCLM's CORE).
    pub centered: f64,
    pub centered_stderr: f64,
    pub seconds: f64,
    pub docs_per_s: f64,
    /// Per document: every choice's log-likelihood, the gold index.
    pub loglikelihoods: Vec<Vec<f64>>,
    pub golds: Vec<usize>,
}

/// lm-eval's `mean_stderr`: the sample standard deviation over √n.
fn stderr(xs: &[f64]) -> f64 {
    let n = xs.len() as f64;
    if xs.len() < 2 {
        return f64::NAN;
    }
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (var / n).sqrt()
}

/// The first index of the largest value (numpy's `argmax`).
fn argmax(xs: impl Iterator<Item = f64>) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, x) in xs.enumerate() {
        if x > best.1 {
            best = (i, x);
        }
    }
    best.0
}

/// The metrics of documents `docs` whose choices scored `lls`.
pub fn metrics(task: &Task, lls: Vec<Vec<f64>>, seconds: f64) -> TaskResult {
    let (mut acc, mut norm, mut bytes, mut base) = (Vec::new(), Vec::new(), Vec::new(), 0.0);
    for (doc, ll) in task.docs.iter().zip(&lls) {
        let hit = |i: usize| f64::from(u8::from(i == doc.gold));
        acc.push(hit(argmax(ll.iter().copied())));
        let per =
            |len: fn(&str) -> usize| argmax(ll.iter().zip(&doc.choices).map(|(l, c)| l / len(c) as f64));
        norm.push(hit(per(|c| c.chars().count())));
        bytes.push(hit(per(str::len)));
        base += 1.0 / doc.choices.len() as f64;
    }
    let n = task.docs.len().max(1) as f64;
    let mean = |xs: &[f64]| xs.iter().sum::<f64>() / n;
    let baseline = base / n;
    let a = mean(&acc);
    TaskResult {
        task: task.name.clone(),
        docs: task.docs.len(),
        num_fewshot: task.num_fewshot,
        acc: a,
        acc_stderr: stderr(&acc),
        acc_norm: mean(&norm),
        acc_norm_stderr: stderr(&norm),
        acc_bytes: mean(&bytes),
        acc_bytes_stderr: stderr(&bytes),
        random_baseline: baseline,
        centered: (a - baseline) / (1.0 - baseline),
        centered_stderr: stderr(&acc) / (1.0 - baseline),
        seconds,
        docs_per_s: task.docs.len() as f64 / seconds.max(1e-9),
        loglikelihoods: lls,
        golds: task.docs.iter().map(|d| d.gold).collect(),
    }
}

/// A (context, continuation) pair in tokens, as lm-eval's causal models encode it.
pub fn encode_pair(model: &LoadedModel, context: &str, continuation: &str) -> Result<(Vec<u32>, Vec<u32>)> {
    let tok = &model.tokenizer;
    if context.is_empty() {
        // lm-eval conditions on the end-of-text token (its `prefix_token_id`).
        let cont = tok.encode(continuation)?;
        let eot = tok
            .end_of_text()
            .ok_or_else(|| Error::Invalid("an empty context needs an end-of-text token".into()))?;
        return Ok(match cont.first() {
            Some(&f) if f == eot => (vec![f], cont[1..].to_vec()),
            _ => (vec![eot], cont),
        });
    }
    let trimmed = context.trim_end();
    let (context, continuation) = (trimmed, format!("{}{continuation}", &context[trimmed.len()..]));
    let whole = tok.encode(&format!("{context}{continuation}"))?;
    let ctx = tok.encode(context)?;
    let cont = whole.get(ctx.len()..).unwrap_or_default().to_vec();
    Ok((ctx, cont))
}

/// `log softmax(row)[target]`, accumulated in f64.
fn logprob(row: &[f32], target: u32) -> f64 {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    row[target as usize] as f64 - max - sum.ln()
}

/// Every choice's log-likelihood for documents `docs`, `batch` documents per pass.
pub fn loglikelihoods(model: &LoadedModel, task: &Task, batch: usize) -> Result<Vec<Vec<f64>>> {
    let mut out = Vec::with_capacity(task.docs.len());
    for chunk in task.docs.chunks(batch.max(1)) {
        let mut pairs = Vec::new();
        for doc in chunk {
            let context = task.context(doc)?;
            let enc: Vec<(Vec<u32>, Vec<u32>)> = doc
                .choices
                .iter()
                .map(|c| encode_pair(model, &context, &format!("{}{c}", task.target_delimiter)))
                .collect::<Result<_>>()?;
            pairs.push(enc);
        }
        out.extend(score_batch(model, &pairs)?);
    }
    Ok(out)
}

/// Log-likelihoods of the continuations of a batch of documents (each a list of (context,
/// continuation) token pairs sharing one context): the contexts in one pass, then every choice in
/// another, from a copy of its document's cache. A document too long for the context window is
/// cut from the left as lm-eval cuts it, and scored choice by choice.
fn score_batch(model: &LoadedModel, docs: &[Vec<(Vec<u32>, Vec<u32>)>]) -> Result<Vec<Vec<f64>>> {
    let eng = &model.engine;
    let n_ctx = model.config.n_ctx;
    let v = model.config.vocab_size;
    let mut out: Vec<Vec<f64>> = docs.iter().map(|d| vec![0.0; d.len()]).collect();
    let fits = |d: &Vec<(Vec<u32>, Vec<u32>)>| {
        d.iter()
            .all(|(c, k)| !c.is_empty() && !k.is_empty() && c.len() + k.len() - 1 <= n_ctx)
    };
    let shared: Vec<usize> = (0..docs.len()).filter(|&i| fits(&docs[i])).collect();
    // Contexts: the last position's logits give each choice's first token.
    let mut seqs: Vec<Sequence> = shared.iter().map(|_| eng.new_sequence()).collect();
    if !shared.is_empty() {
        let ctxs: Vec<&[u32]> = shared.iter().map(|&i| docs[i][0].0.as_slice()).collect();
        let mut refs: Vec<&mut Sequence> = seqs.iter_mut().collect();
        let logits = eng.forward(&mut refs, &ctxs, false)?;
        for (r, &i) in shared.iter().enumerate() {
            let row = &logits[r * v..(r + 1) * v];
            for (j, (_, cont)) in docs[i].iter().enumerate() {
                out[i][j] = logprob(row, cont[0]);
            }
        }
    }
    // Choices: each from a copy of its context's cache, all in one pass.
    let mut copies = Vec::new();
    let mut feeds: Vec<(usize, usize, &[u32])> = Vec::new();
    for (r, &i) in shared.iter().enumerate() {
        for (j, (_, cont)) in docs[i].iter().enumerate() {
            if cont.len() > 1 {
                copies.push(seqs[r].clone());
                feeds.push((i, j, &cont[..cont.len() - 1]));
            }
        }
    }
    if !feeds.is_empty() {
        let toks: Vec<&[u32]> = feeds.iter().map(|f| f.2).collect();
        let mut refs: Vec<&mut Sequence> = copies.iter_mut().collect();
        let logits = eng.forward(&mut refs, &toks, true)?;
        let mut row = 0;
        for &(i, j, fed) in &feeds {
            let cont = &docs[i][j].1;
            for k in 0..fed.len() {
                out[i][j] += logprob(&logits[(row + k) * v..(row + k + 1) * v], cont[k + 1]);
            }
            row += fed.len();
        }
    }
    // Too long for the window: lm-eval's left cut, choice by choice.
    for i in (0..docs.len()).filter(|i| !shared.contains(i)) {
        for (j, (ctx, cont)) in docs[i].iter().enumerate() {
            if cont.is_empty() || cont.len() > n_ctx {
                return Err(Error::Invalid(format!(
                    "a choice of {} tokens does not fit the model's context of {n_ctx}",
                    cont.len()
                )));
            }
            let whole: Vec<u32> = ctx.iter().chain(cont).copied().collect();
            let keep = &whole[whole.len().saturating_sub(n_ctx + 1)..];
            let input = &keep[..keep.len() - 1];
            let logits = eng.forward(&mut [&mut eng.new_sequence()], &[input], true)?;
            let first = input.len() - cont.len();
            out[i][j] = (0..cont.len())
                .map(|k| logprob(&logits[(first + k) * v..(first + k + 1) * v], cont[k]))
                .sum();
        }
    }
    Ok(out)
}

/// Scores `task` with `model`: its metrics, with each choice's log-likelihood.
pub fn evaluate_task(model: &LoadedModel, task: &Task, batch: usize) -> Result<TaskResult> {
    let t0 = std::time::Instant::now();
    let lls = loglikelihoods(model, task, batch)?;
    Ok(metrics(task, lls, t0.elapsed().as_secs_f64()))
}

/// Writes a task's result to `dir/<task>.json`, atomically; its path.
pub fn write_result(dir: &Path, r: &TaskResult) -> Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| Error::Invalid(format!("{}: {e}", dir.display())))?;
    let path = dir.join(format!("{}.json", r.task));
    chatforge_data::atomic_write(&path, |w| {
        serde_json::to_writer_pretty(&mut *w, r).map_err(std::io::Error::other)
    })?;
    Ok(path)
}

/// The task results in `dir` (`*.json`), by task name.
pub fn read_results(dir: &Path) -> Vec<TaskResult> {
    let mut out: Vec<TaskResult> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| chatforge_data::read_capped(&e.path(), 256 << 20).ok())
        .filter_map(|t| serde_json::from_str(&t).ok())
        .collect();
    out.sort_by(|a: &TaskResult, b| a.task.cmp(&b.task));
    out
}
