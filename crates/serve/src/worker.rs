//! A worker: claims jobs from the store, runs each on its own thread, heartbeats every few seconds
//! (extending its lease, reporting progress, learning of cancellation), and records the outcome.
//! A worker that dies stops heartbeating; any worker's reaper then queues its job again, and the
//! job resumes from its last checkpoint.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::jobs::{Progress, Spec, execute};
use crate::store::{Job, JobStore, Outcome};
use crate::{ServeConfig, now};

pub struct Worker {
    pub store: Arc<dyn JobStore>,
    pub cfg: ServeConfig,
    /// Unique per process start, so a restarted worker never mistakes an old lease for its own.
    pub id: String,
    pub shutdown: Arc<AtomicBool>,
}

impl Worker {
    pub fn new(store: Arc<dyn JobStore>, cfg: ServeConfig, shutdown: Arc<AtomicBool>, n: usize) -> Worker {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
        Worker {
            store,
            cfg,
            id: format!("{host}-{}-{n}-{}", std::process::id(), crate::new_id()),
            shutdown,
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
                eprintln!("worker {}: reaping: {e}", self.id);
            }
            if t - last_purge > 60.0 {
                let _ = self.store.purge(t - self.cfg.queue.ttl_s);
                last_purge = t;
            }
            match self.store.claim(&self.id, self.cfg.worker.lease_s, t) {
                Ok(Some(job)) => self.run_job(job),
                Ok(None) => std::thread::sleep(Duration::from_secs_f64(self.cfg.worker.poll_s)),
                Err(e) => {
                    eprintln!("worker {}: claiming: {e}", self.id);
                    std::thread::sleep(Duration::from_secs_f64(self.cfg.worker.poll_s));
                }
            }
        }
    }

    fn run_job(&self, job: Job) {
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(Mutex::new(Progress::default()));
        let spec: Result<Spec, _> = serde_json::from_value(job.spec.clone());
        let Ok(spec) = spec else {
            let _ = self.store.finish(
                &job.id,
                &self.id,
                &Outcome::Failed("the job's spec is unreadable".into()),
                0.0,
                now(),
            );
            return;
        };
        let root: PathBuf = self.cfg.data_root.clone();
        let handle = {
            let (stop, progress, target) = (stop.clone(), progress.clone(), job.target.clone());
            std::thread::spawn(move || execute(&spec, &target, &root, &stop, &progress))
        };
        let started = Instant::now();
        let timeout = job.timeout_s.or(self.cfg.worker.job_timeout_s);
        let (mut cancelled, mut lost, mut timed_out) = (false, false, false);
        let beat_every = Duration::from_secs_f64(self.cfg.worker.heartbeat_s);
        let mut last_beat = Instant::now();
        while !handle.is_finished() {
            std::thread::sleep(Duration::from_millis(50));
            if last_beat.elapsed() < beat_every {
                continue;
            }
            last_beat = Instant::now();
            let p = progress.lock().map(|p| p.clone()).unwrap_or_default();
            let p = serde_json::to_value(p).unwrap_or_default();
            match self
                .store
                .heartbeat(&job.id, &self.id, self.cfg.worker.lease_s, &p, now())
            {
                Ok(b) => {
                    if !b.owned {
                        lost = true;
                        stop.store(true, Ordering::Relaxed);
                    }
                    if b.cancel_requested {
                        cancelled = true;
                        stop.store(true, Ordering::Relaxed);
                    }
                }
                Err(e) => eprintln!("worker {}: heartbeat of {}: {e}", self.id, job.id),
            }
            if timeout.is_some_and(|t| started.elapsed().as_secs_f64() > t) {
                timed_out = true;
                stop.store(true, Ordering::Relaxed);
            }
            if self.shutdown.load(Ordering::Relaxed) {
                stop.store(true, Ordering::Relaxed);
            }
        }
        let result = handle.join();
        if lost {
            return; // another worker holds the job now
        }
        // One last heartbeat records the final progress; a cancel that arrived since the last one
        // still counts.
        let p = progress.lock().map(|p| p.clone()).unwrap_or_default();
        let p = serde_json::to_value(p).unwrap_or_default();
        if let Ok(b) = self
            .store
            .heartbeat(&job.id, &self.id, self.cfg.worker.lease_s, &p, now())
        {
            cancelled |= b.cancel_requested;
        }
        let outcome = match result {
            Ok(Ok(())) if timed_out => Outcome::Failed(format!(
                "timed out after {:.0} s (the last checkpoint is kept)",
                started.elapsed().as_secs_f64()
            )),
            Ok(Ok(())) if cancelled => Outcome::Cancelled,
            Ok(Ok(())) if self.shutdown.load(Ordering::Relaxed) => {
                // Stopped by shutdown: hand the job back to the queue.
                Outcome::Failed("the worker shut down; the job resumes from its checkpoint".into())
            }
            Ok(Ok(())) => Outcome::Succeeded,
            Ok(Err(e)) => Outcome::Failed(e.to_string()),
            Err(_) => Outcome::Failed("the job panicked".into()),
        };
        if let Err(e) = self
            .store
            .finish(&job.id, &self.id, &outcome, self.cfg.queue.backoff_s, now())
        {
            eprintln!("worker {}: recording the end of {}: {e}", self.id, job.id);
        }
    }
}
