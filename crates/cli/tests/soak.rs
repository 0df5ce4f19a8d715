//! The soak: jobs training under a mixed request load while the server is killed and started
//! again, with a client following a run's log stream across the crashes (docs/reliability.md).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failure should panic with its message

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::service::*;
use serde_json::Value;

/// Follows a run's log stream until it ends or the connection breaks: (id, event) of each log
/// event received, and whether the end came. Never panics on a broken connection.
fn follow_until_broken(port: u16, run: &str, last: Option<&str>) -> (Vec<(String, Value)>, bool) {
    use std::io::BufRead;
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return (Vec::new(), false);
    };
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let last = last.map_or(String::new(), |i| format!("Last-Event-ID: {i}\r\n"));
    if write!(
        s,
        "GET /runs/{run}/logs/stream?tail=100000 HTTP/1.1\r\nHost: x\r\n{last}\r\n"
    )
    .is_err()
    {
        return (Vec::new(), false);
    }
    let mut r = std::io::BufReader::new(s);
    let mut line = String::new();
    // The head, then chunks: each a hex size line, data, CRLF.
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return (Vec::new(), false);
        }
        if line == "\r\n" {
            break;
        }
    }
    let (mut text, mut events) = (String::new(), Vec::new());
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return (events, false);
        }
        let Ok(n) = usize::from_str_radix(line.trim(), 16) else {
            return (events, false);
        };
        let mut chunk = vec![0; n + 2];
        if n == 0 || r.read_exact(&mut chunk).is_err() {
            return (events, false);
        }
        text.push_str(&String::from_utf8_lossy(&chunk[..n]));
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            match sse_event(&block) {
                Some(Sse::Log(id, event)) => events.push((id, event)),
                Some(Sse::End(_)) => return (events, true),
                None => {}
            }
        }
    }
}

/// A bounded mixed load while three jobs train and the server is killed (SIGKILL) and started
/// again twice: every job ends succeeded, each step is logged once, no request gets a 500, and
/// a stream that reconnects with Last-Event-ID across the crashes sees each step once.
#[test]
fn soak_jobs_survive_crashes_under_load() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let d = data_root();
    let root = d.path().join("root");
    let port = free_port();
    let mut server = serve(&root, port, 1, &[], &[]);
    let tok = tokenizer(port);
    let runs: Vec<String> = (0..3)
        .map(|_| {
            post(port, "/runs/train", &train_body(&tok, 60, 10)).json()["run_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let (served, errors) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, served, errors, runs) = (stop.clone(), served.clone(), errors.clone(), runs.clone());
        std::thread::spawn(move || {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let run = &runs[i % runs.len()];
                let path = match i % 7 {
                    0 => "/healthz".to_string(),
                    1 => "/runs?limit=5".to_string(),
                    2 => format!("/runs/{run}"),
                    3 => format!("/runs/{run}/logs?tail=20"),
                    4 => "/artifacts/runs/..%2F..%2Fetc/download?path=passwd".to_string(),
                    5 => "/runs?state=bogus".to_string(),
                    _ => format!("/artifacts/runs/{run}"),
                };
                let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let _ = write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
                let mut head = [0u8; 12];
                if s.read_exact(&mut head).is_ok() {
                    served.fetch_add(1, Ordering::Relaxed);
                    if head.starts_with(b"HTTP/1.1 5") && !head.starts_with(b"HTTP/1.1 503") {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    // A client following the first run, reconnecting after each crash with its last id.
    let follower = {
        let run = runs[0].clone();
        std::thread::spawn(move || {
            let (mut all, mut last): (Vec<(String, Value)>, Option<String>) = (Vec::new(), None);
            let t0 = Instant::now();
            loop {
                let (events, ended) = follow_until_broken(port, &run, last.as_deref());
                if let Some((id, _)) = events.last() {
                    last = Some(id.clone());
                }
                all.extend(events);
                if ended || t0.elapsed() > Duration::from_secs(400) {
                    return all;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    for (crash, run) in [(1, &runs[0]), (2, &runs[1])] {
        let t0 = Instant::now();
        while logged_steps(&root, run).len() < 25 {
            assert!(
                t0.elapsed() < Duration::from_secs(240),
                "crash {crash}: {run} did not reach step 25"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server.0.kill().unwrap();
        server.0.wait().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        server = serve(&root, port, 1, &[], &[]);
    }
    for run in &runs {
        let done = wait_state(port, run, &["succeeded", "failed"], 400);
        assert_eq!(done["state"], "succeeded", "{done}");
        assert_eq!(
            logged_steps(&root, run),
            (1..=60).collect::<Vec<_>>(),
            "{run}: each step logged once"
        );
    }
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    let seen = follower.join().unwrap();
    let steps: Vec<u64> = seen
        .iter()
        .filter(|(_, e)| e["event"] == "step")
        .map(|(_, e)| e["step"].as_u64().unwrap())
        .collect();
    assert_eq!(
        steps,
        (1..=60).collect::<Vec<_>>(),
        "the reconnecting stream saw each step once"
    );
    assert!(served.load(Ordering::Relaxed) > 100, "the load ran");
    assert_eq!(errors.load(Ordering::Relaxed), 0, "no request got a 500");
    drop(server);
}
