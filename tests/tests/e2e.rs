//! End to end with a real PostgreSQL, a real coordinator process (`plume serve`) and real
//! worker processes (`plume-worker --coordinator`): a pipeline survives `kill -9` of a worker
//! and of the coordinator, a stale attempt cannot write, cancel frees a worker, tokens are
//! checked, bad experiments store nothing, and `plume best` agrees with the stored metrics.

use plume_coordinator::client::user_client;
use plume_coordinator::pg::free_port;
use plume_coordinator::states::{AttemptState, ExperimentState, RunState};
use plume_coordinator::store::Store;
use plume_proto::v1 as pb;
use std::collections::BTreeMap;

use std::process::Command;
use std::time::{Duration, Instant};

use plume_system_tests::{
    bin, coordinator, postgres, serve, succeeded_experiment, wait_for, worker, Kill, USER, WORKER,
};

const TINY: &str = "dataset: {kind: synthetic-birds, images: 200, resolution: 32, seed: 3}
stages:
  judge: {job: train-judge, steps: 4, batch: 4, net: {channels: [8, 8, 8], hidden: 16}, checkpoint_every: 2}
  generator: {job: pretrain-generator, needs: [judge], steps: 150, batch: 4, checkpoint_every: 10, eval_every: 1000, sample_every: 1000, fid_images: 16, network: {resolution: 32, z_dim: 32, w_dim: 32, channel_base: 256, channel_max: 16}}
  styles: {job: invert, needs: [generator, judge], steps: 3, batch: 100, limit: 200}
runs:
  - {name: m1, job: train-text, method: weighted, needs: [generator, styles, judge], steps: 4, batch: 4, max_tokens: 32, eval_every: 2, eval_edits: 8, checkpoint_every: 2}
  - {name: m3, job: train-text, method: contrastive, needs: [generator, styles, judge], steps: 4, batch: 4, max_tokens: 32, eval_every: 2, eval_edits: 8, checkpoint_every: 2, ablate: {losses.preservation: [0, 1]}}
objective: {metric: eval/score, mode: max}
max_restarts: 2
checkpoints: {keep: {best: 1, latest: 1}}
";

/// A private Postgres under `d`, a store on it, a `plume serve` on a free port (log in
/// `d/coordinator.log`) and a user client once it answers.
struct Started {
    pg: plume_coordinator::pg::PrivatePostgres,
    store: Store,
    port: u16,
    log: std::path::PathBuf,
    coord: Kill,
    url: String,
    c: plume_coordinator::client::UserClient,
}

