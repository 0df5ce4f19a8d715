//! Chat exports, consent and personas: reading the fixture export (fixtures/chat-export, written
//! by scripts/make_chat_export.py), hand-made exports for exact thread rules, the registry, and
//! the examples each strategy makes.

#![allow(clippy::unwrap_used)] // tests: a failure should panic with its message

use std::path::{Path, PathBuf};

use chatforge_data::personas::{
    ExampleOptions, Persona, Registry, Strategy, Targets, build_examples, discover, persona_line, slug,
};
use chatforge_data::{
    ChatExportOptions, Consent, Conversation, ImportOptions, MentionMode, Message, Role, Rule, UrlMode,
    import, read_chat_export,
};
use serde_json::{Value, json};

fn fixture() -> PathBuf {
    chatforge_testkit::fixture("chat-export")
}

/// The fixture's channel files zipped, as a user's export arrives.
fn zipped(dir: &Path) -> PathBuf {
    let out = dir.join("export.zip");
    chatforge_testkit::zip_dir(&fixture().join("export"), &out, "Forge Club");
    out
}

fn all_text(convs: &[Conversation]) -> String {
    convs
        .iter()
        .map(|c| serde_json::to_string(c).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every message of the fixture's raw channel files.
fn raw_messages() -> Vec<Value> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(fixture().join("export")).unwrap() {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(e.unwrap().path()).unwrap()).unwrap();
        out.extend(v["messages"].as_array().unwrap().iter().cloned());
    }
    out
}

#[test]
fn a_zip_and_its_directory_read_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let opts = ChatExportOptions::default();
    let (from_zip, rz) = read_chat_export(&[zipped(dir.path())], &opts).unwrap();
    let (from_dir, rd) = read_chat_export(&[fixture().join("export")], &opts).unwrap();
    assert_eq!(rz.files.len(), 3);
    assert!(rz.files[0].contains("export.zip!Forge Club/"), "{:?}", rz.files);
    let strip = |cs: Vec<Conversation>| -> Vec<Conversation> {
        cs.into_iter()
            .map(|mut c| {
                c.meta.remove("source");
                c
            })
            .collect()
    };
    assert_eq!(strip(from_zip), strip(from_dir));
    assert_eq!(
        (rz.messages, rz.reply_pairs, rz.threads),
        (rd.messages, rd.reply_pairs, rd.threads)
    );
    // import() takes a .zip as a chat export without --format.
    let r = import(&[dir.path().join("export.zip")], &ImportOptions::default()).unwrap();
    assert!(r.chat.is_some() && !r.conversations.is_empty());
}

#[test]
fn the_fixture_export_filters_pairs_and_threads() {
    let raw = raw_messages();
    // Everyone allowed, so speakers keep their ids.
    let (convs, r) = read_chat_export(&[fixture().join("export")], &allow_all()).unwrap();
    let count = |f: &dyn Fn(&Value) -> bool| raw.iter().filter(|m| f(m)).count();
    assert_eq!(r.messages, raw.len());
    assert_eq!(r.bots, count(&|m| m["author"]["isBot"] == true));
    assert_eq!(
        r.system,
        count(&|m| !["Default", "Reply"].contains(&m["type"].as_str().unwrap()))
    );
    let talk = |m: &Value| {
        ["Default", "Reply"].contains(&m["type"].as_str().unwrap()) && m["author"]["isBot"] == false
    };
    let blank = |m: &Value| talk(m) && m["content"].as_str().unwrap().trim().is_empty();
    assert_eq!(
        r.attachments_only,
        count(&|m| blank(m) && !m["attachments"].as_array().unwrap().is_empty())
    );
    assert_eq!(
        r.empty,
        count(&|m| blank(m) && m["attachments"].as_array().unwrap().is_empty())
    );
    // Everyone allowed: every reply pairs with the message it answers.
    assert_eq!(r.replies_to_excluded, 0);
    assert_eq!(r.reply_pairs, count(&|m| talk(m) && m.get("reference").is_some()));
    assert_eq!(r.consent["allow"].users, 5);
    let pairs: Vec<&Conversation> = convs.iter().filter(|c| c.meta["kind"] == "reply").collect();
    assert_eq!(pairs.len(), r.reply_pairs);
    let by_id = |id: &str| raw.iter().find(|m| m["id"] == id).unwrap();
    for p in &pairs {
        assert_eq!(p.messages.len(), 2);
        assert_eq!(
            (p.messages[0].role, p.messages[1].role),
            (Role::User, Role::Assistant)
        );
        // The first is the very message the second replies to (the source names it).
        let source = p.meta["source"].as_str().unwrap();
        let first_id = source.rsplit('#').next().unwrap();
        assert_eq!(
            by_id(first_id)["content"],
            p.messages[0].content.as_str(),
            "{source}"
        );
    }
    // Speakers are user ids; the renamed user has his newest name.
    for c in &convs {
        for m in &c.messages {
            let sp = m.speaker.as_deref().unwrap();
            assert!(sp.chars().all(|ch| ch.is_ascii_digit()), "{sp}");
        }
        if let Some(name) = c.meta["speakers"].get("1002") {
            assert_eq!(name, "Robert");
        }
        assert!(c.meta["channel"].is_string() && c.meta["start"].is_string());
    }
    let text = all_text(&convs);
    assert!(!text.contains("Reminder: be kind"), "bot text kept");
    assert!(!text.contains("https://example.org"), "URL kept");
    assert!(text.contains("check <url> for recipes"));
    // <@1001> became the mention of her current name.
    assert!(text.contains("Agreed, @Alice!"));
}

