use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Who speaks a message. The canonical names are `system`, `user` and `assistant`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    /// Maps the role names used by common datasets (`human`, `gpt`, `prompter`, `bot`, …) to a role.
    pub fn parse_loose(name: &str) -> Option<Role> {
        match name.trim().to_ascii_lowercase().as_str() {
            "system" | "instruction" => Some(Role::System),
            "user" | "human" | "prompter" | "you" | "customer" | "question" | "q" => Some(Role::User),
            "assistant" | "gpt" | "bot" | "ai" | "model" | "chatgpt" | "bard" | "bing" | "claude"
            | "answer" | "a" => Some(Role::Assistant),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
    /// The person behind the message, where the source names one (chat exports, OpenAI `name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speaker: Option<String>,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Message {
            role,
            content: content.into(),
            speaker: None,
        }
    }
}

/// The canonical conversation: what every reader produces and every later stage consumes.
/// One per line in the canonical JSONL: `{"messages":[{"role":…,"content":…,"speaker":…}],"meta":{…}}`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Conversation {
    /// The conversation; in a preference pair, the prompt both replies answer.
    #[serde(alias = "prompt")]
    pub messages: Vec<Message>,
    /// A preference pair's preferred and dispreferred replies (TRL's preference schema:
    /// `{"prompt":[…],"chosen":[…],"rejected":[…]}`); empty for a plain conversation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chosen: Vec<Message>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected: Vec<Message>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub meta: Map<String, Value>,
}

impl Conversation {
    pub fn new(messages: Vec<Message>) -> Self {
        Conversation {
            messages,
            ..Default::default()
        }
    }

    /// The domain (topic, category) the source gave this conversation, if any.
    pub fn domain(&self) -> Option<&str> {
        self.meta.get("domain").and_then(Value::as_str)
    }

    /// A plain-text document (a corpus's paragraph or file, for pre-training and tokenizers):
    /// one message holding the text, marked `meta.kind = "text"`, which the tokenizer renders as
    /// the text itself and an end-of-text token, every token carrying loss.
    pub fn text(content: impl Into<String>) -> Conversation {
        let mut c = Conversation::new(vec![Message::new(Role::Assistant, content)]);
        c.meta.insert(KIND.into(), Value::String(TEXT_KIND.into()));
        c
    }

    /// Whether this is a plain-text document ([`Conversation::text`]).
    pub fn is_text(&self) -> bool {
        self.meta.get(KIND).and_then(Value::as_str) == Some(TEXT_KIND)
    }

    /// A preference pair: a prompt and two replies to it.
    pub fn pair(prompt: Vec<Message>, chosen: Vec<Message>, rejected: Vec<Message>) -> Conversation {
        Conversation {
            messages: prompt,
            chosen,
            rejected,
            ..Default::default()
        }
    }

    /// Whether this is a preference pair (it has replies to prefer and to reject).
    pub fn is_pair(&self) -> bool {
        !self.chosen.is_empty() || !self.rejected.is_empty()
    }

    /// The prompt followed by the chosen (`true`) or the rejected reply.
    pub fn with_reply(&self, chosen: bool) -> Vec<Message> {
        let reply = if chosen { &self.chosen } else { &self.rejected };
        self.messages.iter().chain(reply).cloned().collect()
    }

    pub fn chars(&self) -> usize {
        self.messages
            .iter()
            .chain(&self.chosen)
            .chain(&self.rejected)
            .map(|m| m.content.chars().count())
            .sum()
    }

    /// Checks what every later stage relies on: at least one message, no empty content; a pair
    /// has both replies, each starting with the assistant's turn.
    pub fn validate(&self) -> Result<(), String> {
        if self.messages.is_empty() {
            return Err(if self.is_pair() {
                "preference pair has no prompt".into()
            } else {
                "conversation has no messages".into()
            });
        }
        for (i, m) in self.messages.iter().enumerate() {
            if m.content.trim().is_empty() {
                return Err(format!("message {} ({}) is empty", i + 1, m.role.as_str()));
            }
        }
        if self.is_pair() {
            for (name, reply) in [("chosen", &self.chosen), ("rejected", &self.rejected)] {
                match reply.first() {
                    None => return Err(format!("preference pair has no {name} reply")),
                    Some(m) if m.role != Role::Assistant => {
                        return Err(format!(
                            "the {name} reply starts with a {} turn, not the assistant's",
                            m.role.as_str()
                        ));
                    }
                    Some(_) => {}
                }
                if let Some(i) = reply.iter().position(|m| m.content.trim().is_empty()) {
                    return Err(format!("{name} message {} is empty", i + 1));
                }
            }
        }
        Ok(())
    }

    /// Prefixes every user turn with the tag of the conversation's domain (see [`domain_tag`]).
    /// Conversations without a domain are left as they are.
    pub fn apply_domain_tag(&mut self) {
        let Some(tag) = self.domain().map(domain_tag) else {
            return;
        };
        for m in self.messages.iter_mut().filter(|m| m.role == Role::User) {
            if !m.content.starts_with(&tag) {
                m.content = format!("{tag}{}", m.content);
            }
        }
    }
}

/// The `meta` key telling a document from a conversation, and its value for documents.
const KIND: &str = "kind";
const TEXT_KIND: &str = "text";

/// The text a domain becomes when it conditions a user turn ("hash conditioning"):
/// `"Cooking Tips"` → `"#cooking-tips "`.
pub fn domain_tag(domain: &str) -> String {
    let slug: Vec<String> = domain
        .trim()
        .trim_start_matches('#')
        .split_whitespace()
        .map(str::to_lowercase)
        .collect();
    format!("#{} ", slug.join("-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_from_dataset_names() {
        assert_eq!(Role::parse_loose("Human"), Some(Role::User));
        assert_eq!(Role::parse_loose("prompter"), Some(Role::User));
        assert_eq!(Role::parse_loose("gpt"), Some(Role::Assistant));
        assert_eq!(Role::parse_loose(" System "), Some(Role::System));
        assert_eq!(Role::parse_loose("tool"), None);
    }

    #[test]
    fn domain_tags_are_slugs() {
        assert_eq!(domain_tag("Cooking Tips"), "#cooking-tips ");
        assert_eq!(domain_tag("#python"), "#python ");
    }

    #[test]
    fn domain_tag_prefixes_user_turns_once() {
        let mut c = Conversation::new(vec![
            Message::new(Role::User, "How long to boil an egg?"),
            Message::new(Role::Assistant, "About nine minutes."),
        ]);
        c.meta.insert("domain".into(), "cooking".into());
        c.apply_domain_tag();
        c.apply_domain_tag();
        assert_eq!(c.messages[0].content, "#cooking How long to boil an egg?");
        assert_eq!(c.messages[1].content, "About nine minutes.");
    }

    #[test]
    fn canonical_json_round_trip() {
        let line = r#"{"messages":[{"role":"user","content":"hi","speaker":"ann"},{"role":"assistant","content":"hello"}],"meta":{"domain":"greetings"}}"#;
        let c: Conversation = serde_json::from_str(line).unwrap();
        assert_eq!(c.messages[0].speaker.as_deref(), Some("ann"));
        assert_eq!(c.domain(), Some("greetings"));
        assert_eq!(serde_json::to_string(&c).unwrap(), line);
    }
}
