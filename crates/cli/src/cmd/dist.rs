//! `mpirun -np N chatforge train …` (or `srun`): one data-parallel run over every process of the
//! MPI job. Process 0 prepares the run directory (imports, tokenizes) and writes everything the
//! run writes; the others wait for it, then train their share of each step (docs/scaling.md).

use std::sync::atomic::AtomicBool;

use anyhow::Context;
use chatforge_mpi::World;
use chatforge_pipeline::{Resume, TrainJob, train_run_in};
use chatforge_train::{Group, TrainConfig};

use super::train::{TrainArgs, print_summary, report_metrics, reporter, set_threads};

pub fn run(args: &TrainArgs, cfg: &TrainConfig) -> anyhow::Result<()> {
    let world = World::init().context("MPI was initialised already")?;
    let result = train(args, cfg, &world);
    if let Err(e) = &result {
        // The others would wait for this process at the next all-reduce: end the whole job.
        eprintln!("error: process {} of {}: {e:#}", world.rank(), world.size());
        world.abort(1);
    }
    result
}

fn train(args: &TrainArgs, cfg: &TrainConfig, world: &World) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.persona_strategy.is_none(),
        "--persona-strategy trains one run per persona: run it in one process"
    );
    if args.threads.is_none() {
        default_threads(world)?;
    }
    let job = TrainJob {
        config: cfg.clone(),
        tokenizer: args.tokenizer.clone(),
    };
    let resume = if args.resume { Resume::Yes } else { Resume::No };
    let stop = AtomicBool::new(false);
    let evaluate = !args.no_eval && cfg.train.val.is_some();
    if world.rank() != 0 {
        train_run_in(&job, &args.out, resume, false, &mut |_| {}, &stop, world)?;
        return Ok(());
    }
    say!(
        "{} processes × {} threads train one run",
        world.size(),
        rayon::current_num_threads()
    );
    let outcome = train_run_in(&job, &args.out, resume, evaluate, &mut reporter(), &stop, world)?;
    print_summary(&outcome.summary, &args.out);
    if let Some(m) = &outcome.metrics {
        report_metrics(&args.out, m);
    }
    if let Some(e) = &outcome.eval_error {
        eprintln!("warning: no evaluation: {e}");
    }
    Ok(())
}

/// The machine's cores shared out among this job's processes on it.
fn default_threads(world: &World) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    set_threads((cores / world.local_size()).max(1))
}

/// `chatforge __job` started by a worker through `mpirun` for a train job that asks for several
/// processes: every process runs the job as one of the group; process 0 speaks to the worker.
pub fn job(start: Option<&str>, stop: &'static AtomicBool) -> bool {
    let world = match World::init() {
        Some(w) => w,
        None => return false,
    };
    if let Err(e) = default_threads(&world) {
        eprintln!("error: {e:#}");
    }
    let ok = chatforge_serve::task::run_child(stop, start, &world);
    if !ok && world.size() > 1 {
        // The others would wait for this process at the next all-reduce.
        world.abort(1);
    }
    ok
}
