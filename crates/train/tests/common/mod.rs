//! Helpers shared by the training tests: a tiny shard of a learnable pattern, a tiny config, and
//! runs that finish or crash.

#![allow(dead_code, clippy::unwrap_used)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use chatforge_data::{Rng, ShardWriter};
use chatforge_model::{GptConfig, LoraConfig};
use chatforge_train::{Event, Mode, TrainConfig, TrainSettings, train};

/// Conversations of a simple pattern: "a b c … " counting up from a random start, second half masked.
pub fn shard(path: &Path, docs: usize, seed: u64) -> PathBuf {
    let mut w = ShardWriter::create(path, 40).unwrap();
    let mut rng = Rng::new(seed);
    for _ in 0..docs {
        let start = rng.below(20) as u32;
        let len = 6 + rng.below(10) as usize;
        let ids: Vec<u32> = (0..len as u32).map(|i| (start + i) % 40).collect();
        let mask: Vec<u8> = (0..len).map(|i| u8::from(i >= len / 2)).collect();
        w.push(&ids, &mask).unwrap();
    }
    w.finish().unwrap();
    path.to_path_buf()
}

pub fn config(dir: &Path, steps: u64) -> TrainConfig {
    TrainConfig {
        model: GptConfig {
            n_ctx: 32,
            dropout: 0.1,
            ..GptConfig::tiny(40)
        },
        train: TrainSettings {
            mode: Mode::Sft,
            data: Some(shard(&dir.join("train.bin"), 200, 1)),
            val: Some(shard(&dir.join("val.bin"), 20, 2)),
            max_steps: Some(steps),
            batch_size: 4,
            tokens_per_step: Some(200),
            lr: 3e-3,
            warmup_steps: 3,
            eval_every: 4,
            checkpoint_every: 4,
            keep_last: 3,
            seed: 5,
            ..TrainSettings::default()
        },
        lora: LoraConfig::default(),
    }
}

pub fn run(cfg: &TrainConfig, dir: &Path, resume: bool) -> Vec<f64> {
    train(cfg, dir, resume, &mut |_| {}, &AtomicBool::new(false))
        .unwrap()
        .losses
}

/// Starts a fresh run in `dir` and makes it panic right after step `at`, as a crash would.
pub fn crash_after(cfg: &TrainConfig, dir: &Path, at: u64) {
    let result = std::panic::catch_unwind(|| {
        train(
            cfg,
            dir,
            false,
            &mut |e| {
                if let Event::Step { step, .. } = e
                    && *step == at
                {
                    panic!("simulated crash");
                }
            },
            &AtomicBool::new(false),
        )
    });
    assert!(result.is_err(), "the run should have crashed at step {at}");
}
