//! `chatforge export` as a person runs it, each format checked by its real consumer: the HF folder
//! by transformers, the GGUF file by the `gguf` package and by chatforge's own loader.

#![allow(clippy::unwrap_used)] // tests: a failure should panic with its message

mod common;

use std::path::Path;

use chatforge_data::{Conversation, Message, Role};
use chatforge_infer::{Checkpoint, LoadedModel, WeightType};
use chatforge_testkit::{json_floats, max_abs_diff, python, run_reference};
use chatforge_tokenizer::{Persona, RenderOptions};
use common::{fails, ok, trained};
use serde_json::{Value, json};

fn conversation(turns: &[(&str, &str)]) -> Conversation {
    Conversation::new(
        turns
            .iter()
            .map(|(role, content)| Message {
                role: match *role {
                    "system" => Role::System,
                    "user" => Role::User,
                    _ => Role::Assistant,
                },
                content: (*content).to_string(),
                speaker: None,
            })
            .collect(),
    )
}

/// chatforge's logits for `ids` from the model at `path`: (positions × vocab), flat.
fn our_logits(path: &Path, ids: &[u32]) -> Vec<f32> {
    let m = LoadedModel::open(path, &Checkpoint::Best, None, WeightType::F32).unwrap();
    let mut seq = m.engine.new_sequence();
    m.engine.forward(&mut [&mut seq], &[ids], true).unwrap()
}

#[test]
fn hf_export_loads_in_transformers_with_our_logits_tokens_and_template() {
    let (dir, run) = trained();
    let d = dir.path();
    let out = ok(
        &[
            "export",
            "--model",
            run.to_str().unwrap(),
            "--format",
            "hf",
            "-o",
            "hf",
        ],
        d,
        None,
    );
    assert!(out.contains("exported"), "{out}");
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "export_manifest.json",
    ] {
        assert!(d.join("hf").join(f).is_file(), "{f} missing");
    }
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("hf/export_manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["format"], "hf");
    assert_eq!(manifest["source"]["kind"], "run");
    assert!(
        manifest["run_manifest"]["config"]["train"].is_object(),
        "{manifest}"
    );
    let files = manifest["files"].as_array().unwrap();
    assert!(
        files
            .iter()
            .any(|f| f["path"] == "model.safetensors" && f["sha256"].as_str().unwrap().len() == 64)
    );
    // The exported folder is a model chatforge loads too, with the run's logits.
    let ids: Vec<u32> = vec![1, 2, 40, 41, 42, 7, 300, 4, 3, 99];
    let ours = our_logits(run, &ids);
    assert_eq!(max_abs_diff(&ours, &our_logits(&d.join("hf"), &ids)), 0.0);
    // `export info` reads it back.
    let info = ok(&["export", "info", "hf"], d, None);
    assert!(info.contains("hf:") && info.contains("exported from"), "{info}");

    let Some(py) = python() else { return };
    let tok = chatforge_tokenizer::ChatTokenizer::load(&d.join("hf")).unwrap();
    let texts = [
        "How do I make tea?",
        "Ünïcödé — and emoji 🍵, spaces  twice.\nNew line",
    ];
    let convs = [
        conversation(&[
            ("user", "Hi!"),
            ("assistant", "Hello, how can I help?"),
            ("user", "Tea?"),
        ]),
        conversation(&[
            ("system", "You are terse."),
            ("user", "What is 2+2?"),
            ("assistant", "4"),
            ("user", "And 3+3?"),
        ]),
    ];
    let as_json = |c: &Conversation| -> Value {
        c.messages
            .iter()
            .map(|m| {
                let role = match m.role {
                    Role::System => "system",
                    Role::User => "user",
                    Role::Assistant => "assistant",
                };
                json!({"role": role, "content": m.content})
            })
            .collect()
    };
    let req = json!({
        "ids": [ids],
        "texts": texts,
        "conversations": convs.iter().map(as_json).collect::<Vec<_>>(),
    });
    std::fs::write(d.join("req.json"), req.to_string()).unwrap();
    let hf = d.join("hf");
    let r: Value = serde_json::from_str(&run_reference(
        &py,
        "export_check.py",
        &["hf", hf.to_str().unwrap(), d.join("req.json").to_str().unwrap()],
    ))
    .unwrap();
    let diff = max_abs_diff(&ours, &json_floats(&r["logits"][0]));
    assert!(diff < 1e-4, "logits differ from transformers' by {diff}");
    for (i, t) in texts.iter().enumerate() {
        let mut mine = Vec::new();
        tok.encoder().encode_into(t, &mut mine).unwrap();
        let theirs: Vec<u32> = serde_json::from_value(r["encodings"][i].clone()).unwrap();
        assert_eq!(mine, theirs, "encoding of {t:?}");
    }
    let opts = RenderOptions::default();
    for (i, c) in convs.iter().enumerate() {
        let decode = |ids: &[u32]| tok.inner().decode(ids, false).unwrap();
        let chat = &r["chat"][i];
        let full = tok.render_chat(c, &opts).unwrap();
        assert_eq!(chat["text"], decode(&full.ids), "conversation {i} rendered");
        let prompt = tok.render_prompt(c, &opts).unwrap();
        assert_eq!(chat["prompt_text"], decode(&prompt), "conversation {i} prompt");
        let theirs: Vec<u32> = serde_json::from_value(chat["prompt_ids"].clone()).unwrap();
        assert_eq!(theirs, prompt, "conversation {i}: the prompt's ids");
        let persona = RenderOptions {
            persona: Persona::Fixed("Alice".into()),
            channel: Some("general".into()),
            ..RenderOptions::default()
        };
        let prompt = tok.render_prompt(c, &persona).unwrap();
        assert_eq!(
            chat["persona_prompt_text"],
            decode(&prompt),
            "conversation {i} with a persona"
        );
    }
}

