//! The scale-out store: jobs in Redis, for workers on many machines sharing one data root. Each
//! transition is one Lua script, so it is atomic like the SQLite store's single statements.
//!
//! Keys (prefix `cf:`): `job:<id>` (a hash of the job's fields), `queue` (queued ids by creation
//! time), `running` (running ids by lease expiry), `jobs` (every id by creation time),
//! `target:<target>` (the ids writing an artifact), `workers` (worker ids by last heartbeat).
//! Run Redis with AOF (`appendonly yes`) so jobs survive a Redis restart.

use std::sync::Mutex;
use std::time::Duration;

use redis::{Commands, Connection, Script};

use crate::store::{Beat, Job, JobKind, JobState, JobStore, NewJob, Outcome};
use crate::{Error, Result};

pub struct RedisStore {
    client: redis::Client,
    conn: Mutex<Option<Connection>>,
}

impl From<redis::RedisError> for Error {
    fn from(e: redis::RedisError) -> Self {
        Error::Store(format!("redis: {e}"))
    }
}

const ENQUEUE: &str = r#"
-- KEYS: none; ARGV: id, kind, target, spec, max_attempts, now, timeout_s, limit, queue
if redis.call('ZCARD', 'cf:queue') >= tonumber(ARGV[8]) then return 0 end
local k = 'cf:job:' .. ARGV[1]
redis.call('HSET', k, 'id', ARGV[1], 'kind', ARGV[2], 'target', ARGV[3], 'spec', ARGV[4], 'state', 'queued',
  'attempts', 0, 'max_attempts', ARGV[5], 'not_before', ARGV[6], 'created_at', ARGV[6], 'progress', '{}',
  'cancel_requested', 0, 'queue', ARGV[9])
if ARGV[7] ~= '' then redis.call('HSET', k, 'timeout_s', ARGV[7]) end
redis.call('ZADD', 'cf:queue', ARGV[6], ARGV[1])
redis.call('ZADD', 'cf:jobs', ARGV[6], ARGV[1])
redis.call('ZADD', 'cf:target:' .. ARGV[3], ARGV[6], ARGV[1])
return 1
"#;

const CLAIM: &str = r#"
-- ARGV: worker, now, lease_s, queue names served…
local now = tonumber(ARGV[2])
local served = {}
for i = 4, #ARGV do served[ARGV[i]] = true end
for _, id in ipairs(redis.call('ZRANGE', 'cf:queue', 0, -1)) do
  local k = 'cf:job:' .. id
  local q = redis.call('HGET', k, 'queue') or 'default' -- store::DEFAULT_QUEUE
  if served[q] and tonumber(redis.call('HGET', k, 'not_before')) <= now then
    redis.call('ZREM', 'cf:queue', id)
    local lease = now + tonumber(ARGV[3])
    redis.call('HSET', k, 'state', 'running', 'worker', ARGV[1], 'lease_until', lease, 'heartbeat_at', now)
    redis.call('HDEL', k, 'error')
    redis.call('HINCRBY', k, 'attempts', 1)
    if not redis.call('HGET', k, 'started_at') then redis.call('HSET', k, 'started_at', now) end
    redis.call('ZADD', 'cf:running', lease, id)
    return id
  end
end
return false
"#;

const HEARTBEAT: &str = r#"
-- ARGV: id, worker, now, lease_s, progress
local k = 'cf:job:' .. ARGV[1]
if redis.call('HGET', k, 'state') ~= 'running' or redis.call('HGET', k, 'worker') ~= ARGV[2] then return -1 end
local lease = tonumber(ARGV[3]) + tonumber(ARGV[4])
redis.call('HSET', k, 'lease_until', lease, 'heartbeat_at', ARGV[3], 'progress', ARGV[5])
redis.call('ZADD', 'cf:running', lease, ARGV[1])
return tonumber(redis.call('HGET', k, 'cancel_requested'))
"#;

