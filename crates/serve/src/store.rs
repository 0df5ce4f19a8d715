//! Durable jobs: the states and their transitions, and the `JobStore` that keeps them. Every
//! transition is one statement (or one transaction) in the store, so two workers never hold the
//! same job and a worker whose lease was taken over cannot overwrite the new owner's result.
//!
//! ```text
//! queued ──claim──▶ running ──finish ok──▶ succeeded
//!   ▲                 │ ├────finish err──▶ failed (attempts left: queued again after a backoff)
//!   │                 │ └────cancelled───▶ cancelled
//!   └──lease expired──┘ (worker stopped heartbeating: queued again, resumes from its checkpoint)
//! ```

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        Some(match s {
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "succeeded" => JobState::Succeeded,
            "failed" => JobState::Failed,
            "cancelled" => JobState::Cancelled,
            _ => return None,
        })
    }

    pub fn is_final(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed | JobState::Cancelled)
    }
}

/// What a job does: its kind and its validated spec (JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    Tokenizer,
    Train,
    Evaluate,
    Export,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Tokenizer => "tokenizer",
            JobKind::Train => "train",
            JobKind::Evaluate => "evaluate",
            JobKind::Export => "export",
        }
    }

    pub fn parse(s: &str) -> Option<JobKind> {
        Some(match s {
            "tokenizer" => JobKind::Tokenizer,
            "train" => JobKind::Train,
            "evaluate" => JobKind::Evaluate,
            "export" => JobKind::Export,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub id: String,
    pub kind: JobKind,
    /// The artifact the job writes (run id for train/evaluate/export, tokenizer id).
    pub target: String,
    pub spec: serde_json::Value,
    pub state: JobState,
    pub attempts: u32,
    pub max_attempts: u32,
    pub worker: Option<String>,
    pub lease_until: Option<f64>,
    pub heartbeat_at: Option<f64>,
    pub not_before: f64,
    pub created_at: f64,
    pub started_at: Option<f64>,
    pub finished_at: Option<f64>,
    pub error: Option<String>,
    pub cancel_requested: bool,
    pub progress: serde_json::Value,
    pub timeout_s: Option<f64>,
    /// The named queue it waits in (workers serve the queues they are given).
    pub queue: String,
}

/// The queue jobs go to, and workers serve, unless named otherwise.
pub const DEFAULT_QUEUE: &str = "default";

/// How a worker's run of a job ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Succeeded,
    Failed(String),
    Cancelled,
    /// Not the job's doing (the worker shut down): queued again at once, the attempt not counted.
    Requeue(String),
}

/// What a heartbeat learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Beat {
    /// The worker still holds the job (false: its lease was taken over; stop at once).
    pub owned: bool,
    pub cancel_requested: bool,
}

/// The durable queue behind the API and the workers.
pub trait JobStore: Send + Sync {
    /// Adds a queued job; `Err(Error::QueueFull)` when `limit` jobs are already waiting.
    fn enqueue(&self, job: NewJob, limit: usize) -> Result<Job>;
    /// Takes the oldest runnable queued job of one of `queues` for `worker`, with a lease of
    /// `lease_s` seconds.
    fn claim_from(&self, worker: &str, queues: &[String], lease_s: f64, now: f64) -> Result<Option<Job>>;
    /// [`claim_from`](Self::claim_from) the default queue.
    fn claim(&self, worker: &str, lease_s: f64, now: f64) -> Result<Option<Job>> {
        self.claim_from(worker, &[DEFAULT_QUEUE.to_string()], lease_s, now)
    }
    /// Extends the lease and records progress, if `worker` still holds the job.
    fn heartbeat(
        &self,
        id: &str,
        worker: &str,
        lease_s: f64,
        progress: &serde_json::Value,
        now: f64,
    ) -> Result<Beat>;
    /// Ends `worker`'s hold on the job; a failure with attempts left queues it again after
    /// `backoff_s`. The worker still holds a job whose lease expired while it could not reach
    /// the store, as long as no other worker claimed it since. Returns false when the worker no
    /// longer held it (nothing changed).
    fn finish(&self, id: &str, worker: &str, outcome: &Outcome, backoff_s: f64, now: f64) -> Result<bool>;
    /// Requeues (or fails, attempts used up) running jobs whose lease expired; returns their ids.
    fn reap(&self, now: f64) -> Result<Vec<String>>;
    /// Cancels a queued job at once, or asks the worker of a running one to stop.
    fn cancel(&self, id: &str, now: f64) -> Result<Option<Job>>;
    /// Queues a failed or cancelled job again with fresh attempts (it resumes from its checkpoint);
    /// `Err(Error::QueueFull)` when `limit` jobs are already waiting.
    fn resume(&self, id: &str, now: f64, limit: usize) -> Result<Option<Job>>;
    fn get(&self, id: &str) -> Result<Option<Job>>;
    /// The newest job writing `target` (a run or tokenizer id), if any.
    fn latest_for(&self, target: &str, kind: Option<JobKind>) -> Result<Option<Job>>;
    fn list(&self, kind: Option<JobKind>, state: Option<JobState>, limit: usize) -> Result<Vec<Job>>;
    /// Deletes finished jobs that ended before `before`.
    fn purge(&self, before: f64) -> Result<usize>;
    /// Records that a worker process is alive.
    fn worker_beat(&self, worker: &str, now: f64) -> Result<()>;
    /// Workers seen since `since`.
    fn live_workers(&self, since: f64) -> Result<Vec<String>>;
    /// Whether the store answers.
    fn ping(&self) -> Result<()>;
}

