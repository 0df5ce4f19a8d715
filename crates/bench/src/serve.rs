//! `chatforge bench serve`: a bounded load test of the service on loopback. It starts a server (one
//! worker) on a scratch data root and trains the same small run twice: once alone, and once while
//! many clients poll the run's status and logs. It reports the latency of those requests and how
//! much the training slowed down. It stops by itself.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Value, json};

#[derive(Args)]
pub struct ServeBench {
    /// Concurrent clients polling the training run
    #[arg(long, default_value_t = 200)]
    pub clients: usize,
    /// Seconds between one client's requests (status and logs, alternating)
    #[arg(long, default_value_t = 1.0)]
    pub interval: f64,
    /// Optimizer steps of each training run
    #[arg(long, default_value_t = 150)]
    pub steps: u64,
    /// Conversations to train on
    #[arg(long, default_value = "data/sample")]
    pub data: std::path::PathBuf,
}

/// One HTTP/1.1 request on loopback; the status and body (responses here are not chunked).
fn http(port: u16, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers")?;
    let status: u16 = String::from_utf8_lossy(&raw[..head_end])
        .split_whitespace()
        .nth(1)
        .context("no status")?
        .parse()?;
    Ok((status, raw[head_end + 4..].to_vec()))
}

/// A client's own connection, kept open between its requests (as a dashboard's would be).
struct KeepAlive {
    port: u16,
    conn: Option<std::io::BufReader<TcpStream>>,
}

impl KeepAlive {
    /// GET `path`: the status, reconnecting once if the connection was closed.
    fn get(&mut self, path: &str) -> anyhow::Result<u16> {
        use std::io::BufRead;
        for attempt in 0..2 {
            if self.conn.is_none() {
                let s = TcpStream::connect(("127.0.0.1", self.port))?;
                s.set_read_timeout(Some(Duration::from_secs(30)))?;
                s.set_nodelay(true)?;
                self.conn = Some(std::io::BufReader::new(s));
            }
            let Some(r) = self.conn.as_mut() else { continue };
            // One write for the whole request (write! would send it in pieces).
            let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
            let sent = r.get_mut().write_all(req.as_bytes());
            let mut status_line = String::new();
            if sent.is_err() || r.read_line(&mut status_line).unwrap_or(0) == 0 {
                self.conn = None;
                if attempt == 0 {
                    continue;
                }
                bail!("connection closed");
            }
            let status: u16 = status_line
                .split_whitespace()
                .nth(1)
                .context("no status")?
                .parse()?;
            let mut len = 0usize;
            loop {
                let mut h = String::new();
                r.read_line(&mut h)?;
                let h = h.trim_end();
                if h.is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':')
                    && k.eq_ignore_ascii_case("content-length")
                {
                    len = v.trim().parse()?;
                }
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body)?;
            return Ok(status);
        }
        bail!("cannot reach the server")
    }
}

fn json_of(port: u16, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
    let (status, b) = http(port, method, path, body)?;
    let v: Value = serde_json::from_slice(&b).with_context(|| format!("{method} {path}: status {status}"))?;
    if status >= 400 {
        bail!("{method} {path}: {status} {v}");
    }
    Ok(v)
}

