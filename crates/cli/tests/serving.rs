//! Serving many users at once (issue 26): concurrent chat streams decoded in one batch give each
//! exactly its solo reply, adapters of one base applied per request in the same batch, a model
//! that loads answers 503 until ready, the official `openai` client and a Prometheus parser.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failure should panic with its message

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use chatforge_data::Rng;
use chatforge_model::GptConfig;
use chatforge_model::lora::{LoraConfig, save_adapter};
use common::service::*;
use serde_json::{Value, json};

/// A data root with a random tiny Llama export (`exports/llama`, ChatML template) and a persona
/// run on it (`runs/team`) with adapters `alice` and `bob` that change its replies.
fn models() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let cfg = GptConfig {
        n_ctx: 512,
        n_embd: 64,
        n_inner: 128,
        ..GptConfig::llama_tiny(0)
    };
    let base = common::llama_folder(&root.join("exports"), "llama", cfg);
    let cfg = chatforge_model::load_hf(&base).unwrap().0;
    let team = root.join("runs/team");
    std::fs::create_dir_all(&team).unwrap();
    let record = json!({"strategy": "adapters", "data": "chat.jsonl", "with_channel": false, "augment": 0,
        "base": "../../exports/llama",
        "personas": [{"id": "1", "name": "Alice", "adapter": "alice"}, {"id": "2", "name": "Bob", "adapter": "bob"}]});
    std::fs::write(team.join("persona_run.json"), record.to_string()).unwrap();
    for (i, name) in ["alice", "bob"].iter().enumerate() {
        let lcfg = LoraConfig {
            rank: 4,
            targets: vec!["all-linear".into()],
            ..LoraConfig::default()
        };
        let mut rng = Rng::new(40 + i as u64);
        let mut w = lcfg.init(&cfg, &mut rng).unwrap();
        for (k, t) in w.iter_mut() {
            if k.contains("lora_B") {
                t.data_mut()
                    .iter_mut()
                    .for_each(|x| *x = (rng.next_f64() as f32 - 0.5) * 0.5);
            }
        }
        let w: BTreeMap<_, _> = w.into_iter().collect();
        save_adapter(&team.join("adapters").join(name), &lcfg, &w, None, cfg.arch).unwrap();
    }
    d
}

fn ask(model: &str, persona: Option<&str>, user: &str, max_tokens: usize, stream: bool) -> Value {
    let mut v = json!({"model": model, "temperature": 0, "max_tokens": max_tokens, "stream": stream,
                       "messages": [{"role": "user", "content": user}]});
    if let Some(p) = persona {
        v["persona"] = json!(p);
    }
    v
}

/// A streamed reply's text (choice 0) and finish reason, from its SSE lines.
fn streamed(r: &Resp) -> (String, String) {
    let body = String::from_utf8_lossy(&r.body);
    let mut text = String::new();
    let mut finish = String::new();
    let mut done = false;
    for line in body.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if line == "[DONE]" {
            done = true;
            continue;
        }
        let v: Value = serde_json::from_str(line).unwrap();
        assert!(v.get("error").is_none(), "{v}");
        let c = &v["choices"][0];
        text += c["delta"]["content"].as_str().unwrap_or("");
        if let Some(f) = c["finish_reason"].as_str() {
            finish = f.to_string();
        }
    }
    assert!(done, "{body}");
    (text, finish)
}

#[test]
fn concurrent_streams_and_adapters_in_one_batch_match_solo_replies() {
    let d = models();
    let port = free_port();
    let _server = serve(d.path(), port, 0, &[], &[("CHATFORGE__API__MAX_BATCH", "16")]);
    // Requests of different lengths, on the base and on each adapter (named three ways).
    let cases: Vec<Value> = vec![
        ask("llama", None, "Hello there, how are you?", 40, true),
        ask("team:alice", None, "Hello there, how are you?", 25, true),
        ask("team", Some("Bob"), "Hello there, how are you?", 33, true),
        ask("Alice", None, "What is the weather like?", 12, true),
        ask("llama", None, "Tell me a story about a dog and a cat.", 60, true),
        ask("team:bob", None, "Hi", 7, true),
        ask("team", None, "Hi", 18, true),
        ask("llama", None, "Why?", 50, false),
    ];
    let reply = |body: &Value| -> (String, String) {
        let r = post(port, "/v1/chat/completions", body);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        if body["stream"] == true {
            streamed(&r)
        } else {
            let c = &r.json()["choices"][0];
            (
                c["message"]["content"].as_str().unwrap().to_string(),
                c["finish_reason"].as_str().unwrap().to_string(),
            )
        }
    };
    let solo: Vec<(String, String)> = cases.iter().map(reply).collect();
    // The adapters change the replies, and naming one three ways gives the same one.
    assert_ne!(solo[0].0, solo[1].0, "alice's adapter changes the reply");
    assert_ne!(solo[1].0, solo[2].0, "bob's differs from alice's");
    assert_eq!(solo[5].1, "length");
    // All at once, twice over: each stream is its solo reply, token for token.
    std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .iter()
            .chain(cases.iter())
            .map(|c| s.spawn(move || reply(c)))
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            assert_eq!(h.join().unwrap(), solo[i % cases.len()], "request {i}");
        }
    });
    // n replies from one prompt: greedy copies agree; usage counts every reply.
    let mut body = ask("team:alice", None, "Hello there, how are you?", 25, false);
    body["n"] = json!(3);
    let r = post(port, "/v1/chat/completions", &body).json();
    let choices = r["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        assert_eq!(c["message"]["content"].as_str().unwrap(), solo[1].0);
    }
    let one = post(
        port,
        "/v1/chat/completions",
        &ask("team:alice", None, "Hello there, how are you?", 25, false),
    )
    .json();
    assert_eq!(
        r["usage"]["completion_tokens"].as_u64().unwrap(),
        3 * one["usage"]["completion_tokens"].as_u64().unwrap()
    );
    // Adapter names stay inside the run; unknown ones are named.
    let r = post(
        port,
        "/v1/chat/completions",
        &ask("team:../../x", None, "Hi", 3, false),
    );
    assert_eq!(r.status, 422, "{}", String::from_utf8_lossy(&r.body));
    let r = post(
        port,
        "/v1/chat/completions",
        &ask("team:carol", None, "Hi", 3, false),
    );
    assert_eq!(r.status, 422);
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("carol"));
    // The metrics saw it all.
    let m = String::from_utf8(get(port, "/metrics").body).unwrap();
    assert!(
        m.contains("chatforge_http_requests_total{route=\"/v1/chat/completions\",status=\"200\"}"),
        "{m}"
    );
    assert!(
        m.contains("chatforge_models_loaded 2"),
        "the base and the persona run:\n{m}"
    );
    let batch_max = m
        .lines()
        .find_map(|l| l.strip_prefix("chatforge_batch_size_bucket{le=\"1\"} "))
        .unwrap()
        .parse::<u64>()
        .unwrap();
    let steps = m
        .lines()
        .find_map(|l| l.strip_prefix("chatforge_batch_size_count "))
        .unwrap()
        .parse::<u64>()
        .unwrap();
    assert!(
        batch_max < steps,
        "some steps decoded more than one sequence:\n{m}"
    );
}

