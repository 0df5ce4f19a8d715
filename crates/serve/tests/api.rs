//! The API in-process (`tower::ServiceExt::oneshot`, no socket, no workers): every error in one
//! JSON shape with its status decided in one place, the token, validation at the edge, paths that
//! stay inside the data root, and OpenAI's error object on `/v1`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failure should panic with its message

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use chatforge_serve::api::{AppState, app};
use chatforge_serve::{ServeConfig, SqliteStore};
use serde_json::{Value, json};
use tower::ServiceExt;

struct Api {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    state: AppState,
}

fn api(token: Option<&str>) -> Api {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("data")).unwrap();
    std::fs::write(root.join("data/train.jsonl"), "{\"messages\": []}\n").unwrap();
    let mut cfg = ServeConfig {
        data_root: root.clone(),
        ..ServeConfig::default()
    };
    cfg.api.token = token.map(str::to_string);
    cfg.api.max_body = 4096;
    let store = Arc::new(SqliteStore::open(&root.join("queue.sqlite")).unwrap());
    let state = AppState::new(store, cfg, Default::default());
    Api {
        _dir: dir,
        root,
        state,
    }
}

/// One request through the router: (status, headers, JSON body).
async fn call(
    a: &Api,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, axum::http::HeaderMap, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = app(a.state.clone())
        .oneshot(req.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("{method} {uri}: not JSON: {}", String::from_utf8_lossy(&bytes)));
    (parts.status, parts.headers, v)
}

const JSON: (&str, &str) = ("content-type", "application/json");