#[test]
fn gguf_export_reads_back_in_gguf_and_in_chatforge() {
    let (dir, run) = trained();
    let d = dir.path();
    let model = run.to_str().unwrap();
    let ids: Vec<u32> = vec![1, 2, 40, 41, 42, 7, 300, 4, 3, 99];
    let ours = our_logits(run, &ids);
    let scale = ours.iter().fold(0f32, |m, x| m.max(x.abs()));
    // Logit error bounds by weight type, relative to the largest logit.
    for (quant, bound) in [("f32", 1e-5), ("f16", 2e-3), ("q8_0", 2e-2), ("q4_0", 0.25)] {
        let out = format!("gguf-{quant}");
        ok(
            &[
                "export", "--model", model, "--format", "gguf", "--quant", quant, "-o", &out,
            ],
            d,
            None,
        );
        let file = d.join(&out).join("model.gguf");
        let theirs = our_logits(&file, &ids);
        let diff = max_abs_diff(&ours, &theirs) / scale;
        assert!(
            diff <= bound,
            "{quant}: logits differ by {diff} of the largest (bound {bound})"
        );
        // Chat works from the export folder (its GGUF file), tokenizer included.
        let chat = ok(
            &[
                "chat",
                "--model",
                &out,
                "--temperature",
                "0",
                "--max-new-tokens",
                "6",
            ],
            d,
            Some("Hi!\n"),
        );
        assert!(chat.contains("assistant:"), "{chat}");
        if quant == "q8_0" {
            // `-o NAME.gguf` writes that file, as llama.cpp's tools do, with the same bytes.
            let file_out = format!("{out}.gguf");
            ok(
                &[
                    "export", "--model", model, "--format", "gguf", "--quant", quant, "-o", &file_out,
                ],
                d,
                None,
            );
            assert!(d.join(&file_out).is_file());
            assert_eq!(
                std::fs::read(d.join(&file_out)).unwrap(),
                std::fs::read(&file).unwrap()
            );
        }
        if quant == "q4_0" {
            let info = ok(&["export", "info", &out, "--json"], d, None);
            let info: Value = serde_json::from_str(&info).unwrap();
            assert_eq!(info["format"], "gguf");
            assert!(info["dtypes"]["q4_0"].as_u64().unwrap() > 0, "{info}");
            assert_eq!(info["manifest"]["quantization"], "q4_0");
        }
    }

    let Some(py) = python() else { return };
    let file = d.join("gguf-q8_0/model.gguf");
    let r: Value = serde_json::from_str(&run_reference(
        &py,
        "export_check.py",
        &["gguf", file.to_str().unwrap()],
    ))
    .unwrap();
    assert_eq!(r["version"], 3);
    let meta = &r["meta"];
    let cfg = LoadedModel::open(run, &Checkpoint::Best, None, WeightType::F32)
        .unwrap()
        .config;
    assert_eq!(meta["general.architecture"], "gpt2");
    assert_eq!(meta["gpt2.block_count"], cfg.n_layer);
    assert_eq!(meta["gpt2.embedding_length"], cfg.n_embd);
    assert_eq!(meta["gpt2.context_length"], cfg.n_ctx);
    assert_eq!(meta["gpt2.attention.head_count"], cfg.n_head);
    assert_eq!(meta["tokenizer.ggml.model"], "gpt2");
    let tok = chatforge_tokenizer::ChatTokenizer::load(&run.join("tokenizer.json")).unwrap();
    let tokens = meta["tokenizer.ggml.tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), cfg.vocab_size);
    for (t, id) in tok.inner().get_vocab(true) {
        assert_eq!(tokens[id as usize], t, "token {id}");
    }
    assert!(meta["tokenizer.ggml.merges"].as_array().unwrap().len() > 100);
    assert_eq!(meta["tokenizer.chat_template"], tok.jinja_template());
    assert_eq!(
        meta["tokenizer.ggml.eos_token_id"],
        tok.inner().token_to_id("<|end|>").unwrap()
    );
    // Every tensor, as the gguf package dequantises it, equals what chatforge's loader reads.
    let (_, weights, _) = chatforge_infer::gguf::read(&file).unwrap();
    let tensors = r["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), weights.len());
    for t in tensors {
        let name = t["name"].as_str().unwrap();
        let hf = weights
            .keys()
            .find(|k| {
                chatforge_model::layout::Slot::from_name(k)
                    .unwrap()
                    .gguf(chatforge_model::Arch::Gpt2)
                    .0
                    == name
            })
            .unwrap_or_else(|| panic!("{name} has no HF counterpart"));
        let (_, transposed) = chatforge_model::layout::Slot::from_name(hf)
            .unwrap()
            .gguf(chatforge_model::Arch::Gpt2);
        let w = &weights[hf];
        // The GGUF tensor is the HF one, transposed for the linear layers.
        let w = if transposed { w.t() } else { w.clone() };
        let v = w.data();
        let sum: f64 = v.iter().map(|&x| f64::from(x)).sum();
        let abs: f64 = v.iter().map(|&x| f64::from(x).abs()).sum();
        assert!(
            (sum - t["sum"].as_f64().unwrap()).abs() <= 1e-4 * abs.max(1.0),
            "{name}: sum"
        );
        assert!(
            (abs - t["abs_sum"].as_f64().unwrap()).abs() <= 1e-4 * abs.max(1.0),
            "{name}: sum of |x|"
        );
        for (a, b) in v.iter().zip(json_floats(&t["first"])) {
            assert!((a - b).abs() <= 1e-6, "{name}: {a} vs {b}");
        }
        let ty = t["type"].as_str().unwrap();
        assert_eq!(ty, if w.rank() == 2 { "Q8_0" } else { "F32" }, "{name}");
    }
}

/// chatforge's greedy continuation of `prompt` by `n` tokens, decoded with its KV cache.
fn our_greedy(path: &Path, prompt: &[u32], n: usize) -> Vec<u32> {
    let m = LoadedModel::open(path, &Checkpoint::Best, None, WeightType::F32).unwrap();
    let v = m.config.vocab_size;
    let mut seq = m.engine.new_sequence();
    let argmax = |l: &[f32]| {
        let last = &l[l.len() - v..];
        (0..v).max_by(|&a, &b| last[a].total_cmp(&last[b])).unwrap() as u32
    };
    let mut tok = argmax(&m.engine.forward(&mut [&mut seq], &[prompt], false).unwrap());
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(tok);
        tok = argmax(&m.engine.forward(&mut [&mut seq], &[&[tok]], false).unwrap());
    }
    out
}

#[test]
fn onnx_export_runs_in_onnxruntime_with_our_logits_and_tokens() {
    let (dir, run) = trained();
    let d = dir.path();
    let model = run.to_str().unwrap();
    let prompt: Vec<u32> = vec![1, 2, 40, 41, 42, 7, 300, 4, 3];
    let ours = our_logits(run, &prompt);
    let greedy = our_greedy(run, &prompt, 20);
    let scale = ours.iter().fold(0f32, |m, x| m.max(x.abs()));
    // f32 (weights inline), f32 with external data, and int8 linear layers.
    for (out, extra) in [
        ("onnx", vec![]),
        ("onnx-ext", vec!["--external-data"]),
        ("onnx-int8", vec!["--quantize", "int8"]),
    ] {
        let mut args = vec!["export", "--model", model, "--format", "onnx", "-o", out];
        args.extend(&extra);
        ok(&args, d, None);
        assert!(d.join(out).join("model.onnx").is_file());
        assert!(d.join(out).join("tokenizer.json").is_file() && d.join(out).join("config.json").is_file());
        assert_eq!(
            d.join(out).join("model.onnx.data").is_file(),
            out == "onnx-ext",
            "{out}"
        );
        let v = ok(&["export", "verify", out], d, None);
        assert!(v.contains("ok: opset 17") && v.contains("2 layers"), "{v}");
        // The graph itself runs, prompt and KV-cache step, with the decoder's logits.
        assert!(
            v.contains("ran the graph on") && v.contains("through its KV cache"),
            "{v}"
        );
    }
    // A graph whose weights are right but whose computation is not (the attention scale doubled)
    // passes the static checks and fails the run.
    {
        use prost::Message;
        let bytes = std::fs::read(d.join("onnx/model.onnx")).unwrap();
        let mut m = chatforge_model::io::onnx::ModelProto::decode(bytes.as_slice()).unwrap();
        let t = m
            .graph
            .as_mut()
            .unwrap()
            .initializer
            .iter_mut()
            .find(|t| t.name == "const.attn_scale")
            .unwrap();
        let v = f32::from_le_bytes(t.raw_data[..4].try_into().unwrap());
        t.raw_data = (2.0 * v).to_le_bytes().to_vec();
        std::fs::create_dir_all(d.join("onnx-tampered")).unwrap();
        for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
            std::fs::copy(d.join("onnx").join(f), d.join("onnx-tampered").join(f)).unwrap();
        }
        std::fs::write(d.join("onnx-tampered/model.onnx"), m.encode_to_vec()).unwrap();
        let e = fails(&["export", "verify", "onnx-tampered"], d);
        assert!(e.contains("differ from the decoder's"), "{e}");
    }
    let e = fails(&["export", "verify", "hf-missing"], d);
    assert!(!e.is_empty());
    // A truncated external data file is caught.
    std::fs::create_dir_all(d.join("onnx-broken")).unwrap();
    std::fs::copy(d.join("onnx-ext/model.onnx"), d.join("onnx-broken/model.onnx")).unwrap();
    let data = std::fs::read(d.join("onnx-ext/model.onnx.data")).unwrap();
    std::fs::write(d.join("onnx-broken/model.onnx.data"), &data[..data.len() / 2]).unwrap();
    let e = fails(&["export", "verify", "onnx-broken"], d);
    assert!(e.contains("beyond the end of model.onnx.data"), "{e}");
    let info: Value = serde_json::from_str(&ok(&["export", "info", "onnx-int8", "--json"], d, None)).unwrap();
    assert_eq!(info["format"], "onnx");
    assert_eq!(info["manifest"]["quantization"], "int8");
    assert!(info["dtypes"]["MatMulInteger"].as_u64().unwrap() == 8, "{info}");

    // ONNX exports are models chatforge runs: the graph's weights read back into the decoder.
    // The f32 exports give the run's own logits and greedy tokens; int8 its dequantised ones.
    for out in ["onnx", "onnx-ext"] {
        let theirs = our_logits(&d.join(out), &prompt);
        assert!(max_abs_diff(&ours, &theirs) / scale < 1e-6, "{out}");
        assert_eq!(our_greedy(&d.join(out), &prompt, 20), greedy, "{out}");
    }
    let int8 = our_logits(&d.join("onnx-int8"), &prompt);
    assert!(max_abs_diff(&ours, &int8) / scale < 0.1, "int8 read back");
    let reply = ok(
        &[
            "chat",
            "--model",
            "onnx",
            "--temperature",
            "0",
            "--max-new-tokens",
            "6",
        ],
        d,
        Some("Hi!\n"),
    );
    let from_run = ok(
        &[
            "chat",
            "--model",
            model,
            "--temperature",
            "0",
            "--max-new-tokens",
            "6",
        ],
        d,
        Some("Hi!\n"),
    );
    assert_eq!(
        reply, from_run,
        "chat through the ONNX export answers as the run does"
    );
    let e = fails(
        &[
            "generate",
            "--model",
            "onnx",
            "--checkpoint",
            "latest",
            "--prompt",
            "x",
        ],
        d,
    );
    assert!(e.contains("one set of weights"), "{e}");

    let Some(py) = python() else { return };
    std::fs::write(
        d.join("onnx-req.json"),
        json!({"prompt": prompt, "new": 20}).to_string(),
    )
    .unwrap();
    for out in ["onnx", "onnx-ext", "onnx-int8"] {
        let r: Value = serde_json::from_str(&run_reference(
            &py,
            "export_check.py",
            &[
                "onnx",
                d.join(out).to_str().unwrap(),
                d.join("onnx-req.json").to_str().unwrap(),
            ],
        ))
        .unwrap();
        assert!(
            r["inputs"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i == "past_key_values.1.value")
        );
        assert!(
            r["outputs"]
                .as_array()
                .unwrap()
                .iter()
                .any(|o| o == "present.1.value")
        );
        assert!(
            r["batch2_diff"].as_f64().unwrap() < 1e-5,
            "{out}: batch of two differs"
        );
        let diff = max_abs_diff(&ours, &json_floats(&r["logits"]));
        eprintln!("{out}: logits within {diff} of chatforge's (largest logit {scale})");
        if out == "onnx-int8" {
            // Documented bound: int8 weights per column and uint8 activations per tensor.
            assert!(
                diff <= 0.05 * scale,
                "{out}: logits differ by {diff} (largest logit {scale})"
            );
        } else {
            assert!(diff < 1e-4, "{out}: logits differ from onnxruntime's by {diff}");
            let theirs: Vec<u32> = serde_json::from_value(r["tokens"].clone()).unwrap();
            assert_eq!(theirs, greedy, "{out}: greedy tokens with the cache");
        }
    }
}