async fn start(d: &std::path::Path) -> Started {
    let pg = postgres(d.join("pg")).await;
    let store = Store::connect(&pg.url, Duration::from_secs(4))
        .await
        .unwrap();
    let port = free_port().unwrap();
    let log = d.join("coordinator.log");
    let coord = coordinator(&pg.url, port, None, &log);
    let url = format!("http://127.0.0.1:{port}");
    wait_for("the coordinator", 30, || {
        let url = url.clone();
        async move { user_client(&url, USER).await.is_ok() }
    })
    .await;
    let c = user_client(&url, USER).await.unwrap();
    Started {
        pg,
        store,
        port,
        log,
        coord,
        url,
        c,
    }
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
async fn pipeline_survives_worker_and_coordinator_kills() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_path_buf();
    let Started {
        pg,
        store,
        port,
        log,
        mut coord,
        url,
        mut c,
    } = start(&d).await;

    // Tokens: none, a wrong one, and a worker token on the user API are all refused.
    let mut no_token = pb::user_api_client::UserApiClient::connect(url.clone())
        .await
        .unwrap();
    let e = no_token
        .list_experiments(pb::ListRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let mut as_worker = user_client(&url, WORKER).await.unwrap();
    let e = as_worker
        .submit_experiment(pb::SubmitRequest {
            yaml: format!("name: sneaky\n{TINY}"),
            file_name: "x.yaml".into(),
            dry_run: false,
            extend: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");

    // A bad experiment stores nothing.
    let count = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT (SELECT count(*) FROM experiments) + (SELECT count(*) FROM runs)",
        )
        .fetch_one(&store.pool)
        .await
        .unwrap()
    };
    let e = c
        .submit_experiment(pb::SubmitRequest {
            yaml: format!(
                "name: bad\n{}",
                TINY.replace("method: weighted", "method: nope")
            ),
            file_name: "bad.yaml".into(),
            dry_run: false,
            extend: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("bad.yaml:8:"), "{}", e.message());
    assert_eq!(count().await, 0);

    let w0 = d.join("w0");
    let w1 = d.join("w1");
    let mut workers: BTreeMap<String, Kill> = BTreeMap::new();
    workers.insert("w0".into(), worker(port, "w0", &w0));
    workers.insert("w1".into(), worker(port, "w1", &w1));

    let reply = c
        .submit_experiment(pb::SubmitRequest {
            yaml: format!("name: e2e\n{TINY}"),
            file_name: "e2e.yaml".into(),
            dry_run: false,
            extend: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let exp = reply.experiment_id;
    assert_eq!(reply.runs.len(), 6);

    // kill -9 the worker running the generator once it has a checkpoint past step 0.
    wait_for("the generator to checkpoint", 240, || async {
        let (s, _, _, _) = state(&store, exp, "generator").await;
        let ck: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM checkpoints c JOIN runs r ON r.id = c.run_id WHERE r.experiment_id = $1 AND r.name = 'generator' AND c.step > 0",
        )
        .bind(exp)
        .fetch_one(&store.pool)
        .await
        .unwrap();
        s == RunState::Running && ck > 0
    })
    .await;
    let (_, _, holder, _) = state(&store, exp, "generator").await;
    let holder_name: String = sqlx::query_scalar("SELECT name FROM workers WHERE id = $1")
        .bind(holder.unwrap())
        .fetch_one(&store.pool)
        .await
        .unwrap();
    let victim = workers.remove(&holder_name).unwrap();
    let mut victim = victim;
    victim.0.kill().unwrap(); // SIGKILL
    victim.0.wait().unwrap();
    // Replace it so two workers remain.
    workers.insert("w2".into(), worker(port, "w2", &d.join("w2")));

    // Then kill the coordinator mid-experiment and start it again on the same port.
    wait_for("the generator's second attempt", 60, || async {
        state(&store, exp, "generator").await.3 >= 2
    })
    .await;
    coord.0.kill().unwrap();
    coord.0.wait().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    coord = coordinator(&pg.url, port, None, &log);

    wait_for("the experiment to finish", 420, || async {
        let s: ExperimentState = sqlx::query_scalar("SELECT state FROM experiments WHERE id = $1")
            .bind(exp)
            .fetch_one(&store.pool)
            .await
            .unwrap();
        s.is_final()
    })
    .await;
    let mut c = user_client(&url, USER).await.unwrap();
    let detail = succeeded_experiment(&mut c, "e2e").await;
    // The killed attempt is in the generator's history as lost; the next one resumed.
    let gen = detail.runs.iter().find(|r| r.name == "generator").unwrap();
    assert!(gen.attempts.len() >= 2, "{:?}", gen.attempts);
    assert_eq!(
        AttemptState::try_from(gen.attempts[0].state),
        Ok(AttemptState::Lost)
    );
    assert!(gen.attempts[1].resumed_from_step > 0, "{:?}", gen.attempts);
    // Exactly one point per (metric, step) on the resumed curve, and all steps present.
    let gen_id = gen.id;
    for metric in ["gen/loss_g", "gen/loss_d"] {
        let curve = store.curve(gen_id, metric).await.unwrap();
        let mut steps = curve.steps.clone();
        steps.sort();
        steps.dedup();
        assert_eq!(steps.len(), curve.steps.len(), "{metric}: duplicate points");
        assert_eq!(steps, (1..=150).collect::<Vec<i64>>(), "{metric}: gaps");
    }
    // `plume watch` (WatchMetrics) on the finished run: its whole backlog, every step (the
    // resumed attempt re-reports the steps after its checkpoint), then its final state.
    let mut watch = c
        .watch_metrics(pb::WatchRequest {
            experiment: "e2e".into(),
            run: "generator".into(),
            metrics: vec!["gen/loss_g".into()],
            backlog_only: true,
        })
        .await
        .unwrap()
        .into_inner();
    let (mut watched, mut states) = (Vec::new(), Vec::new());
    while let Some(u) = watch.message().await.unwrap() {
        assert_eq!(u.run, "generator");
        match RunState::try_from(u.run_state) {
            Ok(state) => states.push(state),
            Err(_) => {
                assert_eq!(u.name, "gen/loss_g");
                watched.extend(u.steps);
            }
        }
    }
    watched.sort();
    watched.dedup();
    assert_eq!(watched, (1..=150).collect::<Vec<i64>>());
    assert_eq!(states, [RunState::Succeeded]);
    // `best` equals the argmax over the stored metrics at the kept checkpoints' steps.
    let best = c
        .best_checkpoints(pb::BestRequest {
            experiment: "e2e".into(),
            metric: String::new(),
            top: 1,
        })
        .await
        .unwrap()
        .into_inner();
    let top = &best.checkpoints[0];
    let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
        "SELECT c.id, c.run_id, c.step FROM checkpoints c JOIN runs r ON r.id = c.run_id WHERE r.experiment_id = $1",
    )
    .bind(exp)
    .fetch_all(&store.pool)
    .await
    .unwrap();
    // The stored eval/score at each checkpoint's step; ties are possible (a tiny run can
    // score the same at two steps), so `best` must name one of the maximal checkpoints.
    let mut scores: BTreeMap<i64, f64> = BTreeMap::new();
    for (id, run, step) in rows {
        let curve = store.curve(run, "eval/score").await.unwrap();
        if let Some(i) = curve.steps.iter().position(|&s| s == step) {
            scores.insert(id, curve.values[i]);
        }
    }
    let v = scores.values().copied().fold(f64::NEG_INFINITY, f64::max);
    assert!(v.is_finite(), "some checkpoint has an eval/score");
    assert_eq!(
        scores.get(&top.checkpoint_id).copied(),
        Some(v),
        "best says {} at checkpoint {}; the stored curves' maximum is {v} ({scores:?})",
        top.value,
        top.checkpoint_id
    );
    assert!((top.value - v).abs() < 1e-12);
    // Retention kept at most best 1 + latest 1 per finished run.
    let per_run: Vec<i64> = sqlx::query_scalar(
        "SELECT count(*) FROM checkpoints c JOIN runs r ON r.id = c.run_id WHERE r.experiment_id = $1 GROUP BY c.run_id",
    )
    .bind(exp)
    .fetch_all(&store.pool)
    .await
    .unwrap();
    assert!(per_run.iter().all(|&n| (1..=2).contains(&n)), "{per_run:?}");
    // The downloaded best checkpoint is byte-identical to what was stored.
    let out = d.join("best.safetensors");
    let o = Command::new(bin("plume"))
        .args(["download", &top.checkpoint_id.to_string(), "--out"])
        .arg(&out)
        .args(["--coordinator", &url, "--token", USER])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        plume_coordinator::blobs::sha256_hex(&std::fs::read(&out).unwrap()),
        top.sha256
    );
    // Every run succeeded, so no checkpoint keeps resume state: the workers declared it (the
    // generator's D and optimizers, the text runs' Adam moments) and the store dropped it.
    let (with_state, dropped): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE c.state_size > 0), count(*) FILTER (WHERE c.state_dropped) \
         FROM checkpoints c JOIN runs r ON r.id = c.run_id WHERE r.experiment_id = $1",
    )
    .bind(exp)
    .fetch_one(&store.pool)
    .await
    .unwrap();
    assert_eq!(with_state, 0);
    assert!(dropped > 0);
    let o = Command::new(bin("plume"))
        .args([
            "download",
            &top.checkpoint_id.to_string(),
            "--with-state",
            "--out",
        ])
        .arg(d.join("with-state.safetensors"))
        .args(["--coordinator", &url, "--token", USER])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("holds weights only"), "{err}");
    let json = Command::new(bin("plume"))
        .args([
            "best",
            "e2e",
            "--json",
            "--top",
            "1",
            "--coordinator",
            &url,
            "--token",
            USER,
        ])
        .output()
        .unwrap();
    let parsed: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(parsed["checkpoints"][0]["checkpoint"], top.checkpoint_id);
    // The results table: one row per text run, the objective as the first metric column.
    let table = Command::new(bin("plume"))
        .args([
            "table",
            "e2e",
            "--markdown",
            "--coordinator",
            &url,
            "--token",
            USER,
        ])
        .output()
        .unwrap();
    assert!(
        table.status.success(),
        "{}",
        String::from_utf8_lossy(&table.stderr)
    );
    let table = String::from_utf8_lossy(&table.stdout);
    let header = table.lines().next().unwrap();
    assert!(
        header.starts_with("| run | state | step | eval/score |"),
        "{table}"
    );
    for run in ["m1 ", "m3@"] {
        assert!(
            table.lines().any(|l| l.starts_with(&format!("| {run}"))),
            "{run}: {table}"
        );
    }

    // Cancel: a long run stops within seconds and its worker takes the next run.
    let reply = c
        .submit_experiment(pb::SubmitRequest {
            yaml: "name: long\ndataset: {kind: synthetic-birds, images: 200, resolution: 32, seed: 3}\nruns:\n  - {name: forever, job: train-judge, steps: 1000000, batch: 4, net: {channels: [8, 8, 8], hidden: 16}}\n  - {name: after, job: train-judge, steps: 2, batch: 4, net: {channels: [8, 8, 8], hidden: 16}}\n".into(),
            file_name: "long.yaml".into(),
            dry_run: false,
            extend: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let long = reply.experiment_id;
    wait_for("the long run to start", 60, || async {
        state(&store, long, "forever").await.1 > 2
    })
    .await;
    let asked = Instant::now();
    c.cancel(pb::CancelRequest {
        experiment: "long".into(),
        run: "forever".into(),
    })
    .await
    .unwrap();
    wait_for("the cancel", 15, || async {
        state(&store, long, "forever").await.0 == RunState::Cancelled
    })
    .await;
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(10), "cancel took {took:?}");
    wait_for("the next run", 60, || async {
        state(&store, long, "after").await.0 == RunState::Succeeded
    })
    .await;
    drop(workers);
    drop(coord);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_served_when_configured() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_path_buf();
    let (cert, key) = (d.join("cert.pem"), d.join("key.pem"));
    let o = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        // An end-entity certificate (CA:FALSE): rustls refuses a CA as a server certificate.
        .args([
            "-addext",
            "subjectAltName=DNS:localhost",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let pg = postgres(d.join("pg")).await;
    let port = free_port().unwrap();
    let http = free_port().unwrap();
    let _coord = serve(
        &pg.url,
        &[
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--http",
            &format!("127.0.0.1:{http}"),
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &d.join("coordinator.log"),
    );
    let url = format!("https://localhost:{port}");
    wait_for("the TLS coordinator", 30, || {
        let (url, cert) = (url.clone(), cert.clone());
        async move {
            plume_coordinator::client::user_client_with_ca(&url, USER, Some(&cert))
                .await
                .is_ok()
        }
    })
    .await;
    let mut c = plume_coordinator::client::user_client_with_ca(&url, USER, Some(&cert))
        .await
        .unwrap();
    c.list_experiments(pb::ListRequest {}).await.unwrap();
    // The CLI finds the CA through PLUME_CA_CERT; plain HTTP to a TLS port gets nowhere.
    let o = Command::new(bin("plume"))
        .args(["ls", "--coordinator", &url, "--token", USER])
        .env("PLUME_CA_CERT", &cert)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let plain = format!("http://127.0.0.1:{port}");
    let refused = match user_client(&plain, USER).await {
        Err(_) => true,
        Ok(mut c) => c.list_experiments(pb::ListRequest {}).await.is_err(),
    };
    assert!(
        refused,
        "plain HTTP must not work against a TLS coordinator"
    );
    // The dashboard serves the same certificate; plain HTTP to it gets no answer.
    let curl = |url: &str, ca: bool| {
        let mut c = Command::new("curl");
        c.args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
        ]);
        c.args(["-H", &format!("Authorization: Bearer {USER}")]);
        if ca {
            c.arg("--cacert").arg(&cert);
        }
        let o = c.arg(url).output().expect("curl");
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let dashboard = format!("https://localhost:{http}/api/experiments");
    assert_eq!(curl(&dashboard, true), "200", "the dashboard over TLS");
    assert_eq!(
        curl(&format!("http://127.0.0.1:{http}/api/experiments"), false),
        "000",
        "plain HTTP must not reach a TLS dashboard"
    );
}

/// A published generator instead of pretraining: an `import-generator` stage (the reference
/// fixture, in rosinality's format) feeds `invert` (sampled styles, labelled by the critic)
/// and a text method with its benchmark, through the coordinator like a trained generator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_experiment_starts_from_an_imported_generator() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_path_buf();
    // Every field is bound: `..` would drop the private Postgres (and stop it) right here.
    let Started {
        pg: _pg,
        store,
        port,
        log: _,
        coord,
        url: _,
        mut c,
    } = start(&d).await;
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../worker/tests/fixtures/stylegan2-reference/generator.safetensors")
        .canonicalize()
        .unwrap();
    let yaml = format!(
        "name: imported
dataset: {{kind: synthetic-birds, images: 200, resolution: 32, seed: 3}}
stages:
  judge: {{job: train-judge, steps: 4, batch: 4, net: {{channels: [8, 8, 8], hidden: 16}}, checkpoint_every: 2}}
  generator: {{job: import-generator, from: rosinality, path: {}}}
  styles: {{job: invert, mode: sampled, needs: [generator, judge], limit: 100}}
runs:
  - {{name: m1, job: train-text, method: weighted, needs: [generator, styles, judge], steps: 2, batch: 4, max_tokens: 32, eval_every: 2, eval_edits: 8, checkpoint_every: 2}}
objective: {{metric: eval/score, mode: max}}
",
        fixture.display()
    );
    let reply = c
        .submit_experiment(pb::SubmitRequest {
            yaml,
            file_name: "imported.yaml".into(),
            dry_run: false,
            extend: String::new(),
        })
        .await
        .unwrap_or_else(|e| {
            panic!(
                "submit: {e:?}\ncoordinator log:\n{}",
                std::fs::read_to_string(d.join("coordinator.log")).unwrap_or_default()
            )
        })
        .into_inner();
    let exp = reply.experiment_id;
    let w = worker(port, "w0", &d.join("w0"));
    wait_for("the text run on the imported generator", 240, || async {
        let (s, _, _, _) = state(&store, exp, "m1").await;
        assert!(s != RunState::Failed, "m1 failed: see {}", d.display());
        s == RunState::Succeeded
    })
    .await;
    for stage in ["generator", "styles"] {
        assert_eq!(
            state(&store, exp, stage).await.0,
            RunState::Succeeded,
            "{stage}"
        );
    }
    let generator_checkpoints: f64 = sqlx::query_scalar(
        "SELECT count(*)::float8 FROM checkpoints c JOIN runs r ON r.id = c.run_id WHERE r.experiment_id = $1 AND r.name = 'generator'",
    )
    .bind(exp)
    .fetch_one(&store.pool)
    .await
    .unwrap();
    assert_eq!(
        generator_checkpoints, 1.0,
        "the imported generator is one registered checkpoint"
    );
    drop(w);
    drop(coord);
}
