//! Helpers for tests only: where the repository's fixtures are, and the Python reference venv
//! (transformers, tokenizers, …) that parity tests compare against.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test support: a broken checkout should fail loudly

pub mod browser;
pub mod hub;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// Zips the files of `dir` (not recursing) into `out`, each as `prefix/NAME`, deflated, in name
/// order: a chat export as it arrives from the exporting tool.
pub fn zip_dir(dir: &Path, out: &Path, prefix: &str) {
    use std::io::Write;
    let mut zip = zip::ZipWriter::new(std::fs::File::create(out).unwrap());
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    for f in files {
        zip.start_file(
            format!("{prefix}/{}", f.file_name().unwrap().to_string_lossy()),
            opts,
        )
        .unwrap();
        zip.write_all(&std::fs::read(&f).unwrap()).unwrap();
    }
    zip.finish().unwrap();
}

/// A file under `fixtures/`.
pub fn fixture(rel: &str) -> PathBuf {
    root().join("fixtures").join(rel)
}

/// The venv's python, built on first use by `scripts/reference/venv.sh`.
///
/// Returns `None` with a loud message when the venv cannot be built (no registry access), so the
/// rest of the suite still runs on such a machine; with `CHATFORGE_REQUIRE_PYTHON=1` (set by
/// `.ci/run`) that is a failure instead.
pub fn python() -> Option<PathBuf> {
    let script = root().join("scripts/reference/venv.sh");
    let out = Command::new("bash").arg(&script).output().expect("run venv.sh");
    if out.status.success() {
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        return Some(PathBuf::from(path));
    }
    let why = String::from_utf8_lossy(&out.stderr);
    if std::env::var("CHATFORGE_REQUIRE_PYTHON").is_ok_and(|v| v == "1") {
        panic!("the Python reference venv could not be built:\n{why}");
    }
    eprintln!("\n*** SKIPPED: Python parity check — the reference venv could not be built ***\n{why}");
    None
}

/// Runs a script from `scripts/reference/` with the venv's python; panics with its stderr on failure.
pub fn run_reference(python: &PathBuf, script: &str, args: &[&str]) -> String {
    let out = Command::new(python)
        .arg(root().join("scripts/reference").join(script))
        .args(args)
        .output()
        .expect("run the reference script");
    assert!(
        out.status.success(),
        "{script} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("reference output is UTF-8")
}

/// Every number in a (nested) JSON array, in order, as f32: logits and tensors a reference printed.
pub fn json_floats(v: &serde_json::Value) -> Vec<f32> {
    fn go(v: &serde_json::Value, out: &mut Vec<f32>) {
        match v {
            serde_json::Value::Array(a) => a.iter().for_each(|x| go(x, out)),
            x => out.push(x.as_f64().unwrap_or_else(|| panic!("not a number: {x}")) as f32),
        }
    }
    let mut out = Vec::new();
    go(v, &mut out);
    out
}

/// Rows of token ids a reference printed (`[[5, 17, …], …]`).
pub fn json_ids(v: &serde_json::Value) -> Vec<Vec<u32>> {
    let ids = |r: &serde_json::Value| -> Vec<u32> {
        r.as_array()
            .unwrap_or_else(|| panic!("not a row of ids: {r}"))
            .iter()
            .map(|x| x.as_u64().unwrap_or_else(|| panic!("not an id: {x}")) as u32)
            .collect()
    };
    v.as_array()
        .unwrap_or_else(|| panic!("not rows of ids: {v}"))
        .iter()
        .map(ids)
        .collect()
}

/// The largest absolute difference between two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// A `redis-server` of our own on a free loopback port, in a temporary directory, stopped on drop.
pub struct RedisServer {
    child: std::process::Child,
    pub port: u16,
    pub dir: PathBuf,
}

impl RedisServer {
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts redis-server with append-only persistence in `dir` on `port`.
    fn start(dir: PathBuf, port: u16) -> std::io::Result<RedisServer> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let t0 = std::time::Instant::now();
        let mut child = child;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if t0.elapsed() > std::time::Duration::from_secs(10) {
                return Err(std::io::Error::other("redis-server did not start"));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // The server that answered must be ours: one that could not bind the port has exited.
        std::thread::sleep(std::time::Duration::from_millis(50));
        if child.try_wait()?.is_some() {
            return Err(std::io::Error::other(format!(
                "redis-server exited: port {port} is taken by another server"
            )));
        }
        Ok(RedisServer { child, port, dir })
    }

    /// Stops this server (SIGTERM, as a service manager would) and starts a new one on the same
    /// port and directory: what persisted is what the new one has.
    pub fn restart(self) -> RedisServer {
        self.stop().start_again()
    }

    /// Stops this server (SIGTERM) and keeps what it persisted, to start it again later: a Redis
    /// outage.
    pub fn stop(mut self) -> StoppedRedis {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        let stopped = StoppedRedis {
            dir: self.dir.clone(),
            port: self.port,
        };
        std::mem::forget(self);
        stopped
    }
}

/// A Redis stopped by [`RedisServer::stop`]: its port and data directory.
pub struct StoppedRedis {
    dir: PathBuf,
    port: u16,
}

impl StoppedRedis {
    pub fn start_again(self) -> RedisServer {
        RedisServer::start(self.dir, self.port).expect("restart redis-server")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh Redis for one test, or `None` (with a loud message) when `redis-server` is not
/// installed; with `CHATFORGE_REQUIRE_REDIS=1` (as in `.ci/run`) that is a failure instead.
pub fn redis_server() -> Option<RedisServer> {
    // A port never handed out before in this process: tests start servers in parallel, and two
    // picking the same free port would share one server (and one's shutdown would cut the other).
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let port = loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) {
            given.push(port);
            break port;
        }
    };
    let dir = std::env::temp_dir().join(format!("chatforge-redis-{}-{port}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    match RedisServer::start(dir, port) {
        Ok(s) => Some(s),
        Err(e) => {
            if std::env::var("CHATFORGE_REQUIRE_REDIS").is_ok_and(|v| v == "1") {
                panic!("redis-server is required (CHATFORGE_REQUIRE_REDIS=1) but could not start: {e}");
            }
            eprintln!("\n*** SKIPPED: Redis store check — redis-server could not start: {e} ***\n");
            None
        }
    }
}
