//! One JSON record → one conversation, for the record-per-conversation shapes:
//! OpenAI/canonical messages, ShareGPT and instruction records.

use serde_json::{Map, Value};

use super::{DataFormat, FieldMap};
use crate::{Conversation, Message, Role};

/// Fields that hold the user's turn, most specific first. `input` comes last: in Alpaca records it
/// is the context of `instruction`, and only stands alone as the prompt when nothing else does.
const USER_KEYS: [&str; 5] = ["instruction", "question", "prompt", "query", "input"];
const CONTEXT_KEYS: [&str; 2] = ["context", "input"];
const OUTPUT_KEYS: [&str; 4] = ["output", "answer", "response", "completion"];
const DOMAIN_KEYS: [&str; 3] = ["hash", "domain", "category"];

pub(super) type Converted = Result<Conversation, String>;

pub(super) fn looks_like_instruction(v: &Value) -> bool {
    let Some(obj) = v.as_object() else {
        return false;
    };
    USER_KEYS.iter().any(|k| obj.contains_key(*k)) && OUTPUT_KEYS.iter().any(|k| obj.contains_key(*k))
}

/// Whether a JSON object is itself one record (as opposed to a dict holding a list of them).
pub(super) fn looks_like_record(obj: &Map<String, Value>) -> bool {
    let turns = |k: &str| {
        obj.get(k)
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(Value::as_object)
            .is_some_and(|t| t.contains_key("role") || t.contains_key("from"))
    };
    turns("messages")
        || turns("conversations")
        || turns("conversation")
        || obj.contains_key("message_tree_id")
        || obj.contains_key("message_id")
        || looks_like_instruction(&Value::Object(obj.clone()))
}

pub(super) fn convert(format: DataFormat, value: Value, map: &FieldMap) -> Converted {
    let Value::Object(obj) = value else {
        return Err(format!("expected a JSON object, got {}", kind(&value)));
    };
    match format {
        DataFormat::Messages => messages(obj),
        DataFormat::ShareGpt => sharegpt(obj),
        DataFormat::Instruction => instruction(&obj, map),
        other => Err(format!("{} records are not read one by one", other.name())),
    }
}

pub(super) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Text content: a string, or OpenAI's list of parts (`[{"type":"text","text":…}]`).
fn text_of(v: &Value, what: &str) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let texts: Vec<&str> = parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect();
            if texts.is_empty() {
                Err(format!("{what} has no text parts"))
            } else {
                Ok(texts.join("\n"))
            }
        }
        other => Err(format!("{what} should be a string, got {}", kind(other))),
    }
}

fn role_of(name: &str, index: usize) -> Result<Role, String> {
    Role::parse_loose(name)
        .ok_or_else(|| format!("message {index}: unknown role '{name}' (expected user, assistant or system)"))
}

pub(super) fn turns(list: &[Value], role_key: &str, content_key: &str) -> Result<Vec<Message>, String> {
    list.iter()
        .enumerate()
        .map(|(i, t)| {
            let n = i + 1;
            let t = t
                .as_object()
                .ok_or_else(|| format!("message {n} should be an object, got {}", kind(t)))?;
            let get = |k: &str| t.get(k).or_else(|| t.get(alt(k)));
            let role = get(role_key)
                .and_then(Value::as_str)
                .ok_or_else(|| format!("message {n} has no \"{role_key}\""))?;
            let content = get(content_key).ok_or_else(|| format!("message {n} has no \"{content_key}\""))?;
            let speaker = ["speaker", "name"]
                .iter()
                .find_map(|k| t.get(*k).and_then(Value::as_str))
                .map(str::to_string);
            Ok(Message {
                role: role_of(role, n)?,
                content: text_of(content, &format!("message {n} content"))?,
                speaker,
            })
        })
        .collect()
}

/// ShareGPT uses `from`/`value`, OpenAI `role`/`content`; some exports mix them.
fn alt(key: &str) -> &str {
    match key {
        "role" => "from",
        "from" => "role",
        "content" => "value",
        "value" => "content",
        other => other,
    }
}

