//! `chatforge data tokenize`: conversations → a token shard. The file is read in blocks of lines;
//! each block is parsed and rendered through the chat template on all cores and written in input
//! order, so memory stays bounded whatever the corpus size. A JSON sidecar says what produced it.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::Instant;

use chatforge_data::{ContentHash, Pos, ShardWriter, parse_jsonl_line};
use serde::Serialize;

use crate::train::write_json;
use crate::{ChatTokenizer, Persona, RenderOptions, Rendered, Result};

/// Bytes of JSONL parsed and rendered together.
const BLOCK_BYTES: usize = 16 << 20;

#[derive(Debug, Clone, Serialize)]
pub struct TokenizeReport {
    pub input: PathBuf,
    pub input_sha256: String,
    pub input_bytes: u64,
    pub output: PathBuf,
    /// Records: conversations, or preference pairs when `pairs`.
    pub conversations: usize,
    pub pairs: bool,
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

/// One rendered line: a conversation, or a preference pair's two sequences.
enum Record {
    Conversation {
        line: usize,
        r: Rendered,
    },
    Pair {
        line: usize,
        chosen: Rendered,
        rejected: Rendered,
    },
}

fn at_line(path: &Path, line: usize, e: crate::Error) -> crate::Error {
    chatforge_data::Error::Record {
        path: path.to_path_buf(),
        pos: Pos::Line(line),
        msg: e.to_string(),
    }
    .into()
}

fn mixed() -> crate::Error {
    crate::Error::Invalid(
        "preference pairs and plain conversations in one file: tokenize them into separate shards".into(),
    )
}

/// Parses and renders the lines of `block` (whose first line is `first_line` of `path`),
/// splitting the work over the machine's cores; results keep the input order.
fn render_block(
    tok: &ChatTokenizer,
    path: &Path,
    block: &str,
    first_line: usize,
    opts: &RenderOptions,
) -> Result<Vec<Record>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Cut the block at line ends into one part per thread, remembering where each starts.
    let mut parts = Vec::with_capacity(threads);
    let (mut start, mut line) = (0, first_line);
    for t in 1..=threads {
        let target = block.len() * t / threads;
        let end = if t == threads {
            block.len()
        } else {
            block[target..]
                .find('\n')
                .map_or(block.len(), |i| target + i + 1)
                .max(start)
        };
        parts.push((line, &block[start..end]));
        line += block[start..end].bytes().filter(|&b| b == b'\n').count();
        start = end;
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = parts
            .into_iter()
            .map(|(first, part)| {
                s.spawn(move || {
                    let mut enc = tok.encoder();
                    let mut out = Vec::new();
                    for (i, text) in part.lines().enumerate() {
                        if let Some(c) = parse_jsonl_line(path, first + i, text)? {
                            let line = first + i;
                            out.push(if c.is_pair() {
                                let [chosen, rejected] = tok
                                    .render_pair(&mut enc, &c, opts)
                                    .map_err(|e| at_line(path, line, e))?;
                                Record::Pair {
                                    line,
                                    chosen,
                                    rejected,
                                }
                            } else {
                                Record::Conversation {
                                    line,
                                    r: tok.render_with(&mut enc, &c, opts)?,
                                }
                            });
                        }
                    }
                    Ok::<_, crate::Error>(out)
                })
            })
            .collect();
        let mut out = Vec::new();
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
    let io_err = |e| chatforge_data::Error::Io {
        path: input.to_path_buf(),
        source: e,
    };
    let mut reader = BufReader::with_capacity(1 << 20, File::open(input).map_err(io_err)?);
    // A file of preference pairs makes a shard of pairs: its first record decides.
    let mut w: Option<ShardWriter> = None;
    let mut hash = ContentHash::default();
    let (mut lines, mut input_bytes, mut conversations, mut loss_tokens) = (0usize, 0u64, 0usize, 0u64);
    let mut block = String::with_capacity(BLOCK_BYTES + (1 << 16));
    loop {
        block.clear();
        let first_line = lines + 1;
        while block.len() < BLOCK_BYTES {
            match reader.read_line(&mut block) {
                Ok(0) => break,
                Ok(_) => lines += 1,
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    let at = Pos::Line(lines + 1);
                    return Err(chatforge_data::Error::Record {
                        path: input.to_path_buf(),
                        pos: at,
                        msg: "not valid UTF-8".into(),
                    }
                    .into());
                }
                Err(e) => return Err(io_err(e).into()),
            }
        }
        if block.is_empty() {
            break;
        }
        hash.update(block.as_bytes());
        input_bytes += block.len() as u64;
        for record in render_block(tok, input, &block, first_line, opts)? {
            let pair = matches!(record, Record::Pair { .. });
            let writer = match &mut w {
                Some(w) => w,
                None => {
                    let vocab = tok.vocab_size() as u32;
                    w.insert(if pair {
                        ShardWriter::create_pairs(output, vocab)?
                    } else {
                        ShardWriter::create(output, vocab)?
                    })
                }
            };
            let count = |r: &Rendered| r.mask.iter().map(|&m| u64::from(m)).sum::<u64>();
            conversations += 1;
            match record {
                Record::Conversation { line, .. } if writer.is_pairs() => {
                    return Err(at_line(input, line, mixed()));
                }
                Record::Conversation { r, .. } => {
                    loss_tokens += count(&r);
                    writer.push(&r.ids, &r.mask)?;
                }
                Record::Pair { line, .. } if !writer.is_pairs() => {
                    return Err(at_line(input, line, mixed()));
                }
                Record::Pair { chosen, rejected, .. } => {
                    loss_tokens += count(&chosen) + count(&rejected);
                    writer.push_pair((&chosen.ids, &chosen.mask), (&rejected.ids, &rejected.mask))?;
                }
            }
        }
    }
    let w = match w {
        Some(w) => w,
        None => ShardWriter::create(output, tok.vocab_size() as u32)?,
    };
    let pairs = w.is_pairs();
    let header = w.finish()?;
    let report = TokenizeReport {
        input: input.to_path_buf(),
        input_sha256: hash.hex(),
        input_bytes,
        output: output.to_path_buf(),
        conversations,
        pairs,
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
