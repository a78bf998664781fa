//! `probe`: a job with no model, for testing and benchmarking the scheduler itself (ASHA's
//! rungs, placement, dispatch overhead) with real worker processes.

use crate::*;

/// Configuration of `probe`. It reports `metric = start + slope * step` at every step,
/// sleeping `step_ms` per step, and checkpoints its step every `checkpoint_every` steps, so
/// stops, resumes and releases behave as they do for a training job, at no compute cost.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    /// The experiment's dataset (not read).
    pub dataset: DatasetSpec,
    /// Steps to run.
    pub steps: i64,
    /// The metric it reports.
    #[serde(default = "d_metric")]
    pub metric: String,
    /// The metric at step 0.
    #[serde(default)]
    pub start: f64,
    /// How much the metric grows per step.
    #[serde(default)]
    pub slope: f64,
    /// Milliseconds each step sleeps.
    #[serde(default)]
    pub step_ms: u64,
    /// Checkpoint cadence (and at the end); 0: only when stopped early.
    #[serde(default = "d_checkpoint_every")]
    pub checkpoint_every: i64,
    /// Unused by the job; lets a sweep make otherwise identical runs.
    #[serde(default)]
    pub seed: u64,
    /// Fails (an error, as a crashing job would) on reaching this step: tests of failure
    /// handling and reruns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_at: Option<i64>,
    /// An upstream probe's checkpoint (filled in from `needs:`); it must exist, and is
    /// otherwise unused: it lets tests build stages and check which checkpoint a run got.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<std::path::PathBuf>,
}

fn d_metric() -> String {
    "probe/score".into()
}

fn d_checkpoint_every() -> i64 {
    10
}

impl ProbeConfig {
    /// Range checks.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_range("steps", self.steps, 1, 10_000_000)?;
        check_range("step_ms", self.step_ms, 0, 60_000)?;
        check_range("checkpoint_every", self.checkpoint_every, 0, 10_000_000)?;
        if self.metric.is_empty() || self.metric.len() > 128 {
            return Err(ConfigError::invalid(
                "metric",
                "a metric name of 1 to 128 characters",
            ));
        }
        for (name, v) in [("start", self.start), ("slope", self.slope)] {
            if !v.is_finite() {
                return Err(ConfigError::invalid(name, "a finite number"));
            }
        }
        Ok(())
    }
}
