//! A multi-turn chat: the history, rendered through the training template and trimmed from the
//! oldest turn to fit the context, and the reply streamed as it is generated.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use chatforge_data::{Conversation, Message, Role};
use chatforge_tokenizer::{Persona, RenderOptions};

use crate::generate::{Output, Request, generate};
use crate::sampling::Sampling;
use crate::source::{LoadedModel, template_stop_strings};
use crate::{Error, Result};

/// A reply's text as it streams: the plain template puts a space after "Assistant:", so the
/// reply starts at its first word.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReplyText {
    started: bool,
}

impl ReplyText {
    /// The piece to show (`None` while only leading spaces have come).
    pub fn piece<'a>(&mut self, piece: &'a str) -> Option<&'a str> {
        let piece = if self.started { piece } else { piece.trim_start() };
        self.started |= !piece.is_empty();
        (!piece.is_empty()).then_some(piece)
    }
}

/// The state of a chat; the model is passed to each call, so it can change between turns (a
/// persona's adapter, say).
#[derive(Debug, Clone)]
pub struct ChatSession {
    /// The conversation so far (system prompt, user and assistant turns).
    pub conversation: Conversation,
    pub options: RenderOptions,
    pub sampling: Sampling,
    pub max_new_tokens: usize,
    /// Stop strings on top of the template's own.
    pub stop_strings: Vec<String>,
    turns: u64,
    /// Turns dropped from the prompt (not from the history) to fit the context.
    pub trimmed: usize,
}

impl ChatSession {
    pub fn new(options: RenderOptions, sampling: Sampling, max_new_tokens: usize) -> Self {
        ChatSession {
            conversation: Conversation::default(),
            options,
            sampling,
            max_new_tokens,
            stop_strings: Vec::new(),
            turns: 0,
            trimmed: 0,
        }
    }

    /// Conditions user turns on a domain tag, as the data layer did in training.
    pub fn set_domain(&mut self, domain: Option<&str>) {
        match domain {
            Some(d) => {
                self.conversation.meta.insert("domain".into(), d.into());
                self.options.domain_tag = true;
            }
            None => {
                self.conversation.meta.remove("domain");
                self.options.domain_tag = false;
            }
        }
    }

    pub fn set_persona(&mut self, name: Option<&str>) {
        self.options.persona = name.map_or(Persona::None, |n| Persona::Fixed(n.to_string()));
    }

    /// The channel the persona speaks in (`Channel: {channel} | Respond as …`, as
    /// `train --with-channel` trained it).
    pub fn set_channel(&mut self, channel: Option<&str>) {
        self.options.channel = channel.map(str::to_string);
    }

    /// Forgets the history (keeps the system prompt, persona and domain).
    pub fn reset(&mut self) {
        self.conversation.messages.clear();
        self.trimmed = 0;
    }

    /// The prompt for the next reply: the history, dropping the oldest turns until it leaves
    /// room for the reply.
    pub fn prompt(&mut self, model: &LoadedModel) -> Result<Vec<u32>> {
        let tok = &model.tokenizer;
        let n_ctx = model.config.n_ctx;
        let budget = crate::generate::prompt_budget(n_ctx, self.max_new_tokens);
        let mut conv = self.conversation.clone();
        self.trimmed = 0;
        loop {
            let ids = tok.render_prompt(&conv, &self.options)?;
            if ids.len() <= budget {
                return Ok(ids);
            }
            // Drop the oldest non-system message; the newest user message always stays.
            let turns: Vec<usize> = (0..conv.messages.len())
                .filter(|&i| conv.messages[i].role != Role::System)
                .collect();
            if turns.len() <= 1 {
                return Err(Error::Invalid(format!(
                    "the message takes {} tokens with the template; the model's context is {n_ctx} and {} are kept for the reply",
                    ids.len(),
                    n_ctx - budget
                )));
            }
            conv.messages.remove(turns[0]);
            self.trimmed += 1;
        }
    }

    /// Adds a user message and returns the request for the reply (the prompt with the history
    /// trimmed to fit, the template's stops and the user's, this turn's seed). The reply is
    /// recorded with [`ChatSession::record_reply`]; on an error the message is not kept.
    pub fn request(&mut self, model: &LoadedModel, user: &str) -> Result<Request> {
        self.conversation.messages.push(Message::new(Role::User, user));
        let prompt = match self.prompt(model) {
            Ok(p) => p,
            Err(e) => {
                self.conversation.messages.pop();
                return Err(e);
            }
        };
        let tok = &model.tokenizer;
        let mut stops = template_stop_strings(tok);
        stops.extend(self.stop_strings.iter().cloned());
        let req = Request {
            prompt,
            max_new_tokens: self.max_new_tokens,
            // A new seed per turn: the same session replays exactly, turns do not repeat draws.
            sampling: Sampling {
                seed: self.sampling.seed.wrapping_add(self.turns),
                ..self.sampling
            },
            stop_ids: tok.stop_ids(),
            stop_strings: stops,
        };
        self.turns += 1;
        Ok(req)
    }

    /// Adds the reply to the history, trimmed as [`ReplyText`] shows it.
    pub fn record_reply(&mut self, out: &mut Output) {
        out.text = out.text.trim().to_string();
        self.conversation
            .messages
            .push(Message::new(Role::Assistant, out.text.clone()));
    }

    /// Sends a user message and generates the reply, passing its text to `on_text` as it comes.
    /// The reply joins the history (an interrupted one too, as far as it got).
    pub fn send(
        &mut self,
        model: &LoadedModel,
        user: &str,
        cancel: Option<&AtomicBool>,
        mut on_text: impl FnMut(&str),
    ) -> Result<Output> {
        let req = self.request(model, user)?;
        let mut reply = ReplyText::default();
        let mut out = generate(
            &model.engine,
            Some(&model.tokenizer),
            std::slice::from_ref(&req),
            1,
            cancel,
            |_, piece| {
                if let Some(p) = reply.piece(piece) {
                    on_text(p);
                }
            },
        )?;
        let mut out = out.pop().ok_or_else(|| Error::Invalid("no reply".into()))?;
        self.record_reply(&mut out);
        Ok(out)
    }

    /// Writes the conversation as one line of canonical JSONL.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut conv = self.conversation.clone();
        if let Some(system) = &self.options.system
            && !conv.messages.iter().any(|m| m.role == Role::System)
        {
            conv.messages
                .insert(0, Message::new(Role::System, system.clone()));
        }
        chatforge_data::write_jsonl(path, std::slice::from_ref(&conv))?;
        Ok(())
    }
}
