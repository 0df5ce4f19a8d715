//! Group-chat exports (Discord-style, in the JSON shape DiscordChatExporter writes) → conversations.
//!
//! An export is a zip, a directory or a single file of channel files, each
//! `{"guild":{…},"channel":{"id","name"},"messages":[{"id","type","timestamp","content",
//! "author":{"id","name","nickname","isBot"},"attachments":[…],"mentions":[…],
//! "reference":{"messageId"}}]}`. Reading it:
//! 1. consent first: an excluded user's messages are dropped before anything else looks at them,
//!    and replies to them are dropped too (their meaning depends on what was removed);
//! 2. bots, system messages (joins, pins, calls…), empty and attachment-only messages are dropped;
//! 3. text is normalised: `<@id>` mentions, channel and role mentions, custom emoji and URLs
//!    (configurable); names and mentions of anonymised and excluded users become `Anonymous`;
//! 4. a reply becomes a two-turn conversation with the message it replies to; the other messages
//!    of a channel form threads of consecutive messages no further apart than the time gap;
//!    threads with a single speaker are dropped (nobody answered anyone).
//!
//! Each turn keeps the author's stable user id as `speaker` (names change, ids do not;
//! anonymised users all become `anonymous`); `meta` holds the channel, the kind of conversation
//! (`reply` or `thread`), its start time and the current display name of each speaker.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Conversation, Error, Pos, Result};

mod channel;
mod normalize;
mod threads;

pub use channel::parse_timestamp;
use channel::{Author, read_channel};
use normalize::Normalizer;
use threads::build_conversations;

/// The speaker id anonymised users get.
pub const ANONYMOUS_ID: &str = "anonymous";
/// The name anonymised (and excluded) users are replaced by in text.
pub const ANONYMOUS: &str = "Anonymous";

/// What happens to one user's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rule {
    Allow,
    /// Kept, with the author replaced by `Anonymous` and their names scrubbed from all text.
    Anonymize,
    /// Removed, with the replies to them; their names are scrubbed from others' text.
    Exclude,
}

impl Rule {
    pub fn name(self) -> &'static str {
        match self {
            Rule::Allow => "allow",
            Rule::Anonymize => "anonymize",
            Rule::Exclude => "exclude",
        }
    }
}

/// The consent file: `{"default": "allow", "users": {"<user id>": "exclude"}}` (JSON or TOML).
/// Privacy by default: a user without a decision (no file, or no `default` in it) is anonymised;
/// keeping names takes `default = "allow"` or `--consent-default allow`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Consent {
    #[serde(default = "default_rule")]
    pub default: Rule,
    #[serde(default)]
    pub users: BTreeMap<String, Rule>,
}

fn default_rule() -> Rule {
    Rule::Anonymize
}

impl Default for Consent {
    fn default() -> Self {
        Consent {
            default: default_rule(),
            users: BTreeMap::new(),
        }
    }
}

impl Consent {
    /// Reads a consent file: TOML when it ends in `.toml`, JSON otherwise.
    pub fn load(path: &Path) -> Result<Consent> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let toml = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("toml"));
        let consent: Consent = if toml {
            toml::from_str(&text).map_err(|e| Error::file(path, format!("not a consent file: {e}")))?
        } else {
            serde_json::from_str(&text).map_err(|e| {
                Error::record(
                    path,
                    Pos::Line(e.line()),
                    format!(
                        "not a consent file ({e}); expected {{\"default\": \"allow\", \"users\": {{\"<user id>\": \"allow|anonymize|exclude\"}}}}"
                    ),
                )
            })?
        };
        Ok(consent)
    }

    /// `allow`, `anonymize` (`anonymise`) or `exclude`.
    pub fn parse_rule(s: &str) -> Result<Rule> {
        match s.to_ascii_lowercase().as_str() {
            "allow" => Ok(Rule::Allow),
            "anonymize" | "anonymise" => Ok(Rule::Anonymize),
            "exclude" => Ok(Rule::Exclude),
            other => Err(Error::Invalid(format!(
                "consent rule '{other}': expected allow, anonymize or exclude"
            ))),
        }
    }

    pub fn rule(&self, user: &str) -> Rule {
        self.users.get(user).copied().unwrap_or(self.default)
    }
}

