//! The loop every training job runs, written once: check for cancellation (then checkpoint
//! and stop), reseed from `(seed, step)`, take a step, report its metrics and progress, and
//! run the periodic tasks (evaluation, samples, checkpoints) on their cadence and at the end.
//! Reseeding every step from the step number alone is what makes a resume exact.

use super::{step_seed, CancelToken, Outcome, Reporter};
use std::time::Instant;

/// A periodic task of a training job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// Score the model (the metrics go through the reporter).
    Evaluate,
    /// Write pictures.
    Samples,
    /// Write a checkpoint. The loop also runs it on cancellation.
    Checkpoint,
}

/// When the loop runs what.
#[derive(Debug, Clone)]
pub struct Cadence {
    /// The job's name, for the closing message (`train-judge finished at step 800`).
    pub name: &'static str,
    /// The step to stop after.
    pub steps: i64,
    /// How far one step advances (1, or a batch size for a job that counts items, such as
    /// `invert`'s images); the last step may advance less.
    pub stride: i64,
    /// The job seed that each step's seed derives from.
    pub seed: u64,
    /// Tasks and their intervals in steps (of `stride`), run in this order after a step whose
    /// number the interval divides, and after the last step.
    pub every: Vec<(Task, i64)>,
    /// Run [`Task::Evaluate`] before the first step of a fresh (not resumed) job, so curves
    /// start at the untrained model.
    pub evaluate_at_start: bool,
}

impl Cadence {
    /// The cadence of a job whose steps are training steps (stride 1), with its tasks; no
    /// evaluation before the first step unless the caller sets `evaluate_at_start`.
    pub fn per_step(name: &'static str, steps: i64, seed: u64, every: Vec<(Task, i64)>) -> Self {
        Cadence {
            name,
            steps,
            stride: 1,
            seed,
            every,
            evaluate_at_start: false,
        }
    }
}

/// Step timing reported as metrics: the mean time of the steps (and their reporting) over
/// windows of about 5 s, tasks excluded, so that it compares with a benchmark's step time.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Metric name of the mean step time in ms.
    pub step_ms: &'static str,
    /// Metric name of the items (images, examples) per second.
    pub items_per_s: &'static str,
    /// Items one step processes.
    pub items_per_step: f64,
}

/// A training job as the loop drives it.
pub trait TrainingJob {
    /// Takes the step at `step` (0-based), with libtorch's RNG already seeded from `seed`;
    /// returns the step's metrics, which the loop reports at the step it reaches.
    fn train_step(&mut self, step: i64, seed: u64) -> anyhow::Result<Vec<(String, f64)>>;

    /// Runs `task` after `step` steps.
    fn run_task(
        &mut self,
        task: Task,
        step: i64,
        reporter: &mut dyn Reporter,
    ) -> anyhow::Result<()>;

    /// Whether the progress line shows this metric of a step (by default every one).
    fn progress_shows(&self, metric: &str) -> bool {
        let _ = metric;
        true
    }

    /// Step timing to report, if any.
    fn timing(&self) -> Option<Timing> {
        None
    }
}

/// Runs `job` from step `start` to `cadence.steps`, or until `cancel` is set, when it writes a
/// checkpoint and returns [`Outcome::Cancelled`].
pub fn step_loop(
    job: &mut dyn TrainingJob,
    start: i64,
    cadence: &Cadence,
    reporter: &mut dyn Reporter,
    cancel: &CancelToken,
) -> anyhow::Result<Outcome> {
    let stride = cadence.stride.max(1);
    let mut step = start;
    if step == 0 && cadence.evaluate_at_start {
        job.run_task(Task::Evaluate, 0, reporter)?;
    }
    let timing = job.timing();
    let (mut window_time, mut window_steps, mut window) = (0f64, 0i64, Instant::now());
    while step < cadence.steps {
        let started = Instant::now();
        if cancel.is_cancelled() {
            job.run_task(Task::Checkpoint, step, reporter)?;
            reporter.finish(&format!("cancelled at step {step}; checkpoint written"));
            return Ok(Outcome::Cancelled { step });
        }
        let seed = step_seed(cadence.seed, step);
        tch::manual_seed(seed as i64);
        let mut metrics = job.train_step(step, seed)?;
        step += stride.min(cadence.steps - step);
        if let Some(t) = timing {
            if window_steps > 0 && (window.elapsed().as_secs_f64() >= 5.0 || step == cadence.steps)
            {
                let per_step = window_time / window_steps as f64;
                metrics.push((t.step_ms.to_string(), per_step * 1e3));
                metrics.push((t.items_per_s.to_string(), t.items_per_step / per_step));
                (window_time, window_steps, window) = (0.0, 0, Instant::now());
            }
        }
        let pairs: Vec<(&str, f64)> = metrics.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        reporter.metrics(step, &pairs)?;
        let shown: Vec<(&str, f64)> = pairs
            .iter()
            .copied()
            .filter(|(k, _)| job.progress_shows(k))
            .collect();
        reporter.progress(step, cadence.steps, &shown);
        window_time += started.elapsed().as_secs_f64();
        window_steps += 1;
        for &(task, every) in &cadence.every {
            if step % (every.max(1) * stride) == 0 || step == cadence.steps {
                job.run_task(task, step, reporter)?;
            }
        }
    }
    reporter.finish(&format!("{} finished at step {step}", cadence.name));
    Ok(Outcome::Completed { step })
}