const FINISH: &str = r#"
-- ARGV: id, worker, outcome (succeeded|cancelled|failed|requeue), error, now, backoff_s
-- The worker holds its job while running, or queued again by the reaper and not yet claimed.
local k = 'cf:job:' .. ARGV[1]
local s = redis.call('HGET', k, 'state')
if (s ~= 'running' and s ~= 'queued') or redis.call('HGET', k, 'worker') ~= ARGV[2] then return 0 end
redis.call('ZREM', 'cf:running', ARGV[1])
redis.call('ZREM', 'cf:queue', ARGV[1])
redis.call('HDEL', k, 'lease_until')
local now = tonumber(ARGV[5])
if ARGV[3] == 'requeue' then
  redis.call('HSET', k, 'error', ARGV[4])
  if redis.call('HGET', k, 'cancel_requested') == '1' then
    redis.call('HSET', k, 'state', 'cancelled', 'finished_at', now)
  else
    local attempts = tonumber(redis.call('HGET', k, 'attempts'))
    if attempts > 0 then redis.call('HSET', k, 'attempts', attempts - 1) end
    redis.call('HSET', k, 'state', 'queued', 'not_before', now)
    redis.call('ZADD', 'cf:queue', redis.call('HGET', k, 'created_at'), ARGV[1])
  end
  return 1
end
if ARGV[3] == 'succeeded' then redis.call('HDEL', k, 'error') end
if ARGV[3] == 'failed' then
  redis.call('HSET', k, 'error', ARGV[4])
  local attempts = tonumber(redis.call('HGET', k, 'attempts'))
  if attempts < tonumber(redis.call('HGET', k, 'max_attempts')) and redis.call('HGET', k, 'cancel_requested') == '0' then
    local nb = now + tonumber(ARGV[6]) * 2 ^ (attempts - 1)
    redis.call('HSET', k, 'state', 'queued', 'not_before', nb)
    redis.call('ZADD', 'cf:queue', redis.call('HGET', k, 'created_at'), ARGV[1])
    return 1
  end
end
redis.call('HSET', k, 'state', ARGV[3], 'finished_at', now)
return 1
"#;

const REAP: &str = r#"
-- ARGV: now
local now = tonumber(ARGV[1])
local ids = redis.call('ZRANGEBYSCORE', 'cf:running', '-inf', '(' .. ARGV[1])
for _, id in ipairs(ids) do
  local k = 'cf:job:' .. id
  redis.call('ZREM', 'cf:running', id)
  redis.call('HDEL', k, 'lease_until')
  redis.call('HSET', k, 'error', 'its worker stopped heartbeating (lease expired)', 'not_before', now)
  if redis.call('HGET', k, 'cancel_requested') == '1' then
    redis.call('HSET', k, 'state', 'cancelled', 'finished_at', now)
  elseif tonumber(redis.call('HGET', k, 'attempts')) < tonumber(redis.call('HGET', k, 'max_attempts')) then
    redis.call('HSET', k, 'state', 'queued')
    redis.call('ZADD', 'cf:queue', redis.call('HGET', k, 'created_at'), id)
  else
    redis.call('HSET', k, 'state', 'failed', 'finished_at', now)
  end
end
return ids
"#;

const CANCEL: &str = r#"
-- ARGV: id, now
local k = 'cf:job:' .. ARGV[1]
local s = redis.call('HGET', k, 'state')
if s == 'queued' then
  redis.call('ZREM', 'cf:queue', ARGV[1])
  redis.call('HSET', k, 'state', 'cancelled', 'finished_at', ARGV[2], 'cancel_requested', 1)
elseif s == 'running' then
  redis.call('HSET', k, 'cancel_requested', 1)
end
return 1
"#;

const RESUME: &str = r#"
-- ARGV: id, now, limit
if redis.call('ZCARD', 'cf:queue') >= tonumber(ARGV[3]) then return 0 end
local k = 'cf:job:' .. ARGV[1]
local s = redis.call('HGET', k, 'state')
if s == 'failed' or s == 'cancelled' then
  redis.call('HSET', k, 'state', 'queued', 'attempts', 0, 'cancel_requested', 0, 'not_before', ARGV[2])
  redis.call('HDEL', k, 'error', 'finished_at', 'started_at', 'worker')
  redis.call('ZADD', 'cf:queue', redis.call('HGET', k, 'created_at'), ARGV[1])
end
return 1
"#;

