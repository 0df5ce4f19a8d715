//! The training service: tokenizer, training, evaluation and export work as durable jobs behind an
//! HTTP API (axum), kept in a [`JobStore`] (an SQLite file under the data root) and run by workers
//! that heartbeat, resume from checkpoints after a crash, and stop promptly when cancelled.

pub mod api;
pub mod config;
pub mod http;
pub mod jobs;
pub mod log;
pub mod logs;
pub mod metrics;
pub mod models;
pub mod paths;
pub mod redis_store;
pub mod store;
pub mod task;
pub mod worker;

pub use config::ServeConfig;
pub use store::{Job, JobKind, JobState, JobStore, SqliteStore};

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("job store: {0}")]
    Store(String),
    #[error("the queue is full ({0} jobs waiting): try again later")]
    QueueFull(usize),
    /// A request that fails validation (422).
    #[error("{0}")]
    Invalid(String),
    /// A path that leaves the data root, or an id that cannot name a directory (400).
    #[error("{0}")]
    BadPath(String),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("config: {0}")]
    Config(String),
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Store(e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Seconds since the Unix epoch.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A new id: the time in milliseconds and 6 random hex digits (`20261122-064512-3f9a1c`), sortable
/// by creation and safe as a directory name.
pub fn new_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let t = now();
    let secs = t as u64;
    let seed = (t.fract() * 1e9) as u64
        ^ u64::from(std::process::id()) << 32
        ^ COUNTER.fetch_add(1, Ordering::Relaxed);
    let r = chatforge_data::Rng::new(seed).next_u64() & 0xFF_FFFF;
    let (y, m, d, hh, mm, ss) = civil(secs);
    format!("{y:04}{m:02}{d:02}-{hh:02}{mm:02}{ss:02}-{r:06x}")
}

/// UTC date and time of `secs` since the epoch: (year, month, day, hour, minute, second), by Howard
/// Hinnant's civil-from-days algorithm.
pub fn civil(secs: u64) -> (i64, u32, u32, u64, u64, u64) {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

/// An HTTP date (`Sun, 22 Nov 2026 06:45:12 GMT`).
pub fn http_date(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, m, d, hh, mm, ss) = civil(secs);
    format!(
        "{}, {d:02} {} {y:04} {hh:02}:{mm:02}:{ss:02} GMT",
        DAYS[(secs / 86_400 % 7) as usize],
        MONTHS[(m - 1) as usize]
    )
}

/// Opens the job store `cfg` names.
pub fn open_store(cfg: &ServeConfig) -> Result<std::sync::Arc<dyn JobStore>> {
    std::fs::create_dir_all(&cfg.data_root).map_err(|e| Error::Io {
        path: cfg.data_root.clone(),
        source: e,
    })?;
    match cfg.queue.url.as_deref() {
        Some(u) if u.starts_with("redis://") || u.starts_with("rediss://") => {
            Ok(std::sync::Arc::new(redis_store::RedisStore::open(u)?))
        }
        _ => Ok(std::sync::Arc::new(SqliteStore::open(&cfg.queue_path()?)?)),
    }
}

fn spawn_workers(
    store: &std::sync::Arc<dyn JobStore>,
    cfg: &ServeConfig,
    shutdown: &std::sync::Arc<std::sync::atomic::AtomicBool>,
    count: usize,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..count)
        .map(|n| {
            let w = worker::Worker::new(store.clone(), cfg.clone(), shutdown.clone(), n);
            log::info("worker started", &[("worker", &w.id)]);
            std::thread::spawn(move || w.run())
        })
        .collect()
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Config(format!("cannot start the async runtime: {e}")))
}

/// Resolves when the process gets Ctrl-C or SIGTERM.
async fn termination() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// `chatforge serve`: the API on `cfg.api.bind` and `cfg.worker.count` workers, until Ctrl-C or
/// SIGTERM; running jobs then stop with a checkpoint and go back to the queue.
pub fn serve(cfg: ServeConfig) -> Result<()> {
    let store = open_store(&cfg)?;
    let shutdown = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers = spawn_workers(&store, &cfg, &shutdown, cfg.worker.count);
    let token = tokio_util::sync::CancellationToken::new();
    let state = api::AppState::new(store, cfg.clone(), token.clone());
    let result = runtime()?.block_on(async {
        let listener = tokio::net::TcpListener::bind(&cfg.api.bind)
            .await
            .map_err(|e| Error::Config(format!("cannot listen on {}: {e}", cfg.api.bind)))?;
        let addr = listener.local_addr().map_err(|e| Error::Config(e.to_string()))?;
        log::info(
            &format!("chatforge serve: listening on http://{addr}"),
            &[
                ("data_root", &cfg.data_root.display()),
                ("max_connections", &http::connection_cap(&cfg.api)),
            ],
        );
        let stop = token.clone();
        tokio::spawn(async move {
            termination().await;
            log::info("shutting down: stopping workers and open log streams", &[]);
            stop.cancel();
        });
        http::serve(
            listener,
            api::app(state),
            &cfg.api,
            token,
            std::time::Duration::from_secs(10),
        )
        .await;
        Ok(())
    });
    shutdown.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    result
}

/// `chatforge worker`: `cfg.worker.count` workers (at least one) on the shared store, until Ctrl-C or SIGTERM.
pub fn work(cfg: ServeConfig) -> Result<()> {
    let store = open_store(&cfg)?;
    let shutdown = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers = spawn_workers(&store, &cfg, &shutdown, cfg.worker.count.max(1));
    runtime()?.block_on(termination());
    log::info(
        "shutting down: running jobs stop at their next step and go back to the queue",
        &[],
    );
    shutdown.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    Ok(())
}
