//! A model's own chat template (`tokenizer_config.json`'s `chat_template`, `chat_template.jinja`
//! or `chat_template.json`), rendered as transformers' `apply_chat_template` renders it: Jinja with
//! `trim_blocks` and `lstrip_blocks`, loop controls, `tojson`, Python's string methods,
//! `raise_exception` and `strftime_now`, and the tokenizer's special tokens as variables.
//!
//! Which characters are the assistant's (the loss mask in training) comes from the template
//! itself, as TRL takes it: the text inside `{% generation %}` blocks where the template has them;
//! otherwise, for each assistant message, what rendering the conversation up to and including it
//! adds after rendering the conversation before it with the generation prompt.

use std::ops::Range;
use std::path::Path;

use minijinja::{Environment, ErrorKind, Value};
use serde_json::Value as Json;

use crate::{Error, Result};

/// The files a model's chat template and special tokens come in, beside its `tokenizer.json`.
pub const TEMPLATE_FILES: [&str; 3] = [
    "tokenizer_config.json",
    "chat_template.jinja",
    "chat_template.json",
];

/// Marks the start and end of a `{% generation %}` block in rendered text (private-use code
/// points, which no template writes).
const GEN_START: char = '\u{E000}';
const GEN_END: char = '\u{E001}';
/// The longest template read (templates are a few kilobytes; the largest public ones ~20 KB).
const MAX_TEMPLATE: u64 = 1 << 20;

/// One message as the template sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// A model's chat template, ready to render.
#[derive(Debug)]
pub struct HfTemplate {
    source: String,
    env: Environment<'static>,
    /// `bos_token`, `eos_token`, `unk_token`, `pad_token` as the template receives them.
    specials: Vec<(&'static str, String)>,
    eos: Option<String>,
    has_generation: bool,
}

impl HfTemplate {
    /// The template beside a `tokenizer.json` in `dir`, when the model ships one.
    pub fn find(dir: &Path) -> Result<Option<HfTemplate>> {
        let read = |name: &str| -> Result<Option<String>> {
            let path = dir.join(name);
            if !path.is_file() {
                return Ok(None);
            }
            chatforge_data::read_capped(&path, MAX_TEMPLATE)
                .map(Some)
                .map_err(Error::from)
        };
        let json = |name: &str| -> Result<Option<Json>> {
            read(name)?
                .map(|t| {
                    serde_json::from_str(&t).map_err(|e| Error::Load {
                        path: dir.join(name),
                        msg: format!("invalid JSON: {e}"),
                    })
                })
                .transpose()
        };
        let [config_file, jinja_file, json_file] = TEMPLATE_FILES;
        let config = json(config_file)?.unwrap_or(Json::Null);
        let source = match read(jinja_file)? {
            Some(t) => Some(t),
            None => match json(json_file)? {
                Some(v) => pick(&v["chat_template"]),
                None => pick(&config["chat_template"]),
            },
        };
        let Some(source) = source else {
            return Ok(None);
        };
        let token = |key: &str| -> Option<String> {
            match &config[key] {
                Json::String(s) => Some(s.clone()),
                Json::Object(o) => o.get("content").and_then(Json::as_str).map(str::to_string),
                _ => None,
            }
        };
        let specials: Vec<(&'static str, String)> = ["bos_token", "eos_token", "unk_token", "pad_token"]
            .into_iter()
            .filter_map(|k| token(k).map(|v| (k, v)))
            .collect();
        HfTemplate::new(source, specials).map(Some)
    }

    /// A template from its text, with the special tokens it is given as variables.
    pub fn new(source: String, specials: Vec<(&'static str, String)>) -> Result<HfTemplate> {
        let has_generation = source.contains("generation");
        let text = mark_generation(&source);
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| Error::Invalid(e.to_string()))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned("chat", text)
            .map_err(|e| Error::Invalid(format!("the model's chat template does not parse: {e}")))?;
        let eos = specials
            .iter()
            .find(|(k, _)| *k == "eos_token")
            .map(|(_, v)| v.clone());
        Ok(HfTemplate {
            source,
            env,
            specials,
            eos,
            has_generation,
        })
    }

    /// The template's text, as the model ships it.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// `bos_token` of `tokenizer_config.json`.
    pub fn bos_token(&self) -> Option<&str> {
        self.specials
            .iter()
            .find(|(k, _)| *k == "bos_token")
            .map(|(_, v)| v.as_str())
    }

    /// `eos_token` of `tokenizer_config.json`: where an assistant's reply ends.
    pub fn eos_token(&self) -> Option<&str> {
        self.eos.as_deref()
    }

    /// The conversation as text; with `add_generation_prompt`, followed by what starts the
    /// assistant's reply.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let text = self.render_marked(messages, add_generation_prompt)?;
        Ok(text.replace([GEN_START, GEN_END], ""))
    }

