//! `chatforge lora`: adapters outside training (merging one into its base).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use candle_core::Device;
use chatforge_model::{load_hf, save_weights};
use chatforge_run::source::{Checkpoint, find_adapter, resolve, with_adapter};
use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub enum LoraCommand {
    /// Fold an adapter into its base: a plain HF folder that needs no PEFT to load
    Merge(MergeArgs),
}

#[derive(Args)]
pub struct MergeArgs {
    /// The base model: an HF GPT-2-family folder or a run
    #[arg(long)]
    pub base: PathBuf,
    /// A PEFT LoRA folder (or the name of one in the base run's adapters/)
    #[arg(long)]
    pub adapter: String,
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

fn merge(a: &MergeArgs) -> anyhow::Result<()> {
    if a.out.exists() && !a.force {
        bail!("{} exists: pass --force to replace it", a.out.display());
    }
    let (_, base_dir) = resolve(&a.base, &Checkpoint::Best)?;
    let (cfg, base) = load_hf(&base_dir, &Device::Cpu)?;
    let adapter = find_adapter(&a.base, &a.adapter)?;
    let merged = with_adapter(&base, &cfg, &adapter)?;
    let merged: BTreeMap<String, candle_core::Tensor> = merged.into_iter().collect();
    chatforge_data::atomic_dir(&a.out, |tmp| -> anyhow::Result<()> {
        save_weights(&merged, &tmp.join("model.safetensors"))?;
        std::fs::write(
            tmp.join("config.json"),
            serde_json::to_string_pretty(&cfg.to_hf())?,
        )?;
        // The tokenizer travels with the weights: from the base folder, or the run above it.
        for dir in [base_dir.clone(), a.base.clone()] {
            for f in [
                "tokenizer.json",
                "vocab.json",
                "merges.txt",
                "tokenizer_config.json",
                "special_tokens_map.json",
                "generation_config.json",
            ] {
                if dir.join(f).is_file() && !tmp.join(f).exists() {
                    std::fs::copy(dir.join(f), tmp.join(f)).with_context(|| format!("copying {f}"))?;
                }
            }
        }
        Ok(())
    })?;
    say!(
        "{} + {} → {} (HF folder: config.json, model.safetensors)",
        base_dir.display(),
        adapter.display(),
        a.out.display()
    );
    Ok(())
}
