//! Training, loading and the chat template, checked by hand on tiny corpora.

#![allow(clippy::unwrap_used)] // tests: a failure should panic with its message

use chatforge_data::{Conversation, Message, Role, write_jsonl};
use chatforge_testkit::fixture;
use chatforge_tokenizer::{
    ChatTokenizer, Persona, RenderOptions, Template, TokenizerKind, TrainOptions, ValSource, specials, train,
    train_artifact,
};

const TINY: [&str; 3] = ["hug hug hug", "pug pug", "hugs"];

fn tiny_bpe(vocab_size: usize) -> ChatTokenizer {
    let opts = TrainOptions {
        vocab_size,
        ..TrainOptions::default()
    };
    train(TINY.iter(), &opts).unwrap()
}

fn tokens(tok: &ChatTokenizer, ids: &[u32]) -> Vec<String> {
    ids.iter().map(|&id| tok.id_to_token(id).unwrap()).collect()
}

#[test]
fn bpe_learns_the_expected_merges() {
    // Words after byte-level pre-tokenization: hug, Ġhug ×2, pug, Ġpug, hugs.
    // Pair counts: (u,g) 6, then (h,ug) 4: the two merges a vocabulary of 256 + 5 + 2 allows.
    let tok = tiny_bpe(263);
    assert_eq!(tok.vocab_size(), 263);
    for (i, s) in specials::CHAT.iter().enumerate() {
        assert_eq!(tok.token_to_id(s), Some(i as u32), "{s}");
    }
    let ids = tok.encode("hugs pug").unwrap();
    assert_eq!(tokens(&tok, &ids), ["hug", "s", "Ġ", "p", "ug"]);
    assert_eq!(tok.decode(&ids, false).unwrap(), "hugs pug");
    // Characters never seen in training still round-trip through their bytes.
    let ids = tok.encode("héllo ✓").unwrap();
    assert_eq!(tok.decode(&ids, false).unwrap(), "héllo ✓");
    assert!(matches!(tok.template(), Template::Chat { .. }));
}

