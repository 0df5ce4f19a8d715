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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{Conversation, Error, Message, Pos, Result, Role};

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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Consent {
    #[serde(default = "default_rule")]
    pub default: Rule,
    #[serde(default)]
    pub users: BTreeMap<String, Rule>,
}

fn default_rule() -> Rule {
    Rule::Allow
}

impl Default for Consent {
    fn default() -> Self {
        Consent {
            default: Rule::Allow,
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

/// One channel file of the export, as it appears on disk.
#[derive(Deserialize)]
struct ExportFile {
    #[serde(default)]
    guild: Option<Header>,
    #[serde(default)]
    channel: Option<Header>,
    messages: Vec<Value>,
}

#[derive(Deserialize)]
struct Header {
    #[serde(default, deserialize_with = "id_string")]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

/// Discord ids are strings in exports; some tools write numbers.
fn id_string<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => Some(s),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

/// A message that survived the first filters.
struct Msg {
    id: String,
    channel: usize,
    /// Milliseconds since the epoch.
    at: i64,
    timestamp: String,
    author: String,
    content: String,
    attachments: bool,
    reference: Option<String>,
}

struct Channel {
    source: String,
    name: String,
    guild: Option<String>,
}

#[derive(Default)]
struct Author {
    names: BTreeSet<String>,
    /// The display name of the newest message, with its time.
    current: Option<(i64, String)>,
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

/// Message types that are people talking; the rest (joins, pins, calls, renames…) are system messages.
const TALK: [&str; 2] = ["Default", "Reply"];

#[allow(clippy::too_many_arguments)]
fn read_channel(
    source: &str,
    path: &Path,
    text: &str,
    channels: &mut Vec<Channel>,
    msgs: &mut Vec<Msg>,
    authors: &mut HashMap<String, Author>,
    channel_names: &mut HashMap<String, String>,
    report: &mut ChatExportReport,
) -> Result<()> {
    let file: ExportFile = serde_json::from_str(text).map_err(|e| {
        Error::record(
            path,
            Pos::Line(e.line()),
            format!(
                "not a chat export channel file ({e}); expected {{\"channel\": {{…}}, \"messages\": [{{\"id\", \"timestamp\", \"author\", \"content\"}}]}}"
            ),
        )
    })?;
    let channel_name = file
        .channel
        .as_ref()
        .and_then(|c| c.name.clone())
        .unwrap_or_else(|| {
            Path::new(source.rsplit('!').next().unwrap_or(source))
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
    if let Some(id) = file.channel.as_ref().and_then(|c| c.id.clone()) {
        channel_names.insert(id, channel_name.clone());
    }
    let channel = channels.len();
    channels.push(Channel {
        source: source.to_string(),
        name: channel_name,
        guild: file.guild.and_then(|g| g.name),
    });
    for (i, v) in file.messages.iter().enumerate() {
        let pos = Pos::Item(i + 1);
        let bad = |msg: String| Error::record(path, pos, msg);
        report.messages += 1;
        let field = |k: &str| v.get(k).filter(|x| !x.is_null());
        let id = field("id")
            .and_then(value_id)
            .ok_or_else(|| bad("message without an \"id\"".into()))?;
        let bad = |msg: String| Error::record(path, pos, format!("message {id}: {msg}"));
        let author = field("author")
            .filter(|a| a.is_object())
            .ok_or_else(|| bad("no \"author\" object".into()))?;
        let author_id = author
            .get("id")
            .and_then(value_id)
            .ok_or_else(|| bad("the author has no \"id\"".into()))?;
        // Mentioned users' names, so mentions of people who never wrote can still be scrubbed.
        if let Some(ms) = field("mentions").and_then(Value::as_array) {
            for u in ms {
                if let Some(uid) = u.get("id").and_then(value_id) {
                    let a = authors.entry(uid).or_default();
                    for k in ["name", "nickname"] {
                        if let Some(n) = u.get(k).and_then(Value::as_str).filter(|n| !n.trim().is_empty()) {
                            a.names.insert(n.to_string());
                        }
                    }
                }
            }
        }
        let kind = field("type").and_then(Value::as_str).unwrap_or("Default");
        if !TALK.contains(&kind) {
            report.system += 1;
            continue;
        }
        if author.get("isBot").and_then(Value::as_bool).unwrap_or(false) {
            report.bots += 1;
            continue;
        }
        let timestamp = field("timestamp")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("no \"timestamp\"".into()))?;
        let at = parse_timestamp(timestamp).ok_or_else(|| {
            bad(format!(
                "timestamp {timestamp:?} is not an ISO 8601 date and time"
            ))
        })?;
        let content = match field("content") {
            None => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(bad("\"content\" is not a string".into())),
        };
        let name = ["nickname", "name"]
            .iter()
            .find_map(|k| {
                author
                    .get(*k)
                    .and_then(Value::as_str)
                    .filter(|n| !n.trim().is_empty())
            })
            .unwrap_or(&author_id)
            .to_string();
        let a = authors.entry(author_id.clone()).or_default();
        for k in ["name", "nickname"] {
            if let Some(n) = author
                .get(k)
                .and_then(Value::as_str)
                .filter(|n| !n.trim().is_empty())
            {
                a.names.insert(n.to_string());
            }
        }
        if a.current.as_ref().is_none_or(|(t, _)| at >= *t) {
            a.current = Some((at, name));
        }
        msgs.push(Msg {
            id,
            channel,
            at,
            timestamp: timestamp.to_string(),
            author: author_id,
            content,
            attachments: field("attachments")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty()),
            reference: field("reference")
                .and_then(|r| r.get("messageId"))
                .and_then(value_id),
        });
    }
    Ok(())
}

fn value_id(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `2023-04-01T12:30:00.123+02:00` (or `Z`, or no offset: UTC) → milliseconds since the epoch.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let s = s.trim();
    let num = |a: usize, b: usize| -> Option<i64> {
        let t = s.get(a..b)?;
        t.bytes().all(|c| c.is_ascii_digit()).then(|| t.parse().ok())?
    };
    let (y, mo, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    if s.get(4..5)? != "-" || s.get(7..8)? != "-" || !matches!(s.get(10..11)?, "T" | "t" | " ") {
        return None;
    }
    let (h, mi, sec) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = s.get(19..)?;
    let mut ms = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let f = &frac[..digits];
        ms = f
            .chars()
            .chain("000".chars())
            .take(3)
            .collect::<String>()
            .parse()
            .ok()?;
        rest = &frac[digits..];
    }
    let offset_min = match rest {
        "" | "Z" | "z" => 0,
        o if o.len() == 6 && matches!(&o[..1], "+" | "-") && &o[3..4] == ":" => {
            let hh: i64 = o[1..3].parse().ok()?;
            let mm: i64 = o[4..6].parse().ok()?;
            let sign = if o.starts_with('-') { -1 } else { 1 };
            sign * (hh * 60 + mm)
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_min * 60;
    Some(secs * 1000 + ms)
}

/// Rewrites message text: mentions, scrubbed names, channel and role mentions, emoji, URLs.
struct Normalizer {
    user_mention: Regex,
    channel_mention: Regex,
    role_mention: Regex,
    emoji: Regex,
    url: Regex,
    /// `@name` of any known user (longest names first).
    at_name: Option<Regex>,
    /// Bare names of users who must not be named (3+ characters).
    scrub: Option<Regex>,
    current: HashMap<String, String>,
    hidden_ids: HashSet<String>,
    hidden_names: HashSet<String>,
    channel_names: HashMap<String, String>,
    mentions: MentionMode,
    urls: UrlMode,
    spaces: Regex,
}

impl Normalizer {
    fn new(
        authors: &HashMap<String, Author>,
        channel_names: &HashMap<String, String>,
        opts: &ChatExportOptions,
    ) -> Result<Normalizer> {
        let re = |p: &str| Regex::new(p).map_err(|e| Error::Invalid(format!("internal pattern {p}: {e}")));
        let hidden = |id: &str| opts.consent.rule(id) != Rule::Allow;
        let hidden_ids: HashSet<String> = authors
            .keys()
            .chain(opts.consent.users.keys())
            .filter(|id| hidden(id))
            .cloned()
            .collect();
        let hidden_names: HashSet<String> = authors
            .iter()
            .filter(|(id, _)| hidden(id))
            .flat_map(|(_, a)| a.names.iter().map(|n| n.to_lowercase()))
            .collect();
        let alternation = |names: &mut Vec<String>| -> String {
            names.sort_by(|a, b| b.chars().count().cmp(&a.chars().count()).then(a.cmp(b)));
            names.dedup();
            names
                .iter()
                .map(|n| regex::escape(n))
                .collect::<Vec<_>>()
                .join("|")
        };
        let mut all: Vec<String> = authors.values().flat_map(|a| a.names.iter().cloned()).collect();
        let at_name = (!all.is_empty())
            .then(|| re(&format!(r"(?i)@(?:{})\b", alternation(&mut all))))
            .transpose()?;
        let mut scrubbed: Vec<String> = authors
            .iter()
            .filter(|(id, _)| hidden(id))
            .flat_map(|(_, a)| a.names.iter().filter(|n| n.chars().count() >= 3).cloned())
            .collect();
        let scrub = (!scrubbed.is_empty())
            .then(|| re(&format!(r"(?i)\b(?:{})\b", alternation(&mut scrubbed))))
            .transpose()?;
        Ok(Normalizer {
            user_mention: re(r"<@!?(\d+)>")?,
            channel_mention: re(r"<#(\d+)>")?,
            role_mention: re(r"<@&\d+>")?,
            emoji: re(r"<a?:(\w+):\d+>")?,
            url: re(r#"(?i)\bhttps?://[^\s<>"]+"#)?,
            at_name,
            scrub,
            current: authors
                .iter()
                .filter_map(|(id, a)| Some((id.clone(), a.current.as_ref()?.1.clone())))
                .collect(),
            hidden_ids,
            hidden_names,
            channel_names: channel_names.clone(),
            mentions: opts.mentions,
            urls: opts.urls,
            spaces: re(r"[ \t]{2,}")?,
        })
    }

    fn mention(&self, name: Option<&str>) -> String {
        match self.mentions {
            MentionMode::Name => format!("@{}", name.unwrap_or("user")),
            MentionMode::Placeholder => "@user".into(),
            MentionMode::Remove => String::new(),
        }
    }

    fn apply(&self, text: &str) -> String {
        let t = self.user_mention.replace_all(text, |c: &regex::Captures<'_>| {
            if self.hidden_ids.contains(&c[1]) {
                format!("@{ANONYMOUS}")
            } else {
                self.mention(self.current.get(&c[1]).map(String::as_str))
            }
        });
        let t = match &self.at_name {
            Some(re) => re.replace_all(&t, |c: &regex::Captures<'_>| {
                let name = &c[0][1..];
                if self.hidden_names.contains(&name.to_lowercase()) {
                    format!("@{ANONYMOUS}")
                } else {
                    self.mention(Some(name))
                }
            }),
            None => t,
        };
        let t = match &self.scrub {
            Some(re) => re.replace_all(&t, ANONYMOUS),
            None => t,
        };
        let t = self.channel_mention.replace_all(&t, |c: &regex::Captures<'_>| {
            format!(
                "#{}",
                self.channel_names.get(&c[1]).map_or("channel", String::as_str)
            )
        });
        let t = self.role_mention.replace_all(&t, "@role");
        let t = self.emoji.replace_all(&t, ":$1:");
        let t = match self.urls {
            UrlMode::Keep => t,
            UrlMode::Placeholder => self.url.replace_all(&t, "<url>"),
            UrlMode::Remove => self.url.replace_all(&t, ""),
        };
        let lines: Vec<String> = t
            .lines()
            .map(|l| self.spaces.replace_all(l.trim(), " ").into_owned())
            .collect();
        lines.join("\n").trim().to_string()
    }
}

/// Reply pairs and time-gap threads → conversations.
fn build_conversations(
    mut msgs: Vec<Msg>,
    channels: &[Channel],
    authors: &HashMap<String, Author>,
    opts: &ChatExportOptions,
    report: &mut ChatExportReport,
) -> Vec<Conversation> {
    // Chronological within each channel; the file order breaks ties.
    msgs.sort_by_key(|m| (m.channel, m.at));
    let by_id: HashMap<&str, usize> = msgs.iter().enumerate().map(|(i, m)| (m.id.as_str(), i)).collect();
    let mut out = Vec::new();
    let mut flow: Vec<usize> = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        match m.reference.as_deref().and_then(|r| by_id.get(r)) {
            Some(&r) => {
                report.reply_pairs += 1;
                out.push((vec![r, i], "reply"));
            }
            None => flow.push(i),
        }
    }
    let gap_ms = (opts.thread_gap_minutes * 60_000.0) as i64;
    let mut thread: Vec<usize> = Vec::new();
    for i in flow {
        let breaks = thread.last().is_some_and(|&p| {
            let (a, b) = (&msgs[p], &msgs[i]);
            a.channel != b.channel || b.at - a.at > gap_ms || thread.len() >= opts.max_thread_messages
        });
        if breaks {
            report.threads += 1;
            out.push((std::mem::take(&mut thread), "thread"));
        }
        thread.push(i);
    }
    if !thread.is_empty() {
        report.threads += 1;
        out.push((thread, "thread"));
    }
    // Conversations in the order they started.
    out.sort_by_key(|(idx, _)| (msgs[idx[0]].channel, msgs[idx[0]].at, idx[0]));
    let speaker_of = |m: &Msg| -> String {
        if opts.consent.rule(&m.author) == Rule::Allow {
            m.author.clone()
        } else {
            ANONYMOUS_ID.to_string()
        }
    };
    let mut convs = Vec::with_capacity(out.len());
    for (idx, kind) in out {
        let distinct: HashSet<&str> = idx.iter().map(|&i| msgs[i].author.as_str()).collect();
        if distinct.len() < 2 {
            report.single_speaker += 1;
            continue;
        }
        // Roles alternate with each change of author, starting with the user.
        let mut role = Role::Assistant;
        let mut messages = Vec::with_capacity(idx.len());
        let mut speakers = Map::new();
        for (k, &i) in idx.iter().enumerate() {
            let m = &msgs[i];
            if k == 0 || msgs[idx[k - 1]].author != m.author {
                role = if role == Role::User {
                    Role::Assistant
                } else {
                    Role::User
                };
            }
            let speaker = speaker_of(m);
            let name = if speaker == ANONYMOUS_ID {
                ANONYMOUS.to_string()
            } else {
                authors
                    .get(&m.author)
                    .and_then(|a| a.current.as_ref())
                    .map_or_else(|| m.author.clone(), |(_, n)| n.clone())
            };
            speakers.insert(speaker.clone(), Value::String(name));
            messages.push(Message {
                role,
                content: m.content.clone(),
                speaker: Some(speaker),
            });
        }
        let first = &msgs[idx[0]];
        let ch = &channels[first.channel];
        let mut c = Conversation::new(messages);
        c.meta
            .insert("source".into(), format!("{}#{}", ch.source, first.id).into());
        c.meta.insert("channel".into(), ch.name.clone().into());
        if let Some(g) = &ch.guild {
            c.meta.insert("guild".into(), g.clone().into());
        }
        c.meta.insert("kind".into(), kind.into());
        c.meta.insert("start".into(), first.timestamp.clone().into());
        c.meta.insert("speakers".into(), Value::Object(speakers));
        convs.push(c);
    }
    convs
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
