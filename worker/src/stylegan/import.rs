//! `plume-worker import stylegan2 --from rosinality`: a published StyleGAN2 checkpoint in
//! rosinality's format (the PyTorch format most StyleGAN2 weights are converted into) becomes a
//! Plume generator checkpoint that `invert`, `train-text`, `evaluate` and `edit` load like a
//! trained one. Plume's generator carries rosinality's variable names, so the import is a
//! by-name copy with every shape checked; the network config is read off the shapes.

use super::generator::Generator;
use super::NetworkConfig;
use crate::nn::checkpoint::{self, Checkpoint};
use crate::nn::layers::blur_kernel;
use crate::nn::named_vars;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// Why an import failed. Nothing is written in any of these cases.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file could not be read or decoded (missing, truncated, not safetensors or torch).
    #[error("{path}: {message}")]
    Unreadable {
        /// The input file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A tensor the generator needs is absent.
    #[error("{path}: missing key `{key}` (expected shape {expected:?})")]
    MissingKey {
        /// The input file.
        path: PathBuf,
        /// rosinality's name.
        key: String,
        /// The shape Plume expects.
        expected: Vec<i64>,
    },
    /// A tensor has another shape than the config read off the file implies.
    #[error("{path}: `{key}` has shape {found:?}, expected {expected:?}")]
    WrongShape {
        /// The input file.
        path: PathBuf,
        /// rosinality's name.
        key: String,
        /// The shape in the file.
        found: Vec<i64>,
        /// The shape Plume expects.
        expected: Vec<i64>,
    },
    /// The state dict is not a rosinality StyleGAN2 generator Plume can build.
    #[error("{path}: {message}")]
    UnsupportedConfig {
        /// The input file.
        path: PathBuf,
        /// What does not fit.
        message: String,
    },
    /// Writing the output failed.
    #[error(transparent)]
    Write(#[from] checkpoint::CheckpointError),
}

pub use plume_jobs::{GeneratorFormat, ImportGeneratorConfig};

/// The largest input read (a 1024 px StyleGAN2 with D and optimizer state is about 1 GB).
pub const MAX_IMPORT_BYTES: u64 = 4 << 30;

/// Python run by the venv's torch to turn a `.pt` into safetensors: a checkpoint's `g_ema`
/// (else `g`) or a bare state dict. `weights_only` unpickling, with argparse's Namespace
/// allowed because rosinality's `train.py` stores its `args` beside the weights.
const PT_TO_SAFETENSORS: &str = r#"
import argparse, sys, torch
from safetensors.torch import save_file
torch.serialization.add_safe_globals([argparse.Namespace])
obj = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
if isinstance(obj, dict) and "g_ema" in obj:
    obj = obj["g_ema"]
elif isinstance(obj, dict) and "g" in obj:
    obj = obj["g"]
if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
    sys.exit("not a state dict, nor a checkpoint holding g_ema or g")
save_file({k: v.float().contiguous() for k, v in obj.items()}, sys.argv[2])
"#;

/// Reads the generator's state dict from `.safetensors` (optionally `g_ema.`/`g.`-prefixed)
/// or `.pt` (through `$PLUME_VENV/bin/python`).
pub fn read_state_dict(path: &Path) -> Result<HashMap<String, Tensor>, ImportError> {
    let unreadable = |message: String| ImportError::Unreadable {
        path: path.to_owned(),
        message,
    };
    let len = std::fs::metadata(path)
        .map_err(|e| unreadable(e.to_string()))?
        .len();
    if len > MAX_IMPORT_BYTES {
        return Err(unreadable(format!(
            "{len} bytes is over the {MAX_IMPORT_BYTES}-byte import limit"
        )));
    }
    let is_pt = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("pt" | "pth" | "ckpt")
    );
    let tensors = if is_pt {
        let tmp = tempfile::Builder::new()
            .suffix(".safetensors")
            .tempfile()
            .map_err(|e| unreadable(e.to_string()))?;
        let venvs = crate::venv::venv_dirs();
        let python = venvs
            .iter()
            .map(|v| v.join("bin/python"))
            .find(|p| p.is_file())
            .unwrap_or_else(|| venvs[0].join("bin/python"));
        let out = std::process::Command::new(&python)
            .arg("-c")
            .arg(PT_TO_SAFETENSORS)
            .arg(path)
            .arg(tmp.path())
            .output()
            .map_err(|e| {
                unreadable(format!(
                    "reading a .pt needs PyTorch: could not run {} ({e}); set PLUME_VENV or convert to .safetensors",
                    python.display()
                ))
            })?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let last = err.lines().last().unwrap_or("torch.load failed");
            return Err(unreadable(format!("torch could not read it: {last}")));
        }
        Tensor::read_safetensors(tmp.path()).map_err(|e| unreadable(e.to_string()))?
    } else {
        let bytes = std::fs::read(path).map_err(|e| unreadable(e.to_string()))?;
        safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
            unreadable(format!(
                "not a valid safetensors file (truncated or corrupt): {e}"
            ))
        })?;
        Tensor::read_safetensors(path).map_err(|e| unreadable(e.to_string()))?
    };
    let mut map: HashMap<String, Tensor> = tensors.into_iter().collect();
    for prefix in ["g_ema.", "g."] {
        if map.keys().any(|k| k.starts_with(prefix)) {
            map = map
                .into_iter()
                .filter_map(|(k, v)| k.strip_prefix(prefix).map(|s| (s.to_string(), v)))
                .collect();
            break;
        }
    }
    Ok(map)
}

