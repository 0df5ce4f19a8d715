//! `chatforge export`: a model in the formats other tools read, and `export info` to inspect one.

use std::path::PathBuf;

use chatforge_export::{ExportOptions, Format, GgufQuant};
use chatforge_infer::ModelSource;
use clap::{Args, Subcommand};

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ExportArgs {
    #[command(subcommand)]
    pub command: Option<ExportCommand>,
    #[command(flatten)]
    pub write: Option<WriteArgs>,
}

#[derive(Subcommand)]
pub enum ExportCommand {
    /// Show what an export (or HF folder, or GGUF file) holds: format, parameters, dtypes, size,
    /// tokenizer, and the manifest of the run that produced it
    Info {
        /// An export: a Hugging Face folder, an ONNX folder, or a GGUF file (or its folder)
        path: PathBuf,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Check an ONNX export without running it: opset, KV-cache inputs and outputs, that every
    /// node reads defined values, and every weight's bytes (inline or external)
    Verify {
        /// An ONNX export folder (model.onnx)
        path: PathBuf,
    },
}

#[derive(Args)]
pub struct WriteArgs {
    /// A run directory, a Hugging Face GPT-2-family folder or Hub id (distilgpt2, org/name@revision), or a GGUF file
    #[arg(long)]
    pub model: PathBuf,
    /// For a run: best, latest, a step number, or a checkpoint folder
    #[arg(long, default_value = "best")]
    pub checkpoint: chatforge_infer::Checkpoint,
    /// Tokenizer to use instead of the one beside the model
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// A LoRA adapter to fold in: a PEFT folder, or the name of one in the run's adapters/
    #[arg(long)]
    pub adapter: Option<String>,
    /// hf (transformers folder), onnx (onnxruntime, with KV cache) or gguf (llama.cpp)
    #[arg(long, value_parser = super::parse::<Format>)]
    pub format: Format,
    /// GGUF weight type: f32, f16, q8_0 or q4_0
    #[arg(long, default_value = "f32", value_parser = super::parse::<GgufQuant>)]
    pub quant: GgufQuant,
    /// ONNX: int8 weights for the linear layers (dynamic quantisation of their inputs)
    #[arg(long, value_parser = ["int8"])]
    pub quantize: Option<String>,
    /// ONNX: store the weights in model.onnx.data (automatic past 2 GB)
    #[arg(long)]
    pub external_data: bool,
    /// Output directory; for GGUF, a path ending in .gguf is written as that one file
    #[arg(short, long)]
    pub out: PathBuf,
    /// Replace the output if it exists
    #[arg(long)]
    pub force: bool,
}

impl WriteArgs {
    /// The flags' defaults for `model` in `format` to `out` (replacing an earlier export), for
    /// callers that export in code.
    pub fn new(model: PathBuf, format: Format, out: PathBuf) -> WriteArgs {
        WriteArgs {
            model,
            checkpoint: chatforge_infer::Checkpoint::Best,
            tokenizer: None,
            adapter: None,
            format,
            quant: GgufQuant::F32,
            quantize: None,
            external_data: false,
            out,
            force: true,
        }
    }
}

pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    match (args.command, args.write) {
        (Some(ExportCommand::Info { path, json }), _) => info(&path, json),
        (Some(ExportCommand::Verify { path }), _) => {
            let s = chatforge_export::onnx::verify(&path)?;
            say!(
                "ok: opset {}, {} layers with KV cache, {} nodes, {} initializers ({} external), {:.2} M parameters",
                s.opset,
                s.layers,
                s.nodes,
                s.initializers,
                s.external,
                s.parameters as f64 / 1e6
            );
            Ok(())
        }
        (None, Some(w)) => write(&w),
        (None, None) => anyhow::bail!("give --model, --format and -o, or `export info PATH`"),
    }
}

pub fn write(a: &WriteArgs) -> anyhow::Result<()> {
    if a.quant != GgufQuant::F32 && a.format != Format::Gguf {
        anyhow::bail!("--quant {} applies to --format gguf", a.quant.name());
    }
    if (a.quantize.is_some() || a.external_data) && a.format != Format::Onnx {
        anyhow::bail!("--quantize and --external-data apply to --format onnx");
    }
    let model = super::hub::model(&a.model)?;
    let tokenizer = a.tokenizer.as_deref().map(super::hub::tokenizer).transpose()?;
    let src = ModelSource::open(&model, &a.checkpoint, tokenizer.as_deref(), a.adapter.as_deref())?;
    let t0 = std::time::Instant::now();
    let manifest = chatforge_export::export(
        &src,
        &ExportOptions {
            format: a.format,
            gguf_quant: a.quant,
            onnx: chatforge_export::onnx::OnnxOptions {
                int8: a.quantize.is_some(),
                external_data: a.external_data,
            },
            force: a.force,
        },
        &a.out,
    )?;
    let bytes: u64 = manifest["files"]
        .as_array()
        .map(|f| f.iter().filter_map(|x| x["bytes"].as_u64()).sum())
        .unwrap_or(0);
    say!(
        "exported {} ({:.1} M parameters{}) as {:?} to {} ({:.1} MB) in {:.1} s",
        a.model.display(),
        src.config.n_params() as f64 / 1e6,
        src.adapter
            .as_ref()
            .map_or(String::new(), |ad| format!(", adapter {} merged", ad.display())),
        a.format,
        a.out.display(),
        bytes as f64 / 1e6,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn info(path: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let i = chatforge_export::info(path)?;
    if json {
        say!("{}", serde_json::to_string_pretty(&i)?);
        return Ok(());
    }
    say!("{}: {}", i.format, i.path);
    say!(
        "  {} tensors, {:.2} M parameters, {:.1} MB on disk",
        i.tensors,
        i.parameters as f64 / 1e6,
        i.bytes as f64 / 1e6
    );
    let dtypes: Vec<String> = i.dtypes.iter().map(|(d, n)| format!("{d} ×{n}")).collect();
    say!("  dtypes: {}", dtypes.join(", "));
    say!("  tokenizer: {}", i.tokenizer);
    if let Some(m) = &i.manifest {
        say!(
            "  exported from {} ({}, checkpoint {}), quantization {}",
            m["source"]["path"].as_str().unwrap_or("?"),
            m["source"]["kind"].as_str().unwrap_or("?"),
            m["source"]["checkpoint"].as_str().unwrap_or("?"),
            m["quantization"].as_str().unwrap_or("none")
        );
        if let Some(r) = m.get("run_manifest").filter(|r| !r.is_null()) {
            say!(
                "  run: mode {}, seed {}, status {}",
                r["config"]["train"]["mode"].as_str().unwrap_or("?"),
                r["seed"],
                r["status"].as_str().unwrap_or("?")
            );
        }
    }
    Ok(())
}