    /// The whole conversation as text, and the byte ranges of it that are the assistant's.
    pub fn render_with_spans(&self, messages: &[Message]) -> Result<(String, Vec<Range<usize>>)> {
        if self.has_generation {
            let marked = self.render_marked(messages, false)?;
            if marked.contains(GEN_START) {
                return Ok(spans_of_marks(&marked));
            }
        }
        let full = self.render(messages, false)?;
        let mut spans = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            if m.role != "assistant" {
                continue;
            }
            let before = self.render(&messages[..i], true)?;
            let upto = self.render(&messages[..=i], false)?;
            if !upto.starts_with(&before) || !full.starts_with(&upto) {
                return Err(Error::Invalid(
                    "the model's chat template does not render a conversation as its earlier \
                     turns followed by the next; the assistant's tokens cannot be found for the \
                     loss mask"
                        .into(),
                ));
            }
            spans.push(before.len()..upto.len());
        }
        Ok((full, spans))
    }

    fn render_marked(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let mut ctx: Vec<(&str, Value)> = vec![
            (
                "messages",
                Value::from(
                    messages
                        .iter()
                        .map(|m| {
                            Value::from_pairs([
                                ("role", Value::from(m.role.as_str())),
                                ("content", Value::from(m.content.as_str())),
                            ])
                        })
                        .collect::<Vec<Value>>(),
                ),
            ),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
        ];
        for (k, v) in &self.specials {
            ctx.push((k, Value::from(v.as_str())));
        }
        let ctx = Value::from_pairs(ctx);
        tmpl.render(ctx)
            .map_err(|e| Error::Invalid(format!("the model's chat template failed: {e}")))
    }
}

/// `text` as transformers encodes a rendered chat (special tokens matched, none added), with the
/// tokens that start inside `spans` marked as the assistant's.
pub(crate) fn encode(
    tok: &tokenizers::Tokenizer,
    text: &str,
    spans: &[Range<usize>],
) -> Result<crate::Rendered> {
    let enc = tok.encode(text, false)?;
    let mask = enc
        .get_offsets()
        .iter()
        .map(|&(start, _)| u8::from(spans.iter().any(|s| s.contains(&start))))
        .collect();
    Ok(crate::Rendered {
        ids: enc.get_ids().to_vec(),
        mask,
    })
}

/// A template from `chat_template`'s value: a string, or a list of named templates (`default`
/// first, else the first).
fn pick(v: &Json) -> Option<String> {
    match v {
        Json::String(s) => Some(s.clone()),
        Json::Array(list) => {
            let named = |n: &str| {
                list.iter()
                    .find(|t| t["name"].as_str() == Some(n))
                    .and_then(|t| t["template"].as_str())
            };
            named("default")
                .or_else(|| list.first().and_then(|t| t["template"].as_str()))
                .map(str::to_string)
        }
        _ => None,
    }
}

