//! Job and experiment configuration that both sides read: the worker runs these configs, the
//! coordinator validates them at submit without linking libtorch. Plain serde types, strict
//! (unknown fields are errors), with range checks serde cannot express.

#![deny(missing_docs)]

mod error;
mod import;
mod invert;
mod judge;
mod network;
mod pretrain;
mod text;

pub use error::{ConfigError, JobError};
pub use import::{GeneratorFormat, ImportGeneratorConfig};
pub use invert::{InvertConfig, InvertMode};
pub use judge::{JudgeConfig, JudgeNetConfig};
pub use network::NetworkConfig;
pub use pretrain::{AugmentConfig, PretrainConfig};
pub use text::{
    ContrastStyles, EditForm, EvaluateConfig, LossWeights, Method, PreservationGroups,
    ReconstructionTarget, TextConfig,
};

use std::path::{Path, PathBuf};

/// Largest job file we read.
pub const MAX_JOB_FILE_BYTES: u64 = 1 << 20;

/// [`ConfigError::OutOfRange`] unless `lo <= value <= hi` (NaN fails): the one range check
/// of every config.
pub fn check_range<T: PartialOrd + std::fmt::Display>(
    name: &str,
    value: T,
    lo: T,
    hi: T,
) -> Result<(), ConfigError> {
    if !(value >= lo && value <= hi) {
        return Err(ConfigError::OutOfRange {
            field: name.into(),
            range: format!("{lo}..={hi}"),
            got: value.to_string(),
        });
    }
    Ok(())
}

/// Where a job's images come from.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum DatasetSpec {
    /// The bundled renderer; materialised once into the data cache.
    SyntheticBirds {
        /// Number of images.
        images: u32,
        /// 32, 64 or 128.
        resolution: u32,
        /// Renderer seed.
        seed: u64,
    },
    /// A directory in the CUB layout (the real CUB-200-2011, or a rendered dataset).
    Cub {
        /// The dataset directory.
        path: PathBuf,
    },
}

/// A job: its kind and configuration. In YAML, `kind:` names the variant and the other
/// top-level fields are the variant's configuration.
#[derive(Debug, Clone)]
pub enum JobSpec {
    /// Pretrain the StyleGAN2 that later jobs freeze.
    PretrainGenerator(PretrainConfig),
    /// Train the critic and the judge.
    TrainJudge(JudgeConfig),
    /// Find the style w of every image.
    Invert(InvertConfig),
    /// Train BERT with one of the seed's methods against the frozen generator.
    TrainText(TextConfig),
    /// The edit benchmark on a `train-text` checkpoint.
    Evaluate(EvaluateConfig),
    /// Bring a published StyleGAN2 in instead of pretraining one.
    ImportGenerator(ImportGeneratorConfig),
}

/// Job kinds as written in YAML.
pub const JOB_KINDS: [&str; 6] = [
    "pretrain-generator",
    "train-judge",
    "invert",
    "train-text",
    "evaluate",
    "import-generator",
];

fn yaml_error(origin: &str, e: serde_yaml::Error) -> JobError {
    let location = e.location();
    let message = e.to_string();
    // serde_yaml ends its message with the position, which the error carries separately.
    let message = match message.rfind(" at line ") {
        Some(i) if location.is_some() => message[..i].to_string(),
        _ => message,
    };
    JobError::Yaml {
        origin: origin.into(),
        line: location.as_ref().map(|l| l.line()),
        column: location.as_ref().map(|l| l.column()),
        message,
    }
}

