//! `chatforge personas …` (the registry) and `train --persona-strategy …` (persona training).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use chatforge_data::personas::{
    ExampleOptions, PersonaEntry, PersonaRun, Registry, Strategy, Targets, build_examples, discover, slug,
};
use chatforge_data::{Conversation, Shard, read_jsonl, write_jsonl};
use chatforge_run::RunDir;
use chatforge_train::TrainConfig;
use clap::{Args, Subcommand};

#[derive(Args)]
pub struct PersonasArgs {
    /// The persona registry
    #[arg(long, global = true, default_value = "personas.toml")]
    pub registry: PathBuf,
    #[command(subcommand)]
    pub command: PersonasCommand,
}

#[derive(Subcommand)]
pub enum PersonasCommand {
    /// Find the speakers of imported chat data with enough messages, and add them to the registry
    Discover {
        /// Conversations from `data import --format chat-export`
        #[arg(required = true)]
        data: Vec<PathBuf>,
        /// Fewest messages a speaker needs to become a persona
        #[arg(long, default_value_t = 200)]
        min_messages: usize,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// The registry: personas, their user ids, and whether they train
    List,
    /// Give a persona another name (by user id or current name)
    /// Without arguments, asks for each persona's new name in turn (on a terminal; otherwise it
    /// reads one line per persona from stdin; an empty line keeps the name), as seed 003's
    /// `--update-names`
    Rename {
        /// The persona: its user id or current name
        #[arg(requires = "name")]
        persona: Option<String>,
        /// Its new name
        name: Option<String>,
    },
    /// Add a persona by user id (or re-enable and rename it)
    Add {
        /// The speaker's user id in the chat export
        id: String,
        /// The persona's name
        name: String,
        /// A line saying who this is
        #[arg(default_value = "")]
        description: String,
    },
    /// Stop training a persona (it stays listed)
    Disable {
        /// The persona: its user id or name
        persona: String,
    },
    /// Train a disabled persona again
    Enable {
        /// The persona: its user id or name
        persona: String,
    },
    /// Write the training examples a strategy makes from imported chat data, to inspect them
    Examples {
        /// Conversations imported from a chat export (`data import --format chat-export`)
        data: PathBuf,
        /// unified, instruction (instruction_based) or adapters (multiple_lora)
        #[arg(long, value_parser = super::parse::<Strategy>)]
        strategy: Strategy,
        /// For `adapters`: the persona whose examples to write [default: all, one file each]
        #[arg(long)]
        persona: Option<String>,
        #[command(flatten)]
        examples: ExampleArgs,
        /// The JSONL to write (for `adapters`, OUT with the persona's folder name before .jsonl)
        #[arg(short, long)]
        out: PathBuf,
    },
}

/// How examples are made, shared by `train --persona-strategy` and `personas examples`.
#[derive(Args, Clone, Debug, Default)]
pub struct ExampleArgs {
    /// Put the channel in the persona instruction ("Channel: NAME | Respond as …")
    #[arg(long)]
    pub with_channel: bool,
    /// Context-window augmentation: also train each reply with just its 1..=K preceding turns
    #[arg(long, default_value_t = 0)]
    pub augment: usize,
}

impl ExampleArgs {
    fn options(&self) -> ExampleOptions {
        ExampleOptions {
            with_channel: self.with_channel,
            augment: self.augment,
        }
    }
}

pub fn run(args: PersonasArgs) -> anyhow::Result<()> {
    let path = &args.registry;
    let edit = |f: &dyn Fn(&mut Registry) -> chatforge_data::Result<()>| -> anyhow::Result<()> {
        if !path.is_file() {
            bail!(
                "{}: no persona registry here: run `chatforge personas discover DATA` (or pass --registry)",
                path.display()
            );
        }
        let mut reg = Registry::load(path)?;
        f(&mut reg)?;
        reg.save(path)?;
        print_registry(&reg, path);
        Ok(())
    };
    match args.command {
        PersonasCommand::Discover {
            data,
            min_messages,
            json,
        } => {
            let mut convs = Vec::new();
            for d in &data {
                convs.extend(read_jsonl(d)?);
            }
            let found = discover(&convs, min_messages);
            let mut reg = Registry::load(path)?;
            let added = reg.merge(&found);
            reg.save(path)?;
            if json {
                say!("{}", serde_json::to_string_pretty(&found)?);
            } else {
                say!("{} speakers with at least {min_messages} messages:", found.len());
                for c in &found {
                    say!("{c}");
                }
            }
            say!(
                "{added} added to {} ({} personas, {} enabled); edit it or use `personas rename|disable`",
                path.display(),
                reg.personas.len(),
                reg.enabled().count()
            );
            Ok(())
        }
        PersonasCommand::List => {
            if !path.is_file() {
                bail!(
                    "{}: no persona registry here: run `chatforge personas discover DATA`",
                    path.display()
                );
            }
            print_registry(&Registry::load(path)?, path);
            Ok(())
        }
        PersonasCommand::Rename {
            persona: Some(persona),
            name: Some(name),
        } => edit(&|r| r.rename(&persona, &name)),
        PersonasCommand::Rename { .. } => edit(&rename_each),
        PersonasCommand::Add {
            id,
            name,
            description,
        } => edit(&|r| r.add(&id, &name, &description)),
        PersonasCommand::Disable { persona } => edit(&|r| r.set_enabled(&persona, false)),
        PersonasCommand::Enable { persona } => edit(&|r| r.set_enabled(&persona, true)),
        PersonasCommand::Examples {
            data,
            strategy,
            persona,
            examples,
            out,
        } => {
            let threads = read_jsonl(&data)?;
            let opts = examples.options();
            let sets = example_sets(&threads, strategy, path, persona.as_deref(), &opts)?;
            for (name, convs) in sets {
                let file = match &name {
                    Some(n) if strategy == Strategy::Adapters => with_suffix(&out, n),
                    _ => out.clone(),
                };
                write_jsonl(&file, &convs)?;
                say!(
                    "{}: {} examples{} → {}",
                    strategy.name(),
                    convs.len(),
                    name.map_or(String::new(), |n| format!(" for {n}")),
                    file.display()
                );
            }
            Ok(())
        }
    }
}

/// `out.jsonl` + `alice` → `out.alice.jsonl`.
/// Asks for every persona's new name, one line each (prompts on stderr); an empty line, or the
/// end of input, keeps the name.
fn rename_each(reg: &mut Registry) -> chatforge_data::Result<()> {
    use std::io::{BufRead, Write};
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let ids: Vec<(String, String)> = reg
        .personas
        .iter()
        .map(|p| (p.id.clone(), p.name.clone()))
        .collect();
    for (id, name) in ids {
        eprint!("{name} ({id}), new name [enter keeps it]: ");
        let _ = std::io::stderr().flush();
        let Some(Ok(line)) = lines.next() else {
            eprintln!();
            break;
        };
        let new = line.trim();
        if !new.is_empty() && new != name {
            reg.rename(&id, new)?;
        }
    }
    Ok(())
}

fn with_suffix(out: &Path, name: &str) -> PathBuf {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    out.with_file_name(format!("{stem}.{name}.jsonl"))
}

fn print_registry(reg: &Registry, path: &Path) {
    say!("{}: {} personas", path.display(), reg.personas.len());
    for p in &reg.personas {
        say!(
            "  {:<20} {:<22} {:<8} {}",
            p.name,
            p.id,
            if p.enabled { "enabled" } else { "disabled" },
            p.description
        );
    }
}

/// The examples of a strategy: one set (named by the persona's folder for `adapters`, else `None`).
fn example_sets(
    threads: &[Conversation],
    strategy: Strategy,
    registry: &Path,
    only: Option<&str>,
    opts: &ExampleOptions,
) -> anyhow::Result<Vec<(Option<String>, Vec<Conversation>)>> {
    Ok(match strategy {
        Strategy::Unified => vec![(None, build_examples(threads, Targets::Everyone, opts))],
        Strategy::Instruction => {
            let reg = Registry::load_enabled(registry)?;
            vec![(None, build_examples(threads, Targets::Instructed(&reg), opts))]
        }
        Strategy::Adapters => {
            let reg = Registry::load_enabled(registry)?;
            let mut out = Vec::new();
            for p in reg.enabled() {
                if only.is_some_and(|o| o != p.id && o != p.name && slug(o) != slug(&p.name)) {
                    continue;
                }
                out.push((
                    Some(slug(&p.name)),
                    build_examples(threads, Targets::Only(p), opts),
                ));
            }
            if out.is_empty() {
                bail!(
                    "no enabled persona {:?} in {}",
                    only.unwrap_or(""),
                    registry.display()
                );
            }
            out
        }
    })
}

/// Examples → `dir/{train,val}.jsonl` → `dir/{train,val}.bin`; returns the shards.
/// Writes a persona run's examples into the run's `data/` as conversations, which training
/// tokenizes (`chatforge_pipeline::prepare`).
fn write_examples(
    run: &RunDir,
    train: &[Conversation],
    val: Option<&[Conversation]>,
) -> anyhow::Result<(PathBuf, Option<PathBuf>)> {
    if train.is_empty() {
        bail!("no training examples");
    }
    let path = |name: &str| run.data().join(format!("{name}.jsonl"));
    write_jsonl(&path("train"), train)?;
    let val = match val.filter(|v| !v.is_empty()) {
        Some(v) => {
            write_jsonl(&path("val"), v)?;
            Some(path("val"))
        }
        None => None,
    };
    Ok((path("train"), val))
}

/// `train --persona-strategy`: `train.data` / `train.val` are imported chat conversations (JSONL);
/// they become examples of the strategy, tokenized into the run, and train one model or, for
/// `adapters`, one LoRA adapter per enabled persona in sequence.
pub fn train(
    mut cfg: TrainConfig,
    strategy: Strategy,
    out: &Path,
    args: &super::train::TrainArgs,
) -> anyhow::Result<()> {
    let tok_path = args
        .tokenizer
        .as_deref()
        .context("--persona-strategy tokenizes the conversations for training: give --tokenizer")?;
    // Loaded once here so a bad tokenizer fails before anything is built; training tokenizes.
    super::data::load_tokenizer(tok_path)?;
    let data =
        cfg.train.data.clone().context(
            "no training data: --data CONVERSATIONS.jsonl (from `data import --format chat-export`)",
        )?;
    if Shard::is_shard(&data) {
        bail!(
            "{}: --persona-strategy builds its examples from conversations: give the JSONL from `data import`, not a token shard",
            data.display()
        );
    }
    let threads = read_jsonl(&data)?;
    let val_threads = cfg.train.val.as_deref().map(read_jsonl).transpose()?;
    let opts = args.examples.options();
    let registry = &args.personas;
    std::fs::create_dir_all(out)?;
    let mut record = PersonaRun {
        strategy: strategy.name().to_string(),
        data: data.to_path_buf(),
        with_channel: opts.with_channel,
        augment: opts.augment,
        base: None,
        personas: Vec::new(),
    };
    match strategy {
        Strategy::Unified | Strategy::Instruction => {
            let sets = example_sets(&threads, strategy, registry, None, &opts)?;
            let val = val_threads
                .as_ref()
                .map(|v| example_sets(v, strategy, registry, None, &opts))
                .transpose()?;
            let (train_set, val_set) = (&sets[0].1, val.as_ref().map(|v| v[0].1.as_slice()));
            say!(
                "{} strategy: {} training examples from {} conversations",
                strategy.name(),
                train_set.len(),
                threads.len()
            );
            let (train_shard, val_shard) = write_examples(&RunDir::new(out), train_set, val_set)?;
            cfg.train.data = Some(train_shard);
            cfg.train.val = val_shard;
            if strategy == Strategy::Instruction {
                record.personas = persona_entries(&Registry::load_enabled(registry)?, None);
            }
            record.write(out)?;
            super::train::run_training(&cfg, out, args.resume, Some(tok_path), !args.no_eval)?;
            Ok(())
        }
        Strategy::Adapters => {
            train_adapters(cfg, &threads, val_threads.as_deref(), tok_path, out, args, record)
        }
    }
}

fn persona_entries(reg: &Registry, trained: Option<&[String]>) -> Vec<PersonaEntry> {
    reg.enabled()
        .filter(|p| trained.is_none_or(|t| t.contains(&slug(&p.name))))
        .map(|p| PersonaEntry {
            id: p.id.clone(),
            name: p.name.clone(),
            adapter: slug(&p.name),
        })
        .collect()
}

fn train_adapters(
    mut cfg: TrainConfig,
    threads: &[Conversation],
    val_threads: Option<&[Conversation]>,
    tok_path: &Path,
    out: &Path,
    args: &super::train::TrainArgs,
    mut record: PersonaRun,
) -> anyhow::Result<()> {
    if cfg.train.adapter().is_none() {
        if args.mode.is_some() {
            bail!("--persona-strategy adapters trains LoRA adapters: use --mode lora or qlora");
        }
        cfg.train.mode = chatforge_train::Mode::Lora;
    }
    let base = cfg.train.init.clone().context(
        "--persona-strategy adapters trains adapters on a shared base: give --init (a run or an HF folder)",
    )?;
    let base = std::fs::canonicalize(&base).with_context(|| format!("--init {}", base.display()))?;
    cfg.train.init = Some(base.clone());
    let reg = Registry::load_enabled(&args.personas)?;
    let opts = args.examples.options();
    let mut trained = Vec::new();
    let enabled: Vec<_> = reg.enabled().cloned().collect();
    for (i, p) in enabled.iter().enumerate() {
        let name = slug(&p.name);
        let sub = RunDir::new(out).persona(&name);
        let adapter = RunDir::new(out).adapter(&name);
        say!(
            "\n── persona {}/{}: {} ({}) ──",
            i + 1,
            enabled.len(),
            p.name,
            p.id
        );
        if args.resume && chatforge_model::lora::is_adapter_dir(&adapter) {
            say!("adapter already trained: {}", adapter.display());
            trained.push(name);
            continue;
        }
        let examples = build_examples(threads, Targets::Only(p), &opts);
        if examples.is_empty() {
            eprintln!("warning: {} has no reply in the data: no adapter", p.name);
            continue;
        }
        let val = val_threads.map(|v| build_examples(v, Targets::Only(p), &opts));
        say!("{} training examples", examples.len());
        // A fresh run starts clean; --resume continues this persona's checkpoints.
        let resume = args.resume && sub.checkpoints().is_dir();
        if !resume && sub.root().exists() {
            std::fs::remove_dir_all(sub.root())
                .with_context(|| format!("clearing {}", sub.root().display()))?;
        }
        let (train_shard, val_shard) = write_examples(&sub, &examples, val.as_deref())?;
        let mut pcfg = cfg.clone();
        pcfg.train.data = Some(train_shard);
        pcfg.train.val = val_shard;
        pcfg.train.adapter_name = Some(name.clone());
        super::train::run_training(&pcfg, sub.root(), resume, Some(tok_path), false)?;
        let src = sub.adapter(&name);
        chatforge_data::atomic_dir(&adapter, |tmp| -> anyhow::Result<()> {
            for f in ["adapter_config.json", "adapter_model.safetensors"] {
                std::fs::copy(src.join(f), tmp.join(f))
                    .with_context(|| format!("copying {}", src.join(f).display()))?;
            }
            Ok(())
        })?;
        say!("adapter for {}: {}", p.name, adapter.display());
        trained.push(name);
    }
    if trained.is_empty() {
        bail!("no persona had data to train an adapter on");
    }
    std::fs::copy(
        chatforge_pipeline::tokenizer_file(tok_path),
        RunDir::new(out).tokenizer(),
    )
    .context("copying the tokenizer into the run")?;
    record.base = Some(base.clone());
    record.personas = persona_entries(&reg, Some(&trained));
    record.write(out)?;
    say!(
        "\n{} adapters in {}; chat with `chatforge chat --model {}` and `/persona NAME`",
        trained.len(),
        RunDir::new(out).adapters().display(),
        out.display()
    );
    Ok(())
}
