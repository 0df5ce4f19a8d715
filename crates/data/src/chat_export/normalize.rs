//! Message text rewritten: mentions, scrubbed names, channel and role mentions, emoji, URLs.

use std::collections::{HashMap, HashSet};

use regex::Regex;

use super::channel::Author;
use super::{ANONYMOUS, ChatExportOptions, MentionMode, Rule, UrlMode};
use crate::{Error, Result};

/// Rewrites message text: mentions, scrubbed names, channel and role mentions, emoji, URLs.
pub(super) struct Normalizer {
    pub(super) user_mention: Regex,
    pub(super) channel_mention: Regex,
    pub(super) role_mention: Regex,
    pub(super) emoji: Regex,
    pub(super) url: Regex,
    /// `@name` of any known user (longest names first).
    pub(super) at_name: Option<Regex>,
    /// Bare names of users who must not be named (3+ characters).
    pub(super) scrub: Option<Regex>,
    pub(super) current: HashMap<String, String>,
    pub(super) hidden_ids: HashSet<String>,
    pub(super) hidden_names: HashSet<String>,
    pub(super) channel_names: HashMap<String, String>,
    pub(super) mentions: MentionMode,
    pub(super) urls: UrlMode,
    pub(super) spaces: Regex,
}

impl Normalizer {
    pub(super) fn new(
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

    pub(super) fn mention(&self, name: Option<&str>) -> String {
        match self.mentions {
            MentionMode::Name => format!("@{}", name.unwrap_or("user")),
            MentionMode::Placeholder => "@user".into(),
            MentionMode::Remove => String::new(),
        }
    }

    pub(super) fn apply(&self, text: &str) -> String {
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
