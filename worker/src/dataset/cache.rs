//! The cache of rendered datasets, and opening a [`DatasetSpec`] through it.

use super::synth::{write_dataset, SynthSpec, RENDERER_VERSION};
use super::Dataset;
use plume_jobs::DatasetSpec;
use std::path::PathBuf;

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

/// Opening a [`DatasetSpec`] needs the loader and renderer, which live here (the spec itself
/// is in `plume-jobs`, where the coordinator can validate it without libtorch).
pub trait OpenDataset {
    /// Opens the dataset, rendering a synthetic one into the cache first if needed.
    fn open(&self) -> anyhow::Result<Dataset>;
}

impl OpenDataset for DatasetSpec {
    /// Opens the dataset, rendering a synthetic one into the cache first if needed. Rendering
    /// goes to a temporary directory that is renamed into place, so concurrent workers and
    /// crashes never leave a half dataset under the final name.
    fn open(&self) -> anyhow::Result<Dataset> {
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
