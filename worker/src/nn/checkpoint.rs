//! Checkpoint files: safetensors with Plume metadata (job kind, step, config), written
//! atomically (temporary file + rename) so a crash or a full disk never leaves a half file
//! where a good one was, and read with checks that name the bad key and the expected shape.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// Largest checkpoint we agree to read (guards against being pointed at something huge).
pub const MAX_CHECKPOINT_BYTES: u64 = 8 << 30;

/// What can be wrong with a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a complete safetensors file (truncated, corrupt, not a checkpoint).
    #[error("{path}: not a readable checkpoint ({message}); is it truncated?")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The decoder's complaint.
        message: String,
    },
    /// The checkpoint was written by another job kind.
    #[error("{path}: is a `{found}` checkpoint, expected `{expected}`")]
    WrongKind {
        /// The file.
        path: PathBuf,
        /// Kind we need.
        expected: String,
        /// Kind in the file.
        found: String,
    },
    /// A tensor the model needs is absent.
    #[error("{path}: missing tensor `{key}` (expected shape {expected:?})")]
    Missing {
        /// The file.
        path: PathBuf,
        /// Tensor name.
        key: String,
        /// Shape the model expects.
        expected: Vec<i64>,
    },
    /// A tensor has another shape than the model's.
    #[error("{path}: tensor `{key}` has shape {found:?}, expected {expected:?}")]
    Shape {
        /// The file.
        path: PathBuf,
        /// Tensor name.
        key: String,
        /// Shape the model expects.
        expected: Vec<i64>,
        /// Shape in the file.
        found: Vec<i64>,
    },
    /// A metadata entry is missing or malformed.
    #[error("{path}: metadata `{key}`: {message}")]
    Metadata {
        /// The file.
        path: PathBuf,
        /// Metadata key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

struct F32View {
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl safetensors::View for F32View {
    fn dtype(&self) -> safetensors::Dtype {
        safetensors::Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn to_view(t: &Tensor) -> F32View {
    let t = t
        .detach()
        .to_device(tch::Device::Cpu)
        .to_kind(Kind::Float)
        .contiguous();
    let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
    let numel: usize = shape.iter().product();
    let mut bytes = vec![0u8; numel * 4];
    t.copy_data_u8(&mut bytes, numel);
    F32View { shape, bytes }
}

/// Metadata key listing (as a JSON array) the tensors that are resume state. The coordinator
/// reads it to keep that state only where a resume needs it (a run's latest checkpoint) and
/// to serve weights-only downloads; see `plume_coordinator::blobs::without_state`.
pub const STATE_KEY: &str = "plume.state";

/// Metadata key the coordinator sets on a checkpoint whose resume state it dropped.
pub const STATE_DROPPED_KEY: &str = "plume.state_dropped";

/// What a checkpoint holds, in two parts: the weights every later reader needs (`best`,
/// downloads, downstream stages) and the state only an exact resume needs (optimizer moments,
/// a GAN's discriminator and raw generator, counters).
pub struct Parts {
    /// Read by everyone.
    pub weights: Vec<(String, Tensor)>,
    /// Read only by a resume.
    pub state: Vec<(String, Tensor)>,
}

impl Parts {
    /// Weights alone (a job whose checkpoints need nothing more to resume).
    pub fn weights(weights: Vec<(String, Tensor)>) -> Parts {
        Parts {
            weights,
            state: Vec::new(),
        }
    }
}

/// Saves a job's checkpoint for `step` where its reporter keeps them, then reports it: the one
/// way a job writes a checkpoint.
pub fn write(
    reporter: &mut dyn crate::job::Reporter,
    kind: &str,
    step: i64,
    meta: &BTreeMap<String, String>,
    parts: &Parts,
) -> anyhow::Result<()> {
    let path = reporter.checkpoint_path(step)?;
    save(&path, kind, step, meta, parts)?;
    reporter.checkpoint_written(step, &path)
}

/// Writes `parts` and `meta` (plus `plume.kind`, `plume.step` and the names of the state
/// tensors under [`STATE_KEY`]) to `path` atomically.
pub fn save(
    path: &Path,
    kind: &str,
    step: i64,
    meta: &BTreeMap<String, String>,
    parts: &Parts,
) -> Result<(), CheckpointError> {
    let io = |e| CheckpointError::Io {
        path: path.to_owned(),
        source: e,
    };
    let mut info: HashMap<String, String> =
        meta.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    info.insert("plume.kind".into(), kind.into());
    info.insert("plume.step".into(), step.to_string());
    let state_names: Vec<&str> = parts.state.iter().map(|(n, _)| n.as_str()).collect();
    info.insert(
        STATE_KEY.into(),
        serde_json::to_string(&state_names).expect("strings serialize"),
    );
    let views: Vec<(String, F32View)> = parts
        .weights
        .iter()
        .chain(&parts.state)
        .map(|(n, t)| (n.clone(), to_view(t)))
        .collect();
    let bytes =
        safetensors::serialize(views, Some(info)).map_err(|e| CheckpointError::Corrupt {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, &bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// A loaded checkpoint: metadata and tensors by name.
pub struct Checkpoint {
    /// Where it was read from (for error messages).
    pub path: PathBuf,
    /// The job kind that wrote it.
    pub kind: String,
    /// The training step it was taken at.
    pub step: i64,
    /// All metadata entries.
    pub meta: BTreeMap<String, String>,
    tensors: HashMap<String, Tensor>,
}

impl Checkpoint {
    /// Reads and decodes a checkpoint file.
    pub fn load(path: &Path) -> Result<Checkpoint, CheckpointError> {
        let io = |e| CheckpointError::Io {
            path: path.to_owned(),
            source: e,
        };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MAX_CHECKPOINT_BYTES {
            return Err(CheckpointError::Corrupt {
                path: path.to_owned(),
                message: format!("{len} bytes exceeds the {MAX_CHECKPOINT_BYTES}-byte limit"),
            });
        }
        let bytes = std::fs::read(path).map_err(io)?;
        let corrupt = |e: safetensors::SafeTensorError| CheckpointError::Corrupt {
            path: path.to_owned(),
            message: e.to_string(),
        };
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(corrupt)?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(corrupt)?;
        let meta: BTreeMap<String, String> = header
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let get = |key: &str| {
            meta.get(key)
                .cloned()
                .ok_or_else(|| CheckpointError::Metadata {
                    path: path.to_owned(),
                    key: key.into(),
                    message: "absent: not a Plume checkpoint".into(),
                })
        };
        let kind = get("plume.kind")?;
        let step = get("plume.step")?
            .parse()
            .map_err(|_| CheckpointError::Metadata {
                path: path.to_owned(),
                key: "plume.step".into(),
                message: "not an integer".into(),
            })?;
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            if view.dtype() != safetensors::Dtype::F32 {
                return Err(CheckpointError::Corrupt {
                    path: path.to_owned(),
                    message: format!("tensor `{name}` is {:?}, expected F32", view.dtype()),
                });
            }
            let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            let floats: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            tensors.insert(name, Tensor::from_slice(&floats).view(shape.as_slice()));
        }
        Ok(Checkpoint {
            path: path.to_owned(),
            kind,
            step,
            meta,
            tensors,
        })
    }

    /// Fails unless the checkpoint was written by `kind`.
    pub fn expect_kind(&self, kind: &str) -> Result<(), CheckpointError> {
        if self.kind != kind {
            return Err(CheckpointError::WrongKind {
                path: self.path.clone(),
                expected: kind.into(),
                found: self.kind.clone(),
            });
        }
        Ok(())
    }

    /// Fails unless the checkpoint still carries its resume state: the coordinator keeps it
    /// only in a run's latest checkpoint, and a weights-only file cannot continue exactly.
    pub fn expect_resume_state(&self) -> Result<(), CheckpointError> {
        if self.meta.contains_key(STATE_DROPPED_KEY) {
            return Err(CheckpointError::Metadata {
                path: self.path.clone(),
                key: STATE_DROPPED_KEY.into(),
                message: "this checkpoint holds weights only (its optimizer state was dropped), \
                          so training cannot resume from it exactly; resume from the run's \
                          latest checkpoint, or download with --with-state"
                    .into(),
            });
        }
        Ok(())
    }

    /// A metadata entry, or an error naming it.
    pub fn meta(&self, key: &str) -> Result<&str, CheckpointError> {
        self.meta
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| CheckpointError::Metadata {
                path: self.path.clone(),
                key: key.into(),
                message: "absent".into(),
            })
    }

    /// Every tensor whose name starts with `prefix`, name-sorted (prefix kept).
    pub fn tensors_with_prefix(&self, prefix: &str) -> Vec<(&str, &Tensor)> {
        let mut v: Vec<(&str, &Tensor)> = self
            .tensors
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, t)| (k.as_str(), t))
            .collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        v
    }

    /// Whether a tensor is present.
    pub fn has(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    /// The tensor `key`, checked against the shape the caller expects.
    pub fn tensor(&self, key: &str, expected: &[i64]) -> Result<&Tensor, CheckpointError> {
        let t = self
            .tensors
            .get(key)
            .ok_or_else(|| CheckpointError::Missing {
                path: self.path.clone(),
                key: key.into(),
                expected: expected.to_vec(),
            })?;
        if t.size() != expected {
            return Err(CheckpointError::Shape {
                path: self.path.clone(),
                key: key.into(),
                expected: expected.to_vec(),
                found: t.size(),
            });
        }
        Ok(t)
    }

    /// Copies every `(name, destination)` from the checkpoint, checking all names and shapes
    /// before changing anything, so a bad file leaves the model untouched.
    pub fn restore(&self, prefix: &str, dest: &[(String, Tensor)]) -> Result<(), CheckpointError> {
        let mut sources = Vec::with_capacity(dest.len());
        for (name, t) in dest {
            sources.push(self.tensor(&format!("{prefix}{name}"), &t.size())?);
        }
        tch::no_grad(|| {
            for ((_, t), src) in dest.iter().zip(sources) {
                t.shallow_clone().copy_(&src.to_device(t.device()));
            }
        });
        Ok(())
    }
}

/// SHA-256 over named tensors (names, shapes and f32 bytes, in the given order): identifies
/// weights a checkpoint depends on but does not store.
pub fn fingerprint<'a>(named: impl IntoIterator<Item = (&'a str, &'a Tensor)>) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for (name, t) in named {
        hasher.update(name.as_bytes());
        hasher.update(format!("{:?}", t.size()).as_bytes());
        let t = t
            .detach()
            .to_device(tch::Device::Cpu)
            .to_kind(Kind::Float)
            .contiguous();
        let n = t.numel();
        let mut bytes = vec![0u8; n * 4];
        t.copy_data_u8(&mut bytes, n);
        hasher.update(&bytes);
    }
    format!("{:x}", hasher.finalize())
}

/// Named tensors under a prefix, ready for [`save`].
pub fn prefixed(prefix: &str, named: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    named
        .iter()
        .map(|(n, t)| (format!("{prefix}{n}"), t.shallow_clone()))
        .collect()
}