#[test]
fn a_model_that_loads_answers_503_then_its_queue_is_bounded() {
    let d = models();
    let port = free_port();
    let _server = serve(
        d.path(),
        port,
        0,
        &[],
        &[
            ("CHATFORGE__API__LOAD_WAIT_S", "0"),
            ("CHATFORGE__API__MAX_BATCH", "1"),
            ("CHATFORGE__API__MAX_QUEUE", "1"),
            ("CHATFORGE__API__MAX_MODELS", "1"),
        ],
    );
    let r = post(port, "/v1/chat/completions", &ask("llama", None, "Hi", 3, false));
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("retry-after"), Some("2"));
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("loading"));
    let t0 = std::time::Instant::now();
    while post(port, "/v1/chat/completions", &ask("llama", None, "Hi", 3, false)).status != 200 {
        assert!(t0.elapsed().as_secs() < 60, "the model never loaded");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // One reply decodes, one waits; the next is told to come back.
    let long = |port: u16| {
        let body = ask("llama", None, "Tell me everything.", 400, false).to_string();
        send_raw(port, &body)
    };
    // Each is waited for in the metrics (decoding, then queued), not for a fixed time: a busy
    // machine may take longer to admit them.
    let gauge = |name: &str| {
        let m = String::from_utf8(get(port, "/metrics").body).unwrap();
        m.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}{{model=\"llama\"}} ")))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let until = |what: &str, ok: &dyn Fn() -> bool| {
        let t0 = std::time::Instant::now();
        while !ok() {
            assert!(t0.elapsed().as_secs() < 30, "{what}");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    };
    let first = long(port);
    until("the first reply never decoded", &|| {
        gauge("chatforge_running_sequences") == 1
    });
    let second = long(port);
    until("the second reply never queued", &|| {
        gauge("chatforge_queue_depth") == 1
    });
    let r = post(port, "/v1/chat/completions", &ask("llama", None, "Hi", 3, false));
    assert_eq!(r.status, 429, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
    // Both clients leave: their places free at once.
    drop((first, second));
    let t0 = std::time::Instant::now();
    loop {
        let r = post(port, "/v1/chat/completions", &ask("llama", None, "Hi", 3, false));
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 429);
        assert!(t0.elapsed().as_secs() < 20, "the places never freed");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // One model at most: asking for another lets the first go.
    let t0 = std::time::Instant::now();
    while post(
        port,
        "/v1/chat/completions",
        &ask("team:bob", None, "Hi", 3, false),
    )
    .status
        != 200
    {
        assert!(t0.elapsed().as_secs() < 60, "the second model never loaded");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let m = String::from_utf8(get(port, "/metrics").body).unwrap();
    assert!(m.contains("chatforge_models_loaded 1"), "{m}");
    assert!(m.contains("chatforge_queue_depth{model=\"team\"} 0"), "{m}");
}

/// A chat request whose answer is not read; dropping the stream is the client leaving.
fn send_raw(port: u16, body: &str) -> std::net::TcpStream {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    s
}

#[test]
fn the_openai_client_streams_and_prometheus_parses_the_metrics() {
    let Some(python) = chatforge_testkit::python() else {
        return;
    };
    let d = models();
    let port = free_port();
    let _server = serve(d.path(), port, 0, &[], &[("CHATFORGE__API__TOKEN", "sesame")]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/reference/openai_client.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .args([&format!("http://127.0.0.1:{port}"), "sesame", "team:alice"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(v["streamed"], v["whole"], "{v}");
    assert_eq!(v["choices"], 2);
    assert!(v["families"].as_array().unwrap().len() >= 10, "{v}");
}
