use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use chatforge_data::{
    ChatExportOptions, ChatExportReport, Consent, DataFormat, FieldMap, ImportOptions, MentionMode,
    ReadOptions, Stats, UrlMode, import, split, write_jsonl,
};
use chatforge_tokenizer::{ChatTokenizer, tokenize_file};
use clap::{Args, Subcommand};

use super::TemplateArgs;

#[derive(Subcommand)]
pub enum DataCommand {
    /// Read and merge conversation files of any supported format into canonical JSONL
    Import(Box<ImportArgs>),
    /// Counts, turns, characters, roles, domains and top speakers of a conversation file
    Stats {
        /// A conversation file (canonical JSONL or any importable format)
        file: PathBuf,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
        /// How many domains and speakers to list
        #[arg(long, default_value_t = 10)]
        top: usize,
    },
    /// Show conversations rendered through the chat template, loss-carrying tokens highlighted
    Show(ShowArgs),
    /// Render conversations through the chat template into a token shard
    Tokenize(TokenizeArgs),
}

#[derive(Args)]
pub struct ImportArgs {
    /// Files, directories (searched for .json, .jsonl, .csv, .txt, .yaml, .parquet), or Hub
    /// datasets: hf://datasets/ORG/NAME[@REVISION]
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Hub datasets: the split to read (its parquet files, else its JSON/CSV/text files)
    #[arg(long, default_value = "train")]
    pub split: String,
    /// Hub datasets: the branch, tag or commit [default: main, or @REVISION in the address]
    #[arg(long)]
    pub revision: Option<String>,
    /// Where to write the training conversations (canonical JSONL)
    #[arg(short, long)]
    pub out: PathBuf,
    /// Where to write the validation conversations [default: OUT with .val.jsonl]
    #[arg(long)]
    pub val_out: Option<PathBuf>,
    /// Fraction held out for validation; 0 writes no validation file
    #[arg(long, default_value_t = chatforge_data::VAL_SPLIT)]
    pub val_split: f64,
    /// Seed of the validation split
    #[arg(long, default_value_t = chatforge_data::SPLIT_SEED)]
    pub seed: u64,
    /// Force the record format instead of detecting it
    #[arg(long, value_parser = super::parse::<DataFormat>, help = format!("Force the record format: {}", DataFormat::NAMES))]
    pub format: Option<DataFormat>,
    /// Name instruction fields, e.g. instruction=question,output=answer,domain=topic
    #[arg(long, value_parser = super::parse::<FieldMap>)]
    pub field_map: Option<FieldMap>,
    /// Drop conversations that repeat an earlier one exactly
    #[arg(long)]
    pub dedupe: bool,
    /// Drop conversations with fewer messages
    #[arg(long, default_value_t = 1)]
    pub min_turns: usize,
    /// Drop conversations with more characters
    #[arg(long)]
    pub max_chars: Option<usize>,
    /// Prefix each user turn with the record's domain as a tag (#domain)
    #[arg(long)]
    pub domain_tag: bool,
    /// OpenAssistant trees: keep only the best-ranked path of each tree
    #[arg(long)]
    pub oasst_best_only: bool,
    /// OpenAssistant trees: preference pairs (DPO, ORPO) from sibling replies ordered by rank
    #[arg(long)]
    pub pairs_from_ranks: bool,
    /// Skip and count malformed records instead of stopping at the first
    #[arg(long)]
    pub skip_invalid: bool,
    #[command(flatten)]
    pub chat: ChatExportArgs,
}

