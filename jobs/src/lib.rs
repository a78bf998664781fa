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
mod probe;
mod text;
pub mod yaml;

pub use error::{ConfigError, JobError};
pub use import::{GeneratorFormat, ImportGeneratorConfig};
pub use invert::{InvertConfig, InvertMode};
pub use judge::{JudgeConfig, JudgeNetConfig};
pub use network::{MappingInput, NetworkConfig, SCENE_BLOCKS};
pub use pretrain::{AugmentConfig, Objective, PretrainConfig, TeacherConfig};
pub use probe::ProbeConfig;
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

/// Most images a synthetic dataset may have: about 14 GB of disk at 32 px and 45 GB at 128 px
/// (three small files per image), which one worker's disk can hold; the worker also checks
/// its free space before it renders.
pub const MAX_SYNTHETIC_IMAGES: u32 = 1_000_000;

/// Resolutions the synthetic renderer draws.
pub const SYNTHETIC_RESOLUTIONS: [u32; 3] = [32, 64, 128];

impl DatasetSpec {
    /// Ranges a real machine can honour, checked at submit (the worker checks its disk).
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self {
            DatasetSpec::SyntheticBirds {
                images, resolution, ..
            } => {
                check_range("images", *images, 1, MAX_SYNTHETIC_IMAGES)?;
                if !SYNTHETIC_RESOLUTIONS.contains(resolution) {
                    return Err(ConfigError::invalid(
                        "resolution",
                        format!(
                            "the renderer draws {SYNTHETIC_RESOLUTIONS:?} px, got {resolution}"
                        ),
                    ));
                }
                Ok(())
            }
            DatasetSpec::Cub { path } => {
                if path.as_os_str().is_empty() {
                    return Err(ConfigError::invalid("path", "path must name a directory"));
                }
                Ok(())
            }
        }
    }
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
    /// No model: a metric on a schedule, for testing and benchmarking the scheduler.
    Probe(ProbeConfig),
}

/// Job kinds as written in YAML.
pub const JOB_KINDS: [&str; 7] = [
    "pretrain-generator",
    "train-judge",
    "invert",
    "train-text",
    "evaluate",
    "import-generator",
    "probe",
];

fn yaml_error(origin: &str, e: yaml::YamlError) -> JobError {
    let known = |n: usize| (n > 0).then_some(n);
    JobError::Yaml {
        origin: origin.into(),
        line: known(e.line),
        column: known(e.column),
        message: e.message,
    }
}

/// `text` without its top-level `kind:` line (blanked, so positions stay right), or, when
/// `kind` is written inside a flow mapping, the document written again without it.
fn without_kind(text: &str, kind_line: usize) -> Result<String, yaml::YamlError> {
    let on_its_own_line = text
        .lines()
        .nth(kind_line.saturating_sub(1))
        .is_some_and(|l| l.starts_with("kind:"));
    if on_its_own_line {
        let blanked: Vec<String> = text
            .lines()
            .enumerate()
            .map(|(i, l)| {
                if i + 1 == kind_line {
                    " ".repeat(l.len())
                } else {
                    l.to_owned()
                }
            })
            .collect();
        return Ok(blanked.join("\n"));
    }
    let mut map: yaml::Mapping = yaml::from_str(text)?;
    map.remove("kind");
    yaml::to_string(&map)
}

/// Only the `kind:` of a job document (the other fields are skipped, not checked).
#[derive(serde::Deserialize)]
struct KindField {
    kind: Option<yaml::Spanned<yaml::Value>>,
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
            JobSpec::Probe(_) => JOB_KINDS[6],
        }
    }

    /// Parses a job from YAML text; `origin` names the source in errors.
    ///
    /// serde's internally tagged enums buffer their input and lose positions, so the kind is
    /// read first and the rest is parsed straight into that kind's config, with the `kind:`
    /// line blanked out (same length) so every error keeps its line and column.
    pub fn from_yaml(text: &str, origin: &str) -> Result<JobSpec, JobError> {
        let KindField { kind } = yaml::from_str(text).map_err(|e| yaml_error(origin, e))?;
        let kind_error = |line: Option<usize>, message: String| JobError::Kind {
            origin: origin.into(),
            line,
            message,
        };
        let Some(kind) = kind else {
            return Err(kind_error(
                None,
                format!("missing `kind` (one of {})", JOB_KINDS.join(", ")),
            ));
        };
        let kind_line = kind.referenced.line() as usize;
        let yaml::Value::String(name) = kind.value else {
            return Err(kind_error(
                Some(kind_line),
                format!("`kind` must be a string, one of {}", JOB_KINDS.join(", ")),
            ));
        };
        let body = without_kind(text, kind_line).map_err(|e| yaml_error(origin, e))?;
        let parse = |what: fn(&str) -> Result<JobSpec, yaml::YamlError>| {
            what(&body).map_err(|e| yaml_error(origin, e))
        };
        let spec = match name.as_str() {
            "pretrain-generator" => parse(|b| yaml::from_str(b).map(JobSpec::PretrainGenerator))?,
            "train-judge" => parse(|b| yaml::from_str(b).map(JobSpec::TrainJudge))?,
            "invert" => parse(|b| yaml::from_str(b).map(JobSpec::Invert))?,
            "evaluate" => parse(|b| yaml::from_str(b).map(JobSpec::Evaluate))?,
            "train-text" => parse(|b| yaml::from_str(b).map(JobSpec::TrainText))?,
            "import-generator" => parse(|b| yaml::from_str(b).map(JobSpec::ImportGenerator))?,
            "probe" => parse(|b| yaml::from_str(b).map(JobSpec::Probe))?,
            other => {
                return Err(kind_error(
                    Some(kind_line),
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

    /// The dataset the job reads (`evaluate` reads its checkpoint's).
    pub fn dataset(&self) -> Option<&DatasetSpec> {
        match self {
            JobSpec::PretrainGenerator(c) => Some(&c.dataset),
            JobSpec::TrainJudge(c) => Some(&c.dataset),
            JobSpec::Invert(c) => Some(&c.dataset),
            JobSpec::TrainText(c) => Some(&c.dataset),
            JobSpec::Evaluate(_) => None,
            JobSpec::ImportGenerator(c) => Some(&c.dataset),
            JobSpec::Probe(c) => Some(&c.dataset),
        }
    }

    /// Checks value ranges that serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(dataset) = self.dataset() {
            dataset.validate().map_err(|e| ConfigError::In {
                section: "dataset",
                inner: Box::new(e),
            })?;
        }
        match self {
            JobSpec::PretrainGenerator(c) => c.validate(),
            JobSpec::TrainJudge(c) => c.validate(),
            JobSpec::Invert(c) => c.validate(),
            JobSpec::TrainText(c) => c.validate(),
            JobSpec::Evaluate(c) => c.validate(),
            JobSpec::ImportGenerator(c) => c.validate(),
            JobSpec::Probe(c) => c.validate(),
        }
    }
}
