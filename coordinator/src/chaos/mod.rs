//! `plume chaos`: a real experiment on real processes (a private Postgres, `plume serve`,
//! `plume-worker`s) while faults are injected at seeded random moments: `kill -9` of workers
//! and of the coordinator, `pg_ctl restart -m fast`, and a worker SIGSTOPped past its lease
//! and then SIGCONTed. Afterwards `audit` checks what was stored; the table says whether
//! each goal was met.

pub mod audit;

use crate::client::user_client;
use crate::pg::{free_port, PrivatePostgres};
use crate::store::Store;
use anyhow::{bail, Context};
use audit::{FaultCounts, Report};
use plume_proto::v1 as pb;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const USER: &str = "chaos-user-token";
const WORKER: &str = "chaos-worker-token";

/// `plume chaos` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct ChaosArgs {
    /// Worker processes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub workers: u32,
    /// `train-judge` runs in the experiment (besides its judge stage and generator run).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub runs: u32,
    /// Steps of each `train-judge` run.
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u32).range(50..=1_000_000))]
    pub steps: u32,
    /// `kill -9` of a random worker.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub worker_kills: u32,
    /// `kill -9` and restart of the coordinator.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub coordinator_kills: u32,
    /// `pg_ctl restart -m fast`.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub pg_restarts: u32,
    /// A worker holding a run SIGSTOPped past its lease, then SIGCONTed.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub stops: u32,
    /// Mean milliseconds between faults (each gap is drawn from 0.5x to 1.5x).
    #[arg(long, default_value_t = 2500, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub gap_ms: u64,
    /// Lease length in seconds.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(2..=600))]
    pub lease_secs: u64,
    /// Seed of the fault schedule.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 1800, value_parser = clap::value_parser!(u64).range(10..=86_400))]
    pub timeout_secs: u64,
    /// Also write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Keep the processes' logs and data here (default: a temporary directory, removed).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// One fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    WorkerKill,
    CoordinatorKill,
    PgRestart,
    Stop,
}

/// A child process killed when dropped.
pub(crate) struct Proc(pub(crate) Child);

impl Proc {
    fn signal(&self, sig: &str) -> anyhow::Result<()> {
        let ok = Command::new("kill")
            .args([sig, &self.0.id().to_string()])
            .status()?
            .success();
        anyhow::ensure!(ok, "kill {sig} {} failed", self.0.id());
        Ok(())
    }

