//! Personas: the people of a group chat a model can learn to talk like.
//!
//! [`discover`] finds the speakers with enough messages, the [`Registry`] (`personas.toml`) maps
//! their stable user ids to persona names, and [`build_examples`] turns imported threads into
//! training conversations for one of the three [`Strategy`]s.
//!
//! Examples are built from the point of view of one speaker S (a *perspective*): the thread up to
//! S's last turn, S's turns as the assistant, everyone else's as the user. Consecutive messages of
//! one author are joined into one turn. So every message is a training target exactly once, the
//! context is what S saw, and threads where S never answered anyone give nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{ANONYMOUS_ID, Conversation, Error, Message, Result, Role, atomic_write};

/// What a persona training run writes at its top: the strategy, the personas and, for
/// `adapters`, the base the adapters belong to (so the folder opens as a model).
pub const PERSONA_RUN_FILE: &str = "persona_run.json";

/// The record in [`PERSONA_RUN_FILE`]: how a persona run was made, written by `train
/// --persona-strategy` and read by whatever opens the folder as a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PersonaRun {
    /// `unified`, `instruction` or `adapters`.
    pub strategy: String,
    /// The conversations the examples were built from.
    pub data: std::path::PathBuf,
    pub with_channel: bool,
    pub augment: usize,
    /// `adapters`: the shared base model the adapters belong to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<std::path::PathBuf>,
    /// The personas trained (`instruction`, `adapters`); empty for `unified`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub personas: Vec<PersonaEntry>,
}

/// One persona of a run: its user id, its name, and its adapter's folder name under `adapters/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PersonaEntry {
    pub id: String,
    pub name: String,
    pub adapter: String,
}

impl PersonaRun {
    /// Writes the record into run directory `dir`, atomically.
    pub fn write(&self, dir: &std::path::Path) -> Result<()> {
        atomic_write(&dir.join(PERSONA_RUN_FILE), |w| {
            serde_json::to_writer_pretty(&mut *w, self).map_err(std::io::Error::other)
        })
    }

    /// The record of run directory `dir`: `None` when it has none.
    pub fn read(dir: &std::path::Path) -> Result<Option<PersonaRun>> {
        let file = dir.join(PERSONA_RUN_FILE);
        if !file.is_file() {
            return Ok(None);
        }
        let text = crate::read_capped(&file, 16 << 20)?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::file(&file, format!("not a persona-run record: {e}")))
    }
}

/// The persona instruction: `Respond as {name}:`, with the channel in front when given
/// (`Channel: {channel} | Respond as {name}:`). Training examples and chat render the same text.
pub fn persona_line(name: &str, channel: Option<&str>) -> String {
    match channel.map(str::trim).filter(|c| !c.is_empty()) {
        Some(c) => format!("Channel: {c} | Respond as {name}:"),
        None => format!("Respond as {name}:"),
    }
}