impl JobSpec {
    /// The kind as written in YAML.
    pub fn kind(&self) -> &'static str {
        match self {
            JobSpec::PretrainGenerator(_) => JOB_KINDS[0],
            JobSpec::TrainJudge(_) => JOB_KINDS[1],
            JobSpec::Invert(_) => JOB_KINDS[2],
            JobSpec::TrainText(_) => JOB_KINDS[3],
            JobSpec::Evaluate(_) => JOB_KINDS[4],
            JobSpec::ImportGenerator(_) => JOB_KINDS[5],
        }
    }

    /// Parses a job from YAML text; `origin` names the source in errors.
    ///
    /// serde's internally tagged enums buffer their input and lose line numbers, so the kind
    /// is read first and the rest is parsed straight into that kind's config, with the
    /// `kind:` line blanked out (same length) so every error keeps its line and column.
    pub fn from_yaml(text: &str, origin: &str) -> Result<JobSpec, JobError> {
        let value: serde_yaml::Value =
            serde_yaml::from_str(text).map_err(|e| yaml_error(origin, e))?;
        let kind_line = text.lines().position(|l| l.starts_with("kind:"));
        let kind_error = |line: Option<usize>, message: String| JobError::Kind {
            origin: origin.into(),
            line,
            message,
        };
        let kind = match value.get("kind") {
            Some(serde_yaml::Value::String(k)) => k.clone(),
            Some(_) => {
                return Err(kind_error(
                    kind_line.map(|i| i + 1),
                    format!("`kind` must be a string, one of {}", JOB_KINDS.join(", ")),
                ))
            }
            None => {
                return Err(kind_error(
                    None,
                    format!("missing `kind` (one of {})", JOB_KINDS.join(", ")),
                ))
            }
        };
        let body = match kind_line {
            Some(i) => text
                .lines()
                .enumerate()
                .map(|(j, l)| {
                    if j == i {
                        " ".repeat(l.len())
                    } else {
                        l.to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n"),
            None => {
                let mut map = value.as_mapping().cloned().unwrap_or_default();
                map.remove("kind");
                serde_yaml::to_string(&map).map_err(|e| yaml_error(origin, e))?
            }
        };
        let spec = match kind.as_str() {
            "pretrain-generator" => JobSpec::PretrainGenerator(
                serde_yaml::from_str(&body).map_err(|e| yaml_error(origin, e))?,
            ),
            "train-judge" => {
                JobSpec::TrainJudge(serde_yaml::from_str(&body).map_err(|e| yaml_error(origin, e))?)
            }
            "invert" => {
                JobSpec::Invert(serde_yaml::from_str(&body).map_err(|e| yaml_error(origin, e))?)
            }
            "evaluate" => {
                JobSpec::Evaluate(serde_yaml::from_str(&body).map_err(|e| yaml_error(origin, e))?)
            }
            "train-text" => {
                JobSpec::TrainText(serde_yaml::from_str(&body).map_err(|e| yaml_error(origin, e))?)
            }
            "import-generator" => JobSpec::ImportGenerator(
                serde_yaml::from_str(&body).map_err(|e| yaml_error(origin, e))?,
            ),
            other => {
                return Err(kind_error(
                    kind_line.map(|i| i + 1),
                    format!(
                        "unknown job kind `{other}`, expected one of {}",
                        JOB_KINDS.join(", ")
                    ),
                ))
            }
        };
        spec.validate().map_err(|rule| JobError::Invalid {
            origin: origin.into(),
            rule,
        })?;
        Ok(spec)
    }

    /// Reads and parses a job file.
    pub fn from_file(path: &Path) -> Result<JobSpec, JobError> {
        let io = |source| JobError::Io {
            path: path.into(),
            source,
        };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MAX_JOB_FILE_BYTES {
            return Err(JobError::TooLarge {
                path: path.into(),
                len,
                limit: MAX_JOB_FILE_BYTES,
            });
        }
        let bytes = std::fs::read(path).map_err(io)?;
        let text = String::from_utf8(bytes).map_err(|_| JobError::NotUtf8 { path: path.into() })?;
        JobSpec::from_yaml(&text, &path.display().to_string())
    }

    /// Checks value ranges that serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self {
            JobSpec::PretrainGenerator(c) => c.validate(),
            JobSpec::TrainJudge(c) => c.validate(),
            JobSpec::Invert(c) => c.validate(),
            JobSpec::TrainText(c) => c.validate(),
            JobSpec::Evaluate(c) => c.validate(),
            JobSpec::ImportGenerator(c) => c.validate(),
        }
    }
}
