//! The lease rescuer (with a real PostgreSQL): a run whose worker stops heartbeating is
//! requeued once its lease expires, its attempt marked lost, and nothing is requeued while the
//! lease still holds.

use plume_coordinator::server::{Config, Coordinator, Intervals, Limits};
use plume_coordinator::states::{AttemptState, RunState};
use plume_coordinator::store::{Claimant, Store};
use std::time::{Duration, Instant};

use plume_coordinator::pg::PrivatePostgres;

const YAML: &str = "name: rescue
dataset: {kind: cub, path: x}
runs:
  - name: judge
    job: train-judge
    steps: 2
objective: {metric: eval/score, mode: max}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_workers_run_is_requeued_when_its_lease_expires_and_not_before() {
    let tmp = tempfile::tempdir().unwrap();
    let pg = PrivatePostgres::start_in_background(tmp.path().join("pg"))
        .await
        .unwrap();
    let lease = Duration::from_secs(2);
    let store = Store::connect(&pg.url, lease).await.unwrap();
    let exp = plume_coordinator::experiment::parse("rescue.yaml", YAML).unwrap();
    let (id, _) = store.submit(&exp, "rescue.yaml", YAML).await.unwrap();
    let worker = store
        .register_worker("silent", serde_json::json!({}))
        .await
        .unwrap();
    // The lease starts inside `claim`: after `before_claim`, before `claimed_at`.
    let before_claim = Instant::now();
    let claim = store
        .claim(&Claimant::one_slot(worker, &["train-judge".to_string()]))
        .await
        .unwrap()
        .expect("the judge run is claimable");
    let claimed_at = Instant::now();

    let coordinator = Coordinator::start(
        store.clone(),
        Config {
            worker_token: Some("w".into()),
            user_token: Some("u".into()),
            token_mode: plume_coordinator::store::SeedMode::Replace,
            intervals: Intervals {
                rescue: Duration::from_millis(100),
                ..Intervals::default()
            },
            limits: Limits::default(),
        },
    )
    .await
    .unwrap();
    let rescuer = tokio::spawn(coordinator.rescuer());

    let run = |store: Store| async move { store.runs(id).await.unwrap().pop().unwrap() };
    // Well inside the lease, the run stays with its worker.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(claimed_at.elapsed() < lease);
    assert_eq!(run(store.clone()).await.state, RunState::Running);

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = run(store.clone()).await;
        if r.state == RunState::Queued {
            assert!(
                before_claim.elapsed() >= lease,
                "requeued {:?} after the claim, before the {lease:?} lease expired",
                before_claim.elapsed()
            );
            let attempts = store.attempts(r.id).await.unwrap();
            let first = attempts
                .iter()
                .find(|a| a.attempt == claim.fence.attempt)
                .expect("the claimed attempt");
            assert_eq!(first.state, AttemptState::Lost, "{attempts:?}");
            assert_eq!(first.worker, worker);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "run still {:?} 20 s after the lease expired",
            r.state
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The silent worker's stale attempt can no longer write.
    assert!(matches!(
        store.heartbeat(claim.fence, 1, 2).await,
        Err(plume_coordinator::store::StoreError::Stale { .. })
    ));
    rescuer.abort();
}