fn wait_done(port: u16, path: &str) -> anyhow::Result<Value> {
    loop {
        let v = json_of(port, "GET", path, None)?;
        match v["state"].as_str() {
            Some("succeeded") => return Ok(v),
            Some("failed" | "cancelled") => bail!("{path}: {v}"),
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Median tokens/s of a run's step events (the first few, warming up, left out).
fn median_tokens_per_s(run_dir: &Path) -> anyhow::Result<f64> {
    let mut v: Vec<f64> = std::fs::read_to_string(run_dir.join("logs.jsonl"))?
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["event"] == "step")
        .skip(5)
        .filter_map(|e| e["tokens_per_s"].as_f64())
        .collect();
    if v.is_empty() {
        bail!("no step events in {}", run_dir.display());
    }
    v.sort_by(f64::total_cmp);
    Ok(v[v.len() / 2])
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub fn run(args: &ServeBench) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().join("root");
    std::fs::create_dir_all(root.join("data"))?;
    let exe = std::env::current_exe()?;
    let status = Command::new(&exe)
        .args(["data", "import"])
        .arg(&args.data)
        .arg("-o")
        .arg(root.join("data/train.jsonl"))
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("importing {}", args.data.display());
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut server = Command::new(&exe)
        .args(["serve", "--workers", "1", "--bind", &format!("127.0.0.1:{port}")])
        .arg("--data-root")
        .arg(&root)
        .env("CHATFORGE__API__MAX_BODY", "1048576")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let result = (|| -> anyhow::Result<()> {
        let t0 = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("the server did not start");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let tok = json_of(
            port,
            "POST",
            "/tokenizers/train",
            Some(&json!({"input": ["data/train.jsonl"], "vocab_size": 1000})),
        )?["id"]
            .as_str()
            .context("no tokenizer id")?
            .to_string();
        wait_done(port, &format!("/tokenizers/{tok}"))?;
        let train = json!({
            "data": "data/train.jsonl", "tokenizer": tok,
            "model": {"vocab_size": 0, "n_ctx": 128, "n_layer": 4, "n_head": 4, "n_embd": 128},
            "train": {"max_steps": args.steps, "batch_size": 8, "eval_every": 1000, "checkpoint_every": 1000}
        });
        let submit = || -> anyhow::Result<String> {
            Ok(json_of(port, "POST", "/runs/train", Some(&train))?["run_id"]
                .as_str()
                .context("no run id")?
                .to_string())
        };
        say!(
            "service load test: {} clients on kept-alive connections, each polling a run's status or last 50 log lines every {:.1} s, while it trains ({} steps, 4 layers × 128, one worker)",
            args.clients,
            args.interval,
            args.steps
        );
        let quiet = submit()?;
        wait_done(port, &format!("/runs/{quiet}"))?;
        let base = median_tokens_per_s(&root.join("runs").join(&quiet))?;

        let loaded = submit()?;
        let stop = Arc::new(AtomicBool::new(false));
        let latencies = Arc::new(Mutex::new(Vec::<f64>::new()));
        let errors = Arc::new(Mutex::new(Vec::<String>::new()));
        let clients: Vec<_> = (0..args.clients)
            .map(|i| {
                let (stop, latencies, errors, run) =
                    (stop.clone(), latencies.clone(), errors.clone(), loaded.clone());
                let interval = Duration::from_secs_f64(args.interval);
                let offset = interval.mul_f64(i as f64 / args.clients as f64);
                std::thread::spawn(move || {
                    // Spread the clients' first requests over one interval.
                    std::thread::sleep(offset);
                    let mut n = i;
                    let mut conn = KeepAlive { port, conn: None };
                    while !stop.load(Ordering::Relaxed) {
                        let path = if n % 2 == 0 {
                            format!("/runs/{run}")
                        } else {
                            format!("/runs/{run}/logs?tail=50")
                        };
                        n += 1;
                        let t = Instant::now();
                        match conn.get(&path) {
                            Ok(200) => {
                                if let Ok(mut l) = latencies.lock() {
                                    l.push(t.elapsed().as_secs_f64() * 1e3);
                                }
                            }
                            Ok(s) => {
                                if let Ok(mut e) = errors.lock() {
                                    e.push(format!("{path}: {s}"));
                                }
                            }
                            Err(err) => {
                                if let Ok(mut e) = errors.lock() {
                                    e.push(format!("{path}: {err}"));
                                }
                            }
                        }
                        std::thread::sleep(interval.saturating_sub(t.elapsed()));
                    }
                })
            })
            .collect();
        let waited = wait_done(port, &format!("/runs/{loaded}"));
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            let _ = c.join();
        }
        waited?;
        let under_load = median_tokens_per_s(&root.join("runs").join(&loaded))?;
        let mut lat = latencies.lock().map(|l| l.clone()).unwrap_or_default();
        lat.sort_by(f64::total_cmp);
        let errors = errors.lock().map(|e| e.clone()).unwrap_or_default();
        say!(
            "requests {}  errors {}  latency ms: p50 {:.1}  p99 {:.1}  max {:.1}",
            lat.len() + errors.len(),
            errors.len(),
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            lat.last().copied().unwrap_or(f64::NAN)
        );
        if let Some(e) = errors.first() {
            say!("first error: {e}");
        }
        say!(
            "training tokens/s: alone {base:.0}, under load {under_load:.0} ({:+.1}%)",
            100.0 * (under_load / base - 1.0)
        );
        Ok(())
    })();
    let _ = server.kill();
    let _ = server.wait();
    result
}
