//! The job store's transitions: claims are exclusive, leases expire into the queue again, a
//! worker whose lease was taken cannot record an outcome, retries back off, cancel and resume.
//! Every check runs against both stores: SQLite, and Redis (a redis-server started per test).

#![allow(clippy::unwrap_used)] // tests: a failure should panic with its message

use std::sync::Arc;

use chatforge_serve::redis_store::RedisStore;
use chatforge_serve::store::{JobKind, JobState, JobStore, NewJob, Outcome, SqliteStore};
use serde_json::json;

/// Opens stores on one backend: each call is a new handle (connection) on the same data.
type Open = Box<dyn Fn() -> Box<dyn JobStore>>;

/// Runs `check` on SQLite, then on Redis.
fn both(check: fn(&Open)) {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("q.sqlite");
    check(&(Box::new(move || Box::new(SqliteStore::open(&path).unwrap()) as Box<dyn JobStore>) as Open));
    if let Some(r) = chatforge_testkit::redis_server() {
        let url = r.url();
        check(&(Box::new(move || Box::new(RedisStore::open(&url).unwrap()) as Box<dyn JobStore>) as Open));
        drop(r);
    }
}

fn job(id: &str, now: f64) -> NewJob {
    NewJob {
        id: id.into(),
        kind: JobKind::Train,
        target: id.into(),
        spec: json!({"x": 1}),
        max_attempts: 2,
        timeout_s: None,
        now,
        queue: chatforge_serve::store::DEFAULT_QUEUE.into(),
    }
}

#[test]
fn a_job_runs_once_and_its_outcome_is_recorded_by_its_owner_only() {
    both(check_a_job_runs_once_and_its_outcome_is_recorded_by_its_owner_only);
}

fn check_a_job_runs_once_and_its_outcome_is_recorded_by_its_owner_only(open: &Open) {
    let s = open();
    s.enqueue(job("a", 1.0), 10).unwrap();
    s.enqueue(job("b", 2.0), 10).unwrap();
    // Oldest first; a claimed job is not claimed again.
    let a = s.claim("w1", 10.0, 5.0).unwrap().unwrap();
    assert_eq!((a.id.as_str(), a.state, a.attempts), ("a", JobState::Running, 1));
    let b = s.claim("w2", 10.0, 5.0).unwrap().unwrap();
    assert_eq!(b.id, "b");
    assert!(s.claim("w3", 10.0, 5.0).unwrap().is_none());
    // Heartbeats extend the lease and carry progress.
    let beat = s.heartbeat("a", "w1", 10.0, &json!({"step": 3}), 6.0).unwrap();
    assert!(beat.owned && !beat.cancel_requested);
    assert_eq!(s.get("a").unwrap().unwrap().progress["step"], 3);
    assert!(
        !s.heartbeat("a", "w2", 10.0, &json!({}), 6.0).unwrap().owned,
        "not w2's job"
    );
    assert!(s.finish("a", "w1", &Outcome::Succeeded, 1.0, 7.0).unwrap());
    assert_eq!(s.get("a").unwrap().unwrap().state, JobState::Succeeded);
    // A finished job cannot be finished again.
    assert!(
        !s.finish("a", "w1", &Outcome::Failed("late".into()), 1.0, 8.0)
            .unwrap()
    );
    assert_eq!(s.get("a").unwrap().unwrap().state, JobState::Succeeded);
}

#[test]
fn an_expired_lease_requeues_and_the_old_worker_cannot_overwrite() {
    both(check_an_expired_lease_requeues_and_the_old_worker_cannot_overwrite);
}

fn check_an_expired_lease_requeues_and_the_old_worker_cannot_overwrite(open: &Open) {
    let s = open();
    s.enqueue(job("a", 1.0), 10).unwrap();
    s.claim("dead", 5.0, 10.0).unwrap().unwrap();
    assert!(s.reap(14.0).unwrap().is_empty(), "lease still valid");
    assert_eq!(s.reap(15.5).unwrap(), ["a"]);
    let j = s.get("a").unwrap().unwrap();
    assert_eq!(j.state, JobState::Queued);
    assert!(j.error.unwrap().contains("heartbeat"));
    let again = s.claim("live", 5.0, 16.0).unwrap().unwrap();
    assert_eq!(again.attempts, 2);
    // The dead worker wakes up: it holds nothing.
    assert!(!s.heartbeat("a", "dead", 5.0, &json!({}), 17.0).unwrap().owned);
    assert!(!s.finish("a", "dead", &Outcome::Succeeded, 1.0, 17.0).unwrap());
    assert!(s.finish("a", "live", &Outcome::Succeeded, 1.0, 18.0).unwrap());
    // Attempts used up: a lost lease fails the job.
    s.enqueue(job("b", 20.0), 10).unwrap();
    s.claim("x", 1.0, 20.0).unwrap();
    s.reap(22.0).unwrap();
    s.claim("y", 1.0, 22.0).unwrap();
    s.reap(24.0).unwrap();
    assert_eq!(s.get("b").unwrap().unwrap().state, JobState::Failed);
}