fn parse_job(map: std::collections::HashMap<String, String>) -> Option<Job> {
    let f = |k: &str| map.get(k).and_then(|v| v.parse::<f64>().ok());
    let json = |k: &str| {
        map.get(k)
            .and_then(|v| serde_json::from_str(v).ok())
            .unwrap_or(serde_json::Value::Null)
    };
    Some(Job {
        id: map.get("id")?.clone(),
        kind: JobKind::parse(map.get("kind")?)?,
        target: map.get("target")?.clone(),
        spec: json("spec"),
        state: JobState::parse(map.get("state")?)?,
        attempts: f("attempts")? as u32,
        max_attempts: f("max_attempts")? as u32,
        worker: map.get("worker").cloned(),
        lease_until: f("lease_until"),
        heartbeat_at: f("heartbeat_at"),
        not_before: f("not_before").unwrap_or(0.0),
        created_at: f("created_at").unwrap_or(0.0),
        started_at: f("started_at"),
        finished_at: f("finished_at"),
        error: map.get("error").cloned(),
        cancel_requested: map.get("cancel_requested").is_some_and(|v| v == "1"),
        progress: json("progress"),
        timeout_s: f("timeout_s"),
        queue: map
            .get("queue")
            .cloned()
            .unwrap_or_else(|| crate::store::DEFAULT_QUEUE.into()),
    })
}

impl RedisStore {
    /// Connects to `url` (`redis://HOST:PORT/DB`); fails at once when Redis does not answer.
    pub fn open(url: &str) -> Result<RedisStore> {
        let client = redis::Client::open(url)?;
        let s = RedisStore {
            client,
            conn: Mutex::new(None),
        };
        s.ping()?;
        Ok(s)
    }

    /// Runs `f` on the connection, connecting (again) when there is none or the last one broke.
    fn with<T>(&self, f: impl Fn(&mut Connection) -> redis::RedisResult<T>) -> Result<T> {
        let mut guard = self
            .conn
            .lock()
            .map_err(|_| Error::Store("the store's lock is poisoned".into()))?;
        for attempt in 0..2 {
            if guard.is_none() {
                let c = self.client.get_connection_with_timeout(Duration::from_secs(5))?;
                c.set_read_timeout(Some(Duration::from_secs(10)))?;
                c.set_write_timeout(Some(Duration::from_secs(10)))?;
                *guard = Some(c);
            }
            let Some(c) = guard.as_mut() else { continue };
            match f(c) {
                Ok(v) => return Ok(v),
                Err(e) if attempt == 0 && (e.is_io_error() || e.is_connection_dropped()) => *guard = None,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Store("redis: cannot reconnect".into()))
    }

    fn script(&self, src: &str, args: &[String]) -> Result<redis::Value> {
        let script = Script::new(src);
        self.with(|c| {
            let mut inv = script.prepare_invoke();
            for a in args {
                inv.arg(a);
            }
            inv.invoke(c)
        })
    }
}

fn int(v: &redis::Value) -> i64 {
    match v {
        redis::Value::Int(i) => *i,
        _ => 0,
    }
}

impl JobStore for RedisStore {
    fn enqueue(&self, j: NewJob, limit: usize) -> Result<Job> {
        let r = self.script(
            ENQUEUE,
            &[
                j.id.clone(),
                j.kind.as_str().into(),
                j.target.clone(),
                j.spec.to_string(),
                j.max_attempts.to_string(),
                j.now.to_string(),
                j.timeout_s.map_or(String::new(), |t| t.to_string()),
                limit.to_string(),
                j.queue.clone(),
            ],
        )?;
        if int(&r) == 0 {
            return Err(Error::QueueFull(limit));
        }
        self.get(&j.id)?
            .ok_or_else(|| Error::Store("a job vanished after insertion".into()))
    }

    fn claim_from(&self, worker: &str, queues: &[String], lease_s: f64, now: f64) -> Result<Option<Job>> {
        let mut args = vec![worker.into(), now.to_string(), lease_s.to_string()];
        args.extend(queues.iter().cloned());
        match self.script(CLAIM, &args)? {
            redis::Value::BulkString(id) => self.get(&String::from_utf8_lossy(&id)),
            redis::Value::SimpleString(id) => self.get(&id),
            _ => Ok(None),
        }
    }

    fn heartbeat(
        &self,
        id: &str,
        worker: &str,
        lease_s: f64,
        progress: &serde_json::Value,
        now: f64,
    ) -> Result<Beat> {
        let r = int(&self.script(
            HEARTBEAT,
            &[
                id.into(),
                worker.into(),
                now.to_string(),
                lease_s.to_string(),
                progress.to_string(),
            ],
        )?);
        Ok(Beat {
            owned: r >= 0,
            cancel_requested: r == 1,
        })
    }

