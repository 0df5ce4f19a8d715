//! What a run reports, one JSON line each in `logs.jsonl`, and the log's upkeep on resume.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::preference::PrefMetrics;
use crate::{Error, Result};

/// What the loop reports, one JSON line each in `logs.jsonl`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Start {
        steps: u64,
        start_step: u64,
        /// Trainable parameters (the adapter's, for LoRA).
        params: usize,
        /// All parameters, frozen ones included.
        total_params: usize,
        rows_per_epoch: usize,
        micro_batches: usize,
        resumed_from: Option<PathBuf>,
    },
    Step {
        step: u64,
        loss: f64,
        lr: f64,
        grad_norm: f64,
        tokens_per_s: f64,
        epoch: f64,
        elapsed_s: f64,
        /// Processes of a group (MPI): the step's seconds summing gradients across them.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sync_s: Option<f64>,
        /// Preference modes: `rewards/chosen`, `rewards/margins`, `logps/chosen`, … (TRL's names).
        #[serde(flatten)]
        metrics: Option<PrefMetrics>,
    },
    Eval {
        step: u64,
        val_loss: f64,
        best_val_loss: f64,
        improved: bool,
        /// Preference modes: the validation pairs' metrics, under the same names.
        #[serde(flatten)]
        metrics: Option<PrefMetrics>,
    },
    Checkpoint {
        step: u64,
        path: PathBuf,
    },
    Warning {
        /// The step the run was at, so every line of the log carries one (see [`line_step`]).
        step: u64,
        message: String,
    },
    Stopped {
        step: u64,
        reason: String,
    },
}

impl Event {
    /// The step the event belongs to (where a run starts, for `Start`).
    pub fn step(&self) -> u64 {
        match self {
            Event::Start { start_step, .. } => *start_step,
            Event::Step { step, .. }
            | Event::Eval { step, .. }
            | Event::Checkpoint { step, .. }
            | Event::Warning { step, .. }
            | Event::Stopped { step, .. } => *step,
        }
    }
}

pub(crate) struct Log(pub std::fs::File);

/// The step a line of `logs.jsonl` belongs to: `step`, or a start's `start_step` (`None` for a
/// line that is not an event with one). Steps never decrease down the log (a resumed run's lines
/// after its checkpoint are trimmed before it logs again), which is what lets readers give each
/// line a stable id. Only those two fields are decoded, so it is cheap on long lines.
pub fn line_step(line: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Steps {
        step: Option<u64>,
        start_step: Option<u64>,
    }
    let s: Steps = serde_json::from_slice(line).ok()?;
    s.step.or(s.start_step)
}

/// Keeps the lines of `logs.jsonl` that are whole JSON events of steps up to `step` (and events
/// without a step); a line cut short by a crash (even inside a UTF-8 sequence) is dropped too.
pub(crate) fn trim_log(path: &Path, step: u64) -> Result<()> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(Error::Io {
                path: path.to_path_buf(),
                source: e,
            });
        }
    };
    let mut kept = Vec::with_capacity(bytes.len());
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        let keep = line.ends_with(b"\n")
            && serde_json::from_slice::<serde::de::IgnoredAny>(line).is_ok()
            && line_step(line).is_none_or(|s| s <= step);
        if keep {
            kept.extend_from_slice(line);
        }
    }
    if kept.len() != bytes.len() {
        chatforge_data::atomic_write(path, |w| w.write_all(&kept))?;
    }
    Ok(())
}

impl Log {
    pub(crate) fn write(&mut self, e: &Event) {
        if let Ok(line) = serde_json::to_string(e) {
            let _ = writeln!(self.0, "{line}");
        }
    }
}