fn with_meta(messages: Vec<Message>, mut obj: Map<String, Value>) -> Conversation {
    let mut meta = match obj.remove("meta") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    for key in ["id", "domain", "category", "lang", "language", "source"] {
        if let Some(v) = obj.remove(key).filter(|v| !v.is_null()) {
            let key = match key {
                "category" => "domain",
                "language" => "lang",
                k => k,
            };
            meta.entry(key).or_insert(v);
        }
    }
    Conversation {
        messages,
        meta,
        ..Default::default()
    }
}

fn messages(mut obj: Map<String, Value>) -> Converted {
    let list = match obj.remove("messages") {
        Some(Value::Array(list)) => list,
        Some(other) => return Err(format!("\"messages\" should be a list, got {}", kind(&other))),
        None => return Err("no \"messages\" list".into()),
    };
    let messages = turns(&list, "role", "content")?;
    Ok(with_meta(messages, obj))
}

fn sharegpt(mut obj: Map<String, Value>) -> Converted {
    let list = match obj.remove("conversations").or_else(|| obj.remove("conversation")) {
        Some(Value::Array(list)) => list,
        Some(other) => {
            return Err(format!(
                "\"conversations\" should be a list, got {}",
                kind(&other)
            ));
        }
        None => return Err("no \"conversations\" list".into()),
    };
    let mut messages = turns(&list, "from", "value")?;
    let system = obj.remove("system").and_then(|s| s.as_str().map(str::to_string));
    if let Some(system) = system.filter(|s| !s.trim().is_empty())
        && messages.first().is_none_or(|m| m.role != Role::System)
    {
        messages.insert(0, Message::new(Role::System, system));
    }
    Ok(with_meta(messages, obj))
}

/// Which source key feeds each part of an instruction record.
struct Keys<'a> {
    user: Option<&'a str>,
    context: Option<&'a str>,
    output: Option<&'a str>,
    domain: Option<&'a str>,
    system: Option<&'a str>,
}

fn non_empty(obj: &Map<String, Value>, k: &str) -> bool {
    match obj.get(k) {
        Some(Value::String(s)) => !s.trim().is_empty(),
        Some(Value::Null) | None => false,
        Some(_) => true,
    }
}

fn resolve<'a>(obj: &'a Map<String, Value>, map: &'a FieldMap) -> Keys<'a> {
    let pick = |forced: &'a Option<String>, candidates: &[&'static str], skip: Option<&str>| {
        forced.as_deref().or_else(|| {
            candidates
                .iter()
                .copied()
                .find(|k| Some(*k) != skip && non_empty(obj, k))
        })
    };
    let user = pick(&map.instruction, &USER_KEYS, None);
    Keys {
        user,
        context: pick(&map.input, &CONTEXT_KEYS, user),
        output: pick(&map.output, &OUTPUT_KEYS, None),
        domain: pick(&map.domain, &DOMAIN_KEYS, None),
        system: pick(&map.system, &["system"], None),
    }
}

/// `instruction→user, input→context, output→assistant` for the detection report.
pub(super) fn describe_fields(v: &Value, map: &FieldMap) -> String {
    let empty = Map::new();
    let obj = v.as_object().unwrap_or(&empty);
    let keys = resolve(obj, map);
    [
        (keys.user, "user"),
        (keys.context, "context"),
        (keys.output, "assistant"),
        (keys.domain, "domain"),
        (keys.system, "system"),
    ]
    .iter()
    .filter_map(|(k, part)| k.map(|k| format!("{k}→{part}")))
    .collect::<Vec<_>>()
    .join(", ")
}

fn field_text(obj: &Map<String, Value>, key: &str) -> Result<String, String> {
    match obj.get(key) {
        None => Err(format!("missing field \"{key}\"")),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(v) => text_of(v, &format!("field \"{key}\"")),
    }
}

