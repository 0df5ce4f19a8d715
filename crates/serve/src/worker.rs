//! A worker: claims jobs from the store, runs each on its own thread, heartbeats every few seconds
//! (extending its lease, reporting progress, learning of cancellation), and records the outcome.
//! A worker that dies stops heartbeating; any worker's reaper then queues its job again, and the
//! job resumes from its last checkpoint.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::jobs::{Progress, Spec};
use crate::store::{Job, JobStore, Outcome};
use crate::task::{Isolation, Task};
use crate::{ServeConfig, log, now};

pub struct Worker {
    pub store: Arc<dyn JobStore>,
    pub cfg: ServeConfig,
    /// Unique per process start, so a restarted worker never mistakes an old lease for its own.
    pub id: String,
    pub shutdown: Arc<AtomicBool>,
    pub isolation: Isolation,
    /// The named queues it serves.
    pub queues: Vec<String>,
}

impl Worker {
    pub fn new(store: Arc<dyn JobStore>, cfg: ServeConfig, shutdown: Arc<AtomicBool>, n: usize) -> Worker {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
        Worker {
            queues: cfg.served_queues(),
            store,
            id: format!("{host}-{}-{n}-{}", std::process::id(), crate::new_id()),
            shutdown,
            isolation: Isolation::new(cfg.worker.isolate),
            cfg,
        }
    }

    /// Works until `shutdown` is set: a running job is stopped (with a checkpoint) and queued
    /// again for the next worker.
    pub fn run(&self) {
        let mut last_purge = 0.0;
        while !self.shutdown.load(Ordering::Relaxed) {
            let t = now();
            let _ = self.store.worker_beat(&self.id, t);
            if let Err(e) = self.store.reap(t) {
                log::warn("reaping lost jobs failed", &[("worker", &self.id), ("error", &e)]);
            }
            if t - last_purge > 60.0 {
                let _ = self.store.purge(t - self.cfg.queue.ttl_s);
                last_purge = t;
            }
            match self
                .store
                .claim_from(&self.id, &self.queues, self.cfg.worker.lease_s, t)
            {
                Ok(Some(job)) => self.run_job(job),
                Ok(None) => std::thread::sleep(Duration::from_secs_f64(self.cfg.worker.poll_s)),
                Err(e) => {
                    log::warn("claiming a job failed", &[("worker", &self.id), ("error", &e)]);
                    std::thread::sleep(Duration::from_secs_f64(self.cfg.worker.poll_s));
                }
            }
        }
    }