#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: String,
    pub kind: JobKind,
    pub target: String,
    pub spec: serde_json::Value,
    pub max_attempts: u32,
    pub timeout_s: Option<f64>,
    pub now: f64,
    pub queue: String,
}

/// The embedded store: one SQLite file (WAL), safe across the server's threads and processes.
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

const COLUMNS: &str = "id, kind, target, spec, state, attempts, max_attempts, worker, lease_until, heartbeat_at, \
    not_before, created_at, started_at, finished_at, error, cancel_requested, progress, timeout_s, queue";

fn row_to_job(r: &rusqlite::Row<'_>) -> rusqlite::Result<Job> {
    let text = |i: usize| -> rusqlite::Result<String> { r.get(i) };
    let json = |s: String| serde_json::from_str(&s).unwrap_or(serde_json::Value::Null);
    Ok(Job {
        id: text(0)?,
        kind: JobKind::parse(&text(1)?).unwrap_or(JobKind::Train),
        target: text(2)?,
        spec: json(text(3)?),
        state: JobState::parse(&text(4)?).unwrap_or(JobState::Failed),
        attempts: r.get(5)?,
        max_attempts: r.get(6)?,
        worker: r.get(7)?,
        lease_until: r.get(8)?,
        heartbeat_at: r.get(9)?,
        not_before: r.get(10)?,
        created_at: r.get(11)?,
        started_at: r.get(12)?,
        finished_at: r.get(13)?,
        error: r.get(14)?,
        cancel_requested: r.get::<_, i64>(15)? != 0,
        progress: json(r.get::<_, Option<String>>(16)?.unwrap_or_else(|| "{}".into())),
        timeout_s: r.get(17)?,
        queue: text(18)?,
    })
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<SqliteStore> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::Io {
                path: dir.to_path_buf(),
                source: e,
            })?;
        }
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS jobs (
                 id TEXT PRIMARY KEY, kind TEXT NOT NULL, target TEXT NOT NULL, spec TEXT NOT NULL,
                 state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, max_attempts INTEGER NOT NULL,
                 worker TEXT, lease_until REAL, heartbeat_at REAL, not_before REAL NOT NULL,
                 created_at REAL NOT NULL, started_at REAL, finished_at REAL, error TEXT,
                 cancel_requested INTEGER NOT NULL DEFAULT 0, progress TEXT, timeout_s REAL,
                 queue TEXT NOT NULL DEFAULT '{DEFAULT_QUEUE}');
             CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, not_before, created_at);
             CREATE INDEX IF NOT EXISTS jobs_target ON jobs (target, created_at);
             CREATE TABLE IF NOT EXISTS workers (id TEXT PRIMARY KEY, seen_at REAL NOT NULL);"
        ))?;
        // A queue file from before named queues: its jobs are in the default queue.
        let has_queue: bool = conn
            .prepare("SELECT 1 FROM pragma_table_info('jobs') WHERE name = 'queue'")?
            .exists([])?;
        if !has_queue {
            conn.execute_batch(&format!(
                "ALTER TABLE jobs ADD COLUMN queue TEXT NOT NULL DEFAULT '{DEFAULT_QUEUE}';"
            ))?;
        }
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T> {
        let mut c = self
            .conn
            .lock()
            .map_err(|_| Error::Store("the store's lock is poisoned".into()))?;
        Ok(f(&mut c)?)
    }

    fn one(&self, sql: &str, p: impl rusqlite::Params) -> Result<Option<Job>> {
        self.with(|c| {
            c.query_row(&format!("SELECT {COLUMNS} FROM jobs {sql}"), p, row_to_job)
                .optional()
        })
    }
}

