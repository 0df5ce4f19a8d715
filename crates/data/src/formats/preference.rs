//! Preference pairs in the shapes people have, each into one canonical pair (a prompt and a
//! chosen and a rejected reply):
//! - TRL's preference schema with an explicit prompt: `prompt`, `chosen`, `rejected`, each a
//!   string or a list of messages;
//! - implicit prompts: `chosen` and `rejected` as whole conversations (UltraFeedback-binarized's
//!   message lists, Anthropic HH-RLHF's `Human:`/`Assistant:` transcripts), split where they
//!   stop agreeing, which must be at an assistant turn.

use serde_json::{Map, Value};

use super::records::{Converted, kind, turns};
use crate::{Conversation, Message, Role};

/// Whether a record is a preference pair: it has both replies.
pub(super) fn looks_like_pair(keys: &dyn Fn(&str) -> bool) -> bool {
    keys("chosen") && keys("rejected")
}

pub(super) fn convert(obj: Map<String, Value>) -> Converted {
    let field = |k: &str| obj.get(k).filter(|v| !v.is_null());
    let (Some(chosen), Some(rejected)) = (field("chosen"), field("rejected")) else {
        return Err("a preference pair needs \"chosen\" and \"rejected\"".into());
    };
    // chatforge's canonical pairs keep the prompt in `messages`.
    let pair = match field("prompt").or_else(|| field("messages").filter(|_| !obj.contains_key("prompt"))) {
        Some(prompt) => {
            let prompt = match prompt {
                Value::String(s) => vec![Message::new(Role::User, s.trim())],
                Value::Array(list) => turns(list, "role", "content").map_err(|e| format!("prompt: {e}"))?,
                other => {
                    return Err(format!(
                        "\"prompt\" should be a string or a list of messages, got {}",
                        kind(other)
                    ));
                }
            };
            let (c, r) = (messages(chosen, "chosen")?, messages(rejected, "rejected")?);
            // UltraFeedback-binarized: the replies repeat the prompt's turns; drop what they share.
            let shared = shared_prefix(&c, &r);
            if shared > 0 && c[..shared].last().is_some_and(|m| m.role == Role::User) {
                split(c, r)?
            } else {
                Conversation::pair(prompt, c, r)
            }
        }
        None => split(messages(chosen, "chosen")?, messages(rejected, "rejected")?)?,
    };
    pair.validate()?;
    Ok(pair)
}

/// A reply or a whole conversation: a list of messages, an HH-RLHF transcript, or plain text (the
/// assistant's reply).
fn messages(v: &Value, what: &str) -> Result<Vec<Message>, String> {
    match v {
        Value::Array(list) => turns(list, "role", "content").map_err(|e| format!("{what}: {e}")),
        Value::String(s) if is_transcript(s) => transcript(s).map_err(|e| format!("{what}: {e}")),
        Value::String(s) if s.trim().is_empty() => Ok(Vec::new()),
        Value::String(s) => Ok(vec![Message::new(Role::Assistant, s.trim())]),
        other => Err(format!(
            "\"{what}\" should be a string or a list of messages, got {}",
            kind(other)
        )),
    }
}

