//! `train-judge` and the judge network sizes.

use crate::*;
#[allow(unused_imports)]
use std::path::PathBuf;

/// Layer widths of the attribute/part network.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JudgeNetConfig {
    /// Channels at full, half and quarter resolution.
    pub channels: [i64; 3],
    /// Width of the hidden attribute layer (and of the pooled embedding).
    pub hidden: i64,
}

impl Default for JudgeNetConfig {
    fn default() -> Self {
        JudgeNetConfig {
            channels: [32, 64, 128],
            hidden: 128,
        }
    }
}

/// Configuration of `train-judge`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeConfig {
    /// The images.
    pub dataset: DatasetSpec,
    /// Input resolution (default: the synthetic dataset's, or 64 for a CUB directory).
    #[serde(default)]
    pub resolution: Option<u32>,
    /// Training steps (each trains critic and judge on one batch).
    pub steps: i64,
    /// Batch size.
    #[serde(default = "default_batch")]
    pub batch: i64,
    /// Peak Adam learning rate (cosine-decayed to 0). Layers use equalized learning rate, so
    /// this is a relative step size: 0.02 here is like 1e-3 on He-initialised weights.
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Seed of initialisation and data order.
    #[serde(default)]
    pub seed: u64,
    /// Network widths.
    #[serde(default)]
    pub net: JudgeNetConfig,
    /// Evaluate on the test split every this many steps (and at the end).
    #[serde(default = "default_every")]
    pub eval_every: i64,
    /// Checkpoint every this many steps (and at the end).
    #[serde(default = "default_every")]
    pub checkpoint_every: i64,
}

fn default_batch() -> i64 {
    32
}
fn default_lr() -> f64 {
    0.02
}
fn default_every() -> i64 {
    200
}

impl JudgeConfig {
    /// Range checks.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_range("steps", self.steps, 1, 10_000_000)?;
        check_range("batch", self.batch, 1, 4096)?;
        check_range("lr", self.lr, 1e-8, 0.5)?;
        if let Some(r) = self.resolution {
            check_range("resolution", r, 8, 1024)?;
        }
        check_range("eval_every", self.eval_every, 1, i64::MAX)?;
        check_range("checkpoint_every", self.checkpoint_every, 1, i64::MAX)?;
        Ok(())
    }
}