/// The Plume network config a rosinality state dict implies: resolution from the number of
/// toRGB layers, w/z sizes and mapping depth from `style.*`, and the channel table, which
/// must be Plume's `min(channel_max, channel_base / res)` (rosinality's is, for every
/// channel multiplier).
pub fn infer_config(
    path: &Path,
    sd: &HashMap<String, Tensor>,
) -> Result<NetworkConfig, ImportError> {
    let unsupported = |message: String| ImportError::UnsupportedConfig {
        path: path.to_owned(),
        message,
    };
    let shape = |key: &str| -> Result<Vec<i64>, ImportError> {
        sd.get(key)
            .map(Tensor::size)
            .ok_or_else(|| ImportError::MissingKey {
                path: path.to_owned(),
                key: key.into(),
                expected: vec![],
            })
    };
    let mapping_layers = (1..)
        .take_while(|i| sd.contains_key(&format!("style.{i}.weight")))
        .count();
    if mapping_layers == 0 {
        return Err(unsupported(
            "no `style.1.weight`: not a rosinality StyleGAN2 generator (keys like `style.1.weight`, `convs.0.conv.weight`)".into(),
        ));
    }
    let first = shape("style.1.weight")?;
    let (w_dim, z_dim) = (first[0], first[1]);
    let blocks = (0..)
        .take_while(|i| sd.contains_key(&format!("to_rgbs.{i}.conv.weight")))
        .count() as u32;
    let resolution = 1u32 << (blocks + 2);
    let mut table = vec![(4u32, shape("input.input")?[1])];
    for i in 0..blocks {
        table.push((8 << i, shape(&format!("convs.{}.conv.weight", 2 * i))?[1]));
    }
    let channel_max = table.iter().map(|t| t.1).max().unwrap_or(1);
    // The highest resolution below the cap fixes the base; if none is, any base at or above
    // channel_max * resolution gives the same table.
    let channel_base = table
        .iter()
        .rev()
        .find(|t| t.1 < channel_max)
        .map_or(channel_max * resolution as i64, |t| t.1 * t.0 as i64);
    let cfg = NetworkConfig {
        resolution,
        z_dim,
        w_dim,
        mapping_layers,
        channel_base,
        channel_max,
        input: plume_jobs::MappingInput::Latent,
    };
    if let Some((res, c)) = table.iter().find(|(r, c)| cfg.channels(*r) != *c) {
        return Err(unsupported(format!(
            "channels per resolution {table:?} are not min(max, base / res) for any base ({res} px has {c}, the table's rule gives {})",
            cfg.channels(*res)
        )));
    }
    cfg.validate().map_err(|e| unsupported(e.to_string()))?;
    Ok(cfg)
}