/// How a chat export is read (`--format chat-export`, or a .zip input).
#[derive(Args, Clone, Debug)]
pub struct ChatExportArgs {
    /// Chat export: per-user consent, JSON or TOML: {"default": "allow", "users": {"<user id>": "allow|anonymize|exclude"}}
    #[arg(long)]
    pub consent: Option<PathBuf>,
    /// Chat export: what happens to users the consent file does not name (or all users, without
    /// one): allow, anonymize or exclude [default: the file's default, else anonymize]
    #[arg(long, value_parser = chatforge_data::Consent::parse_rule)]
    pub consent_default: Option<chatforge_data::Rule>,
    /// Chat export: consecutive messages at most this many minutes apart form one thread
    #[arg(long, default_value_t = 30.0)]
    pub thread_gap: f64,
    /// Chat export: cut longer runs of messages into threads of this many
    #[arg(long, default_value_t = 40)]
    pub max_thread_messages: usize,
    /// Chat export: mentions of users become @name, @user (placeholder) or nothing (remove)
    #[arg(long, default_value = "name", value_parser = super::parse::<MentionMode>)]
    pub mentions: MentionMode,
    /// Chat export: URLs are kept, become <url> (placeholder), or are removed
    #[arg(long, default_value = "placeholder", value_parser = super::parse::<UrlMode>)]
    pub urls: UrlMode,
    /// Zip inputs: refuse an entry that expands beyond this many MB [default: 256]
    #[arg(long)]
    pub zip_max_entry_mb: Option<u64>,
    /// Zip inputs: refuse an archive whose entries together expand beyond this many MB [default: 1024]
    #[arg(long)]
    pub zip_max_total_mb: Option<u64>,
}

impl Default for ChatExportArgs {
    /// The flags' defaults, for callers that build the arguments in code.
    fn default() -> Self {
        let d = ChatExportOptions::default();
        ChatExportArgs {
            consent: None,
            consent_default: None,
            thread_gap: d.thread_gap_minutes,
            max_thread_messages: d.max_thread_messages,
            mentions: d.mentions,
            urls: d.urls,
            zip_max_entry_mb: None,
            zip_max_total_mb: None,
        }
    }
}

impl ChatExportArgs {
    pub fn options(&self) -> anyhow::Result<ChatExportOptions> {
        let d = ChatExportOptions::default();
        let mb = |v: Option<u64>, default: u64| v.map_or(default, |m| m.saturating_mul(1 << 20));
        Ok(ChatExportOptions {
            max_entry_bytes: mb(self.zip_max_entry_mb, d.max_entry_bytes),
            max_total_bytes: mb(self.zip_max_total_mb, d.max_total_bytes),
            thread_gap_minutes: self.thread_gap,
            max_thread_messages: self.max_thread_messages,
            mentions: self.mentions,
            urls: self.urls,
            consent: {
                let mut c = match &self.consent {
                    Some(p) => Consent::load(p)?,
                    None => Consent::default(),
                };
                if let Some(rule) = self.consent_default {
                    c.default = rule;
                }
                c
            },
        })
    }
}

#[derive(Args)]
pub struct ShowArgs {
    /// A conversation file (canonical JSONL or any importable format)
    pub file: PathBuf,
    /// Tokenizer directory or file
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// How many conversations to show
    #[arg(short, default_value_t = 2)]
    pub n: usize,
    /// Show every token separately, as the tokenizer spells it
    #[arg(long)]
    pub tokens: bool,
    #[command(flatten)]
    pub template: TemplateArgs,
}

#[derive(Args)]
pub struct TokenizeArgs {
    /// A conversation file (canonical JSONL or any importable format)
    pub file: PathBuf,
    /// Tokenizer directory or file
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// The shard to write
    #[arg(short, long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub template: TemplateArgs,
}

pub fn run(cmd: DataCommand) -> anyhow::Result<()> {
    match cmd {
        DataCommand::Import(args) => import_cmd(&args),
        DataCommand::Stats { file, json, top } => {
            let report = import(&[file], &ImportOptions::default())?;
            let stats = Stats::of(&report.conversations, top);
            if json {
                say!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                say!("{stats}");
            }
            Ok(())
        }
        DataCommand::Show(args) => show(&args),
        DataCommand::Tokenize(args) => {
            let tok = load_tokenizer(&args.tokenizer)?;
            let r = tokenize_file(&args.file, &tok, &args.template.options(), &args.out)?;
            say!(
                "{}: {} {} → {} tokens ({} carry loss) in {}, {:.1} MB/s",
                r.input.display(),
                r.conversations,
                if r.pairs {
                    "preference pairs"
                } else {
                    "conversations"
                },
                r.tokens,
                r.loss_tokens,
                r.output.display(),
                r.mb_per_s()
            );
            Ok(())
        }
    }
}

pub fn load_tokenizer(path: &Path) -> anyhow::Result<ChatTokenizer> {
    let path = super::hub::tokenizer(path)?;
    ChatTokenizer::load(&path).context("loading the tokenizer")
}