    /// `kill -9` and reap.
    fn kill9(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The processes under test (`plume serve` and `plume-worker`s, logging under `dir`) and
/// how to start them again; `plume bench --suite scheduling` uses them too.
pub(crate) struct Cluster {
    pub(crate) dir: PathBuf,
    pub(crate) plume: PathBuf,
    pub(crate) worker_bin: PathBuf,
    pub(crate) db: String,
    pub(crate) port: u16,
    pub(crate) lease_secs: u64,
    pub(crate) coordinator: Option<Proc>,
    /// Workers by name.
    pub(crate) workers: Vec<(String, Proc)>,
    pub(crate) started_workers: u32,
}

fn log_file(path: &Path) -> anyhow::Result<std::fs::File> {
    Ok(std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?)
}

impl Cluster {
    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub(crate) fn start_coordinator(&mut self) -> anyhow::Result<()> {
        let log = log_file(&self.dir.join("coordinator.log"))?;
        let child = Command::new(&self.plume)
            .args(["serve", "--listen", &format!("127.0.0.1:{}", self.port)])
            .args([
                "--lease-secs",
                &self.lease_secs.to_string(),
                "--http",
                "off",
            ])
            .env("DATABASE_URL", &self.db)
            .env("PLUME_USER_TOKEN", USER)
            .env("PLUME_WORKER_TOKEN", WORKER)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting plume serve")?;
        self.coordinator = Some(Proc(child));
        Ok(())
    }

    pub(crate) fn start_worker(&mut self) -> anyhow::Result<()> {
        self.started_workers += 1;
        let name = format!("chaos-w{}", self.started_workers);
        let dir = self.dir.join("workers").join(&name);
        std::fs::create_dir_all(&dir)?;
        let log = log_file(&self.dir.join("workers.log"))?;
        let child = Command::new(&self.worker_bin)
            .args([
                "--coordinator",
                &self.url(),
                "--device",
                "cpu",
                "--name",
                &name,
            ])
            .arg("--work-dir")
            .arg(&dir)
            .env("PLUME_WORKER_TOKEN", WORKER)
            .env("OMP_NUM_THREADS", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting plume-worker")?;
        self.workers.push((name, Proc(child)));
        Ok(())
    }
}

/// The experiment: a judge stage, a generator run that needs it (checkpoints as inputs),
/// and `runs` judge runs of `steps` steps with an evaluation and a checkpoint every 50.
fn experiment(runs: u32, steps: u32) -> String {
    let net = "net: {channels: [8, 8, 8], hidden: 16}";
    let mut y = format!(
        "name: chaos\n\
         dataset: {{kind: synthetic-birds, images: 200, resolution: 32, seed: 3}}\n\
         stages:\n  judge: {{job: train-judge, steps: 100, batch: 4, {net}, checkpoint_every: 20, eval_every: 50}}\n\
         runs:\n  - {{name: gen, job: pretrain-generator, needs: [judge], steps: 300, batch: 4, \
         checkpoint_every: 20, eval_every: 100, sample_every: 100000, fid_images: 16, \
         network: {{resolution: 32, z_dim: 32, w_dim: 32, channel_base: 256, channel_max: 16}}}}\n"
    );
    for i in 0..runs {
        let lr = [0.01, 0.02, 0.005, 0.03][i as usize % 4];
        y.push_str(&format!(
            "  - {{name: j{i}, job: train-judge, steps: {steps}, batch: 4, lr: {lr}, seed: {i}, \
             {net}, checkpoint_every: 50, eval_every: 50}}\n"
        ));
    }
    y.push_str(
        "objective: {metric: judge/attr_accuracy, mode: max}\nmax_restarts: 1000\n\
         checkpoints: {keep: {best: 2, latest: 1}}\n",
    );
    y
}

/// The seeded fault schedule, shuffled.
fn schedule(args: &ChaosArgs, rng: &mut impl Rng) -> Vec<Fault> {
    let mut f = vec![];
    f.extend(std::iter::repeat_n(
        Fault::WorkerKill,
        args.worker_kills as usize,
    ));
    f.extend(std::iter::repeat_n(
        Fault::CoordinatorKill,
        args.coordinator_kills as usize,
    ));
    f.extend(std::iter::repeat_n(
        Fault::PgRestart,
        args.pg_restarts as usize,
    ));
    f.extend(std::iter::repeat_n(Fault::Stop, args.stops as usize));
    f.shuffle(rng);
    f
}

/// Runs the chaos bench; `plume` and `plume_worker` are the binaries under test.
pub async fn run(args: ChaosArgs, plume: PathBuf, plume_worker: PathBuf) -> anyhow::Result<Report> {
    let tmp = tempfile::tempdir()?;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.canonicalize()?
        }
        None => tmp.path().to_path_buf(),
    };
    let mut pg = PrivatePostgres::start_in_background(dir.join("pg")).await?;
    let store = Store::connect(&pg.url, Duration::from_secs(args.lease_secs)).await?;
    let mut cluster = Cluster {
        dir: dir.clone(),
        plume,
        worker_bin: plume_worker,
        db: pg.url.clone(),
        port: free_port()?,
        lease_secs: args.lease_secs,
        coordinator: None,
        workers: vec![],
        started_workers: 0,
    };
    cluster.start_coordinator()?;
    let mut c = connect(&cluster.url(), Duration::from_secs(30)).await?;
    for _ in 0..args.workers {
        cluster.start_worker()?;
    }
    let submitted = Instant::now();
    let exp = c
        .submit_experiment(pb::SubmitRequest {
            yaml: experiment(args.runs, args.steps),
            file_name: "chaos.yaml".into(),
            dry_run: false,
            extend: String::new(),
        })
        .await
        .map_err(|e| anyhow::anyhow!("submit: {}", e.message()))?
        .into_inner()
        .experiment_id;
    let deadline = submitted + Duration::from_secs(args.timeout_secs);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed);
    let faults = schedule(&args, &mut rng);
    wait_until(deadline, "a run to start", || async {
        running_holder(&store, exp).await.is_some()
    })
    .await?;
    let injected = inject_all(
        &faults,
        args.gap_ms,
        &mut cluster,
        &mut pg,
        &store,
        exp,
        &mut rng,
    )
    .await?;
    wait_until(deadline, "the experiment to end", || async {
        finished(&store, exp).await.unwrap_or(false)
    })
    .await?;
    let wall_secs = submitted.elapsed().as_secs_f64();
    let mut c = connect(&cluster.url(), Duration::from_secs(30)).await?;
    let best = c
        .best_checkpoints(pb::BestRequest {
            experiment: exp.to_string(),
            metric: String::new(),
            top: 1,
        })
        .await
        .map_err(|e| anyhow::anyhow!("best: {}", e.message()))?
        .into_inner();
    drop(cluster.workers.drain(..));
    let report = audit_experiment(&store, exp, &best, &dir, &args, injected, wall_secs).await?;
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(report)
}

