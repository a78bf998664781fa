//! `plume up --submit` as a user runs it: a signal while it follows an experiment stops the
//! workers, the coordinator and the private Postgres it started, and says where the
//! experiment is kept. Nothing is left running behind the user's back.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn a_signal_during_submit_stops_everything_it_started() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(
        dir.join("e.yaml"),
        "name: sig\ndataset: {kind: synthetic-birds, images: 200, resolution: 32, seed: 3}\nruns:\n  - {name: judge, job: train-judge, steps: 100000, batch: 4, net: {channels: [8, 8, 8], hidden: 16}}\n",
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("up.log")).unwrap();
    let mut up = plume_system_tests::Kill(
        Command::new(plume_system_tests::bin("plume"))
            .args([
                "up",
                "--workers",
                "1",
                "--http-port",
                "0",
                "--submit",
                "e.yaml",
            ])
            .current_dir(dir)
            .env_remove("DATABASE_URL")
            .env("PLUME_DATA_DIR", dir.join("data"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    // Ours are the processes whose command line names this directory: the worker (its
    // work dir) and the private Postgres (its data dir).
    let ours = || {
        let out = Command::new("pgrep")
            .args(["-f", dir.to_str().unwrap()])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(dir.join("up.log")).unwrap_or_default();
        if text.contains("running: judge") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the run never started:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(ours() >= 2, "expected a worker and a private Postgres");
    let pid = up.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = loop {
        if let Some(s) = up.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "plume up did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = std::fs::read_to_string(dir.join("up.log")).unwrap();
    assert!(!status.success(), "an interrupted follow is not a success");
    assert!(
        text.contains("interrupted; the experiment is kept in"),
        "{text}"
    );
    // Children get a moment to exit after their parent.
    let deadline = Instant::now() + Duration::from_secs(20);
    while ours() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(ours(), 0, "processes left running after plume up stopped");
}