/// Export options that keep every user's name (a consent file's `default = "allow"`).
fn allow_all() -> ChatExportOptions {
    let mut opts = ChatExportOptions::default();
    opts.consent.default = Rule::Allow;
    opts
}

#[test]
fn without_a_consent_decision_everyone_is_anonymised() {
    let raw = raw_messages();
    let (convs, r) = read_chat_export(&[fixture().join("export")], &ChatExportOptions::default()).unwrap();
    assert_eq!((r.consent["allow"].users, r.consent["anonymize"].users), (0, 5));
    for c in &convs {
        for m in &c.messages {
            assert_eq!(m.speaker.as_deref(), Some(chatforge_data::ANONYMOUS_ID), "{m:?}");
        }
    }
    // Nobody's name survives in the text either.
    let text = all_text(&convs);
    for m in &raw {
        let name = m["author"]["name"].as_str().unwrap();
        if m["author"]["isBot"] == false {
            assert!(!text.contains(&format!("@{name}")), "{name} named in the text");
        }
    }
}

#[test]
fn consent_rules_remove_and_anonymise_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let opts = ChatExportOptions {
        consent: Consent::load(&fixture().join("consent.json")).unwrap(),
        ..ChatExportOptions::default()
    };
    let (convs, r) = read_chat_export(&[zipped(dir.path())], &opts).unwrap();
    let raw = raw_messages();
    let by = |uid: &str| {
        raw.iter()
            .filter(|m| {
                m["author"]["id"] == uid
                    && m["type"] != "GuildMemberJoin"
                    && m["type"] != "ChannelPinnedMessage"
            })
            .count()
    };
    assert_eq!(
        (r.consent["exclude"].users, r.consent["exclude"].messages),
        (1, by("1003"))
    );
    assert_eq!(
        (r.consent["anonymize"].users, r.consent["anonymize"].messages),
        (1, by("1004"))
    );
    // Every reply to Carol went with her.
    let carol_ids: Vec<&Value> = raw
        .iter()
        .filter(|m| m["author"]["id"] == "1003")
        .map(|m| &m["id"])
        .collect();
    assert_eq!(
        r.replies_to_excluded,
        raw.iter()
            .filter(|m| m
                .get("reference")
                .is_some_and(|x| carol_ids.contains(&&x["messageId"])))
            .count()
    );
    assert!(r.replies_to_excluded > 0);
    let text = all_text(&convs);
    // (Ids as whole JSON strings: message ids such as 10032 contain the digits.)
    for gone in [
        "CAROL-SECRET",
        "Carol",
        "carol",
        "\"1003\"",
        "Dave",
        "\"1004\"",
        "dave",
    ] {
        assert!(!text.contains(gone), "{gone} reached the output");
    }
    assert!(
        text.contains("Thanks Anonymous, see you there @Anonymous."),
        "mentions scrubbed"
    );
    assert!(text.contains("And Anonymous said the same."));
    assert!(
        convs
            .iter()
            .flat_map(|c| &c.messages)
            .any(|m| m.speaker.as_deref() == Some("anonymous"))
    );

    // Opt-in (TOML): only the two who said yes remain, and nobody else's words.
    let opts = ChatExportOptions {
        consent: Consent::load(&fixture().join("consent-opt-in.toml")).unwrap(),
        ..ChatExportOptions::default()
    };
    let (convs, r) = read_chat_export(&[fixture().join("export")], &opts).unwrap();
    assert_eq!(r.consent["allow"].users, 2);
    assert_eq!(r.consent["exclude"].users, 3);
    for c in &convs {
        for m in &c.messages {
            assert!(["1001", "1002"].contains(&m.speaker.as_deref().unwrap()));
        }
    }
    let text = all_text(&convs);
    for gone in [
        "hello everyone",
        "what a week",
        "see you all",
        "Erin",
        "CAROL-SECRET",
        "snacks",
    ] {
        assert!(!text.contains(gone), "{gone} reached the output");
    }
}

