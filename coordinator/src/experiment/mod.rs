//! Experiment YAML: parsing, validation and expansion into runs.
//!
//! An experiment names a dataset, shared `stages` (generator, judges, styles), `runs` (one
//! per method, each possibly with `ablate`), an optional `sweep` over the runs, an optional
//! `search` (ASHA early stopping of the runs), a `priority`, `resources` per entry, an
//! `objective`, `max_restarts` and a
//! checkpoint retention policy. Every error names the file, the line and
//! column, and the form that was expected; nothing is stored for an experiment that fails.
//!
//! The stages, in order: `file` reads the file as written, every part with the place the
//! YAML parser found it (so every error is placed by the parser, never by searching the
//! text); `graph` checks the entries and their `needs`; `expand` (with `sweep`) turns them
//! into runs, each checked exactly as the worker will parse it.

use indexmap::IndexMap;
use plume_jobs::yaml::{Mapping, Value};
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap};

mod expand;
mod file;
mod graph;
pub mod search;
mod sweep;

/// Largest experiment file accepted (checked before parsing).
pub const MAX_EXPERIMENT_BYTES: usize = 256 * 1024;
/// Most runs one experiment may expand into.
pub const MAX_RUNS: usize = 2000;

/// An experiment that failed validation.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct ExperimentError {
    /// The file name given at submit.
    pub file: String,
    /// 1-based line (0 when the whole file is concerned).
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong and what was expected.
    pub message: String,
}

/// What "best" means for this experiment.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Objective {
    /// Metric name, e.g. `eval/score`.
    pub metric: String,
    /// `max` or `min`.
    pub mode: Mode,
}

impl Default for Objective {
    fn default() -> Self {
        Objective {
            metric: "eval/score".into(),
            mode: Mode::Max,
        }
    }
}

/// Direction of the objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Larger is better.
    Max,
    /// Smaller is better.
    Min,
}

impl Mode {
    /// `"max"` or `"min"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Max => "max",
            Mode::Min => "min",
        }
    }
}

/// Which checkpoints of a run are kept once it finishes.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Keep rules.
    pub keep: Keep,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            keep: Keep {
                best: 2,
                latest: 1,
                final_state: false,
            },
        }
    }
}

/// Keep the `best` checkpoints by objective and the `latest` ones by step.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Keep {
    /// By objective.
    #[serde(default)]
    pub best: u32,
    /// By step (at least 1: downstream runs and resumes need the last one).
    #[serde(default = "one")]
    pub latest: u32,
    /// Keep a finished run's resume state (optimizer moments) in its last checkpoint, so it
    /// can later be continued exactly. Off by default: only a run that may still resume
    /// needs it, and it is most of a checkpoint's bytes.
    #[serde(default)]
    pub final_state: bool,
}

fn one() -> u32 {
    1
}

/// What one run needs of its worker (`resources:` on an entry or in `run_defaults`).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// GPUs on one worker; 0 (the default) takes any one device slot, a CPU slot included.
    #[serde(default)]
    pub gpus: u32,
    /// Memory each of those GPUs must have, in GB (10^9 bytes).
    #[serde(default)]
    pub min_gpu_memory_gb: f64,
}

impl Resources {
    /// Most GPUs one run may ask for.
    pub const MAX_GPUS: u32 = 64;

    /// The range checks; the message names the field.
    pub fn check(&self) -> Result<(), String> {
        if self.gpus > Self::MAX_GPUS {
            return Err(format!(
                "resources.gpus must be 0..={}, not {}",
                Self::MAX_GPUS,
                self.gpus
            ));
        }
        if !(0.0..=4096.0).contains(&self.min_gpu_memory_gb) {
            return Err(format!(
                "resources.min_gpu_memory_gb must be 0..=4096, not {}",
                self.min_gpu_memory_gb
            ));
        }
        if self.min_gpu_memory_gb > 0.0 && self.gpus == 0 {
            return Err("resources.min_gpu_memory_gb needs gpus: 1 or more".into());
        }
        Ok(())
    }

    /// The memory floor in MB, as stored.
    pub fn min_gpu_memory_mb(&self) -> i64 {
        (self.min_gpu_memory_gb * 1000.0).ceil() as i64
    }
}

/// A validated, expanded experiment.
#[derive(Debug, Clone)]
pub struct Experiment {
    /// Its name.
    pub name: String,
    /// The objective.
    pub objective: Objective,
    /// Restarts allowed per run after lost attempts.
    pub max_restarts: u32,
    /// Retention.
    pub retention: Retention,
    /// Adaptive early stopping of the `runs:` entries, if asked for.
    pub search: Option<search::Search>,
    /// Higher goes first; equal priorities share the workers.
    pub priority: i32,
    /// Runs in dependency order (every run comes after the runs it needs).
    pub runs: Vec<PlannedRun>,
}

/// One run of an expanded experiment.
#[derive(Debug, Clone)]
pub struct PlannedRun {
    /// Unique within the experiment: the stage key, the run name, or the run name with its
    /// ablation and sweep values (`m3@losses.preservation=0`).
    pub name: String,
    /// Job kind.
    pub job: String,
    /// The job's YAML (kind, dataset and config; upstream checkpoints are filled in by the
    /// worker from `inputs`).
    pub config: String,
    /// Total steps (from the config's `steps`, 0 if absent).
    pub total_steps: i64,
    /// `(config field, upstream run name)`.
    pub inputs: Vec<(String, String)>,
    /// The job's `method` (train-text), if it has one.
    pub method: Option<String>,
    /// The ablation and sweep values the run was expanded with (`losses.preservation` ->
    /// `1`), as its name shows them. Stored with the run, so nothing parses names.
    pub params: BTreeMap<String, String>,
    /// From the file's `runs:` (not a stage): the runs a `search:` manages.
    pub is_run: bool,
    /// What it needs of its worker.
    pub resources: Resources,
}

/// Parses, validates and expands an experiment.
pub fn parse(file: &str, src: &str) -> Result<Experiment, ExperimentError> {
    let ctx = file::Ctx { file };
    let parsed = file::read(&ctx, src)?;
    let entries = graph::Entries::collect(&parsed, &ctx)?;
    let order = entries.check_needs(&parsed, &ctx)?;
    let runs = expand::plan(&parsed, &entries, &order, &ctx)?;
    Ok(Experiment {
        name: parsed.name.value,
        objective: parsed.objective.map(|o| o.value).unwrap_or_default(),
        max_restarts: parsed.max_restarts,
        retention: parsed.checkpoints.map(|c| c.value).unwrap_or_default(),
        search: parsed.search.map(|s| s.value),
        priority: parsed.priority.map_or(0, |p| p.value),
        runs,
    })
}
