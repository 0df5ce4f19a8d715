//! `chatforge serve` and `chatforge worker` driven over HTTP on loopback, as a team would use them:
//! tokenizer and training jobs followed to the end through Server-Sent Events, downloads with Range,
//! cancel and resume, a worker killed with SIGKILL whose job finishes on another worker from its
//! checkpoint, a server restart that keeps the queue, and bad input of every kind.

#![allow(clippy::unwrap_used)] // tests: a failure should panic with its message

mod common;

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::service::*;
use serde_json::{Value, json};

#[test]
fn jobs_run_stream_download_cancel_and_resume() {
    jobs_scenario(&[]);
}

#[test]
fn jobs_on_redis() {
    let Some(redis) = chatforge_testkit::redis_server() else {
        return;
    };
    let url = redis.url();
    jobs_scenario(&[("CHATFORGE__QUEUE__URL", &url)]);
}

fn jobs_scenario(env: &[(&str, &str)]) {
    let d = data_root();
    let root = d.path().join("root");
    let port = free_port();
    let _server = serve(&root, port, 1, &[], env);
    assert_eq!(get(port, "/healthz").status, 200);
    let ready = get(port, "/readyz");
    assert_eq!(ready.status, 200, "{}", String::from_utf8_lossy(&ready.body));
    assert_eq!(ready.json()["workers"].as_array().unwrap().len(), 1);
    // The OpenAPI document lists every route.
    let doc = get(port, "/openapi.json").json();
    for p in [
        "/tokenizers/train",
        "/tokenizers/{id}",
        "/runs/train",
        "/runs",
        "/runs/{id}",
        "/runs/{id}/cancel",
        "/runs/{id}/resume",
        "/runs/{id}/evaluate",
        "/runs/{id}/eval",
        "/runs/{id}/export",
        "/exports/{id}",
        "/runs/{id}/logs",
        "/runs/{id}/logs/stream",
        "/artifacts/{kind}/{id}",
        "/artifacts/{kind}/{id}/download",
        "/v1/chat/completions",
        "/v1/models",
        "/v1/completions",
        "/presets",
        "/tokenizers",
        "/exports",
        "/data",
        "/data/{name}",
        "/personas",
        "/personas/{key}",
        "/healthz",
        "/readyz",
        "/openapi.json",
    ] {
        assert!(doc["paths"][p].is_object(), "{p} missing from /openapi.json");
    }

    let tok = tokenizer(port);
    let r = post(port, "/runs/train", &train_body(&tok, 30, 10));
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let run = r.json()["run_id"].as_str().unwrap().to_string();
    // Follow the run live to its end; every step arrives once, in order.
    let (events, end) = follow(port, &run, None);
    assert_eq!(end, "succeeded");
    let steps: Vec<u64> = events
        .iter()
        .filter(|(_, e)| e["event"] == "step")
        .map(|(_, e)| e["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=30).collect::<Vec<_>>());
    // Ids are STEP:K, increasing down the log.
    let ids: Vec<(u64, u32)> = events
        .iter()
        .map(|(i, _)| {
            let (s, k) = i.split_once(':').unwrap();
            (s.parse().unwrap(), k.parse().unwrap())
        })
        .collect();
    assert!(ids.windows(2).all(|w| w[1] > w[0]), "event ids increase: {ids:?}");
    // Reconnecting after event k replays exactly what followed it.
    let k = ids.len() / 2;
    let (rest, _) = follow(port, &run, Some(&events[k].0));
    assert_eq!(rest.first().unwrap().0, events[k + 1].0);
    assert_eq!(rest.len(), events.len() - k - 1);
    let status = get(port, &format!("/runs/{run}")).json();
    assert_eq!(
        (
            status["progress"]["step"].as_u64(),
            status["progress"]["total"].as_u64()
        ),
        (Some(30), Some(30))
    );
    let logs = get(port, &format!("/runs/{run}/logs?tail=5")).json();
    assert_eq!(logs["events"].as_array().unwrap().len(), 5);
    let listed = get(port, "/runs?state=succeeded").json();
    assert!(
        listed["runs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["run_id"] == run.as_str())
    );

    // Evaluation and export of the finished run, as jobs.
    let r = post(port, &format!("/runs/{run}/evaluate"), &json!({}));
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let r = post(
        port,
        &format!("/runs/{run}/export"),
        &json!({"format": "gguf", "quant": "q8_0"}),
    );
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let export = r.json()["export_id"].as_str().unwrap().to_string();
    let bad = post(port, &format!("/runs/{run}/export"), &json!({"format": "bogus"}));
    assert_eq!(bad.status, 422);
    let t0 = Instant::now();
    let metrics = loop {
        let e = get(port, &format!("/runs/{run}/eval"));
        if e.status == 200 && e.json()["state"] == "succeeded" {
            break e.json()["metrics"].clone();
        }
        assert!(e.json()["state"] != "failed", "{}", e.json());
        assert!(t0.elapsed() < Duration::from_secs(120), "no evaluation");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(metrics["perplexity"].as_f64().unwrap() > 1.0, "{metrics}");
    loop {
        let e = get(port, &format!("/exports/{export}")).json();
        if e["state"] == "succeeded" {
            break;
        }
        assert!(e["state"] != "failed", "{e}");
        assert!(t0.elapsed() < Duration::from_secs(120), "no export");
        std::thread::sleep(Duration::from_millis(200));
    }
    let files = get(port, &format!("/artifacts/exports/{export}")).json();
    assert!(
        files["files"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["path"] == "model.gguf"),
        "{files}"
    );

    // OpenAI-style chat against the run: the streamed reply is the whole reply, in pieces.
    let ask = |stream: bool| {
        json!({"model": run, "temperature": 0, "max_tokens": 12, "stream": stream, "user": "ignored",
               "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]})
    };
    let r = post(port, "/v1/chat/completions", &ask(false));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let c = r.json();
    assert_eq!(c["object"], "chat.completion");
    let text = c["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(["stop", "length"].contains(&c["choices"][0]["finish_reason"].as_str().unwrap()));
    assert!(c["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let body = ask(true).to_string();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut sse = String::new();
    let resp = read_head_and_body(
        &mut BufReader::new(s),
        Some(&mut |c: &[u8]| {
            sse.push_str(&String::from_utf8_lossy(c));
            !sse.contains("[DONE]")
        }),
    );
    assert_eq!(resp.status, 200);
    let chunks: Vec<Value> = sse
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed.trim(), text);
    assert!(chunks.last().unwrap()["choices"][0]["finish_reason"].is_string());
    assert_eq!(
        post(
            port,
            "/v1/chat/completions",
            &json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]})
        )
        .status,
        404
    );
    let r = post(
        port,
        "/v1/chat/completions",
        &json!({"model": run, "messages": [{"role": "assistant", "content": "x"}]}),
    );
    assert_eq!(r.status, 422);

    // Artifacts: listing, and downloads with Range.
    let files = get(port, &format!("/artifacts/runs/{run}")).json();
    let names: Vec<&str> = files["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"best/model.safetensors") && names.contains(&"logs.jsonl"),
        "{names:?}"
    );
    // Seed 002's name for the same place: artifacts/models/<run_id>.
    assert_eq!(
        get(port, &format!("/artifacts/models/{run}")).json()["files"],
        files["files"]
    );
    let url = format!("/artifacts/runs/{run}/download?path=best/model.safetensors");
    let whole = get(port, &url);
    assert_eq!(whole.status, 200);
    let on_disk = std::fs::read(root.join("runs").join(&run).join("best/model.safetensors")).unwrap();
    assert_eq!(whole.body, on_disk);
    let etag = whole.header("etag").unwrap().to_string();
    let len = on_disk.len();
    for (range, from, to) in [
        ("bytes=0-0", 0, 0),
        ("bytes=10-4105", 10, 4105),
        (&format!("bytes={}-", len - 7) as &str, len - 7, len - 1),
        ("bytes=-100", len - 100, len - 1),
    ] {
        let r = request(port, "GET", &url, &[("Range", range)], None);
        assert_eq!(r.status, 206, "{range}");
        assert_eq!(r.body, &on_disk[from..=to], "{range}");
        assert_eq!(
            r.header("content-range").unwrap(),
            format!("bytes {from}-{to}/{len}")
        );
    }
    let r = request(
        port,
        "GET",
        &url,
        &[("Range", "bytes=5-9"), ("If-Range", &etag)],
        None,
    );
    assert_eq!((r.status, r.body.len()), (206, 5));
    let r = request(
        port,
        "GET",
        &url,
        &[("Range", "bytes=5-9"), ("If-Range", "\"stale\"")],
        None,
    );
    assert_eq!(
        (r.status, r.body.len()),
        (200, len),
        "a changed file is sent whole"
    );
    let r = request(port, "GET", &url, &[("Range", &format!("bytes={len}-"))], None);
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range").unwrap(), format!("bytes */{len}"));
    let tok_file = get(
        port,
        &format!("/artifacts/tokenizers/{tok}/download?path=tokenizer.json"),
    );
    assert_eq!(tok_file.status, 200);

    // Cancel: prompt, and the last checkpoint stays usable; resume finishes the run from it.
    let r = post(port, "/runs/train", &train_body(&tok, 100_000, 5));
    let long = r.json()["run_id"].as_str().unwrap().to_string();
    let t0 = Instant::now();
    while logged_steps(&root, &long).len() < 12 {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the long run does not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let c = post(port, &format!("/runs/{long}/cancel"), &json!({}));
    assert_eq!(c.status, 202, "{}", String::from_utf8_lossy(&c.body));
    let t_cancel = Instant::now();
    let done = wait_state(port, &long, &["cancelled"], 60);
    assert!(
        t_cancel.elapsed() < Duration::from_secs(10),
        "cancel took {:?}",
        t_cancel.elapsed()
    );
    let stopped_at = done["progress"]["step"].as_u64().unwrap();
    let ckpts = chatforge_infer::source::checkpoints(&root.join("runs").join(&long));
    assert_eq!(ckpts[0].0, stopped_at, "a checkpoint at the step it stopped");
    let m = chatforge_infer::LoadedModel::open(
        &root.join("runs").join(&long),
        &chatforge_infer::Checkpoint::Latest,
        None,
        chatforge_infer::WeightType::F32,
    );
    assert!(m.is_ok(), "the checkpoint loads: {:?}", m.err());
    assert_eq!(
        post(port, &format!("/runs/{long}/cancel"), &json!({})).status,
        409
    );
    assert_eq!(
        post(port, &format!("/runs/{long}/resume"), &json!({})).status,
        202
    );
    wait_state(port, &long, &["running"], 30);
    let t0 = Instant::now();
    while logged_steps(&root, &long).last().copied().unwrap_or(0) < stopped_at + 3 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the resumed run does not advance"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    post(port, &format!("/runs/{long}/cancel"), &json!({}));
    wait_state(port, &long, &["cancelled"], 60);
    let steps = logged_steps(&root, &long);
    assert_eq!(
        steps,
        (1..=*steps.last().unwrap()).collect::<Vec<_>>(),
        "resumed without lost or repeated steps"
    );

    // A per-job time limit fails the job (after its retries), keeping its checkpoints. It is the
    // job's, from its first start: the retries do not each get the whole limit again.
    let mut body = train_body(&tok, 100_000, 5);
    body["timeout_s"] = json!(4.0);
    let t0 = Instant::now();
    let r = post(port, "/runs/train", &body);
    let slow = r.json()["run_id"].as_str().unwrap().to_string();
    let done = wait_state(port, &slow, &["failed"], 120);
    assert!(done["error"].as_str().unwrap().contains("timed out"), "{done}");
    assert_eq!(done["attempts"], 3);
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "three attempts of a 4 s job took {:?}",
        t0.elapsed()
    );
}

#[test]
fn a_killed_worker_is_replaced_and_a_restart_keeps_the_queue() {
    killed_worker_and_restart(&[]);
}

#[test]
fn the_same_on_redis() {
    let Some(redis) = chatforge_testkit::redis_server() else {
        return;
    };
    let url = redis.url();
    killed_worker_and_restart(&[("CHATFORGE__QUEUE__URL", &url)]);
}

/// Every process (server, workers) gets `env`: the queue they share.
fn killed_worker_and_restart(env: &[(&str, &str)]) {
    let d = data_root();
    let root = d.path().join("root");
    let port = free_port();
    // The API alone; workers are separate processes, as on other machines.
    let server = serve(&root, port, 0, &[], env);
    assert_eq!(get(port, "/readyz").status, 503, "no worker yet");
    let mut a = spawn(&["worker"], &root, env);
    let tok = tokenizer(port);
    let r = post(port, "/runs/train", &train_body(&tok, 80, 10));
    let run = r.json()["run_id"].as_str().unwrap().to_string();
    let t0 = Instant::now();
    while logged_steps(&root, &run).len() < 25 {
        assert!(t0.elapsed() < Duration::from_secs(120), "the run does not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SIGKILL: no checkpoint, no goodbye.
    a.0.kill().unwrap();
    a.0.wait().unwrap();
    let killed_at = logged_steps(&root, &run).len();
    let _b = spawn(&["worker"], &root, env);
    let done = wait_state(port, &run, &["succeeded", "failed"], 240);
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["attempts"], 2, "the second attempt finished it");
    let log = std::fs::read_to_string(root.join("runs").join(&run).join("logs.jsonl")).unwrap();
    let starts: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == "start")
        .collect();
    assert_eq!(starts.len(), 2);
    // The job ran in its own process: with its worker gone (its stdin closed) it stopped at its
    // next step with a checkpoint, so the next worker resumed from about where the kill came.
    let resumed_from = starts[1]["start_step"].as_u64().unwrap();
    assert!(
        resumed_from as usize >= killed_at && resumed_from as usize <= killed_at + 5,
        "resumed from step {resumed_from} (killed after {killed_at})"
    );
    assert_eq!(
        logged_steps(&root, &run),
        (1..=80).collect::<Vec<_>>(),
        "each step logged once"
    );

    // A queued job survives a restart of the server.
    drop(_b);
    let r = post(port, "/runs/train", &train_body(&tok, 5, 5));
    let queued = r.json()["run_id"].as_str().unwrap().to_string();
    unsafe_sigterm(&server);
    drop(server);
    let _server = serve(&root, port, 0, &[], env);
    assert_eq!(get(port, &format!("/runs/{queued}")).json()["state"], "queued");
}

/// Asks a process to stop as a service manager would.
fn unsafe_sigterm(p: &Proc) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(p.0.id().to_string())
        .status();
    std::thread::sleep(Duration::from_millis(500));
}

#[test]
fn bad_input_gets_clear_answers() {
    let d = data_root();
    let root = d.path().join("root");
    std::fs::write(d.path().join("secret.txt"), "TOP-SECRET-CONTENT").unwrap();
    #[cfg(unix)]
    {
        std::fs::create_dir_all(root.join("tokenizers/evil")).unwrap();
        std::os::unix::fs::symlink(d.path().join("secret.txt"), root.join("tokenizers/evil/link")).unwrap();
    }
    let port = free_port();
    let token = "s3cret-token";
    let _server = serve(
        &root,
        port,
        0,
        &["--api-token", token],
        &[("CHATFORGE__QUEUE__MAX_QUEUED", "2")],
    );
    let auth = format!("Bearer {token}");
    let h = |extra: &[(&'static str, &'static str)]| -> Vec<(&'static str, String)> {
        let mut v: Vec<(&'static str, String)> = vec![("Authorization", auth.clone())];
        v.extend(extra.iter().map(|(k, x)| (*k, x.to_string())));
        v
    };
    let call = |method: &str, path: &str, headers: &[(&'static str, String)], body: Option<&[u8]>| {
        let hs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        request(port, method, path, &hs, body)
    };
    let json_h = h(&[("Content-Type", "application/json")]);
    // Tokens: health needs none; everything else needs the right one.
    assert_eq!(get(port, "/healthz").status, 200);
    assert_eq!(get(port, "/runs").status, 401);
    assert_eq!(
        call("GET", "/runs", &[("Authorization", "Bearer wrong".into())], None).status,
        401
    );
    assert_eq!(call("GET", "/runs", &h(&[]), None).status, 200);
    // Malformed JSON, wrong types, unknown fields, missing fields, out-of-range values.
    let cases: [(&str, &str, u16, &str); 7] = [
        ("/runs/train", "{\"data\": ", 400, ""),
        ("/runs/train", "{\"data\": 5}", 422, "data"),
        (
            "/runs/train",
            "{\"data\": \"data/train.jsonl\", \"bogus\": 1}",
            422,
            "bogus",
        ),
        ("/runs/train", "{\"train\": {}}", 422, "data"),
        (
            "/tokenizers/train",
            "{\"input\": [\"data/train.jsonl\"], \"vocab_size\": 3}",
            422,
            "vocab_size",
        ),
        (
            "/runs/train",
            "{\"data\": \"data/train.jsonl\", \"train\": {\"max_steps\": 5}}",
            422,
            "tokenizer",
        ),
        (
            "/runs/train",
            "{\"data\": \"data/nope.bin\", \"train\": {\"max_steps\": 5}}",
            422,
            "data",
        ),
    ];
    for (path, body, status, names) in cases {
        let r = call("POST", path, &json_h, Some(body.as_bytes()));
        let text = String::from_utf8_lossy(&r.body).to_string();
        assert_eq!(r.status, status, "{body}: {text}");
        assert!(
            text.contains(names),
            "{body}: the answer should name {names:?}: {text}"
        );
        assert!(
            serde_json::from_str::<Value>(&text).unwrap()["error"].is_string(),
            "{text}"
        );
    }
    let r = call("POST", "/runs/train", &h(&[]), Some(b"{}"));
    assert_eq!(r.status, 415, "no JSON content type");
    // A huge body.
    let huge = vec![b' '; 3 << 20];
    assert_eq!(call("POST", "/runs/train", &json_h, Some(&huge)).status, 413);
    // Paths outside the data root.
    for bad in ["../secret.txt", "/etc/passwd", "data/../../secret.txt"] {
        let body = json!({"input": [bad], "vocab_size": 400}).to_string();
        let r = call("POST", "/tokenizers/train", &json_h, Some(body.as_bytes()));
        assert_eq!(r.status, 400, "{bad}: {}", String::from_utf8_lossy(&r.body));
    }
    for (path, status) in [
        ("/artifacts/runs/..%2F..%2Fetc/download?path=passwd", 400),
        ("/artifacts/tokenizers/evil/download?path=link", 400),
        ("/artifacts/tokenizers/evil/download?path=../../secret.txt", 400),
        ("/artifacts/other/x", 404),
        ("/runs/nope", 404),
        ("/runs/..", 400),
    ] {
        let r = call("GET", path, &h(&[]), None);
        assert_eq!(r.status, status, "{path}: {}", String::from_utf8_lossy(&r.body));
        assert!(
            !String::from_utf8_lossy(&r.body).contains("TOP-SECRET"),
            "{path} leaked the file"
        );
    }
    // A bounded queue (no workers: jobs wait): the third submission is refused.
    let body = json!({"input": ["data/train.jsonl"], "vocab_size": 400}).to_string();
    for want in [202, 202, 429] {
        let r = call("POST", "/tokenizers/train", &json_h, Some(body.as_bytes()));
        assert_eq!(r.status, want, "{}", String::from_utf8_lossy(&r.body));
    }
}

#[test]
fn print_config_merges_file_env_and_flags_and_masks_the_token() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("serve.toml"),
        "[worker]\ncount = 3\nlease_s = 30.0\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_chatforge"))
        .args([
            "serve",
            "--config",
            "serve.toml",
            "--print-config",
            "--bind",
            "127.0.0.1:9999",
        ])
        .env("CHATFORGE__QUEUE__MAX_QUEUED", "7")
        .env("CHATFORGE__API__TOKEN", "hunter2")
        .env("CHATFORGE__QUEUE__URL", "redis://:pa55word@10.0.0.5:6379/2")
        .current_dir(d.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let v: toml::Table = toml::from_str(&text).unwrap();
    assert_eq!(v["worker"]["count"].as_integer(), Some(3));
    assert_eq!(v["worker"]["lease_s"].as_float(), Some(30.0));
    assert_eq!(v["queue"]["max_queued"].as_integer(), Some(7));
    assert_eq!(v["api"]["bind"].as_str(), Some("127.0.0.1:9999"));
    assert_eq!(v["api"]["token"].as_str(), Some("********"));
    assert_eq!(
        v["queue"]["url"].as_str(),
        Some("redis://********@10.0.0.5:6379/2")
    );
    assert!(!text.contains("hunter2") && !text.contains("pa55word"));
}

/// Seed 002's deployment settings: a `.env` in the working directory with its variable names
/// (`REDIS_URL`, `RQ__*`, `APP__ARTIFACTS_ROOT`); the real environment and `CHATFORGE__` names win.
#[test]
fn seed_002_env_names_and_a_dotenv_file_are_read() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join(".env"),
        "# Model-Trainer's .env\nREDIS_URL=redis://redis:6379/0\nRQ__QUEUE_NAME=training\nexport RQ__JOB_TIMEOUT_SEC=3600\nRQ__RESULT_TTL_SEC=86400\nRQ__RETRY_MAX=2\nRQ__RETRY_INTERVALS_SEC=10,30,60\nAPP__ARTIFACTS_ROOT=\"/data/artifacts\"\nCHATFORGE__QUEUE__MAX_QUEUED=9\n",
    )
    .unwrap();
    let print = |env: &[(&str, &str)]| -> toml::Table {
        let out = Command::new(env!("CARGO_BIN_EXE_chatforge"))
            .args(["serve", "--print-config"])
            .envs(env.iter().copied())
            .current_dir(d.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        toml::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap()
    };
    let v = print(&[]);
    assert_eq!(v["queue"]["url"].as_str(), Some("redis://redis:6379/0"));
    assert_eq!(v["worker"]["job_timeout_s"].as_float(), Some(3600.0));
    assert_eq!(v["queue"]["ttl_s"].as_float(), Some(86400.0));
    assert_eq!(
        v["queue"]["max_attempts"].as_integer(),
        Some(3),
        "two retries are three attempts"
    );
    assert_eq!(v["queue"]["backoff_s"].as_float(), Some(10.0));
    assert_eq!(v["data_root"].as_str(), Some("/data/artifacts"));
    assert_eq!(v["queue"]["max_queued"].as_integer(), Some(9));
    assert_eq!(v["queue"]["name"].as_str(), Some("training"));
    // A worker serving named queues.
    let out = Command::new(env!("CARGO_BIN_EXE_chatforge"))
        .args(["worker", "--queues", "training,eval", "--print-config"])
        .current_dir(d.path())
        .output()
        .unwrap();
    let w: toml::Table = toml::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    let served: Vec<&str> = w["worker"]["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q.as_str().unwrap())
        .collect();
    assert_eq!(served, ["training", "eval"]);
    let bad = Command::new(env!("CARGO_BIN_EXE_chatforge"))
        .args(["worker", "--queues", "no way", "--print-config"])
        .current_dir(d.path())
        .output()
        .unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("queue name"));
    // The real environment over the file; chatforge's own name over the seed's.
    let v = print(&[
        ("REDIS_URL", "redis://other:6379/1"),
        ("CHATFORGE__DATA_ROOT", "/srv/cf"),
    ]);
    assert_eq!(v["queue"]["url"].as_str(), Some("redis://other:6379/1"));
    assert_eq!(v["data_root"].as_str(), Some("/srv/cf"));
}

/// `--log-format json`: every line the server, its workers and their job processes write is one
/// JSON object, job lines carrying the job and worker ids; a tokenizer job keeps its logs.jsonl.
#[test]
fn json_logs_and_tokenizer_job_logs() {
    let data = data_root();
    let root = data.path().join("root");
    let port = free_port();
    let log_path = data.path().join("server.log");
    let bind = format!("127.0.0.1:{port}");
    let child = Command::new(env!("CARGO_BIN_EXE_chatforge"))
        .args([
            "serve",
            "--bind",
            &bind,
            "--workers",
            "1",
            "--log-format",
            "json",
            "--data-root",
        ])
        .arg(&root)
        .envs(FAST)
        .env("APP__LOGS_ROOT", data.path().join("logs"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let server = Proc(child);
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(30), "the server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let id = tokenizer(port);
    let job_log = std::fs::read_to_string(root.join("tokenizers").join(&id).join("logs.jsonl")).unwrap();
    let events: Vec<Value> = job_log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events[0]["event"], "start");
    assert_eq!(events[1]["event"], "done");
    assert!(events[1]["vocab_size"].as_u64().unwrap() > 100);
    drop(server);
    let text = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    for l in &lines {
        assert!(
            l["ts"].as_str().unwrap().ends_with('Z') && l["level"].is_string() && l["msg"].is_string(),
            "{l}"
        );
    }
    let started = lines
        .iter()
        .find(|l| l["msg"] == "job started")
        .expect("a job started line");
    assert_eq!(
        (started["kind"].as_str(), started["target"].as_str()),
        (Some("tokenizer"), Some(id.as_str()))
    );
    assert!(started["job"].is_string() && started["worker"].is_string());
    let ended = lines
        .iter()
        .find(|l| l["msg"] == "job ended")
        .expect("a job ended line");
    assert_eq!(ended["state"], "succeeded");
    // Seed 002's APP__LOGS_ROOT: the same lines, kept in a file.
    let kept = std::fs::read_to_string(data.path().join("logs/chatforge.log")).unwrap();
    assert!(
        kept.contains("\"job started\"") && kept.contains("\"job ended\""),
        "{kept}"
    );
}