#[test]
fn failures_retry_with_backoff_then_fail() {
    both(check_failures_retry_with_backoff_then_fail);
}

fn check_failures_retry_with_backoff_then_fail(open: &Open) {
    let s = open();
    s.enqueue(job("a", 1.0), 10).unwrap();
    s.claim("w", 10.0, 1.0).unwrap();
    assert!(
        s.finish("a", "w", &Outcome::Failed("boom".into()), 4.0, 2.0)
            .unwrap()
    );
    let j = s.get("a").unwrap().unwrap();
    assert_eq!((j.state, j.not_before), (JobState::Queued, 6.0));
    assert!(
        s.claim("w", 10.0, 5.0).unwrap().is_none(),
        "not before its backoff"
    );
    s.claim("w", 10.0, 6.0).unwrap().unwrap();
    s.finish("a", "w", &Outcome::Failed("boom again".into()), 4.0, 7.0)
        .unwrap();
    let j = s.get("a").unwrap().unwrap();
    assert_eq!(
        (j.state, j.error.as_deref()),
        (JobState::Failed, Some("boom again"))
    );
    // Resume gives it fresh attempts.
    assert_eq!(s.resume("a", 8.0, 10).unwrap().unwrap().state, JobState::Queued);
    assert_eq!(s.claim("w", 10.0, 8.0).unwrap().unwrap().attempts, 1);
}

#[test]
fn cancel_is_immediate_when_queued_and_requested_when_running() {
    both(check_cancel_is_immediate_when_queued_and_requested_when_running);
}

fn check_cancel_is_immediate_when_queued_and_requested_when_running(open: &Open) {
    let s = open();
    s.enqueue(job("q", 1.0), 10).unwrap();
    assert_eq!(s.cancel("q", 2.0).unwrap().unwrap().state, JobState::Cancelled);
    assert!(s.claim("w", 10.0, 3.0).unwrap().is_none());
    s.enqueue(job("r", 4.0), 10).unwrap();
    s.claim("w", 10.0, 4.0).unwrap().unwrap();
    let j = s.cancel("r", 5.0).unwrap().unwrap();
    assert_eq!((j.state, j.cancel_requested), (JobState::Running, true));
    assert!(
        s.heartbeat("r", "w", 10.0, &json!({}), 6.0)
            .unwrap()
            .cancel_requested
    );
    // A failure after a cancel request does not retry.
    s.finish("r", "w", &Outcome::Failed("stopped".into()), 1.0, 7.0)
        .unwrap();
    assert_eq!(s.get("r").unwrap().unwrap().state, JobState::Failed);
    s.resume("r", 8.0, 10).unwrap();
    s.claim("w", 10.0, 8.0).unwrap().unwrap();
    assert!(s.finish("r", "w", &Outcome::Cancelled, 1.0, 9.0).unwrap());
    assert_eq!(s.get("r").unwrap().unwrap().state, JobState::Cancelled);
}

#[test]
fn the_queue_is_bounded_survives_reopening_and_forgets_old_jobs() {
    both(check_the_queue_is_bounded_survives_reopening_and_forgets_old_jobs);
}

fn check_the_queue_is_bounded_survives_reopening_and_forgets_old_jobs(open: &Open) {
    {
        let s = open();
        s.enqueue(job("a", 1.0), 2).unwrap();
        s.enqueue(job("b", 2.0), 2).unwrap();
        let e = s.enqueue(job("c", 3.0), 2).unwrap_err();
        assert!(e.to_string().contains("queue is full"), "{e}");
    }
    let s = open();
    let queued = s.list(None, Some(JobState::Queued), 10).unwrap();
    assert_eq!(queued.len(), 2, "jobs survive reopening");
    s.claim("w", 10.0, 5.0).unwrap();
    s.finish("a", "w", &Outcome::Succeeded, 1.0, 6.0).unwrap();
    assert_eq!(s.purge(5.0).unwrap(), 0);
    assert_eq!(s.purge(7.0).unwrap(), 1);
    assert!(s.get("a").unwrap().is_none());
    assert_eq!(s.latest_for("b", Some(JobKind::Train)).unwrap().unwrap().id, "b");
}