#[test]
fn too_small_a_bpe_vocab_is_refused() {
    let err = train(
        TINY.iter(),
        &TrainOptions {
            vocab_size: 100,
            ..TrainOptions::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("vocab size 100 is too small"), "{err}");
}

#[test]
fn unigram_trains_with_unknown_token() {
    let corpus: Vec<String> = (0..50)
        .map(|i| format!("the cat sat on the mat number {i} and the dog sat on the log"))
        .collect();
    let opts = TrainOptions {
        kind: TokenizerKind::Unigram,
        vocab_size: 120,
        ..TrainOptions::default()
    };
    let tok = train(corpus.iter(), &opts).unwrap();
    assert_eq!(tok.token_to_id(specials::END_OF_TEXT), Some(0));
    assert_eq!(tok.token_to_id(specials::UNK), Some(5));
    assert!(tok.vocab_size() <= 120, "{}", tok.vocab_size());
    let ids = tok.encode("the cat sat on the mat").unwrap();
    assert_eq!(tok.decode(&ids, false).unwrap(), "the cat sat on the mat");
    // 'Z' never occurs in training: Unigram has no byte fallback.
    let ids = tok.encode("Z").unwrap();
    assert!(ids.contains(&5), "{:?}", tokens(&tok, &ids));
    let stats = chatforge_tokenizer::TokenizerStats::measure(&tok, &["the cat", "Zebra"]).unwrap();
    assert!(stats.unknown_rate > 0.0 && stats.char_coverage < 1.0, "{stats:?}");
}

fn conv(messages: &[(Role, &str)]) -> Conversation {
    Conversation::new(messages.iter().map(|(r, c)| Message::new(*r, *c)).collect())
}

#[test]
fn chat_template_and_loss_mask_by_hand() {
    let tok = tiny_bpe(263);
    let c = conv(&[
        (Role::User, "hug"),
        (Role::Assistant, "pug"),
        (Role::User, "hugs"),
        (Role::Assistant, "hug"),
    ]);
    let r = tok.render_chat(&c, &RenderOptions::default()).unwrap();
    let expected = [
        ("<|user|>", 0),
        ("hug", 0),
        ("<|end|>", 0),
        ("<|assistant|>", 0),
        ("p", 1),
        ("ug", 1),
        ("<|end|>", 1),
        ("<|user|>", 0),
        ("hug", 0),
        ("s", 0),
        ("<|end|>", 0),
        ("<|assistant|>", 0),
        ("hug", 1),
        ("<|end|>", 1),
    ];
    let got: Vec<(String, u8)> = tokens(&tok, &r.ids)
        .into_iter()
        .zip(r.mask.iter().copied())
        .collect();
    let want: Vec<(String, u8)> = expected.iter().map(|(t, m)| (t.to_string(), *m)).collect();
    assert_eq!(got, want);

    // The prompt is the same prefix plus the opened assistant turn.
    let prompt = tok
        .render_prompt(&conv(&[(Role::User, "hug")]), &RenderOptions::default())
        .unwrap();
    assert_eq!(
        tokens(&tok, &prompt),
        ["<|user|>", "hug", "<|end|>", "<|assistant|>"]
    );
    assert_eq!(tok.stop_ids(), [4, 0]);
}

#[test]
fn system_persona_and_domain_options() {
    let tok = tiny_bpe(263);
    let mut c = conv(&[(Role::User, "hug"), (Role::Assistant, "pug")]);
    c.messages[1].speaker = Some("Pug".into());
    c.meta.insert("domain".into(), "ug".into());
    let opts = RenderOptions {
        system: Some("hug".into()),
        persona: Persona::FromSpeaker,
        domain_tag: true,
        channel: None,
    };
    let r = tok.render_chat(&c, &opts).unwrap();
    let text = tok.decode(&r.ids, false).unwrap();
    assert_eq!(
        text,
        "<|system|>hug\nRespond as Pug:<|end|><|user|>#ug hug<|end|><|assistant|>pug<|end|>"
    );
    // Only the assistant's content and its end carry loss.
    let loss: Vec<u32> = r
        .ids
        .iter()
        .zip(&r.mask)
        .filter(|(_, m)| **m == 1)
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(tok.decode(&loss, false).unwrap(), "pug<|end|>");
    // The conversation's own system message wins over the default; a fixed persona is used as given.
    let mut own = c.clone();
    own.messages.insert(0, Message::new(Role::System, "pug"));
    let opts = RenderOptions {
        persona: Persona::Fixed("Al".into()),
        ..opts
    };
    let text = tok
        .decode(&tok.render_chat(&own, &opts).unwrap().ids, false)
        .unwrap();
    assert!(text.starts_with("<|system|>pug\nRespond as Al:<|end|>"), "{text}");
    // The channel goes in front of the persona line, as persona training writes it.
    let opts = RenderOptions {
        channel: Some("gen".into()),
        ..opts
    };
    let text = tok
        .decode(&tok.render_chat(&own, &opts).unwrap().ids, false)
        .unwrap();
    assert!(
        text.starts_with(&format!(
            "<|system|>pug\n{}<|end|>",
            chatforge_data::personas::persona_line("Al", Some("gen"))
        )),
        "{text}"
    );
    assert!(
        text.starts_with("<|system|>pug\nChannel: gen | Respond as Al:<|end|>"),
        "{text}"
    );
}

#[test]
fn content_cannot_spell_special_tokens() {
    let tok = tiny_bpe(263);
    let c = conv(&[(Role::User, "<|assistant|>hug"), (Role::Assistant, "pug")]);
    let r = tok.render_chat(&c, &RenderOptions::default()).unwrap();
    let assistant = tok.token_to_id(specials::ASSISTANT).unwrap();
    assert_eq!(r.ids.iter().filter(|&&i| i == assistant).count(), 1);
    assert_eq!(r.mask.iter().filter(|&&m| m == 1).count(), 3);
}

#[test]
fn gpt2_files_load_with_the_plain_template() {
    let tok = ChatTokenizer::load(&fixture("gpt2-tiny")).unwrap();
    assert_eq!(tok.vocab_size(), 265);
    assert_eq!(tok.template(), Template::Plain { eos: Some(264) });
    let same = ChatTokenizer::load(&fixture("gpt2-tiny/vocab.json")).unwrap();
    assert_eq!(same.vocab_size(), 265);

    let c = conv(&[(Role::User, "hug"), (Role::Assistant, "pug")]);
    let r = tok.render_chat(&c, &RenderOptions::default()).unwrap();
    let got: Vec<(String, u8)> = tokens(&tok, &r.ids)
        .into_iter()
        .zip(r.mask.iter().copied())
        .collect();
    let want: Vec<(&str, u8)> = vec![
        ("User", 0),
        (":", 0),
        ("Ġhug", 0),
        ("Ċ", 0),
        ("A", 0),
        ("s", 0),
        ("s", 0),
        ("i", 0),
        ("s", 0),
        ("t", 0),
        ("a", 0),
        ("n", 0),
        ("t", 0),
        (":", 0),
        ("Ġpug", 1),
        ("<|endoftext|>", 1),
    ];
    let want: Vec<(String, u8)> = want.into_iter().map(|(t, m)| (t.to_string(), m)).collect();
    assert_eq!(got, want);
    assert_eq!(
        tok.decode(&r.ids, false).unwrap(),
        "User: hug\nAssistant: pug<|endoftext|>"
    );
}

#[test]
fn load_errors_name_the_path() {
    let err = ChatTokenizer::load(&fixture("nope")).unwrap_err().to_string();
    assert!(err.contains("nope") && err.contains("no such file"), "{err}");
    let err = ChatTokenizer::load(&fixture("formats")).unwrap_err().to_string();
    assert!(err.contains("expected tokenizer.json"), "{err}");
    let err = ChatTokenizer::load(&fixture("formats/openai.jsonl"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a tokenizer.json"), "{err}");
}

#[test]
fn artifact_directory_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let train_path = dir.path().join("train.jsonl");
    let convs: Vec<Conversation> = (0..40)
        .map(|i| {
            conv(&[
                (Role::User, &format!("hug number {i}")),
                (Role::Assistant, "pug pug hug"),
            ])
        })
        .collect();
    write_jsonl(&train_path, &convs).unwrap();
    assert_eq!(ValSource::beside(&train_path), ValSource::HoldOut(0.05));
    let val_path = dir.path().join("train.val.jsonl");
    write_jsonl(&val_path, &convs[..5]).unwrap();
    let val = ValSource::beside(&train_path);
    assert_eq!(val, ValSource::File(val_path.clone()));

    let out = dir.path().join("tok");
    let opts = TrainOptions {
        vocab_size: 300,
        ..TrainOptions::default()
    };
    let report = train_artifact(std::slice::from_ref(&train_path), &val, &opts, &out).unwrap();
    assert_eq!((report.train_conversations, report.val_conversations), (40, 5));
    assert_eq!(report.stats.texts, 10);
    assert_eq!(report.stats.unknown_rate, 0.0);
    assert!(report.stats.chars_per_token > 1.0, "{:?}", report.stats);

    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["kind"], "bpe");
    assert_eq!(manifest["inputs"][0]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(manifest["inputs"][0]["conversations"], 40);
    assert_eq!(
        manifest["versions"]["tokenizers"],
        chatforge_tokenizer::TOKENIZERS_VERSION
    );
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("stats.json")).unwrap()).unwrap();
    assert_eq!(stats["vocab_size"], report.tokenizer.vocab_size());

    let loaded = ChatTokenizer::load(&out).unwrap();
    let c = &convs[3];
    assert_eq!(
        loaded.render_chat(c, &RenderOptions::default()).unwrap(),
        report
            .tokenizer
            .render_chat(c, &RenderOptions::default())
            .unwrap()
    );
    // The saved file matches special tokens in text as other tools expect.
    let text = std::fs::read_to_string(out.join("tokenizer.json")).unwrap();
    assert!(text.contains("\"<|assistant|>\""));
}

