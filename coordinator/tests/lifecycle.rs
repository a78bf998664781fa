//! The run lifecycle in the store, on a real PostgreSQL without any process: a stale attempt
//! cannot write (ingest, heartbeat, finish), a release requeues at once, a heartbeat after
//! its own Finish is no lost lease, and a failed run reruns with a fresh restart budget from
//! its checkpoint.

use plume_coordinator::pg::PrivatePostgres;
use plume_coordinator::states::{AttemptState, Outcome, RunState};
use plume_coordinator::store::{Beat, Claimant, Fence, Series, Store, StoreError};
use std::collections::BTreeMap;
use std::time::Duration;

async fn postgres(dir: std::path::PathBuf) -> PrivatePostgres {
    PrivatePostgres::start_in_background(dir).await.unwrap()
}

async fn state(store: &Store, exp: i64, run: &str) -> (RunState, i64, Option<i64>, i32) {
    sqlx::query_as("SELECT state, step, lease_worker, attempt FROM runs WHERE experiment_id = $1 AND name = $2")
        .bind(exp)
        .bind(run)
        .fetch_one(&store.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_attempt_cannot_write() {
    let tmp = tempfile::tempdir().unwrap();
    let pg = postgres(tmp.path().join("pg")).await;
    let store = Store::connect(&pg.url, Duration::from_secs(1))
        .await
        .unwrap();
    let exp = plume_coordinator::experiment::parse(
        "s.yaml",
        "name: s\ndataset: {kind: cub, path: x}\nruns:\n  - {name: a, job: train-judge, steps: 5}\nmax_restarts: 1\n",
    )
    .unwrap();
    store.submit(&exp, "s.yaml", "").await.unwrap();
    let kinds = vec!["train-judge".to_string()];
    let w1 = store
        .register_worker("w1", serde_json::json!({}))
        .await
        .unwrap();
    let w2 = store
        .register_worker("w2", serde_json::json!({}))
        .await
        .unwrap();
    let first = store
        .claim(&Claimant::one_slot(w1, &kinds))
        .await
        .unwrap()
        .unwrap();
    let mut batch = BTreeMap::new();
    batch.insert(
        "loss".to_string(),
        Series {
            steps: vec![1, 2],
            values: vec![0.5, 0.4],
        },
    );
    assert!(store.ingest(first.fence, 1, &batch).await.unwrap());
    assert!(
        !store.ingest(first.fence, 1, &batch).await.unwrap(),
        "a resent batch is not applied twice"
    );
    // The lease runs out; the run is requeued and claimed by another worker.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(store.reap_expired().await.unwrap(), 1);
    let second = store
        .claim(&Claimant::one_slot(w2, &kinds))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.fence.attempt, 2);
    // Everything the first attempt tries now is refused.
    let stale = Fence { ..first.fence };
    assert!(matches!(
        store.ingest(stale, 2, &batch).await,
        Err(StoreError::Stale { .. })
    ));
    assert!(matches!(
        store.heartbeat(stale, 3, 5).await,
        Err(StoreError::Stale { .. })
    ));
    assert!(matches!(
        store.finish(stale, Outcome::Succeeded, "", 5).await,
        Err(StoreError::Stale { .. })
    ));
    // The new attempt started from no checkpoint, so the old points are gone: one curve, no
    // duplicates once it reports.
    assert!(store.ingest(second.fence, 1, &batch).await.unwrap());
    let curve = store.curve(second.fence.run, "loss").await.unwrap();
    assert_eq!(curve.steps, vec![1, 2]);
    // A worker that shuts down releases its attempt: the run is queued again at once.
    store
        .finish(second.fence, Outcome::Released, "worker shutting down", 2)
        .await
        .unwrap();
    let third = store
        .claim(&Claimant::one_slot(w1, &kinds))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(third.fence.attempt, 3);
    store
        .finish(third.fence, Outcome::Succeeded, "ok", 5)
        .await
        .unwrap();
    // A heartbeat sent just before that Finish, arriving after it, finds a finished attempt,
    // not a lost lease (the worker must not be told its finished run was reassigned).
    assert_eq!(
        store.heartbeat(third.fence, 5, 5).await.unwrap(),
        Beat::Finished
    );
    let attempts = store.attempts(second.fence.run).await.unwrap();
    assert_eq!(
        attempts.iter().map(|a| a.state).collect::<Vec<_>>(),
        vec![
            AttemptState::Lost,
            AttemptState::Lost,
            AttemptState::Succeeded
        ]
    );
    assert!(attempts[1].message.starts_with("released by its worker"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_reruns_with_a_fresh_restart_budget_from_its_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let pg = postgres(tmp.path().join("pg")).await;
    let store = Store::connect(&pg.url, Duration::from_secs(1))
        .await
        .unwrap();
    let yaml = "name: r\ndataset: {kind: cub, path: x}\nstages:\n  judge: {job: train-judge, steps: 5}\n\
                runs:\n  - {name: gen, job: pretrain-generator, needs: [judge], steps: 5}\nmax_restarts: 1\n";
    let exp = plume_coordinator::experiment::parse("r.yaml", yaml).unwrap();
    let (exp_id, _) = store.submit(&exp, "r.yaml", yaml).await.unwrap();
    let kinds = vec!["train-judge".to_string(), "pretrain-generator".to_string()];
    let w = store
        .register_worker("w", serde_json::json!({}))
        .await
        .unwrap();
    let judge_state = || async { state(&store, exp_id, "judge").await.0 };
    // Attempt 1 writes a checkpoint, then its worker vanishes: requeued (restart 1 of 1).
    let first = store
        .claim(&Claimant::one_slot(w, &kinds))
        .await
        .unwrap()
        .unwrap();
    let ckpt =
        plume_coordinator::blobs::f32_checkpoint("train-judge", &[("w", vec![0u8; 16])], None);
    let (ckpt_id, _) = store.store_checkpoint(first.fence, 3, &ckpt).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(store.reap_expired().await.unwrap(), 1);
    assert_eq!(judge_state().await, RunState::Queued);
    // Attempt 2 vanishes too: no restarts remain, so the judge fails and takes `gen` with it.
    let second = store
        .claim(&Claimant::one_slot(w, &kinds))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.resume, Some((ckpt_id, 3)));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(store.reap_expired().await.unwrap(), 1);
    assert_eq!(judge_state().await, RunState::Failed);
    assert_eq!(state(&store, exp_id, "gen").await.0, RunState::Failed);
    // Rerun: both requeued, the judge queued, `gen` waiting for it.
    let requeued = store.rerun(exp_id, None, false).await.unwrap();
    assert_eq!(requeued, ["judge", "gen"]);
    assert_eq!(judge_state().await, RunState::Queued);
    assert_eq!(state(&store, exp_id, "gen").await.0, RunState::Pending);
    // The judge resumes from its checkpoint, and has a fresh budget: one lost attempt is
    // again a restart, not a failure.
    let third = store
        .claim(&Claimant::one_slot(w, &kinds))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(third.fence.attempt, 3);
    assert_eq!(third.resume, Some((ckpt_id, 3)));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(store.reap_expired().await.unwrap(), 1);
    assert_eq!(judge_state().await, RunState::Queued);
    let fourth = store
        .claim(&Claimant::one_slot(w, &kinds))
        .await
        .unwrap()
        .unwrap();
    store
        .finish(fourth.fence, Outcome::Succeeded, "ok", 5)
        .await
        .unwrap();
    // Its success releases `gen`, which gets the judge's checkpoint as its input.
    let gen = store
        .claim(&Claimant::one_slot(w, &kinds))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(gen.run_name, "gen");
    assert_eq!(gen.inputs, [("judge".to_string(), ckpt_id)]);
    // A run that did not fail is refused by name, with the reason.
    match store.rerun(exp_id, Some("judge"), false).await {
        Err(StoreError::Invalid(m)) => assert!(m.contains("only failed or cancelled"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Runs of one experiment that end at the same moment, each in its own transaction, still
/// settle the experiment: without a lock per experiment, each saw the other still running
/// and the experiment stayed `running` for ever (found by `plume bench --suite scheduling`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_ending_together_settle_their_experiment() {
    let tmp = tempfile::tempdir().unwrap();
    let pg = postgres(tmp.path().join("pg")).await;
    let store = Store::connect(&pg.url, Duration::from_secs(60))
        .await
        .unwrap();
    let kinds = vec!["probe".to_string()];
    let mut workers = vec![];
    for i in 0..4 {
        let w = store
            .register_worker(&format!("w{i}"), serde_json::json!({}))
            .await
            .unwrap();
        workers.push(w);
    }
    for round in 0..15 {
        let src = format!(
            "name: together-{round}\ndataset: {{kind: cub, path: x}}\nruns:\n  - {{name: p, job: probe, steps: 1}}\nsweep: {{seed: [1, 2, 3, 4]}}\n"
        );
        let exp = plume_coordinator::experiment::parse("t.yaml", &src).unwrap();
        let (id, _) = store.submit(&exp, "t.yaml", "").await.unwrap();
        let mut fences = vec![];
        for &w in &workers {
            fences.push(
                store
                    .claim(&Claimant::one_slot(w, &kinds))
                    .await
                    .unwrap()
                    .unwrap()
                    .fence,
            );
        }
        let finishes = fences
            .iter()
            .map(|&f| store.finish(f, Outcome::Succeeded, "ok", 1));
        for r in futures::future::join_all(finishes).await {
            r.unwrap();
        }
        let state: plume_coordinator::states::ExperimentState =
            sqlx::query_scalar("SELECT state FROM experiments WHERE id = $1")
                .bind(id)
                .fetch_one(&store.pool)
                .await
                .unwrap();
        assert_eq!(
            state,
            plume_coordinator::states::ExperimentState::Succeeded,
            "round {round}"
        );
    }
}