#[test]
fn concurrent_claimers_never_share_a_job() {
    both(check_concurrent_claimers_never_share_a_job);
}

fn check_concurrent_claimers_never_share_a_job(open: &Open) {
    let s = open();
    for i in 0..40 {
        s.enqueue(job(&format!("j{i:02}"), f64::from(i)), 100).unwrap();
    }
    // Two store handles (two connections, as two processes would have), four threads each.
    let stores: Vec<Arc<dyn JobStore>> = (0..2).map(|_| Arc::from(open())).collect();
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let s = stores[t % 2].clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                while let Some(j) = s.claim(&format!("w{t}"), 60.0, 100.0).unwrap() {
                    got.push(j.id);
                }
                got
            })
        })
        .collect();
    let mut all: Vec<String> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    all.sort();
    let n = all.len();
    all.dedup();
    assert_eq!((n, all.len()), (40, 40), "each job claimed exactly once");
}

/// With append-only persistence, queued and running jobs survive a restart of Redis.
#[test]
fn redis_jobs_survive_a_redis_restart() {
    let Some(r) = chatforge_testkit::redis_server() else {
        return;
    };
    let s = RedisStore::open(&r.url()).unwrap();
    s.enqueue(job("a", 1.0), 10).unwrap();
    s.enqueue(job("b", 2.0), 10).unwrap();
    s.claim("w", 30.0, 3.0).unwrap().unwrap();
    let r = r.restart();
    let s = RedisStore::open(&r.url()).unwrap();
    assert_eq!(s.get("a").unwrap().unwrap().state, JobState::Running);
    assert_eq!(s.claim("w2", 30.0, 4.0).unwrap().unwrap().id, "b");
    assert!(s.heartbeat("a", "w", 30.0, &json!({}), 5.0).unwrap().owned);
}

#[test]
fn a_requeue_costs_no_attempt_and_a_result_survives_a_lost_lease() {
    both(check_a_requeue_costs_no_attempt_and_a_result_survives_a_lost_lease);
}

fn check_a_requeue_costs_no_attempt_and_a_result_survives_a_lost_lease(open: &Open) {
    let s = open();
    s.enqueue(job("a", 1.0), 10).unwrap();
    // Three shutdowns in a row (max_attempts is 2): each hands the job back, none is counted.
    for t in [2.0, 3.0, 4.0] {
        let j = s.claim("w", 10.0, t).unwrap().unwrap();
        assert_eq!(j.attempts, 1);
        assert!(
            s.finish("a", "w", &Outcome::Requeue("shut down".into()), 5.0, t)
                .unwrap()
        );
        let j = s.get("a").unwrap().unwrap();
        assert_eq!((j.state, j.attempts, j.not_before), (JobState::Queued, 0, t));
    }
    // The store was unreachable longer than the lease: the reaper queued the job again, but
    // its worker finished it and records that once the store answers.
    s.claim("w", 10.0, 5.0).unwrap().unwrap();
    assert_eq!(s.reap(20.0).unwrap(), ["a"]);
    assert!(s.finish("a", "w", &Outcome::Succeeded, 5.0, 21.0).unwrap());
    let j = s.get("a").unwrap().unwrap();
    assert_eq!((j.state, j.attempts, j.error), (JobState::Succeeded, 1, None));
    assert!(
        s.claim("w2", 10.0, 22.0).unwrap().is_none(),
        "not queued any more"
    );
    // Once another worker has claimed it, the first cannot record a result.
    s.enqueue(job("b", 30.0), 10).unwrap();
    s.claim("w", 10.0, 30.0).unwrap().unwrap();
    s.reap(50.0).unwrap();
    s.claim("w2", 10.0, 51.0).unwrap().unwrap();
    assert!(!s.finish("b", "w", &Outcome::Succeeded, 5.0, 52.0).unwrap());
    assert_eq!(s.get("b").unwrap().unwrap().worker.as_deref(), Some("w2"));
    // A cancel requested before the requeue ends the job instead.
    s.cancel("b", 53.0).unwrap();
    assert!(
        s.finish("b", "w2", &Outcome::Requeue("shut down".into()), 5.0, 54.0)
            .unwrap()
    );
    assert_eq!(s.get("b").unwrap().unwrap().state, JobState::Cancelled);
}

