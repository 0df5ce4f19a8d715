//! Checkpoints: everything a resumed run needs to continue exactly where it stopped — weights,
//! optimizer moments, step, sampler position, dropout RNG, best validation loss and the config —
//! written under a temporary name and renamed into place, with content hashes checked on load.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use chatforge_data::{SamplerState, atomic_dir, sha256_file};
use chatforge_model::io::safetensors;
use chatforge_model::{GptConfig, LoraConfig, ParamSpec, Tensor};
use chatforge_run::{CONFIG_FILE, RunDir, STATE_FILE};
use serde::{Deserialize, Serialize};

use crate::{AdamW, Error, Result, TrainConfig};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Optimizer steps completed.
    pub step: u64,
    pub sampler: SamplerState,
    pub dropout_rng: u64,
    pub best_val_loss: Option<f64>,
    pub evals_since_best: u64,
    pub config: TrainConfig,
    /// SHA-256 of each file beside `state.json`.
    pub files: BTreeMap<String, String>,
}

/// The trainable values a checkpoint writes, in [`ParamSpec`] order: the training engine's flat
/// buffer, written from where it is without a copy.
#[derive(Clone, Copy)]
pub struct Values<'a> {
    pub specs: &'a [ParamSpec],
    pub flat: &'a [f32],
    pub offsets: &'a [(usize, usize)],
}

impl<'a> Values<'a> {
    fn len(&self) -> usize {
        self.specs.len()
    }

    fn spec(&self, i: usize) -> &'a ParamSpec {
        &self.specs[i]
    }

    /// The values of parameter `i`, borrowed from the engine.
    fn get(&self, i: usize) -> chatforge_model::Result<Cow<'a, [f32]>> {
        let (off, len) = self.offsets[i];
        Ok(Cow::Borrowed(&self.flat[off..off + len]))
    }

    /// Every parameter as a tensor by name (copies: for a LoRA adapter, which is small).
    fn tensors(&self) -> Result<BTreeMap<String, Tensor>> {
        (0..self.len())
            .map(|i| {
                let s = self.spec(i);
                Ok((
                    s.name.clone(),
                    Tensor::new(s.shape.clone(), self.get(i)?.into_owned())?,
                ))
            })
            .collect()
    }
}

/// Writes `dir` atomically: `model.safetensors` (or, for a LoRA run, the PEFT adapter files),
/// `optimizer.safetensors` (if given), `config.json`, `state.json`. The weights and the moments
/// are written one tensor at a time, so saving never holds a second copy of them.
pub fn save(
    dir: &Path,
    model: &GptConfig,
    lora: Option<&LoraConfig>,
    values: Values<'_>,
    opt: Option<&AdamW>,
    state: &CheckpointState,
) -> Result<()> {
    // A checkpoint of NaNs would be resumed from, or served as best: refuse it.
    for i in 0..values.len() {
        if let Some(pos) = values.get(i)?.iter().position(|x| !x.is_finite()) {
            return Err(Error::Checkpoint(format!(
                "{} has a non-finite value at index {pos}: not saved",
                values.spec(i).name
            )));
        }
    }
    let shapes: Vec<(String, Vec<usize>)> = (0..values.len())
        .map(|i| (values.spec(i).name.clone(), values.spec(i).shape.clone()))
        .collect();
    atomic_dir(dir, |tmp| -> Result<()> {
        let mut files = BTreeMap::new();
        match lora {
            // A LoRA run's checkpoint is a PEFT adapter folder (plus optimizer and state).
            Some(lora) => {
                let base = state.config.train.init.as_ref().map(|p| {
                    std::fs::canonicalize(p)
                        .unwrap_or_else(|_| p.clone())
                        .display()
                        .to_string()
                });
                chatforge_model::lora::write_adapter_files(
                    tmp,
                    lora,
                    &values.tensors()?,
                    base.as_deref(),
                    state.config.model.arch,
                )?;
                for f in ["adapter_model.safetensors", "adapter_config.json"] {
                    files.insert(f.to_string(), sha256_file(&tmp.join(f))?);
                }
            }
            None => {
                safetensors::write_with(&tmp.join("model.safetensors"), &shapes, |i| values.get(i))?;
                files.insert(
                    "model.safetensors".to_string(),
                    sha256_file(&tmp.join("model.safetensors"))?,
                );
            }
        }
        if let Some(opt) = opt {
            let moments: Vec<(String, Vec<usize>)> = shapes
                .iter()
                .flat_map(|(name, shape)| {
                    [
                        (format!("m.{name}"), shape.clone()),
                        (format!("v.{name}"), shape.clone()),
                    ]
                })
                .collect();
            safetensors::write_with(&tmp.join("optimizer.safetensors"), &moments, |i| {
                let m = if i % 2 == 0 { &opt.m } else { &opt.v };
                Ok(Cow::Borrowed(m[i / 2].as_slice()))
            })?;
            files.insert(
                "optimizer.safetensors".to_string(),
                sha256_file(&tmp.join("optimizer.safetensors"))?,
            );
        }
        write_json(&tmp.join(CONFIG_FILE), &model.to_hf())?;
        let state = CheckpointState {
            files,
            ..state.clone()
        };
        write_json(&tmp.join(STATE_FILE), &state)?;
        Ok(())
    })
}

