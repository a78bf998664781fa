//! The cache of rendered datasets, and opening a [`DatasetSpec`] through it.

use super::synth::{write_dataset, SynthSpec, RENDERER_VERSION};
use super::Dataset;
use plume_jobs::DatasetSpec;
use std::path::{Path, PathBuf};

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
                    check_free_space(&cache, *images, *resolution)?;
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

/// Disk a synthetic dataset takes: three small files per image (image, part mask, captions),
/// each at least a 4 KiB block, plus the PNGs' pixels (measured: 3.5 KB of file bytes per
/// 32 px image).
pub fn synthetic_bytes(images: u32, resolution: u32) -> u64 {
    images as u64 * (3 * 4096 + 2 * resolution as u64 * resolution as u64)
}

/// Refuses to start rendering a dataset the disk under `dir` cannot hold (with 10% to
/// spare), before anything is written.
fn check_free_space(dir: &Path, images: u32, resolution: u32) -> anyhow::Result<()> {
    let need = synthetic_bytes(images, resolution);
    let Some(free) = free_bytes(dir) else {
        return Ok(());
    };
    anyhow::ensure!(
        free >= need + need / 10,
        "dataset.images {images} at {resolution} px needs about {:.1} GB of disk; {} has {:.1} GB free",
        need as f64 / 1e9,
        dir.display(),
        free as f64 / 1e9
    );
    Ok(())
}

/// Bytes available to this user on the file system holding `dir` (None if it cannot be read).
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a NUL-terminated path and `st` a buffer statvfs fills on success.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled the struct.
    let st = unsafe { st.assume_init() };
    // fsblkcnt_t and c_ulong are u64 here but narrower on other targets.
    #[allow(clippy::unnecessary_cast)]
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}
