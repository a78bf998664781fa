//! Every documented job file parses and validates (so the docs cannot rot silently).

use plume_worker::runner::JobSpec;

#[test]
fn every_job_file_in_experiments_parses() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../experiments/jobs");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            JobSpec::from_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
        }
    }
    assert!(
        seen >= 10,
        "expected the documented job files, found {seen}"
    );
}