/// Injects `faults` in order, about `gap_ms` apart, until the experiment ends; returns how
/// many of each went in.
async fn inject_all(
    faults: &[Fault],
    gap_ms: u64,
    cluster: &mut Cluster,
    pg: &mut PrivatePostgres,
    store: &Store,
    exp: i64,
    rng: &mut impl Rng,
) -> anyhow::Result<FaultCounts> {
    let mut injected = FaultCounts::default();
    for (i, fault) in faults.iter().enumerate() {
        let gap = gap_ms as f64 * rng.random_range(0.5..1.5);
        tokio::time::sleep(Duration::from_millis(gap as u64)).await;
        if finished(store, exp).await? {
            eprintln!(
                "chaos: the experiment ended before fault {} of {}",
                i + 1,
                faults.len()
            );
            break;
        }
        inject(*fault, cluster, pg, store, exp, rng).await?;
        count(&mut injected, *fault);
        eprintln!("chaos: fault {}/{}: {fault:?}", i + 1, faults.len());
    }
    Ok(injected)
}

fn count(c: &mut FaultCounts, f: Fault) {
    match f {
        Fault::WorkerKill => c.worker_kills += 1,
        Fault::CoordinatorKill => c.coordinator_kills += 1,
        Fault::PgRestart => c.pg_restarts += 1,
        Fault::Stop => c.stops += 1,
    }
}

async fn audit_experiment(
    store: &Store,
    exp: i64,
    best: &pb::BestReply,
    dir: &Path,
    args: &ChaosArgs,
    injected: FaultCounts,
    wall_secs: f64,
) -> anyhow::Result<Report> {
    let (runs, succeeded, attempts): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE state = 'succeeded'), \
         COALESCE(sum(attempt), 0)::int8 FROM runs WHERE experiment_id = $1",
    )
    .bind(exp)
    .fetch_one(&store.pool)
    .await?;
    let (points_lost, duplicate_points) = audit::curve_damage(store, exp).await?;
    let stale_writes_accepted = audit::stale_writes(store, exp).await?;
    let logs = std::fs::read_to_string(dir.join("workers.log")).unwrap_or_default();
    let stale_writes_refused = logs.matches("stale attempt").count() as u64;
    let (best_matches, best_detail) =
        audit::best_check(store, exp, best, "judge/attr_accuracy", true).await?;
    Ok(Report {
        planned: FaultCounts {
            worker_kills: args.worker_kills,
            coordinator_kills: args.coordinator_kills,
            pg_restarts: args.pg_restarts,
            stops: args.stops,
        },
        injected,
        runs: runs as u64,
        succeeded: succeeded as u64,
        attempts: attempts as u64,
        points_lost,
        duplicate_points,
        stale_writes_accepted,
        stale_writes_refused,
        best_matches,
        best_detail,
        wall_secs,
    })
}

