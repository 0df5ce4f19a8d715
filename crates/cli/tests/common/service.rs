//! Driving `chatforge serve` over HTTP on loopback: a tiny HTTP/1.1 client (chunked bodies, SSE),
//! starting servers and workers, and the sample data root the service tests share.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chatforge_testkit::root;
use serde_json::{Value, json};

/// A response: status, headers (lower-cased names), body.
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one HTTP/1.1 request and reads the whole response (chunked bodies decoded).
pub fn request(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Resp {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        req += &format!("{k}: {v}\r\n");
    }
    if let Some(b) = body {
        req += &format!("Content-Length: {}\r\n", b.len());
    }
    req += "\r\n";
    s.write_all(req.as_bytes()).unwrap();
    if let Some(b) = body {
        let _ = s.write_all(b); // the server may answer (413) before reading it all
    }
    let mut r = BufReader::new(s);
    read_head_and_body(&mut r, None)
}

pub fn read_head(r: &mut impl BufRead) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status: u16 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').unwrap();
        headers.push((k.trim().to_lowercase(), v.trim().to_string()));
    }
    (status, headers)
}

/// Reads the body; with `on_chunk`, hands each decoded chunk over as it arrives and stops when it
/// returns false.
/// Receives each chunk of a streamed body; false stops reading.
pub type OnChunk<'a> = &'a mut dyn FnMut(&[u8]) -> bool;

pub fn read_head_and_body(r: &mut impl BufRead, mut on_chunk: Option<OnChunk<'_>>) -> Resp {
    let (status, headers) = read_head(r);
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            if r.read_line(&mut size).unwrap() == 0 {
                break;
            }
            let n = usize::from_str_radix(size.trim(), 16).unwrap();
            if n == 0 {
                break;
            }
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).unwrap();
            chunk.truncate(n);
            if let Some(f) = on_chunk.as_mut()
                && !f(&chunk)
            {
                break;
            }
            body.extend_from_slice(&chunk);
        }
    } else {
        r.read_to_end(&mut body).unwrap();
    }
    Resp {
        status,
        headers,
        body,
    }
}

/// A request with `Authorization: Bearer TOKEN` (and a JSON body when given).
pub fn authed(port: u16, token: &str, method: &str, path: &str, body: Option<&Value>) -> Resp {
    let auth = format!("Bearer {token}");
    let mut headers = vec![("Authorization", auth.as_str())];
    if body.is_some() {
        headers.push(("Content-Type", "application/json"));
    }
    let bytes = body.map(|b| b.to_string().into_bytes());
    request(port, method, path, &headers, bytes.as_deref())
}

pub fn get(port: u16, path: &str) -> Resp {
    request(port, "GET", path, &[], None)
}

pub fn post(port: u16, path: &str, body: &Value) -> Resp {
    request(
        port,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        Some(body.to_string().as_bytes()),
    )
}