#[test]
fn bad_exports_are_clear_errors_and_leave_nothing() {
    let (dir, run) = trained();
    let d = dir.path();
    let model = run.to_str().unwrap();
    let e = fails(&["export", "--model", model, "--format", "onnx2", "-o", "x"], d);
    assert!(e.contains("unknown export format"), "{e}");
    // Outputs go to bad/, which only this test writes (the other tests export beside it at the
    // same time, through temporary names of their own).
    std::fs::create_dir_all(d.join("bad/taken")).unwrap();
    let e = fails(
        &["export", "--model", model, "--format", "hf", "-o", "bad/taken"],
        d,
    );
    assert!(e.contains("--force"), "{e}");
    // A run with no checkpoint yet.
    std::fs::create_dir_all(d.join("empty-run/checkpoints")).unwrap();
    let e = fails(
        &["export", "--model", "empty-run", "--format", "hf", "-o", "bad/y"],
        d,
    );
    assert!(e.contains("no checkpoint"), "{e}");
    assert!(!d.join("bad/y").exists());
    // A failure while writing (here a tensor missing from the weights) leaves no output.
    let mut src = chatforge_infer::ModelSource::open(run, &Checkpoint::Best, None, None).unwrap();
    src.base.remove("transformer.h.1.mlp.c_fc.weight").unwrap();
    let opts = chatforge_export::ExportOptions {
        format: chatforge_export::Format::Gguf,
        gguf_quant: chatforge_export::GgufQuant::Q4_0,
        onnx: Default::default(),
        force: false,
    };
    let e = chatforge_export::export(&src, &opts, &d.join("bad/z")).unwrap_err();
    assert!(e.to_string().contains("transformer.h.1.mlp.c_fc.weight"), "{e}");
    assert!(!d.join("bad/z").exists());
    let leftovers: Vec<_> = std::fs::read_dir(d.join("bad"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    // --force replaces an export.
    ok(
        &[
            "export",
            "--model",
            model,
            "--format",
            "hf",
            "-o",
            "bad/taken",
            "--force",
        ],
        d,
        None,
    );
    assert!(d.join("bad/taken/model.safetensors").is_file());
}

#[test]
fn a_gguf_tensor_off_its_alignment_is_refused() {
    let (dir, run) = trained();
    let d = dir.path();
    let out = "gguf-misaligned";
    ok(
        &[
            "export",
            "--model",
            run.to_str().unwrap(),
            "--format",
            "gguf",
            "-o",
            out,
        ],
        d,
        None,
    );
    let file = d.join(out).join("model.gguf");
    let mut bytes = std::fs::read(&file).unwrap();
    // The tensor info of token_embd.weight: name (u64 length + bytes), n_dims (u32), dims
    // (u64 each), type (u32), offset (u64). Move its data one byte off the 32-byte alignment.
    let name = b"token_embd.weight";
    let mut key = (name.len() as u64).to_le_bytes().to_vec();
    key.extend_from_slice(name);
    let at = bytes
        .windows(key.len())
        .position(|w| w == key.as_slice())
        .unwrap()
        + key.len();
    let n_dims = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let off_at = at + 4 + 8 * n_dims + 4;
    let offset = u64::from_le_bytes(bytes[off_at..off_at + 8].try_into().unwrap());
    bytes[off_at..off_at + 8].copy_from_slice(&(offset + 1).to_le_bytes());
    std::fs::write(&file, &bytes).unwrap();
    let err = fails(&["chat", "--model", file.to_str().unwrap()], d);
    assert!(err.contains("not a multiple of the alignment 32"), "{err}");
}