/// A one-channel export of (id, author id, minute, content, replies-to).
fn write_export(dir: &Path, msgs: &[(&str, &str, u32, &str, Option<&str>)]) -> PathBuf {
    let messages: Vec<Value> = msgs
        .iter()
        .map(|(id, author, minute, content, reply)| {
            let mut m = json!({
                "id": id,
                "type": if reply.is_some() { "Reply" } else { "Default" },
                "timestamp": format!("2024-01-01T{:02}:{:02}:00+00:00", minute / 60, minute % 60),
                "content": content,
                "author": {"id": author, "name": format!("user{author}"), "nickname": null, "isBot": author == &"9"},
                "attachments": [],
                "mentions": [],
            });
            if let Some(r) = reply {
                m["reference"] = json!({"messageId": r});
            }
            m
        })
        .collect();
    let path = dir.join("chan.json");
    let file = json!({"guild": {"id": "1", "name": "G"}, "channel": {"id": "5", "name": "lounge"}, "messages": messages});
    std::fs::write(&path, serde_json::to_string_pretty(&file).unwrap()).unwrap();
    path
}

#[test]
fn threads_follow_the_time_gap_and_replies_pair() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_export(
        dir.path(),
        &[
            ("1", "1", 0, "morning", None),
            ("2", "2", 2, "hi there", None),
            ("3", "9", 3, "bot noise", None),
            ("4", "1", 4, "how are you", None),
            ("5", "1", 5, "still here?", None),
            // An hour later: a new thread, with a reply to message 2 inside it.
            ("6", "2", 65, "back now", None),
            ("7", "1", 66, "replying to your hi", Some("2")),
            ("8", "1", 67, "welcome back", None),
            // Alone much later: one speaker, dropped.
            ("9", "2", 300, "anyone?", None),
        ],
    );
    let (convs, r) = read_chat_export(std::slice::from_ref(&path), &allow_all()).unwrap();
    assert_eq!(r.bots, 1);
    assert_eq!((r.reply_pairs, r.threads, r.single_speaker), (1, 3, 1));
    let shape = |c: &Conversation| -> Vec<(Role, String, String)> {
        c.messages
            .iter()
            .map(|m| (m.role, m.speaker.clone().unwrap(), m.content.clone()))
            .collect()
    };
    let (u, a) = (Role::User, Role::Assistant);
    let s = |x: &str| x.to_string();
    assert_eq!(convs.len(), 3);
    // Roles change with the author; a run of one author keeps its role.
    assert_eq!(
        shape(&convs[0]),
        vec![
            (u, s("1"), s("morning")),
            (a, s("2"), s("hi there")),
            (u, s("1"), s("how are you")),
            (u, s("1"), s("still here?")),
        ]
    );
    assert_eq!(convs[0].meta["kind"], "thread");
    assert_eq!(convs[0].meta["channel"], "lounge");
    assert_eq!(
        shape(&convs[1]),
        vec![(u, s("2"), s("hi there")), (a, s("1"), s("replying to your hi"))]
    );
    assert_eq!(convs[1].meta["kind"], "reply");
    assert_eq!(
        shape(&convs[2]),
        vec![(u, s("2"), s("back now")), (a, s("1"), s("welcome back"))]
    );
    // A wider gap joins the first two threads; a length cap cuts them again.
    let wide = ChatExportOptions {
        thread_gap_minutes: 120.0,
        ..ChatExportOptions::default()
    };
    let (convs, r) = read_chat_export(std::slice::from_ref(&path), &wide).unwrap();
    assert_eq!((r.threads, convs.len()), (2, 2));
    let capped = ChatExportOptions {
        thread_gap_minutes: 120.0,
        max_thread_messages: 2,
        ..ChatExportOptions::default()
    };
    let (_, r) = read_chat_export(std::slice::from_ref(&path), &capped).unwrap();
    assert_eq!(r.threads, 4);
}

