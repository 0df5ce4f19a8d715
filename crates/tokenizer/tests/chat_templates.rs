//! A model's own chat template against transformers' `apply_chat_template`: SmolLM2's, Qwen2.5's,
//! TinyLlama's (on a SentencePiece-style tokenizer with byte fallback), Llama 3.2's (with
//! `strftime_now`) and a ChatML template with `{% generation %}` blocks give the same ids for a
//! whole conversation and for the prompt of its last reply; the loss mask equals transformers'
//! assistant mask where the template marks it, and elsewhere covers exactly the assistant's
//! replies and what ends them. Reference: scripts/reference/chat_templates.py.

#![allow(clippy::unwrap_used)] // tests: a failure should panic with its message

use chatforge_data::{Conversation, Role};
use chatforge_testkit::{json_ids, python, run_reference};
use chatforge_tokenizer::{ChatTokenizer, RenderOptions, Template};
use serde_json::Value;

#[test]
fn model_templates_render_as_transformers_does() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    run_reference(&py, "chat_templates.py", &[dir.path().to_str().unwrap()]);
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("reference.json")).unwrap()).unwrap();
    let flat = |v: &Value| json_ids(&Value::Array(vec![v.clone()])).concat();
    let opts = RenderOptions::default();
    for (name, cases) in reference.as_object().unwrap() {
        let tok = ChatTokenizer::load(&dir.path().join(name)).unwrap();
        assert!(matches!(tok.template(), Template::Model { .. }), "{name}");
        for (i, case) in cases.as_array().unwrap().iter().enumerate() {
            let conv: Conversation =
                serde_json::from_value(serde_json::json!({"messages": case["messages"]})).unwrap();
            let r = tok.render_chat(&conv, &opts).unwrap();
            assert_eq!(r.ids, flat(&case["ids"]), "{name} #{i}: conversation ids");
            let mut asking = conv.clone();
            asking.messages.pop();
            assert_eq!(
                tok.render_prompt(&asking, &opts).unwrap(),
                flat(&case["prompt"]),
                "{name} #{i}: prompt ids"
            );
            if case.get("mask").is_some() {
                let want: Vec<u8> = flat(&case["mask"]).iter().map(|&m| m as u8).collect();
                assert_eq!(r.mask, want, "{name} #{i}: assistant mask");
            }
            // The masked tokens are the replies, each with what ends it, in order.
            let mut spans: Vec<Vec<u32>> = Vec::new();
            for (k, (&id, &m)) in r.ids.iter().zip(&r.mask).enumerate() {
                if m == 1 {
                    if k == 0 || r.mask[k - 1] == 0 {
                        spans.push(Vec::new());
                    }
                    spans.last_mut().unwrap().push(id);
                }
            }
            let replies: Vec<&str> = conv
                .messages
                .iter()
                .filter(|m| m.role == Role::Assistant)
                .map(|m| m.content.as_str())
                .collect();
            assert_eq!(spans.len(), replies.len(), "{name} #{i}: one span per reply");
            for (span, reply) in spans.iter().zip(&replies) {
                let text = tok.decode(span, false).unwrap();
                assert!(
                    text.trim_start().starts_with(reply.trim()),
                    "{name} #{i}: {text:?} vs {reply:?}"
                );
                let stop = tok.stop_ids();
                assert!(
                    span.iter().any(|id| stop.contains(id)),
                    "{name} #{i}: {text:?} has no end"
                );
            }
        }
    }
}
