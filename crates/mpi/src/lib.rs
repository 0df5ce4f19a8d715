//! One training run over many processes and machines, through MPI (Open MPI or MPICH, launched by
//! `mpirun` or Slurm's `srun`): [`World`] is the training loop's [`Group`] over `MPI_COMM_WORLD`,
//! built with the `mpi` feature. Without it, [`launched_size`] still sees an MPI launch, so the
//! CLI can refuse it instead of training the same run N times side by side.

#[cfg(feature = "mpi")]
mod world;

#[cfg(feature = "mpi")]
pub use world::World;

/// Whether this build speaks MPI.
pub const ENABLED: bool = cfg!(feature = "mpi");

/// What the launchers set in each process they start: Open MPI's `mpirun`, MPICH's Hydra (PMI),
/// and Slurm's `srun` (the tasks of this job step).
const SIZE_VARS: [&str; 3] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"];

/// The number of processes an MPI launcher started this one among, when more than one.
pub fn launched_size() -> Option<usize> {
    SIZE_VARS
        .iter()
        .filter_map(|v| std::env::var(v).ok()?.trim().parse::<usize>().ok())
        .find(|&n| n > 1)
}

/// The message for an MPI launch of a build without MPI.
pub fn refusal(size: usize) -> String {
    format!(
        "this process is one of {size} started by an MPI launcher, but this chatforge was built without MPI, \
         so each would train the whole run on its own: build with `cargo build --release --features mpi` \
         (needs Open MPI or MPICH and libclang; docs/scaling.md), or run one process"
    )
}
