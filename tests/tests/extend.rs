//! Reruns and extensions reuse what already succeeded, through real processes (Postgres,
//! `plume serve`, a `plume-worker`, the `plume` CLI): a `probe` stage stands in for the
//! generator, and every attempt records the upstream checkpoint ids it was handed, so the test
//! checks the ids themselves: a rerun run and a run added by `--extend` get the stage's
//! checkpoint, and the stage is never trained again.

use plume_coordinator::states::{ExperimentState, RunState};
use plume_coordinator::store::Store;
use plume_system_tests::{plume, served, wait_for, worker};
use std::path::Path;

/// A stage and two runs over a two-point sweep; `bad` fails at step 2 on every attempt.
const FIRST: &str = "name: ext
dataset: {kind: synthetic-birds, images: 200, resolution: 32, seed: 3}
stages:
  base: {job: probe, steps: 3, checkpoint_every: 3}
runs:
  - {name: p, job: probe, needs: [base], steps: 2, checkpoint_every: 0}
  - {name: bad, job: probe, needs: [base], steps: 2, checkpoint_every: 0, fail_at: 2}
sweep:
  start: [0.1, 0.2]
objective: {metric: probe/score, mode: max}
";

/// The first file with a third sweep point.
fn extended() -> String {
    FIRST.replace("start: [0.1, 0.2]", "start: [0.1, 0.2, 0.3]")
}

/// `(attempt, inputs)` of every attempt of a run, in order.
async fn attempts(store: &Store, run: &str) -> Vec<(i32, Vec<(String, i64)>)> {
    sqlx::query_as::<_, (i32, sqlx::types::Json<Vec<(String, i64)>>)>(
        "SELECT a.attempt, a.inputs FROM attempts a JOIN runs r ON r.id = a.run_id \
         WHERE r.name = $1 ORDER BY a.attempt",
    )
    .bind(run)
    .fetch_all(&store.pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(a, i)| (a, i.0))
    .collect()
}

async fn experiment_ended(store: &Store) -> bool {
    sqlx::query_scalar::<_, ExperimentState>("SELECT state FROM experiments WHERE name = 'ext'")
        .fetch_one(&store.pool)
        .await
        .unwrap()
        .is_final()
}

async fn run_state(store: &Store, run: &str) -> RunState {
    sqlx::query_scalar("SELECT state FROM runs WHERE name = $1")
        .bind(run)
        .fetch_one(&store.pool)
        .await
        .unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerun_and_extend_reuse_the_stage_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let served = served(d).await;
    let (store, url, port) = (&served.store, served.url.as_str(), served.port);
    let first = write(d, "first.yaml", FIRST);
    let (ok, out) = plume(url, &["submit", &first]);
    assert!(ok, "{out}");
    let _w = worker(port, "w", &d.join("w"));
    wait_for("the experiment to end", 60, || experiment_ended(store)).await;

    // The stage ran once and left one checkpoint; each run got that checkpoint's id.
    let base_ckpt: i64 = sqlx::query_scalar(
        "SELECT c.id FROM checkpoints c JOIN runs r ON r.id = c.run_id WHERE r.name = 'base'",
    )
    .fetch_one(&store.pool)
    .await
    .unwrap();
    let stage = vec![("upstream".to_string(), base_ckpt)];
    assert_eq!(attempts(store, "base").await, [(1, vec![])]);
    assert_eq!(attempts(store, "p@start=1e-1").await, [(1, stage.clone())]);
    assert_eq!(run_state(store, "bad@start=2e-1").await, RunState::Failed);

    // `plume rerun --failed`: the failed runs get a fresh attempt with the same input.
    let (ok, out) = plume(url, &["rerun", "ext", "--failed"]);
    assert!(ok, "{out}");
    assert!(out.contains("requeued bad@start=1e-1"), "{out}");
    wait_for("the rerun to end", 60, || async {
        run_state(store, "bad@start=1e-1").await == RunState::Failed
            && attempts(store, "bad@start=1e-1").await.len() == 2
            && experiment_ended(store).await
    })
    .await;
    assert_eq!(
        attempts(store, "bad@start=1e-1").await,
        [(1, stage.clone()), (2, stage.clone())]
    );

    // An extension that changes a run it already has is refused, listing the conflict, and
    // changes nothing.
    let conflicting = write(
        d,
        "conflict.yaml",
        &extended().replace(
            "steps: 3, checkpoint_every: 3",
            "steps: 4, checkpoint_every: 3",
        ),
    );
    let (ok, out) = plume(url, &["submit", "--extend", "ext", &conflicting]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("run base exists with a different config (steps differs)"),
        "{out}"
    );
    assert!(out.contains("nothing was changed"), "{out}");
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM runs")
        .fetch_one(&store.pool)
        .await
        .unwrap();
    assert_eq!(runs, 5, "base, 2 p points, 2 bad points");

    // A dry run says what would happen and stores nothing.
    let more = write(d, "more.yaml", &extended());
    let (ok, out) = plume(url, &["submit", "--extend", "ext", "--dry-run", &more]);
    assert!(ok, "{out}");
    assert!(out.contains("would add 2 run(s), 5 reused"), "{out}");
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM runs")
        .fetch_one(&store.pool)
        .await
        .unwrap();
    assert_eq!(runs, 5);

    // The extension adds the new point of each sweep and reuses everything else: the new
    // runs start at once from the stage's checkpoint, and the stage is not trained again.
    let (ok, out) = plume(url, &["submit", "--extend", "ext", &more]);
    assert!(ok, "{out}");
    assert!(out.contains("added 2 run(s), 5 reused"), "{out}");
    assert!(out.contains("+ p@start=3e-1"), "{out}");
    wait_for("the extension to end", 60, || async {
        run_state(store, "p@start=3e-1").await.is_final() && experiment_ended(store).await
    })
    .await;
    assert_eq!(run_state(store, "p@start=3e-1").await, RunState::Succeeded);
    assert_eq!(attempts(store, "p@start=3e-1").await, [(1, stage.clone())]);
    assert_eq!(
        attempts(store, "base").await,
        [(1, vec![])],
        "base ran once"
    );
    let (_, show) = plume(url, &["show", "ext"]);
    assert!(
        show.contains(&format!("inputs: upstream = checkpoint {base_ckpt}")),
        "{show}"
    );
}
