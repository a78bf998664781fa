//! `plume bench`: the coordinator's speed on this machine, through the real gRPC path and a
//! real Postgres (private unless `DATABASE_URL` is set), printed as a table.

use crate::client::{user_client, Auth};
use crate::pg::PrivatePostgres;
use crate::server::{serve, Config, Coordinator, Intervals, Limits};
use crate::store::{Claimant, Store};
use plume_proto::v1 as pb;
use std::fmt::Write as _;
use std::time::{Duration, Instant};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

mod dashboard;
mod parser;
mod scheduling;
mod sessions;
mod storage;

use dashboard::dashboard_suite;
use sessions::sessions_bench;

const WORKER: &str = "bench-worker-token";
const USER: &str = "bench-user-token";

type WorkerClient = pb::worker_api_client::WorkerApiClient<InterceptedService<Channel, Auth>>;

async fn worker_client(url: &str) -> anyhow::Result<WorkerClient> {
    let ch = Channel::from_shared(url.to_string())?
        .tcp_nodelay(true)
        .connect()
        .await?;
    Ok(
        pb::worker_api_client::WorkerApiClient::with_interceptor(ch, Auth::bearer(WORKER)?)
            .max_encoding_message_size(16 << 20),
    )
}

/// Registers a simulated worker that runs `train-judge` (the bench experiments' job kind).
async fn register(c: &mut WorkerClient, name: &str) -> anyhow::Result<i64> {
    Ok(c.register(pb::RegisterRequest {
        name: name.into(),
        capabilities: Some(pb::Capabilities {
            job_kinds: vec!["train-judge".into()],
            ..Default::default()
        }),
    })
    .await?
    .into_inner()
    .worker_id)
}

fn percentile(v: &mut Vec<f64>, p: f64) -> f64 {
    v.retain(|x| x.is_finite());
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn experiment_yaml(name: &str, runs: usize) -> String {
    let mut y = format!("name: {name}\ndataset: {{kind: cub, path: none}}\nruns:\n");
    for i in 0..runs {
        let _ = writeln!(y, "  - {{name: r{i}, job: train-judge, steps: 10}}");
    }
    y
}

/// Submits a one-run experiment and claims its run for `worker`: the fence to report with.
async fn leased_run(
    user: &mut crate::client::UserClient,
    store: &Store,
    worker: i64,
    name: &str,
) -> anyhow::Result<pb::Fence> {
    user.submit_experiment(pb::SubmitRequest {
        yaml: experiment_yaml(name, 1),
        file_name: "bench.yaml".into(),
        dry_run: false,
        extend: String::new(),
    })
    .await?;
    let claim = store
        .claim(&Claimant::one_slot(worker, &["train-judge".to_string()]))
        .await?
        .ok_or_else(|| anyhow::anyhow!("nothing to claim"))?;
    Ok(pb::Fence {
        worker_id: worker,
        run_id: claim.fence.run,
        attempt: claim.fence.attempt,
    })
}

/// Which benchmarks `plume bench` runs (`--suite`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Suite {
    /// Everything.
    All,
    /// Ingestion, curves, best, dispatch and sessions through gRPC.
    Coordinator,
    /// The dashboard's API and page load on a 1 M-point curve.
    Dashboard,
    /// Checkpoint storage: garbage collection at 10,000 checkpoints, a sweep's bytes.
    Storage,
    /// The experiment parser on hostile files up to the size limit (no Postgres needed).
    Parser,
    /// Coordinator overhead per run through real worker processes (`probe` runs); not in
    /// `all`, as it starts processes.
    Scheduling,
}

