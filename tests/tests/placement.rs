//! Placement and priorities through real processes (Postgres, `plume serve`, `plume-worker`s
//! with simulated GPUs, the `plume` CLI): a 2-GPU run never lands on a 1-GPU worker, a run no
//! connected worker can host waits with its reason, one worker with two slots runs two runs
//! at once, a higher priority goes first and equal priorities alternate.

use plume_coordinator::states::RunState;
use plume_coordinator::store::Store;
use plume_system_tests::{plume, served, wait_for, worker_with};
use std::path::Path;

fn submit(url: &str, dir: &Path, name: &str, yaml: &str) {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    let (ok, out) = plume(url, &["submit", &path.display().to_string()]);
    assert!(ok, "{out}");
}

async fn states(store: &Store, experiment: &str) -> Vec<(String, RunState)> {
    sqlx::query_as(
        "SELECT r.name, r.state FROM runs r JOIN experiments e ON e.id = r.experiment_id \
         WHERE e.name = $1 ORDER BY r.id",
    )
    .bind(experiment)
    .fetch_all(&store.pool)
    .await
    .unwrap()
}

/// Whether `n` runs of experiment `place` named `prefix...` succeeded.
async fn succeeded(store: &Store, prefix: &str, n: usize) -> bool {
    states(store, "place")
        .await
        .iter()
        .filter(|(name, s)| name.starts_with(prefix) && *s == RunState::Succeeded)
        .count()
        == n
}

async fn workers_registered(store: &Store, n: i64) -> bool {
    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM workers")
        .fetch_one(&store.pool)
        .await
        .unwrap()
        >= n
}

const PLACE: &str = "name: place
dataset: {kind: synthetic-birds, images: 200, resolution: 32, seed: 3}
runs:
  - {name: two, job: probe, steps: 3, step_ms: 150, checkpoint_every: 0, resources: {gpus: 2}}
  - {name: one, job: probe, steps: 3, step_ms: 150, checkpoint_every: 0, resources: {gpus: 1}}
  - {name: big, job: probe, steps: 1, checkpoint_every: 0, resources: {gpus: 1, min_gpu_memory_gb: 80}}
sweep:
  seed: [1, 2, 3]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_land_only_where_their_gpus_fit() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let served = served(d).await;
    let (store, url) = (&served.store, served.url.as_str());
    let _small = worker_with(url, "one-gpu", &d.join("w1"), &["--simulate-gpus", "1x24"]);
    wait_for("the 1-GPU worker", 30, || workers_registered(store, 1)).await;
    submit(url, d, "place", PLACE);
    // With only the 1-GPU worker connected, the 2-GPU and 80 GB runs wait and say why.
    wait_for("the 1-GPU runs", 60, || succeeded(store, "one", 3)).await;
    let (_, show) = plume(url, &["show", "place"]);
    assert!(
        show.contains(
            "waiting: needs 2 GPU(s) on one worker; the connected workers have at most 1"
        ),
        "{show}"
    );
    assert!(
        show.contains("waiting: needs 1 GPU(s) of at least 80.0 GB on one worker"),
        "{show}"
    );
    assert!(show.contains("queued #"), "{show}");

    let _big = worker_with(url, "two-gpus", &d.join("w2"), &["--simulate-gpus", "2x24"]);
    wait_for("the 2-GPU runs", 60, || succeeded(store, "two", 3)).await;
    let hosts: Vec<(String, String, Vec<String>)> = sqlx::query_as(
        "SELECT r.name, w.name, r.devices FROM attempts a JOIN runs r ON r.id = a.run_id \
         JOIN workers w ON w.id = a.worker_id WHERE r.name LIKE 'two%'",
    )
    .fetch_all(&store.pool)
    .await
    .unwrap();
    assert_eq!(hosts.len(), 3, "{hosts:?}");
    for (run, worker, _) in &hosts {
        assert_eq!(worker, "two-gpus", "{run} ran on {worker}");
    }
    // The 80 GB run still waits: no worker has such a GPU.
    let big: Vec<(String, RunState)> = states(store, "place")
        .await
        .into_iter()
        .filter(|(n, _)| n.starts_with("big"))
        .collect();
    assert!(big.iter().all(|(_, s)| *s == RunState::Queued), "{big:?}");
}

