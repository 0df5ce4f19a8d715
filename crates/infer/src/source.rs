//! A model loaded for generation: a [`ModelSource`] with its decoder built, adapters switchable.

use std::path::{Path, PathBuf};

use chatforge_model::lora::is_adapter_dir;
use chatforge_model::{GptConfig, Weights};
use chatforge_run::RunDir;
pub use chatforge_run::source::{Checkpoint, ModelKind, ModelSource, checkpoints, resolve};
use chatforge_run::source::{declares_chat_template, find_adapter, with_adapter};
use chatforge_tokenizer::{ChatTokenizer, Template};

use crate::engine::{Engine, WeightType};
use crate::{Error, Result};

/// A model ready to generate, with its tokenizer and where it came from.
#[derive(Debug, Clone)]
pub struct LoadedModel {
    pub engine: Engine,
    pub tokenizer: ChatTokenizer,
    pub config: GptConfig,
    pub kind: ModelKind,
    /// The run directory or HF folder given.
    pub root: PathBuf,
    /// The folder whose weights were loaded.
    pub weights_dir: PathBuf,
    /// Whether prompts go through the chat template by default (`--raw` otherwise): true for runs
    /// and for folders whose tokenizer has a chat template.
    pub chat: bool,
    /// The LoRA adapter folded into the engine's weights, if any.
    pub adapter: Option<PathBuf>,
    /// Decoding defaults from the model's `generation_config.json` (beside the weights, in the
    /// run or folder, or beside a LoRA run's base).
    pub generation: crate::GenerationConfig,
    /// The base weights before any adapter, kept so adapters can be switched without reloading.
    base: Option<Weights>,
    weight_type: WeightType,
}

impl LoadedModel {
    /// The request for the reply to `conv`, as `chatforge generate` makes it: through the chat
    /// template (stopping at its end tokens and strings), or with `raw` its messages as plain text
    /// (stopping at end-of-text); `stops` are further stop strings.
    pub fn request(
        &self,
        conv: &chatforge_data::Conversation,
        raw: bool,
        opts: &chatforge_tokenizer::RenderOptions,
        sampling: crate::Sampling,
        max_new_tokens: usize,
        stops: &[String],
    ) -> Result<crate::Request> {
        let tok = &self.tokenizer;
        let (prompt, stop_ids, mut stop_strings) = if raw {
            let text: Vec<&str> = conv.messages.iter().map(|m| m.content.as_str()).collect();
            (
                tok.encode(&text.join("\n"))?,
                tok.end_of_text().into_iter().collect(),
                Vec::new(),
            )
        } else {
            (
                tok.render_prompt(conv, opts)?,
                tok.stop_ids(),
                template_stop_strings(tok),
            )
        };
        stop_strings.extend(stops.iter().cloned());
        Ok(crate::Request {
            prompt,
            max_new_tokens,
            sampling,
            stop_ids,
            stop_strings,
        })
    }

    /// Loads `path` (a run, an HF folder or a GGUF file); `tokenizer` overrides the one found
    /// beside it.
    pub fn open(
        path: &Path,
        checkpoint: &Checkpoint,
        tokenizer: Option<&Path>,
        weight_type: WeightType,
    ) -> Result<LoadedModel> {
        Self::open_with(path, checkpoint, tokenizer, None, weight_type)
    }

    /// [`open`](Self::open) with `adapter` (a PEFT LoRA folder, or the name of one in the run's
    /// `adapters/`) folded in.
    pub fn open_with(
        path: &Path,
        checkpoint: &Checkpoint,
        tokenizer: Option<&Path>,
        adapter: Option<&str>,
        weight_type: WeightType,
    ) -> Result<LoadedModel> {
        let src = ModelSource::open(path, checkpoint, tokenizer, adapter)?;
        let engine = Engine::new(&src.config, &src.merged()?, weight_type)?;
        let keep_base =
            src.kind == ModelKind::Run && RunDir::new(path).adapters().is_dir() || src.adapter.is_some();
        let chat = src.kind != ModelKind::Hf
            || matches!(
                src.tokenizer.template(),
                Template::Chat { .. } | Template::Model { .. }
            )
            || declares_chat_template(path);
        let mut dirs = vec![src.weights_dir.as_path(), src.root.as_path()];
        dirs.extend(src.base_dir.as_deref());
        let generation = crate::GenerationConfig::find(&dirs);
        Ok(LoadedModel {
            engine,
            generation,
            tokenizer: src.tokenizer,
            config: src.config,
            kind: src.kind,
            root: src.root,
            weights_dir: src.weights_dir,
            chat,
            adapter: src.adapter,
            base: keep_base.then_some(src.base),
            weight_type,
        })
    }

    /// Switches to another adapter (a folder, or a name in the run's `adapters/`), or back to the
    /// base with `None`, without reading the base again.
    pub fn use_adapter(&mut self, adapter: Option<&str>) -> Result<()> {
        let base = self.base.as_ref().ok_or_else(|| {
            Error::Invalid("this model was loaded without adapters; open it with one to switch".into())
        })?;
        let dir = adapter.map(|a| find_adapter(&self.root, a)).transpose()?;
        let weights = match &dir {
            Some(d) => with_adapter(base, &self.config, d)?,
            None => base.clone(),
        };
        self.engine = Engine::new(&self.config, &weights, self.weight_type)?;
        self.adapter = dir;
        Ok(())
    }

    /// The adapter `name` (a folder, or a name in the run's `adapters/`) to apply per sequence
    /// on this model's weights ([`Engine::forward_adapted`](crate::Engine::forward_adapted)).
    /// Refused when the weights already carry an adapter (a LoRA run's own checkpoint).
    pub fn open_adapter(&self, name: &str) -> Result<crate::Adapter> {
        if let Some(own) = &self.adapter {
            return Err(Error::Invalid(format!(
                "this model is the LoRA adapter {} on its base: adapter {name:?} does not apply on top",
                own.display()
            )));
        }
        crate::Adapter::open(&find_adapter(&self.root, name)?, &self.config)
    }

    /// The adapter of a persona, by its folder name or its persona name (`Alice B.` → `alice-b`).
    pub fn persona_adapter(&self, name: &str) -> Option<String> {
        let names = self.adapter_names();
        let slug = chatforge_data::personas::slug(name);
        [name.to_string(), slug].into_iter().find(|n| names.contains(n))
    }

    /// Adapter names in the run's `adapters/`.
    pub fn adapter_names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(RunDir::new(&self.root).adapters())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| is_adapter_dir(&e.path()))
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        names.sort();
        names
    }

    /// Where evaluation results go: `eval/` of the run, or of the folder (beside a GGUF file).
    pub fn eval_dir(&self) -> PathBuf {
        match self.kind {
            ModelKind::Gguf => self.root.with_extension("eval"),
            _ => RunDir::new(&self.root).eval(),
        }
    }
}

/// Text that ends a reply in the plain template (GPT-2's tokenizer has no end-of-turn token, so
/// a model may go on to write the next `User:` turn).
pub fn template_stop_strings(tok: &ChatTokenizer) -> Vec<String> {
    match tok.template() {
        Template::Chat { .. } | Template::Model { .. } => Vec::new(),
        Template::Plain { .. } => vec!["\nUser:".into(), "\nSystem:".into()],
    }
}
