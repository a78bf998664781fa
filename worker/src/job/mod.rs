//! The seam between a job kind and whoever runs it (the local CLI or a coordinator session):
//! a job reports through a [`Reporter`], stops on a [`CancelToken`] and ends with an
//! [`Outcome`]; training jobs run their steps in the one [`step_loop`]. Nothing here imports a
//! job kind ([`crate::runner`] dispatches to them).

pub mod reporter;
mod step_loop;

pub use reporter::{LocalDirReporter, Reporter};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
pub use step_loop::{step_loop, Cadence, Task, Timing, TrainingJob};

/// Cooperative cancellation: the job checks it at step boundaries, then writes a final
/// checkpoint and returns.
#[derive(Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// Asks the job to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// Whether a stop was asked for.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It ran all its steps.
    Completed {
        /// Final step.
        step: i64,
    },
    /// It was cancelled and left a checkpoint at `step`.
    Cancelled {
        /// Step of the final checkpoint.
        step: i64,
    },
}

/// A per-step seed from the job seed: every step reseeds libtorch's RNG and the data
/// sampler with this, so a resumed job draws exactly what an uninterrupted one would.
pub fn step_seed(seed: u64, step: i64) -> u64 {
    // SplitMix64 finaliser: nearby (seed, step) pairs give unrelated seeds.
    let mut z = seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
