//! `plume-worker --idle-exit`: a worker with nothing to do exits by itself (status 0) after
//! the given time, so a batch allocation is handed back; one bad `--token-file` is refused.

use plume_system_tests::{bin, served, WORKER};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_exits_after_idle_exit_seconds() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let served = served(d).await;
    let url = served.url.clone();
    let token = d.join("token");
    std::fs::write(&token, format!("{WORKER}\n")).unwrap();
    let started = Instant::now();
    let out = Command::new(bin("plume-worker"))
        .args(["--coordinator", &url, "--device", "cpu", "--idle-exit", "2"])
        .arg("--token-file")
        .arg(&token)
        .arg("--work-dir")
        .arg(d.join("w"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let took = started.elapsed();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("registered as worker"), "{log}");
    assert!(log.contains("(--idle-exit)"), "{log}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(30),
        "{took:?}"
    );

    // An empty token file is an error before anything connects.
    let empty = d.join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let out = Command::new(bin("plume-worker"))
        .args(["--coordinator", &url, "--token-file"])
        .arg(&empty)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("holds no token"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