/// `{% generation %}` … `{% endgeneration %}` (transformers' extension) as blocks that write the
/// marks, keeping each tag's whitespace control.
fn mark_generation(source: &str) -> String {
    let tag = |name: &str, mark: char, text: &str| -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(at) = rest.find("{%") {
            out.push_str(&rest[..at]);
            let after = &rest[at + 2..];
            let Some(end) = after.find("%}") else {
                out.push_str(&rest[at..]);
                return out;
            };
            let inner = &after[..end];
            let (l, body) = inner.strip_prefix('-').map_or(("", inner), |b| ("-", b));
            let (body, r) = body.strip_suffix('-').map_or((body, ""), |b| (b, "-"));
            if body.trim() == name {
                out.push_str(&format!("{{%{l} if true %}}{mark}{{% endif {r}%}}"));
            } else {
                out.push_str(&rest[at..at + 2 + end + 2]);
            }
            rest = &after[end + 2..];
        }
        out.push_str(rest);
        out
    };
    let once = tag("generation", GEN_START, source);
    tag("endgeneration", GEN_END, &once)
}

/// The text without its marks, and the byte ranges the marks enclosed.
fn spans_of_marks(marked: &str) -> (String, Vec<Range<usize>>) {
    let mut text = String::with_capacity(marked.len());
    let mut spans = Vec::new();
    let mut open = None;
    for ch in marked.chars() {
        match ch {
            GEN_START => open = Some(text.len()),
            GEN_END => {
                if let Some(s) = open.take() {
                    spans.push(s..text.len());
                }
            }
            c => text.push(c),
        }
    }
    (text, spans)
}

fn raise_exception(msg: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
}

/// Python's `strftime` of the current UTC date for the directives chat templates use (`%d %b %Y`,
/// `%Y-%m-%d`, `%B`, `%A`, `%H:%M`).
fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    strftime(secs, &format)
}

fn strftime(secs: i64, format: &str) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
    ];
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    let (year, month, day) = chatforge_base::civil_from_days(days);
    let (m, wd) = ((month - 1) as usize, days.rem_euclid(7) as usize);
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year % 100)),
            Some('b') => out.push_str(&MONTHS[m][..3]),
            Some('B') => out.push_str(MONTHS[m]),
            Some('a') => out.push_str(&DAYS[wd][..3]),
            Some('A') => out.push_str(DAYS[wd]),
            Some('H') => out.push_str(&format!("{:02}", tod / 3600)),
            Some('M') => out.push_str(&format!("{:02}", tod / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", tod % 60)),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_as_python_writes_them() {
        // 2024-07-26 is a Friday.
        let t = 1_721_952_000 + 3 * 3600 + 4 * 60;
        assert_eq!(strftime(t, "%d %b %Y"), "26 Jul 2024");
        assert_eq!(strftime(t, "%A %Y-%m-%d %H:%M"), "Friday 2024-07-26 03:04");
        assert_eq!(strftime(0, "%B %d, %Y"), "January 01, 1970");
    }

    #[test]
    fn generation_blocks_mark_the_assistant() {
        let src = "{% for m in messages %}<{{ m.role }}>{% if m.role == 'assistant' %}{%- generation -%} {{ m.content }}</s>{%- endgeneration %}{% else %}{{ m.content }}{% endif %}\n{% endfor %}";
        let t = HfTemplate::new(src.into(), vec![]).unwrap();
        let msgs = [
            Message {
                role: "user".into(),
                content: "hi".into(),
            },
            Message {
                role: "assistant".into(),
                content: "yo".into(),
            },
        ];
        let (text, spans) = t.render_with_spans(&msgs).unwrap();
        // trim_blocks: the newline after a block tag goes.
        assert_eq!(text, "<user>hi<assistant>yo</s>");
        assert_eq!(spans.len(), 1);
        assert_eq!(&text[spans[0].clone()], "yo</s>");
        let err = HfTemplate::new("{{ raise_exception('no system') }}".into(), vec![])
            .unwrap()
            .render(&msgs, false)
            .unwrap_err();
        assert!(err.to_string().contains("no system"), "{err}");
    }
}
