//! The service's settings: defaults, then a TOML file, then environment variables with nested keys
//! (`CHATFORGE__QUEUE__URL`, `CHATFORGE__API__TOKEN`, …), then command-line flags (applied by the CLI).
//! Seed 002's variable names (`REDIS_URL`, `RQ__*`, `APP__ARTIFACTS_ROOT`) are read too, under
//! the `CHATFORGE__` ones; the CLI adds a `.env` file's lines under the real environment.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    pub api: ApiConfig,
    pub queue: QueueConfig,
    pub worker: WorkerConfig,
    /// Where runs, tokenizers, exports and the queue file live; request paths resolve inside it.
    pub data_root: PathBuf,
    /// Also append the service's log lines to `chatforge.log` here (seed 002's `APP__LOGS_ROOT`).
    pub log_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    pub bind: String,
    /// Bearer token every route but /healthz and /readyz requires, when set.
    pub token: Option<String>,
    /// Largest request body, bytes.
    pub max_body: usize,
    /// Largest data file uploaded with `PUT /data/{name}`, bytes.
    pub max_upload: u64,
    /// Open connections at most; further ones get 503 and are closed. Also kept below the
    /// process's open-file limit, so jobs and the store always have descriptors.
    pub max_connections: usize,
    /// A connection that has not sent a whole request head within this long (a new one, or an
    /// idle kept-alive one) is closed.
    pub header_timeout_s: f64,
    /// `/v1/completions` requests scored or generated at once (each on a thread of its own);
    /// more get 429 with Retry-After.
    pub max_generations: usize,
    /// Replies one model decodes together (continuous batching); later requests queue.
    pub max_batch: usize,
    /// Chat requests a model queues beyond its batch; more get 429 with Retry-After.
    pub max_queue: usize,
    /// Models kept loaded for generation; the least recently used leaves first.
    pub max_models: usize,
    /// How long a request waits for its model to load before it gets 503 with Retry-After.
    pub load_wait_s: f64,
    /// A generation request's time limit, queueing included; then it ends with 504 (or an error
    /// event in a stream).
    pub request_timeout_s: f64,
    /// Prompt tokens a decode step feeds at most, so a long prompt does not stall the others.
    pub prefill_tokens: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// `sqlite://PATH` [default: `sqlite://<data_root>/queue.sqlite`] or `redis://HOST:PORT/DB`.
    pub url: Option<String>,
    /// The named queue the API submits jobs to (seed 002's `RQ__QUEUE_NAME`).
    pub name: String,
    /// Queued jobs allowed before submissions get 429.
    pub max_queued: usize,
    /// Attempts per job (a failure or a lost worker uses one).
    pub max_attempts: u32,
    /// First retry delay, doubled each attempt.
    pub backoff_s: f64,
    /// Finished jobs are forgotten after this long.
    pub ttl_s: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// In-process workers of `chatforge serve` (0: API only).
    pub count: usize,
    /// The named queues this process's workers serve, oldest job first across them
    /// [default: `queue.name`].
    pub queues: Option<Vec<String>>,
    pub heartbeat_s: f64,
    /// A running job whose worker has not heartbeated for this long is queued again.
    pub lease_s: f64,
    /// How often an idle worker looks for work.
    pub poll_s: f64,
    /// Per-job time limit, counted from the job's first start [default: none].
    pub job_timeout_s: Option<f64>,
    /// Run each job in a child process, so a job that runs out of memory or crashes fails alone.
    pub isolate: bool,
    /// A job asked to stop (cancel, timeout, shutdown) that is still running after this long is
    /// killed; it resumes from its last checkpoint.
    pub stop_grace_s: f64,
    /// The MPI launcher a train job of several processes is started with, before `-n N
    /// chatforge __job` (e.g. `mpirun --bind-to none`, or `srun --mpi=pmix` inside an
    /// allocation); needs a chatforge built with `--features mpi` (docs/scaling.md).
    pub mpi_launcher: Option<String>,
    /// The most processes a train request may ask for (`processes`); more than 1 needs
    /// `mpi_launcher`.
    pub max_processes: usize,
}

