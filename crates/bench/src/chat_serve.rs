//! `bench serve`: chat serving under concurrent streaming clients, chatforge's server beside
//! llama.cpp's own `llama-server` (continuous batching, `--parallel N`) on the same GGUF file.
//! Each level starts N clients at once, each streaming one reply of a fixed length; it reports
//! the aggregate tokens/s and the p50/p99 time to first token of each server.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chatforge_export::GgufQuant;
use chatforge_model::GptConfig;
use clap::Args;
use serde_json::{Value, json};

use crate::rayon_threads;

#[derive(Args)]
pub struct ChatServeBench {
    /// Concurrent streaming clients, one level each
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub clients: Vec<usize>,
    /// Tokens each reply streams
    #[arg(long, default_value_t = 100)]
    pub tokens: usize,
    /// The model's shape: gpt2 (GPT-2 small, 124 M) or smollm2 (SmolLM2-135M)
    #[arg(long, default_value = "gpt2")]
    pub shape: String,
    /// `llama-server` to compare with [default: built by scripts/reference/llama_server.sh]
    #[arg(long)]
    pub llama_server: Option<std::path::PathBuf>,
    /// Skip llama-server
    #[arg(long)]
    pub no_reference: bool,
}

/// A server process, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until `path` answers 200 (a model loaded), at most five minutes.
fn wait_ready(port: u16, path: &str, body: Option<&Value>) -> anyhow::Result<()> {
    let t0 = Instant::now();
    loop {
        if let Ok(r) = stream_chat(port, path, body.unwrap_or(&json!({})))
            && r.tokens > 0
        {
            return Ok(());
        }
        if t0.elapsed() > Duration::from_secs(300) {
            bail!("the server on port {port} never answered {path}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// One streamed reply: seconds to its first text, tokens (from the usage chunk), total seconds.
struct Streamed {
    first: f64,
    tokens: usize,
}

/// POSTs a streaming chat request and reads its events as they come.
fn stream_chat(port: u16, path: &str, body: &Value) -> anyhow::Result<Streamed> {
    let t0 = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(600)))?;
    let body = body.to_string();
    s.write_all(
        format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line)?;
    if !line.contains(" 200") {
        bail!("{}", line.trim());
    }
    let (mut first, mut tokens, mut pieces) = (None, None, 0);
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            break;
        }
        let Some(data) = line.trim().strip_prefix("data: ") else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            continue;
        };
        if let Some(u) = v["usage"]["completion_tokens"].as_u64() {
            tokens = Some(u as usize);
        }
        if v["choices"][0]["delta"]["content"]
            .as_str()
            .is_some_and(|c| !c.is_empty())
        {
            pieces += 1;
            first.get_or_insert_with(|| t0.elapsed().as_secs_f64());
        }
    }
    Ok(Streamed {
        first: first.unwrap_or(f64::NAN),
        tokens: tokens.unwrap_or(pieces),
    })
}

/// `clients` streams at once: (aggregate tokens/s, p50 and p99 seconds to first token).
fn level(port: u16, body: &Value, clients: usize) -> anyhow::Result<(f64, f64, f64)> {
    let t0 = Instant::now();
    let results: Vec<anyhow::Result<Streamed>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..clients)
            .map(|i| {
                let mut b = body.clone();
                b["messages"][0]["content"] = json!(format!("Client {i} says hello and asks for a story."));
                s.spawn(move || stream_chat(port, "/v1/chat/completions", &b))
            })
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a client panicked")))
            })
            .collect()
    });
    let wall = t0.elapsed().as_secs_f64();
    let results: Vec<Streamed> = results.into_iter().collect::<anyhow::Result<_>>()?;
    let tokens: usize = results.iter().map(|r| r.tokens).sum();
    let mut firsts: Vec<f64> = results.iter().map(|r| r.first).collect();
    firsts.sort_by(f64::total_cmp);
    let pct = |p: f64| firsts[((firsts.len() - 1) as f64 * p).round() as usize];
    Ok((tokens as f64 / wall, pct(0.5), pct(0.99)))
}