fn shared_prefix(a: &[Message], b: &[Message]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Two whole conversations → the pair: the prompt is what they share, up to the turn where they
/// differ, which must be the assistant's.
fn split(mut chosen: Vec<Message>, mut rejected: Vec<Message>) -> Result<Conversation, String> {
    let n = shared_prefix(&chosen, &rejected);
    if n == 0 {
        return Err("\"chosen\" and \"rejected\" share no prompt; give a \"prompt\" field".into());
    }
    if n == chosen.len() && n == rejected.len() {
        return Err("\"chosen\" and \"rejected\" are the same conversation".into());
    }
    if n == chosen.len() || n == rejected.len() {
        let short = if n == chosen.len() { "chosen" } else { "rejected" };
        return Err(format!(
            "the {short} conversation has no reply after the prompt both share"
        ));
    }
    if chosen[n].role != Role::Assistant || rejected[n].role != Role::Assistant {
        return Err(format!(
            "\"chosen\" and \"rejected\" differ at message {}, a {} turn; they should differ at the assistant's reply",
            n + 1,
            chosen[n].role.as_str()
        ));
    }
    let (c, r) = (chosen.split_off(n), rejected.split_off(n));
    Ok(Conversation::pair(chosen, c, r))
}

const HUMAN: &str = "\n\nHuman:";
const ASSISTANT: &str = "\n\nAssistant:";

fn is_transcript(s: &str) -> bool {
    s.starts_with(HUMAN) || (s.contains(HUMAN) && s.contains(ASSISTANT))
}

/// Anthropic HH-RLHF's transcript: `"\n\nHuman: …\n\nAssistant: …"` turns.
fn transcript(s: &str) -> Result<Vec<Message>, String> {
    let mut out: Vec<Message> = Vec::new();
    let mut rest = s;
    if !rest.starts_with(HUMAN) && !rest.starts_with(ASSISTANT) {
        let first = [rest.find(HUMAN), rest.find(ASSISTANT)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(0);
        if !rest[..first].trim().is_empty() {
            return Err("text before the first \"Human:\" turn".into());
        }
        rest = &rest[first..];
    }
    while !rest.is_empty() {
        let (role, body) = if let Some(b) = rest.strip_prefix(HUMAN) {
            (Role::User, b)
        } else if let Some(b) = rest.strip_prefix(ASSISTANT) {
            (Role::Assistant, b)
        } else {
            return Err("expected a \"Human:\" or \"Assistant:\" turn".into());
        };
        let end = [body.find(HUMAN), body.find(ASSISTANT)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(body.len());
        out.push(Message::new(role, body[..end].trim()));
        rest = &body[end..];
    }
    // HH's last assistant turn can be empty in a few records; an empty turn is an error later.
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pair(v: Value) -> Result<Conversation, String> {
        let Value::Object(o) = v else { unreachable!() };
        convert(o)
    }

    #[test]
    fn trl_explicit_prompt_text_and_messages() {
        let c = pair(json!({"prompt": "The sky is", "chosen": " blue.", "rejected": " green."})).unwrap();
        assert_eq!(c.messages, vec![Message::new(Role::User, "The sky is")]);
        assert_eq!(c.chosen, vec![Message::new(Role::Assistant, "blue.")]);
        assert_eq!(c.rejected[0].content, "green.");
        let c = pair(json!({
            "prompt": [{"role": "user", "content": "What color is the sky?"}],
            "chosen": [{"role": "assistant", "content": "Blue."}],
            "rejected": [{"role": "assistant", "content": "Green."}]}))
        .unwrap();
        assert_eq!(c.messages.len(), 1);
        assert_eq!(c.chosen[0].content, "Blue.");
    }

    #[test]
    fn ultrafeedback_binarized_splits_the_shared_prompt() {
        let c = pair(json!({
            "prompt": "Hi?", "prompt_id": "x", "score_chosen": 8.0, "score_rejected": 3.0,
            "chosen": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello!"}],
            "rejected": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Go away."}],
            "messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello!"}]}))
        .unwrap();
        assert_eq!(c.messages, vec![Message::new(Role::User, "Hi?")]);
        assert_eq!(c.chosen, vec![Message::new(Role::Assistant, "Hello!")]);
        assert_eq!(c.rejected, vec![Message::new(Role::Assistant, "Go away.")]);
    }

    #[test]
    fn hh_rlhf_transcripts_split_at_the_last_shared_turn() {
        let c = pair(json!({
            "chosen": "\n\nHuman: What is 2+2?\n\nAssistant: 4.\n\nHuman: And 3+3?\n\nAssistant: 6.",
            "rejected": "\n\nHuman: What is 2+2?\n\nAssistant: 4.\n\nHuman: And 3+3?\n\nAssistant: No idea."})).unwrap();
        assert_eq!(c.messages.len(), 3);
        assert_eq!(c.messages[2], Message::new(Role::User, "And 3+3?"));
        assert_eq!(c.chosen, vec![Message::new(Role::Assistant, "6.")]);
        assert_eq!(c.rejected, vec![Message::new(Role::Assistant, "No idea.")]);
    }

    #[test]
    fn canonical_pairs_read_back() {
        let c = Conversation::pair(
            vec![Message::new(Role::User, "q")],
            vec![Message::new(Role::Assistant, "good")],
            vec![Message::new(Role::Assistant, "bad")],
        );
        assert_eq!(pair(serde_json::to_value(&c).unwrap()).unwrap(), c);
    }

    #[test]
    fn malformed_pairs_say_what_is_wrong() {
        let same = "\n\nHuman: a\n\nAssistant: b";
        assert!(
            pair(json!({"chosen": same, "rejected": same}))
                .unwrap_err()
                .contains("same conversation")
        );
        let e = pair(json!({"chosen": [{"role": "user", "content": "x"}], "rejected": [{"role": "user", "content": "y"}]}))
            .unwrap_err();
        assert!(e.contains("share no prompt"), "{e}");
        let e = pair(json!({"prompt": "p", "chosen": "", "rejected": "r"})).unwrap_err();
        assert!(e.contains("no chosen reply"), "{e}");
        let e = pair(json!({"prompt": 3, "chosen": "c", "rejected": "r"})).unwrap_err();
        assert!(e.contains("\"prompt\" should be"), "{e}");
    }
}