#[tokio::test]
async fn every_error_is_json_with_its_status() {
    let a = api(None);
    let train =
        |extra: &str| format!("{{\"data\": \"data/train.jsonl\", \"train\": {{\"max_steps\": 5{extra}}}}}");
    // (method, uri, headers, body, status)
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, String, StatusCode);
    let cases: Vec<Case> = vec![
        ("GET", "/nope", vec![], String::new(), StatusCode::NOT_FOUND),
        (
            "DELETE",
            "/runs",
            vec![],
            String::new(),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            "GET",
            "/runs?limit=many",
            vec![],
            String::new(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "GET",
            "/runs?state=asleep",
            vec![],
            String::new(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "POST",
            "/runs/train",
            vec![JSON],
            "{\"data\": ".into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/runs/train",
            vec![],
            train(""),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "POST",
            "/runs/train",
            vec![JSON],
            "{\"dat\": 1}".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "POST",
            "/runs/train",
            vec![JSON],
            "x".repeat(5000),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "POST",
            "/runs/train",
            vec![JSON],
            train(", \"lr\": 1e300"),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "POST",
            "/runs/train",
            vec![JSON],
            train(", \"batch_size\": 1000000000"),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "POST",
            "/runs/train",
            vec![JSON],
            "{\"data\": \"../etc/passwd\", \"train\": {\"max_steps\": 1}}".into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "GET",
            "/runs/nothing-here",
            vec![],
            String::new(),
            StatusCode::NOT_FOUND,
        ),
        (
            "POST",
            "/runs/nothing-here/cancel",
            vec![],
            String::new(),
            StatusCode::NOT_FOUND,
        ),
        (
            "GET",
            "/artifacts/secrets/x",
            vec![],
            String::new(),
            StatusCode::NOT_FOUND,
        ),
        (
            "GET",
            "/runs/..hidden/logs",
            vec![],
            String::new(),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (method, uri, headers, body, status) in cases {
        let (got, _, v) = call(&a, method, uri, &headers, &body).await;
        assert_eq!(got, status, "{method} {uri}: {v}");
        let msg = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {uri}: {v}"));
        assert!(!msg.is_empty());
        assert!(
            !msg.contains(&a.root.display().to_string()),
            "{method} {uri}: {msg}"
        );
    }
    // Conversations need a tokenizer to become tokens: said before anything is queued.
    let body =
        "{\"data\": \"data/train.jsonl\", \"model\": {\"vocab_size\": 300}, \"train\": {\"max_steps\": 5}}";
    let (got, _, v) = call(&a, "POST", "/runs/train", &[JSON], body).await;
    assert_eq!(got, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(v["error"].as_str().unwrap().contains("tokenizer"), "{v}");
}

#[tokio::test]
async fn the_token_guards_all_but_health_in_any_case() {
    let a = api(Some("s3cret"));
    let (got, h, v) = call(&a, "GET", "/runs", &[], "").await;
    assert_eq!(got, StatusCode::UNAUTHORIZED, "{v}");
    assert_eq!(h[header::WWW_AUTHENTICATE], "Bearer");
    for auth in ["Bearer s3cret", "bearer s3cret", "BEARER  s3cret "] {
        let (got, _, v) = call(&a, "GET", "/runs", &[("authorization", auth)], "").await;
        assert_eq!(got, StatusCode::OK, "{auth:?}: {v}");
    }
    assert_eq!(
        call(&a, "GET", "/runs", &[("authorization", "Bearer s3cre")], "")
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(call(&a, "GET", "/healthz", &[], "").await.0, StatusCode::OK);
    // Readiness: no worker ids without the token.
    let (_, _, v) = call(&a, "GET", "/readyz", &[], "").await;
    assert!(v["workers"].is_null() && v["live_workers"] == 0, "{v}");
    let (_, _, v) = call(&a, "GET", "/readyz", &[("authorization", "Bearer s3cret")], "").await;
    assert!(v["workers"].is_array(), "{v}");
}

#[tokio::test]
async fn openai_routes_answer_in_openai_shape() {
    let a = api(None);
    let ask = json!({"model": "no-run", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let (got, _, v) = call(&a, "POST", "/v1/chat/completions", &[JSON], &ask).await;
    assert_eq!(got, StatusCode::NOT_FOUND);
    assert_eq!(v["error"]["type"], "not_found_error");
    assert!(v["error"]["message"].as_str().unwrap().contains("no-run"), "{v}");
    let (got, _, v) = call(&a, "POST", "/v1/chat/completions", &[JSON], "{\"model\": 3}").await;
    assert_eq!(got, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v["error"]["type"], "invalid_request_error");
    let (got, _, v) = call(&a, "GET", "/v1/models/nothing", &[], "").await;
    assert_eq!(got, StatusCode::NOT_FOUND);
    assert!(v["error"]["message"].is_string(), "{v}");
}

#[tokio::test]
async fn ids_that_are_symlinks_out_of_the_root_are_refused() {
    let a = api(None);
    let outside = a.root.parent().unwrap().join("outside");
    std::fs::create_dir_all(outside.join("eval")).unwrap();
    std::fs::write(outside.join("eval/metrics.json"), "{\"secret\": true}").unwrap();
    std::fs::create_dir_all(a.root.join("runs")).unwrap();
    std::os::unix::fs::symlink(&outside, a.root.join("runs/evil")).unwrap();
    for uri in [
        "/runs/evil/eval",
        "/artifacts/runs/evil",
        "/artifacts/runs/evil/download?path=eval/metrics.json",
    ] {
        let (got, _, v) = call(&a, "GET", uri, &[], "").await;
        assert_eq!(got, StatusCode::BAD_REQUEST, "{uri}: {v}");
        assert!(
            v["error"].as_str().unwrap().contains("outside the data root"),
            "{uri}: {v}"
        );
    }
}

/// Seed 002's request names: `corpus_path` for the data (a string, or a list for tokenizers) and
/// Hugging Face names inside `train`.
#[tokio::test]
async fn seed_002_request_names_are_accepted() {
    let a = api(None);
    let body = r#"{"corpus_path": "data/train.jsonl", "vocab_size": 300}"#;
    let (status, _, v) = call(&a, "POST", "/tokenizers/train", &[JSON], body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    let body = r#"{"corpus_path": ["data/train.jsonl"], "vocab_size": 300, "kind": "spm"}"#;
    let (status, _, v) = call(&a, "POST", "/tokenizers/train", &[JSON], body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    let body = r#"{"corpus_path": "data/missing.jsonl", "vocab_size": 300}"#;
    let (status, _, v) = call(&a, "POST", "/tokenizers/train", &[JSON], body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let body = r#"{"corpus_path": "data/train.jsonl", "tokenizer": "data/train.jsonl", "train": {"num_epochs": 1, "learning_rate": 0.001}}"#;
    // The names parse; what stops this request is the tokenizer, which is not one.
    let (_, _, v) = call(&a, "POST", "/runs/train", &[JSON], body).await;
    let err = v["error"].as_str().unwrap();
    assert!(
        err.starts_with("tokenizer:") && !err.contains("unknown field"),
        "{v}"
    );
    let (_, _, v) = call(
        &a,
        "POST",
        "/runs/train",
        &[JSON],
        r#"{"corpus_path": "data/train.jsonl", "train": {"learning_rat": 1}}"#,
    )
    .await;
    assert!(v["error"].as_str().unwrap().contains("learning_rat"), "{v}");
}
