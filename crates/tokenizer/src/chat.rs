//! The chat template: how a conversation becomes token ids and a loss mask.
//!
//! With chat special tokens (tokenizers chatforge trains):
//! ```text
//! <|system|>{system prompt}\n{persona line}<|end|>     loss: none
//! <|user|>{user content}<|end|>                       loss: none
//! <|assistant|>{assistant content}<|end|>             loss: content and <|end|>
//! ```
//! Without them (GPT-2's own tokenizer, say) a plain-text form, so pretrained checkpoints can be
//! fine-tuned without resizing their embeddings:
//! ```text
//! System: {system prompt}\n                            loss: none
//! User: {user content}\n                               loss: none
//! Assistant: {assistant content}<|endoftext|>          loss: " {content}" and the end-of-text token
//! ```
//! Message contents are encoded with special-token matching off, so text that spells
//! `<|user|>` cannot inject a turn; the template's own special tokens are inserted by id.

use std::path::Path;

use chatforge_data::{Conversation, Role};
use tokenizers::AddedToken;
use tokenizers::Tokenizer;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;

use crate::fast::{Encoder, FastBpe};
use crate::hf_template::{HfTemplate, Message};
use crate::{Error, Result};

/// The special tokens of chatforge's chat template.
pub mod specials {
    pub const END_OF_TEXT: &str = "<|endoftext|>";
    pub const SYSTEM: &str = "<|system|>";
    pub const USER: &str = "<|user|>";
    pub const ASSISTANT: &str = "<|assistant|>";
    pub const END: &str = "<|end|>";
    pub const UNK: &str = "<unk>";
    /// In id order: trained tokenizers give these ids 0..5.
    pub const CHAT: [&str; 5] = [END_OF_TEXT, SYSTEM, USER, ASSISTANT, END];
    /// End-of-text spellings of other tokenizers, for the plain template.
    pub const EOS_CANDIDATES: [&str; 3] = [END_OF_TEXT, "</s>", "<eos>"];
}

/// Which form of the template a tokenizer supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Template {
    Chat {
        end_of_text: u32,
        system: u32,
        user: u32,
        assistant: u32,
        end: u32,
    },
    Plain {
        eos: Option<u32>,
    },
    /// The model's own Jinja template (`tokenizer_config.json`'s `chat_template`): a pretrained
    /// chat model's format, rendered as transformers renders it ([`crate::hf_template`]). `eos`
    /// ends an assistant's reply (`eos_token`); `end_of_text` ends a plain-text document.
    Model {
        eos: Option<u32>,
        end_of_text: Option<u32>,
    },
}

/// How the assistant is asked to speak as someone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Persona {
    #[default]
    None,
    /// Always this persona.
    Fixed(String),
    /// The `speaker` of the conversation's first assistant message, when it has one.
    FromSpeaker,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RenderOptions {
    /// System prompt for conversations that bring none.
    pub system: Option<String>,
    pub persona: Persona,
    /// Prefix user turns with the conversation's domain tag (`#cooking …`).
    pub domain_tag: bool,
    /// The chat channel, put in front of the persona line (`Channel: {channel} | Respond as …`).
    pub channel: Option<String>,
}

/// Token ids and, per token, whether it carries loss in SFT.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rendered {
    pub ids: Vec<u32>,
    pub mask: Vec<u8>,
}

impl Rendered {
    fn push(&mut self, ids: &[u32], loss: bool) {
        self.ids.extend_from_slice(ids);
        self.mask.extend(std::iter::repeat_n(u8::from(loss), ids.len()));
    }

    fn text(&mut self, enc: &mut Encoder<'_>, text: &str, loss: bool) -> Result<()> {
        enc.encode_into(text, &mut self.ids)?;
        self.mask.resize(self.ids.len(), u8::from(loss));
        Ok(())
    }
}

/// A tokenizer together with the chat template it supports.
#[derive(Clone)]
pub struct ChatTokenizer {
    inner: Tokenizer,
    template: Template,
    fast: Option<FastBpe>,
    /// The model's own template and the tokenizer that encodes its output (special tokens
    /// matched in the rendered text, as transformers encodes it).
    model: Option<std::sync::Arc<(HfTemplate, Tokenizer)>>,
}

