use std::io::IsTerminal;
use std::path::PathBuf;

use chatforge_tokenizer::{ChatTokenizer, TokenizerKind, TrainOptions, ValSource, train_artifact};
use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub enum TokenizerCommand {
    /// Train a byte-level BPE or Unigram tokenizer on canonical conversation files
    Train(TrainArgs),
    /// Load tokenizer.json or GPT-2 vocab.json + merges.txt, describe it, optionally save it as an artifact
    Load {
        /// tokenizer.json, or a folder holding it (or vocab.json + merges.txt), or a Hub id
        path: PathBuf,
        /// Write the tokenizer as an artifact directory (tokenizer.json + manifest.json)
        #[arg(short, long)]
        out: Option<PathBuf>,
        /// Text to encode as a sample
        #[arg(long, default_value = "Hello! How can I help you today?")]
        text: String,
    },
}

#[derive(Args)]
pub struct TrainArgs {
    /// bpe (byte-level BPE, GPT-2 style) or unigram (SentencePiece style; also spm)
    #[arg(long, default_value = "bpe", value_parser = super::parse::<TokenizerKind>)]
    pub kind: TokenizerKind,
    /// Vocabulary size, special tokens included
    #[arg(long, default_value_t = 8000)]
    pub vocab_size: usize,
    /// Canonical conversation files (from `chatforge data import`)
    #[arg(long, required = true, num_args = 1..)]
    pub input: Vec<PathBuf>,
    /// The artifact directory to write
    #[arg(short, long)]
    pub out: PathBuf,
    /// Validation conversations for stats.json [default: INPUT's .val.jsonl, else a 5% hold-out]
    #[arg(long)]
    pub val: Option<PathBuf>,
    /// BPE: minimum pair frequency for a merge
    #[arg(long, default_value_t = 2)]
    pub min_frequency: u64,
    /// Seed of the hold-out used for stats.json
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

pub fn run(cmd: TokenizerCommand) -> anyhow::Result<()> {
    match cmd {
        TokenizerCommand::Train(args) => train(&args, std::io::stderr().is_terminal()),
        TokenizerCommand::Load { path, out, text } => load(&path, out.as_deref(), &text),
    }
}

pub fn train(args: &TrainArgs, show_progress: bool) -> anyhow::Result<()> {
    let val = match &args.val {
        Some(p) => ValSource::File(p.clone()),
        None => ValSource::beside(&args.input[0]),
    };
    let opts = TrainOptions {
        kind: args.kind,
        vocab_size: args.vocab_size,
        min_frequency: args.min_frequency,
        seed: args.seed,
        show_progress,
    };
    let r = train_artifact(&args.input, &val, &opts, &args.out)?;
    let s = &r.stats;
    say!(
        "trained a {:?} tokenizer on {} conversations in {:.2} s: vocab {} (asked {})",
        args.kind,
        r.train_conversations,
        r.seconds,
        s.vocab_size,
        args.vocab_size
    );
    say!(
        "validation ({} conversations, {} texts): {:.2} chars/token, {:.2} bytes/token, unknown {:.3}%, coverage {:.2}%, vocab used {:.1}%",
        r.val_conversations,
        s.texts,
        s.chars_per_token,
        s.bytes_per_token,
        100.0 * s.unknown_rate,
        100.0 * s.char_coverage,
        100.0 * s.vocab_used
    );
    say!(
        "wrote {}/{{tokenizer.json, manifest.json, stats.json}}",
        args.out.display()
    );
    Ok(())
}

fn load(path: &std::path::Path, out: Option<&std::path::Path>, text: &str) -> anyhow::Result<()> {
    let tok = ChatTokenizer::load(path)?;
    say!(
        "{}: vocab {} · template {:?} · stop ids {:?} · fast encoder {}",
        path.display(),
        tok.vocab_size(),
        tok.template(),
        tok.stop_ids(),
        if tok.uses_fast_encoder() { "yes" } else { "no" }
    );
    let ids = tok.encode(text)?;
    let pieces: Vec<String> = ids
        .iter()
        .map(|&i| tok.id_to_token(i).unwrap_or_default())
        .collect();
    say!("{text:?} → {} tokens: {}", ids.len(), pieces.join(" | "));
    if let Some(out) = out {
        let manifest = chatforge_tokenizer::TokenizerManifest::loaded(&tok, path);
        chatforge_tokenizer::write_artifact(out, &tok, &manifest, None)?;
        say!("wrote {}/tokenizer.json", out.display());
    }
    Ok(())
}
