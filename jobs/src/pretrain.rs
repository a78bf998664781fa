//! `pretrain-generator`.

use crate::*;
#[allow(unused_imports)]
use std::path::PathBuf;

/// How `pretrain-generator` teaches G.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Objective {
    /// StyleGAN2's game against a discriminator on the dataset's images (any data).
    #[default]
    Adversarial,
    /// Regression on the renderer (synthetic birds only): every step renders fresh scenes
    /// and G(mapping(scene code)) is trained toward the render, pixel by pixel.
    Teacher,
}

/// The teacher objective's loss: `mean(weight * (l1 |G - R| + l2 (G - R)^2))`, where a
/// pixel's weight is 1 on the background and `bird_weight` on the bird (the renderer's part
/// masks), so the small parts that carry the attributes are not drowned by the background.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TeacherConfig {
    /// Weight of bird pixels against background pixels.
    pub bird_weight: f64,
    /// Weight of the absolute error.
    pub l1: f64,
    /// Weight of the squared error.
    pub l2: f64,
    /// Adam's beta1 for G.
    pub beta1: f64,
    /// Held-out scenes scored at every eval (their renders against G's pictures).
    pub heldout_scenes: i64,
}

impl Default for TeacherConfig {
    fn default() -> Self {
        TeacherConfig {
            bird_weight: 5.0,
            l1: 1.0,
            l2: 1.0,
            // 0.9 against StyleGAN's 0: at 32k images it read the part colours at
            // 0.90/0.93/0.24/0.57 against 0.76/0.85/0.17/0.43 (generator-teacher-recipes.yaml).
            beta1: 0.9,
            heldout_scenes: 1000,
        }
    }
}

/// Configuration of `pretrain-generator`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainConfig {
    /// The images (the training partition is used; with `teacher`, the test partition
    /// calibrates the judge's metrics and the renderer supplies the training scenes).
    pub dataset: DatasetSpec,
    /// `adversarial` (default) or `teacher`.
    #[serde(default)]
    pub objective: Objective,
    /// The teacher objective's loss (with `objective: teacher`).
    #[serde(default)]
    pub teacher: TeacherConfig,
    /// Network sizes; `resolution` must match the dataset's.
    #[serde(default)]
    pub network: NetworkConfig,
    /// Training steps (one G and one D update each).
    pub steps: i64,
    /// Batch size.
    #[serde(default = "d_batch")]
    pub batch: i64,
    /// Adam learning rate for G and D.
    #[serde(default = "d_lr")]
    pub lr: f64,
    /// Seed of initialisation, data order and noise.
    #[serde(default)]
    pub seed: u64,
    /// R1 weight gamma (penalty gamma/2 |grad D|^2).
    #[serde(default = "d_r1_gamma")]
    pub r1_gamma: f64,
    /// Lazy R1: every this many steps.
    #[serde(default = "d_r1_interval")]
    pub r1_interval: i64,
    /// Path-length weight (0 switches it off).
    #[serde(default)]
    pub pl_weight: f64,
    /// Lazy path-length: every this many steps.
    #[serde(default = "d_pl_interval")]
    pub pl_interval: i64,
    /// Probability of style mixing per batch.
    #[serde(default = "d_mixing")]
    pub style_mixing: f64,
    /// EMA half-life in training images.
    #[serde(default = "d_ema_half_life")]
    pub ema_half_life_images: f64,
    /// EMA ramp-up: the half-life is at most this times the images seen.
    #[serde(default = "d_ema_rampup")]
    pub ema_rampup: f64,
    /// A `train-judge` checkpoint: enables `gen/judge_fid`.
    #[serde(default)]
    pub judge: Option<PathBuf>,
    /// Images generated per judge-FID evaluation.
    #[serde(default = "d_fid_images")]
    pub fid_images: i64,
    /// Evaluate judge-FID every this many steps (and at the start and end).
    #[serde(default = "d_every")]
    pub eval_every: i64,
    /// Write a sample grid every this many steps (and at the end).
    #[serde(default = "d_every")]
    pub sample_every: i64,
    /// Checkpoint every this many steps (and at the end).
    #[serde(default = "d_every")]
    pub checkpoint_every: i64,
    /// Differentiable augmentation of every D input (`{translation: 0, cutout: 0}` is off).
    #[serde(default)]
    pub augment: AugmentConfig,
    /// Mirror a random half of every real batch left-right.
    #[serde(default = "d_true")]
    pub xflip: bool,
    /// Samples and test images for precision/recall, coverage and facing (0: skip them).
    #[serde(default = "d_metric_images")]
    pub metric_images: i64,
}