/// What `<@id>` and `@name` mentions of allowed users become.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MentionMode {
    /// `@` + the user's current display name.
    #[default]
    Name,
    /// `@user`.
    Placeholder,
    /// Removed.
    Remove,
}

impl FromStr for MentionMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "name" => Ok(MentionMode::Name),
            "placeholder" => Ok(MentionMode::Placeholder),
            "remove" => Ok(MentionMode::Remove),
            other => Err(Error::Invalid(format!(
                "mentions '{other}': expected name, placeholder or remove"
            ))),
        }
    }
}

/// What URLs become.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UrlMode {
    Keep,
    /// `<url>`.
    #[default]
    Placeholder,
    Remove,
}

impl FromStr for UrlMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "keep" => Ok(UrlMode::Keep),
            "placeholder" => Ok(UrlMode::Placeholder),
            "remove" => Ok(UrlMode::Remove),
            other => Err(Error::Invalid(format!(
                "urls '{other}': expected keep, placeholder or remove"
            ))),
        }
    }
}

/// How to read a chat export.
#[derive(Debug, Clone)]
pub struct ChatExportOptions {
    /// Consecutive messages of a channel at most this many minutes apart form one thread.
    pub thread_gap_minutes: f64,
    /// A longer run of messages is cut into threads of this many.
    pub max_thread_messages: usize,
    pub mentions: MentionMode,
    pub urls: UrlMode,
    pub consent: Consent,
    /// A zip entry that expands beyond this many bytes is refused (a zip bomb).
    pub max_entry_bytes: u64,
    /// Nor may all of a zip's entries together expand beyond this.
    pub max_total_bytes: u64,
}

impl Default for ChatExportOptions {
    fn default() -> Self {
        ChatExportOptions {
            thread_gap_minutes: 30.0,
            max_thread_messages: 40,
            mentions: MentionMode::Name,
            urls: UrlMode::Placeholder,
            consent: Consent::default(),
            max_entry_bytes: 256 << 20,
            max_total_bytes: 1 << 30,
        }
    }
}

/// Users and messages one consent rule applied to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RuleCount {
    pub users: usize,
    pub messages: usize,
}

/// What reading an export did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChatExportReport {
    /// The channel files read, as `archive!entry` or paths.
    pub files: Vec<String>,
    pub messages: usize,
    pub bots: usize,
    pub system: usize,
    pub empty: usize,
    pub attachments_only: usize,
    /// Replies to an excluded user's message, dropped with it.
    pub replies_to_excluded: usize,
    /// Per consent rule, the users (who wrote at least one message) and messages it applied to.
    pub consent: BTreeMap<&'static str, RuleCount>,
    pub reply_pairs: usize,
    pub threads: usize,
    /// Threads (or self-replies) with one speaker only, dropped.
    pub single_speaker: usize,
}