#[test]
fn mentions_and_urls_are_normalised_as_asked() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_export(
        dir.path(),
        &[
            (
                "1",
                "1",
                0,
                "hey <@2> look at https://a.example/x?y=1 <:party:123> in <#5>",
                None,
            ),
            ("2", "2", 1, "thanks @user1  <@&77>", None),
        ],
    );
    let read = |mentions, urls| {
        let opts = ChatExportOptions {
            mentions,
            urls,
            ..allow_all()
        };
        let (convs, _) = read_chat_export(std::slice::from_ref(&path), &opts).unwrap();
        convs[0]
            .messages
            .iter()
            .map(|m| m.content.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        read(MentionMode::Name, UrlMode::Placeholder),
        [
            "hey @user2 look at <url> :party: in #lounge",
            "thanks @user1 @role"
        ]
    );
    assert_eq!(
        read(MentionMode::Placeholder, UrlMode::Keep),
        [
            "hey @user look at https://a.example/x?y=1 :party: in #lounge",
            "thanks @user @role"
        ]
    );
    assert_eq!(
        read(MentionMode::Remove, UrlMode::Remove),
        ["hey look at :party: in #lounge", "thanks @role"]
    );
}

#[test]
fn malformed_exports_name_the_file_and_message() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.json");
    std::fs::write(
        &path,
        r#"{"channel": {"name": "x"}, "messages": [{"id": "1", "timestamp": "2024-01-01T00:00:00Z", "author": {"id": "1"}, "content": "ok"}, {"id": "2", "timestamp": "noon", "author": {"id": "1"}, "content": "x"}]}"#,
    )
    .unwrap();
    let e = read_chat_export(std::slice::from_ref(&path), &ChatExportOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("bad.json") && e.contains("item 2") && e.contains("message 2") && e.contains("noon"),
        "{e}"
    );
    std::fs::write(&path, "{\n  \"messages\": [1,\n").unwrap();
    let e = read_chat_export(std::slice::from_ref(&path), &ChatExportOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad.json") && e.contains("line"), "{e}");
    // Read as ordinary data, a channel file says what it is.
    let ch = fixture()
        .join("export")
        .join("Forge Club - Text - general [900].json");
    let e = import(&[ch], &ImportOptions::default()).unwrap_err().to_string();
    assert!(e.contains("--format chat-export"), "{e}");
}

fn msg(role: Role, speaker: &str, content: &str) -> Message {
    Message {
        role,
        content: content.into(),
        speaker: Some(speaker.into()),
    }
}

/// A thread: A, B, B, A, C in #lounge.
fn thread() -> Conversation {
    let mut c = Conversation::new(vec![
        msg(Role::User, "A", "a1"),
        msg(Role::Assistant, "B", "b1"),
        msg(Role::Assistant, "B", "b2"),
        msg(Role::User, "A", "a2"),
        msg(Role::Assistant, "C", "c1"),
    ]);
    c.meta.insert("channel".into(), "lounge".into());
    c.meta.insert("kind".into(), "thread".into());
    c.meta.insert("start".into(), "2024-01-01T00:00:00Z".into());
    c.meta
        .insert("speakers".into(), json!({"A": "Ann", "B": "Ben", "C": "Cy"}));
    c
}

/// (role, content) of each message.
fn turns(c: &Conversation) -> Vec<(Role, &str)> {
    c.messages.iter().map(|m| (m.role, m.content.as_str())).collect()
}

