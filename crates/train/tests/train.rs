//! The training loop on tiny configs: it learns, it repeats itself, and a crashed run resumes
//! with exactly the losses an uninterrupted one has.

#![allow(clippy::unwrap_used)] // tests: a failure should panic with its message

mod common;

use std::path::Path;
use std::sync::atomic::AtomicBool;

use chatforge_model::{GptConfig, LoraConfig};
use chatforge_run::RunDir;
use chatforge_train::{Event, Mode, TrainConfig, TrainSettings, train};
use common::{config, crash_after, run};

#[test]
fn it_learns_and_repeats_itself() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 60);
    cfg.train.lr = 1e-2;
    let a = run(&cfg, &dir.path().join("a"), false);
    let b = run(&cfg, &dir.path().join("b"), false);
    assert_eq!(a, b, "same seed, same data: same losses");
    assert!(a[59] < 0.4 * a[0], "loss went from {} to {}", a[0], a[59]);
    let other = run(
        &TrainConfig {
            train: TrainSettings {
                seed: 6,
                ..cfg.train.clone()
            },
            ..cfg.clone()
        },
        &dir.path().join("c"),
        false,
    );
    assert_ne!(a, other);
    // The run directory holds what it promises.
    let run_dir = dir.path().join("a");
    for f in [
        "manifest.json",
        "config.json",
        "logs.jsonl",
        "best/model.safetensors",
        "best/state.json",
    ] {
        assert!(run_dir.join(f).is_file(), "{f} missing");
    }
    let png = std::fs::read(run_dir.join("plots/loss.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(
        u32::from_be_bytes([png[16], png[17], png[18], png[19]]),
        960,
        "PNG width"
    );
    let (train_curve, val_curve) = chatforge_train::read_curves(&run_dir.join("logs.jsonl")).unwrap();
    assert_eq!((train_curve.len(), val_curve.len()), (60, 15));
    // Validation follows the weights as they train (it runs on detached views of the same storage).
    let (first_val, last_val) = (val_curve[&4], val_curve[&60]);
    assert!(
        last_val < 0.6 * first_val,
        "validation went from {first_val} to {last_val}"
    );
    let steps: Vec<u64> = RunDir::new(&run_dir)
        .list_checkpoints()
        .iter()
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(steps, [60, 56, 52], "keep_last = 3");
    let log = std::fs::read_to_string(run_dir.join("logs.jsonl")).unwrap();
    assert_eq!(
        log.lines().filter(|l| l.contains("\"event\":\"step\"")).count(),
        60
    );
    assert!(log.contains("\"event\":\"eval\""));
}

/// `grad_checkpoint` changes how backward gets its activations, not what it computes: the same
/// seed gives the same losses, bit for bit (dropout on, micro-batches accumulated): the engine
/// recomputes the same arithmetic.
#[test]
fn gradient_checkpointing_trains_the_same_run() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 12);
    assert!(cfg.model.dropout > 0.0);
    let plain = run(&cfg, &dir.path().join("plain"), false);
    let mut ck = cfg.clone();
    ck.train.grad_checkpoint = true;
    let checkpointed = run(&ck, &dir.path().join("ckpt"), false);
    assert_eq!(plain, checkpointed, "the engine, checkpointed");
    assert!(plain[11] < plain[0], "it learns: {} -> {}", plain[0], plain[11]);
}

#[test]
fn a_crashed_run_resumes_with_identical_losses() {
    let dir = tempfile::tempdir().unwrap();
    // With dropout and without.
    for dropout in [0.1, 0.0] {
        let dir = dir.path().join(format!("dropout{dropout}"));
        std::fs::create_dir_all(&dir).unwrap();
        resumes_with_identical_losses(&dir, dropout);
    }
}

