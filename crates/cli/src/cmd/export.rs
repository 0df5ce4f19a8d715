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
    /// A run directory, a Hugging Face folder (GPT-2 or Llama family) or Hub id (distilgpt2, org/name@revision), or a GGUF file
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
            say!("{}", run_graph(&path)?);
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

/// Runs the ONNX graph (chatforge's interpreter, node by node) on a sample prompt and on one more
/// token through its KV cache, and compares the logits with the decoder's on the same weights.
pub fn run_graph(path: &std::path::Path) -> anyhow::Result<String> {
    use chatforge_export::onnx::run::{Value, run};
    use chatforge_infer::{Checkpoint, LoadedModel, WeightType};
    use prost::Message;
    let file = if path.is_dir() {
        path.join("model.onnx")
    } else {
        path.to_path_buf()
    };
    let dir = file.parent().unwrap_or(std::path::Path::new("."));
    let model = chatforge_model::io::onnx::ModelProto::decode(std::fs::read(&file)?.as_slice())?;
    let ours = LoadedModel::open(dir, &Checkpoint::Best, None, WeightType::F32)?;
    let cfg = &ours.config;
    // The cache holds the key/value heads.
    let (h, d, v) = (cfg.n_kv_head, cfg.head_dim(), cfg.vocab_size);
    let mut ids = ours.tokenizer.encode("Hello! How can I help you today?")?;
    ids.truncate(cfg.n_ctx.saturating_sub(1).max(1));
    let int8 = model
        .metadata_props
        .iter()
        .any(|p| p.key == "quantization" && p.value == "int8");
    // Relative to the largest logit: f32 graphs agree to rounding; int8 ones quantise activations.
    let bound = if int8 { 0.1 } else { 1e-4 };
    let feed = |new: &[u32], past: Option<&std::collections::HashMap<String, Value>>, start: usize| {
        let t = new.len();
        let mut inputs = std::collections::HashMap::new();
        inputs.insert(
            "input_ids".to_string(),
            Value::i64(vec![1, t], new.iter().map(|&i| i64::from(i)).collect()),
        );
        inputs.insert(
            "attention_mask".to_string(),
            Value::i64(vec![1, start + t], vec![1; start + t]),
        );
        inputs.insert(
            "position_ids".to_string(),
            Value::i64(vec![1, t], (start..start + t).map(|p| p as i64).collect()),
        );
        for i in 0..cfg.n_layer {
            for kv in ["key", "value"] {
                let value = match past {
                    Some(p) => p[&format!("present.{i}.{kv}")].clone(),
                    None => Value::f32(vec![1, h, 0, d], Vec::new()),
                };
                inputs.insert(format!("past_key_values.{i}.{kv}"), value);
            }
        }
        run(&model, &file, inputs)
    };
    let first = feed(&ids, None, 0)?;
    let graph = first["logits"].as_f32()?.data.clone();
    let mut seq = ours.engine.new_sequence();
    let want = ours.engine.forward(&mut [&mut seq], &[&ids], true)?;
    let last = &want[want.len() - v..];
    let next = (0..v).max_by(|&a, &b| last[a].total_cmp(&last[b])).unwrap_or(0) as u32;
    let second = feed(&[next], Some(&first), ids.len())?;
    let graph_next = second["logits"].as_f32()?.data.clone();
    let want_next = ours.engine.forward(&mut [&mut seq], &[&[next]], true)?;
    let scale = want
        .iter()
        .chain(&want_next)
        .fold(0f32, |m, x| m.max(x.abs()))
        .max(1e-6);
    let diff = graph
        .iter()
        .zip(&want)
        .chain(graph_next.iter().zip(&want_next))
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    if graph.len() != want.len() || graph_next.len() != want_next.len() || diff / scale > bound {
        anyhow::bail!(
            "the graph's logits differ from the decoder's by {diff:.3e} ({:.3e} of the largest; the bound is {bound:.0e})",
            diff / scale
        );
    }
    Ok(format!(
        "ran the graph on {} tokens and 1 more through its KV cache: logits within {:.1e} of the decoder's (relative {:.1e})",
        ids.len(),
        diff,
        diff / scale
    ))
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