#[test]
fn unified_examples_are_every_speakers_perspective() {
    let ex = build_examples(&[thread()], Targets::Everyone, &ExampleOptions::default());
    let (u, a) = (Role::User, Role::Assistant);
    let got: Vec<Vec<(Role, &str)>> = ex.iter().map(turns).collect();
    assert_eq!(
        got,
        vec![
            // A: up to A's last turn; A's turns are the assistant's.
            vec![(a, "a1"), (u, "b1\nb2"), (a, "a2")],
            // B: consecutive messages joined into one turn.
            vec![(u, "a1"), (a, "b1\nb2")],
            vec![(u, "a1"), (u, "b1\nb2"), (u, "a2"), (a, "c1")],
        ]
    );
    assert!(
        ex.iter()
            .all(|e| e.meta["channel"] == "lounge" && e.meta.contains_key("target"))
    );
    // Every message is a target exactly once (A's first turn included).
    let targets: usize = ex
        .iter()
        .map(|e| e.messages.iter().filter(|m| m.role == Role::Assistant).count())
        .sum();
    // Five messages, b1 and b2 joined: four turns.
    assert_eq!(targets, 4);
}

#[test]
fn instruction_and_adapter_examples_follow_the_registry() {
    let mut reg = Registry::default();
    reg.add("A", "Ann", "").unwrap();
    reg.add("C", "Cy", "").unwrap();
    reg.set_enabled("Cy", false).unwrap();
    let ex = build_examples(&[thread()], Targets::Instructed(&reg), &ExampleOptions::default());
    assert_eq!(ex.len(), 1, "only enabled personas are targets");
    assert_eq!(ex[0].messages[0].role, Role::System);
    assert_eq!(ex[0].messages[0].content, "Respond as Ann:");
    assert_eq!(ex[0].meta["persona"], "Ann");
    let opts = ExampleOptions {
        with_channel: true,
        ..ExampleOptions::default()
    };
    let ex = build_examples(&[thread()], Targets::Instructed(&reg), &opts);
    assert_eq!(ex[0].messages[0].content, "Channel: lounge | Respond as Ann:");
    assert_eq!(ex[0].messages[0].content, persona_line("Ann", Some("lounge")));
    // Adapters: one persona, no instruction (the adapter is the persona).
    let cy = reg.personas[1].clone();
    let ex = build_examples(&[thread()], Targets::Only(&cy), &opts);
    assert_eq!(ex.len(), 1);
    assert_eq!(turns(&ex[0]).last(), Some(&(Role::Assistant, "c1")));
    assert!(ex[0].messages.iter().all(|m| m.role != Role::System));
}

#[test]
fn augmentation_adds_shorter_windows_of_real_turns() {
    let base = build_examples(&[thread()], Targets::Everyone, &ExampleOptions::default());
    let opts = ExampleOptions {
        augment: 2,
        ..ExampleOptions::default()
    };
    let ex = build_examples(&[thread()], Targets::Everyone, &opts);
    // Merged turns: A(0) B(1) A(2) C(3). Extra windows: A's turn 2 with 1 turn before; B's turn 1
    // with 1 (= its full perspective: skipped); C's turn 3 with 1 and 2 before.
    let extra: Vec<Vec<(Role, &str)>> = ex
        .iter()
        .filter(|e| e.meta.contains_key("augmented"))
        .map(turns)
        .collect();
    let (u, a) = (Role::User, Role::Assistant);
    assert_eq!(
        extra,
        vec![
            vec![(u, "b1\nb2"), (a, "a2")],
            vec![(u, "a2"), (a, "c1")],
            vec![(u, "b1\nb2"), (u, "a2"), (a, "c1")],
        ]
    );
    assert_eq!(ex.len(), base.len() + 3);
    // Nothing invented: every turn of every example is a turn of the thread.
    let thread_turns = ["a1", "b1\nb2", "a2", "c1"];
    assert!(
        ex.iter()
            .flat_map(|e| &e.messages)
            .all(|m| thread_turns.contains(&m.content.as_str()))
    );
}

