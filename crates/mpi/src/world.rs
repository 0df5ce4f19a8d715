//! [`World`]: `MPI_COMM_WORLD` as the training loop's [`Group`].

use chatforge_train::Group;
use mpi::collective::{CommunicatorCollectives, SystemOperation};
use mpi::environment::Universe;
use mpi::topology::{Communicator, SimpleCommunicator};

/// Values per all-reduce: the gradients are summed in buckets of this many, through a scratch
/// copy of one bucket (MPI reads one buffer and writes another), so the extra memory is 16 MiB
/// whatever the model's size.
const BUCKET: usize = 1 << 22;

/// Every process of the MPI job. MPI is called from the thread that made it only (the training
/// loop's); the matrix products' threads never call it.
pub struct World {
    // Finalises MPI when dropped, after `world`.
    _universe: Universe,
    world: SimpleCommunicator,
    local: usize,
}

impl World {
    /// Initialises MPI; `None` when it was initialised already.
    pub fn init() -> Option<World> {
        let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Funneled)?;
        let world = universe.world();
        // The processes that share this machine's memory: they share its cores too.
        let local = world.split_shared(world.rank()).size().max(1) as usize;
        Some(World {
            _universe: universe,
            world,
            local,
        })
    }

    /// The processes of the job on this machine (this one included).
    pub fn local_size(&self) -> usize {
        self.local
    }

    /// Ends every process of the job with `code` (one process failed: the others would wait for
    /// it at the next all-reduce for ever).
    pub fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}

impl Group for World {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        self.world.size() as usize
    }

    fn sum_f32(&self, values: &mut [f32]) {
        let mut scratch = vec![0f32; values.len().min(BUCKET)];
        for chunk in values.chunks_mut(BUCKET) {
            let send = &mut scratch[..chunk.len()];
            send.copy_from_slice(chunk);
            self.world
                .all_reduce_into(&send[..], chunk, SystemOperation::sum());
        }
    }

    fn sum_f64(&self, values: &mut [f64]) {
        let send = values.to_vec();
        self.world
            .all_reduce_into(&send[..], values, SystemOperation::sum());
    }

    fn barrier(&self) {
        self.world.barrier();
    }
}
