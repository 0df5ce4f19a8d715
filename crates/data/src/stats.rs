//! `chatforge data stats`: what is in a conversation file.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::{Conversation, Role};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Counted {
    pub name: String,
    pub count: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stats {
    pub conversations: usize,
    pub messages: usize,
    pub min_turns: usize,
    pub max_turns: usize,
    pub mean_turns: f64,
    pub characters: usize,
    pub mean_message_chars: f64,
    /// Messages per role.
    pub roles: BTreeMap<String, usize>,
    /// Characters per role.
    pub role_chars: BTreeMap<String, usize>,
    /// Most common domains, with conversations per domain (`(none)` for conversations without).
    pub domains: Vec<Counted>,
    /// Most common speakers, with messages per speaker.
    pub speakers: Vec<Counted>,
    /// Preference pairs (their prompts are the messages counted above), and the mean characters
    /// of their chosen and rejected replies.
    pub pairs: usize,
    pub mean_chosen_chars: f64,
    pub mean_rejected_chars: f64,
}

fn top(map: BTreeMap<String, usize>, n: usize) -> Vec<Counted> {
    let mut v: Vec<Counted> = map
        .into_iter()
        .map(|(name, count)| Counted { name, count })
        .collect();
    v.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.name.cmp(&b.name)));
    v.truncate(n);
    v
}

impl Stats {
    pub fn of(conversations: &[Conversation], top_n: usize) -> Stats {
        let mut s = Stats {
            conversations: conversations.len(),
            min_turns: usize::MAX,
            ..Stats::default()
        };
        let mut domains = BTreeMap::new();
        let mut speakers = BTreeMap::new();
        let (mut chosen, mut rejected) = (0usize, 0usize);
        let chars = |ms: &[crate::Message]| ms.iter().map(|m| m.content.chars().count()).sum::<usize>();
        for c in conversations {
            if c.is_pair() {
                s.pairs += 1;
                chosen += chars(&c.chosen);
                rejected += chars(&c.rejected);
            }
            s.messages += c.messages.len();
            s.min_turns = s.min_turns.min(c.messages.len());
            s.max_turns = s.max_turns.max(c.messages.len());
            *domains
                .entry(c.domain().unwrap_or("(none)").to_string())
                .or_insert(0) += 1;
            for m in &c.messages {
                let chars = m.content.chars().count();
                s.characters += chars;
                *s.roles.entry(m.role.as_str().into()).or_insert(0) += 1;
                *s.role_chars.entry(m.role.as_str().into()).or_insert(0) += chars;
                if let Some(sp) = &m.speaker {
                    *speakers.entry(sp.clone()).or_insert(0) += 1;
                }
            }
        }
        if s.conversations == 0 {
            s.min_turns = 0;
        } else {
            s.mean_turns = s.messages as f64 / s.conversations as f64;
        }
        if s.messages > 0 {
            s.mean_message_chars = s.characters as f64 / s.messages as f64;
        }
        if s.pairs > 0 {
            s.mean_chosen_chars = chosen as f64 / s.pairs as f64;
            s.mean_rejected_chars = rejected as f64 / s.pairs as f64;
        }
        s.domains = top(domains, top_n);
        s.speakers = top(speakers, top_n);
        s
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "conversations  {}", self.conversations)?;
        if self.pairs > 0 {
            writeln!(
                f,
                "pairs          {} (replies: chosen {:.1} chars, rejected {:.1} on average; messages below are prompts)",
                self.pairs, self.mean_chosen_chars, self.mean_rejected_chars
            )?;
        }
        writeln!(
            f,
            "messages       {} ({:.2} per conversation, min {}, max {})",
            self.messages, self.mean_turns, self.min_turns, self.max_turns
        )?;
        writeln!(
            f,
            "characters     {} ({:.1} per message)",
            self.characters, self.mean_message_chars
        )?;
        write!(f, "roles         ")?;
        for role in [Role::System, Role::User, Role::Assistant] {
            let name = role.as_str();
            if let Some(n) = self.roles.get(name) {
                let chars = self.role_chars.get(name).copied().unwrap_or(0);
                write!(f, " {name} {n} ({chars} chars)")?;
            }
        }
        writeln!(f)?;
        let list = |v: &[Counted]| {
            v.iter()
                .map(|c| format!("{} {}", c.name, c.count))
                .collect::<Vec<_>>()
                .join(", ")
        };
        writeln!(f, "domains        {}", list(&self.domains))?;
        let speakers = if self.speakers.is_empty() {
            "(none named)".to_string()
        } else {
            list(&self.speakers)
        };
        write!(f, "top speakers   {speakers}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Message;

    #[test]
    fn counts_by_hand() {
        let mut a = Conversation::new(vec![
            Message {
                role: Role::User,
                content: "hey".into(),
                speaker: Some("ann".into()),
            },
            Message::new(Role::Assistant, "hello"),
        ]);
        a.meta.insert("domain".into(), "greetings".into());
        let b = Conversation::new(vec![
            Message::new(Role::System, "be kind"),
            Message {
                role: Role::User,
                content: "hi".into(),
                speaker: Some("ann".into()),
            },
            Message {
                role: Role::User,
                content: "you there?".into(),
                speaker: Some("bob".into()),
            },
            Message::new(Role::Assistant, "yes"),
        ]);
        let s = Stats::of(&[a, b], 10);
        assert_eq!(
            (s.conversations, s.messages, s.min_turns, s.max_turns),
            (2, 6, 2, 4)
        );
        assert_eq!(s.characters, 3 + 5 + 7 + 2 + 10 + 3);
        assert_eq!(s.roles["user"], 3);
        assert_eq!(s.role_chars["assistant"], 8);
        assert_eq!(
            s.speakers[0],
            Counted {
                name: "ann".into(),
                count: 2
            }
        );
        assert_eq!(s.domains.len(), 2);
        let text = s.to_string();
        assert!(text.contains("top speakers   ann 2, bob 1"), "{text}");
        assert!(!text.contains("pairs"), "{text}");
        let p = Conversation::pair(
            vec![Message::new(Role::User, "q")],
            vec![Message::new(Role::Assistant, "good")],
            vec![Message::new(Role::Assistant, "no")],
        );
        let s = Stats::of(&[p.clone(), p], 10);
        assert_eq!(
            (s.pairs, s.mean_chosen_chars, s.mean_rejected_chars),
            (2, 4.0, 2.0)
        );
        assert!(s.to_string().contains("pairs          2"), "{s}");
    }
}