impl std::fmt::Debug for ChatTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("template", &self.template)
            .finish()
    }
}

impl ChatTokenizer {
    pub fn new(mut inner: Tokenizer) -> Self {
        let id = |t: &str| inner.token_to_id(t);
        let template = match specials::CHAT.map(id) {
            [
                Some(end_of_text),
                Some(system),
                Some(user),
                Some(assistant),
                Some(end),
            ] => Template::Chat {
                end_of_text,
                system,
                user,
                assistant,
                end,
            },
            _ => Template::Plain {
                eos: specials::EOS_CANDIDATES.iter().find_map(|t| id(t)),
            },
        };
        // Content is text: never let it spell a special token.
        inner.set_encode_special_tokens(true);
        let fast = FastBpe::detect(&inner);
        ChatTokenizer {
            inner,
            template,
            fast,
            model: None,
        }
    }

    /// Renders chats with `template`, the model's own, instead of the plain form. A tokenizer
    /// with chatforge's chat tokens keeps its template.
    pub fn with_model_template(mut self, template: HfTemplate) -> Self {
        if matches!(self.template, Template::Chat { .. }) {
            return self;
        }
        let eos = template.eos_token().and_then(|t| self.inner.token_to_id(t));
        let end_of_text = specials::EOS_CANDIDATES
            .iter()
            .find_map(|t| self.inner.token_to_id(t))
            .or(eos);
        self.template = Template::Model { eos, end_of_text };
        let mut matching = self.inner.clone();
        matching.set_encode_special_tokens(false);
        self.model = Some(std::sync::Arc::new((template, matching)));
        self
    }

    /// The model's own chat template, when chats render through it.
    pub fn model_template(&self) -> Option<&HfTemplate> {
        self.model.as_ref().map(|m| &m.0)
    }

    /// Loads `tokenizer.json` (a file, or a directory holding one) or GPT-2's `vocab.json` +
    /// `merges.txt` (a directory holding both, or the path of `vocab.json`).
    pub fn load(path: &Path) -> Result<Self> {
        let err = |msg: String| Error::Load {
            path: path.to_path_buf(),
            msg,
        };
        let (json, vocab) = if path.is_dir() {
            (path.join("tokenizer.json"), path.join("vocab.json"))
        } else if path.file_name().is_some_and(|n| n == "vocab.json") {
            (path.with_file_name("tokenizer.json.absent"), path.to_path_buf())
        } else {
            (path.to_path_buf(), path.with_file_name("vocab.json.absent"))
        };
        if json.is_file() {
            let inner = Tokenizer::from_file(&json).map_err(|e| err(format!("not a tokenizer.json: {e}")))?;
            let tok = Self::new(inner);
            // A pretrained model's own chat template, from the files beside its tokenizer.
            let dir = json.parent().unwrap_or(Path::new("."));
            return Ok(match HfTemplate::find(dir)? {
                Some(t) => tok.with_model_template(t),
                None => tok,
            });
        }
        let merges = vocab.with_file_name("merges.txt");
        if vocab.is_file() && merges.is_file() {
            return Self::from_gpt2_files(&vocab, &merges).map_err(|e| err(e.to_string()));
        }
        if !path.exists() {
            return Err(err("no such file or directory".into()));
        }
        Err(err(
            "expected tokenizer.json, or vocab.json with merges.txt beside it".into(),
        ))
    }

    /// From the text of a `tokenizer.json` (as embedded in a GGUF file).
    pub fn from_json(json: &str) -> Result<Self> {
        let inner: Tokenizer = json.parse().map_err(|e| Error::Load {
            path: "tokenizer.json".into(),
            msg: format!("not a tokenizer.json: {e}"),
        })?;
        Ok(Self::new(inner))
    }

    /// The tokenizer as `tokenizer.json` text, for other tools: special tokens in input text are
    /// matched as usual there (chatforge itself never matches them in content).
    pub fn to_json(&self) -> Result<String> {
        let mut t = self.inner.clone();
        t.set_encode_special_tokens(false);
        t.to_string(false).map_err(|e| Error::Load {
            path: "tokenizer.json".into(),
            msg: format!("cannot serialise the tokenizer: {e}"),
        })
    }

