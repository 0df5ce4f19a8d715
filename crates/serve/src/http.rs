//! The HTTP server loop: axum's router on hyper's HTTP/1 connections, with the limits a service
//! facing careless or hostile clients needs. A connection must send a whole request head within
//! `api.header_timeout_s` (new or kept alive), connections are capped below the process's
//! open-file limit (over the cap a client gets 503 at once, and the descriptors left serve jobs,
//! the store and logs), and shutdown lets open requests finish.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::ApiConfig;

/// Descriptors kept for everything but connections: the store, logs, artifacts, the listener.
const RESERVED_FDS: usize = 128;

/// How many connections may be open: the configured cap, kept under the open-file limit.
pub fn connection_cap(cfg: &ApiConfig) -> usize {
    let limit = open_file_limit().unwrap_or(1024);
    cfg.max_connections.min(limit.saturating_sub(RESERVED_FDS)).max(1)
}

/// The soft limit on open files (`/proc/self/limits`), where the system says.
fn open_file_limit() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

const BUSY_BODY: &str = "{\"error\": \"too many open connections: retry shortly\"}";

/// Answers a connection over the cap with 503 and closes it. What the client sent is read (briefly)
/// before closing, so the close is a FIN the client reads the answer before, not a reset.
async fn busy(mut tcp: tokio::net::TcpStream) {
    use tokio::io::AsyncReadExt;
    let answer = async {
        let head = format!(
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: {}\r\n\
             Connection: close\r\nContent-Length: {}\r\n\r\n",
            crate::api::RETRY_AFTER_S,
            BUSY_BODY.len()
        );
        tcp.write_all(head.as_bytes()).await?;
        tcp.write_all(BUSY_BODY.as_bytes()).await?;
        tcp.shutdown().await?;
        let mut sink = [0u8; 4096];
        while tcp.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_millis(500), answer).await;
}

/// Serves `app` on `listener` until `shutdown`, then waits (at most `drain`) for open requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    cfg: &ApiConfig,
    shutdown: CancellationToken,
    drain: Duration,
) {
    let cap = connection_cap(cfg);
    let open = Arc::new(tokio::sync::Semaphore::new(cap));
    let header_timeout = Duration::from_secs_f64(cfg.header_timeout_s);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = shutdown.cancelled() => break,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of descriptors or a connection reset before accept: wait a little, go on.
                crate::log::warn("accepting a connection failed", &[("error", &e)]);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            tokio::spawn(busy(tcp));
            continue;
        };
        // No Nagle delay: a response's head and body may be separate writes, and on a kept-alive
        // connection the second would wait for the client's delayed ACK (40 ms).
        let _ = tcp.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .keep_alive(true);
            let conn = builder.serve_connection(TokioIo::new(tcp), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    let _ = tokio::time::timeout(drain, open.acquire_many(cap as u32)).await;
}