#[test]
fn pinned_version_matches_the_workspace() {
    let cargo = std::fs::read_to_string(chatforge_testkit::root().join("Cargo.toml")).unwrap();
    let pin = format!(
        "tokenizers = {{ version = \"={}\"",
        chatforge_tokenizer::TOKENIZERS_VERSION
    );
    assert!(
        cargo.contains(&pin),
        "update TOKENIZERS_VERSION to the workspace pin"
    );
}

/// Seeded strings mixing what real text has: words, contractions, runs of every kind of
/// whitespace, digits, punctuation, accents, combining marks, CJK, Devanagari, emoji.
fn tricky_texts() -> Vec<String> {
    let parts = [
        "hug",
        "Hug",
        " pug",
        "don't",
        "I'm",
        "we'll",
        "they're",
        "'s",
        "  ",
        "   ",
        "\t",
        "\n",
        "\n\n",
        " \n ",
        "\r\n",
        "42",
        " 3.14",
        "1,000",
        "!!",
        " ?",
        "...",
        "é",
        "e\u{301}",
        "naïve",
        "日本語",
        " 東京",
        "हिन्दी",
        "🙂",
        " 🙂",
        "Ⅻ",
        "x²",
        "\u{a0}",
        "—",
        "<|user|>",
        "'",
        " '",
        "a'b",
        "¿qué?",
    ];
    let mut rng = chatforge_data::Rng::new(5);
    (0..400)
        .map(|_| {
            let n = 1 + rng.below(12) as usize;
            (0..n)
                .map(|_| parts[rng.below(parts.len() as u64) as usize])
                .collect()
        })
        .collect()
}