    fn run_job(&self, job: Job) {
        let progress = Arc::new(Mutex::new(Progress::default()));
        let spec: Result<Spec, _> = serde_json::from_value(job.spec.clone());
        let Ok(spec) = spec else {
            self.record(&job.id, &Outcome::Failed("the job's spec is unreadable".into()));
            return;
        };
        let mut task = match Task::start(
            &self.isolation,
            &self.cfg.worker.mpi_launcher(),
            spec,
            &job.target,
            &self.cfg.data_root,
            &progress,
        ) {
            Ok(t) => t,
            Err(e) => {
                log::error(
                    "starting a job failed",
                    &[("worker", &self.id), ("job", &job.id), ("error", &e)],
                );
                // Counted as an attempt: a worker that cannot start jobs must not spin on one.
                self.record(
                    &job.id,
                    &Outcome::Failed(format!("the worker could not start it: {e}")),
                );
                return;
            }
        };
        log::info(
            "job started",
            &[
                ("worker", &self.id),
                ("job", &job.id),
                ("kind", &job.kind.as_str()),
                ("target", &job.target),
                ("queue", &job.queue),
            ],
        );
        // The time limit is the job's, across attempts: from its first start.
        let timeout = job.timeout_s.or(self.cfg.worker.job_timeout_s);
        let deadline = timeout.map(|t| job.started_at.unwrap_or_else(now) + t);
        let (mut cancelled, mut lost, mut timed_out, mut shut_down) = (false, false, false, false);
        let beat_every = Duration::from_secs_f64(self.cfg.worker.heartbeat_s);
        let mut last_beat = Instant::now();
        let mut stop_sent: Option<Instant> = None;
        while !task.finished() {
            std::thread::sleep(Duration::from_millis(50));
            if last_beat.elapsed() >= beat_every {
                last_beat = Instant::now();
                match self.beat(&job.id, &progress) {
                    Ok(b) => {
                        lost |= !b.owned;
                        cancelled |= b.cancel_requested;
                    }
                    Err(e) => log::warn(
                        "heartbeat failed",
                        &[("worker", &self.id), ("job", &job.id), ("error", &e)],
                    ),
                }
            }
            timed_out |= deadline.is_some_and(|d| now() > d);
            shut_down |= self.shutdown.load(Ordering::Relaxed);
            if lost || cancelled || timed_out || shut_down {
                match stop_sent {
                    None => {
                        task.stop();
                        stop_sent = Some(Instant::now());
                    }
                    // A job that does not stop when asked is ended.
                    Some(t) if t.elapsed().as_secs_f64() > self.cfg.worker.stop_grace_s => task.kill(),
                    Some(_) => {}
                }
            }
        }
        let result = task.result();
        if lost {
            return; // another worker holds the job now
        }
        // One last heartbeat records the final progress; a cancel that arrived since the last one
        // still counts.
        if let Ok(b) = self.beat(&job.id, &progress) {
            cancelled |= b.cancel_requested;
        }
        let outcome = match result {
            Ok(()) if timed_out => Outcome::Failed(format!(
                "timed out: the job's limit is {:.0} s (the last checkpoint is kept)",
                timeout.unwrap_or_default()
            )),
            Ok(()) if cancelled => Outcome::Cancelled,
            // Stopped by shutdown: back to the queue without using an attempt.
            Ok(()) if shut_down => {
                Outcome::Requeue("the worker shut down; the job resumes from its checkpoint".into())
            }
            Ok(()) => Outcome::Succeeded,
            Err(e) => Outcome::Failed(e),
        };
        let (state, detail) = match &outcome {
            Outcome::Succeeded => ("succeeded", String::new()),
            Outcome::Cancelled => ("cancelled", String::new()),
            Outcome::Failed(e) => ("failed", e.clone()),
            Outcome::Requeue(e) => ("requeued", e.clone()),
        };
        log::info(
            "job ended",
            &[
                ("worker", &self.id),
                ("job", &job.id),
                ("target", &job.target),
                ("state", &state),
                ("detail", &detail),
            ],
        );
        self.record(&job.id, &outcome);
    }

    fn beat(&self, id: &str, progress: &Mutex<Progress>) -> crate::Result<crate::store::Beat> {
        let p = progress.lock().map(|p| p.clone()).unwrap_or_default();
        let p = serde_json::to_value(p).unwrap_or_default();
        self.store
            .heartbeat(id, &self.id, self.cfg.worker.lease_s, &p, now())
    }

    /// Records how a job ended. While the store cannot be reached (Redis restarting) it keeps
    /// trying, so a job that finished is not run again because its result was lost; it gives up
    /// at shutdown, when the lease expiring hands the job to the next worker.
    fn record(&self, id: &str, outcome: &Outcome) {
        let mut wait = self.cfg.worker.poll_s;
        loop {
            match self
                .store
                .finish(id, &self.id, outcome, self.cfg.queue.backoff_s, now())
            {
                Ok(true) => return,
                Ok(false) => {
                    log::warn(
                        "the job was taken over; its result is not recorded",
                        &[("worker", &self.id), ("job", &id)],
                    );
                    return;
                }
                Err(e) => {
                    log::warn(
                        "recording the job's end failed (retrying)",
                        &[("worker", &self.id), ("job", &id), ("error", &e)],
                    );
                    if self.shutdown.load(Ordering::Relaxed) {
                        return;
                    }
                    std::thread::sleep(Duration::from_secs_f64(wait));
                    wait = (wait * 2.0).min(5.0);
                }
            }
        }
    }
}
