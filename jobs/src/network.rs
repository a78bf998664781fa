//! StyleGAN2 network sizes.

use crate::*;
#[allow(unused_imports)]
use std::path::PathBuf;

/// Network sizes. CPU configs: 32 px, w_dim 128-256, 2 mapping layers, 32-64 channels;
/// GPU: 64-128 px, w_dim 512.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Output side length (power of two, >= 8).
    pub resolution: u32,
    /// Dimension of z.
    pub z_dim: i64,
    /// Dimension of w.
    pub w_dim: i64,
    /// Fully connected layers of the mapping network.
    pub mapping_layers: usize,
    /// Channels at resolution r are `min(channel_max, channel_base / r)`.
    pub channel_base: i64,
    /// Cap on channels per layer.
    pub channel_max: i64,
    /// What the mapping network reads: a random z (`latent`), or the renderer's scene code
    /// (`scene`, teacher-trained generators: w is a block per attribute group plus one for
    /// the pose, so edits are exact sums).
    #[serde(skip_serializing_if = "MappingInput::is_latent")]
    pub input: MappingInput,
}

/// What a generator's mapping network reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MappingInput {
    /// z ~ N(0, I) through `mapping_layers` FC layers (StyleGAN2; the only form importable).
    #[default]
    Latent,
    /// A scene code (the synthetic renderer's attributes and pose): one embedding block of w
    /// per attribute group and one for the pose.
    Scene,
}

impl MappingInput {
    fn is_latent(&self) -> bool {
        *self == MappingInput::Latent
    }
}

/// Blocks of w under the scene mapping: one per attribute group (7) and one for the pose.
pub const SCENE_BLOCKS: i64 = 8;

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            resolution: 32,
            z_dim: 128,
            w_dim: 128,
            mapping_layers: 2,
            channel_base: 2048,
            channel_max: 64,
            input: MappingInput::Latent,
        }
    }
}

impl NetworkConfig {
    /// Channels at resolution `res`.
    pub fn channels(&self, res: u32) -> i64 {
        (self.channel_base / res as i64).clamp(1, self.channel_max)
    }

    /// log2 of the resolution.
    pub fn log2_res(&self) -> u32 {
        self.resolution.trailing_zeros()
    }

    /// Checks that the sizes make sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.resolution.is_power_of_two() || !(8..=1024).contains(&self.resolution) {
            return Err(ConfigError::invalid(
                "resolution",
                format!(
                    "resolution must be a power of two in 8..=1024, got {}",
                    self.resolution
                ),
            ));
        }
        for (name, v) in [
            ("z_dim", self.z_dim),
            ("w_dim", self.w_dim),
            ("channel_base", self.channel_base),
            ("channel_max", self.channel_max),
        ] {
            check_range(name, v, 1, 8192)?;
        }
        check_range("mapping_layers", self.mapping_layers, 1, 8)?;
        if self.input == MappingInput::Scene && self.w_dim % SCENE_BLOCKS != 0 {
            return Err(ConfigError::invalid(
                "w_dim",
                format!(
                    "input: scene splits w into {SCENE_BLOCKS} equal blocks (7 attribute groups and the pose); w_dim {} is not a multiple of {SCENE_BLOCKS}",
                    self.w_dim
                ),
            ));
        }
        Ok(())
    }
}
