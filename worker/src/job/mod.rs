//! The job runner seam: a job is `(kind, config, resume checkpoint)` run against a
//! [`Reporter`] and a [`CancelToken`]. Job YAML files are parsed here, strictly: unknown
//! kinds and unknown fields are errors that name the line and column.

pub mod reporter;

use crate::dataset::synth::{write_dataset, SynthSpec, RENDERER_VERSION};
use crate::dataset::Dataset;
pub use reporter::{LocalDirReporter, Reporter};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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

pub use plume_jobs::{check_range, DatasetSpec, JobSpec, JOB_KINDS, MAX_JOB_FILE_BYTES};

/// The directory rendered datasets are cached in: `$PLUME_DATA_DIR`, else
/// `~/.cache/plume/datasets`.
pub fn data_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("PLUME_DATA_DIR") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".cache").join("plume").join("datasets")
}

/// Where the set-up Python venv may be, most specific first: `$PLUME_VENV`, else `.venv`
/// here, else `.venv` in the checkout the binary was built in (target/<profile>/ is two
/// levels below it), so that a worker or CLI started in another directory still finds it.
pub fn venv_dirs() -> Vec<PathBuf> {
    if let Some(v) = std::env::var_os("PLUME_VENV") {
        return vec![PathBuf::from(v)];
    }
    let mut dirs = vec![PathBuf::from(".venv")];
    if let Ok(exe) = std::env::current_exe() {
        dirs.extend(exe.ancestors().skip(1).take(4).map(|d| d.join(".venv")));
    }
    dirs
}

/// Opening a [`DatasetSpec`] needs the loader and renderer, which live here (the spec itself
/// is in `plume-jobs`, where the coordinator can validate it without libtorch).
pub trait OpenDataset {
    /// Opens the dataset, rendering a synthetic one into the cache first if needed.
    fn open(&self) -> anyhow::Result<Dataset>;
}

impl OpenDataset for DatasetSpec {
    /// Opens the dataset, rendering a synthetic one into the cache first if needed. Rendering
    /// goes to a temporary directory that is renamed into place, so concurrent workers and
    /// crashes never leave a half dataset under the final name.
    fn open(&self) -> anyhow::Result<Dataset> {
        match self {
            DatasetSpec::Cub { path } => Ok(Dataset::open(path)?),
            DatasetSpec::SyntheticBirds {
                images,
                resolution,
                seed,
            } => {
                let spec = SynthSpec {
                    images: *images,
                    resolution: *resolution,
                    seed: *seed,
                };
                let cache = data_cache_dir();
                let dir = cache.join(format!(
                    "synthetic-birds-v{RENDERER_VERSION}-n{images}-r{resolution}-s{seed}"
                ));
                if !dir.join("plume_dataset.json").exists() {
                    std::fs::create_dir_all(&cache)?;
                    let tmp = cache.join(format!(
                        ".tmp-{}-{}",
                        std::process::id(),
                        dir.file_name().unwrap().to_string_lossy()
                    ));
                    let _ = std::fs::remove_dir_all(&tmp);
                    write_dataset(&tmp, &spec, |_, _| {})?;
                    if std::fs::rename(&tmp, &dir).is_err() {
                        // Another process won the race; use its copy.
                        let _ = std::fs::remove_dir_all(&tmp);
                    }
                }
                Ok(Dataset::open(&dir)?)
            }
        }
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

/// Runs a job to completion or cancellation.
pub fn run(
    spec: &JobSpec,
    resume: Option<&Path>,
    device: tch::Device,
    reporter: &mut dyn Reporter,
    cancel: &CancelToken,
) -> anyhow::Result<Outcome> {
    match spec {
        JobSpec::PretrainGenerator(c) => {
            crate::stylegan::pretrain::run(c, resume, device, reporter, cancel)
        }
        JobSpec::TrainJudge(c) => crate::judge::train::run(c, resume, device, reporter, cancel),
        JobSpec::Invert(c) => crate::styles::invert::run(c, resume, device, reporter, cancel),
        JobSpec::TrainText(c) => crate::text::train::run(c, resume, device, reporter, cancel),
        JobSpec::Evaluate(c) => crate::text::train::evaluate(c, device, reporter),
        JobSpec::ImportGenerator(c) => crate::stylegan::import::run(c, reporter),
    }
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
