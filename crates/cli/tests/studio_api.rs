//! The routes the studio added to the API, over plain HTTP (crates/cli/tests/studio.rs drives
//! the studio itself in a browser).

#![allow(clippy::unwrap_used)] // tests: a failure should panic with its message

mod common;

use std::time::{Duration, Instant};

use common::service::*;
use serde_json::json;

const TOKEN: &str = "studio-secret";

/// The routes the studio added to the API, over plain HTTP: the studio's files without the token
/// (and nothing else without it), data files listed and uploaded within bounds, tokenizers and
/// exports listed, `/v1/models`, chat with an export and a persona, and the persona registry.
#[test]
fn the_studio_routes_hold_the_api_rules() {
    let d = data_root();
    let root = d.path().join("root");
    let port = free_port();
    let _server = serve(
        &root,
        port,
        1,
        &[],
        &[
            ("CHATFORGE_API_TOKEN", TOKEN),
            ("CHATFORGE__API__MAX_UPLOAD", "4096"),
        ],
    );
    // The studio's files need no token and carry a strict content policy; the API still does.
    let page = get(port, "/");
    assert_eq!(page.status, 200);
    assert!(String::from_utf8_lossy(&page.body).contains("/studio/app.js"));
    assert!(
        page.header("content-security-policy")
            .unwrap()
            .contains("script-src 'self'")
    );
    let js = get(port, "/studio/app.js");
    assert_eq!(js.status, 200);
    assert!(js.header("content-type").unwrap().starts_with("text/javascript"));
    assert_eq!(get(port, "/studio/missing.js").status, 404);
    assert_eq!(
        get(port, "/studio/missing.js").json()["error"],
        "no studio file \"missing.js\""
    );
    for path in [
        "/data",
        "/tokenizers",
        "/exports",
        "/personas",
        "/v1/models",
        "/runs",
    ] {
        assert_eq!(get(port, path).status, 401, "{path}");
    }

    // Data files: listed; uploaded whole or not at all; names are plain file names.
    let files = authed(port, TOKEN, "GET", "/data", None).json();
    let paths: Vec<&str> = files["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert!(
        paths.contains(&"data/train.jsonl") && paths.contains(&"data/train.val.jsonl"),
        "{paths:?}"
    );
    let put = |name: &str, body: &[u8]| {
        let auth = format!("Bearer {TOKEN}");
        request(
            port,
            "PUT",
            &format!("/data/{name}"),
            &[("Authorization", auth.as_str())],
            Some(body),
        )
    };
    let r = put("notes.jsonl", b"{\"messages\": []}\n");
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["path"], "data/notes.jsonl");
    assert_eq!(
        std::fs::read(root.join("data/notes.jsonl")).unwrap(),
        b"{\"messages\": []}\n"
    );
    assert_eq!(put("notes.jsonl", b"again").status, 409);
    assert_eq!(put("notes.jsonl?replace=true", b"again").status, 201);
    assert_eq!(std::fs::read(root.join("data/notes.jsonl")).unwrap(), b"again");
    let big = put("big.jsonl", &vec![b'x'; 5000]);
    assert_eq!(big.status, 413, "{}", String::from_utf8_lossy(&big.body));
    assert!(big.json()["error"].as_str().unwrap().contains("4096"));
    for bad in ["..", ".hidden", "a%2Fb", "%2E%2E"] {
        let r = put(bad, b"x");
        assert!(r.status == 400 || r.status == 404, "{bad}: {}", r.status);
    }
    let leftovers: Vec<_> = std::fs::read_dir(root.join("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with('.') || n.starts_with("big"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A run, listed as a model once trained; its exports listed; chat with an HF export.
    let tok = {
        let r = authed(
            port,
            TOKEN,
            "POST",
            "/tokenizers/train",
            Some(&json!({"input": ["data/train.jsonl"], "vocab_size": 400})),
        );
        assert_eq!(r.status, 202);
        r.json()["id"].as_str().unwrap().to_string()
    };
    let t0 = Instant::now();
    while authed(port, TOKEN, "GET", &format!("/tokenizers/{tok}"), None).json()["state"] != "succeeded" {
        assert!(t0.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(100));
    }
    let list = authed(port, TOKEN, "GET", "/tokenizers", None).json();
    assert_eq!(list["tokenizers"][0]["id"], tok.as_str());
    assert_eq!(list["tokenizers"][0]["vocab_size"], 400);
    let r = authed(
        port,
        TOKEN,
        "POST",
        "/runs/train",
        Some(&train_body(&tok, 20, 10)),
    );
    assert_eq!(r.status, 202);
    let run = r.json()["run_id"].as_str().unwrap().to_string();
    let t0 = Instant::now();
    loop {
        let r = authed(port, TOKEN, "GET", &format!("/runs/{run}"), None).json();
        if r["state"] == "succeeded" {
            assert_eq!(r["mode"], "sft");
            assert_eq!(r["data"], "data/train.jsonl");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "{r}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let models = authed(port, TOKEN, "GET", "/v1/models", None).json();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], run.as_str());
    let mut exports = Vec::new();
    for format in ["hf", "onnx"] {
        let r = authed(
            port,
            TOKEN,
            "POST",
            &format!("/runs/{run}/export"),
            Some(&json!({ "format": format })),
        );
        assert_eq!(r.status, 202);
        exports.push(r.json()["export_id"].as_str().unwrap().to_string());
    }
    let t0 = Instant::now();
    loop {
        let l = authed(port, TOKEN, "GET", &format!("/exports?run={run}"), None).json();
        let done = l["exports"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["state"] == "succeeded")
            .count();
        if done == 2 {
            assert!(
                l["exports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|x| x["run"] == run.as_str())
            );
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "{l}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        authed(port, TOKEN, "GET", "/exports?run=other", None).json()["exports"],
        json!([])
    );
    let ids: Vec<String> = authed(port, TOKEN, "GET", "/v1/models", None).json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert!(ids.contains(&exports[0]) && !ids.contains(&exports[1]), "{ids:?}");
    let chat = |model: &str, persona: Option<&str>| {
        let mut body = json!({"model": model, "messages": [{"role": "user", "content": "Hi"}],
                              "temperature": 0, "max_tokens": 8});
        if let Some(p) = persona {
            body["persona"] = json!(p);
        }
        authed(port, TOKEN, "POST", "/v1/chat/completions", Some(&body))
    };
    let from_run = chat(&run, None);
    assert_eq!(from_run.status, 200);
    let from_export = chat(&exports[0], None);
    assert_eq!(
        from_export.status,
        200,
        "{}",
        String::from_utf8_lossy(&from_export.body)
    );
    assert_eq!(
        from_export.json()["choices"][0]["message"]["content"],
        from_run.json()["choices"][0]["message"]["content"]
    );
    // A persona (without an adapter) is the `Respond as NAME:` instruction: another prompt.
    let persona = chat(&run, Some("Alice"));
    assert_eq!(persona.status, 200);
    assert!(
        persona.json()["usage"]["prompt_tokens"].as_u64()
            > from_run.json()["usage"]["prompt_tokens"].as_u64()
    );
    assert_eq!(chat("nope", None).status, 404);
    assert_eq!(chat("../x", None).status, 422);

    // The persona registry: renamed, switched off, and refused when unknown or empty.
    std::fs::write(
        root.join("personas.toml"),
        "[[persona]]\nid = \"1001\"\nname = \"Alice\"\n\n[[persona]]\nid = \"1002\"\nname = \"Bob\"\n",
    )
    .unwrap();
    let listed = authed(port, TOKEN, "GET", "/personas", None).json();
    assert_eq!(listed["personas"][1]["name"], "Bob");
    assert_eq!(listed["imports"], json!([]));
    let r = authed(
        port,
        TOKEN,
        "PATCH",
        "/personas/Bob",
        Some(&json!({"name": "Robert", "enabled": false})),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json(),
        json!({"id": "1002", "name": "Robert", "description": "", "enabled": false})
    );
    let saved = std::fs::read_to_string(root.join("personas.toml")).unwrap();
    assert!(
        saved.contains("Robert") && saved.contains("enabled = false"),
        "{saved}"
    );
    assert_eq!(
        authed(
            port,
            TOKEN,
            "PATCH",
            "/personas/nobody",
            Some(&json!({"enabled": true}))
        )
        .status,
        404
    );
    assert_eq!(
        authed(port, TOKEN, "PATCH", "/personas/1001", Some(&json!({}))).status,
        422
    );
    assert_eq!(
        authed(
            port,
            TOKEN,
            "PATCH",
            "/personas/1001",
            Some(&json!({"colour": "red"}))
        )
        .status,
        422
    );
}