#[test]
fn fast_encoder_equals_the_tokenizers_pipeline() {
    let corpus: Vec<String> = tricky_texts()
        .into_iter()
        .chain(TINY.iter().map(|s| s.to_string()))
        .collect();
    let trained = train(
        corpus.iter(),
        &TrainOptions {
            vocab_size: 400,
            min_frequency: 1,
            ..TrainOptions::default()
        },
    )
    .unwrap();
    let gpt2 = ChatTokenizer::load(&fixture("gpt2-tiny")).unwrap();
    for tok in [trained, gpt2] {
        assert!(tok.uses_fast_encoder());
        let mut enc = tok.encoder();
        for text in tricky_texts() {
            let mut fast = Vec::new();
            enc.encode_into(&text, &mut fast).unwrap();
            let reference = tok
                .inner()
                .encode(text.as_str(), false)
                .unwrap()
                .get_ids()
                .to_vec();
            assert_eq!(fast, reference, "{text:?}");
        }
    }
    let unigram = train(
        corpus.iter(),
        &TrainOptions {
            kind: TokenizerKind::Unigram,
            vocab_size: 200,
            ..TrainOptions::default()
        },
    )
    .unwrap();
    assert!(!unigram.uses_fast_encoder());
}

/// A plain-text document renders as its text and the end-of-text token, every token carrying
/// loss, with either template; no role markers.
#[test]
fn text_documents_render_as_text_then_end_of_text() {
    let doc = Conversation::text("Once upon a time.\nThe end.");
    let gpt2 = ChatTokenizer::load(&fixture("gpt2-tiny")).unwrap();
    let chat = {
        let convs = [Conversation::new(vec![
            Message::new(Role::User, "Once upon a time there was a fox."),
            Message::new(Role::Assistant, "The end of the story, said the fox."),
        ])];
        chatforge_tokenizer::train(
            convs
                .iter()
                .flat_map(|c| c.messages.iter().map(|m| m.content.as_str())),
            &TrainOptions {
                vocab_size: 300,
                ..TrainOptions::default()
            },
        )
        .unwrap()
    };
    for tok in [&gpt2, &chat] {
        let r = tok.render_chat(&doc, &RenderOptions::default()).unwrap();
        let mut want = tok.encode("Once upon a time.\nThe end.").unwrap();
        want.extend(tok.end_of_text());
        assert_eq!(r.ids, want);
        assert!(r.mask.iter().all(|&m| m == 1), "every token carries loss");
    }
}
