//! Dispatches a job spec to its kind. This sits above every job kind and the [`crate::job`]
//! seam, so the seam never imports a kind.

use crate::job::{CancelToken, Outcome, Reporter};
pub use plume_jobs::{JobSpec, JOB_KINDS};
use std::path::Path;

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
        JobSpec::Probe(c) => crate::probe::run(c, resume, reporter, cancel),
    }
}
