pub mod bench;
pub mod data;
pub mod pipeline;
pub mod tokenizer;
pub mod train;

use chatforge_tokenizer::{Persona, RenderOptions};
use clap::Args;

/// Chat template options shared by `data show` and `data tokenize`.
#[derive(Args, Clone, Debug, Default)]
pub struct TemplateArgs {
    /// System prompt for conversations that bring none
    #[arg(long)]
    pub system: Option<String>,
    /// Ask the assistant to respond as this persona
    #[arg(long, conflicts_with = "persona_from_speaker")]
    pub persona: Option<String>,
    /// Use the speaker of each conversation's first assistant message as the persona
    #[arg(long)]
    pub persona_from_speaker: bool,
    /// Prefix user turns with the conversation's domain tag (#domain)
    #[arg(long)]
    pub domain_tag: bool,
}

impl TemplateArgs {
    pub fn options(&self) -> RenderOptions {
        RenderOptions {
            system: self.system.clone(),
            persona: match (&self.persona, self.persona_from_speaker) {
                (Some(p), _) => Persona::Fixed(p.clone()),
                (None, true) => Persona::FromSpeaker,
                (None, false) => Persona::None,
            },
            domain_tag: self.domain_tag,
        }
    }
}
