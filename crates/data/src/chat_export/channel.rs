//! One channel file: its messages filtered (consent, bots, system and empty messages) and
//! collected with their channel and authors; timestamps.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use super::ChatExportReport;
use crate::{Error, Pos, Result};

/// One channel file of the export, as it appears on disk.
#[derive(Deserialize)]
pub(super) struct ExportFile {
    #[serde(default)]
    pub(super) guild: Option<Header>,
    #[serde(default)]
    pub(super) channel: Option<Header>,
    pub(super) messages: Vec<Value>,
}

#[derive(Deserialize)]
pub(super) struct Header {
    #[serde(default, deserialize_with = "id_string")]
    pub(super) id: Option<String>,
    #[serde(default)]
    pub(super) name: Option<String>,
}

/// Discord ids are strings in exports; some tools write numbers.
pub(super) fn id_string<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => Some(s),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

/// A message that survived the first filters.
pub(super) struct Msg {
    pub(super) id: String,
    pub(super) channel: usize,
    /// Milliseconds since the epoch.
    pub(super) at: i64,
    pub(super) timestamp: String,
    pub(super) author: String,
    pub(super) content: String,
    pub(super) attachments: bool,
    pub(super) reference: Option<String>,
}

pub(super) struct Channel {
    pub(super) source: String,
    pub(super) name: String,
    pub(super) guild: Option<String>,
}

#[derive(Default)]
pub(super) struct Author {
    pub(super) names: BTreeSet<String>,
    /// The display name of the newest message, with its time.
    pub(super) current: Option<(i64, String)>,
}

/// Message types that are people talking; the rest (joins, pins, calls, renames…) are system messages.
pub(super) const TALK: [&str; 2] = ["Default", "Reply"];

#[allow(clippy::too_many_arguments)]
pub(super) fn read_channel(
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

pub(super) fn value_id(v: &Value) -> Option<String> {
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
