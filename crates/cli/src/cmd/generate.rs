//! `chatforge generate`: one prompt streamed, or a file of prompts batched.

use std::io::Write;
use std::path::PathBuf;

use chatforge_data::{Conversation, Role};
use chatforge_infer::{LoadedModel, Request, eval::read_prompts, generate};
use clap::Args;
use serde::Serialize;

use super::{ConditionArgs, ModelArgs, SamplingArgs, interrupt_flag};

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub condition: ConditionArgs,
    /// A prompt (repeatable)
    #[arg(long, required_unless_present = "prompts_file")]
    pub prompt: Vec<String>,
    /// JSONL of prompts: a string, {"prompt": …} or {"messages": […]} per line
    #[arg(long)]
    pub prompts_file: Option<PathBuf>,
    /// Prompts decoded together
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Write results as JSONL here (in input order) instead of printing them
    #[arg(short, long)]
    pub out: Option<PathBuf>,
    /// Continue the prompt as plain text, without the chat template (the default for a folder
    /// without a chat template)
    #[arg(long, conflicts_with = "chat")]
    pub raw: bool,
    /// Use the chat template even for a folder that has none
    #[arg(long)]
    pub chat: bool,
    /// Keep the end of a prompt too long for the context (with a warning) instead of failing
    #[arg(long)]
    pub truncate: bool,
}

#[derive(Serialize)]
struct Record<'a> {
    index: usize,
    prompt: &'a str,
    text: &'a str,
    finish: chatforge_infer::Finish,
    prompt_tokens: usize,
    new_tokens: usize,
    seconds: f64,
    tokens_per_s: f64,
}

fn user_text(c: &Conversation) -> String {
    c.messages
        .iter()
        .rev()
        .find(|m| m.role == Role::User)
        .map(|m| m.content.clone())
        .unwrap_or_default()
}

/// Token ids of each prompt, and the requests built from them.
fn requests(args: &GenerateArgs, m: &LoadedModel, convs: &[Conversation]) -> anyhow::Result<Vec<Request>> {
    let raw = args.raw || !(m.chat || args.chat);
    let sampling = args.sampling.sampling(m)?;
    let n_ctx = m.config.n_ctx;
    let opts = args.condition.options();
    let max_new = args.sampling.max_new_tokens(m);
    convs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut req = m.request(c, raw, &opts, sampling, max_new, &args.sampling.stop)?;
            let prompt = &mut req.prompt;
            if prompt.len() >= n_ctx {
                if !args.truncate {
                    anyhow::bail!(
                        "prompt {} has {} tokens, the model's context is {n_ctx}: shorten it, or pass --truncate to keep its end",
                        i + 1,
                        prompt.len()
                    );
                }
                let keep = chatforge_infer::prompt_budget(n_ctx, max_new);
                eprintln!("warning: prompt {} cut from {} to its last {keep} tokens", i + 1, prompt.len());
                prompt.drain(..prompt.len() - keep);
            }
            Ok(req)
        })
        .collect()
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let m = args.model.load()?;
    let mut convs: Vec<Conversation> = args
        .prompt
        .iter()
        .map(|p| args.condition.conversation(p))
        .collect();
    if let Some(f) = &args.prompts_file {
        let mut more = read_prompts(f)?;
        if let Some(d) = &args.condition.domain {
            more.iter_mut().for_each(|c| {
                c.meta.entry("domain").or_insert_with(|| d.clone().into());
            });
        }
        convs.extend(more);
    }
    if convs.is_empty() {
        anyhow::bail!("no prompts given");
    }
    let reqs = requests(&args, &m, &convs)?;
    let cancel = interrupt_flag();
    let stream = args.out.is_none() && convs.len() == 1;
    let outs = generate(
        &m.engine,
        Some(&m.tokenizer),
        &reqs,
        args.batch_size,
        Some(cancel),
        |_, piece| {
            if stream {
                print!("{piece}");
                let _ = std::io::stdout().flush();
            }
        },
    )?;
    if stream {
        say!("");
    }
    let records: Vec<Record> = outs
        .iter()
        .enumerate()
        .map(|(i, o)| Record {
            index: i,
            prompt: convs[i].messages.last().map_or("", |m| m.content.as_str()),
            text: &o.text,
            finish: o.finish,
            prompt_tokens: o.prompt_tokens,
            new_tokens: o.ids.len(),
            seconds: o.seconds,
            tokens_per_s: o.tokens_per_s,
        })
        .collect();
    match &args.out {
        Some(path) => {
            chatforge_data::atomic_write(path, |w| {
                for r in &records {
                    serde_json::to_writer(&mut *w, r)?;
                    w.write_all(b"\n")?;
                }
                Ok(())
            })?;
            eprintln!("{} results written to {}", records.len(), path.display());
        }
        None if !stream => {
            for r in &records {
                say!(
                    "── {} ── {}\n{}",
                    r.index + 1,
                    user_text(&convs[r.index]),
                    r.text.trim()
                );
            }
        }
        None => {}
    }
    let new: usize = outs.iter().map(|o| o.ids.len()).sum();
    let secs = outs.iter().map(|o| o.seconds).fold(0.0, f64::max);
    let tps: Vec<String> = outs.iter().map(|o| format!("{:.1}", o.tokens_per_s)).collect();
    eprintln!(
        "{new} new tokens in {secs:.2} s; tokens/s per prompt: {}{}",
        tps.join(", "),
        if outs
            .iter()
            .any(|o| o.finish == chatforge_infer::Finish::Cancelled)
        {
            " (interrupted)"
        } else {
            ""
        }
    );
    Ok(())
}
