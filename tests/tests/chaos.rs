//! The short chaos run CI makes: `plume chaos` with a few of each fault on a small
//! experiment (the full one, 20/10/3/1 faults, is `plume chaos` with its defaults; see
//! docs/operations.md). Every goal must be met: all runs finish, no point lost or duplicated,
//! no stale write accepted, and `best` is the argmax over the raw points.

use plume_system_tests::bin;
use std::process::Command;

#[test]
fn a_short_chaos_run_meets_every_goal() {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("report.json");
    let out = Command::new(bin("plume"))
        .args([
            "chaos",
            "--runs",
            "3",
            "--steps",
            "800",
            "--worker-kills",
            "3",
        ])
        .args([
            "--coordinator-kills",
            "2",
            "--pg-restarts",
            "1",
            "--stops",
            "1",
        ])
        .args(["--gap-ms", "1000", "--seed", "7", "--timeout-secs", "600"])
        .arg("--json")
        .arg(&json)
        .arg("--dir")
        .arg(tmp.path().join("run"))
        .env("PLUME_WORKER_BIN", bin("plume-worker"))
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{table}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(r["injected"], r["planned"], "{table}");
    assert_eq!(r["injected"]["stops"], 1);
    assert_eq!(r["runs"], r["succeeded"], "{table}");
    assert_eq!(r["runs"], 5);
    for zero in ["points_lost", "duplicate_points", "stale_writes_accepted"] {
        assert_eq!(r[zero], 0, "{zero}: {table}");
    }
    assert_eq!(r["best_matches"], true, "{table}");
    // The faults cost attempts: the run really was disturbed.
    assert!(r["attempts"].as_u64().unwrap() > 5, "{table}");
    assert!(table.contains("| runs finished | 100% |"), "{table}");
}
