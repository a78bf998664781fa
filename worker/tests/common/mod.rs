//! Helpers shared by the process tests: one way to start `plume-worker` and run a job.
#![allow(dead_code)] // each test file uses a different subset

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Rendered datasets are cached here and shared by all tests (rendering is deterministic).
pub fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("plume-data")
}

/// `plume-worker` with the shared data cache.
pub fn worker() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_plume-worker"));
    c.env("PLUME_DATA_DIR", data_dir());
    c
}

/// Writes `yaml` to `dir/name.yaml`, runs it on the CPU into `dir/name`, asserts success and
/// returns the output directory.
pub fn run_job(dir: &Path, name: &str, yaml: &str) -> PathBuf {
    let job = dir.join(format!("{name}.yaml"));
    fs::write(&job, yaml).unwrap();
    let out = dir.join(name);
    let o = worker()
        .arg("run")
        .arg(&job)
        .arg("--out")
        .arg(&out)
        .args(["--device", "cpu"])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{name} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// The lines of a run's `metrics.jsonl`.
pub fn metrics(out: &Path) -> Vec<serde_json::Value> {
    fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