/// Inputs with each `hf://datasets/…` address replaced by the split's files, fetched into the
/// Hugging Face cache.
fn hub_datasets(inputs: &[PathBuf], split: &str, revision: Option<&str>) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for input in inputs {
        let Some(rest) = input.to_str().and_then(|s| s.strip_prefix("hf://")) else {
            out.push(input.clone());
            continue;
        };
        let mut repo = chatforge_hub::RepoRef::parse_url(rest)?;
        if repo.kind != chatforge_hub::RepoKind::Dataset {
            bail!(
                "{}: data import reads datasets: hf://datasets/ORG/NAME",
                input.display()
            );
        }
        if let Some(r) = revision {
            repo.revision = r.to_string();
        }
        let hub = chatforge_hub::Hub::new(chatforge_hub::Settings::from_env())?;
        let select = |listing: &[String]| chatforge_hub::dataset_files(listing, split);
        let snap = hub
            .snapshot(&repo, &select, &super::hub::Bar::default())
            .with_context(|| format!("{} (split {split})", input.display()))?;
        say!(
            "{repo}: split {split} at commit {}: {} file(s)",
            snap.commit,
            snap.files.len()
        );
        out.extend(snap.files.iter().map(|f| snap.dir.join(f)));
    }
    Ok(out)
}

pub fn import_cmd(args: &ImportArgs) -> anyhow::Result<()> {
    let opts = ImportOptions {
        read: ReadOptions {
            format: args.format,
            field_map: args.field_map.clone().unwrap_or_default(),
            oasst_best_only: args.oasst_best_only,
            pairs_from_ranks: args.pairs_from_ranks,
            skip_invalid: args.skip_invalid,
        },
        dedupe: args.dedupe,
        min_turns: args.min_turns,
        max_chars: args.max_chars,
        domain_tag: args.domain_tag,
        chat: args.chat.options()?,
    };
    let inputs = hub_datasets(&args.inputs, &args.split, args.revision.as_deref())?;
    let report = import(&inputs, &opts)?;
    if (args.chat.consent.is_some() || args.chat.consent_default.is_some()) && report.chat.is_none() {
        bail!("--consent applies to chat exports: add --format chat-export (or give the export's .zip)");
    }
    if let Some(r) = &report.chat {
        print_chat_report(r);
    }
    // Preference pairs are counted as pairs; a mix of pairs and conversations is refused, as
    // tokenizing them would be.
    let pairs = report.conversations.iter().filter(|c| c.is_pair()).count();
    if pairs > 0 && pairs < report.conversations.len() {
        bail!(
            "the inputs mix {pairs} preference pairs with {} conversations: import them separately",
            report.conversations.len() - pairs
        );
    }
    let what = if pairs > 0 {
        "preference pairs"
    } else {
        "conversations"
    };
    for f in &report.files {
        say!(
            "{}: {} — {} records → {} {what}",
            f.path.display(),
            f.detected,
            f.records,
            f.conversations
        );
        if f.invalid > 0 {
            say!("  skipped {} malformed records, e.g.:", f.invalid);
            for e in &f.first_errors {
                say!("    {e}");
            }
        }
    }
    let dropped = [
        (report.dropped_duplicates, "duplicates"),
        (report.dropped_short, "below --min-turns"),
        (report.dropped_long, "over --max-chars"),
    ];
    for (n, why) in dropped.iter().filter(|(n, _)| *n > 0) {
        say!("dropped {n} {what}: {why}");
    }
    if report.conversations.is_empty() {
        bail!("no {what} left to write");
    }
    let (train, val) = split(report.conversations, args.val_split, args.seed)?;
    write_jsonl(&args.out, &train)?;
    say!("wrote {} training {what} to {}", train.len(), args.out.display());
    if let Some(r) = &report.chat {
        // The consent summary, kept beside the data (the studio's personas page shows it).
        let path = chatforge_data::import_report_path(&args.out);
        let body = serde_json::json!({"chat": r, "train": train.len(), "val": val.len()});
        chatforge_data::atomic_write(&path, |w| {
            serde_json::to_writer_pretty(&mut *w, &body).map_err(std::io::Error::other)
        })?;
    }
    if args.val_split > 0.0 {
        let val_out = args
            .val_out
            .clone()
            .unwrap_or_else(|| chatforge_data::val_path_for(&args.out));
        write_jsonl(&val_out, &val)?;
        say!(
            "wrote {} validation {what} to {} (seed {})",
            val.len(),
            val_out.display(),
            args.seed
        );
    }
    Ok(())
}

