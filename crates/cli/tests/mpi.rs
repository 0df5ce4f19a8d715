//! One training run over MPI processes (`mpirun -np 2 chatforge train …`), as a cluster user runs
//! it: 2 processes with micro-batch B train exactly as 1 process accumulating 2 micro-batches of B
//! (pre-training, SFT and LoRA); a run killed in one process, or as a whole, resumes from its last
//! checkpoint with any number of processes and gives the same losses. Built with `--features mpi`
//! (`.ci/run` runs it so); the default build refuses an MPI launch with a clear message.

#![allow(clippy::unwrap_used)] // tests: a failure should panic with its message

use std::process::{Command, Output};

mod common;

use common::sample_shards;

/// `what` (an `mpirun` job) succeeded: its standard output.
fn succeeded(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[cfg(not(feature = "mpi"))]
#[test]
fn a_build_without_mpi_refuses_an_mpi_launch() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    sample_shards(d, 600);
    for var in ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"] {
        let out = Command::new(env!("CARGO_BIN_EXE_chatforge"))
            .args([
                "train",
                "--data",
                "train.bin",
                "--mode",
                "pretrain",
                "--max-steps",
                "2",
                "-o",
                "run",
            ])
            .env(var, "2")
            .current_dir(d)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{var}: trained anyway");
        assert!(
            err.contains("built without MPI") && err.contains("--features mpi"),
            "{var}: {err}"
        );
        assert!(
            !d.join("run").exists(),
            "{var}: the refused run wrote its directory"
        );
    }
    // One process of a launcher (a batch script's own step) trains as usual.
    let cfg = "[model]\nvocab_size = 0\nn_ctx = 16\nn_layer = 1\nn_head = 2\nn_embd = 16\n[train]\nmax_steps = 2\nbatch_size = 2\n";
    std::fs::write(d.join("cfg.toml"), cfg).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_chatforge"))
        .args([
            "train",
            "--config",
            "cfg.toml",
            "--data",
            "train.bin",
            "--mode",
            "pretrain",
            "-o",
            "run",
        ])
        .env("SLURM_STEP_NUM_TASKS", "1")
        .current_dir(d)
        .output()
        .unwrap();
    succeeded(out, "one process under Slurm");
}