/// A persona's folder name (adapters): lower case, letters and digits, other runs become `-`.
pub fn slug(name: &str) -> String {
    let mut out = String::new();
    for c in name.trim().chars() {
        if c.is_alphanumeric() {
            out.extend(c.to_lowercase());
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    out.trim_end_matches('-').to_string()
}

/// One persona of the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Persona {
    /// The speaker's stable user id, as in the imported data's `speaker`.
    pub id: String,
    /// The name the model answers to (`/persona NAME`, `Respond as NAME:`).
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

/// `personas.toml`: user id → persona, in the order they were added.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    #[serde(default, rename = "persona")]
    pub personas: Vec<Persona>,
}

impl Registry {
    /// Reads a registry; a missing file is an empty registry.
    pub fn load(path: &Path) -> Result<Registry> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Registry::default()),
            Err(e) => return Err(Error::io(path, e)),
        };
        let reg: Registry =
            toml::from_str(&text).map_err(|e| Error::file(path, format!("not a persona registry: {e}")))?;
        reg.validate().map_err(|m| Error::file(path, m))?;
        Ok(reg)
    }

    /// Reads a registry that must exist and enable at least one persona.
    pub fn load_enabled(path: &Path) -> Result<Registry> {
        if !path.is_file() {
            return Err(Error::file(
                path,
                "no persona registry: run `chatforge personas discover DATA` first",
            ));
        }
        let reg = Registry::load(path)?;
        if reg.enabled().next().is_none() {
            return Err(Error::file(path, "no enabled persona in the registry"));
        }
        Ok(reg)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        self.validate().map_err(Error::Invalid)?;
        let body = toml::to_string(self).map_err(|e| Error::Invalid(format!("registry: {e}")))?;
        atomic_write(path, |w| {
            use std::io::Write;
            w.write_all(
                b"# chatforge persona registry: a speaker's user id -> the persona the model learns.\n\
                  # Edit freely, or use `chatforge personas rename|add|disable`.\n\n",
            )?;
            w.write_all(body.as_bytes())
        })
    }

    /// Ids unique, names unique (also as folder names), none empty.
    fn validate(&self) -> std::result::Result<(), String> {
        let (mut ids, mut slugs) = (BTreeSet::new(), BTreeMap::new());
        for p in &self.personas {
            if p.id.trim().is_empty() || p.name.trim().is_empty() {
                return Err(format!(
                    "persona {:?} ({:?}): id and name must not be empty",
                    p.name, p.id
                ));
            }
            if p.id == ANONYMOUS_ID {
                return Err("anonymised users cannot be a persona".into());
            }
            if !ids.insert(p.id.as_str()) {
                return Err(format!("user id {} is listed twice", p.id));
            }
            let s = slug(&p.name);
            if s.is_empty() {
                return Err(format!(
                    "persona name {:?} needs at least one letter or digit",
                    p.name
                ));
            }
            if let Some(other) = slugs.insert(s, p.name.as_str()) {
                return Err(format!(
                    "persona names {other:?} and {:?} are the same once made a folder name",
                    p.name
                ));
            }
        }
        Ok(())
    }

    pub fn enabled(&self) -> impl Iterator<Item = &Persona> {
        self.personas.iter().filter(|p| p.enabled)
    }

    pub fn by_id(&self, id: &str) -> Option<&Persona> {
        self.personas.iter().find(|p| p.id == id)
    }

    /// The persona with this id, name or folder name.
    pub fn find_mut(&mut self, key: &str) -> Option<&mut Persona> {
        let s = slug(key);
        let i = self
            .personas
            .iter()
            .position(|p| p.id == key)
            .or_else(|| self.personas.iter().position(|p| p.name == key))
            .or_else(|| self.personas.iter().position(|p| slug(&p.name) == s))?;
        self.personas.get_mut(i)
    }

    /// Adds a persona, or re-enables and renames the one with this id.
    pub fn add(&mut self, id: &str, name: &str, description: &str) -> Result<()> {
        let mut next = self.clone();
        match next.personas.iter_mut().find(|p| p.id == id) {
            Some(p) => {
                p.name = name.to_string();
                p.description = description.to_string();
                p.enabled = true;
            }
            None => next.personas.push(Persona {
                id: id.to_string(),
                name: name.to_string(),
                description: description.to_string(),
                enabled: true,
            }),
        }
        next.validate().map_err(Error::Invalid)?;
        *self = next;
        Ok(())
    }

    pub fn rename(&mut self, key: &str, name: &str) -> Result<()> {
        let mut next = self.clone();
        next.find_mut(key)
            .ok_or_else(|| Error::Invalid(format!("no persona {key:?} (an id or a name) in the registry")))?
            .name = name.to_string();
        next.validate().map_err(Error::Invalid)?;
        *self = next;
        Ok(())
    }

    pub fn set_enabled(&mut self, key: &str, enabled: bool) -> Result<()> {
        self.find_mut(key)
            .ok_or_else(|| Error::Invalid(format!("no persona {key:?} (an id or a name) in the registry")))?
            .enabled = enabled;
        Ok(())
    }

    /// Adds the candidates not yet listed (with their current name, made unique); entries already
    /// there keep their name, description and state. Returns how many were added.
    pub fn merge(&mut self, candidates: &[Candidate]) -> usize {
        let mut added = 0;
        for c in candidates {
            if self.by_id(&c.id).is_some() {
                continue;
            }
            let taken: BTreeSet<String> = self.personas.iter().map(|p| slug(&p.name)).collect();
            let mut name = if slug(&c.name).is_empty() {
                format!("user {}", c.id)
            } else {
                c.name.clone()
            };
            if taken.contains(&slug(&name)) {
                name = format!("{name} {}", &c.id[c.id.len().saturating_sub(4)..]);
            }
            let mut n = 2;
            while self.personas.iter().any(|p| slug(&p.name) == slug(&name)) {
                name = format!("{} {n}", c.name);
                n += 1;
            }
            self.personas.push(Persona {
                id: c.id.clone(),
                name,
                description: c.describe(),
                enabled: true,
            });
            added += 1;
        }
        added
    }
}

/// A speaker with enough messages to be a persona.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Candidate {
    pub id: String,
    /// The name they used most recently.
    pub name: String,
    pub messages: usize,
    pub words: usize,
    pub channels: Vec<String>,
    /// A few of their longer lines.
    pub examples: Vec<String>,
}

impl Candidate {
    fn describe(&self) -> String {
        let channels: Vec<String> = self.channels.iter().map(|c| format!("#{c}")).collect();
        format!(
            "{} messages, {} words in {}",
            self.messages,
            self.words,
            channels.join(", ")
        )
    }
}

