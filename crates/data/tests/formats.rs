//! Every supported format read from `fixtures/`, with what detection reports and exact contents.

#![allow(clippy::unwrap_used)] // tests: a failure should panic with its message

use std::path::PathBuf;

use chatforge_data::{
    Container, DataFormat, Error, FieldMap, ImportOptions, Pos, ReadOptions, Role, import, read_file,
};

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(rel)
}

fn read(rel: &str) -> chatforge_data::FileRead {
    read_file(&fixture(rel), &ReadOptions::default()).unwrap()
}

fn roles(c: &chatforge_data::Conversation) -> Vec<Role> {
    c.messages.iter().map(|m| m.role).collect()
}

#[test]
fn openai_messages_jsonl() {
    let r = read("formats/openai.jsonl");
    assert_eq!(r.detected.container, Container::Jsonl);
    assert_eq!(r.detected.format, DataFormat::Messages);
    assert_eq!(r.conversations.len(), 3);
    assert_eq!(
        roles(&r.conversations[0]),
        [Role::System, Role::User, Role::Assistant]
    );
    assert_eq!(r.conversations[1].messages[2].speaker.as_deref(), Some("sam"));
    assert_eq!(
        r.conversations[2].messages[0].content,
        "How many legs does a spider have?"
    );
    assert_eq!(r.conversations[2].domain(), Some("animals"));
    // Blank line 3 is skipped; the source points at line 4.
    assert!(
        r.conversations[2].meta["source"]
            .as_str()
            .unwrap()
            .ends_with("openai.jsonl:4")
    );
}

#[test]
fn sharegpt_json_list() {
    let r = read("formats/sharegpt.json");
    assert_eq!(r.detected.container, Container::JsonList);
    assert_eq!(r.detected.format, DataFormat::ShareGpt);
    assert_eq!(r.conversations.len(), 2);
    let second = &r.conversations[1];
    assert_eq!(
        roles(second),
        [
            Role::System,
            Role::User,
            Role::Assistant,
            Role::User,
            Role::Assistant
        ]
    );
    assert_eq!(second.messages[0].content, "Answer in one sentence.");
    assert!(
        second.meta["source"]
            .as_str()
            .unwrap()
            .ends_with("sharegpt.json:9")
    );
}

#[test]
fn alpaca_instruction_records() {
    let r = read("formats/alpaca.json");
    assert_eq!(r.detected.format, DataFormat::Instruction);
    assert_eq!(
        r.detected.fields.as_deref(),
        Some("instruction→user, output→assistant")
    );
    let texts: Vec<&str> = r
        .conversations
        .iter()
        .map(|c| c.messages[0].content.as_str())
        .collect();
    assert_eq!(
        texts,
        [
            "Give three tips for staying healthy.",
            "Translate the sentence into French.\n\nGood morning, how are you?",
            "Add the two numbers.\n\n7 and 5",
        ]
    );
}

#[test]
fn dict_holding_a_list_with_detected_fields_and_domains() {
    let r = read("formats/qa_dict.json");
    assert_eq!(
        r.detected.container,
        Container::JsonObject {
            key: Some("data".into())
        }
    );
    assert_eq!(
        r.detected.fields.as_deref(),
        Some("question→user, answer→assistant, category→domain")
    );
    let domains: Vec<Option<&str>> = r.conversations.iter().map(|c| c.domain()).collect();
    assert_eq!(domains, [Some("geography"), Some("literature"), Some("#science")]);
    assert_eq!(r.conversations[1].messages[1].content, "William Shakespeare.");
    assert_eq!(
        r.detected.to_string(),
        "JSON dict, records under \"data\" · instruction (question→user, answer→assistant, category→domain)"
    );
}

#[test]
fn unknown_fields_need_a_field_map() {
    let path = fixture("formats/custom_fields.jsonl");
    let err = read_file(&path, &ReadOptions::default()).unwrap_err().to_string();
    assert!(err.contains("custom_fields.jsonl, line 1"), "{err}");
    assert!(
        err.contains("[a, q, topic]") && err.contains("--field-map"),
        "{err}"
    );
    let opts = ReadOptions {
        field_map: "instruction=q,output=a,domain=topic".parse::<FieldMap>().unwrap(),
        ..ReadOptions::default()
    };
    let r = read_file(&path, &opts).unwrap();
    assert_eq!(r.detected.format, DataFormat::Instruction);
    assert_eq!(r.conversations[1].messages[1].content, "Green.");
    assert_eq!(r.conversations[1].domain(), Some("colours"));
}