pub(crate) fn run(args: &ChatServeBench) -> anyhow::Result<()> {
    let cfg = match args.shape.as_str() {
        "gpt2" => GptConfig::gpt2(),
        "smollm2" => GptConfig::smollm2_135m(),
        other => bail!("--shape {other}: gpt2 or smollm2"),
    };
    let dir = tempfile::tempdir()?;
    let folder = crate::gguf::model_folder(dir.path(), &cfg)?;
    let src = chatforge_run::ModelSource::open(&folder, &chatforge_infer::Checkpoint::Best, None, None)?;
    let export = dir.path().join("root/exports/bench");
    std::fs::create_dir_all(&export)?;
    let file = export.join("model.gguf");
    chatforge_export::write_gguf(&src, &src.merged()?, GgufQuant::F32, &file)?;
    let max = args.clients.iter().copied().max().unwrap_or(1);
    say!(
        "{} shape ({:.0} M parameters, random weights, f32 GGUF), {} streamed tokens a client, greedy, {} thread(s)",
        args.shape,
        cfg.n_params() as f64 / 1e6,
        args.tokens,
        rayon_threads()
    );
    let body = |model: &str| {
        json!({"model": model, "temperature": 0, "max_tokens": args.tokens, "ignore_eos": true,
               "stream": true, "stream_options": {"include_usage": true},
               "messages": [{"role": "user", "content": "hello"}]})
    };
    // chatforge: the GGUF file as an export of a data root.
    let port = free_port()?;
    let exe = std::env::current_exe()?;
    let _ours = Server(
        Command::new(&exe)
            .args([
                "serve",
                "--workers",
                "0",
                "--bind",
                &format!("127.0.0.1:{port}"),
                "--data-root",
            ])
            .arg(dir.path().join("root"))
            .env("CHATFORGE__API__MAX_BATCH", max.to_string())
            .env("CHATFORGE__API__MAX_QUEUE", (4 * max).to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting chatforge serve")?,
    );
    wait_ready(port, "/v1/chat/completions", Some(&body("bench")))?;
    let mut ours = Vec::new();
    for &c in &args.clients {
        ours.push(level(port, &body("bench"), c)?);
    }
    drop(_ours);
    let mut theirs = Vec::new();
    if !args.no_reference {
        let bin = match &args.llama_server {
            Some(b) => b.clone(),
            None => llama_server()?,
        };
        for &c in &args.clients {
            let port = free_port()?;
            let _s = Server(
                Command::new(&bin)
                    .arg("-m")
                    .arg(&file)
                    .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                    .args(["-t", &rayon_threads().to_string(), "--parallel", &c.to_string()])
                    .args(["-c", &(c * (args.tokens + 128)).to_string(), "--cont-batching"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("starting llama-server")?,
            );
            wait_ready(port, "/v1/chat/completions", Some(&body("bench")))?;
            theirs.push(level(port, &body("bench"), c)?);
        }
    }
    for (i, &c) in args.clients.iter().enumerate() {
        let (tps, p50, p99) = ours[i];
        let mut line = format!(
            "{c:>3} clients: chatforge {tps:>6.1} tokens/s, first token p50 {p50:.2} s p99 {p99:.2} s"
        );
        if let Some(&(t, q50, q99)) = theirs.get(i) {
            line += &format!(
                " | llama-server {t:>6.1} tokens/s, p50 {q50:.2} s p99 {q99:.2} s (chatforge {:.2}x)",
                tps / t
            );
        }
        say!("{line}");
    }
    Ok(())
}

/// llama.cpp's server, built (once, cached) by `scripts/reference/llama_server.sh`.
fn llama_server() -> anyhow::Result<std::path::PathBuf> {
    let script = Path::new("scripts/reference/llama_server.sh");
    let out = Command::new("bash")
        .arg(script)
        .stderr(Stdio::inherit())
        .output()
        .context("running scripts/reference/llama_server.sh (from the repository's root)")?;
    if !out.status.success() {
        bail!("scripts/reference/llama_server.sh failed");
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().into())
}