/// Copies a rosinality state dict into a fresh Plume generator, checking every name and shape.
/// The blur kernels must be StyleGAN2's [1, 3, 3, 1]; keys Plume does not know are errors (a
/// different architecture, not something to drop silently).
pub fn load_into(
    path: &Path,
    sd: &HashMap<String, Tensor>,
    vs: &VarStore,
) -> Result<(), ImportError> {
    let ours = named_vars(vs);
    let mut used = std::collections::HashSet::new();
    for (name, var) in &ours {
        if name == "w_avg" {
            continue; // Plume's tracked mean; estimated below.
        }
        let src = sd.get(name).ok_or_else(|| ImportError::MissingKey {
            path: path.to_owned(),
            key: name.clone(),
            expected: var.size(),
        })?;
        if src.size() != var.size() {
            return Err(ImportError::WrongShape {
                path: path.to_owned(),
                key: name.clone(),
                found: src.size(),
                expected: var.size(),
            });
        }
        tch::no_grad(|| {
            var.shallow_clone()
                .copy_(&src.to_kind(Kind::Float).to_device(var.device()))
        });
        used.insert(name.as_str());
    }
    for (key, t) in sd {
        if used.contains(key.as_str()) {
            continue;
        }
        let gain = if key.ends_with(".conv.blur.kernel") || key.ends_with(".upsample.kernel") {
            4.0
        } else if key.ends_with(".kernel") {
            1.0
        } else {
            return Err(ImportError::UnsupportedConfig {
                path: path.to_owned(),
                message: format!(
                    "unexpected key `{key}` {:?}: not part of the StyleGAN2 generator Plume builds",
                    t.size()
                ),
            });
        };
        let expected = blur_kernel(gain, Device::Cpu);
        if t.size() != expected.size()
            || (t.to_kind(Kind::Float) - &expected)
                .abs()
                .max()
                .double_value(&[])
                > 1e-6
        {
            return Err(ImportError::UnsupportedConfig {
                path: path.to_owned(),
                message: format!("`{key}` is not StyleGAN2's [1, 3, 3, 1] blur kernel"),
            });
        }
    }
    Ok(())
}

/// What an import wrote.
pub struct Imported {
    /// The network config read off the file.
    pub network: NetworkConfig,
    /// Tensors copied.
    pub tensors: usize,
    /// For a Plume checkpoint: its objective, images seen and training job, as recorded.
    pub trained: Option<String>,
}

/// Imports `input` into a Plume generator checkpoint at `out` (kind `pretrain-generator`,
/// step 0, only the EMA generator: it cannot resume GAN training, which needs D). `w_avg` is
/// estimated from 10 000 seeded samples of the mapping network.
/// With `resolution`, a generator of another size is refused.
pub fn import(
    format: GeneratorFormat,
    input: &Path,
    resolution: Option<u32>,
    out: &Path,
) -> Result<Imported, ImportError> {
    if format == GeneratorFormat::Plume {
        return import_plume(input, resolution, out);
    }
    let sd = read_state_dict(input)?;
    let network = infer_config(input, &sd)?;
    if let Some(res) = resolution.filter(|&r| r != network.resolution) {
        return Err(ImportError::UnsupportedConfig {
            path: input.to_owned(),
            message: format!(
                "the generator draws {} px images, the dataset is {res} px",
                network.resolution
            ),
        });
    }
    let vs = VarStore::new(Device::Cpu);
    let g = Generator::new(&vs.root(), &network);
    load_into(input, &sd, &vs)?;
    tch::no_grad(|| {
        tch::manual_seed(0x5747);
        let z = Tensor::randn([10_000, network.z_dim], (Kind::Float, Device::Cpu));
        g.w_avg
            .shallow_clone()
            .copy_(&g.mapping.forward(&z).mean_dim(0, false, None));
    });
    let mut meta = BTreeMap::new();
    meta.insert(
        "generator.network".into(),
        serde_json::to_string(&network).expect("serialisable"),
    );
    meta.insert("generator.num_ws".into(), g.num_ws().to_string());
    meta.insert(
        "generator.imported_from".into(),
        format!("rosinality:{}", input.display()),
    );
    let parts = checkpoint::Parts::weights(checkpoint::prefixed("G_ema.", &named_vars(&vs)));
    checkpoint::save(out, "pretrain-generator", 0, &meta, &parts)?;
    Ok(Imported {
        network,
        tensors: parts.weights.len(),
        trained: None,
    })
}

