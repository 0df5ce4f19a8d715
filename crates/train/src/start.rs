//! Where a run's weights come from: an `--init` model (its config first, to size the run against
//! the machine), or the newest checkpoint of the run that loads.

use std::path::{Path, PathBuf};

use chatforge_model::{GptConfig, LoraConfig, Weights, load_hf, load_weights};
use chatforge_run::{CONFIG_FILE, RunDir};

use crate::checkpoint::{self, CheckpointState};
use crate::{Error, Result, TrainConfig};

/// Weights to start from: an HF GPT-2-family folder, an earlier run (its `best/`, else its newest
/// checkpoint), or a checkpoint folder.
pub fn load_init(path: &Path) -> Result<(GptConfig, Weights)> {
    Ok(load_hf(&init_dir(path)?)?)
}

/// The folder `--init path` loads: an HF folder holds config.json and weights; a run holds
/// config.json too, but its weights are in best/ or its checkpoints.
fn init_dir(path: &Path) -> Result<PathBuf> {
    let run = RunDir::new(path);
    let latest = run.list_checkpoints().first().map(|(_, d)| d.clone());
    [Some(path.to_path_buf()), Some(run.best()), latest]
        .into_iter()
        .flatten()
        .find(|d| d.join(CONFIG_FILE).is_file() && chatforge_model::weights_file(d).is_ok())
        .ok_or_else(|| {
            Error::Config(format!(
                "--init {}: expected an HF folder (config.json + model.safetensors or pytorch_model.bin) or a chatforge run",
                path.display()
            ))
        })
}

/// The model `--init path` holds, from its config.json alone (validated, no weights read).
pub fn init_config(path: &Path) -> Result<GptConfig> {
    let file = init_dir(path)?.join(CONFIG_FILE);
    let text = chatforge_data::read_capped(&file, 1 << 20)?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", file.display())))?;
    GptConfig::from_hf(&v).map_err(|e| Error::Config(format!("{}: {e}", file.display())))
}

/// Refuses a run this machine cannot hold, before anything is allocated for it: `cfg`'s model,
/// or the one `train.init` holds.
pub fn check_memory(cfg: &TrainConfig) -> Result<()> {
    let model = match &cfg.train.init {
        Some(init) => init_config(init)?,
        None => cfg.model.clone(),
    };
    chatforge_model::check_fits("this run", cfg.memory_needed(&model))?;
    Ok(())
}

/// A checkpoint the run continues from: its state, trainable weights and AdamW moments.
pub(crate) struct Resumed {
    pub dir: PathBuf,
    pub state: CheckpointState,
    pub weights: Weights,
    pub moments: checkpoint::Moments,
}

/// The newest checkpoint of `run` that verifies and loads (weights and moments) for this model;
/// each newer one that does not is skipped with a warning. A checkpoint of another model or
/// adapter is an error: resuming it would silently train something else.
pub(crate) fn resume_point(
    run: &Path,
    cfg: &TrainConfig,
    lora: Option<&LoraConfig>,
    warnings: &mut Vec<String>,
) -> Result<Option<Resumed>> {
    let specs = match lora {
        Some(l) => l.param_specs(&cfg.model),
        None => chatforge_model::param_specs(&cfg.model),
    };
    for (_, dir) in RunDir::new(run).list_checkpoints() {
        let loaded = checkpoint::read_state(&dir).and_then(|state| {
            if state.config.model != cfg.model || lora.is_some_and(|l| state.config.lora != *l) {
                return Err(Error::Config(format!(
                    "--resume: the model or adapter in {} differs from this config",
                    relative(run, &dir).display()
                )));
            }
            let weights = match lora {
                Some(_) => chatforge_model::lora::load_adapter(&dir, &cfg.model)?.1,
                None => load_weights(&dir, &cfg.model)?,
            };
            Ok(Resumed {
                moments: checkpoint::load_optimizer(&dir, &specs)?,
                dir: dir.clone(),
                state,
                weights,
            })
        });
        match loaded {
            Ok(r) => return Ok(Some(r)),
            Err(e @ Error::Config(_)) => return Err(e),
            Err(e) => warnings.push(format!(
                "skipping checkpoint {}: {}",
                relative(run, &dir).display(),
                e.to_string().replace(&format!("{}/", run.display()), "")
            )),
        }
    }
    Ok(None)
}

/// `path` relative to the run directory, so logs and events never carry the server's paths.
pub(crate) fn relative(run: &Path, path: &Path) -> PathBuf {
    path.strip_prefix(run)
        .map_or_else(|_| path.to_path_buf(), Path::to_path_buf)
}