pub(crate) fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    chatforge_data::atomic_write(path, |w| {
        serde_json::to_writer_pretty(&mut *w, v)?;
        std::io::Write::write_all(w, b"\n")
    })?;
    Ok(())
}

/// Reads and verifies `state.json` and the hashes of the files it lists.
pub fn read_state(dir: &Path) -> Result<CheckpointState> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::Io {
        path: path.clone(),
        source: e,
    })?;
    let state: CheckpointState =
        serde_json::from_str(&text).map_err(|e| Error::Checkpoint(format!("{}: {e}", path.display())))?;
    for (name, hash) in &state.files {
        let actual = sha256_file(&dir.join(name))?;
        if &actual != hash {
            return Err(Error::Checkpoint(format!(
                "{}: hash mismatch, the file is corrupt",
                dir.join(name).display()
            )));
        }
    }
    Ok(state)
}

/// AdamW's first and second moments, one vector per parameter.
pub type Moments = (Vec<Vec<f32>>, Vec<Vec<f32>>);

/// The optimizer moments saved beside a checkpoint, `(m, v)` in `specs` order, each checked
/// against its parameter's size.
pub fn load_optimizer(dir: &Path, specs: &[ParamSpec]) -> Result<Moments> {
    let path = dir.join("optimizer.safetensors");
    let t: std::collections::HashMap<String, Tensor> = safetensors::read(&path)
        .map_err(|e| Error::Checkpoint(e.to_string()))?
        .into_iter()
        .collect();
    let get = |k: String, len: usize| -> Result<Vec<f32>> {
        let x = t
            .get(&k)
            .ok_or_else(|| Error::Checkpoint(format!("{}: no tensor {k}", path.display())))?;
        let v: Vec<f32> = x.data().to_vec();
        if v.len() != len {
            return Err(Error::Checkpoint(format!(
                "{}: {k} has {} values, the parameter {len}",
                path.display(),
                v.len()
            )));
        }
        Ok(v)
    };
    let (mut m, mut v) = (Vec::new(), Vec::new());
    for spec in specs {
        let len = spec.shape.iter().product();
        m.push(get(format!("m.{}", spec.name), len)?);
        v.push(get(format!("v.{}", spec.name), len)?);
    }
    Ok((m, v))
}

/// Removes all but the newest `keep` checkpoints.
pub fn prune(run: &Path, keep: usize) -> Result<()> {
    for (_, dir) in RunDir::new(run).list_checkpoints().into_iter().skip(keep.max(1)) {
        std::fs::remove_dir_all(&dir).map_err(|e| Error::Io {
            path: dir.clone(),
            source: e,
        })?;
    }
    Ok(())
}
