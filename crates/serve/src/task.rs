//! One job's execution, as the worker sees it: started, asked to stop, finished with a result.
//!
//! By default a job runs in a child process (`chatforge __job`), so what ends the job (an
//! allocation the machine cannot satisfy, the kernel's out-of-memory killer, a crash in a native
//! library) ends only that process: the worker records a failed job and the API keeps serving.
//! The protocol is JSON lines: the parent writes the job, then `stop` when it should stop (or
//! closes stdin, as its death does); the child writes its progress and, last, its result.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use chatforge_train::Group;
use serde::{Deserialize, Serialize};

use crate::jobs::{Progress, Spec, execute};

/// How a worker runs its jobs.
#[derive(Debug, Clone, PartialEq)]
pub enum Isolation {
    /// In a child process: this executable with the hidden `__job` argument.
    Process(PathBuf),
    /// On a thread of the worker's process (a library user without the `chatforge` binary; a job
    /// that aborts takes the process with it).
    Thread,
}

impl Isolation {
    /// Child processes of this executable when `isolate` (and it can be found), else threads.
    pub fn new(isolate: bool) -> Isolation {
        match std::env::current_exe() {
            Ok(exe) if isolate => Isolation::Process(exe),
            _ => Isolation::Thread,
        }
    }
}

/// What the parent sends first.
#[derive(Serialize, Deserialize)]
struct Start {
    spec: Spec,
    target: String,
    root: PathBuf,
}

/// What the child reports.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Report {
    Progress(Box<Progress>),
    Done(Result<(), String>),
}

/// A running job.
pub enum Task {
    Thread {
        stop: Arc<AtomicBool>,
        handle: JoinHandle<crate::Result<()>>,
    },
    Process {
        child: Child,
        stdin: Option<ChildStdin>,
        reader: Option<JoinHandle<Option<Result<(), String>>>>,
        /// The child is the MPI launcher, with the job's processes under it.
        launcher: bool,
    },
}

impl Task {
    /// Starts `spec` writing `target` under `root`; progress lands in `progress` as it comes.
    /// A train job of several processes goes through `mpi`, the MPI launcher's command
    /// (`worker.mpi_launcher`, given `-n N`).
    pub fn start(
        how: &Isolation,
        mpi: &[String],
        spec: Spec,
        target: &str,
        root: &Path,
        progress: &Arc<Mutex<Progress>>,
    ) -> std::io::Result<Task> {
        match how {
            Isolation::Thread => {
                if spec.processes() > 1 {
                    return Err(std::io::Error::other(
                        "a job of several processes needs worker.isolate (a child process per job)",
                    ));
                }
                let stop = Arc::new(AtomicBool::new(false));
                let (s, p, target, root) = (
                    stop.clone(),
                    progress.clone(),
                    target.to_string(),
                    root.to_path_buf(),
                );
                let handle = std::thread::spawn(move || {
                    execute(&spec, &target, &root, &s, &p, &chatforge_train::Solo)
                });
                Ok(Task::Thread { stop, handle })
            }
            Isolation::Process(exe) => {
                let processes = spec.processes();
                let start = Start {
                    spec,
                    target: target.to_string(),
                    root: root.to_path_buf(),
                };
                let line = serde_json::to_string(&start).map_err(std::io::Error::other)?;
                let mut cmd = match mpi.split_first() {
                    _ if processes == 1 => Command::new(exe),
                    Some((launcher, args)) => {
                        let mut cmd = Command::new(launcher);
                        cmd.args(args).arg("-n").arg(processes.to_string()).arg(exe);
                        cmd
                    }
                    None => {
                        return Err(std::io::Error::other(format!(
                            "the job asks for {processes} processes, but this worker has no \
                             worker.mpi_launcher (docs/scaling.md)"
                        )));
                    }
                };
                cmd.arg("__job");
                if processes > 1 {
                    cmd.arg("--start").arg(&line);
                }
                cmd.env(
                    "CHATFORGE_LOG_FORMAT",
                    match crate::log::format() {
                        crate::log::LogFormat::Json => "json",
                        crate::log::LogFormat::Text => "text",
                    },
                )
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
                // Its own process group: Ctrl-C at the terminal reaches the worker, which stops
                // the job with a checkpoint, not the job directly.
                #[cfg(unix)]
                std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
                let mut child = cmd.spawn()?;
                let mut stdin = child.stdin.take();
                if let Some(w) = stdin.as_mut() {
                    writeln!(w, "{line}")?;
                    w.flush()?;
                }
                let stdout = child.stdout.take();
                let progress = progress.clone();
                let reader = std::thread::spawn(move || {
                    let mut done = None;
                    for line in BufReader::new(stdout?).lines() {
                        let Ok(line) = line else { break };
                        match serde_json::from_str::<Report>(&line) {
                            Ok(Report::Progress(p)) => {
                                if let Ok(mut slot) = progress.lock() {
                                    *slot = *p;
                                }
                            }
                            // The first error of any process is the job's.
                            Ok(Report::Done(r)) => {
                                if !matches!(done, Some(Err(_))) {
                                    done = Some(r);
                                }
                            }
                            Err(_) => eprintln!("{line}"),
                        }
                    }
                    done
                });
                Ok(Task::Process {
                    child,
                    stdin,
                    reader: Some(reader),
                    launcher: processes > 1,
                })
            }
        }
    }