/// Reads the channel files of `inputs` (zips, directories or files) into conversations.
pub fn read_chat_export(
    inputs: &[PathBuf],
    opts: &ChatExportOptions,
) -> Result<(Vec<Conversation>, ChatExportReport)> {
    if opts.max_thread_messages < 2 {
        return Err(Error::Invalid("max thread messages must be at least 2".into()));
    }
    if opts.thread_gap_minutes.is_nan() || opts.thread_gap_minutes < 0.0 {
        return Err(Error::Invalid(
            "the thread gap must be a number of minutes >= 0".into(),
        ));
    }
    let mut report = ChatExportReport::default();
    let mut channels = Vec::new();
    let mut msgs = Vec::new();
    let mut authors: HashMap<String, Author> = HashMap::new();
    let mut channel_names: HashMap<String, String> = HashMap::new();
    for (source, path, text) in channel_files(inputs, opts)? {
        read_channel(
            &source,
            &path,
            &text,
            &mut channels,
            &mut msgs,
            &mut authors,
            &mut channel_names,
            &mut report,
        )?;
        report.files.push(source);
    }
    if report.files.is_empty() {
        return Err(Error::Invalid(format!(
            "no channel files (.json) in {}",
            inputs
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }

    // Consent, before anything else reads the text.
    let consent = &opts.consent;
    let mut users_by_rule: BTreeMap<Rule, HashSet<&str>> = BTreeMap::new();
    let mut counts: BTreeMap<Rule, usize> = BTreeMap::new();
    for m in &msgs {
        let r = consent.rule(&m.author);
        users_by_rule.entry(r).or_default().insert(&m.author);
        *counts.entry(r).or_default() += 1;
    }
    for r in [Rule::Allow, Rule::Anonymize, Rule::Exclude] {
        report.consent.insert(
            r.name(),
            RuleCount {
                users: users_by_rule.get(&r).map_or(0, HashSet::len),
                messages: counts.get(&r).copied().unwrap_or(0),
            },
        );
    }
    let excluded: HashSet<String> = msgs
        .iter()
        .filter(|m| consent.rule(&m.author) == Rule::Exclude)
        .map(|m| m.id.clone())
        .collect();
    msgs.retain(|m| consent.rule(&m.author) != Rule::Exclude);
    let before = msgs.len();
    msgs.retain(|m| !m.reference.as_ref().is_some_and(|r| excluded.contains(r)));
    report.replies_to_excluded = before - msgs.len();

    // Text: mentions, names of the users who asked not to be named, URLs.
    let norm = Normalizer::new(&authors, &channel_names, opts)?;
    let mut kept = Vec::with_capacity(msgs.len());
    for mut m in msgs {
        m.content = norm.apply(&m.content);
        if m.content.is_empty() {
            if m.attachments {
                report.attachments_only += 1;
            } else {
                report.empty += 1;
            }
            continue;
        }
        kept.push(m);
    }

    let convs = build_conversations(kept, &channels, &authors, opts, &mut report);
    Ok((convs, report))
}

/// Every `.json` channel file of the inputs as (name, path for errors, text), in a stable order.
fn channel_files(inputs: &[PathBuf], opts: &ChatExportOptions) -> Result<Vec<(String, PathBuf, String)>> {
    let mut expanded = 0u64;
    let mut out = Vec::new();
    for input in inputs {
        let meta = std::fs::metadata(input).map_err(|e| Error::io(input, e))?;
        if meta.is_dir() {
            let mut files = Vec::new();
            crate::import::walk(input, &["json"], &mut files)?;
            for f in files {
                let text = read_text(&f, crate::io::read_regular(&f)?)?;
                out.push((f.display().to_string(), f, text));
            }
        } else if is_zip(input)? {
            let file = std::fs::File::open(input).map_err(|e| Error::io(input, e))?;
            let mut zip = zip::ZipArchive::new(file)
                .map_err(|e| Error::file(input, format!("not a readable zip archive: {e}")))?;
            let zip_err =
                |e: zip::result::ZipError| Error::file(input, format!("cannot read the zip archive: {e}"));
            let mut names: Vec<(String, usize)> = Vec::new();
            for i in 0..zip.len() {
                let entry = zip.by_index(i).map_err(zip_err)?;
                let n = entry.name().map_err(zip_err)?.into_owned();
                let base = n.rsplit('/').next().unwrap_or(&n);
                if entry.is_file()
                    && n.to_ascii_lowercase().ends_with(".json")
                    && !base.starts_with('.')
                    && !n.starts_with("__MACOSX/")
                {
                    names.push((n, i));
                }
            }
            names.sort();
            for (name, i) in names {
                let at = PathBuf::from(format!("{}!{name}", input.display()));
                let mut entry = zip
                    .by_index(i)
                    .map_err(|e| Error::file(&at, format!("cannot read the zip entry: {e}")))?;
                // The sizes a zip declares can lie: read at most one byte past each cap.
                let cap = opts.max_entry_bytes.min(opts.max_total_bytes - expanded);
                let mut bytes = Vec::new();
                (&mut entry)
                    .take(cap + 1)
                    .read_to_end(&mut bytes)
                    .map_err(|e| Error::file(&at, format!("cannot read the zip entry: {e}")))?;
                if bytes.len() as u64 > cap {
                    let (what, limit) = if cap == opts.max_entry_bytes {
                        ("this entry", opts.max_entry_bytes)
                    } else {
                        ("the archive's entries together", opts.max_total_bytes)
                    };
                    return Err(Error::file(
                        &at,
                        format!(
                            "{what} expand beyond {limit} bytes (raise --zip-max-entry-mb / --zip-max-total-mb if the export is real)"
                        ),
                    ));
                }
                expanded += bytes.len() as u64;
                let text = read_text(&at, bytes)?;
                out.push((at.display().to_string(), at, text));
            }
        } else {
            let text = read_text(input, crate::io::read_regular(input)?)?;
            out.push((input.display().to_string(), input.clone(), text));
        }
    }
    Ok(out)
}

fn is_zip(path: &Path) -> Result<bool> {
    let mut magic = [0u8; 4];
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let n = f.read(&mut magic).map_err(|e| Error::io(path, e))?;
    Ok(n == 4 && magic == *b"PK\x03\x04")
}

fn read_text(path: &Path, bytes: Vec<u8>) -> Result<String> {
    let bytes = match bytes.strip_prefix(b"\xEF\xBB\xBF") {
        Some(rest) => rest.to_vec(),
        None => bytes,
    };
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        Error::file(path, format!("not valid UTF-8 at line {line} (byte {at})"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(parse_timestamp("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_timestamp("1970-01-01T00:00:01.5+00:00"), Some(1500));
        assert_eq!(parse_timestamp("2000-03-01T00:00:00Z"), Some(951_868_800_000));
        // The same instant in two offsets.
        assert_eq!(
            parse_timestamp("2023-04-01T12:30:00.123+02:00"),
            parse_timestamp("2023-04-01T10:30:00.123Z")
        );
        assert_eq!(
            parse_timestamp("2023-04-01 10:30:00"),
            parse_timestamp("2023-04-01T10:30:00Z")
        );
        for bad in [
            "",
            "2023-13-01T00:00:00Z",
            "2023-04-01",
            "yesterday",
            "2023-04-01T10:30:00+2",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
    }

    #[test]
    fn consent_in_json_and_toml() {
        let dir = tempfile::tempdir().unwrap();
        let j = dir.path().join("c.json");
        std::fs::write(
            &j,
            r#"{"default":"anonymize","users":{"1":"allow","2":"exclude"}}"#,
        )
        .unwrap();
        let t = dir.path().join("c.toml");
        std::fs::write(
            &t,
            "default = \"anonymize\"\n[users]\n\"1\" = \"allow\"\n\"2\" = \"exclude\"\n",
        )
        .unwrap();
        let (a, b) = (Consent::load(&j).unwrap(), Consent::load(&t).unwrap());
        assert_eq!(a, b);
        assert_eq!(a.rule("1"), Rule::Allow);
        assert_eq!(a.rule("2"), Rule::Exclude);
        assert_eq!(a.rule("3"), Rule::Anonymize);
        std::fs::write(&j, r#"{"default":"allow","users":{"1":"forget"}}"#).unwrap();
        let e = Consent::load(&j).unwrap_err().to_string();
        assert!(e.contains("c.json") && e.contains("forget"), "{e}");
    }
}
