//! ASHA through real processes: a real Postgres, `plume serve`, one `plume-worker`, and six
//! `probe` runs whose metric is known in advance, so every rung decision is checked against a
//! schedule computed by hand. Stopped runs end `stopped`, free their worker at once, keep
//! their checkpoints under retention, and `best` considers them.

use plume_coordinator::client::user_client;
use plume_coordinator::states::{ExperimentState, RunState};
use plume_proto::v1 as pb;
use plume_system_tests::{bin, served, wait_for, worker, USER};

/// Six runs; probe/score at step s is `start + 0.01 s`. Rungs at steps 1 and 3 (min 1, η 3,
/// max 9). The objective is the same metric *minimised*, so the best checkpoint belongs to a
/// run ASHA stopped: `best` must still consider stopped runs.
const EXPERIMENT: &str = "name: asha
dataset: {kind: synthetic-birds, images: 200, resolution: 32, seed: 3}
runs:
  - {name: p, job: probe, steps: 9, slope: 0.01, step_ms: 150, checkpoint_every: 1}
sweep:
  start: [0.5, 0.7, 0.4, 0.9, 0.6, 0.3]
search:
  asha: {metric: probe/score, mode: max, resource: steps, min_steps: 1, max_steps: 9, reduction_factor: 3}
objective: {metric: probe/score, mode: min}
checkpoints: {keep: {best: 1, latest: 1}}
";

/// (rung, rank, seen, promoted) of one run at one rung.
type Rung = (i32, i32, i32, bool);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asha_follows_the_hand_computed_schedule() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let served = served(d).await;
    let (store, url, port) = (&served.store, served.url.clone(), served.port);
    let mut c = user_client(&url, USER).await.unwrap();
    let exp = c
        .submit_experiment(pb::SubmitRequest {
            yaml: EXPERIMENT.into(),
            file_name: "asha.yaml".into(),
            dry_run: false,
            extend: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .experiment_id;
    // One worker: the runs go in submit order, so the order they reach each rung is known.
    let _w = worker(port, "w", &d.join("w"));
    wait_for("the experiment to end", 120, || async {
        sqlx::query_scalar::<_, ExperimentState>("SELECT state FROM experiments WHERE id = $1")
            .bind(exp)
            .fetch_one(&store.pool)
            .await
            .unwrap()
            .is_final()
    })
    .await;

    // By hand (max mode; a run goes on when its rank <= ceil(seen / 3)):
    //   rung 0 (step 1): 0.51 1/1 on; 0.71 1/2 on; 0.41 3/3 stop; 0.91 1/4 on; 0.61 3/5 stop;
    //                    0.31 6/6 stop
    //   rung 1 (step 3): 0.53 1/1 on; 0.73 1/2 on; 0.93 1/3 on
    let want: &[(&str, &[Rung], RunState)] = &[
        (
            "p@start=5e-1",
            &[(0, 1, 1, true), (1, 1, 1, true)],
            RunState::Succeeded,
        ),
        (
            "p@start=7e-1",
            &[(0, 1, 2, true), (1, 1, 2, true)],
            RunState::Succeeded,
        ),
        ("p@start=4e-1", &[(0, 3, 3, false)], RunState::Stopped),
        (
            "p@start=9e-1",
            &[(0, 1, 4, true), (1, 1, 3, true)],
            RunState::Succeeded,
        ),
        ("p@start=6e-1", &[(0, 3, 5, false)], RunState::Stopped),
        ("p@start=3e-1", &[(0, 6, 6, false)], RunState::Stopped),
    ];
    let detail = c
        .get_experiment(pb::GetRequest {
            experiment: "asha".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ExperimentState::try_from(detail.summary.as_ref().unwrap().state),
        Ok(ExperimentState::Succeeded),
        "stopped runs are not failures"
    );
    for (name, rungs, state) in want {
        let r = detail
            .runs
            .iter()
            .find(|r| r.name == *name)
            .unwrap_or_else(|| {
                panic!(
                    "no run {name} in {:?}",
                    detail
                        .runs
                        .iter()
                        .map(|r| (&r.name, r.state, &r.error))
                        .collect::<Vec<_>>()
                )
            });
        let got: Vec<Rung> = r
            .rungs
            .iter()
            .map(|g| (g.rung, g.rank, g.seen, g.promoted))
            .collect();
        assert_eq!(got, *rungs, "{name}");
        assert_eq!(
            RunState::try_from(r.state),
            Ok(*state),
            "{name}: {}",
            r.error
        );
        let expect_steps = if *state == RunState::Stopped {
            1..=3
        } else {
            9..=9
        };
        assert!(
            expect_steps.contains(&r.step),
            "{name} ended at step {} (a stopped run ends within a few steps of its rung)",
            r.step
        );
    }

    // A stop frees the worker at once: from the decision to the attempt's end.
    let frees: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM a.ended_at - g.decided_at)::float8 FROM asha_rungs g \
         JOIN runs r ON r.id = g.run_id JOIN attempts a ON a.run_id = r.id AND a.attempt = r.attempt \
         WHERE g.experiment_id = $1 AND NOT g.promoted",
    )
    .bind(exp)
    .fetch_all(&store.pool)
    .await
    .unwrap();
    assert_eq!(frees.len(), 3);
    eprintln!("stop decision to attempt end: {frees:?} s");
    assert!(frees.iter().all(|&s| s < 1.5), "{frees:?}");

    // `best` (objective: probe/score, min) is the stopped p@start=3e-1's checkpoint.
    let best = c
        .best_checkpoints(pb::BestRequest {
            experiment: "asha".into(),
            metric: String::new(),
            top: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(best.checkpoints[0].run, "p@start=3e-1", "{best:?}");

    // `plume show` lists the rungs.
    let show = std::process::Command::new(bin("plume"))
        .args(["show", "asha", "--coordinator", &url, "--token", USER])
        .output()
        .unwrap();
    let show = String::from_utf8_lossy(&show.stdout);
    assert!(show.contains("stopped"), "{show}");
    assert!(
        show.contains("ASHA: rung 0 @1 0.4100 rank 3/3 stopped"),
        "{show}"
    );
}