    fn finish(&self, id: &str, worker: &str, outcome: &Outcome, backoff_s: f64, now: f64) -> Result<bool> {
        let (name, err) = match outcome {
            Outcome::Succeeded => ("succeeded", String::new()),
            Outcome::Cancelled => ("cancelled", String::new()),
            Outcome::Failed(e) => ("failed", e.clone()),
            Outcome::Requeue(e) => ("requeue", e.clone()),
        };
        let r = self.script(
            FINISH,
            &[
                id.into(),
                worker.into(),
                name.into(),
                err,
                now.to_string(),
                backoff_s.to_string(),
            ],
        )?;
        Ok(int(&r) == 1)
    }

    fn reap(&self, now: f64) -> Result<Vec<String>> {
        match self.script(REAP, &[now.to_string()])? {
            redis::Value::Array(items) => Ok(items
                .into_iter()
                .filter_map(|v| match v {
                    redis::Value::BulkString(b) => Some(String::from_utf8_lossy(&b).to_string()),
                    _ => None,
                })
                .collect()),
            _ => Ok(Vec::new()),
        }
    }

    fn cancel(&self, id: &str, now: f64) -> Result<Option<Job>> {
        self.script(CANCEL, &[id.into(), now.to_string()])?;
        self.get(id)
    }

    fn resume(&self, id: &str, now: f64, limit: usize) -> Result<Option<Job>> {
        if int(&self.script(RESUME, &[id.into(), now.to_string(), limit.to_string()])?) == 0 {
            return Err(Error::QueueFull(limit));
        }
        self.get(id)
    }

    fn get(&self, id: &str) -> Result<Option<Job>> {
        let key = format!("cf:job:{id}");
        let map: std::collections::HashMap<String, String> = self.with(|c| c.hgetall(&key))?;
        Ok(if map.is_empty() { None } else { parse_job(map) })
    }

    fn latest_for(&self, target: &str, kind: Option<JobKind>) -> Result<Option<Job>> {
        let key = format!("cf:target:{target}");
        let ids: Vec<String> = self.with(|c| c.zrevrange(&key, 0, -1))?;
        for id in ids {
            if let Some(j) = self.get(&id)?
                && kind.is_none_or(|k| k == j.kind)
            {
                return Ok(Some(j));
            }
        }
        Ok(None)
    }

    fn list(&self, kind: Option<JobKind>, state: Option<JobState>, limit: usize) -> Result<Vec<Job>> {
        let ids: Vec<String> = self.with(|c| c.zrevrange("cf:jobs", 0, -1))?;
        let mut out = Vec::new();
        for id in ids {
            if out.len() >= limit {
                break;
            }
            if let Some(j) = self.get(&id)?
                && kind.is_none_or(|k| k == j.kind)
                && state.is_none_or(|s| s == j.state)
            {
                out.push(j);
            }
        }
        Ok(out)
    }

    fn purge(&self, before: f64) -> Result<usize> {
        let ids: Vec<String> = self.with(|c| c.zrange("cf:jobs", 0, -1))?;
        let mut n = 0;
        for id in ids {
            let Some(j) = self.get(&id)? else {
                self.with(|c| c.zrem::<_, _, ()>("cf:jobs", &id))?;
                continue;
            };
            if j.state.is_final() && j.finished_at.is_some_and(|f| f < before) {
                let (key, tkey) = (format!("cf:job:{id}"), format!("cf:target:{}", j.target));
                self.with(|c| {
                    redis::pipe()
                        .atomic()
                        .del(&key)
                        .zrem("cf:jobs", &id)
                        .zrem(&tkey, &id)
                        .query::<()>(c)
                })?;
                n += 1;
            }
        }
        Ok(n)
    }

    fn worker_beat(&self, worker: &str, now: f64) -> Result<()> {
        self.with(|c| c.zadd::<_, _, _, ()>("cf:workers", worker, now))
    }

    fn live_workers(&self, since: f64) -> Result<Vec<String>> {
        self.with(|c| c.zrangebyscore("cf:workers", since, "+inf"))
    }

    fn ping(&self) -> Result<()> {
        self.with(|c| redis::cmd("PING").query::<String>(c)).map(|_| ())
    }
}
