//! `chatforge data tokenize`: conversations → a token shard, rendered through the chat template
//! on all cores, written in input order, with a JSON sidecar saying what produced it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use chatforge_data::{Conversation, ShardWriter, read_jsonl, sha256_file};
use serde::Serialize;

use crate::train::write_json;
use crate::{ChatTokenizer, Persona, RenderOptions, Rendered, Result};

#[derive(Debug, Clone, Serialize)]
pub struct TokenizeReport {
    pub input: PathBuf,
    pub input_sha256: String,
    pub input_bytes: u64,
    pub output: PathBuf,
    pub conversations: usize,
    pub tokens: u64,
    pub loss_tokens: u64,
    pub vocab_size: usize,
    pub template: String,
    pub system: Option<String>,
    pub persona: String,
    pub domain_tag: bool,
    pub seconds: f64,
}

impl TokenizeReport {
    /// Input megabytes (10^6 bytes) per second.
    pub fn mb_per_s(&self) -> f64 {
        self.input_bytes as f64 / 1e6 / self.seconds.max(1e-9)
    }

    /// The sidecar written beside a shard: `train.bin` → `train.bin.json`.
    pub fn sidecar(shard: &Path) -> PathBuf {
        let mut name = shard.as_os_str().to_owned();
        name.push(".json");
        PathBuf::from(name)
    }
}

/// Renders every conversation, splitting the work over the machine's cores.
pub fn render_all(
    tok: &ChatTokenizer,
    convs: &[Conversation],
    opts: &RenderOptions,
) -> Result<Vec<Rendered>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = convs.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = convs
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    let mut enc = tok.encoder();
                    part.iter()
                        .map(|c| tok.render_with(&mut enc, c, opts))
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        let mut out = Vec::with_capacity(convs.len());
        for h in handles {
            match h.join() {
                Ok(part) => out.extend(part?),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        Ok(out)
    })
}

/// Tokenizes a canonical conversation file into a shard (and its `.json` sidecar).
pub fn tokenize_file(
    input: &Path,
    tok: &ChatTokenizer,
    opts: &RenderOptions,
    output: &Path,
) -> Result<TokenizeReport> {
    let started = Instant::now();
    let convs = read_jsonl(input)?;
    let input_bytes = std::fs::metadata(input).map_or(0, |m| m.len());
    let rendered = render_all(tok, &convs, opts)?;
    let mut w = ShardWriter::create(output, tok.vocab_size() as u32)?;
    let mut loss_tokens = 0u64;
    for r in &rendered {
        loss_tokens += r.mask.iter().map(|&m| u64::from(m)).sum::<u64>();
        w.push(&r.ids, &r.mask)?;
    }
    let header = w.finish()?;
    let report = TokenizeReport {
        input: input.to_path_buf(),
        input_sha256: sha256_file(input)?,
        input_bytes,
        output: output.to_path_buf(),
        conversations: convs.len(),
        tokens: header.n_tokens,
        loss_tokens,
        vocab_size: tok.vocab_size(),
        template: format!("{:?}", tok.template()),
        system: opts.system.clone(),
        persona: match &opts.persona {
            Persona::None => "none".into(),
            Persona::Fixed(p) => format!("fixed:{p}"),
            Persona::FromSpeaker => "from-speaker".into(),
        },
        domain_tag: opts.domain_tag,
        seconds: started.elapsed().as_secs_f64(),
    };
    write_json(&TokenizeReport::sidecar(output), &report)?;
    Ok(report)
}