/// DiffAugment (Zhao et al. 2020) on every discriminator input. The defaults are the paper's
/// choice for small datasets: translation by up to 1/8 of the side and a cutout of 1/2.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AugmentConfig {
    /// Largest shift, as a fraction of the side (0: no translation).
    #[serde(default = "d_translation")]
    pub translation: f64,
    /// Side of the zeroed square, as a fraction of the side (0: no cutout).
    #[serde(default = "d_cutout")]
    pub cutout: f64,
    /// Random brightness, saturation and contrast.
    #[serde(default)]
    pub colour: bool,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig {
            translation: d_translation(),
            cutout: d_cutout(),
            colour: false,
        }
    }
}

impl AugmentConfig {
    /// Whether any op is on.
    pub fn is_on(&self) -> bool {
        self.translation > 0.0 || self.cutout > 0.0 || self.colour
    }
}

fn d_translation() -> f64 {
    0.125
}
fn d_cutout() -> f64 {
    0.5
}
fn d_true() -> bool {
    true
}
fn d_metric_images() -> i64 {
    1000
}

fn d_batch() -> i64 {
    16
}
fn d_lr() -> f64 {
    0.0025
}
fn d_r1_gamma() -> f64 {
    0.05
}
fn d_r1_interval() -> i64 {
    16
}
fn d_pl_interval() -> i64 {
    4
}
fn d_mixing() -> f64 {
    0.9
}
fn d_ema_half_life() -> f64 {
    2000.0
}
fn d_ema_rampup() -> f64 {
    0.05
}
fn d_fid_images() -> i64 {
    500
}
fn d_every() -> i64 {
    200
}

impl PretrainConfig {
    /// The objective fits the network and the data: the teacher needs the renderer's scenes
    /// and a generator that reads them; the adversarial game needs a latent generator.
    fn check_objective(&self) -> Result<(), ConfigError> {
        match self.objective {
            Objective::Teacher => {
                if !matches!(self.dataset, DatasetSpec::SyntheticBirds { .. }) {
                    return Err(ConfigError::invalid(
                        "objective",
                        "objective: teacher needs the renderer's scenes: use a synthetic-birds dataset (real data trains with objective: adversarial)",
                    ));
                }
                if self.network.input != MappingInput::Scene {
                    return Err(ConfigError::invalid(
                        "network.input",
                        "objective: teacher trains a generator that reads scene codes: set network.input: scene",
                    ));
                }
                let t = &self.teacher;
                check_range("teacher.bird_weight", t.bird_weight, 0.0, 1e4)?;
                check_range("teacher.l1", t.l1, 0.0, 1e4)?;
                check_range("teacher.l2", t.l2, 0.0, 1e4)?;
                check_range("teacher.beta1", t.beta1, 0.0, 0.999)?;
                check_range("teacher.heldout_scenes", t.heldout_scenes, 10, 20_000)?;
                if t.l1 + t.l2 <= 0.0 {
                    return Err(ConfigError::invalid(
                        "teacher.l1",
                        "teacher.l1 and teacher.l2 are both 0: there is no loss",
                    ));
                }
            }
            Objective::Adversarial => {
                if self.network.input != MappingInput::Latent {
                    return Err(ConfigError::invalid(
                        "network.input",
                        "objective: adversarial trains from random z: network.input must be latent",
                    ));
                }
            }
        }
        Ok(())
    }

    /// Range checks.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.network.validate().map_err(|e| ConfigError::In {
            section: "network",
            inner: Box::new(e),
        })?;
        if let DatasetSpec::SyntheticBirds { resolution, .. } = &self.dataset {
            if *resolution != self.network.resolution {
                return Err(ConfigError::invalid(
                    "network.resolution",
                    format!(
                        "network.resolution {} differs from the dataset's {resolution}",
                        self.network.resolution
                    ),
                ));
            }
        }
        self.check_objective()?;
        check_range("steps", self.steps, 1, 100_000_000)?;
        check_range("batch", self.batch, 2, 4096)?;
        check_range("lr", self.lr, 1e-8, 0.5)?;
        check_range("r1_gamma", self.r1_gamma, 0.0, 1e4)?;
        check_range("pl_weight", self.pl_weight, 0.0, 1e4)?;
        check_range("style_mixing", self.style_mixing, 0.0, 1.0)?;
        for (n, v) in [
            ("r1_interval", self.r1_interval),
            ("pl_interval", self.pl_interval),
            ("eval_every", self.eval_every),
            ("sample_every", self.sample_every),
            ("checkpoint_every", self.checkpoint_every),
        ] {
            check_range(n, v, 1, i64::MAX)?;
        }
        check_range("fid_images", self.fid_images, 2, 100_000)?;
        check_range("augment.translation", self.augment.translation, 0.0, 0.5)?;
        check_range("augment.cutout", self.augment.cutout, 0.0, 1.0)?;
        check_range("metric_images", self.metric_images, 0, 100_000)?;
        if (1..10).contains(&self.metric_images) {
            return Err(ConfigError::invalid(
                "metric_images",
                format!(
                    "metric_images must be 0 (off) or at least 10, got {}",
                    self.metric_images
                ),
            ));
        }
        Ok(())
    }
}