fn print_chat_report(r: &ChatExportReport) {
    say!("{} channel files, {} messages", r.files.len(), r.messages);
    for f in &r.files {
        say!("  {f}");
    }
    let dropped: Vec<String> = [
        (r.bots, "from bots"),
        (r.system, "system"),
        (r.empty, "empty"),
        (r.attachments_only, "attachment-only"),
        (r.replies_to_excluded, "replies to excluded users"),
    ]
    .iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, why)| format!("{n} {why}"))
    .collect();
    if !dropped.is_empty() {
        say!("dropped messages: {}", dropped.join(", "));
    }
    let count = |rule: &str| r.consent.get(rule).map_or((0, 0), |c| (c.users, c.messages));
    let (kept, anonymised, excluded) = (count("allow"), count("anonymize"), count("exclude"));
    say!(
        "speakers: {} kept, {} anonymised, {} excluded (messages: {} kept, {} anonymised, {} excluded)",
        kept.0,
        anonymised.0,
        excluded.0,
        kept.1,
        anonymised.1,
        excluded.1
    );
    if kept.0 == 0 && anonymised.0 > 0 {
        say!(
            "  (users without a consent decision are anonymised: give --consent FILE, or --consent-default allow to keep their names)"
        );
    }
    say!(
        "conversations: {} reply pairs, {} threads; {} with a single speaker dropped",
        r.reply_pairs,
        r.threads,
        r.single_speaker
    );
}

fn show(args: &ShowArgs) -> anyhow::Result<()> {
    let tok = load_tokenizer(&args.tokenizer)?;
    let convs = import(std::slice::from_ref(&args.file), &ImportOptions::default())?.conversations;
    let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let opts = args.template.options();
    say!(
        "template: {:?}; {} marks tokens that carry loss (assistant content and its end)",
        tok.template(),
        if color {
            "\x1b[1;32mgreen\x1b[0m"
        } else {
            "⟦…⟧"
        }
    );
    let mut enc = tok.encoder();
    for (i, c) in convs.iter().take(args.n).enumerate() {
        if c.is_pair() {
            let [chosen, rejected] = tok.render_pair(&mut enc, c, &opts)?;
            for (side, r) in [("chosen", chosen), ("rejected", rejected)] {
                say!(
                    "\n── pair {} · {side} · {} tokens, {} in the reply ──",
                    i + 1,
                    r.ids.len(),
                    r.mask.iter().filter(|&&m| m == 1).count()
                );
                say!("{}", highlight(&tok, &r.ids, &r.mask, args.tokens, color)?);
            }
            continue;
        }
        let r = tok.render_chat(c, &opts)?;
        let loss = r.mask.iter().filter(|&&m| m == 1).count();
        say!(
            "\n── conversation {} · {} tokens, {} carry loss ──",
            i + 1,
            r.ids.len(),
            loss
        );
        say!("{}", highlight(&tok, &r.ids, &r.mask, args.tokens, color)?);
    }
    Ok(())
}

/// Decodes runs of equal mask together, so multi-byte characters split across tokens stay whole.
fn highlight(
    tok: &ChatTokenizer,
    ids: &[u32],
    mask: &[u8],
    per_token: bool,
    color: bool,
) -> anyhow::Result<String> {
    let (on, off) = if color {
        ("\x1b[1;32m", "\x1b[0m")
    } else {
        ("⟦", "⟧")
    };
    let mut out = String::new();
    let mut start = 0;
    while start < ids.len() {
        let end = if per_token {
            start + 1
        } else {
            start + mask[start..].iter().take_while(|&&m| m == mask[start]).count()
        };
        let text = if per_token {
            format!(
                "{}|",
                tok.id_to_token(ids[start])
                    .unwrap_or_else(|| format!("<{}>", ids[start]))
            )
        } else {
            tok.decode(&ids[start..end], false)?
        };
        if mask[start] == 1 {
            out.push_str(&format!("{on}{text}{off}"));
        } else {
            out.push_str(&text);
        }
        start = end;
    }
    Ok(out)
}
