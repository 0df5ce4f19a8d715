//! `bench eval`: scoring a multiple-choice task (documents/s) on SmolLM2-135M's shape (random
//! weights), chatforge's `eval --task` path beside lm-evaluation-harness's hf backend on the same
//! HF folder and documents.

use std::process::Command;

use chatforge_infer::tasks::{TaskOptions, evaluate_task, read_task};
use chatforge_infer::{Checkpoint, LoadedModel, WeightType};
use chatforge_model::GptConfig;
use serde_json::json;

use crate::{EvalBench, json_of, median, rayon_threads};

pub(crate) fn run(args: &EvalBench) -> anyhow::Result<()> {
    let cfg = GptConfig::smollm2_135m();
    let dir = tempfile::tempdir()?;
    let folder = crate::gguf::model_folder(dir.path(), &cfg)?;
    // lm-eval conditions empty contexts on the end-of-text token: name it, as model folders do.
    let eot = chatforge_tokenizer::specials::END_OF_TEXT;
    std::fs::write(
        folder.join("tokenizer_config.json"),
        json!({"eos_token": eot, "bos_token": eot}).to_string(),
    )?;
    // Four endings per context, as HellaSwag has them; the right one ("is warm.") in turn at
    // each place.
    let endings = ["is warm.", "is cold.", "boils over.", "is empty."];
    let docs: String = (0..args.docs)
        .map(|i| {
            let query = format!("The kettle {i} boils the water for tea, and the cup {}", i * 7);
            let choices: Vec<&str> = (0..4).map(|k| endings[(k + 4 - i % 4) % 4]).collect();
            format!("{}\n", json!({"query": query, "choices": choices, "gold": i % 4}))
        })
        .collect();
    let data = dir.path().join("bench_task.jsonl");
    std::fs::write(&data, docs)?;
    let yaml = dir.path().join("bench_task.yaml");
    std::fs::write(
        &yaml,
        format!(
            "task: chatforge_bench\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {}\noutput_type: multiple_choice\ntest_split: test\ndoc_to_text: query\ndoc_to_choice: choices\ndoc_to_target: gold\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n",
            data.display()
        ),
    )?;
    say!(
        "multiple-choice scoring, SmolLM2-135M shape ({:.0} M parameters, random weights), {} documents × 4 choices, batch {}, {} thread(s); documents/s (median of {})",
        cfg.n_params() as f64 / 1e6,
        args.docs,
        args.batch,
        rayon_threads(),
        args.runs
    );
    let model = LoadedModel::open(&folder, &Checkpoint::Best, None, WeightType::F32)?;
    let task = read_task(&yaml, &TaskOptions::default())?;
    let mut rates = Vec::new();
    for _ in 0..args.runs {
        rates.push(evaluate_task(&model, &task, args.batch)?.docs_per_s);
    }
    let ours = median(rates);
    let mut line = format!("chatforge {ours:>7.1} documents/s");
    if let Some(py) = &args.reference_python {
        let mut rates = Vec::new();
        for _ in 0..args.runs {
            let mut cmd = Command::new(py);
            cmd.arg("scripts/reference/lm_eval_tasks.py")
                .arg("hf")
                .arg(&folder)
                .arg(dir.path())
                .arg("chatforge_bench")
                .arg(args.batch.to_string());
            let r = json_of(&mut cmd, "scripts/reference/lm_eval_tasks.py")?;
            let t = &r["chatforge_bench"];
            rates.push(t["docs"].as_f64().unwrap_or(f64::NAN) / t["seconds"].as_f64().unwrap_or(f64::NAN));
        }
        let theirs = median(rates);
        line += &format!(
            " | lm-eval hf {theirs:>7.1} documents/s (chatforge {:.2}x)",
            ours / theirs
        );
    }
    say!("{line}");
    Ok(())
}