/// A coordinator on a private Postgres, serving gRPC and the dashboard, for the benchmarks.
struct Bench {
    store: Store,
    coordinator: Coordinator,
    addr: String,
    user: crate::client::UserClient,
    stamp: u64,
    tmp: std::path::PathBuf,
    _pg: Option<PrivatePostgres>,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn setup() -> anyhow::Result<Bench> {
    let tmp = std::env::temp_dir().join(format!("plume-bench-{}", std::process::id()));
    let (url, pg) = crate::pg::database_or_private(tmp.clone(), &[]).await?;
    let store = Store::connect(&url, Duration::from_secs(600)).await?;
    let coordinator = Coordinator::start(
        store.clone(),
        Config {
            worker_token: Some(WORKER.into()),
            user_token: Some(USER.into()),
            token_mode: crate::store::SeedMode::Replace,
            intervals: Intervals::default(),
            limits: Limits::default(),
        },
    )
    .await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(coordinator.clone(), listener, None, async {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let user = user_client(&addr, USER).await?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    eprintln!("bench: coordinator up on {addr}, database {url}");
    Ok(Bench {
        store,
        coordinator,
        addr,
        user,
        stamp,
        tmp,
        _pg: pg,
        stop,
        server,
    })
}

/// Runs the chosen benchmarks; returns the table.
pub async fn run(sessions: usize, points_millions: usize, suite: Suite) -> anyhow::Result<String> {
    let mut out = String::from("benchmark                                              result\n");
    if let Suite::Scheduling = suite {
        anyhow::bail!("the scheduling suite needs its workers: use bench::run_scheduling");
    }
    if matches!(suite, Suite::All | Suite::Parser) {
        parser::suite(&mut out)?;
        if suite == Suite::Parser {
            return Ok(out);
        }
    }
    let mut b = setup().await?;
    if matches!(suite, Suite::All | Suite::Coordinator) {
        coordinator_suite(&mut b, &mut out, sessions, points_millions).await?;
    }
    if matches!(suite, Suite::All | Suite::Dashboard) {
        dashboard_suite(&mut b, &mut out).await?;
    }
    if matches!(suite, Suite::All | Suite::Storage) {
        storage::suite(&b.store, &mut out, b.stamp).await?;
    }
    let _ = b.stop.send(());
    let _ = b.server.await;
    let _ = std::fs::remove_dir_all(&b.tmp);
    Ok(out)
}

/// `plume bench --suite scheduling`: `runs` probe runs through `workers` worker processes.
/// With `statements`, also the statements Postgres spent its time in.
pub async fn run_scheduling(
    runs: usize,
    workers: u32,
    worker_bin: std::path::PathBuf,
    statements: bool,
) -> anyhow::Result<String> {
    let mut out = String::new();
    scheduling::suite(&mut out, runs, workers, worker_bin, statements).await?;
    Ok(out)
}

/// Ingestion, curves, `best`, dispatch and many sessions, through gRPC.
async fn coordinator_suite(
    b: &mut Bench,
    out: &mut String,
    sessions: usize,
    points_millions: usize,
) -> anyhow::Result<()> {
    let mut w = worker_client(&b.addr).await?;
    let wid = register(&mut w, "bench").await?;
    ingest_bench(b, out, wid).await?;
    curve_bench(b, out, &mut w, wid).await?;
    best_bench(b, out, points_millions).await?;
    dispatch_bench(b, out).await?;
    claims_bench(b, out, sessions).await
}

/// Metric ingestion through gRPC into Postgres, at two batch sizes.
async fn ingest_bench(b: &mut Bench, out: &mut String, wid: i64) -> anyhow::Result<()> {
    let (store, addr, stamp) = (&b.store, b.addr.clone(), b.stamp);
    let user = &mut b.user;
    // 1. Metric ingestion through gRPC into Postgres.
    for (label, names, steps_per_batch, batches, concurrency) in [
        (
            "ingest: 1,000-point batches (10 metrics x 100 steps), 4 streams",
            10usize,
            100usize,
            400usize,
            4usize,
        ),
        (
            "ingest: 10,000-point batches (10 metrics x 1,000 steps), 4 streams",
            10,
            1000,
            200,
            4,
        ),
    ] {
        let fence = leased_run(
            user,
            store,
            wid,
            &format!("ingest-{stamp}-{steps_per_batch}"),
        )
        .await?;
        let t = Instant::now();
        let mut tasks = Vec::new();
        for task in 0..concurrency {
            let mut c = worker_client(&addr).await?;
            tasks.push(tokio::spawn(async move {
                for b in (task..batches).step_by(concurrency) {
                    let mut batch = pb::MetricBatch {
                        fence: Some(fence),
                        seq: b as u64 + 1,
                        names: (0..names).map(|i| format!("loss/term{i}")).collect(),
                        ..Default::default()
                    };
                    for n in 0..names {
                        for s in 0..steps_per_batch {
                            batch.name_index.push(n as u32);
                            batch.steps.push((b * steps_per_batch + s) as i64);
                            batch.values.push(((b + s + n) as f64).sin());
                        }
                    }
                    c.report_metrics(batch).await?;
                }
                Ok::<(), tonic::Status>(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        let points = names * steps_per_batch * batches;
        let secs = t.elapsed().as_secs_f64();
        let _ = writeln!(
            out,
            "{label:<64} {:>10.0} points/s ({points} points in {secs:.2} s)",
            points as f64 / secs
        );
    }

    eprintln!("bench: ingestion done");
    Ok(())
}

/// One run's 5,000-point curve: straight from the store, and through `WatchMetrics`.
async fn curve_bench(
    b: &mut Bench,
    out: &mut String,
    w: &mut WorkerClient,
    wid: i64,
) -> anyhow::Result<()> {
    let (store, stamp) = (&b.store, b.stamp);
    let user = &mut b.user;
    // 2. One run's 5,000-point curve (50 batches of 100 points), fetched through WatchMetrics.
    let fence = leased_run(user, store, wid, &format!("curve-{stamp}")).await?;
    for b in 0..50u64 {
        w.report_metrics(pb::MetricBatch {
            fence: Some(fence),
            seq: b + 1,
            names: vec!["loss/total".into(), "loss/other".into()],
            name_index: [vec![0u32; 100], vec![1u32; 100]].concat(),
            steps: [
                (0..100).map(|s| (b * 100 + s) as i64).collect::<Vec<_>>(),
                (0..100).map(|s| (b * 100 + s) as i64).collect(),
            ]
            .concat(),
            values: vec![0.5; 200],
            times: vec![],
        })
        .await?;
    }
    let mut direct = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        let c = store.curve(fence.run_id, "loss/total").await?;
        anyhow::ensure!(c.steps.len() == 5000);
        direct.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let _ = writeln!(
        out,
        "{:<64} {:>10.2} ms median",
        "curve: the same, one SQL query from the store (no gRPC)",
        percentile(&mut direct, 0.5)
    );
    let exp_name = format!("curve-{stamp}");
    let mut times = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        let mut s = user
            .watch_metrics(pb::WatchRequest {
                experiment: exp_name.clone(),
                run: "r0".into(),
                metrics: vec!["loss/total".into()],
                backlog_only: true,
            })
            .await?
            .into_inner();
        let mut n = 0;
        while let Some(u) = s.message().await? {
            n += u.steps.len();
        }
        anyhow::ensure!(n == 5000, "expected 5000 points, got {n}");
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let _ = writeln!(
        out,
        "{:<64} {:>10.2} ms median, {:.2} ms p90",
        "curve: one run's 5,000-point curve (WatchMetrics backlog)",
        percentile(&mut times.clone(), 0.5),
        percentile(&mut times, 0.9)
    );

    eprintln!("bench: curve done");
    Ok(())
}

/// `best` over 1,000 runs and `points_millions` million points.
async fn best_bench(b: &mut Bench, out: &mut String, points_millions: usize) -> anyhow::Result<()> {
    let (store, stamp) = (&b.store, b.stamp);
    let user = &mut b.user;
    // 3. `best` over 1,000 runs and N million points (written straight into the tables).
    let best_name = format!("best-{stamp}");
    let runs = 1000usize;
    user.submit_experiment(pb::SubmitRequest {
        yaml: experiment_yaml(&best_name, runs),
        file_name: "bench.yaml".into(),
        dry_run: false,
        extend: String::new(),
    })
    .await?;
    let exp = store.resolve_experiment(&best_name).await?;
    let run_ids: Vec<i64> = store.runs(exp).await?.iter().map(|r| r.id).collect();
    let steps = points_millions * 1_000_000 / runs / BEST_METRICS; // per run and metric
    let t = Instant::now();
    for chunk in run_ids.chunks(50) {
        insert_curves(store, chunk, steps).await?;
        // Two checkpoints per run with the objective at their steps, as ingestion leaves them.
        for &r in chunk {
            for s in [steps / 2, steps - 1] {
                sqlx::query(
                    "INSERT INTO checkpoints (run_id, attempt, step, size, sha256, chunks, objective) VALUES ($1, 1, $2, 0, '', '{}', $3)",
                )
                .bind(r)
                .bind(s as i64)
                .bind(synthetic_value(r, s))
                .execute(&store.pool)
                .await?;
            }
        }
    }
    // Only the data matters here: keep these runs away from the dispatch benchmarks below.
    sqlx::query("UPDATE runs SET state = $2 WHERE experiment_id = $1")
        .bind(exp)
        .bind(crate::states::RunState::Cancelled)
        .execute(&store.pool)
        .await?;
    sqlx::query("ANALYZE").execute(&store.pool).await?;
    let load_secs = t.elapsed().as_secs_f64();
    let mut times = Vec::new();
    for _ in 0..30 {
        let t = Instant::now();
        let b = user
            .best_checkpoints(pb::BestRequest {
                experiment: best_name.clone(),
                metric: String::new(),
                top: 5,
            })
            .await?
            .into_inner();
        anyhow::ensure!(b.checkpoints.len() == 5);
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let _ = writeln!(
        out,
        "{:<64} {:>10.2} ms median, {:.2} ms p90 (loaded in {load_secs:.1} s)",
        format!("best: top 5 of {runs} runs, {points_millions} M points, with metrics"),
        percentile(&mut times.clone(), 0.5),
        percentile(&mut times, 0.9)
    );
    eprintln!("bench: best done");
    Ok(())
}

/// Metrics per run in the `best` benchmark: the objective and nine loss terms.
const BEST_METRICS: usize = 10;

/// The value of run `r`'s objective at step `s`: varied, and the same wherever it is read.
fn synthetic_value(r: i64, s: usize) -> f64 {
    (r as f64 * 0.37 + s as f64 * 0.001).sin()
}

/// `steps` points of every metric of each run in `runs`, written as ten chunk rows per
/// metric (as ten batches would leave them), in one INSERT.
async fn insert_curves(store: &Store, runs: &[i64], steps: usize) -> anyhow::Result<()> {
    let (mut r_ids, mut names, mut firsts, mut lasts) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut st, mut va) = (Vec::new(), Vec::new());
    for &r in runs {
        for m in 0..BEST_METRICS {
            for part in 0..10 {
                let (lo, hi) = (part * steps / 10, (part + 1) * steps / 10);
                r_ids.push(r);
                names.push(match m {
                    0 => "eval/score".to_string(),
                    _ => format!("loss/term{m}"),
                });
                firsts.push(lo as i64);
                lasts.push(hi as i64 - 1);
                st.push(
                    (lo..hi)
                        .flat_map(|s| (s as i64).to_le_bytes())
                        .collect::<Vec<u8>>(),
                );
                va.push(
                    (lo..hi)
                        .flat_map(|s| synthetic_value(r, s).to_le_bytes())
                        .collect::<Vec<u8>>(),
                );
            }
        }
    }
    sqlx::query(
        "INSERT INTO metric_chunks (run_id, name, first_step, last_step, steps, vals) \
         SELECT * FROM UNNEST($1::int8[], $2::text[], $3::int8[], $4::int8[], $5::bytea[], $6::bytea[])",
    )
    .bind(&r_ids)
    .bind(&names)
    .bind(&firsts)
    .bind(&lasts)
    .bind(&st)
    .bind(&va)
    .execute(&store.pool)
    .await?;
    Ok(())
}

/// Dispatch latency: submit to assignment on an idle worker's session.
async fn dispatch_bench(b: &mut Bench, out: &mut String) -> anyhow::Result<()> {
    let (addr, stamp) = (b.addr.clone(), b.stamp);
    let user = &mut b.user;
    // 4. Dispatch latency: submit -> assignment on an idle worker's session.
    let (latencies, _) = sessions_bench(&addr, user, 1, 30, stamp, true).await?;
    let mut l = latencies;
    let _ = writeln!(
        out,
        "{:<64} {:>10.2} ms median, {:.2} ms p90",
        "dispatch: submit -> assignment on an idle worker (30 runs)",
        percentile(&mut l.clone(), 0.5),
        percentile(&mut l, 0.9)
    );

    eprintln!("bench: dispatch done");
    Ok(())
}

/// Many workers heart-beating and claiming.
async fn claims_bench(b: &mut Bench, out: &mut String, sessions: usize) -> anyhow::Result<()> {
    let (addr, stamp) = (b.addr.clone(), b.stamp);
    let user = &mut b.user;
    // 5. Many workers heart-beating and claiming.
    let runs_total = sessions * 5;
    let (mut waits, claims_per_s) =
        sessions_bench(&addr, user, sessions, runs_total, stamp, false).await?;
    let _ = writeln!(
        out,
        "{:<64} {:>10.0} claims/s, p99 idle->assignment {:.1} ms",
        format!("{sessions} worker sessions claiming {runs_total} runs (heartbeat 1 s)"),
        claims_per_s,
        percentile(&mut waits, 0.99)
    );
    Ok(())
}
