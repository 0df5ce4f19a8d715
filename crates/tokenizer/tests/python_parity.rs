//! A tokenizer.json written by chatforge encodes text exactly as Python `tokenizers` does.

#![allow(clippy::unwrap_used)] // tests: a failure should panic with its message

use chatforge_data::write_jsonl;
use chatforge_testkit::{python, run_reference};
use chatforge_tokenizer::{ChatTokenizer, TokenizerKind, TrainOptions, ValSource, train_artifact};

#[test]
fn python_tokenizers_encodes_identically() {
    let Some(py) = python() else { return };
    let sample = chatforge_testkit::root().join("data/sample");
    let convs = chatforge_data::import(&[sample], &chatforge_data::ImportOptions::default())
        .unwrap()
        .conversations;
    let dir = tempfile::tempdir().unwrap();
    let train_path = dir.path().join("train.jsonl");
    write_jsonl(&train_path, &convs).unwrap();

    let mut texts: Vec<String> = convs
        .iter()
        .take(60)
        .flat_map(|c| c.messages.iter().map(|m| m.content.clone()))
        .collect();
    texts.extend([
        "Unicode: naïve café, 日本語, emoji 🙂 and tabs\tand  double  spaces".to_string(),
        "  leading spaces and a trailing newline\n".to_string(),
        "numbers 3.14159 and 1,000,000 and CAPS".to_string(),
    ]);
    let texts_path = dir.path().join("texts.json");
    std::fs::write(&texts_path, serde_json::to_string(&texts).unwrap()).unwrap();

    for kind in [TokenizerKind::Bpe, TokenizerKind::Unigram] {
        let out = dir.path().join(format!("{kind:?}"));
        let opts = TrainOptions {
            kind,
            vocab_size: 1000,
            ..TrainOptions::default()
        };
        train_artifact(
            std::slice::from_ref(&train_path),
            &ValSource::HoldOut(0.05),
            &opts,
            &out,
        )
        .unwrap();
        let tok = ChatTokenizer::load(&out).unwrap();
        let json = out.join("tokenizer.json");
        let reply = run_reference(
            &py,
            "tokenizer_parity.py",
            &[json.to_str().unwrap(), texts_path.to_str().unwrap()],
        );
        let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(reply["vocab_size"], tok.vocab_size(), "{kind:?}");
        for (i, text) in texts.iter().enumerate() {
            let ours = tok.encode(text).unwrap();
            let theirs: Vec<u32> = serde_json::from_value(reply["ids"][i].clone()).unwrap();
            assert_eq!(ours, theirs, "{kind:?} ids differ for {text:?}");
            assert_eq!(
                tok.decode(&ours, false).unwrap(),
                reply["decoded"][i].as_str().unwrap(),
                "{kind:?}"
            );
        }
    }
}