impl fmt::Display for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} ({}): {}", self.name, self.id, self.describe())?;
        for e in &self.examples {
            writeln!(f, "    “{e}”")?;
        }
        Ok(())
    }
}

/// Whether message `i` of `c` is the speaker's own (a reply pair's first message is context only:
/// it is the replied-to message, counted in the thread it belongs to).
fn is_own(c: &Conversation, i: usize) -> bool {
    !(i == 0 && c.meta.get("kind").and_then(Value::as_str) == Some("reply"))
}

/// Speakers with at least `min_messages` messages, most active first. Anonymised users are never
/// candidates.
pub fn discover(convs: &[Conversation], min_messages: usize) -> Vec<Candidate> {
    #[derive(Default)]
    struct Acc {
        messages: usize,
        words: usize,
        channels: BTreeSet<String>,
        name: Option<(String, String)>,
        examples: Vec<String>,
    }
    let mut by: HashMap<String, Acc> = HashMap::new();
    for c in convs {
        let channel = c.meta.get("channel").and_then(Value::as_str);
        let start = c.meta.get("start").and_then(Value::as_str).unwrap_or("");
        for (i, m) in c.messages.iter().enumerate() {
            let Some(sp) = m.speaker.as_deref().filter(|s| *s != ANONYMOUS_ID) else {
                continue;
            };
            if !is_own(c, i) {
                continue;
            }
            let a = by.entry(sp.to_string()).or_default();
            a.messages += 1;
            a.words += m.content.split_whitespace().count();
            if let Some(ch) = channel {
                a.channels.insert(ch.to_string());
            }
            if let Some(name) = c
                .meta
                .get("speakers")
                .and_then(|s| s.get(sp))
                .and_then(Value::as_str)
                && a.name.as_ref().is_none_or(|(t, _)| start >= t.as_str())
            {
                a.name = Some((start.to_string(), name.to_string()));
            }
            let line = m.content.lines().next().unwrap_or("").trim();
            let short: String = line.chars().take(100).collect();
            if a.examples.len() < 3 && short.split_whitespace().count() >= 4 && !a.examples.contains(&short) {
                a.examples.push(short);
            }
        }
    }
    let mut out: Vec<Candidate> = by
        .into_iter()
        .filter(|(_, a)| a.messages >= min_messages)
        .map(|(id, a)| Candidate {
            name: a.name.map_or_else(|| id.clone(), |(_, n)| n),
            id,
            messages: a.messages,
            words: a.words,
            channels: a.channels.into_iter().collect(),
            examples: a.examples,
        })
        .collect();
    out.sort_by(|a, b| b.messages.cmp(&a.messages).then(a.id.cmp(&b.id)));
    out
}

/// How persona data is trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Every speaker's messages, no persona distinction: one voice for the whole chat.
    Unified,
    /// The enabled personas' messages, each example told whom to respond as: one model that
    /// switches persona with the instruction.
    Instruction,
    /// One LoRA adapter per enabled persona on a shared base, trained in sequence.
    Adapters,
}

impl FromStr for Strategy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        // Seed 003's names too: instruction_based, multiple_lora.
        match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "unified" => Ok(Strategy::Unified),
            "instruction" | "instruction_based" => Ok(Strategy::Instruction),
            "adapters" | "multiple_lora" | "lora" => Ok(Strategy::Adapters),
            other => Err(Error::Invalid(format!(
                "persona strategy '{other}': expected unified, instruction (instruction_based) or adapters (multiple_lora)"
            ))),
        }
    }
}

impl Strategy {
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Unified => "unified",
            Strategy::Instruction => "instruction",
            Strategy::Adapters => "adapters",
        }
    }
}

