//! `import-generator`.

use crate::*;
use std::path::PathBuf;

/// Which project's checkpoint format a generator is imported from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GeneratorFormat {
    /// rosinality/stylegan2-pytorch (`model.py` `Generator` state dict, `g_ema` of a
    /// training checkpoint, `.pt` or `.safetensors`).
    Rosinality,
    /// A Plume `pretrain-generator` checkpoint (the EMA generator and its metadata; a
    /// shipped generator such as `models/teacher-birds-32.safetensors`).
    Plume,
}

/// Configuration of `import-generator`: a published StyleGAN2 instead of a
/// `pretrain-generator` stage. Its checkpoint feeds `invert` and `train-text` the same way.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportGeneratorConfig {
    /// The experiment's dataset: the generator's resolution must match it.
    pub dataset: DatasetSpec,
    /// The format of `path`.
    pub from: GeneratorFormat,
    /// The file, as the worker sees it.
    pub path: PathBuf,
}

impl ImportGeneratorConfig {
    /// Range checks (the file itself is read by the worker).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.path.as_os_str().is_empty() {
            return Err(ConfigError::invalid("path", "path must name a file"));
        }
        Ok(())
    }
}