#[test]
fn oasst_messages_flatten_best_first() {
    let r = read("formats/oasst_messages.jsonl");
    assert_eq!(r.detected.format, DataFormat::Oasst);
    let paths: Vec<Vec<&str>> = r
        .conversations
        .iter()
        .map(|c| c.messages.iter().map(|m| m.content.as_str()).collect())
        .collect();
    assert_eq!(
        paths,
        vec![
            // rank 0 branch first, followed to its leaf
            vec![
                "What is a good name for a cat?",
                "How about Luna? It is short and friendly.",
                "Why Luna?",
                "Luna means moon, and many cats love the night.",
            ],
            // rank 1 branch; its unanswered prompt is dropped; the deleted reply never appears
            vec!["What is a good name for a cat?", "Whiskers is a classic choice."],
            vec!["Is tea healthy?", "In moderation, tea is a healthy drink."],
        ]
    );
    assert_eq!(r.conversations[0].meta["message_tree_id"], "m1");

    let best = read_file(
        &fixture("formats/oasst_messages.jsonl"),
        &ReadOptions {
            oasst_best_only: true,
            ..ReadOptions::default()
        },
    )
    .unwrap();
    assert_eq!(best.conversations.len(), 2);
    assert_eq!(best.conversations[0].messages.len(), 4);
    // Pairs from ranks: m1's replies rank 0 (m3) over rank 1 (m2) (m7 was deleted); m4 and n1
    // have one reply each.
    let pairs = read_file(
        &fixture("formats/oasst_messages.jsonl"),
        &ReadOptions {
            pairs_from_ranks: true,
            ..ReadOptions::default()
        },
    )
    .unwrap();
    assert_eq!(pairs.conversations.len(), 1, "{:?}", pairs.conversations);
    let p = &pairs.conversations[0];
    assert_eq!(p.messages[0].content, "What is a good name for a cat?");
    assert_eq!(p.chosen[0].content, "How about Luna? It is short and friendly.");
    assert_eq!(p.rejected[0].content, "Whiskers is a classic choice.");
    assert_eq!(p.meta["message_tree_id"], "m1");
}

#[test]
fn oasst_trees() {
    let r = read("formats/oasst.trees.jsonl");
    assert_eq!(r.detected.format, DataFormat::OasstTrees);
    assert_eq!(r.conversations.len(), 2);
    assert_eq!(r.conversations[0].messages.len(), 4);
    assert_eq!(
        r.conversations[0].messages[3].content,
        "Six minutes gives a soft yolk."
    );
    assert_eq!(
        r.conversations[1].messages[1].content,
        "Simmer it for about nine minutes."
    );
}

#[test]
fn transcripts_with_continuation_lines() {
    let r = read("formats/transcript.txt");
    assert_eq!(r.detected.container, Container::Text);
    assert_eq!(r.detected.format, DataFormat::Transcript);
    assert_eq!(r.conversations.len(), 2);
    assert_eq!(
        r.conversations[0].messages[3].content,
        "Tokyo is usually eight or nine hours ahead of London,\nso it would be about 8 or 9 in the evening."
    );
    assert_eq!(roles(&r.conversations[1]), [Role::User, Role::Assistant]);
}

#[test]
fn yaml_dialogs() {
    let r = read("formats/dialogs.yaml");
    assert_eq!(r.detected.format, DataFormat::YamlDialog);
    assert_eq!(r.conversations.len(), 2);
    assert_eq!(
        roles(&r.conversations[0]),
        [Role::User, Role::Assistant, Role::User, Role::Assistant]
    );
    assert_eq!(r.conversations[1].domain(), Some("greetings"));
}

#[test]
fn forced_format_overrides_detection() {
    let opts = ReadOptions {
        format: Some(DataFormat::Transcript),
        ..ReadOptions::default()
    };
    // A JSON file forced to be a transcript has no role lines: a clear error, not garbage.
    let err = read_file(&fixture("formats/alpaca.json"), &opts)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("alpaca.json, line 1") && err.contains("User:"),
        "{err}"
    );
}

#[test]
fn malformed_jsonl_names_the_line_or_skips() {
    let path = fixture("broken/malformed.jsonl");
    let err = read_file(&path, &ReadOptions::default()).unwrap_err();
    match &err {
        Error::Record { pos, .. } => assert_eq!(*pos, Pos::Line(3)),
        other => panic!("expected a record error, got {other}"),
    }
    assert!(
        err.to_string().contains("malformed.jsonl, line 3: invalid JSON"),
        "{err}"
    );
    let r = read_file(
        &path,
        &ReadOptions {
            skip_invalid: true,
            ..ReadOptions::default()
        },
    )
    .unwrap();
    assert_eq!(r.conversations.len(), 3);
    assert_eq!(r.invalid.len(), 1);
}

