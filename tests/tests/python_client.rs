//! The Python client (`python/`, installed into the set-up venv by `scripts/setup`) end to
//! end: `python/tests/e2e.py` drives a real coordinator and worker through it.

use plume_system_tests::{served, worker, USER};
use std::path::PathBuf;
use std::process::Command;

/// The set-up venv's Python: `$PLUME_VENV`, else the checkout's `.venv`.
fn venv_python() -> PathBuf {
    let venv = std::env::var_os("PLUME_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv"));
    venv.join("bin/python")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_submits_waits_and_reads_results() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let served = served(d).await;
    let _w = worker(served.port, "w", &d.join("w"));
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../python/tests/e2e.py");
    let out = Command::new(venv_python())
        .arg(&script)
        .arg(d)
        .env("PLUME_COORDINATOR", &served.url)
        .env("PLUME_TOKEN", USER)
        .current_dir(d)
        .output()
        .expect("the venv's python (run scripts/setup)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("every check passed"), "{text}");
}
