//! `chatforge lora`: adapters outside training (merging one into its base).

use std::path::PathBuf;

use chatforge_export::{ExportOptions, Format, export};
use chatforge_run::ModelSource;
use chatforge_run::source::Checkpoint;
use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub enum LoraCommand {
    /// Fold an adapter into its base: a plain HF folder that needs no PEFT to load
    Merge(MergeArgs),
}

#[derive(Args)]
pub struct MergeArgs {
    /// The base model: an HF folder (GPT-2 or Llama family), a Hub id or a run
    #[arg(long)]
    pub base: PathBuf,
    /// A PEFT LoRA folder (or the name of one in the base run's adapters/)
    #[arg(long)]
    pub adapter: String,
    /// Where to write the merged model (a Hugging Face folder)
    #[arg(short, long)]
    pub out: PathBuf,
    /// Replace OUT if it exists
    #[arg(long)]
    pub force: bool,
}

pub fn run(cmd: LoraCommand) -> anyhow::Result<()> {
    match cmd {
        LoraCommand::Merge(a) => merge(&a),
    }
}

/// The merged model is an HF export of the base with the adapter folded in: the same writer as
/// `chatforge export --format hf` (tokenizer, chat template, special tokens and all).
fn merge(a: &MergeArgs) -> anyhow::Result<()> {
    let base = super::hub::model(&a.base)?;
    let src = ModelSource::open(&base, &Checkpoint::Best, None, Some(&a.adapter))?;
    let opts = ExportOptions {
        format: Format::Hf,
        gguf_quant: Default::default(),
        onnx: Default::default(),
        force: a.force,
    };
    export(&src, &opts, &a.out)?;
    say!(
        "{} + {} → {} (HF folder: config.json, model.safetensors, tokenizer and chat template)",
        src.weights_dir.display(),
        src.adapter
            .as_ref()
            .map_or_else(|| a.adapter.clone(), |p| p.display().to_string()),
        a.out.display()
    );
    Ok(())
}
