//! The run directory (`runs/<id>/`), as a type: every path under it is spelled here, once, for
//! the trainer that writes it and the CLI, the service, evaluation and export that read it.
//!
//! ```text
//! manifest.json  config.json  tokenizer.json  summary.json  logs.jsonl
//! checkpoints/step_000500/  best/  adapters/<name>/  data/{train,val}.bin
//! eval/metrics.json  plots/loss.png  personas/<name>/  tensorboard/events.out.tfevents.*
//! reference/{train,val}.json (preference tuning: the reference model's log-probabilities)
//! (`persona_run.json` is `chatforge_data::personas::PersonaRun`'s own.)
//! ```

use std::path::{Path, PathBuf};

/// A run directory (it need not exist yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    root: PathBuf,
}

/// Decoding settings (transformers' `generation_config.json`): in HF folders, and in a run
/// fine-tuned from one (carried from its `--init`).
pub const GENERATION_FILE: &str = "generation_config.json";

/// A checkpoint's state file (step, sampler, RNG, best loss, config, file hashes).
pub const STATE_FILE: &str = "state.json";
/// The HF-style model config, in a run and in each checkpoint.
pub const CONFIG_FILE: &str = "config.json";
/// The folder of task results beside an evaluation's `metrics.json`.
pub const TASKS_DIR: &str = "tasks";
/// The tokenizer, in a run and in a tokenizer artifact.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> RunDir {
        RunDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// What produced the run: config, inputs with hashes, seed, versions, status.
    pub fn manifest(&self) -> PathBuf {
        self.root.join("manifest.json")
    }

    pub fn config(&self) -> PathBuf {
        self.root.join(CONFIG_FILE)
    }

    pub fn tokenizer(&self) -> PathBuf {
        self.root.join(TOKENIZER_FILE)
    }

    pub fn summary(&self) -> PathBuf {
        self.root.join("summary.json")
    }

    /// One event per line.
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs.jsonl")
    }

    /// TensorBoard event files (`tensorboard --logdir` on the run, or on `runs/`).
    pub fn tensorboard(&self) -> PathBuf {
        self.root.join("tensorboard")
    }

    /// Preference tuning (DPO): the reference model's reply log-probabilities of each shard.
    pub fn reference(&self) -> PathBuf {
        self.root.join("reference")
    }

    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    /// The checkpoint after `step` optimizer steps.
    pub fn checkpoint(&self, step: u64) -> PathBuf {
        self.checkpoints().join(format!("step_{step:06}"))
    }

    /// The checkpoint folders, newest first, by their names (whether they load is the reader's
    /// business).
    pub fn list_checkpoints(&self) -> Vec<(u64, PathBuf)> {
        let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(self.checkpoints())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let step = name.strip_prefix("step_")?.parse().ok()?;
                Some((step, e.path()))
            })
            .collect();
        out.sort_by_key(|(step, _)| std::cmp::Reverse(*step));
        out
    }

    /// The checkpoint with the lowest validation loss.
    pub fn best(&self) -> PathBuf {
        self.root.join("best")
    }

    pub fn adapters(&self) -> PathBuf {
        self.root.join("adapters")
    }

    /// A named adapter (one persona's), PEFT layout.
    pub fn adapter(&self, name: &str) -> PathBuf {
        self.adapters().join(name)
    }

    /// Token shards tokenized into the run.
    pub fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    pub fn train_shard(&self) -> PathBuf {
        self.data().join("train.bin")
    }

    pub fn val_shard(&self) -> PathBuf {
        self.data().join("val.bin")
    }

    pub fn eval(&self) -> PathBuf {
        self.root.join("eval")
    }

    pub fn metrics(&self) -> PathBuf {
        self.eval().join("metrics.json")
    }

    /// Multiple-choice task results (`chatforge eval --task`), one `<task>.json` each.
    pub fn task_results(&self) -> PathBuf {
        self.eval().join(TASKS_DIR)
    }

    pub fn loss_plot(&self) -> PathBuf {
        self.root.join("plots").join("loss.png")
    }

    /// A persona's own LoRA run inside a persona run.
    pub fn persona(&self, name: &str) -> RunDir {
        RunDir::new(self.root.join("personas").join(name))
    }

    /// Whether this looks like a run: it has `best/` or checkpoints.
    pub fn exists(&self) -> bool {
        self.best().is_dir() || self.checkpoints().is_dir()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn checkpoints_are_listed_newest_first_by_their_names() {
        let d = tempfile::tempdir().unwrap();
        let run = RunDir::new(d.path());
        assert!(!run.exists());
        for step in [5, 120, 40] {
            std::fs::create_dir_all(run.checkpoint(step)).unwrap();
        }
        std::fs::create_dir_all(run.checkpoints().join("step_x")).unwrap();
        let steps: Vec<u64> = run.list_checkpoints().iter().map(|c| c.0).collect();
        assert_eq!(steps, [120, 40, 5]);
        assert!(run.checkpoint(40).ends_with("checkpoints/step_000040"));
        assert!(run.exists());
    }
}
