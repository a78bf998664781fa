//! `invert`.

use crate::*;
#[allow(unused_imports)]
use std::path::PathBuf;

/// How styles are obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InvertMode {
    /// Optimise w per dataset image.
    Optimise,
    /// Draw w = f(z) and label G(w) with the critic's attribute predictions: exact styles of
    /// generated birds, captioned from the synthetic dataset's templates (ml.md section 3).
    Sampled,
    /// Exact styles of the dataset's images from a teacher-trained generator: w_gt =
    /// mapping(scene code of image i), read from the dataset's scenes file. No optimisation.
    Scene,
}

/// Configuration of `invert`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvertConfig {
    /// The images.
    pub dataset: DatasetSpec,
    /// A `pretrain-generator` checkpoint (its EMA generator is used, frozen).
    pub generator: PathBuf,
    /// A `train-judge` checkpoint: its critic's features join the loss (optional).
    #[serde(default)]
    pub critic: Option<PathBuf>,
    /// How styles are obtained.
    #[serde(default = "d_mode")]
    pub mode: InvertMode,
    /// Invert at most this many images (in dataset order; default all); with `sampled`,
    /// how many styles to draw (default: as many as the dataset has images).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Optimisation steps per image.
    #[serde(default = "d_steps")]
    pub steps: i64,
    /// Images optimised together.
    #[serde(default = "d_batch")]
    pub batch: i64,
    /// Peak learning rate.
    #[serde(default = "d_lr")]
    pub lr: f64,
    /// Optimise one w per layer (W+) instead of one w.
    #[serde(default)]
    pub w_plus: bool,
    /// Weight of the critic feature distance.
    #[serde(default = "d_feature_weight")]
    pub feature_weight: f64,
    /// Seed of the generator's noise inputs and of w's optimisation noise.
    #[serde(default)]
    pub seed: u64,
    /// Write a (partial) styles checkpoint every this many batches (and at the end).
    #[serde(default = "d_checkpoint_every")]
    pub checkpoint_every: usize,
}

fn d_checkpoint_every() -> usize {
    10
}

fn d_mode() -> InvertMode {
    InvertMode::Optimise
}
fn d_steps() -> i64 {
    200
}
fn d_batch() -> i64 {
    64
}
fn d_lr() -> f64 {
    0.1
}
fn d_feature_weight() -> f64 {
    1.0
}

impl InvertConfig {
    /// Range checks.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_range("steps", self.steps, 1, 100_000)?;
        check_range("batch", self.batch, 1, 4096)?;
        check_range("lr", self.lr, 1e-8, 10.0)?;
        check_range("feature_weight", self.feature_weight, 0.0, 1e4)?;
        if self.mode == InvertMode::Sampled && self.critic.is_none() {
            return Err(ConfigError::invalid(
                "critic",
                "mode: sampled needs `critic` (its attribute predictions label the samples)",
            ));
        }
        if self.mode == InvertMode::Scene && self.w_plus {
            return Err(ConfigError::invalid(
                "w_plus",
                "mode: scene reads one w per image from its scene code; w_plus applies to optimise",
            ));
        }
        if self.mode == InvertMode::Sampled && self.w_plus {
            return Err(ConfigError::invalid(
                "w_plus",
                "mode: sampled draws one w per bird; w_plus applies to optimise",
            ));
        }
        Ok(())
    }
}
