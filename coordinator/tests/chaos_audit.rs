//! `plume chaos`'s audit can fail: on a real PostgreSQL, a clean run audits clean, and then a
//! duplicate point, a missing step and a write stored after its attempt ended (what a fence
//! bug would leave) are each counted.

use plume_coordinator::chaos::audit::{curve_damage, stale_writes};
use plume_coordinator::pg::PrivatePostgres;
use plume_coordinator::states::Outcome;
use plume_coordinator::store::{Claimant, Series, Store};
use std::collections::BTreeMap;
use std::time::Duration;

fn batch(steps: std::ops::RangeInclusive<i64>) -> BTreeMap<String, Series> {
    let steps: Vec<i64> = steps.collect();
    let values = steps.iter().map(|&s| 1.0 / s as f64).collect();
    BTreeMap::from([("loss".to_string(), Series { steps, values })])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_counts_duplicates_gaps_and_stale_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let pg = PrivatePostgres::start_in_background(tmp.path().join("pg"))
        .await
        .unwrap();
    let store = Store::connect(&pg.url, Duration::from_secs(60))
        .await
        .unwrap();
    let exp = plume_coordinator::experiment::parse(
        "a.yaml",
        "name: a\ndataset: {kind: cub, path: x}\nruns:\n  - {name: r, job: train-judge, steps: 4}\n",
    )
    .unwrap();
    let (exp_id, _) = store.submit(&exp, "a.yaml", "").await.unwrap();
    let w = store
        .register_worker("w", serde_json::json!({}))
        .await
        .unwrap();
    let claim = store
        .claim(&Claimant::one_slot(w, &["train-judge".to_string()]))
        .await
        .unwrap()
        .unwrap();
    let f = claim.fence;
    assert!(store.ingest(f, 1, &batch(1..=4)).await.unwrap());
    store.heartbeat(f, 4, 4).await.unwrap();
    store.finish(f, Outcome::Succeeded, "ok", 4).await.unwrap();
    assert_eq!(curve_damage(&store, exp_id).await.unwrap(), (0, 0));
    assert_eq!(stale_writes(&store, exp_id).await.unwrap(), 0);

    // What a broken fence would leave: a point written twice, and a batch and a log line
    // stored a second after the attempt ended.
    sqlx::query(
        "INSERT INTO metric_chunks (run_id, name, first_step, last_step, steps, vals) \
         SELECT run_id, name, first_step, last_step, steps, vals FROM metric_chunks \
         WHERE run_id = $1 LIMIT 1",
    )
    .bind(f.run)
    .execute(&store.pool)
    .await
    .unwrap();
    let (lost, dup) = curve_damage(&store, exp_id).await.unwrap();
    assert_eq!((lost, dup), (0, 4));
    sqlx::query(
        "INSERT INTO metric_batches (run_id, attempt, seq, at) \
         SELECT run_id, attempt, 99, ended_at + interval '1 second' FROM attempts \
         WHERE run_id = $1",
    )
    .bind(f.run)
    .execute(&store.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO logs (run_id, attempt, at, line) \
         SELECT run_id, attempt, ended_at + interval '1 second', 'late' FROM attempts \
         WHERE run_id = $1",
    )
    .bind(f.run)
    .execute(&store.pool)
    .await
    .unwrap();
    assert_eq!(stale_writes(&store, exp_id).await.unwrap(), 2);

    // A missing step: the run says it reached step 6, the curve stops at 4.
    sqlx::query("UPDATE runs SET step = 6 WHERE id = $1")
        .bind(f.run)
        .execute(&store.pool)
        .await
        .unwrap();
    assert_eq!(curve_damage(&store, exp_id).await.unwrap().0, 2);
}