    pub fn finished(&mut self) -> bool {
        match self {
            Task::Thread { handle, .. } => handle.is_finished(),
            Task::Process { child, .. } => !matches!(child.try_wait(), Ok(None)),
        }
    }

    /// Asks the job to stop at its next step (a training run saves a checkpoint first).
    pub fn stop(&mut self) {
        match self {
            Task::Thread { stop, .. } => stop.store(true, Ordering::Relaxed),
            Task::Process { stdin, .. } => {
                if let Some(w) = stdin.as_mut() {
                    let _ = writeln!(w, "stop").and_then(|()| w.flush());
                }
            }
        }
    }

    /// Ends a job that did not stop when asked (a thread cannot be ended: it is left to finish).
    pub fn kill(&mut self) {
        if let Task::Process { child, launcher, .. } = self {
            // An MPI launcher passes SIGTERM on to the processes it started (SIGKILL would leave
            // them behind); it gets a few seconds to do it.
            if *launcher
                && Command::new("kill")
                    .args(["-s", "TERM", &child.id().to_string()])
                    .status()
                    .is_ok_and(|s| s.success())
            {
                for _ in 0..100 {
                    if !matches!(child.try_wait(), Ok(None)) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            let _ = child.kill();
        }
    }

    /// Waits for the end and says how it went.
    pub fn result(self) -> Result<(), String> {
        match self {
            Task::Thread { handle, .. } => match handle.join() {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err("the job panicked".into()),
            },
            Task::Process {
                mut child,
                stdin,
                mut reader,
                ..
            } => {
                drop(stdin);
                let status = child.wait();
                let reported = reader.take().and_then(|r| r.join().ok()).flatten();
                match (reported, status) {
                    (Some(r), _) => r,
                    (None, Ok(status)) => Err(died(status)),
                    (None, Err(e)) => Err(format!("the job's process was lost: {e}")),
                }
            }
        }
    }
}

/// Why a child that reported no result ended.
fn died(status: std::process::ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        match status.signal() {
            Some(9) => {
                return "the job's process was killed (SIGKILL): most likely the machine ran out of \
                        memory (the kernel's OOM killer), or it was killed by hand"
                    .into();
            }
            Some(6) => {
                return "the job's process aborted (SIGABRT): most likely an allocation failed for \
                        lack of memory"
                    .into();
            }
            Some(n) => return format!("the job's process ended on signal {n}"),
            None => {}
        }
    }
    format!("the job's process ended with {status} before reporting a result")
}

/// The child's side (`chatforge __job`): reads the job from stdin, runs it, reports on stdout.
/// `stop` is also set by the caller's signal handler; `stop` on stdin or stdin closing (the
/// worker died) sets it too. Returns whether the job succeeded.
///
/// A train job of several processes is started through the MPI launcher with the job as the
/// argument `start` (the launcher hands stdin to process 0 only): each process runs it as one of
/// `group`; process 0 alone reports progress and success, and follows stdin for `stop` (the
/// training loop shares the flag with the others at each step). Any process reports its error.
pub fn run_child(stop: &'static AtomicBool, start: Option<&str>, group: &dyn Group) -> bool {
    crate::log::set_format(crate::log::format_from_env());
    let mut stdin = BufReader::new(std::io::stdin());
    let mut first = String::new();
    let read = match start {
        Some(line) => serde_json::from_str::<Start>(line).map_err(|e| e.to_string()),
        None => stdin
            .read_line(&mut first)
            .map_err(|e| e.to_string())
            .and_then(|_| serde_json::from_str(&first).map_err(|e| e.to_string())),
    };
    let start = match read {
        Ok(s) => s,
        Err(e) => {
            report(&Report::Done(Err(format!("the job could not be read: {e}"))));
            return false;
        }
    };
    let lead = group.rank() == 0;
    if lead {
        std::thread::spawn(move || {
            let mut line = String::new();
            loop {
                line.clear();
                match stdin.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) if line.trim() == "stop" => break,
                    Ok(_) => {}
                }
            }
            stop.store(true, Ordering::Relaxed);
        });
    }
    let progress = Arc::new(Mutex::new(Progress::default()));
    let finished = Arc::new(AtomicBool::new(false));
    let reporter = {
        let (progress, finished) = (progress.clone(), finished.clone());
        std::thread::spawn(move || {
            let mut sent = None;
            while lead && !finished.load(Ordering::Relaxed) {
                let now = progress.lock().map(|p| p.clone()).ok();
                let key = now.as_ref().and_then(|p| serde_json::to_string(p).ok());
                if key != sent
                    && let Some(p) = now
                {
                    report(&Report::Progress(Box::new(p)));
                    sent = key;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        execute(&start.spec, &start.target, &start.root, stop, &progress, group)
    }));
    finished.store(true, Ordering::Relaxed);
    let _ = reporter.join();
    if lead && let Ok(p) = progress.lock() {
        report(&Report::Progress(Box::new(p.clone())));
    }
    let result = match result {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("the job panicked".into()),
    };
    let ok = result.is_ok();
    if lead || !ok {
        let result = result.map_err(|e| match group.size() {
            1 => e,
            n => format!("process {} of {n}: {e}", group.rank()),
        });
        report(&Report::Done(result));
    }
    ok
}

/// The child's side, for a job it cannot run at all: the worker records `message` as its error.
pub fn report_failure(message: String) {
    report(&Report::Done(Err(message)));
}

fn report(r: &Report) {
    if let Ok(line) = serde_json::to_string(r) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}").and_then(|()| out.flush());
    }
}
