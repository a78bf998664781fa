//! The Slurm launcher on a real Slurm: `munged`, `slurmctld` and `slurmd` on localhost (see
//! `plume_system_tests::slurm`), a real Postgres, `plume serve --slurm` and the worker jobs it
//! submits. A small experiment runs to success while one worker job is `scancel`led mid-run
//! and another gets Slurm's warning signal (USR1): each time the run is released with a
//! checkpoint and resumed in a new job, with exactly one point per step. When the queue
//! drains, the idle worker jobs are cancelled.
//!
//! Needs Debian's `slurm-wlm` and `munge` and root (`./scripts/setup` installs them as root).

use plume_coordinator::client::user_client;
use plume_coordinator::pg::free_port;
use plume_coordinator::states::{AttemptState, ExperimentState, RunState};
use plume_coordinator::store::Store;
use plume_proto::v1 as pb;
use plume_system_tests::slurm::SlurmCluster;
use plume_system_tests::{bin, postgres, serve_env, succeeded_experiment, wait_for, USER, WORKER};
use std::time::{Duration, Instant};

const JOB_NAME: &str = "plume-test-worker";
/// Seconds of warning Slurm gives before the time limit; the worker must release within it.
const GRACE_SECS: u64 = 60;
const STEPS: i64 = 2500;

fn experiment() -> String {
    format!(
        "name: on-slurm
dataset: {{kind: synthetic-birds, images: 200, resolution: 32, seed: 3}}
runs:
  - {{name: long, job: train-judge, steps: {STEPS}, batch: 4, net: {{channels: [8, 8, 8], hidden: 16}}, checkpoint_every: 25, eval_every: 100000}}
  - {{name: short, job: train-judge, steps: 20, batch: 4, net: {{channels: [8, 8, 8], hidden: 16}}, checkpoint_every: 10}}
objective: {{metric: judge/loss, mode: min}}
max_restarts: 3
"
    )
}

/// `long`'s run id, state, attempt, step, and the Slurm job of the worker holding it.
async fn long_run(store: &Store, exp: i64) -> (i64, RunState, i32, i64, Option<String>) {
    sqlx::query_as(
        "SELECT r.id, r.state, r.attempt, r.step, w.capabilities->>'slurm_job_id' \
         FROM runs r LEFT JOIN workers w ON w.id = r.lease_worker \
         WHERE r.experiment_id = $1 AND r.name = 'long'",
    )
    .bind(exp)
    .fetch_one(&store.pool)
    .await
    .unwrap()
}

/// The newest checkpoint step of run `run`.
async fn last_checkpoint(store: &Store, run: i64) -> i64 {
    sqlx::query_scalar("SELECT COALESCE(max(step), 0) FROM checkpoints WHERE run_id = $1")
        .bind(run)
        .fetch_one(&store.pool)
        .await
        .unwrap()
}

