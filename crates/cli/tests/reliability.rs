//! The service attacked as a careless or hostile client would: absurd sizes, a job that runs out
//! of memory, idle connections, an empty token, deploys during a job, a Redis outage, diverging
//! settings, symlinks out of the data root, huge logs, and the API's error surface. Each test
//! reproduces a hole the hardening issue found (see docs/reliability.md).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failure should panic with its message

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::service::*;
use serde_json::{Value, json};

fn text(r: &Resp) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// `chatforge serve` under a shell `ulimit -v` (address space, KiB), as a small container would be.
fn serve_limited(root: &std::path::Path, port: u16, kib: u64) -> Proc {
    let exe = env!("CARGO_BIN_EXE_chatforge");
    let cmd = format!(
        "ulimit -v {kib}; exec '{exe}' serve --bind 127.0.0.1:{port} --workers 1 --data-root '{}'",
        root.display()
    );
    let p = Proc(
        Command::new("sh")
            .args(["-c", &cmd])
            .envs(FAST)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(30), "the server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    p
}

#[test]
fn absurd_sizes_are_refused_and_a_job_out_of_memory_fails_alone() {
    let d = data_root();
    let root = d.path().join("root");
    let port = free_port();
    // 3 GiB of address space: plenty for the service and a small run, not for a 4.8 GB model.
    let server = serve_limited(&root, port, 3 << 20);
    let tok = tokenizer(port);
    let with = |f: &dyn Fn(&mut Value)| {
        let mut b = train_body(&tok, 5, 5);
        f(&mut b);
        post(port, "/runs/train", &b)
    };
    // Sizes no machine holds: 422 with what was wrong and, for a run, the estimate.
    let r = with(&|b| b["train"]["batch_size"] = json!(1_000_000_000u64));
    assert_eq!(r.status, 422, "{}", text(&r));
    assert!(
        text(&r).contains("needs about") && text(&r).contains("of memory"),
        "{}",
        text(&r)
    );
    let r = with(&|b| b["model"]["vocab_size"] = json!(1u64 << 40));
    assert_eq!(r.status, 422, "{}", text(&r));
    assert!(text(&r).contains("vocab_size"), "{}", text(&r));
    let r = with(&|b| {
        b["model"]["n_embd"] = json!(65536);
        b["model"]["n_layer"] = json!(1000);
    });
    assert_eq!(r.status, 422, "{}", text(&r));
    assert!(text(&r).contains("of weights"), "{}", text(&r));
    // A run the machine holds but this process may not: the job's process fails to allocate;
    // the job fails (each attempt), the server lives on and runs the next job.
    let r = with(&|b| {
        b["model"] = json!({"vocab_size": 0, "n_ctx": 64, "n_layer": 24, "n_head": 16, "n_embd": 1024});
        b["train"]["batch_size"] = json!(1);
    });
    assert_eq!(r.status, 202, "{}", text(&r));
    let big = r.json()["run_id"].as_str().unwrap().to_string();
    let done = wait_state(port, &big, &["failed", "succeeded"], 180);
    assert_eq!(done["state"], "failed", "{done}");
    assert_eq!(done["attempts"], 3, "{done}");
    let err = done["error"].as_str().unwrap();
    assert!(err.contains("job's process"), "{err}");
    assert_eq!(get(port, "/healthz").status, 200);
    let r = post(port, "/runs/train", &train_body(&tok, 5, 5));
    let small = r.json()["run_id"].as_str().unwrap().to_string();
    assert_eq!(
        wait_state(port, &small, &["succeeded", "failed"], 120)["state"],
        "succeeded"
    );
    drop(server);
    // The same limit on the command line: an HF config.json claiming 10^8 layers or 2^62
    // positions is refused before anything is allocated for it.
    let run = root.join("runs").join(&small);
    for (key, value) in [
        ("n_layer", json!(100_000_000u64)),
        ("n_positions", json!(1u64 << 62)),
    ] {
        let fake = d.path().join(format!("fake-{key}"));
        std::fs::create_dir_all(&fake).unwrap();
        let best = run.join("best");
        std::fs::copy(best.join("model.safetensors"), fake.join("model.safetensors")).unwrap();
        std::fs::copy(run.join("tokenizer.json"), fake.join("tokenizer.json")).unwrap();
        let mut cfg: Value =
            serde_json::from_str(&std::fs::read_to_string(best.join("config.json")).unwrap()).unwrap();
        cfg[key] = value;
        std::fs::write(fake.join("config.json"), cfg.to_string()).unwrap();
        let err = common::fails(&["chat", "--model", fake.to_str().unwrap()], d.path());
        assert!(err.contains("above the largest supported"), "{key}: {err}");
    }
}

/// How many of `conns` the server holds open: nothing to read yet (no answer, no close).
fn held_open(conns: &[TcpStream]) -> usize {
    conns
        .iter()
        .filter(|s| {
            s.set_nonblocking(true).unwrap();
            let pending = s.peek(&mut [0u8; 1]);
            s.set_nonblocking(false).unwrap();
            matches!(pending, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count()
}

#[test]
fn idle_connections_are_closed_and_capped() {
    let d = tempfile::tempdir().unwrap();
    let port = free_port();
    let _server = serve(
        d.path(),
        port,
        0,
        &[],
        &[
            ("CHATFORGE__API__MAX_CONNECTIONS", "16"),
            // Long enough that a loaded machine (tests build and run beside this one) still has
            // the idle connections open when the request over the cap arrives.
            ("CHATFORGE__API__HEADER_TIMEOUT_S", "4"),
        ],
    );
    // Forty connections that send half a request head and wait; the request after them is over
    // the cap. A connection the client has closed frees its slot only when the server notices
    // (the start-up probe's, say), and on a loaded machine the header timeout may pass before
    // the request is answered: then a slot was rightly free, the attempt proves nothing and is
    // made again. The server never holds more connections than the cap.
    let (idle, r) = (0..3)
        .find_map(|_| {
            let opened = Instant::now();
            let idle: Vec<TcpStream> = (0..40)
                .map(|_| {
                    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                    s
                })
                .collect();
            std::thread::sleep(Duration::from_millis(300));
            let r = get(port, "/healthz");
            std::thread::sleep(Duration::from_millis(200));
            let held = held_open(&idle);
            assert!(held <= 16, "{held} connections held over a cap of 16");
            let slot_was_free = held < 16 || opened.elapsed() > Duration::from_secs(4);
            (r.status == 503 || !slot_was_free).then_some((idle, r))
        })
        .expect("a slot was free in each of three attempts");
    // Over the cap: an immediate 503 in JSON, not a hang.
    assert_eq!(r.status, 503, "{}", text(&r));
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("too many open connections")
    );
    assert_eq!(r.header("retry-after"), Some("2"));
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );
    // Each idle connection is closed within the header timeout (plus slack).
    let t0 = Instant::now();
    for mut s in idle {
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        let answer = String::from_utf8_lossy(&buf);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 503") || answer.starts_with("HTTP/1.1 408"),
            "{answer}"
        );
    }
    assert!(
        t0.elapsed() < Duration::from_secs(12),
        "idle connections stayed open"
    );
    assert_eq!(get(port, "/healthz").status, 200);
    // A kept-alive connection that goes quiet after a whole request is closed as well.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let t0 = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    let answer = String::from_utf8_lossy(&seen);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let idle = t0.elapsed();
    assert!(
        idle > Duration::from_secs(2) && idle < Duration::from_secs(12),
        "closed after {idle:?}"
    );
}

#[test]
fn an_empty_token_is_refused_at_start() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().to_str().unwrap();
    let err = common::fails(
        &["serve", "--data-root", root, "--api-token", "", "--print-config"],
        d.path(),
    );
    assert!(err.contains("api.token is empty"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_chatforge"))
        .args(["serve", "--data-root", root, "--print-config"])
        .env("CHATFORGE_API_TOKEN", "")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("api.token is empty"));
    let out = Command::new(env!("CARGO_BIN_EXE_chatforge"))
        .args(["worker", "--data-root", root])
        .env("CHATFORGE__API__TOKEN", " ")
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// Waits until the run has logged at least `n` steps.
fn wait_steps(root: &std::path::Path, run: &str, n: usize) {
    let t0 = Instant::now();
    while logged_steps(root, run).len() < n {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the run did not reach step {n}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sigterm(p: &Proc) {
    Command::new("kill")
        .arg("-TERM")
        .arg(p.0.id().to_string())
        .status()
        .unwrap();
}

#[test]
fn deploys_during_a_job_cost_it_no_attempt() {
    deploys(&[]);
}

#[test]
fn deploys_on_redis_and_an_outage_longer_than_the_lease() {
    let Some(redis) = chatforge_testkit::redis_server() else {
        return;
    };
    let url = redis.url();
    let env = [("CHATFORGE__QUEUE__URL", url.as_str())];
    deploys(&env);
    // Redis goes away for three leases while a job trains, and comes back after it finished: the
    // job is recorded as succeeded, on its first attempt, not run again.
    let d = data_root();
    let root = d.path().join("root");
    let port = free_port();
    let server = serve(&root, port, 1, &[], &env);
    let tok = tokenizer(port);
    let r = post(port, "/runs/train", &train_body(&tok, 120, 40));
    let run = r.json()["run_id"].as_str().unwrap().to_string();
    wait_steps(&root, &run, 10);
    let stopped = redis.stop();
    let t0 = Instant::now();
    while !root.join("runs").join(&run).join("summary.json").is_file() {
        assert!(t0.elapsed() < Duration::from_secs(120), "the run did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(6)); // lease_s is 2
    let _redis = stopped.start_again();
    let done = wait_state(port, &run, &["succeeded", "failed"], 60);
    assert_eq!(
        (done["state"].as_str(), done["attempts"].as_u64()),
        (Some("succeeded"), Some(1)),
        "{done}"
    );
    assert_eq!(logged_steps(&root, &run), (1..=120).collect::<Vec<_>>());
    drop(server);
}

/// Three SIGTERMs (deploys) while one job trains: each hands it back to the queue; it finishes
/// on the fourth server with one attempt counted and each step logged once.
fn deploys(env: &[(&str, &str)]) {
    let d = data_root();
    let root = d.path().join("root");
    let port = free_port();
    let mut server = serve(&root, port, 1, &[], env);
    let tok = tokenizer(port);
    let r = post(port, "/runs/train", &train_body(&tok, 400, 20));
    let run = r.json()["run_id"].as_str().unwrap().to_string();
    for deploy in 1..=3 {
        wait_steps(&root, &run, 30 * deploy);
        sigterm(&server);
        server.0.wait().unwrap();
        server = serve(&root, port, 1, &[], env);
        let j = get(port, &format!("/runs/{run}")).json();
        assert!(
            ["queued", "running"].contains(&j["state"].as_str().unwrap()),
            "{j}"
        );
        assert!(
            j["attempts"].as_u64().unwrap() <= 1,
            "a deploy cost an attempt: {j}"
        );
    }
    let done = wait_state(port, &run, &["succeeded", "failed"], 300);
    assert_eq!(
        (done["state"].as_str(), done["attempts"].as_u64()),
        (Some("succeeded"), Some(1)),
        "{done}"
    );
    assert_eq!(
        logged_steps(&root, &run),
        (1..=400).collect::<Vec<_>>(),
        "each step logged once"
    );
}

#[test]
fn settings_that_diverge_are_refused() {
    let d = data_root();
    let root = d.path().join("root");
    let port = free_port();
    let _server = serve(&root, port, 1, &[], &[]);
    let tok = tokenizer(port);
    let cases: [(&str, &str, Value); 15] = [
        ("train", "lr", json!(1e300)),
        ("train", "beta1", json!(5)),
        ("train", "beta2", json!(-3)),
        ("train", "eps", json!(0)),
        ("train", "weight_decay", json!(-0.1)),
        ("train", "grad_clip", json!(-1)),
        ("train", "max_steps", json!(0)),
        ("train", "keep_last", json!(0)),
        ("train", "tokens_per_step", json!(0)),
        ("model", "layer_norm_eps", json!(-1e-5)),
        ("model", "dropout", json!(1.5)),
        ("train", "epochs", json!(0)),
        ("train", "epochs", json!(-2)),
        ("train", "epochs", json!(1e308)),
        ("train", "min_lr", json!(1)),
    ];
    for (section, key, value) in cases {
        let mut b = train_body(&tok, 5, 5);
        b[section][key] = value.clone();
        if key == "epochs" {
            b["train"].as_object_mut().unwrap().remove("max_steps");
        }
        let r = post(port, "/runs/train", &b);
        assert_eq!(r.status, 422, "{section}.{key} = {value}: {}", text(&r));
        assert!(text(&r).contains(key), "{key}: {}", text(&r));
    }
}

#[test]
fn symlinks_out_of_the_data_root_are_refused_everywhere() {
    let d = data_root();
    let root = d.path().join("root");
    let outside = d.path().join("outside");
    std::fs::create_dir_all(outside.join("eval")).unwrap();
    std::fs::write(outside.join("tokenizer.json"), "SECRET-TOKENIZER").unwrap();
    std::fs::write(outside.join("eval/metrics.json"), "{\"secret\": 1}").unwrap();
    std::fs::create_dir_all(root.join("tokenizers")).unwrap();
    std::fs::create_dir_all(root.join("runs")).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("tokenizers/evil")).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("runs/evil")).unwrap();
    let port = free_port();
    let _server = serve(&root, port, 0, &[], &[]);
    let r = post(port, "/runs/train", &train_body("evil", 5, 5));
    assert_eq!(r.status, 400, "{}", text(&r));
    assert!(text(&r).contains("outside the data root"), "{}", text(&r));
    let r = get(port, "/runs/evil/eval");
    assert_eq!(r.status, 400, "{}", text(&r));
    assert!(!text(&r).contains("secret"));
    let r = post(
        port,
        "/v1/chat/completions",
        &json!({"model": "evil", "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(r.status, 422, "{}", text(&r));
    let r = get(port, "/artifacts/runs/evil/download?path=eval/metrics.json");
    assert_eq!(r.status, 400, "{}", text(&r));
}

#[test]
fn the_api_answers_every_error_in_json() {
    let d = data_root();
    let root = d.path().join("root");
    let port = free_port();
    let token = "tok-123";
    let _server = serve(
        &root,
        port,
        1,
        &["--api-token", token],
        &[("CHATFORGE__QUEUE__MAX_QUEUED", "1")],
    );
    let auth = [("Authorization", "bearer tok-123")]; // the scheme in any case
    let call = |m: &str, p: &str, h: &[(&str, &str)], b: Option<&[u8]>| request(port, m, p, h, b);
    // Unknown route, wrong method, bad query: JSON bodies, each with a message.
    for (m, p, status) in [
        ("GET", "/nope", 404),
        ("DELETE", "/runs", 405),
        ("GET", "/runs?limit=lots", 400),
        ("GET", "/runs?bogus=1", 400),
    ] {
        let r = call(m, p, &auth, None);
        assert_eq!(r.status, status, "{m} {p}: {}", text(&r));
        assert!(
            r.json()["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{m} {p}"
        );
    }
    // The OpenAI route answers in OpenAI's error shape, authentication included.
    let ask = json!({"model": "no-such-run", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let json_h = [auth[0], ("Content-Type", "application/json")];
    let r = call("POST", "/v1/chat/completions", &json_h, Some(ask.as_bytes()));
    assert_eq!(r.status, 404, "{}", text(&r));
    let e = &r.json()["error"];
    assert!(e["message"].as_str().unwrap().contains("no-such-run"), "{e}");
    assert_eq!(e["type"], "not_found_error");
    let r = call(
        "POST",
        "/v1/chat/completions",
        &[("Content-Type", "application/json")],
        Some(ask.as_bytes()),
    );
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["type"], "authentication_error");
    // Readiness shows worker ids only with the token.
    let r = get(port, "/readyz");
    assert!(
        r.json()["workers"].is_null() && r.json()["live_workers"] == 1,
        "{}",
        text(&r)
    );
    assert_eq!(
        call("GET", "/readyz", &auth, None).json()["workers"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // A full queue: 429 with Retry-After; resume counts against the bound too.
    let tok_body = json!({"input": ["data/train.jsonl"], "vocab_size": 400}).to_string();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let r = call("POST", "/tokenizers/train", &json_h, Some(tok_body.as_bytes()));
        if r.status == 429 {
            assert_eq!(r.header("retry-after"), Some("2"));
        }
        statuses.push(r.status);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    // A run that fails reports why without the server's paths; its files download with Range.
    let t0 = Instant::now();
    let tok = loop {
        let r = call("POST", "/tokenizers/train", &json_h, Some(tok_body.as_bytes()));
        if r.status == 202 {
            break r.json()["id"].as_str().unwrap().to_string();
        }
        assert!(t0.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(200));
    };
    while call("GET", &format!("/tokenizers/{tok}"), &auth, None).json()["state"] != "succeeded" {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the tokenizer did not train"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Refused at the edge: the message names the field and no server path.
    let mut body = train_body(&tok, 5, 5);
    body["init"] = json!("data"); // a folder, but not a model
    let r = call("POST", "/runs/train", &json_h, Some(body.to_string().as_bytes()));
    assert!(r.status == 422 || r.status == 429, "{}", text(&r));
    let abs = root.canonicalize().unwrap().display().to_string();
    if r.status == 422 {
        assert!(
            text(&r).contains("init") && !text(&r).contains(&abs),
            "{}",
            text(&r)
        );
    }
    // Fails in the worker: a token shard that is not one.
    std::fs::write(root.join("data/broken.bin"), vec![7u8; 4096]).unwrap();
    let mut body = train_body(&tok, 5, 5);
    body["data"] = json!("data/broken.bin");
    body.as_object_mut().unwrap().remove("val");
    let t0 = Instant::now();
    let run = loop {
        let r = call("POST", "/runs/train", &json_h, Some(body.to_string().as_bytes()));
        if r.status == 202 {
            break r.json()["run_id"].as_str().unwrap().to_string();
        }
        assert_eq!(r.status, 429, "{}", text(&r));
        assert!(t0.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(200));
    };
    let t0 = Instant::now();
    let done = loop {
        let j = call("GET", &format!("/runs/{run}"), &auth, None).json();
        if j["state"] == "failed" {
            break j;
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "{j}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let err = done["error"].as_str().unwrap();
    assert!(
        !err.contains(&abs) && !err.contains(&root.display().to_string()),
        "{err}"
    );
    assert!(err.contains("data/broken.bin"), "{err}");
    let path = format!("/artifacts/tokenizers/{tok}/download?path=tokenizer.json");
    for (range, status) in [
        ("bytes=abc", 200),
        ("Bytes=0-3", 206),
        ("bytes=5-2", 200),
        ("bytes=99999999-", 416),
    ] {
        let r = call("GET", &path, &[auth[0], ("Range", range)], None);
        assert_eq!(r.status, status, "Range: {range}");
    }
}

#[test]
fn log_readers_do_not_stall_the_server() {
    let d = data_root();
    let root = d.path().join("root");
    let port = free_port();
    let _server = serve(&root, port, 1, &[], &[]);
    let tok = tokenizer(port);
    let r = post(port, "/runs/train", &train_body(&tok, 5, 5));
    let run = r.json()["run_id"].as_str().unwrap().to_string();
    wait_state(port, &run, &["succeeded"], 120);
    // A 40 MB log (a long run's), read by twenty streams and tails at once.
    let log = root.join("runs").join(&run).join("logs.jsonl");
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    let line = |s: u64| {
        format!(
            "{{\"event\":\"step\",\"step\":{s},\"loss\":1.0,\"lr\":0.001,\"grad_norm\":1.0,\"tokens_per_s\":1000.0,\"epoch\":1.0,\"elapsed_s\":1.0,\"pad\":\"{}\"}}\n",
            "x".repeat(300)
        )
    };
    let mut chunk = String::new();
    for s in 6..100_006u64 {
        chunk += &line(s);
        if chunk.len() > 1 << 20 {
            f.write_all(chunk.as_bytes()).unwrap();
            chunk.clear();
        }
    }
    f.write_all(chunk.as_bytes()).unwrap();
    drop(f);
    let streams: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            write!(
                s,
                "GET /runs/{run}/logs/stream?tail=50 HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            .unwrap();
            s
        })
        .collect();
    let mut times = Vec::new();
    for _ in 0..20 {
        let t0 = Instant::now();
        let tail = get(port, &format!("/runs/{run}/logs?tail=200"));
        assert_eq!(tail.json()["events"].as_array().unwrap().len(), 200);
        assert_eq!(tail.json()["last_id"], "100005:0");
        assert_eq!(get(port, "/healthz").status, 200);
        times.push(t0.elapsed());
    }
    times.sort();
    // Reading the whole file per request took ~0.5 s each here; the tail reads a few blocks.
    assert!(
        times[10] < Duration::from_millis(150),
        "median tail + health {:?}",
        times[10]
    );
    drop(streams);
}

#[test]
fn errors_name_each_cause_once() {
    let d = tempfile::tempdir().unwrap();
    let sample = chatforge_testkit::root().join("data/sample");
    std::fs::create_dir_all(d.path().join("out")).unwrap();
    let err = common::fails(
        &["data", "import", sample.to_str().unwrap(), "-o", "out"],
        d.path(),
    );
    assert_eq!(err.matches("Is a directory").count(), 1, "{err}");
}

#[test]
fn generations_are_bounded_and_stop_when_their_client_leaves() {
    let d = data_root();
    let root = d.path().join("root");
    let port = free_port();
    let _server = serve(
        &root,
        port,
        1,
        &[],
        &[
            ("CHATFORGE__API__MAX_BATCH", "1"),
            ("CHATFORGE__API__MAX_QUEUE", "1"),
        ],
    );
    let tok = tokenizer(port);
    let mut body = train_body(&tok, 3, 3);
    body["model"]["n_ctx"] = json!(1024);
    body["train"]["batch_size"] = json!(2);
    body["train"]["seq_len"] = json!(64);
    let run = post(port, "/runs/train", &body).json()["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        wait_state(port, &run, &["succeeded", "failed"], 120)["state"],
        "succeeded"
    );
    let ask = |seed: u64| json!({"model": run, "max_tokens": 1000, "seed": seed, "messages": [{"role": "user", "content": "Hi"}]});
    // A seed whose reply runs long (an untrained model ends a reply at random).
    let (seed, full) = (0..40u64)
        .find_map(|seed| {
            let t0 = Instant::now();
            let r = post(port, "/v1/chat/completions", &ask(seed));
            assert_eq!(r.status, 200, "{}", text(&r));
            (r.json()["usage"]["completion_tokens"].as_u64().unwrap() >= 600).then(|| (seed, t0.elapsed()))
        })
        .expect("a long reply");
    // While one generation runs and one waits, a third is told to come back.
    let body = ask(seed).to_string();
    let send = move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            s,
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        s
    };
    let first = send();
    std::thread::sleep(full / 4);
    let second = send();
    std::thread::sleep(full / 10);
    let r = post(port, "/v1/chat/completions", &ask(seed));
    assert_eq!(r.status, 429, "{}", text(&r));
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
    assert!(r.header("retry-after").is_some());
    // The clients go away: the generation stops, the waiting one never starts, and the place
    // frees long before the reply would have ended.
    drop((first, second));
    let t0 = Instant::now();
    loop {
        let r = post(
            port,
            "/v1/chat/completions",
            &json!({"model": run, "max_tokens": 1, "messages": [{"role": "user", "content": "Hi"}]}),
        );
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 429, "{}", text(&r));
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        t0.elapsed() < full / 3,
        "the slot freed after {:?} (a full reply takes {full:?})",
        t0.elapsed()
    );
}
