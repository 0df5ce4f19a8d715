//! `mpirun -np N chatforge train …` (or `srun`): one data-parallel run over every process of the
//! MPI job. Process 0 prepares the run directory (imports, tokenizes) and writes everything the
//! run writes; the others wait for it, then train their share of each step (docs/scaling.md).

use std::sync::atomic::AtomicBool;

use anyhow::Context;
use chatforge_mpi::World;
use chatforge_pipeline::{TrainJob, evaluate_run, prepare, prepared};
use chatforge_run::RunDir;
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
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        set_threads((cores / world.local_size()).max(1))?;
    }
    let job = TrainJob {
        config: cfg.clone(),
        tokenizer: args.tokenizer.clone(),
    };
    let dir = RunDir::new(&args.out);
    let config = if world.rank() == 0 {
        let config = prepare(&job, &dir, args.resume)?;
        world.barrier();
        config
    } else {
        world.barrier();
        prepared(&job, &dir)?
    };
    let stop = AtomicBool::new(false);
    if world.rank() != 0 {
        chatforge_train::train_in(&config, &args.out, args.resume, &mut |_| {}, &stop, world)?;
        return Ok(());
    }
    say!(
        "{} processes × {} threads train one run",
        world.size(),
        rayon::current_num_threads()
    );
    let summary = chatforge_train::train_in(&config, &args.out, args.resume, &mut reporter(), &stop, world)?;
    print_summary(&summary, &args.out);
    if !args.no_eval && config.train.val.is_some() {
        match evaluate_run(&config, &args.out) {
            Ok(m) => report_metrics(&args.out, &m),
            Err(e) => eprintln!("warning: no evaluation: {e}"),
        }
    }
    Ok(())
}