/// Waits until `long` runs attempt `attempt` in a Slurm job with a checkpoint past `after`;
/// returns that job's id.
async fn running_with_checkpoint(store: &Store, exp: i64, attempt: i32, after: i64) -> String {
    wait_for(
        &format!("attempt {attempt} of `long` to checkpoint past step {after}"),
        240,
        || async {
            let (id, state, a, _, job) = long_run(store, exp).await;
            state == RunState::Running
                && a == attempt
                && job.is_some()
                && last_checkpoint(store, id).await > after
        },
    )
    .await;
    long_run(store, exp).await.4.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slurm_workers_run_an_experiment_through_scancel_and_usr1() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let cluster = SlurmCluster::start(&d.join("slurm"));
    let pg = postgres(d.join("pg")).await;
    let store = Store::connect(&pg.url, Duration::from_secs(4))
        .await
        .unwrap();
    let token = d.join("worker-token");
    std::fs::write(&token, format!("{WORKER}\n")).unwrap();
    let port = free_port().unwrap();
    let log = d.join("coordinator.log");
    let listen = format!("127.0.0.1:{port}");
    let (token_arg, dir_arg) = (
        token.display().to_string(),
        d.join("launcher").display().to_string(),
    );
    let grace = GRACE_SECS.to_string();
    let _coord = serve_env(
        &pg.url,
        &[
            "--listen",
            &listen,
            "--lease-secs",
            "4",
            "--http",
            "off",
            "--slurm",
            "--slurm-token-file",
            &token_arg,
            "--slurm-dir",
            &dir_arg,
            "--slurm-device",
            "cpu",
            "--slurm-max-workers",
            "2",
            "--slurm-idle-secs",
            "5",
            "--slurm-time",
            "30:00",
            "--slurm-signal-secs",
            &grace,
            "--slurm-poll-secs",
            "1",
            "--slurm-job-name",
            JOB_NAME,
        ],
        &[("SLURM_CONF", &cluster.conf)],
        &log,
    );
    let url = format!("http://127.0.0.1:{port}");
    wait_for("the coordinator", 30, || {
        let url = url.clone();
        async move { user_client(&url, USER).await.is_ok() }
    })
    .await;
    // Nothing queued, minimum 0: no worker job yet.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        cluster.jobs(JOB_NAME).is_empty(),
        "{:?}",
        cluster.jobs(JOB_NAME)
    );

    let mut c = user_client(&url, USER).await.unwrap();
    let exp = c
        .submit_experiment(pb::SubmitRequest {
            yaml: experiment(),
            file_name: "on-slurm.yaml".into(),
            dry_run: false,
            extend: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .experiment_id;

    // scancel mid-run: SIGTERM -> checkpoint, release, a new attempt in another job.
    let job1 = running_with_checkpoint(&store, exp, 1, 0).await;
    assert!(cluster.command("scancel", &[&job1]).is_some());
    let job2 = running_with_checkpoint(&store, exp, 2, 0).await;
    assert_ne!(job1, job2);

    // Slurm's warning signal: USR1 to the batch shell (the worker) -> release within the
    // grace period, the worker exits, and a third attempt resumes elsewhere.
    let (run, _, _, step, _) = long_run(&store, exp).await;
    let _ = running_with_checkpoint(&store, exp, 2, step).await;
    let signalled = Instant::now();
    assert!(cluster
        .command("scancel", &["--signal=USR1", "--batch", &job2])
        .is_some());
    wait_for("the USR1'd attempt to be released", GRACE_SECS, || async {
        long_run(&store, exp).await.2 >= 3
            || sqlx::query_scalar::<_, AttemptState>(
                "SELECT state FROM attempts WHERE run_id = $1 AND attempt = 2",
            )
            .bind(run)
            .fetch_one(&store.pool)
            .await
            .unwrap()
                != AttemptState::Running
    })
    .await;
    let released_after = signalled.elapsed();
    wait_for("the USR1'd worker job to end", GRACE_SECS, || async {
        !cluster.jobs(JOB_NAME).iter().any(|(id, _)| *id == job2)
    })
    .await;
    let exited_after = signalled.elapsed();
    eprintln!(
        "USR1: released after {released_after:?}, job ended after {exited_after:?} \
         (grace {GRACE_SECS} s)"
    );

    wait_for("the experiment to finish", 400, || async {
        sqlx::query_scalar::<_, ExperimentState>("SELECT state FROM experiments WHERE id = $1")
            .bind(exp)
            .fetch_one(&store.pool)
            .await
            .unwrap()
            .is_final()
    })
    .await;
    let detail = succeeded_experiment(&mut c, "on-slurm").await;
    for r in &detail.runs {
        assert!(
            r.attempts.iter().all(|a| !a.slurm_job_id.is_empty()),
            "every attempt ran in a Slurm job: {:?}",
            r.attempts
        );
    }
    let long = detail.runs.iter().find(|r| r.name == "long").unwrap();
    let a = &long.attempts;
    assert!(a.len() >= 3, "{a:?}");
    assert_eq!(
        (a[0].slurm_job_id.as_str(), a[1].slurm_job_id.as_str()),
        (job1.as_str(), job2.as_str())
    );
    for released in &a[..2] {
        assert_eq!(
            AttemptState::try_from(released.state),
            Ok(AttemptState::Lost)
        );
        assert!(released.message.contains("released"), "{released:?}");
    }
    assert!(a[1].resumed_from_step > 0, "{a:?}");
    assert!(a[2].resumed_from_step > a[1].resumed_from_step, "{a:?}");
    // Exactly one point per step despite two interruptions.
    let curve = store.curve(run, "judge/loss").await.unwrap();
    let mut steps = curve.steps.clone();
    steps.sort();
    steps.dedup();
    assert_eq!(steps.len(), curve.steps.len(), "duplicate points");
    assert_eq!(steps, (1..=STEPS).collect::<Vec<i64>>(), "gaps");

    // `plume show` names each attempt's Slurm job.
    let show = std::process::Command::new(bin("plume"))
        .args(["show", "on-slurm", "--coordinator", &url, "--token", USER])
        .output()
        .unwrap();
    let show = String::from_utf8_lossy(&show.stdout);
    for job in [&job1, &job2] {
        assert!(show.contains(&format!("slurm job {job})")), "{show}");
    }

    // The queue drained: the idle workers' jobs are cancelled (minimum 0).
    wait_for("the idle worker jobs to be cancelled", 60, || async {
        cluster.jobs(JOB_NAME).is_empty()
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("idle past the timeout"), "{text}");
    // Their scratch directories go with them; their logs stay.
    wait_for("the ended jobs' scratch directories to go", 10, || async {
        std::fs::read_dir(d.join("launcher/scratch"))
            .unwrap()
            .count()
            == 0
    })
    .await;
    assert!(d.join(format!("launcher/logs/worker-{job1}.log")).is_file());
    assert!(released_after < Duration::from_secs(GRACE_SECS));
}