/// A service without an MPI launcher refuses a train request for several processes, with a JSON
/// error that says what to set; one process is the default.
#[test]
fn the_service_refuses_processes_it_cannot_launch() {
    use common::service::*;
    let d = data_root();
    let root = d.path().join("root");
    let port = free_port();
    let _server = serve(&root, port, 0, &[], &[]);
    let mut body = train_body("data/train.jsonl", 4, 2);
    body["processes"] = serde_json::json!(2);
    let r = post(port, "/runs/train", &body);
    assert_eq!(r.status, 422, "{}", String::from_utf8_lossy(&r.body));
    let msg = r.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(
        msg.contains("processes") && msg.contains("worker.mpi_launcher"),
        "{}",
        r.json()
    );
    body["processes"] = serde_json::json!(0);
    assert_eq!(post(port, "/runs/train", &body).status, 422);
    // A launcher without the bound's raise, or a bound without a launcher, is a configuration
    // error at start.
    let out = Command::new(env!("CARGO_BIN_EXE_chatforge"))
        .args(["serve", "--data-root"])
        .arg(&root)
        .env("CHATFORGE__WORKER__MAX_PROCESSES", "2")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("worker.mpi_launcher"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[cfg(feature = "mpi")]
mod with_mpi {
    use super::common::ok;
    use super::*;
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::process::{Child, Stdio};
    use std::time::{Duration, Instant};

    /// `mpirun -np n chatforge args…` (as root in CI, more processes than cores allowed, not
    /// pinned to one core each).
    fn mpirun(n: usize, args: &[&str], cwd: &Path) -> Command {
        let mut c = Command::new("mpirun");
        c.args([
            "--allow-run-as-root",
            "--oversubscribe",
            "--bind-to",
            "none",
            "-np",
        ])
        .arg(n.to_string())
        .arg(env!("CARGO_BIN_EXE_chatforge"))
        .args(args)
        .current_dir(cwd);
        c
    }

    /// step → loss, and step → validation loss, the last record of each.
    fn curves(run: &Path) -> (BTreeMap<u64, f64>, BTreeMap<u64, f64>) {
        let text = std::fs::read_to_string(run.join("logs.jsonl")).unwrap_or_default();
        let (mut steps, mut evals) = (BTreeMap::new(), BTreeMap::new());
        for v in text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        {
            match v["event"].as_str() {
                Some("step") => steps.insert(v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()),
                Some("eval") => evals.insert(v["step"].as_u64().unwrap(), v["val_loss"].as_f64().unwrap()),
                _ => None,
            };
        }
        (steps, evals)
    }

    fn assert_same(a: &BTreeMap<u64, f64>, b: &BTreeMap<u64, f64>, what: &str) {
        assert_eq!(
            a.keys().collect::<Vec<_>>(),
            b.keys().collect::<Vec<_>>(),
            "{what}: steps"
        );
        for (s, (x, y)) in a.keys().zip(a.values().zip(b.values())) {
            assert!(
                (x - y).abs() <= 1e-5 * x.abs().max(1e-3),
                "{what}: step {s}: {x} vs {y}"
            );
        }
    }

    const STEPS: u64 = 50;

    /// The run's settings: micro-batches of 4 × 32 tokens, 256 tokens a step (one process
    /// accumulates 2 micro-batches; each of 2 processes takes 1).
    const CONFIG: &str = r#"
[model]
vocab_size = 0
n_ctx = 32
n_layer = 2
n_head = 2
n_embd = 32

[train]
max_steps = 50
batch_size = 4
tokens_per_step = 256
lr = 3e-3
warmup_steps = 5
eval_every = 10
checkpoint_every = 10
seed = 5
"#;

    fn train_args<'a>(mode: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
        let mut a = common::TRAIN_ON_SAMPLE.to_vec();
        a.extend(["--mode", mode, "-o", out, "--no-eval"]);
        a.extend_from_slice(extra);
        a
    }

    #[test]
    fn two_processes_train_as_one_accumulating_two_micro_batches() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        sample_shards(d, 600);
        std::fs::write(d.join("cfg.toml"), CONFIG).unwrap();
        let cases: [(&str, Vec<&str>); 3] = [
            ("pretrain", vec![]),
            ("sft", vec!["--init", "pretrain-1"]),
            ("lora", vec!["--init", "pretrain-1", "--lora-rank", "4"]),
        ];
        for (mode, extra) in cases {
            let (one, two) = (format!("{mode}-1"), format!("{mode}-2"));
            ok(&train_args(mode, &one, &extra), d, None);
            let out = succeeded(
                mpirun(2, &train_args(mode, &two, &extra), d).output().unwrap(),
                &format!("{mode}, 2 processes"),
            );
            assert!(out.contains("2 processes × 1 threads"), "{out}");
            let ((s1, e1), (s2, e2)) = (curves(&d.join(&one)), curves(&d.join(&two)));
            assert_eq!(s1.len(), STEPS as usize, "{mode}");
            assert_same(&s1, &s2, &format!("{mode} training loss"));
            assert_same(&e1, &e2, &format!("{mode} validation loss"));
            let manifest: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(d.join(&two).join("manifest.json")).unwrap())
                    .unwrap();
            assert_eq!(manifest["processes"], 2, "{mode}");
            assert_eq!(manifest["status"], "done", "{mode}");
        }
        // LoRA's adapter is written once, by process 0, in PEFT's layout.
        assert!(d.join("lora-2/checkpoints").is_dir());
    }

    /// Waits until the run at `run` has logged `step`, while `child` runs.
    fn wait_for_step(child: &mut Child, run: &Path, step: u64) {
        let deadline = Instant::now() + Duration::from_secs(300);
        while curves(run).0.keys().max().copied().unwrap_or(0) < step {
            assert!(Instant::now() < deadline, "never reached step {step}");
            assert!(child.try_wait().unwrap().is_none(), "ended before step {step}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The pids of the chatforge processes working in `cwd` whose MPI rank is `rank`.
    fn rank_pids(rank: usize, cwd: &Path) -> Vec<u32> {
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(env) = std::fs::read(entry.path().join("environ")) else {
                continue;
            };
            let exe = std::fs::read_link(entry.path().join("exe")).unwrap_or_default();
            let mine = env
                .split(|&b| b == 0)
                .any(|v| v == format!("OMPI_COMM_WORLD_RANK={rank}").as_bytes());
            let here = std::fs::read_link(entry.path().join("cwd")).is_ok_and(|c| c == cwd);
            if mine && here && exe.file_name().is_some_and(|n| n == "chatforge") {
                pids.push(pid);
            }
        }
        pids
    }

    #[test]
    fn a_killed_process_ends_the_run_and_any_number_of_processes_resumes_it() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        sample_shards(d, 600);
        std::fs::write(d.join("cfg.toml"), CONFIG).unwrap();
        let args = |out: &'static str| train_args("pretrain", out, &[]);
        // The whole run in one process, as the reference.
        ok(&args("whole"), d, None);
        let (want, want_eval) = curves(&d.join("whole"));

        // 2 processes; process 1 is killed past step 15: the job ends with an error.
        let mut child = mpirun(2, &args("killed"), d)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_for_step(&mut child, &d.join("killed"), 15);
        let pids = rank_pids(1, d);
        assert_eq!(pids.len(), 1, "process 1 of the job");
        for pid in pids {
            Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()
                .unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(!out.status.success(), "the job went on without process 1");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("signal 9") || err.contains("Killed"),
            "no clear error: {err}"
        );
        let checkpoints = std::fs::read_dir(d.join("killed/checkpoints")).unwrap().count();
        assert!(checkpoints >= 1, "no checkpoint before the kill");

        // One process resumes it and finishes with the losses of the run never killed.
        let mut resume = args("killed");
        resume.push("--resume");
        ok(&resume, d, None);
        let (got, got_eval) = curves(&d.join("killed"));
        assert_same(&want, &got, "killed with 2, resumed with 1");
        assert_same(&want_eval, &got_eval, "validation, killed with 2, resumed with 1");

        // A 1-process run killed (mpirun's whole job, here the launcher itself) resumes in 2.
        let mut child = Command::new(env!("CARGO_BIN_EXE_chatforge"))
            .args(args("killed1"))
            .current_dir(d)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_step(&mut child, &d.join("killed1"), 25);
        child.kill().unwrap();
        child.wait().unwrap();
        let mut resume = args("killed1");
        resume.push("--resume");
        succeeded(mpirun(2, &resume, d).output().unwrap(), "resume in 2 processes");
        let (got, _) = curves(&d.join("killed1"));
        assert_same(&want, &got, "killed with 1, resumed with 2");
    }

    /// The chatforge job processes (`chatforge __job`, not their launcher) of the service whose
    /// data root is `root`.
    fn job_processes(root: &Path) -> Vec<u32> {
        let root = root.to_string_lossy();
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            let exe = std::fs::read_link(entry.path().join("exe")).unwrap_or_default();
            let ours = String::from_utf8_lossy(&cmdline).contains(root.as_ref());
            if ours && args.contains(&&b"__job"[..]) && exe.file_name().is_some_and(|n| n == "chatforge") {
                pids.push(pid);
            }
        }
        pids
    }

    /// A train request asking for 2 processes: the worker launches them through `mpirun`, and
    /// the run trains as one process accumulating 2 micro-batches; the run's status follows it;
    /// a cancelled job of 2 processes stops both, with a checkpoint.
    #[test]
    fn the_service_runs_a_train_job_of_two_processes() {
        use crate::common::service::*;
        let d = data_root();
        let root = d.path().join("root");
        let port = free_port();
        let launcher = "mpirun --allow-run-as-root --oversubscribe --bind-to none";
        let _server = serve(
            &root,
            port,
            1,
            &[],
            &[
                ("CHATFORGE__WORKER__MPI_LAUNCHER", launcher),
                ("CHATFORGE__WORKER__MAX_PROCESSES", "2"),
            ],
        );
        let tok = tokenizer(port);
        let body = |processes: u64, steps: u64| {
            let mut b = train_body(&tok, steps, 10);
            b["train"]["tokens_per_step"] = serde_json::json!(8 * 64 * 2);
            b["processes"] = serde_json::json!(processes);
            b
        };
        let submit = |b: &serde_json::Value| {
            let r = post(port, "/runs/train", b);
            assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
            r.json()["run_id"].as_str().unwrap().to_string()
        };
        let one = submit(&body(1, 20));
        let st = wait_state(port, &one, &["succeeded", "failed"], 300);
        assert_eq!(st["state"], "succeeded", "{st}");
        let two = submit(&body(2, 20));
        let st = wait_state(port, &two, &["succeeded", "failed"], 300);
        assert_eq!(st["state"], "succeeded", "{st}");
        assert_eq!(st["progress"]["step"], 20, "{st}");
        let (run1, run2) = (root.join("runs").join(&one), root.join("runs").join(&two));
        let ((s1, e1), (s2, e2)) = (curves(&run1), curves(&run2));
        assert_eq!(s1.len(), 20);
        assert_same(&s1, &s2, "service: training loss, 1 and 2 processes");
        assert_same(&e1, &e2, "service: validation loss, 1 and 2 processes");
        let manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run2.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(manifest["processes"], 2);
        // Process 1 killed mid-run: the attempt fails, and the next resumes from the last
        // checkpoint with 2 processes again, to the losses of the run never killed.
        let killed = submit(&body(2, 60));
        let run = root.join("runs").join(&killed);
        let deadline = Instant::now() + Duration::from_secs(300);
        while curves(&run).0.keys().max().copied().unwrap_or(0) < 12 {
            assert!(Instant::now() < deadline, "the 2-process job never trained");
            std::thread::sleep(Duration::from_millis(10));
        }
        let rank1: Vec<u32> = job_processes(&root)
            .into_iter()
            .filter(|pid| {
                let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
                env.split(|&b| b == 0).any(|v| v == b"OMPI_COMM_WORLD_RANK=1")
            })
            .collect();
        assert_eq!(rank1.len(), 1, "process 1 of the job");
        Command::new("kill")
            .args(["-KILL", &rank1[0].to_string()])
            .status()
            .unwrap();
        let st = wait_state(port, &killed, &["succeeded", "failed"], 300);
        assert_eq!(st["state"], "succeeded", "{st}");
        assert_eq!(st["attempts"], 2, "{st}");
        let reference = submit(&body(1, 60));
        let st = wait_state(port, &reference, &["succeeded", "failed"], 300);
        assert_eq!(st["state"], "succeeded", "{st}");
        let (want, got) = (curves(&root.join("runs").join(&reference)), curves(&run));
        assert_same(&want.0, &got.0, "service: killed in 2 processes, resumed in 2");
        assert_same(&want.1, &got.1, "service: validation, killed and resumed");

        // More than the bound is refused.
        let r = post(port, "/runs/train", &body(3, 20));
        assert_eq!(r.status, 422, "{}", String::from_utf8_lossy(&r.body));

        // Cancelled mid-run: both processes stop, the run keeps a checkpoint, resume finishes it.
        let long = submit(&body(2, 2000));
        let deadline = Instant::now() + Duration::from_secs(300);
        while curves(&root.join("runs").join(&long)).0.len() < 3 {
            assert!(Instant::now() < deadline, "the 2-process job never trained");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(job_processes(&root).len(), 2, "two job processes");
        let r = post(port, &format!("/runs/{long}/cancel"), &serde_json::json!({}));
        assert!(r.status < 300, "{}", String::from_utf8_lossy(&r.body));
        let st = wait_state(port, &long, &["cancelled", "failed"], 120);
        assert_eq!(st["state"], "cancelled", "{st}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !job_processes(&root).is_empty() {
            assert!(Instant::now() < deadline, "job processes left behind");
            std::thread::sleep(Duration::from_millis(50));
        }
        let checkpoints = root.join("runs").join(&long).join("checkpoints");
        assert!(
            std::fs::read_dir(&checkpoints).unwrap().count() >= 1,
            "no checkpoint"
        );
    }
}
