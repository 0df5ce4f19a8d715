//! Evaluation of a model on held-out conversations: validation loss, perplexity and bits per byte
//! (over assistant tokens for chat data, every token for plain text), BLEU and ROUGE of generated
//! replies against the reference replies, and replies to a set of test prompts.

use std::path::Path;
use std::time::Instant;

use chatforge_data::{Conversation, Message, Role};
use chatforge_tokenizer::RenderOptions;
use serde::{Deserialize, Serialize};

use crate::generate::{Request, generate};
use crate::metrics::{Bleu, Rouge, corpus_bleu, mean_rouge};
use crate::sampling::Sampling;
use crate::source::{LoadedModel, template_stop_strings};
use crate::{Error, Result};

/// Which tokens the loss is measured on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LossOn {
    /// Assistant content and the token that ends it (what SFT trains).
    Assistant,
    /// Every token (plain text, pre-training).
    All,
}

#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub render: RenderOptions,
    pub loss_on: LossOn,
    /// Conversations whose last reply is regenerated for BLEU/ROUGE (0: none).
    pub max_samples: usize,
    pub max_new_tokens: usize,
    pub batch_size: usize,
    pub sampling: Sampling,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            render: RenderOptions::default(),
            loss_on: LossOn::Assistant,
            max_samples: 64,
            max_new_tokens: 96,
            batch_size: 8,
            sampling: Sampling::greedy(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub prompt: String,
    pub reference: String,
    pub reply: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptReply {
    pub prompt: String,
    pub reply: String,
    pub tokens_per_s: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub model: String,
    pub weights: String,
    pub data: Option<String>,
    pub loss_on: LossOn,
    pub conversations: usize,
    /// Tokens the loss was measured on.
    pub tokens: usize,
    /// Mean negative log-likelihood per token, in nats.
    pub loss: f64,
    pub perplexity: f64,
    /// Total negative log-likelihood in bits over the UTF-8 bytes of the scored text.
    pub bits_per_byte: f64,
    pub bleu: Option<Bleu>,
    pub rouge: Option<Rouge>,
    pub samples: Vec<Sample>,
    pub prompts: Vec<PromptReply>,
    pub seconds: f64,
}

/// What a sequence contributes to the loss: token ids, which positions are scored, and the
/// bytes of text they stand for.
struct Scored {
    ids: Vec<u32>,
    mask: Vec<u8>,
    bytes: usize,
}

fn scored(model: &LoadedModel, conv: &Conversation, opts: &EvalOptions) -> Result<Scored> {
    let tok = &model.tokenizer;
    match opts.loss_on {
        LossOn::Assistant => {
            let r = tok.render_chat(conv, &opts.render)?;
            let bytes = conv
                .messages
                .iter()
                .filter(|m| m.role == Role::Assistant)
                .map(|m| m.content.len())
                .sum();
            Ok(Scored {
                ids: r.ids,
                mask: r.mask,
                bytes,
            })
        }
        LossOn::All => {
            let text: Vec<&str> = conv.messages.iter().map(|m| m.content.as_str()).collect();
            let text = text.join("\n");
            let mut ids = tok.encode(&text)?;
            if let Some(eos) = tok.end_of_text() {
                ids.push(eos);
            }
            let mut mask = vec![1u8; ids.len()];
            if let Some(m) = mask.first_mut() {
                *m = 0;
            }
            Ok(Scored {
                ids,
                mask,
                bytes: text.len(),
            })
        }
    }
}

/// Negative log-likelihood (nats) of the scored tokens, and how many there were. Sequences
/// longer than the context are cut into windows; several sequences go through the model at once.
fn nll(model: &LoadedModel, seqs: &[Scored]) -> Result<(f64, usize)> {
    let eng = &model.engine;
    let (n_ctx, v) = (model.config.n_ctx, model.config.vocab_size);
    // Windows: (sequence, start, end) with at least one scored target in start+1..end.
    let mut windows = Vec::new();
    for (i, s) in seqs.iter().enumerate() {
        let mut start = 0;
        while start + 1 < s.ids.len() {
            let end = (start + n_ctx).min(s.ids.len());
            if s.mask[start + 1..end].contains(&1) {
                windows.push((i, start, end));
            }
            start = end - 1;
        }
    }
    // Rows per pass: bounded so the logits stay near 64 MB.
    let max_rows = ((16usize << 20) / v).max(n_ctx);
    let (mut total, mut count) = (0f64, 0usize);
    let mut k = 0;
    while k < windows.len() {
        let mut group = Vec::new();
        let mut rows = 0;
        while k < windows.len() && (group.is_empty() || rows + windows[k].2 - windows[k].1 <= max_rows) {
            rows += windows[k].2 - windows[k].1;
            group.push(windows[k]);
            k += 1;
        }
        let mut cache: Vec<_> = group.iter().map(|_| eng.new_sequence()).collect();
        let mut refs: Vec<_> = cache.iter_mut().collect();
        let toks: Vec<&[u32]> = group.iter().map(|&(i, a, b)| &seqs[i].ids[a..b]).collect();
        let logits = eng.forward(&mut refs, &toks, true)?;
        let mut row = 0;
        for &(i, a, b) in &group {
            let s = &seqs[i];
            for p in a..b {
                // Row p predicts token p + 1.
                if p + 1 < b && s.mask[p + 1] == 1 {
                    let l = &logits[row * v..(row + 1) * v];
                    let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let lse = f64::from(max) + l.iter().map(|&x| f64::from(x - max).exp()).sum::<f64>().ln();
                    total += lse - f64::from(l[s.ids[p + 1] as usize]);
                    count += 1;
                }
                row += 1;
            }
        }
    }
    Ok((total, count))
}

fn prompt_text(conv: &Conversation) -> String {
    conv.messages
        .iter()
        .rfind(|m| m.role == Role::User)
        .map(|m| m.content.clone())
        .unwrap_or_default()
}

/// Evaluates `model` on `data` (and replies to `prompts`, each a conversation ending with a user
/// turn).
pub fn evaluate(
    model: &LoadedModel,
    data: &[Conversation],
    data_name: Option<&str>,
    prompts: &[Conversation],
    opts: &EvalOptions,
) -> Result<Metrics> {
    let started = Instant::now();
    opts.sampling.validate()?;
    let tok = &model.tokenizer;
    // A preference pair is measured on its chosen reply: the one the model should give.
    let chosen: Vec<Conversation>;
    let data = if data.iter().any(Conversation::is_pair) {
        chosen = data
            .iter()
            .map(|c| match c.is_pair() {
                true => Conversation {
                    messages: c.with_reply(true),
                    meta: c.meta.clone(),
                    ..Default::default()
                },
                false => c.clone(),
            })
            .collect();
        &chosen[..]
    } else {
        data
    };
    let seqs = data
        .iter()
        .map(|c| scored(model, c, opts))
        .collect::<Result<Vec<_>>>()?;
    let (nll_sum, tokens) = nll(model, &seqs)?;
    let bytes: usize = seqs.iter().map(|s| s.bytes).sum();
    if !data.is_empty() && tokens == 0 {
        return Err(Error::Invalid(match opts.loss_on {
            LossOn::Assistant => "the data has no assistant replies to measure the loss on".into(),
            LossOn::All => "the data has no text".into(),
        }));
    }
    let loss = if tokens > 0 {
        nll_sum / tokens as f64
    } else {
        f64::NAN
    };

    let n_ctx = model.config.n_ctx;
    let request = |conv: &Conversation| -> Result<Request> {
        let mut prompt = tok.render_prompt(conv, &opts.render)?;
        let keep = crate::generate::prompt_budget(n_ctx, opts.max_new_tokens);
        if prompt.len() > keep {
            prompt.drain(..prompt.len() - keep);
        }
        Ok(Request {
            prompt,
            max_new_tokens: opts.max_new_tokens,
            sampling: opts.sampling,
            stop_ids: tok.stop_ids(),
            stop_strings: template_stop_strings(tok),
        })
    };
    // Regenerate the last assistant reply of conversations that have one.
    let mut refs = Vec::new();
    let mut reqs = Vec::new();
    if opts.loss_on == LossOn::Assistant {
        for conv in data {
            if refs.len() >= opts.max_samples {
                break;
            }
            let Some(last) = conv.messages.iter().rposition(|m| m.role == Role::Assistant) else {
                continue;
            };
            let head = Conversation {
                messages: conv.messages[..last].to_vec(),
                meta: conv.meta.clone(),
                ..Default::default()
            };
            if !head.messages.iter().any(|m| m.role == Role::User) {
                continue;
            }
            refs.push((prompt_text(&head), conv.messages[last].content.clone()));
            reqs.push(request(&head)?);
        }
    }
    let outs = generate(&model.engine, Some(tok), &reqs, opts.batch_size, None, |_, _| {})?;
    let replies: Vec<String> = outs.iter().map(|o| o.text.trim().to_string()).collect();
    let references: Vec<String> = refs.iter().map(|(_, r)| r.clone()).collect();
    let (bleu, rouge) = if replies.is_empty() {
        (None, None)
    } else {
        (
            Some(corpus_bleu(&replies, &references)),
            Some(mean_rouge(&references, &replies)),
        )
    };
    let samples = refs
        .into_iter()
        .zip(&replies)
        .map(|((prompt, reference), reply)| Sample {
            prompt,
            reference,
            reply: reply.clone(),
        })
        .collect();

    let preqs = prompts.iter().map(request).collect::<Result<Vec<_>>>()?;
    let pouts = generate(&model.engine, Some(tok), &preqs, opts.batch_size, None, |_, _| {})?;
    let prompts = prompts
        .iter()
        .zip(pouts)
        .map(|(c, o)| PromptReply {
            prompt: prompt_text(c),
            reply: o.text.trim().to_string(),
            tokens_per_s: o.tokens_per_s,
        })
        .collect();

    Ok(Metrics {
        model: model.root.display().to_string(),
        weights: model.weights_dir.display().to_string(),
        data: data_name.map(str::to_string),
        loss_on: opts.loss_on,
        conversations: data.len(),
        tokens,
        loss,
        perplexity: loss.exp(),
        bits_per_byte: if bytes > 0 {
            nll_sum / std::f64::consts::LN_2 / bytes as f64
        } else {
            f64::NAN
        },
        bleu,
        rouge,
        samples,
        prompts,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Reads test prompts: one per line, as a JSON string, `{"prompt": …}`, or a conversation
/// (`{"messages": […]}`) ending with the user's turn.
pub fn read_prompts(path: &Path) -> Result<Vec<Conversation>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = |msg: String| Error::Load {
            path: path.to_path_buf(),
            msg: format!("line {}: {msg}", i + 1),
        };
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        let conv = match &v {
            serde_json::Value::String(s) => Conversation::new(vec![Message::new(Role::User, s.clone())]),
            serde_json::Value::Object(o) if o.contains_key("messages") => {
                serde_json::from_value(v.clone()).map_err(|e| bad(format!("not a conversation: {e}")))?
            }
            serde_json::Value::Object(o) => {
                let p = o
                    .get("prompt")
                    .and_then(|p| p.as_str())
                    .ok_or_else(|| bad("expected a string, {\"prompt\": …} or {\"messages\": […]}".into()))?;
                Conversation::new(vec![Message::new(Role::User, p)])
            }
            _ => {
                return Err(bad(
                    "expected a string, {\"prompt\": …} or {\"messages\": […]}".into()
                ));
            }
        };
        out.push(conv);
    }
    Ok(out)
}

/// Writes `metrics` to `dir/metrics.json` (through a temporary file).
pub fn write_metrics(dir: &Path, metrics: &Metrics) -> Result<std::path::PathBuf> {
    let path = dir.join("metrics.json");
    chatforge_data::atomic_write(&path, |w| {
        serde_json::to_writer_pretty(&mut *w, metrics)?;
        std::io::Write::write_all(w, b"\n")
    })?;
    Ok(path)
}

/// Reads the metrics of a run (`run/eval/metrics.json`), a folder holding `metrics.json`, or the file.
pub fn read_metrics(path: &Path) -> Result<Metrics> {
    let file = [
        chatforge_run::RunDir::new(path).metrics(),
        path.join("metrics.json"),
        path.to_path_buf(),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .ok_or_else(|| Error::Load {
        path: path.to_path_buf(),
        msg: "no eval/metrics.json here: run `chatforge eval` on it first".into(),
    })?;
    let text = std::fs::read_to_string(&file).map_err(|e| Error::Io {
        path: file.clone(),
        source: e,
    })?;
    serde_json::from_str(&text).map_err(|e| Error::Load {
        path: file,
        msg: format!("not a metrics file: {e}"),
    })
}

/// Prompts replied to after training when no others are given.
/// [`DEFAULT_PROMPTS`] as one-turn conversations.
pub fn default_prompts() -> Vec<Conversation> {
    DEFAULT_PROMPTS
        .iter()
        .map(|p| Conversation::new(vec![Message::new(Role::User, *p)]))
        .collect()
}

pub const DEFAULT_PROMPTS: [&str; 4] = [
    "Hi!",
    "What is the capital of France?",
    "How many legs does a spider have?",
    "How do I make a cup of tea?",
];

/// Render options recorded in a shard's sidecar (`data tokenize` writes them).
pub fn sidecar_render(sidecar: &serde_json::Value) -> RenderOptions {
    RenderOptions {
        system: sidecar["system"].as_str().map(str::to_string),
        domain_tag: sidecar["domain_tag"].as_bool().unwrap_or(false),
        ..RenderOptions::default()
    }
}

/// Evaluates a trained model on the conversations its validation shard `val` was made from (found
/// through the shard's sidecar, rendered as they were then) and on [`DEFAULT_PROMPTS`], and writes
/// `eval/metrics.json` beside it. Returns the metrics and the conversations' file, if found.
pub fn evaluate_run(
    m: &LoadedModel,
    val: Option<&Path>,
    loss_on: LossOn,
) -> Result<(Metrics, Option<std::path::PathBuf>)> {
    let sidecar = val
        .and_then(|v| std::fs::read_to_string(v.with_extension("bin.json")).ok())
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
    let source = sidecar
        .as_ref()
        .and_then(|s| s["input"].as_str().map(std::path::PathBuf::from))
        .filter(|p| p.is_file());
    let data = match &source {
        Some(p) => chatforge_data::read_jsonl(p)?,
        None => Vec::new(),
    };
    let opts = EvalOptions {
        render: sidecar.as_ref().map(sidecar_render).unwrap_or_default(),
        loss_on,
        max_samples: 32,
        ..EvalOptions::default()
    };
    let prompts = default_prompts();
    // A run's own evaluation names its files relative to the run (or by file name), so the
    // metrics it keeps, and serves, say nothing of where the machine keeps them.
    let near = |p: &Path| match p.strip_prefix(&m.root) {
        Ok(rel) if !rel.as_os_str().is_empty() => rel.display().to_string(),
        _ => p
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
    };
    let name = source.as_deref().map(near);
    let mut metrics = evaluate(m, &data, name.as_deref(), &prompts, &opts)?;
    metrics.model = near(&m.root);
    metrics.weights = near(&m.weights_dir);
    write_metrics(&m.eval_dir(), &metrics)?;
    Ok((metrics, source))
}