#[test]
fn discovery_counts_messages_and_takes_the_newest_name() {
    let mut older = thread();
    older.meta.insert("start".into(), "2023-01-01T00:00:00Z".into());
    older
        .meta
        .insert("speakers".into(), json!({"A": "Annie", "B": "Ben", "C": "Cy"}));
    let mut pair = Conversation::new(vec![
        msg(Role::User, "C", "context only"),
        msg(Role::Assistant, "A", "ok"),
    ]);
    pair.meta.insert("kind".into(), "reply".into());
    pair.meta.insert("channel".into(), "help".into());
    let mut anon = thread();
    anon.messages[4].speaker = Some("anonymous".into());
    let found = discover(&[older, thread(), pair, anon], 2);
    let got: Vec<(&str, &str, usize)> = found
        .iter()
        .map(|c| (c.id.as_str(), c.name.as_str(), c.messages))
        .collect();
    // A: 2 + 2 + 1 (the reply) + 2; B: 2 × 3; C: 1 + 1 (its reply context does not count).
    assert_eq!(got, vec![("A", "Ann", 7), ("B", "Ben", 6), ("C", "Cy", 2)]);
    assert_eq!(found[0].channels, vec!["help", "lounge"]);
    assert_eq!(found[0].words, 7);
    assert!(discover(&[thread()], 3).is_empty());
}

#[test]
fn the_registry_is_edited_and_kept_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("personas.toml");
    assert_eq!(Registry::load(&path).unwrap(), Registry::default());
    assert!(
        Registry::load_enabled(&path)
            .unwrap_err()
            .to_string()
            .contains("personas discover")
    );
    let found = discover(&[thread(), thread()], 2);
    let mut reg = Registry::default();
    assert_eq!(reg.merge(&found), 3);
    reg.rename("A", "Anna").unwrap();
    reg.set_enabled("Ben", false).unwrap();
    // A second discovery keeps the edits and adds no one twice.
    assert_eq!(reg.merge(&found), 0);
    assert_eq!(reg.personas[0].name, "Anna");
    assert!(!reg.personas[1].enabled);
    // Names are unique, also as folder names; ids exist.
    assert!(reg.rename("C", "anna").is_err());
    assert!(reg.rename("nobody", "X").is_err());
    assert!(reg.add("Z", "Anna!", "").is_err());
    reg.add("Z", "Zed", "a newcomer").unwrap();
    reg.save(&path).unwrap();
    let back = Registry::load(&path).unwrap();
    assert_eq!(back, reg);
    let names: Vec<&str> = back.enabled().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["Anna", "Cy", "Zed"]);
    // A hand edit that breaks the rules is refused with the file named.
    std::fs::write(
        &path,
        "[[persona]]\nid = \"1\"\nname = \"X\"\n[[persona]]\nid = \"1\"\nname = \"Y\"\n",
    )
    .unwrap();
    let e = Registry::load(&path).unwrap_err().to_string();
    assert!(e.contains("personas.toml") && e.contains("twice"), "{e}");
    // Discovery makes clashing display names unique.
    let mut reg = Registry::default();
    reg.personas.push(Persona {
        id: "X".into(),
        name: "Ann".into(),
        description: String::new(),
        enabled: true,
    });
    reg.merge(&found);
    let slugs: Vec<String> = reg.personas.iter().map(|p| slug(&p.name)).collect();
    assert_eq!(
        slugs.len(),
        slugs.iter().collect::<std::collections::BTreeSet<_>>().len()
    );
    assert!("adapters".parse::<Strategy>().is_ok() && "both".parse::<Strategy>().is_err());
}

/// Seed 003's layout: a results folder of export zips (and other data beside them) is imported as
/// one chat export plus the other files.
#[test]
fn zips_in_an_input_folder_are_read_as_a_chat_export() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results");
    std::fs::create_dir(&results).unwrap();
    zipped(&results);
    std::fs::write(
        results.join("extra.jsonl"),
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"hello\"}]}\n",
    )
    .unwrap();
    let mut opts = ImportOptions::default();
    opts.chat.consent.default = Rule::Allow;
    let r = import(&[results], &opts).unwrap();
    let chat = r.chat.as_ref().expect("the zip was read as a chat export");
    assert_eq!(chat.consent["allow"].users, 5);
    assert_eq!(r.files.len(), 1, "extra.jsonl read as a file");
    let from_export = r
        .conversations
        .iter()
        .filter(|c| c.meta.contains_key("channel"))
        .count();
    assert!(from_export > 0 && from_export + 1 == r.conversations.len());
}
