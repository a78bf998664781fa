//! The job runner seam: a job is `(kind, config, resume checkpoint)` run against a
//! [`Reporter`] and a [`CancelToken`]. Job YAML files are parsed here, strictly: unknown
//! kinds and unknown fields are errors that name the line and column.

pub mod reporter;

use crate::dataset::synth::{write_dataset, SynthSpec, RENDERER_VERSION};
use crate::dataset::Dataset;
pub use reporter::{LocalDirReporter, Reporter};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Largest job file we read.
pub const MAX_JOB_FILE_BYTES: u64 = 1 << 20;

/// Cooperative cancellation: the job checks it at step boundaries, then writes a final
/// checkpoint and returns.
#[derive(Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// Asks the job to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// Whether a stop was asked for.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
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

/// The directory rendered datasets are cached in: `$PLUME_DATA_DIR`, else
/// `~/.cache/plume/datasets`.
pub fn data_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("PLUME_DATA_DIR") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".cache").join("plume").join("datasets")
}

impl DatasetSpec {
    /// Opens the dataset, rendering a synthetic one into the cache first if needed. Rendering
    /// goes to a temporary directory that is renamed into place, so concurrent workers and
    /// crashes never leave a half dataset under the final name.
    pub fn open(&self) -> anyhow::Result<Dataset> {
        match self {
            DatasetSpec::Cub { path } => Ok(Dataset::open(path)?),
            DatasetSpec::SyntheticBirds {
                images,
                resolution,
                seed,
            } => {
                let spec = SynthSpec {
                    images: *images,
                    resolution: *resolution,
                    seed: *seed,
                };
                let cache = data_cache_dir();
                let dir = cache.join(format!(
                    "synthetic-birds-v{RENDERER_VERSION}-n{images}-r{resolution}-s{seed}"
                ));
                if !dir.join("plume_dataset.json").exists() {
                    std::fs::create_dir_all(&cache)?;
                    let tmp = cache.join(format!(
                        ".tmp-{}-{}",
                        std::process::id(),
                        dir.file_name().unwrap().to_string_lossy()
                    ));
                    let _ = std::fs::remove_dir_all(&tmp);
                    write_dataset(&tmp, &spec, |_, _| {})?;
                    if std::fs::rename(&tmp, &dir).is_err() {
                        // Another process won the race; use its copy.
                        let _ = std::fs::remove_dir_all(&tmp);
                    }
                }
                Ok(Dataset::open(&dir)?)
            }
        }
    }
}

/// A job: its kind and configuration. In YAML, `kind:` names the variant and the other
/// top-level fields are the variant's configuration.
#[derive(Debug, Clone)]
pub enum JobSpec {
    /// Pretrain the StyleGAN2 that later jobs freeze.
    PretrainGenerator(crate::stylegan::pretrain::PretrainConfig),
    /// Train the critic and the judge.
    TrainJudge(crate::judge::train::JudgeConfig),
    /// Find the style w of every image.
    Invert(crate::styles::invert::InvertConfig),
    /// Train BERT with one of the seed's methods against the frozen generator.
    TrainText(crate::text::train::TextConfig),
    /// The edit benchmark on a `train-text` checkpoint.
    Evaluate(crate::text::train::EvaluateConfig),
}

/// Job kinds as written in YAML.
pub const JOB_KINDS: [&str; 5] = [
    "pretrain-generator",
    "train-judge",
    "invert",
    "train-text",
    "evaluate",
];

fn yaml_error(origin: &str, e: serde_yaml::Error) -> anyhow::Error {
    let at = e
        .location()
        .map(|l| format!(":{}:{}", l.line(), l.column()))
        .unwrap_or_default();
    anyhow::anyhow!("{origin}{at}: {e}")
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
        }
    }

    /// Parses a job from YAML text; `origin` names the source in errors.
    ///
    /// serde's internally tagged enums buffer their input and lose line numbers, so the kind
    /// is read first and the rest is parsed straight into that kind's config, with the
    /// `kind:` line blanked out (same length) so every error keeps its line and column.
    pub fn from_yaml(text: &str, origin: &str) -> anyhow::Result<JobSpec> {
        let value: serde_yaml::Value =
            serde_yaml::from_str(text).map_err(|e| yaml_error(origin, e))?;
        let kind_line = text.lines().position(|l| l.starts_with("kind:"));
        let line_ref = kind_line.map(|i| format!(":{}", i + 1)).unwrap_or_default();
        let kind = match value.get("kind") {
            Some(serde_yaml::Value::String(k)) => k.clone(),
            Some(_) => anyhow::bail!(
                "{origin}{line_ref}: `kind` must be a string, one of {}",
                JOB_KINDS.join(", ")
            ),
            None => anyhow::bail!("{origin}: missing `kind` (one of {})", JOB_KINDS.join(", ")),
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
                serde_yaml::to_string(&map)?
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
            other => anyhow::bail!(
                "{origin}{line_ref}: unknown job kind `{other}`, expected one of {}",
                JOB_KINDS.join(", ")
            ),
        };
        spec.validate()
            .map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
        Ok(spec)
    }

    /// Reads and parses a job file.
    pub fn from_file(path: &Path) -> anyhow::Result<JobSpec> {
        let len = std::fs::metadata(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
            .len();
        anyhow::ensure!(
            len <= MAX_JOB_FILE_BYTES,
            "{}: {len} bytes is larger than the {MAX_JOB_FILE_BYTES}-byte limit for a job file",
            path.display()
        );
        let bytes = std::fs::read(path)?;
        let text = String::from_utf8(bytes)
            .map_err(|_| anyhow::anyhow!("{}: not valid UTF-8", path.display()))?;
        JobSpec::from_yaml(&text, &path.display().to_string())
    }

    /// Checks value ranges that serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            JobSpec::PretrainGenerator(c) => c.validate(),
            JobSpec::TrainJudge(c) => c.validate(),
            JobSpec::Invert(c) => c.validate(),
            JobSpec::TrainText(c) => c.validate(),
            JobSpec::Evaluate(c) => c.validate(),
        }
    }
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It ran all its steps.
    Completed {
        /// Final step.
        step: i64,
    },
    /// It was cancelled and left a checkpoint at `step`.
    Cancelled {
        /// Step of the final checkpoint.
        step: i64,
    },
}

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
    }
}

/// `Err("NAME must be in LO..=HI, got V")` unless `lo <= value <= hi` (NaN fails): the one
/// wording of every config range check.
pub fn check_range<T: PartialOrd + std::fmt::Display>(
    name: &str,
    value: T,
    lo: T,
    hi: T,
) -> Result<(), String> {
    if !(value >= lo && value <= hi) {
        return Err(format!("{name} must be in {lo}..={hi}, got {value}"));
    }
    Ok(())
}

/// A per-step seed from the job seed: every step reseeds libtorch's RNG and the data
/// sampler with this, so a resumed job draws exactly what an uninterrupted one would.
pub fn step_seed(seed: u64, step: i64) -> u64 {
    // SplitMix64 finaliser: nearby (seed, step) pairs give unrelated seeds.
    let mut z = seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