impl WorkerConfig {
    /// `mpi_launcher` as a program and its arguments (empty when unset).
    pub fn mpi_launcher(&self) -> Vec<String> {
        self.mpi_launcher
            .as_deref()
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            api: ApiConfig::default(),
            queue: QueueConfig::default(),
            worker: WorkerConfig::default(),
            data_root: PathBuf::from("chatforge-data"),
            log_dir: None,
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            bind: "127.0.0.1:8000".into(),
            token: None,
            max_body: 1 << 20,
            max_upload: 1 << 30,
            max_connections: 512,
            header_timeout_s: 10.0,
            max_generations: 4,
            max_batch: 32,
            max_queue: 128,
            max_models: 2,
            load_wait_s: 60.0,
            request_timeout_s: 600.0,
            prefill_tokens: 512,
        }
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            url: None,
            name: crate::store::DEFAULT_QUEUE.into(),
            max_queued: 100,
            max_attempts: 3,
            backoff_s: 5.0,
            ttl_s: 7.0 * 86_400.0,
        }
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            count: 1,
            queues: None,
            heartbeat_s: 0.5,
            lease_s: 15.0,
            poll_s: 0.5,
            job_timeout_s: None,
            isolate: true,
            stop_grace_s: 120.0,
            mpi_launcher: None,
            max_processes: 1,
        }
    }
}

/// A variable of seed 002's (Model-Trainer's) `.env`, as the `CHATFORGE__` variable it means;
/// `None` for any other variable.
fn seed_variable(k: &str, v: &str) -> Option<Result<(String, String)>> {
    let own = |key: &str, value: String| Some(Ok((format!("CHATFORGE__{key}"), value)));
    let number = |what: &str, s: &str| {
        s.trim()
            .parse::<f64>()
            .map_err(|_| Error::Config(format!("{what}={v:?}: expected a number")))
    };
    match k {
        "REDIS_URL" => own("QUEUE__URL", v.to_string()),
        "RQ__QUEUE_NAME" => own("QUEUE__NAME", format!("{v:?}")),
        "APP__ARTIFACTS_ROOT" => own("DATA_ROOT", format!("{v:?}")),
        "APP__LOGS_ROOT" => own("LOG_DIR", format!("{v:?}")),
        "RQ__JOB_TIMEOUT_SEC" => own("WORKER__JOB_TIMEOUT_S", v.to_string()),
        "RQ__RESULT_TTL_SEC" => own("QUEUE__TTL_S", v.to_string()),
        // RQ counts retries; chatforge counts attempts.
        "RQ__RETRY_MAX" => Some(number(k, v).map(|n| {
            (
                "CHATFORGE__QUEUE__MAX_ATTEMPTS".into(),
                (n as u64 + 1).to_string(),
            )
        })),
        // RQ lists each retry's delay; chatforge doubles the first.
        "RQ__RETRY_INTERVALS_SEC" => Some(
            number(k, v.split(',').next().unwrap_or_default())
                .map(|n| ("CHATFORGE__QUEUE__BACKOFF_S".into(), n.to_string())),
        ),
        _ => None,
    }
}

/// A `.env` file's variables (`KEY=VALUE` lines; `#` comments, `export ` and quotes allowed).
pub fn dotenv(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let l = l.strip_prefix("export ").unwrap_or(l);
            let (k, v) = l.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|x| x.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')))
                .unwrap_or(v);
            Some((k.trim().to_string(), v.to_string()))
        })
        .collect()
}