fn resumes_with_identical_losses(dir: &Path, dropout: f32) {
    let mut cfg = config(dir, 14);
    cfg.model.dropout = dropout;
    let full = run(&cfg, &dir.join("full"), false);

    // Crash after step 10: the newest checkpoint is step 8, so steps 9–10 are redone.
    let crashed = dir.join("crashed");
    crash_after(&cfg, &crashed, 10);
    let resumed = run(&cfg, &crashed, true);
    assert_eq!(resumed.len(), 6, "steps 9..=14");
    assert_eq!(
        resumed[..],
        full[8..],
        "resumed losses must equal the uninterrupted run's"
    );

    // A corrupt newest checkpoint is skipped with a warning; the one before is used.
    let (_, newest) = &RunDir::new(&crashed).list_checkpoints()[0];
    std::fs::write(newest.join("model.safetensors"), b"garbage").unwrap();
    let mut warned = Vec::new();
    let summary = train(
        &TrainConfig {
            train: TrainSettings {
                max_steps: Some(16),
                ..cfg.train.clone()
            },
            ..cfg.clone()
        },
        &crashed,
        true,
        &mut |e| {
            if let Event::Warning { message, .. } = e {
                warned.push(message.clone());
            }
        },
        &AtomicBool::new(false),
    )
    .unwrap();
    assert!(warned.iter().any(|w| w.contains("hash mismatch")), "{warned:?}");
    assert_eq!(summary.losses.len(), 4, "resumed from step 12");
}

#[test]
fn impossible_configs_fail_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 5);
    let err = |c: TrainConfig| {
        train(
            &c,
            &dir.path().join("x"),
            false,
            &mut |_| {},
            &AtomicBool::new(false),
        )
        .unwrap_err()
        .to_string()
    };
    let e = err(TrainConfig {
        model: GptConfig {
            n_head: 3,
            ..cfg.model.clone()
        },
        ..cfg.clone()
    });
    assert!(e.contains("n_head = 3 does not divide n_embd = 32"), "{e}");
    let e = err(TrainConfig {
        train: TrainSettings {
            seq_len: Some(64),
            ..cfg.train.clone()
        },
        ..cfg.clone()
    });
    assert!(e.contains("train.seq_len = 64"), "{e}");
    let e = err(TrainConfig {
        model: GptConfig {
            vocab_size: 30,
            ..cfg.model.clone()
        },
        ..cfg.clone()
    });
    assert!(e.contains("has 40 tokens but model.vocab_size is 30"), "{e}");
    let mut autograd = cfg.clone();
    autograd.train.engine = false;
    let e = err(autograd);
    assert!(e.contains("train.engine = false"), "{e}");
}

#[test]
fn init_from_an_earlier_run_continues_its_learning() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 40);
    cfg.train.lr = 1e-2;
    let first = run(&cfg, &dir.path().join("first"), false);
    // A new run initialised from the first one's best/ starts where that one ended, not from scratch.
    let mut next = cfg.clone();
    next.train.init = Some(dir.path().join("first"));
    // Ignored: the model comes from --init, its position table too (32 here, so a sequence of
    // 32 fits although this config's own table would not hold it).
    next.model.n_embd = 64;
    next.model.n_ctx = 16;
    next.train.seq_len = Some(32);
    let second = run(&next, &dir.path().join("second"), false);
    assert!(
        second[0] < 0.6 * first[0],
        "first run began at {}, the initialised one at {}",
        first[0],
        second[0]
    );
    let err = train(
        &TrainConfig {
            train: TrainSettings {
                init: Some(dir.path().join("nothing")),
                ..cfg.train.clone()
            },
            ..cfg.clone()
        },
        &dir.path().join("third"),
        false,
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("expected an HF folder"), "{err}");
    // Longer than the --init model's table: refused once that is known.
    next.train.seq_len = Some(33);
    let err = train(
        &next,
        &dir.path().join("fourth"),
        false,
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("train.seq_len = 33 is above the model's position table (n_ctx = 32)"),
        "{err}"
    );
}

