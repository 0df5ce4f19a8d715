//! Reply pairs and time-gap threads of the filtered messages, as conversations.

use std::collections::{HashMap, HashSet};

use super::channel::{Author, Channel, Msg};
use serde_json::{Map, Value};

use super::{ANONYMOUS, ANONYMOUS_ID, ChatExportOptions, ChatExportReport, Rule};
use crate::{Conversation, Message, Role};

/// Reply pairs and time-gap threads → conversations.
pub(super) fn build_conversations(
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