/// Follows a run's log stream to its end: (id, event JSON) for each `log` event, and the end state.
pub fn follow(port: u16, run: &str, last_id: Option<&str>) -> (Vec<(String, Value)>, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    let last = last_id.map_or(String::new(), |i| format!("Last-Event-ID: {i}\r\n"));
    write!(
        s,
        "GET /runs/{run}/logs/stream?tail=100000 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{last}\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut text = String::new();
    let resp = read_head_and_body(
        &mut r,
        Some(&mut |c: &[u8]| {
            text.push_str(&String::from_utf8_lossy(c));
            !text.contains("event: end")
        }),
    );
    assert_eq!(resp.status, 200);
    assert!(
        resp.header("content-type")
            .unwrap()
            .starts_with("text/event-stream")
    );
    let (mut events, mut end) = (Vec::new(), String::new());
    for block in text.split("\n\n") {
        match sse_event(block) {
            Some(Sse::Log(id, event)) => events.push((id, event)),
            Some(Sse::End(state)) => end = state,
            None => {}
        }
    }
    (events, end)
}

/// One event of a run's log stream.
pub enum Sse {
    /// A line of the log: its id and its JSON.
    Log(String, Value),
    /// The end of the stream, with the job's final state.
    End(String),
}

/// The event of one SSE block (the text between blank lines), if it is a `log` or an `end`.
pub fn sse_event(block: &str) -> Option<Sse> {
    let field = |name: &str| {
        block
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")).map(|v| v.trim().to_string()))
    };
    let data = || serde_json::from_str::<Value>(&field("data").unwrap()).unwrap();
    match field("event").as_deref() {
        Some("log") => Some(Sse::Log(field("id").unwrap(), data())),
        Some("end") => Some(Sse::End(data()["state"].as_str().unwrap_or("").to_string())),
        _ => None,
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Fast heartbeats and short leases, so a lost worker is noticed in seconds.
pub const FAST: [(&str, &str); 3] = [
    ("CHATFORGE__WORKER__HEARTBEAT_S", "0.3"),
    ("CHATFORGE__WORKER__LEASE_S", "2"),
    ("CHATFORGE__QUEUE__BACKOFF_S", "0.2"),
];

pub fn spawn(args: &[&str], root: &Path, extra_env: &[(&str, &str)]) -> Proc {
    let mut c = Command::new(env!("CARGO_BIN_EXE_chatforge"));
    c.args(args)
        .arg("--data-root")
        .arg(root)
        .envs(FAST)
        .envs(extra_env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Proc(c.spawn().unwrap())
}

pub fn serve(root: &Path, port: u16, workers: usize, extra: &[&str], env: &[(&str, &str)]) -> Proc {
    let bind = format!("127.0.0.1:{port}");
    let w = workers.to_string();
    let mut args = vec!["serve", "--bind", &bind, "--workers", &w];
    args.extend_from_slice(extra);
    let p = spawn(&args, root, env);
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(30), "the server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    p
}

pub fn wait_state(port: u16, run: &str, want: &[&str], secs: u64) -> Value {
    let t0 = Instant::now();
    loop {
        let r = get(port, &format!("/runs/{run}")).json();
        if want.contains(&r["state"].as_str().unwrap()) {
            return r;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "run {run} never reached {want:?}: {r}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A data root holding the sample conversations (`data/train.jsonl` and `data/train.val.jsonl`).
pub fn data_root() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("root/data");
    std::fs::create_dir_all(&data).unwrap();
    super::ok(
        &[
            "data",
            "import",
            root().join("data/sample").to_str().unwrap(),
            "-o",
            data.join("train.jsonl").to_str().unwrap(),
        ],
        d.path(),
        None,
    );
    d
}

pub fn train_body(tokenizer: &str, steps: u64, every: u64) -> Value {
    json!({
        "data": "data/train.jsonl",
        "val": "data/train.val.jsonl",
        "tokenizer": tokenizer,
        "model": {"vocab_size": 0, "n_ctx": 64, "n_layer": 2, "n_head": 2, "n_embd": 32},
        "train": {"max_steps": steps, "batch_size": 8, "eval_every": every, "checkpoint_every": every, "lr": 3e-3}
    })
}

pub fn tokenizer(port: u16) -> String {
    let r = post(
        port,
        "/tokenizers/train",
        &json!({"input": ["data/train.jsonl"], "vocab_size": 400}),
    );
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let id = r.json()["id"].as_str().unwrap().to_string();
    let t0 = Instant::now();
    loop {
        let t = get(port, &format!("/tokenizers/{id}")).json();
        if t["state"] == "succeeded" {
            assert_eq!(t["artifact"], format!("tokenizers/{id}/tokenizer.json"));
            assert!(t["stats"]["vocab_size"].as_u64().unwrap() > 100);
            return id;
        }
        assert!(t["state"] != "failed", "{t}");
        assert!(t0.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Step numbers of the `step` events in a run's logs.jsonl, in order.
pub fn logged_steps(root: &Path, run: &str) -> Vec<u64> {
    std::fs::read_to_string(root.join("runs").join(run).join("logs.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == "step")
        .map(|v| v["step"].as_u64().unwrap())
        .collect()
}