/// Copies the EMA generator of a Plume `pretrain-generator` checkpoint, with its metadata
/// (network, objective, provenance), into a fresh weights-only checkpoint at `out`.
fn import_plume(
    input: &Path,
    resolution: Option<u32>,
    out: &Path,
) -> Result<Imported, ImportError> {
    let unsupported = |message: String| ImportError::UnsupportedConfig {
        path: input.to_owned(),
        message,
    };
    let ckpt = Checkpoint::load(input).map_err(|e| unsupported(e.to_string()))?;
    ckpt.expect_kind("pretrain-generator")
        .map_err(|e| unsupported(e.to_string()))?;
    let network: NetworkConfig = ckpt
        .meta("generator.network")
        .map_err(|e| unsupported(e.to_string()))
        .and_then(|m| serde_json::from_str(m).map_err(|e| unsupported(e.to_string())))?;
    if let Some(res) = resolution.filter(|&r| r != network.resolution) {
        return Err(unsupported(format!(
            "the generator draws {} px images, the dataset is {res} px",
            network.resolution
        )));
    }
    // Build the generator and restore into it: a checkpoint missing a tensor, or with one of
    // the wrong shape, is refused here rather than in a later job.
    let vs = VarStore::new(Device::Cpu);
    let _g = Generator::new(&vs.root(), &network);
    ckpt.restore("G_ema.", &named_vars(&vs))
        .map_err(|e| unsupported(e.to_string()))?;
    let mut meta: BTreeMap<String, String> = ckpt
        .meta
        .iter()
        .filter(|(k, _)| k.starts_with("generator.") || k.starts_with("provenance."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    meta.insert(
        "generator.imported_from".into(),
        format!("plume:{}", input.display()),
    );
    let parts = checkpoint::Parts::weights(checkpoint::prefixed("G_ema.", &named_vars(&vs)));
    checkpoint::save(out, "pretrain-generator", 0, &meta, &parts)?;
    let recorded = |key: &str| {
        ckpt.meta
            .get(key)
            .map(String::as_str)
            .unwrap_or("unrecorded")
    };
    Ok(Imported {
        network,
        tensors: parts.weights.len(),
        trained: Some(format!(
            "objective {}, {} images, step {}",
            recorded("generator.objective"),
            recorded("generator.images_seen"),
            ckpt.step
        )),
    })
}

/// Runs `import-generator`: the import as a job, so an experiment can start from a published
/// generator; its checkpoint is registered like a trained generator's.
pub fn run(
    cfg: &ImportGeneratorConfig,
    reporter: &mut dyn crate::job::Reporter,
) -> anyhow::Result<crate::job::Outcome> {
    let resolution = match &cfg.dataset {
        plume_jobs::DatasetSpec::SyntheticBirds { resolution, .. } => Some(*resolution),
        // A CUB-layout directory has images of any size: every job resizes them.
        plume_jobs::DatasetSpec::Cub { .. } => None,
    };
    let path = reporter.checkpoint_path(0)?;
    let done = import(cfg.from, &cfg.path, resolution, &path)?;
    reporter.log(&format!(
        "imported {} ({} tensors, {} px, w_dim {}, input {:?})",
        cfg.path.display(),
        done.tensors,
        done.network.resolution,
        done.network.w_dim,
        done.network.input
    ));
    if let Some(how) = &done.trained {
        reporter.log(&format!("how it was trained: {how}"));
    }
    reporter.checkpoint_written(0, &path)?;
    reporter.finish("import-generator finished");
    Ok(crate::job::Outcome::Completed { step: 0 })
}