impl ServeConfig {
    /// Defaults, overlaid by `file` (TOML) and then by `CHATFORGE__SECTION__KEY` variables of `env`.
    pub fn load(file: Option<&Path>, env: impl Iterator<Item = (String, String)>) -> Result<ServeConfig> {
        // Seed 002's names first, so a `CHATFORGE__` variable for the same key wins.
        let (seed, own): (Vec<_>, Vec<_>) = env.partition(|(k, _)| !k.starts_with("CHATFORGE__"));
        let env = seed
            .into_iter()
            .filter_map(|(k, v)| seed_variable(&k, &v))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .chain(own);
        let mut v =
            toml::Value::try_from(ServeConfig::default()).map_err(|e| Error::Config(e.to_string()))?;
        if let Some(f) = file {
            let text = std::fs::read_to_string(f).map_err(|e| Error::Io {
                path: f.to_path_buf(),
                source: e,
            })?;
            let overlay: toml::Value =
                toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", f.display())))?;
            merge(&mut v, overlay);
        }
        for (k, val) in env {
            let Some(rest) = k.strip_prefix("CHATFORGE__") else {
                continue;
            };
            let path: Vec<String> = rest.split("__").map(str::to_lowercase).collect();
            // The value as TOML when it parses (numbers, booleans), else as a string.
            let parsed = toml::from_str::<toml::Table>(&format!("x = {val}"))
                .ok()
                .and_then(|t| t.get("x").cloned())
                .unwrap_or(toml::Value::String(val.clone()));
            let mut node = &mut v;
            for (i, key) in path.iter().enumerate() {
                let table = node
                    .as_table_mut()
                    .ok_or_else(|| Error::Config(format!("{k}: {key} is not a section")))?;
                if i + 1 == path.len() {
                    table.insert(key.clone(), parsed.clone());
                    break;
                }
                node = table
                    .entry(key.clone())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            }
        }
        let cfg: ServeConfig = v
            .try_into()
            .map_err(|e: toml::de::Error| Error::Config(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The variables of seed 002's `.env` this service reads, for `--help` and the docs.
    pub const SEED_VARIABLES: &'static str = "REDIS_URL, RQ__QUEUE_NAME, RQ__JOB_TIMEOUT_SEC, RQ__RESULT_TTL_SEC, RQ__RETRY_MAX, RQ__RETRY_INTERVALS_SEC, APP__ARTIFACTS_ROOT, APP__LOGS_ROOT";

    /// The queues workers serve: `worker.queues`, else the one the API submits to.
    pub fn served_queues(&self) -> Vec<String> {
        self.worker
            .queues
            .clone()
            .unwrap_or_else(|| vec![self.queue.name.clone()])
    }

    pub fn validate(&self) -> Result<()> {
        // An empty token would compare equal to a missing header: every request would pass.
        if self.api.token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            return Err(Error::Config(
                "api.token is empty: set a real token, or leave it unset for no authentication".into(),
            ));
        }
        let a = &self.api;
        if [
            a.max_connections,
            a.max_generations,
            a.max_batch,
            a.max_queue,
            a.max_models,
            a.prefill_tokens,
        ]
        .contains(&0)
            || !(a.header_timeout_s > 0.0 && a.header_timeout_s.is_finite())
            || !(a.request_timeout_s > 0.0 && a.request_timeout_s.is_finite())
            || !(a.load_wait_s >= 0.0 && a.load_wait_s.is_finite())
        {
            return Err(Error::Config(
                "api.max_connections, max_generations, max_batch, max_queue, max_models and prefill_tokens must be at least 1, api.header_timeout_s and request_timeout_s positive, api.load_wait_s not negative".into(),
            ));
        }
        let w = &self.worker;
        if !(w.heartbeat_s > 0.0 && w.lease_s > w.heartbeat_s && w.poll_s > 0.0 && w.stop_grace_s > 0.0) {
            return Err(Error::Config(format!(
                "worker.lease_s ({}) must exceed worker.heartbeat_s ({}) > 0, and poll_s, stop_grace_s > 0",
                w.lease_s, w.heartbeat_s
            )));
        }
        if w.max_processes == 0 || (w.max_processes > 1 && (w.mpi_launcher().is_empty() || !w.isolate)) {
            return Err(Error::Config(
                "worker.max_processes: at least 1; more than 1 needs worker.mpi_launcher and worker.isolate"
                    .into(),
            ));
        }
        let named = |q: &str| {
            !q.is_empty()
                && q.len() <= 64
                && q.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        let served = self.worker.queues.iter().flatten();
        if let Some(bad) = std::iter::once(&self.queue.name)
            .chain(served)
            .find(|q| !named(q))
        {
            return Err(Error::Config(format!(
                "queue name {bad:?}: 1 to 64 letters, digits, '-', '_' or '.'"
            )));
        }
        if self.worker.queues.as_ref().is_some_and(Vec::is_empty) {
            return Err(Error::Config("worker.queues: name at least one queue".into()));
        }
        if self.queue.max_attempts == 0 || self.queue.max_queued == 0 {
            return Err(Error::Config(
                "queue.max_attempts and queue.max_queued must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The SQLite queue file: from `queue.url` (`sqlite://PATH`), or under the data root. Checks
    /// that a URL names a known store.
    pub fn queue_path(&self) -> Result<PathBuf> {
        match self.queue.url.as_deref() {
            None => Ok(self.data_root.join("queue.sqlite")),
            Some(u) if u.starts_with("redis://") || u.starts_with("rediss://") => Ok(PathBuf::new()),
            Some(u) => match u.strip_prefix("sqlite://") {
                Some(p) => Ok(PathBuf::from(p)),
                None => Err(Error::Config(format!(
                    "queue.url {u:?}: expected sqlite://PATH or redis://HOST:PORT/DB"
                ))),
            },
        }
    }

    /// The effective settings as TOML, the token masked.
    pub fn to_masked_toml(&self) -> String {
        let mut c = self.clone();
        if c.api.token.is_some() {
            c.api.token = Some("********".into());
        }
        // A password in the queue URL (redis://:secret@host) is masked too.
        if let Some(u) = &c.queue.url
            && let Some((scheme, rest)) = u.split_once("://")
            && let Some((_, host)) = rest.rsplit_once('@')
        {
            c.queue.url = Some(format!("{scheme}://********@{host}"));
        }
        toml::to_string(&c).unwrap_or_default()
    }
}

fn merge(base: &mut toml::Value, overlay: toml::Value) {
    match (base, overlay) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}