/// Four quick runs at priority `p`.
fn quick(name: &str, p: i32, runs: usize) -> String {
    let seeds: Vec<String> = (1..=runs).map(|s| s.to_string()).collect();
    format!(
        "name: {name}
dataset: {{kind: synthetic-birds, images: 200, resolution: 32, seed: 3}}
priority: {p}
runs:
  - {{name: r, job: probe, steps: 2, step_ms: 50, checkpoint_every: 0}}
sweep:
  seed: [{}]
",
        seeds.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_goes_first_equal_priorities_alternate_and_slots_run_together() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let served = served(d).await;
    let (store, url) = (&served.store, served.url.as_str());
    submit(url, d, "a", &quick("a", 0, 4));
    submit(url, d, "b", &quick("b", 0, 4));
    submit(url, d, "c", &quick("c", 5, 2));
    // Before any worker: c's runs are next, then a and b alternate.
    let (_, ls) = plume(url, &["ls"]);
    let next = |name: &str| {
        ls.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .and_then(|l| l.split_whitespace().last())
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(
        (next("c"), next("a"), next("b")),
        ("#1".into(), "#3".into(), "#4".into()),
        "{ls}"
    );
    let (_, show) = plume(url, &["show", "b"]);
    assert!(show.contains("queued #4"), "{show}");
    assert!(show.contains("waiting: no worker is connected"), "{show}");

    let w = worker_with(url, "solo", &d.join("w1"), &[]);
    wait_for("every run", 60, || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM runs WHERE state = 'succeeded'")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        n == 10
    })
    .await;
    drop(w);
    let order: Vec<String> = sqlx::query_scalar(
        "SELECT e.name FROM attempts a JOIN runs r ON r.id = a.run_id \
         JOIN experiments e ON e.id = r.experiment_id ORDER BY a.started_at, a.run_id",
    )
    .fetch_all(&store.pool)
    .await
    .unwrap();
    assert_eq!(
        order,
        ["c", "c", "a", "b", "a", "b", "a", "b", "a", "b"],
        "priority first, then equal priorities alternate"
    );

    // One worker with two slots runs two runs at once.
    let _w = worker_with(url, "pair", &d.join("w2"), &["--slots", "2"]);
    submit(
        url,
        d,
        "pair",
        &quick("pair", 0, 2).replace("step_ms: 50", "step_ms: 400"),
    );
    wait_for("the pair", 60, || async {
        states(store, "pair")
            .await
            .iter()
            .all(|(_, s)| *s == RunState::Succeeded)
    })
    .await;
    let spans: Vec<(String, f64, f64, Vec<String>)> = sqlx::query_as(
        "SELECT w.name, extract(epoch FROM a.started_at)::float8, \
         extract(epoch FROM a.ended_at)::float8, r.devices FROM attempts a \
         JOIN runs r ON r.id = a.run_id JOIN workers w ON w.id = a.worker_id \
         JOIN experiments e ON e.id = r.experiment_id WHERE e.name = 'pair' ORDER BY a.run_id",
    )
    .fetch_all(&store.pool)
    .await
    .unwrap();
    assert_eq!(spans.len(), 2, "{spans:?}");
    assert!(spans.iter().all(|s| s.0 == "pair"), "{spans:?}");
    assert!(
        spans[1].1 < spans[0].2 && spans[0].1 < spans[1].2,
        "the two runs overlap in time: {spans:?}"
    );
    let mut devices: Vec<String> = spans.iter().flat_map(|s| s.3.clone()).collect();
    devices.sort();
    assert_eq!(devices, ["cpu:0", "cpu:1"], "each holds its own slot");
}