fn instruction(obj: &Map<String, Value>, map: &FieldMap) -> Converted {
    let keys = resolve(obj, map);
    let user_key = keys.user.ok_or_else(|| {
        format!(
            "no prompt field (one of {}); use --field-map instruction=FIELD",
            USER_KEYS.join(", ")
        )
    })?;
    let output_key = keys.output.ok_or_else(|| {
        format!(
            "no response field (one of {}); use --field-map output=FIELD",
            OUTPUT_KEYS.join(", ")
        )
    })?;
    let mut user = field_text(obj, user_key)?;
    if let Some(k) = keys.context.filter(|k| non_empty(obj, k)) {
        user = format!("{}\n\n{}", user.trim_end(), field_text(obj, k)?.trim());
    }
    let mut messages = Vec::with_capacity(3);
    if let Some(k) = keys.system.filter(|k| non_empty(obj, k)) {
        messages.push(Message::new(Role::System, field_text(obj, k)?));
    }
    messages.push(Message::new(Role::User, user));
    messages.push(Message::new(Role::Assistant, field_text(obj, output_key)?));
    let mut c = Conversation::new(messages);
    if let Some(k) = keys.domain.filter(|k| non_empty(obj, k)) {
        c.meta.insert("domain".into(), Value::String(field_text(obj, k)?));
    }
    if let Some(id) = obj.get("id").filter(|v| !v.is_null()) {
        c.meta.insert("id".into(), id.clone());
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn alpaca_input_is_context() {
        let v = json!({"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"});
        let c = convert(DataFormat::Instruction, v.clone(), &FieldMap::default()).unwrap();
        assert_eq!(c.messages[0].content, "Translate to French.\n\nGood morning");
        assert_eq!(c.messages[1].content, "Bonjour");
        assert_eq!(
            describe_fields(&v, &FieldMap::default()),
            "instruction→user, input→context, output→assistant"
        );
    }

    #[test]
    fn lone_input_is_the_prompt() {
        let v = json!({"input": "2+2?", "output": "4", "category": "Math"});
        let c = convert(DataFormat::Instruction, v, &FieldMap::default()).unwrap();
        assert_eq!(c.messages[0].content, "2+2?");
        assert_eq!(c.domain(), Some("Math"));
    }

    #[test]
    fn field_map_overrides_detection() {
        let map: FieldMap = "instruction=q,output=a,domain=topic".parse().unwrap();
        let v = json!({"q": "Capital of Peru?", "a": "Lima.", "topic": "geography", "output": "ignored"});
        let c = convert(DataFormat::Instruction, v, &map).unwrap();
        assert_eq!(c.messages[0].content, "Capital of Peru?");
        assert_eq!(c.messages[1].content, "Lima.");
        assert_eq!(c.domain(), Some("geography"));
        let missing = convert(DataFormat::Instruction, json!({"a": "x"}), &map).unwrap_err();
        assert_eq!(missing, "missing field \"q\"");
    }

    #[test]
    fn sharegpt_roles_and_system() {
        let v = json!({"id": "x1", "system": "Be brief.", "conversations": [
            {"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]});
        let c = convert(DataFormat::ShareGpt, v, &FieldMap::default()).unwrap();
        let roles: Vec<Role> = c.messages.iter().map(|m| m.role).collect();
        assert_eq!(roles, [Role::System, Role::User, Role::Assistant]);
        assert_eq!(c.meta["id"], "x1");
    }

    #[test]
    fn openai_content_parts_and_names() {
        let v = json!({"messages": [
            {"role": "user", "name": "ann", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": "ok"}]});
        let c = convert(DataFormat::Messages, v, &FieldMap::default()).unwrap();
        assert_eq!(c.messages[0].content, "a\nb");
        assert_eq!(c.messages[0].speaker.as_deref(), Some("ann"));
        let bad = json!({"messages": [{"role": "tool", "content": "x"}]});
        let err = convert(DataFormat::Messages, bad, &FieldMap::default()).unwrap_err();
        assert!(err.contains("unknown role 'tool'"), "{err}");
    }
}