    fn from_gpt2_files(vocab: &Path, merges: &Path) -> Result<Self> {
        let (v, m) = (vocab.to_string_lossy(), merges.to_string_lossy());
        let bpe = BPE::from_file(&v, &m).build()?;
        let mut inner = Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
        inner.with_decoder(Some(ByteLevel::default()));
        inner.with_post_processor(Some(ByteLevel::default().trim_offsets(false)));
        if inner.token_to_id(specials::END_OF_TEXT).is_some() {
            inner.add_special_tokens([AddedToken::from(specials::END_OF_TEXT, true)])?;
        }
        Ok(Self::new(inner))
    }

    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    pub fn template(&self) -> Template {
        self.template
    }

    /// Vocabulary size including added (special) tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Whether encoding takes the fast byte-level BPE path (see `fast.rs`).
    pub fn uses_fast_encoder(&self) -> bool {
        self.fast.is_some()
    }

    /// An encoder that remembers the words it has seen: use one per thread for bulk work.
    pub fn encoder(&self) -> Encoder<'_> {
        Encoder::new(&self.inner, self.fast.as_ref())
    }

    /// Ids of plain text (special-token spellings stay text).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        self.encoder().encode_into(text, &mut ids)?;
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        Ok(self.inner.decode(ids, skip_special_tokens)?)
    }

    /// Tokens that end an assistant reply during generation.
    pub fn stop_ids(&self) -> Vec<u32> {
        match self.template {
            Template::Chat { end, end_of_text, .. } => vec![end, end_of_text],
            Template::Plain { eos } => eos.into_iter().collect(),
            Template::Model { eos, end_of_text } => {
                let mut ids: Vec<u32> = eos.into_iter().chain(end_of_text).collect();
                ids.dedup();
                ids
            }
        }
    }

    /// The id the sampler's padding and document ends use.
    pub fn end_of_text(&self) -> Option<u32> {
        match self.template {
            Template::Chat { end_of_text, .. } => Some(end_of_text),
            Template::Plain { eos } => eos,
            Template::Model { end_of_text, .. } => end_of_text,
        }
    }

    fn system_text(conv: &Conversation, opts: &RenderOptions) -> Option<String> {
        let own: Vec<&str> = conv
            .messages
            .iter()
            .filter(|m| m.role == Role::System)
            .map(|m| m.content.as_str())
            .collect();
        let system = if own.is_empty() {
            opts.system.clone()
        } else {
            Some(own.join("\n"))
        };
        let persona = match &opts.persona {
            Persona::None => None,
            Persona::Fixed(name) => Some(name.clone()),
            Persona::FromSpeaker => conv
                .messages
                .iter()
                .find(|m| m.role == Role::Assistant)
                .and_then(|m| m.speaker.clone()),
        };
        let lines: Vec<String> = system
            .into_iter()
            .chain(persona.map(|p| chatforge_data::personas::persona_line(&p, opts.channel.as_deref())))
            .filter(|l| !l.trim().is_empty())
            .collect();
        (!lines.is_empty()).then(|| lines.join("\n"))
    }

    /// The conversation as the model's template takes it: the system text (its own system
    /// messages or the default, and the persona line) first, then the turns.
    fn model_messages(conv: &Conversation, opts: &RenderOptions) -> Vec<Message> {
        let system = Self::system_text(conv, opts).map(|content| Message {
            role: "system".into(),
            content,
        });
        let turns = conv
            .messages
            .iter()
            .filter(|m| m.role != Role::System)
            .map(|m| Message {
                role: if m.role == Role::User { "user" } else { "assistant" }.into(),
                content: if m.role == Role::User {
                    Self::user_text(conv, &m.content, opts)
                } else {
                    m.content.clone()
                },
            });
        system.into_iter().chain(turns).collect()
    }

    fn user_text(conv: &Conversation, content: &str, opts: &RenderOptions) -> String {
        match conv.domain().filter(|_| opts.domain_tag) {
            Some(d) => {
                let tag = chatforge_data::domain_tag(d);
                if content.starts_with(&tag) {
                    content.to_string()
                } else {
                    format!("{tag}{content}")
                }
            }
            None => content.to_string(),
        }
    }

    /// This template as a Jinja string for Hugging Face's `tokenizer.apply_chat_template`: the same
    /// text as [`render_prompt`](Self::render_prompt) (with `add_generation_prompt`) and
    /// [`render_chat`](Self::render_chat) (without). `system_prompt`, `persona` and `channel` are
    /// optional variables (pass them as keyword arguments); domain tags are not rendered.
    pub fn jinja_template(&self) -> String {
        // The system block, as `system_text` builds it: the conversation's own system messages
        // (joined by newlines) or the default, then the persona line; blank lines dropped.
        const SYSTEM: &str = "{%- set ns = namespace(sys=[], lines=[]) -%}\
            {%- for m in messages if m['role'] == 'system' -%}{%- set ns.sys = ns.sys + [m['content']] -%}{%- endfor -%}\
            {%- if ns.sys -%}{%- set s = ns.sys | join('\\n') -%}\
            {%- elif system_prompt is defined and system_prompt -%}{%- set s = system_prompt -%}\
            {%- else -%}{%- set s = '' -%}{%- endif -%}\
            {%- if s | trim -%}{%- set ns.lines = ns.lines + [s] -%}{%- endif -%}\
            {%- if persona is defined and persona -%}\
            {%- if channel is defined and channel | trim -%}{%- set ns.lines = ns.lines + ['Channel: ' + channel | trim + ' | Respond as ' + persona + ':'] -%}\
            {%- else -%}{%- set ns.lines = ns.lines + ['Respond as ' + persona + ':'] -%}{%- endif -%}{%- endif -%}";
        match self.template {
            Template::Model { .. } => self
                .model_template()
                .map(|t| t.source().to_string())
                .unwrap_or_default(),
            Template::Chat { .. } => format!(
                "{SYSTEM}\
                {{%- if ns.lines -%}}<|system|>{{{{ ns.lines | join('\\n') }}}}<|end|>{{%- endif -%}}\
                {{%- for m in messages if m['role'] != 'system' -%}}\
                {{%- if m['role'] == 'user' -%}}<|user|>{{{{ m['content'] }}}}<|end|>\
                {{%- else -%}}<|assistant|>{{{{ m['content'] }}}}<|end|>{{%- endif -%}}\
                {{%- endfor -%}}\
                {{%- if add_generation_prompt -%}}<|assistant|>{{%- endif -%}}"
            ),
            Template::Plain { eos } => {
                let end = match eos.and_then(|id| self.inner.id_to_token(id)) {
                    Some(t) => t,
                    None => "{{ '\\n' }}".to_string(),
                };
                format!(
                    "{SYSTEM}\
                    {{%- if ns.lines -%}}{{{{ 'System: ' + (ns.lines | join('\\n')) + '\\n' }}}}{{%- endif -%}}\
                    {{%- for m in messages if m['role'] != 'system' -%}}\
                    {{%- if m['role'] == 'user' -%}}{{{{ 'User: ' + m['content'] + '\\n' }}}}\
                    {{%- else -%}}{{{{ 'Assistant: ' + m['content'] }}}}{end}{{%- endif -%}}\
                    {{%- endfor -%}}\
                    {{%- if add_generation_prompt -%}}Assistant:{{%- endif -%}}"
                )
            }
        }
    }

    /// Renders a whole conversation for training: ids and the loss mask (assistant content and
    /// the token that ends it).
    pub fn render_chat(&self, conv: &Conversation, opts: &RenderOptions) -> Result<Rendered> {
        self.render_with(&mut self.encoder(), conv, opts)
    }

    /// [`render_chat`](Self::render_chat) with a long-lived encoder (bulk tokenization).
    pub fn render_with(
        &self,
        enc: &mut Encoder<'_>,
        conv: &Conversation,
        opts: &RenderOptions,
    ) -> Result<Rendered> {
        let mut out = Rendered::default();
        self.render_into(enc, conv, opts, &mut out)?;
        Ok(out)
    }

    /// Renders a preference pair: the prompt with the chosen reply and with the rejected one, each
    /// masked from where it leaves the rendered prompt (TRL's rule: the reply is everything after
    /// the longest prefix both share with the prompt rendered alone, generation prompt included).
    pub fn render_pair(
        &self,
        enc: &mut Encoder<'_>,
        pair: &Conversation,
        opts: &RenderOptions,
    ) -> Result<[Rendered; 2]> {
        let side = |messages: Vec<chatforge_data::Message>| Conversation {
            messages,
            meta: pair.meta.clone(),
            ..Default::default()
        };
        let prompt = self.render_prompt(&side(pair.messages.clone()), opts)?;
        let mut out = [
            self.render_with(enc, &side(pair.with_reply(true)), opts)?,
            self.render_with(enc, &side(pair.with_reply(false)), opts)?,
        ];
        let shared = out
            .iter()
            .map(|r| prompt.iter().zip(&r.ids).take_while(|(a, b)| a == b).count())
            .min()
            .unwrap_or(0);
        for (r, name) in out.iter_mut().zip(["chosen", "rejected"]) {
            if r.ids.len() <= shared {
                return Err(Error::Invalid(format!("the {name} reply renders to no tokens")));
            }
            r.mask = (0..r.ids.len()).map(|i| u8::from(i >= shared)).collect();
        }
        Ok(out)
    }

    /// Renders the conversation so far and opens the assistant's turn: the prompt to generate from.
    pub fn render_prompt(&self, conv: &Conversation, opts: &RenderOptions) -> Result<Vec<u32>> {
        if let Some(m) = &self.model {
            let messages = Self::model_messages(conv, opts);
            return crate::hf_template::encode(&m.1, &m.0.render(&messages, true)?, &[]).map(|r| r.ids);
        }
        let mut enc = self.encoder();
        let mut out = Rendered::default();
        self.render_into(&mut enc, conv, opts, &mut out)?;
        match self.template {
            Template::Chat { assistant, .. } => out.push(&[assistant], false),
            // (A model's own template returned above.)
            Template::Plain { .. } | Template::Model { .. } => out.text(&mut enc, "Assistant:", false)?,
        }
        Ok(out.ids)
    }

    fn render_into(
        &self,
        enc: &mut Encoder<'_>,
        conv: &Conversation,
        opts: &RenderOptions,
        out: &mut Rendered,
    ) -> Result<()> {
        if conv.is_text() {
            // A plain-text document: its text and the end of text, every token learnt.
            for m in &conv.messages {
                out.text(enc, &m.content, true)?;
            }
            if let Some(eot) = self.end_of_text() {
                out.push(&[eot], true);
            }
            return Ok(());
        }
        if let Some(m) = &self.model {
            let (text, spans) = m.0.render_with_spans(&Self::model_messages(conv, opts))?;
            let r = crate::hf_template::encode(&m.1, &text, &spans)?;
            out.ids.extend_from_slice(&r.ids);
            out.mask.extend_from_slice(&r.mask);
            return Ok(());
        }
        let system = Self::system_text(conv, opts);
        let turns = conv.messages.iter().filter(|m| m.role != Role::System);
        match self.template {
            Template::Chat {
                system: sys,
                user,
                assistant,
                end,
                ..
            } => {
                if let Some(text) = system {
                    out.push(&[sys], false);
                    out.text(enc, &text, false)?;
                    out.push(&[end], false);
                }
                for m in turns {
                    if m.role == Role::User {
                        out.push(&[user], false);
                        out.text(enc, &Self::user_text(conv, &m.content, opts), false)?;
                        out.push(&[end], false);
                    } else {
                        out.push(&[assistant], false);
                        out.text(enc, &m.content, true)?;
                        out.push(&[end], true);
                    }
                }
            }
            // (A model's own template returned above.)
            Template::Plain { eos } | Template::Model { eos, .. } => {
                if let Some(text) = system {
                    out.text(enc, &format!("System: {text}\n"), false)?;
                }
                for m in turns {
                    if m.role == Role::User {
                        let text = Self::user_text(conv, &m.content, opts);
                        out.text(enc, &format!("User: {text}\n"), false)?;
                    } else {
                        out.text(enc, "Assistant:", false)?;
                        out.text(enc, &format!(" {}", m.content), true)?;
                        match eos {
                            Some(eos) => out.push(&[eos], true),
                            None => out.text(enc, "\n", true)?,
                        }
                    }
                }
            }
        }
        Ok(())
    }
}