#[test]
fn whole_file_problems() {
    let cases = [
        ("broken/bad_utf8.jsonl", "not valid UTF-8 at line 1 (byte 46)"),
        ("broken/empty.json", "file is empty"),
        ("broken/unknown.dat", "unknown format"),
        ("broken/syntax.json", "invalid JSON at line 2, column 15"),
    ];
    for (rel, expected) in cases {
        let err = read_file(&fixture(rel), &ReadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{rel}: expected '{expected}' in '{err}'");
        assert!(err.contains(rel.rsplit('/').next().unwrap()), "{err}");
    }
}

#[test]
fn bad_records_in_lists_and_trees() {
    let err = read_file(&fixture("broken/missing_output.json"), &ReadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("missing_output.json, line 3: no response field"),
        "{err}"
    );
    let err = read_file(&fixture("broken/orphan.oasst.jsonl"), &ReadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("line 3: parent message zz is not in the file"),
        "{err}"
    );
    let skipped = read_file(
        &fixture("broken/orphan.oasst.jsonl"),
        &ReadOptions {
            skip_invalid: true,
            ..ReadOptions::default()
        },
    )
    .unwrap();
    assert_eq!((skipped.conversations.len(), skipped.invalid.len()), (1, 1));
}

#[test]
fn import_merges_a_directory_and_filters() {
    let opts = ImportOptions {
        read: ReadOptions {
            skip_invalid: false,
            ..ReadOptions::default()
        },
        ..ImportOptions::default()
    };
    // custom_fields.jsonl needs a field map, so merge the others by name.
    let inputs: Vec<PathBuf> = [
        "openai.jsonl",
        "sharegpt.json",
        "alpaca.json",
        "transcript.txt",
        "dialogs.yaml",
    ]
    .iter()
    .map(|f| fixture(&format!("formats/{f}")))
    .collect();
    let all = import(&inputs, &opts).unwrap();
    assert_eq!(all.files.len(), 5);
    assert_eq!(all.conversations.len(), 3 + 2 + 3 + 2 + 2);

    let twice = [inputs[0].clone(), inputs[0].clone()];
    let deduped = import(
        &twice,
        &ImportOptions {
            dedupe: true,
            ..opts.clone()
        },
    )
    .unwrap();
    assert_eq!((deduped.conversations.len(), deduped.dropped_duplicates), (3, 3));

    let filtered = import(
        &inputs,
        &ImportOptions {
            min_turns: 4,
            max_chars: Some(150),
            ..opts.clone()
        },
    )
    .unwrap();
    assert_eq!(filtered.dropped_short, 8);
    assert!(
        filtered
            .conversations
            .iter()
            .all(|c| c.messages.len() >= 4 && c.chars() <= 150)
    );

    let tagged = import(
        &[fixture("formats/qa_dict.json")],
        &ImportOptions {
            domain_tag: true,
            ..opts
        },
    )
    .unwrap();
    assert_eq!(
        tagged.conversations[0].messages[0].content,
        "#geography What is the capital of Japan?"
    );
    assert_eq!(
        tagged.conversations[2].messages[0].content,
        "#science What gas do plants take in?"
    );
}

/// `*.jsonl.gz` (oasst1's own release is gzip-compressed) reads as the JSONL inside, lines and
/// errors counted in the decompressed text; a broken gzip file is named.
#[test]
fn gzip_compressed_files_read_as_their_contents() {
    use std::io::Write;
    let plain = std::fs::read(fixture("formats/openai.jsonl")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gz = dir.path().join("openai.jsonl.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(&plain).unwrap();
    std::fs::write(&gz, enc.finish().unwrap()).unwrap();
    let r = read_file(&gz, &ReadOptions::default()).unwrap();
    let want = read("formats/openai.jsonl");
    assert_eq!(
        r.detected.container,
        Container::Jsonl,
        "the container is the name's inner extension"
    );
    assert_eq!(r.conversations.len(), want.conversations.len());
    for (a, b) in r.conversations.iter().zip(&want.conversations) {
        assert_eq!(a.messages, b.messages);
    }
    assert!(
        r.conversations[2].meta["source"]
            .as_str()
            .unwrap()
            .ends_with("openai.jsonl.gz:4")
    );
    // Cut short: an error naming the file.
    let bytes = std::fs::read(&gz).unwrap();
    let cut = dir.path().join("cut.jsonl.gz");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = read_file(&cut, &ReadOptions::default()).unwrap_err().to_string();
    assert!(e.contains("cut.jsonl.gz") && e.contains("gzip"), "{e}");
    // A directory import takes `.jsonl.gz` files too.
    let imported = import(&[dir.path().to_path_buf()], &ImportOptions::default());
    assert!(imported.unwrap_err().to_string().contains("cut.jsonl.gz"));
}

/// CSV and TSV with a header: instruction/response columns detected as in JSON records, quoted
/// fields with commas, quotes and line breaks, `--field-map` for other names, and a malformed
/// row named by file and line.
#[test]
fn csv_and_tsv_with_a_header() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("qa.csv");
    std::fs::write(
        &csv,
        "instruction,input,output\n\"Add 2, 3\",,5\n\"Quote \"\"this\"\"\",,\"First line\nsecond line\"\n",
    )
    .unwrap();
    let r = read_file(&csv, &ReadOptions::default()).unwrap();
    assert_eq!(r.detected.container, Container::Csv { tabs: false });
    assert_eq!(r.detected.format, DataFormat::Instruction);
    assert_eq!(r.conversations.len(), 2);
    assert_eq!(r.conversations[0].messages[0].content, "Add 2, 3");
    assert_eq!(r.conversations[1].messages[0].content, "Quote \"this\"");
    assert_eq!(r.conversations[1].messages[1].content, "First line\nsecond line");
    assert!(
        r.conversations[1].meta["source"]
            .as_str()
            .unwrap()
            .ends_with("qa.csv:3")
    );

    let tsv = dir.path().join("pairs.tsv");
    std::fs::write(&tsv, "question\tanswer_text\nWhy?\tBecause.\n").unwrap();
    let opts = ReadOptions {
        field_map: "instruction=question,output=answer_text"
            .parse::<FieldMap>()
            .unwrap(),
        ..ReadOptions::default()
    };
    let r = read_file(&tsv, &opts).unwrap();
    assert_eq!(r.detected.container, Container::Csv { tabs: true });
    assert_eq!(r.conversations[0].messages[1].content, "Because.");

    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "instruction,output\na,b\nc,d,e\n").unwrap();
    match read_file(&bad, &ReadOptions::default()).unwrap_err() {
        Error::Record { path, pos, .. } => {
            assert!(path.ends_with("bad.csv"));
            assert_eq!(pos, Pos::Line(3));
        }
        other => panic!("{other}"),
    }
}

/// Plain text is a corpus of documents (paragraphs between blank lines), each a text
/// conversation; JSONL records holding a `text` field are documents too.
#[test]
fn plain_text_corpora_are_documents() {
    let r = read("formats/corpus.txt");
    assert_eq!(r.detected.container, Container::Text);
    assert_eq!(r.detected.format, DataFormat::Documents);
    let texts: Vec<&str> = r
        .conversations
        .iter()
        .map(|c| c.messages[0].content.as_str())
        .collect();
    assert_eq!(
        texts,
        [
            "The first paragraph of a corpus,\nover two lines.",
            "The second one.",
            "A third,\n  indented."
        ]
    );
    assert!(
        r.conversations
            .iter()
            .all(|c| c.is_text() && c.messages.len() == 1)
    );
    assert!(
        r.conversations[1].meta["source"]
            .as_str()
            .unwrap()
            .ends_with("corpus.txt:5")
    );
    // A transcript stays a transcript.
    assert_eq!(
        read("formats/transcript.txt").detected.format,
        DataFormat::Transcript
    );

    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("web.jsonl");
    std::fs::write(
        &jsonl,
        "{\"text\": \"One page.\", \"url\": \"x\"}\n{\"text\": \"Another.\"}\n",
    )
    .unwrap();
    let r = read_file(&jsonl, &ReadOptions::default()).unwrap();
    assert_eq!(r.detected.format, DataFormat::Documents);
    assert_eq!(r.conversations.len(), 2);
    assert!(r.conversations[0].is_text());
    std::fs::write(&jsonl, "{\"text\": \"One page.\"}\n{\"text\": 5}\n").unwrap();
    let e = read_file(&jsonl, &ReadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("web.jsonl") && e.contains("line 2") && e.contains("text"),
        "{e}"
    );
}