#[test]
fn resume_respects_the_queue_bound() {
    both(check_resume_respects_the_queue_bound);
}

fn check_resume_respects_the_queue_bound(open: &Open) {
    let s = open();
    s.enqueue(job("a", 1.0), 10).unwrap();
    s.cancel("a", 2.0).unwrap();
    s.enqueue(job("b", 3.0), 10).unwrap();
    let e = s.resume("a", 4.0, 1).unwrap_err();
    assert!(e.to_string().contains("queue is full"), "{e}");
    assert_eq!(s.get("a").unwrap().unwrap().state, JobState::Cancelled);
    let j = s.resume("a", 4.0, 2).unwrap().unwrap();
    assert_eq!(j.state, JobState::Queued);
    // A resumed job's time limit starts again with its next start.
    s.claim("w", 10.0, 5.0).unwrap().unwrap();
    s.cancel("a", 6.0).unwrap();
    s.finish("a", "w", &Outcome::Cancelled, 1.0, 6.0).unwrap();
    assert_eq!(s.get("a").unwrap().unwrap().started_at, Some(5.0));
    s.cancel("b", 6.5).unwrap();
    s.resume("a", 7.0, 2).unwrap();
    assert_eq!(s.get("a").unwrap().unwrap().started_at, None);
    assert_eq!(s.claim("w", 10.0, 8.0).unwrap().unwrap().started_at, Some(8.0));
}

#[test]
fn workers_take_only_the_named_queues_they_serve() {
    both(check_workers_take_only_the_named_queues_they_serve);
}

fn check_workers_take_only_the_named_queues_they_serve(open: &Open) {
    let s = open();
    let named = |id: &str, t: f64, q: &str| NewJob {
        queue: q.into(),
        ..job(id, t)
    };
    s.enqueue(named("t1", 1.0, "training"), 10).unwrap();
    s.enqueue(named("e1", 2.0, "eval"), 10).unwrap();
    s.enqueue(named("t2", 3.0, "training"), 10).unwrap();
    let q = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    assert!(
        s.claim("w0", 10.0, 5.0).unwrap().is_none(),
        "the default queue is empty"
    );
    let e = s.claim_from("we", &q(&["eval"]), 10.0, 5.0).unwrap().unwrap();
    assert_eq!((e.id.as_str(), e.queue.as_str()), ("e1", "eval"));
    assert!(s.claim_from("we", &q(&["eval"]), 10.0, 5.0).unwrap().is_none());
    // A worker serving both takes the oldest across them.
    let t = s
        .claim_from("wb", &q(&["eval", "training"]), 10.0, 5.0)
        .unwrap()
        .unwrap();
    assert_eq!(t.id, "t1");
    // A job queued again after a failure stays in its queue.
    assert!(
        s.finish("t1", "wb", &Outcome::Failed("x".into()), 0.0, 6.0)
            .unwrap()
    );
    assert!(s.claim_from("we", &q(&["eval"]), 10.0, 7.0).unwrap().is_none());
    let again = s.claim_from("wt", &q(&["training"]), 10.0, 7.0).unwrap().unwrap();
    assert_eq!((again.id.as_str(), again.queue.as_str()), ("t1", "training"));
}

/// A queue file written before named queues opens, its jobs in the default queue.
#[test]
fn an_old_queue_file_gains_the_queue_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.sqlite");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE jobs (
                 id TEXT PRIMARY KEY, kind TEXT NOT NULL, target TEXT NOT NULL, spec TEXT NOT NULL,
                 state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, max_attempts INTEGER NOT NULL,
                 worker TEXT, lease_until REAL, heartbeat_at REAL, not_before REAL NOT NULL,
                 created_at REAL NOT NULL, started_at REAL, finished_at REAL, error TEXT,
                 cancel_requested INTEGER NOT NULL DEFAULT 0, progress TEXT, timeout_s REAL);
             INSERT INTO jobs (id, kind, target, spec, state, max_attempts, not_before, created_at, progress)
                 VALUES ('old', 'train', 'old', '{}', 'queued', 2, 0, 0, '{}');",
        )
        .unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    let j = s.claim("w", 10.0, 1.0).unwrap().unwrap();
    assert_eq!(
        (j.id.as_str(), j.queue.as_str()),
        ("old", chatforge_serve::store::DEFAULT_QUEUE)
    );
}