#[test]
fn lora_trains_only_the_adapter_and_leaves_the_base_alone() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A base that has learnt something, then a LoRA run on top of it.
    let mut base_cfg = config(d, 12);
    base_cfg.train.lr = 1e-2;
    run(&base_cfg, &d.join("base"), false);
    let base_file = d.join("base/best/model.safetensors");
    let base_hash = chatforge_data::sha256_file(&base_file).unwrap();

    let mut cfg = config(d, 80);
    cfg.train.mode = Mode::Lora;
    cfg.train.init = Some(d.join("base"));
    cfg.train.lr = 2e-2;
    cfg.train.warmup_steps = 10;
    cfg.train.adapter_name = Some("alice".into());
    cfg.lora = LoraConfig {
        rank: 4,
        alpha: 16.0,
        dropout: 0.05,
        targets: vec!["c_attn".into(), "c_proj".into(), "c_fc".into()],
        quant: None,
    };
    let (mut trainable, mut total) = (0, 0);
    let summary = train(
        &cfg,
        &d.join("lora"),
        false,
        &mut |e| {
            if let Event::Start {
                params, total_params, ..
            } = e
            {
                (trainable, total) = (*params, *total_params);
            }
        },
        &AtomicBool::new(false),
    )
    .unwrap();
    // Rank 4 on c_attn (32→96), attn c_proj (32→32), c_fc (32→128), mlp c_proj (128→32), 2 layers.
    let per_layer = 4 * (32 + 96) + 4 * (32 + 32) + 4 * (32 + 128) + 4 * (128 + 32);
    assert_eq!(trainable, 2 * per_layer);
    assert_eq!(total, base_cfg.model.n_params() + trainable);
    let l = &summary.losses;
    // A rank-4 update of a 2-layer, 32-wide model learns slowly but surely (seeded: no flakiness).
    let (first, last) = (
        l[..3].iter().sum::<f64>() / 3.0,
        l[l.len() - 10..].iter().sum::<f64>() / 10.0,
    );
    assert!(last < first - 0.1, "LoRA loss went from {first} to {last}");
    // The base is untouched; checkpoints hold the adapter and its optimizer state only.
    assert_eq!(chatforge_data::sha256_file(&base_file).unwrap(), base_hash);
    let ckpt = &RunDir::new(d.join("lora")).list_checkpoints()[0].1;
    assert!(chatforge_model::lora::is_adapter_dir(ckpt));
    assert!(!ckpt.join("model.safetensors").exists());
    let opt: std::collections::HashMap<String, chatforge_model::Tensor> =
        chatforge_model::io::safetensors::read(&ckpt.join("optimizer.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(
        opt.len(),
        2 * 2 * 8,
        "m and v for 8 adapter matrices per layer pair"
    );
    assert!(opt.keys().all(|k| k.contains(".lora_")), "{:?}", opt.keys());
    // The named adapter is the best one, in PEFT's layout.
    let named = d.join("lora/adapters/alice");
    assert!(chatforge_model::lora::is_adapter_dir(&named));
    assert_eq!(
        std::fs::read(named.join("adapter_model.safetensors")).unwrap(),
        std::fs::read(d.join("lora/best/adapter_model.safetensors")).unwrap()
    );
    // QLoRA: the same on a q4 base (dequantised on the fly, forward and backward).
    let mut q = cfg.clone();
    q.train.mode = Mode::Qlora;
    q.train.adapter_name = None;
    let ql = train(&q, &d.join("qlora"), false, &mut |_| {}, &AtomicBool::new(false))
        .unwrap()
        .losses;
    let (qf, qlast) = (
        ql[..3].iter().sum::<f64>() / 3.0,
        ql[ql.len() - 10..].iter().sum::<f64>() / 10.0,
    );
    assert!(qlast < qf - 0.1, "QLoRA loss went from {qf} to {qlast}");
    assert_ne!(ql, *l, "q4 weights are not the f32 ones");
    let state = chatforge_train::read_state(&RunDir::new(d.join("qlora")).list_checkpoints()[0].1).unwrap();
    assert_eq!(
        state.config.lora.quant,
        Some(chatforge_model::quant::QuantKind::Q4)
    );
    assert_eq!(chatforge_data::sha256_file(&base_file).unwrap(), base_hash);
    // A crashed LoRA run resumes (adapter and moments from the checkpoint, base from --init) with
    // the losses of an uninterrupted one.
    let mut short = cfg.clone();
    short.train.max_steps = Some(14);
    short.train.adapter_name = None;
    let full = run(&short, &d.join("lora-full"), false);
    let crashed = d.join("lora-crashed");
    crash_after(&short, &crashed, 10);
    let resumed = run(&short, &crashed, true);
    assert_eq!(
        resumed[..],
        full[8..],
        "resumed LoRA losses must equal the uninterrupted run's"
    );
    // A LoRA run needs a base.
    let mut no_base = cfg.clone();
    no_base.train.init = None;
    let e = train(
        &no_base,
        &d.join("x"),
        false,
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap_err();
    assert!(e.to_string().contains("give train.init"), "{e}");
}
