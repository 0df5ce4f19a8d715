pub mod chat;
pub mod data;
#[cfg(feature = "mpi")]
pub mod dist;
pub mod eval;
pub mod export;
pub mod generate;
pub mod hub;
pub mod lora;
pub mod personas;
pub mod pipeline;
pub mod serve;
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
            channel: None,
        }
    }
}

/// Which model to load, shared by `chat`, `generate` and `eval`.
#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// A run directory, a Hugging Face folder (GPT-2 or Llama family) or Hub id (distilgpt2, org/name@revision), or a GGUF file (or an export folder holding one)
    #[arg(long)]
    pub model: std::path::PathBuf,
    /// For a run: best, latest, a step number, or a checkpoint folder
    #[arg(long, default_value = "best")]
    pub checkpoint: chatforge_infer::Checkpoint,
    /// Tokenizer to use instead of the one beside the model
    #[arg(long)]
    pub tokenizer: Option<std::path::PathBuf>,
    /// Precision of the decoder's weights: f32; bf16 (half the memory traffic, ~1e-2 logit error);
    /// q8 (int8 in blocks of 32 with a scale each, 1.125 bytes a weight, ~1e-2 logit error)
    #[arg(long, default_value = "f32")]
    pub weights: chatforge_infer::WeightType,
    /// A LoRA adapter to apply: a PEFT folder, or the name of one in the run's adapters/
    #[arg(long)]
    pub adapter: Option<String>,
}

impl ModelArgs {
    pub fn load(&self) -> anyhow::Result<chatforge_infer::LoadedModel> {
        let model = hub::model(&self.model)?;
        let tokenizer = self.tokenizer.as_deref().map(hub::tokenizer).transpose()?;
        let m = chatforge_infer::LoadedModel::open_with(
            &model,
            &self.checkpoint,
            tokenizer.as_deref(),
            self.adapter.as_deref(),
            self.weights,
        )?;
        eprintln!(
            "model: {} ({:.1} M parameters, context {}, {}), weights {}",
            self.model.display(),
            m.config.n_params() as f64 / 1e6,
            m.config.n_ctx,
            if m.chat {
                "chat template"
            } else {
                "no chat template: raw text"
            },
            m.weights_dir.display()
        );
        if let Some(a) = &m.adapter {
            eprintln!("adapter: {}", a.display());
        }
        Ok(m)
    }
}

/// Sampling settings, shared by `chat` and `generate`; transformers' `generate` semantics. A
/// setting not given comes from the model's `generation_config.json`, else chatforge's chat
/// default (shown in brackets).
#[derive(Args, Clone, Debug)]
pub struct SamplingArgs {
    /// 0 means greedy [default: 0.8]
    #[arg(long, allow_negative_numbers = true)]
    pub temperature: Option<f32>,
    /// Keep the k most likely tokens, 0 for all [default: 40]
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Keep the most likely tokens up to this probability mass, in (0, 1] [default: 0.95]
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Penalise tokens already present, 1 for off [default: 1.1 when sampling, 1 when greedy]
    #[arg(long)]
    pub repetition_penalty: Option<f32>,
    /// Seed of the sampler
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Most tokens per reply [default: 200]
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Stop when this text appears (repeatable; not included in the reply)
    #[arg(long)]
    pub stop: Vec<String>,
}

impl SamplingArgs {
    /// The settings for `m`: these flags over its generation config over chatforge's defaults.
    pub fn sampling(&self, m: &chatforge_infer::LoadedModel) -> anyhow::Result<chatforge_infer::Sampling> {
        let s = m.generation.resolve(chatforge_infer::SamplingGiven {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            repetition_penalty: self.repetition_penalty,
            seed: Some(self.seed),
        });
        s.validate()?;
        Ok(s)
    }

    pub fn max_new_tokens(&self, m: &chatforge_infer::LoadedModel) -> usize {
        m.generation.max_new_tokens(self.max_new_tokens)
    }
}

/// Conditioning at inference, rendered as in training.
#[derive(Args, Clone, Debug, Default)]
pub struct ConditionArgs {
    /// System prompt
    #[arg(long)]
    pub system: Option<String>,
    /// Respond as this persona ("Respond as NAME:" in the system turn, as in training)
    #[arg(long)]
    pub persona: Option<String>,
    /// Domain tag for user turns ("#tag ", as `data import --domain-tag` wrote in training)
    #[arg(long)]
    pub domain: Option<String>,
    /// The channel the persona speaks in ("Channel: NAME | Respond as …", as `train --with-channel` trained it)
    #[arg(long)]
    pub channel: Option<String>,
}

impl ConditionArgs {
    pub fn options(&self) -> RenderOptions {
        RenderOptions {
            system: self.system.clone(),
            persona: self.persona.clone().map_or(Persona::None, Persona::Fixed),
            domain_tag: self.domain.is_some(),
            channel: self.channel.clone(),
        }
    }

    /// A one-message conversation in this domain.
    pub fn conversation(&self, user: &str) -> chatforge_data::Conversation {
        let mut c = chatforge_data::Conversation::new(vec![chatforge_data::Message::new(
            chatforge_data::Role::User,
            user,
        )]);
        if let Some(d) = &self.domain {
            c.meta.insert("domain".into(), d.clone().into());
        }
        c
    }
}

/// Sets a flag on Ctrl-C instead of ending the process (once per process; later calls reuse it).
pub fn interrupt_flag() -> &'static std::sync::atomic::AtomicBool {
    use std::sync::atomic::{AtomicBool, Ordering};
    static FLAG: AtomicBool = AtomicBool::new(false);
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        if let Err(e) = ctrlc::set_handler(|| FLAG.store(true, Ordering::SeqCst)) {
            eprintln!("warning: Ctrl-C will end the program: {e}");
        }
    });
    &FLAG
}

/// clap's value parser for a library type's `FromStr`: its error message as clap shows it.
pub fn parse<T: std::str::FromStr>(s: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    s.parse().map_err(|e: T::Err| e.to_string())
}

/// `chatforge __job`: one job of the service, in this process (a worker started it), or as one
/// of the processes of an MPI launch the worker made for a train job. Whether it succeeded.
pub fn job(start: Option<&str>) -> bool {
    let stop = interrupt_flag();
    match chatforge_mpi::launched_size() {
        None => chatforge_serve::task::run_child(stop, start, &chatforge_train::Solo),
        #[cfg(feature = "mpi")]
        Some(_) => dist::job(start, stop),
        #[cfg(not(feature = "mpi"))]
        Some(n) => {
            chatforge_serve::task::report_failure(chatforge_mpi::refusal(n));
            false
        }
    }
}