impl JobStore for SqliteStore {
    fn enqueue(&self, j: NewJob, limit: usize) -> Result<Job> {
        let inserted = self.with(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let waiting: i64 = tx.query_row("SELECT COUNT(*) FROM jobs WHERE state = 'queued'", [], |r| r.get(0))?;
            if waiting as usize >= limit {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO jobs (id, kind, target, spec, state, max_attempts, not_before, created_at, progress, timeout_s, queue)
                 VALUES (?1, ?2, ?3, ?4, 'queued', ?5, ?6, ?6, '{}', ?7, ?8)",
                params![j.id, j.kind.as_str(), j.target, j.spec.to_string(), j.max_attempts, j.now, j.timeout_s, j.queue],
            )?;
            tx.commit()?;
            Ok(true)
        })?;
        if !inserted {
            return Err(Error::QueueFull(limit));
        }
        self.get(&j.id)?
            .ok_or_else(|| Error::Store("a job vanished after insertion".into()))
    }

    fn claim_from(&self, worker: &str, queues: &[String], lease_s: f64, now: f64) -> Result<Option<Job>> {
        let queues = serde_json::Value::from(queues.to_vec()).to_string();
        self.with(|c| {
            c.query_row(
                &format!(
                    "UPDATE jobs SET state = 'running', worker = ?1, lease_until = ?2 + ?3, heartbeat_at = ?2,
                         attempts = attempts + 1, started_at = COALESCE(started_at, ?2), error = NULL
                     WHERE id = (SELECT id FROM jobs WHERE state = 'queued' AND not_before <= ?2
                                 AND queue IN (SELECT value FROM json_each(?4))
                                 ORDER BY created_at, id LIMIT 1)
                     RETURNING {COLUMNS}"
                ),
                params![worker, now, lease_s, queues],
                row_to_job,
            )
            .optional()
        })
    }

    fn heartbeat(
        &self,
        id: &str,
        worker: &str,
        lease_s: f64,
        progress: &serde_json::Value,
        now: f64,
    ) -> Result<Beat> {
        self.with(|c| {
            let r: Option<i64> = c
                .query_row(
                    "UPDATE jobs SET lease_until = ?3 + ?4, heartbeat_at = ?3, progress = ?5
                     WHERE id = ?1 AND worker = ?2 AND state = 'running' RETURNING cancel_requested",
                    params![id, worker, now, lease_s, progress.to_string()],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(Beat {
                owned: r.is_some(),
                cancel_requested: r.is_some_and(|x| x != 0),
            })
        })
    }

    fn finish(&self, id: &str, worker: &str, outcome: &Outcome, backoff_s: f64, now: f64) -> Result<bool> {
        // `held`: the worker's own job, running, or queued again by the reaper and not yet claimed.
        const HELD: &str = "id = ?1 AND worker = ?2 AND state IN ('running', 'queued')";
        self.with(|c| {
            let n = match outcome {
                Outcome::Succeeded => c.execute(
                    &format!(
                        "UPDATE jobs SET state = 'succeeded', finished_at = ?3, lease_until = NULL, error = NULL
                         WHERE {HELD}"
                    ),
                    params![id, worker, now],
                )?,
                Outcome::Cancelled => c.execute(
                    &format!(
                        "UPDATE jobs SET state = 'cancelled', finished_at = ?3, lease_until = NULL WHERE {HELD}"
                    ),
                    params![id, worker, now],
                )?,
                Outcome::Failed(e) => c.execute(
                    &format!(
                        "UPDATE jobs SET error = ?4, lease_until = NULL,
                             state = CASE WHEN attempts < max_attempts AND cancel_requested = 0 THEN 'queued' ELSE 'failed' END,
                             not_before = ?3 + ?5 * (1 << (attempts - 1)),
                             finished_at = CASE WHEN attempts < max_attempts AND cancel_requested = 0 THEN NULL ELSE ?3 END
                         WHERE {HELD}"
                    ),
                    params![id, worker, now, e, backoff_s],
                )?,
                Outcome::Requeue(e) => c.execute(
                    &format!(
                        "UPDATE jobs SET error = ?4, lease_until = NULL, not_before = ?3,
                             attempts = MAX(attempts - 1, 0),
                             state = CASE WHEN cancel_requested = 0 THEN 'queued' ELSE 'cancelled' END,
                             finished_at = CASE WHEN cancel_requested = 0 THEN NULL ELSE ?3 END
                         WHERE {HELD}"
                    ),
                    params![id, worker, now, e],
                )?,
            };
            Ok(n == 1)
        })
    }

    fn reap(&self, now: f64) -> Result<Vec<String>> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let ids: Vec<String> = {
                let mut st = tx.prepare("SELECT id FROM jobs WHERE state = 'running' AND lease_until < ?1")?;
                st.query_map(params![now], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?
            };
            tx.execute(
                "UPDATE jobs SET lease_until = NULL,
                     error = 'its worker stopped heartbeating (lease expired)',
                     state = CASE WHEN cancel_requested = 1 THEN 'cancelled'
                                  WHEN attempts < max_attempts THEN 'queued' ELSE 'failed' END,
                     finished_at = CASE WHEN cancel_requested = 1 OR attempts >= max_attempts THEN ?1 ELSE NULL END,
                     not_before = ?1
                 WHERE state = 'running' AND lease_until < ?1",
                params![now],
            )?;
            tx.commit()?;
            Ok(ids)
        })
    }

    fn cancel(&self, id: &str, now: f64) -> Result<Option<Job>> {
        self.with(|c| {
            c.execute(
                "UPDATE jobs SET state = CASE WHEN state = 'queued' THEN 'cancelled' ELSE state END,
                     finished_at = CASE WHEN state = 'queued' THEN ?2 ELSE finished_at END,
                     cancel_requested = CASE WHEN state IN ('queued', 'running') THEN 1 ELSE cancel_requested END
                 WHERE id = ?1",
                params![id, now],
            )
        })?;
        self.get(id)
    }

    fn resume(&self, id: &str, now: f64, limit: usize) -> Result<Option<Job>> {
        let full = self.with(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let waiting: i64 = tx.query_row("SELECT COUNT(*) FROM jobs WHERE state = 'queued'", [], |r| {
                r.get(0)
            })?;
            if waiting as usize >= limit {
                return Ok(true);
            }
            tx.execute(
                "UPDATE jobs SET state = 'queued', attempts = 0, cancel_requested = 0, error = NULL,
                     finished_at = NULL, started_at = NULL, worker = NULL, not_before = ?2
                 WHERE id = ?1 AND state IN ('failed', 'cancelled')",
                params![id, now],
            )?;
            tx.commit()?;
            Ok(false)
        })?;
        if full {
            return Err(Error::QueueFull(limit));
        }
        self.get(id)
    }

    fn get(&self, id: &str) -> Result<Option<Job>> {
        self.one("WHERE id = ?1", params![id])
    }

    fn latest_for(&self, target: &str, kind: Option<JobKind>) -> Result<Option<Job>> {
        match kind {
            Some(k) => self.one(
                "WHERE target = ?1 AND kind = ?2 ORDER BY created_at DESC LIMIT 1",
                params![target, k.as_str()],
            ),
            None => self.one(
                "WHERE target = ?1 ORDER BY created_at DESC LIMIT 1",
                params![target],
            ),
        }
    }

    fn list(&self, kind: Option<JobKind>, state: Option<JobState>, limit: usize) -> Result<Vec<Job>> {
        self.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {COLUMNS} FROM jobs WHERE (?1 IS NULL OR kind = ?1) AND (?2 IS NULL OR state = ?2)
                 ORDER BY created_at DESC LIMIT ?3"
            ))?;
            st.query_map(
                params![
                    kind.map(JobKind::as_str),
                    state.map(JobState::as_str),
                    limit as i64
                ],
                row_to_job,
            )?
            .collect()
        })
    }

    fn purge(&self, before: f64) -> Result<usize> {
        self.with(|c| {
            c.execute(
                "DELETE FROM jobs WHERE state IN ('succeeded', 'failed', 'cancelled') AND finished_at < ?1",
                params![before],
            )
        })
    }

    fn worker_beat(&self, worker: &str, now: f64) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO workers (id, seen_at) VALUES (?1, ?2) ON CONFLICT (id) DO UPDATE SET seen_at = ?2",
                params![worker, now],
            )
            .map(|_| ())
        })
    }

    fn live_workers(&self, since: f64) -> Result<Vec<String>> {
        self.with(|c| {
            let mut st = c.prepare("SELECT id FROM workers WHERE seen_at >= ?1 ORDER BY id")?;
            st.query_map(params![since], |r| r.get(0))?.collect()
        })
    }

    fn ping(&self) -> Result<()> {
        self.with(|c| c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0)).map(|_| ()))
    }
}
