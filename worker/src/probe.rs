//! `probe`: the scheduler's test job ([`ProbeConfig`]): a metric on a schedule through the
//! same step loop, checkpoints and reporter as a training job, with no model.

use crate::job::{step_loop, Cadence, CancelToken, Outcome, Reporter, Task, TrainingJob};
use crate::nn::checkpoint::{self, Checkpoint, Parts};
use plume_jobs::ProbeConfig;
use std::collections::BTreeMap;
use std::path::Path;

/// Runs a probe from step 0, or from `resume`'s step.
pub fn run(
    cfg: &ProbeConfig,
    resume: Option<&Path>,
    reporter: &mut dyn Reporter,
    cancel: &CancelToken,
) -> anyhow::Result<Outcome> {
    if let Some(up) = &cfg.upstream {
        Checkpoint::load(up)?.expect_kind("probe")?;
    }
    let start = match resume {
        Some(path) => {
            let c = Checkpoint::load(path)?;
            c.expect_kind("probe")?;
            c.step
        }
        None => 0,
    };
    let every = match cfg.checkpoint_every {
        0 => vec![],
        n => vec![(Task::Checkpoint, n)],
    };
    let cadence = Cadence::per_step("probe", cfg.steps, cfg.seed, every);
    step_loop(&mut Probe { cfg }, start, &cadence, reporter, cancel)
}

struct Probe<'a> {
    cfg: &'a ProbeConfig,
}

impl TrainingJob for Probe<'_> {
    fn train_step(&mut self, step: i64, _seed: u64) -> anyhow::Result<Vec<(String, f64)>> {
        if self.cfg.step_ms > 0 {
            std::thread::sleep(std::time::Duration::from_millis(self.cfg.step_ms));
        }
        if self.cfg.fail_at == Some(step + 1) {
            anyhow::bail!("probe: fail_at {} reached", step + 1);
        }
        let value = self.cfg.start + self.cfg.slope * (step + 1) as f64;
        Ok(vec![(self.cfg.metric.clone(), value)])
    }

    fn run_task(
        &mut self,
        task: Task,
        step: i64,
        reporter: &mut dyn Reporter,
    ) -> anyhow::Result<()> {
        if task == Task::Checkpoint {
            let weights = vec![("step".to_string(), tch::Tensor::from(step as f32))];
            checkpoint::write(
                reporter,
                "probe",
                step,
                &BTreeMap::new(),
                &Parts::weights(weights),
            )?;
        }
        Ok(())
    }
}