async fn inject(
    fault: Fault,
    cluster: &mut Cluster,
    pg: &mut PrivatePostgres,
    store: &Store,
    exp: i64,
    rng: &mut impl Rng,
) -> anyhow::Result<()> {
    match fault {
        Fault::WorkerKill => {
            let i = rng.random_range(0..cluster.workers.len());
            let (_, victim) = cluster.workers.remove(i);
            victim.kill9();
            cluster.start_worker()?;
        }
        Fault::CoordinatorKill => {
            if let Some(c) = cluster.coordinator.take() {
                c.kill9();
            }
            tokio::time::sleep(Duration::from_millis(rng.random_range(200..1500))).await;
            cluster.start_coordinator()?;
        }
        Fault::PgRestart => {
            let started = Instant::now();
            let result = tokio::task::block_in_place(|| pg.restart_fast());
            result?;
            eprintln!("chaos: postgres restarted in {:?}", started.elapsed());
        }
        Fault::Stop => stop_past_lease(cluster, store, exp).await?,
    }
    Ok(())
}

/// SIGSTOPs the worker holding a run until the run's lease has expired and it was requeued,
/// then SIGCONTs it: its next writes belong to a stale attempt and must be refused.
async fn stop_past_lease(cluster: &mut Cluster, store: &Store, exp: i64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let (run, attempt, name) = loop {
        if let Some(h) = running_holder(store, exp).await {
            if cluster.workers.iter().any(|(n, _)| *n == h.2) {
                break h;
            }
        }
        if Instant::now() > deadline {
            bail!("no worker held a run to SIGSTOP");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (_, proc) = cluster
        .workers
        .iter()
        .find(|(n, _)| *n == name)
        .expect("found above");
    proc.signal("-STOP")?;
    let stopped = Instant::now();
    let lease = Duration::from_secs(cluster.lease_secs);
    // The rescuer requeues the run once the lease expires.
    let moved_on = loop {
        let now: Option<i32> = sqlx::query_scalar("SELECT attempt FROM runs WHERE id = $1")
            .bind(run)
            .fetch_optional(&store.pool)
            .await
            .ok()
            .flatten();
        let ended: Option<bool> = sqlx::query_scalar(
            "SELECT ended_at IS NOT NULL FROM attempts WHERE run_id = $1 AND attempt = $2",
        )
        .bind(run)
        .bind(attempt)
        .fetch_optional(&store.pool)
        .await
        .ok()
        .flatten();
        if now.is_some_and(|a| a > attempt) || ended == Some(true) {
            break true;
        }
        if stopped.elapsed() > lease * 6 {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    proc.signal("-CONT")?;
    eprintln!(
        "chaos: {name} stopped for {:?} (lease {lease:?}); run {run} attempt {attempt} {}",
        stopped.elapsed(),
        if moved_on {
            "expired"
        } else {
            "did not expire"
        }
    );
    Ok(())
}

/// A run of the experiment that is running: its id, attempt and worker name.
async fn running_holder(store: &Store, exp: i64) -> Option<(i64, i32, String)> {
    sqlx::query_as(
        "SELECT r.id, r.attempt, w.name FROM runs r JOIN workers w ON w.id = r.lease_worker \
         WHERE r.experiment_id = $1 AND r.state = 'running' ORDER BY random() LIMIT 1",
    )
    .bind(exp)
    .fetch_optional(&store.pool)
    .await
    .ok()
    .flatten()
}

async fn finished(store: &Store, exp: i64) -> anyhow::Result<bool> {
    let s: crate::states::ExperimentState =
        sqlx::query_scalar("SELECT state FROM experiments WHERE id = $1")
            .bind(exp)
            .fetch_one(&store.pool)
            .await?;
    Ok(s.is_final())
}

pub(crate) async fn connect(
    url: &str,
    within: Duration,
) -> anyhow::Result<crate::client::UserClient> {
    let deadline = Instant::now() + within;
    loop {
        match user_client(url, USER).await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

async fn wait_until<F, Fut>(deadline: Instant, what: &str, mut f: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    while !f().await {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}