/// Whose turns become training targets, and how they are told apart.
#[derive(Debug, Clone, Copy)]
pub enum Targets<'a> {
    /// Every speaker, no instruction (`unified`).
    Everyone,
    /// The registry's enabled personas, each with its instruction (`instruction`).
    Instructed(&'a Registry),
    /// One persona, no instruction: its adapter is the persona (`adapters`).
    Only(&'a Persona),
}

#[derive(Debug, Clone, Copy, Default)]
pub struct ExampleOptions {
    /// Put the channel in the instruction (`Channel: {channel} | Respond as {name}:`).
    pub with_channel: bool,
    /// Context-window augmentation: besides each full perspective, every target turn is also
    /// trained with just its 1..=k preceding turns (0: off). Nothing is invented: each extra
    /// example is a shorter window of the same real thread.
    pub augment: usize,
}

/// A thread's turns with consecutive messages of one speaker joined, as (speaker, text).
fn turns(c: &Conversation) -> Vec<(Option<&str>, String)> {
    let mut out: Vec<(Option<&str>, String)> = Vec::new();
    for (i, m) in c.messages.iter().enumerate() {
        if m.role == Role::System {
            continue;
        }
        // A reply pair's context is nobody's target: it keeps a speaker of its own only to be
        // told apart from the reply.
        let sp = m.speaker.as_deref();
        match out.last_mut() {
            Some((s, text)) if *s == sp && sp.is_some() && is_own(c, i) => {
                text.push('\n');
                text.push_str(&m.content);
            }
            _ => out.push((sp, m.content.clone())),
        }
    }
    out
}

/// The example of `window` (turn indices) from `speaker`'s point of view.
fn perspective(
    c: &Conversation,
    turns: &[(Option<&str>, String)],
    window: std::ops::RangeInclusive<usize>,
    speaker: &str,
    instruction: Option<String>,
) -> Conversation {
    let mut messages = Vec::new();
    if let Some(line) = instruction {
        messages.push(Message::new(Role::System, line));
    }
    for (sp, text) in &turns[window] {
        let role = if *sp == Some(speaker) {
            Role::Assistant
        } else {
            Role::User
        };
        messages.push(Message {
            role,
            content: text.clone(),
            speaker: sp.map(str::to_string),
        });
    }
    let mut out = Conversation::new(messages);
    for k in ["source", "channel", "kind", "start"] {
        if let Some(v) = c.meta.get(k) {
            out.meta.insert(k.into(), v.clone());
        }
    }
    out.meta.insert("target".into(), speaker.into());
    out
}

/// Training conversations for `targets` from imported chat threads (see the module doc).
pub fn build_examples(
    threads: &[Conversation],
    targets: Targets<'_>,
    opts: &ExampleOptions,
) -> Vec<Conversation> {
    let mut out = Vec::new();
    for c in threads {
        let ts = turns(c);
        let channel = c.meta.get("channel").and_then(Value::as_str);
        // Speakers in order of appearance, each with the persona it trains (if named).
        let mut speakers: Vec<&str> = Vec::new();
        for (i, (sp, _)) in ts.iter().enumerate() {
            if let Some(sp) = sp
                && !speakers.contains(sp)
                && (i > 0 || c.meta.get("kind").and_then(Value::as_str) != Some("reply"))
            {
                speakers.push(sp);
            }
        }
        for sp in speakers {
            let (instruction, persona) = match targets {
                Targets::Everyone => (None, None),
                Targets::Instructed(reg) => match reg.by_id(sp).filter(|p| p.enabled) {
                    Some(p) => (
                        Some(persona_line(&p.name, channel.filter(|_| opts.with_channel))),
                        Some(p.name.as_str()),
                    ),
                    None => continue,
                },
                Targets::Only(p) if p.id == sp => (None, Some(p.name.as_str())),
                Targets::Only(_) => continue,
            };
            let own: Vec<usize> = (0..ts.len()).filter(|&i| ts[i].0 == Some(sp)).collect();
            let Some(&last) = own.last() else { continue };
            // Someone else must have spoken before S's last turn, or S answered no one.
            if !(0..last).any(|i| ts[i].0 != Some(sp)) {
                continue;
            }
            let mut push = |mut e: Conversation| {
                if let Some(name) = persona {
                    e.meta.insert("persona".into(), name.into());
                }
                out.push(e);
            };
            push(perspective(c, &ts, 0..=last, sp, instruction.clone()));
            for &t in own.iter().filter(|&&t| t > 0) {
                for j in 1..=opts.augment.min(t) {
                    // The full perspective already is this window.
                    if t == last && j == t {
                        continue;
                    }
                    let mut e = perspective(c, &ts, t - j..=t, sp, instruction.clone());
                    e.meta.insert("augmented".into(), Value::from(j));
                    push(e);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategy_names_and_seed_003_aliases() {
        for (name, want) in [
            ("unified", Strategy::Unified),
            ("instruction", Strategy::Instruction),
            ("instruction_based", Strategy::Instruction),
            ("adapters", Strategy::Adapters),
            ("multiple_lora", Strategy::Adapters),
            ("Multiple-LoRA", Strategy::Adapters),
        ] {
            assert_eq!(name.parse::<Strategy>().unwrap(), want, "{name}");
        }
        assert!("mixture".parse::<Strategy>().is_err());
    }

    #[test]
    fn slugs_and_lines() {
        assert_eq!(slug("Alice B."), "alice-b");
        assert_eq!(slug("  Zoë_99 "), "zoë-99");
        assert_eq!(slug("!!"), "");
        assert_eq!(persona_line("Bob", None), "Respond as Bob:");
        assert_eq!(
            persona_line("Bob", Some("general")),
            "Channel: general | Respond as Bob:"
        );
    }
}
