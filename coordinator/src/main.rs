//! `plume`: run the coordinator (`up`, `serve`), talk to it (`submit`, `ls`, `show`, `watch`,
//! `best`, `cancel`, `logs`, `download`).

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use plume_coordinator::bench::Suite;
use plume_coordinator::client::{home, user_client, Endpoint, UserClient};
use plume_coordinator::pg::{free_port, PrivatePostgres};
use plume_coordinator::server::{serve, Config, Coordinator, Limits};
use plume_coordinator::states::{AttemptState, ExperimentState, RunState};
use plume_coordinator::store::Store;
use plume_proto::v1 as pb;
use rand::Rng;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "plume",
    version,
    about = "Plume: experiments on text-guided bird editing"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args, Clone)]
struct Conn {
    /// Coordinator URL (default: from `plume up`'s .plume/coordinator.json).
    #[arg(long, env = "PLUME_COORDINATOR")]
    coordinator: Option<String>,
    /// User token.
    #[arg(long, env = "PLUME_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Coordinator + local workers (+ a private Postgres when DATABASE_URL is unset).
    Up {
        /// Local worker processes.
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// Device of each worker (cpu, cuda, cuda:N, auto).
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Port of the coordinator (0: any free port).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Submit this experiment, follow it to the end, print the best checkpoint and exit.
        #[arg(long)]
        submit: Option<PathBuf>,
        /// Lease length in seconds (a silent worker's run is requeued after this).
        #[arg(long, default_value_t = 15)]
        lease_secs: u64,
        /// Dashboard port on 127.0.0.1 (another free port if taken; 0: any free port).
        #[arg(long, default_value_t = 8080)]
        http_port: u16,
    },
    /// The coordinator alone, on an existing database.
    Serve {
        /// Postgres URL.
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:50151")]
        listen: String,
        /// Token workers must present.
        #[arg(long, env = "PLUME_WORKER_TOKEN", hide_env_values = true)]
        worker_token: String,
        /// Token users must present.
        #[arg(long, env = "PLUME_USER_TOKEN", hide_env_values = true)]
        user_token: String,
        /// Lease length in seconds.
        #[arg(long, default_value_t = 15)]
        lease_secs: u64,
        /// TLS certificate (PEM); with --tls-key, serve over TLS.
        #[arg(long)]
        tls_cert: Option<PathBuf>,
        /// TLS private key (PEM).
        #[arg(long)]
        tls_key: Option<PathBuf>,
        /// Dashboard and JSON API listen address (plain HTTP; `off` to disable). Put a TLS
        /// proxy in front of it before exposing it beyond this host.
        #[arg(long, default_value = "127.0.0.1:8080")]
        http: String,
    },
    /// A private Postgres in the foreground (prints its URL), for development and tests.
    Postgres {
        /// Data directory (created and owned by Plume).
        #[arg(long)]
        dir: PathBuf,
        /// Port (0: any free port).
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
    /// Submit an experiment YAML; prints its id and runs.
    Submit {
        /// The experiment file.
        file: PathBuf,
        /// Validate and print the expanded runs; store nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Experiments and their run counts.
    Ls {
        #[command(flatten)]
        conn: Conn,
    },
    /// One experiment: runs, states, progress, attempts, last metrics.
    Show {
        /// Experiment id or name.
        experiment: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Live loss curves in the terminal, one chart per metric, runs overlaid.
    Watch {
        /// Experiment id or name.
        experiment: String,
        /// Only this run.
        #[arg(long)]
        run: Option<String>,
        /// Only these metrics (repeatable).
        #[arg(long)]
        metric: Vec<String>,
        /// Print once and exit instead of following.
        #[arg(long)]
        once: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// A results table: one row per run, one column per metric (default: the objective and
    /// every headline eval/ and gen/ metric)
    Table {
        /// Experiment id or name.
        experiment: String,
        /// Comma-separated metric names.
        #[arg(long, value_delimiter = ',')]
        metrics: Vec<String>,
        /// Which value of each metric's history.
        #[arg(long, value_enum, default_value = "last")]
        stat: plume_coordinator::table::Stat,
        /// Markdown, to paste into a results file.
        #[arg(long)]
        markdown: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// The best checkpoints of an experiment.
    Best {
        /// Experiment id or name.
        experiment: String,
        /// Rank by this metric (default: the experiment's objective).
        #[arg(long)]
        metric: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 5)]
        top: u32,
        /// JSON output.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Cancel an experiment's unfinished runs (or one run).
    Cancel {
        /// Experiment id or name.
        experiment: String,
        /// Only this run.
        #[arg(long)]
        run: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Requeue failed runs (and with --cancelled, cancelled ones), or one run, with a fresh
    /// restart budget; each resumes from its latest checkpoint.
    Rerun {
        /// Experiment id or name.
        experiment: String,
        /// Only this run (failed or cancelled).
        #[arg(long)]
        run: Option<String>,
        /// Cancelled runs too.
        #[arg(long)]
        cancelled: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Log lines of a run.
    Logs {
        /// Experiment id or name.
        experiment: String,
        /// Run name.
        run: String,
        /// Last this many lines.
        #[arg(long, default_value_t = 200)]
        tail: u32,
        #[command(flatten)]
        conn: Conn,
    },
    /// Coordinator benchmarks through gRPC and Postgres (private unless DATABASE_URL): metric
    /// ingestion, curve fetch, `best` over many runs, dispatch latency, many worker sessions.
    Bench {
        /// Simulated worker sessions.
        #[arg(long, default_value_t = 200)]
        sessions: usize,
        /// Millions of metric points behind the `best` query.
        #[arg(long, default_value_t = 10)]
        points_millions: usize,
        /// Only these benchmarks.
        #[arg(long, value_enum, default_value_t = Suite::All)]
        suite: Suite,
    },
    /// Download a checkpoint by id.
    Download {
        /// Checkpoint id (from `plume best`).
        checkpoint: i64,
        /// Where to write it.
        #[arg(long)]
        out: PathBuf,
        /// The whole file with its resume state (optimizer moments, a GAN's discriminator),
        /// to continue training elsewhere; by default the weights alone.
        #[arg(long)]
        with_state: bool,
        #[command(flatten)]
        conn: Conn,
    },
}

async fn connect(conn: &Conn) -> Result<UserClient> {
    let (url, token) = match (&conn.coordinator, &conn.token) {
        (Some(u), Some(t)) => (u.clone(), t.clone()),
        _ => {
            let e = Endpoint::load(&home())?;
            (
                conn.coordinator.clone().unwrap_or(e.url),
                conn.token.clone().unwrap_or(e.user_token),
            )
        }
    };
    user_client(&url, &token).await
}

fn random_token() -> String {
    let mut b = [0u8; 24];
    rand::rng().fill(&mut b);
    hex::encode(b)
}

/// Error text of a gRPC status, without transport noise.
fn grpc(e: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", e.message())
}

fn worker_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("PLUME_WORKER_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let sibling = exe.with_file_name("plume-worker");
    if sibling.is_file() {
        return Ok(sibling);
    }
    bail!(
        "plume-worker not found next to {}; build it (cargo build --release) or set PLUME_WORKER_BIN",
        exe.display()
    )
}

struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            // SIGINT lets a worker checkpoint and report before it exits.
            let _ = Command::new("kill")
                .args(["-INT", &c.id().to_string()])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for c in &mut self.0 {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PLUME_LOG")
                .unwrap_or_else(|_| "warn,sqlx::query=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Cmd::Up {
            workers,
            device,
            port,
            submit,
            lease_secs,
            http_port,
        } => {
            up(
                workers,
                &device,
                port,
                submit.as_deref(),
                lease_secs,
                http_port,
            )
            .await
        }
        Cmd::Serve {
            database_url,
            listen,
            worker_token,
            user_token,
            lease_secs,
            tls_cert,
            tls_key,
            http,
        } => {
            let store = Store::connect(&database_url, Duration::from_secs(lease_secs)).await?;
            let coordinator = Coordinator::new(
                store,
                Config {
                    worker_token,
                    user_token,
                    heartbeat: Duration::from_millis(1000),
                    limits: Limits::default(),
                },
            );
            let tls = match (tls_cert, tls_key) {
                (Some(c), Some(k)) => Some(tonic::transport::ServerTlsConfig::new().identity(
                    tonic::transport::Identity::from_pem(std::fs::read(c)?, std::fs::read(k)?),
                )),
                (None, None) => None,
                _ => bail!("--tls-cert and --tls-key go together"),
            };
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .with_context(|| format!("binding {listen}"))?;
            eprintln!("plume coordinator listening on {listen}");
            let dashboard = if http == "off" {
                None
            } else {
                let l = tokio::net::TcpListener::bind(&http)
                    .await
                    .with_context(|| format!("binding the dashboard to {http}"))?;
                eprintln!("dashboard on http://{}", l.local_addr()?);
                Some(tokio::spawn(plume_coordinator::web::serve(
                    coordinator.clone(),
                    l,
                    async {
                        let _ = tokio::signal::ctrl_c().await;
                    },
                )))
            };
            let result = serve(coordinator, listener, tls, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await;
            if let Some(d) = dashboard {
                d.abort();
            }
            result
        }
        Cmd::Postgres { dir, port } => {
            let port = if port == 0 { free_port()? } else { port };
            let pg =
                tokio::task::spawn_blocking(move || PrivatePostgres::start(&dir, port)).await??;
            println!("{}", pg.url);
            std::io::stdout().flush()?;
            wait_for_signal().await;
            drop(pg);
            Ok(())
        }
        Cmd::Submit {
            file,
            dry_run,
            conn,
        } => submit(&conn, &file, dry_run).await.map(|_| ()),
        Cmd::Ls { conn } => {
            let mut c = connect(&conn).await?;
            let list = c
                .list_experiments(pb::ListRequest {})
                .await
                .map_err(grpc)?
                .into_inner();
            println!(
                "{:>4}  {:<24} {:<10} {:<44} {:>10}",
                "id", "name", "state", "runs", "best"
            );
            for e in list.experiments {
                let runs: Vec<String> = e
                    .run_states
                    .iter()
                    .map(|(k, v)| format!("{v} {k}"))
                    .collect();
                println!(
                    "{:>4}  {:<24} {:<10} {:<44} {:>10}",
                    e.id,
                    e.name,
                    ExperimentState::name_of(e.state),
                    runs.join(", "),
                    if e.has_best {
                        format!("{:.4}", e.best_objective)
                    } else {
                        "-".into()
                    }
                );
            }
            Ok(())
        }
        Cmd::Show { experiment, conn } => {
            let d = experiment_detail(&conn, experiment).await?;
            print_experiment(&d, true);
            print_storage(&d);
            Ok(())
        }
        Cmd::Watch {
            experiment,
            run,
            metric,
            once,
            conn,
        } => watch(&conn, &experiment, run, metric, once).await,
        Cmd::Table {
            experiment,
            metrics,
            stat,
            markdown,
            conn,
        } => {
            let d = experiment_detail(&conn, experiment).await?;
            let metrics = if metrics.is_empty() {
                plume_coordinator::table::default_metrics(&d)
            } else {
                metrics
            };
            if metrics.is_empty() {
                bail!("no run of this experiment has reported an eval/ or gen/ metric yet; name some with --metrics");
            }
            print!(
                "{}",
                plume_coordinator::table::render(&d, &metrics, stat, markdown)
            );
            Ok(())
        }
        Cmd::Best {
            experiment,
            metric,
            top,
            json,
            conn,
        } => {
            let mut c = connect(&conn).await?;
            let b = c
                .best_checkpoints(pb::BestRequest {
                    experiment,
                    metric: metric.unwrap_or_default(),
                    top,
                })
                .await
                .map_err(grpc)?
                .into_inner();
            print_best(&b, json);
            Ok(())
        }
        Cmd::Cancel {
            experiment,
            run,
            conn,
        } => {
            let mut c = connect(&conn).await?;
            let r = c
                .cancel(pb::CancelRequest {
                    experiment,
                    run: run.unwrap_or_default(),
                })
                .await
                .map_err(grpc)?
                .into_inner();
            if r.cancelled.is_empty() {
                println!("nothing to cancel: every run had already finished");
            }
            for n in r.cancelled {
                println!("cancelled {n}");
            }
            Ok(())
        }
        Cmd::Rerun {
            experiment,
            run,
            cancelled,
            conn,
        } => {
            let mut c = connect(&conn).await?;
            let r = c
                .rerun(pb::RerunRequest {
                    experiment,
                    run: run.unwrap_or_default(),
                    with_cancelled: cancelled,
                })
                .await
                .map_err(grpc)?
                .into_inner();
            if r.requeued.is_empty() {
                println!(
                    "nothing to rerun: no run failed{}",
                    if cancelled { " or was cancelled" } else { "" }
                );
            }
            for n in r.requeued {
                println!("requeued {n}");
            }
            Ok(())
        }
        Cmd::Logs {
            experiment,
            run,
            tail,
            conn,
        } => {
            let mut c = connect(&conn).await?;
            let r = c
                .logs(pb::LogsRequest {
                    experiment,
                    run,
                    tail,
                })
                .await
                .map_err(grpc)?
                .into_inner();
            for l in r.lines {
                println!("{l}");
            }
            Ok(())
        }
        Cmd::Bench {
            sessions,
            points_millions,
            suite,
        } => {
            print!(
                "{}",
                plume_coordinator::bench::run(sessions, points_millions, suite).await?
            );
            Ok(())
        }
        Cmd::Download {
            checkpoint,
            out,
            with_state,
            conn,
        } => {
            let mut c = connect(&conn).await?;
            let mut stream = c
                .download_checkpoint(pb::DownloadRequest {
                    checkpoint_id: checkpoint,
                    fence: None,
                    with_state,
                })
                .await
                .map_err(grpc)?
                .into_inner();
            let mut data = Vec::new();
            let mut sha = String::new();
            while let Some(chunk) = stream.message().await.map_err(grpc)? {
                if !chunk.sha256.is_empty() {
                    sha = chunk.sha256;
                }
                data.extend_from_slice(&chunk.data);
            }
            if plume_coordinator::blobs::sha256_hex(&data) != sha {
                bail!("download of checkpoint {checkpoint} is corrupt (sha256 mismatch)");
            }
            let tmp = out.with_extension("part");
            std::fs::write(&tmp, &data)?;
            std::fs::rename(&tmp, &out)?;
            println!(
                "wrote {} ({} bytes, sha256 {sha})",
                out.display(),
                data.len()
            );
            Ok(())
        }
    }
}

async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn submit(conn: &Conn, file: &Path, dry_run: bool) -> Result<pb::SubmitReply> {
    let meta = std::fs::metadata(file).with_context(|| format!("{}", file.display()))?;
    let max = plume_coordinator::experiment::MAX_EXPERIMENT_BYTES as u64;
    if meta.len() > max {
        bail!(
            "{}: the file is {} bytes; experiments are at most {max} bytes",
            file.display(),
            meta.len()
        );
    }
    let yaml = std::fs::read_to_string(file)
        .with_context(|| format!("{}: not UTF-8 text", file.display()))?;
    let file_name = file.display().to_string();
    let reply = if dry_run {
        // A dry run validates locally as well, so it works without a coordinator.
        let exp = plume_coordinator::experiment::parse(&file_name, &yaml)?;
        plume_coordinator::server::planned_reply(&exp)
    } else {
        let mut c = connect(conn).await?;
        c.submit_experiment(pb::SubmitRequest {
            yaml,
            file_name,
            dry_run,
        })
        .await
        .map_err(grpc)?
        .into_inner()
    };
    if dry_run {
        println!(
            "{}: {} runs (dry run, nothing stored)",
            reply.name,
            reply.runs.len()
        );
    } else {
        println!(
            "experiment {} ({}): {} runs",
            reply.experiment_id,
            reply.name,
            reply.runs.len()
        );
    }
    for r in &reply.runs {
        println!(
            "  {:<48} {:<19} {:<8} needs [{}]",
            r.name,
            r.job_kind,
            RunState::name_of(r.state),
            r.needs.join(", ")
        );
        if dry_run {
            for line in r.config.lines() {
                println!("      {line}");
            }
        }
    }
    Ok(reply)
}

fn print_experiment(d: &pb::ExperimentDetail, attempts: bool) {
    let s = d.summary.clone().unwrap_or_default();
    println!(
        "experiment {} ({}): {}  objective {}",
        s.id,
        s.name,
        ExperimentState::name_of(s.state),
        s.objective
    );
    for r in &d.runs {
        let progress = if r.total_steps > 0 {
            format!("{}/{}", r.step, r.total_steps)
        } else {
            r.step.to_string()
        };
        let key: Vec<String> = r
            .metrics
            .iter()
            // Headline metrics only: per-group breakdowns (eval/edit_success/<group>) would
            // crowd them out.
            .filter(|m| {
                (m.name.starts_with("eval/") && m.name.matches('/').count() == 1)
                    || m.name == "loss/total"
            })
            .take(4)
            .map(|m| format!("{}={:.4}", m.name, m.last))
            .collect();
        println!(
            "  {:<44} {:<19} {:<10} attempt {:<2} {:>12}  {}",
            r.name,
            r.job_kind,
            RunState::name_of(r.state),
            r.attempt,
            progress,
            key.join(" ")
        );
        if !r.error.is_empty() {
            println!("      error: {}", r.error);
        }
        if attempts && r.attempts.len() > 1 {
            for a in &r.attempts {
                println!(
                    "      attempt {} on worker {}: {} (from step {}) {}",
                    a.attempt,
                    a.worker_id,
                    AttemptState::name_of(a.state),
                    a.resumed_from_step,
                    a.message
                );
            }
        }
    }
}

/// Megabytes, for storage lines.
fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// The storage lines of `show`: what the checkpoints weigh as files (weights and resume
/// state) against what is stored, then per run.
fn print_storage(d: &pb::ExperimentDetail) {
    if d.checkpoint_bytes == 0 {
        return;
    }
    println!(
        "checkpoints: {} as files ({} weights + {} resume state), {} stored (dedup and encoding saved {})",
        mb(d.checkpoint_bytes),
        mb(d.weight_bytes),
        mb(d.state_bytes),
        mb(d.stored_bytes),
        mb(d.checkpoint_bytes.saturating_sub(d.stored_bytes)),
    );
    let runs: Vec<(&str, &pb::RunStorage)> = d
        .runs
        .iter()
        .filter_map(|r| Some((r.name.as_str(), r.storage.as_ref()?)))
        .filter(|(_, s)| s.checkpoints > 0)
        .collect();
    if runs.is_empty() {
        return;
    }
    println!(
        "  {:<44} {:>5} {:>11} {:>11} {:>13}",
        "run", "ckpts", "weights", "state", "stored alone"
    );
    for (name, s) in runs {
        println!(
            "  {:<44} {:>5} {:>11} {:>11} {:>13}",
            name,
            s.checkpoints,
            mb(s.weight_bytes),
            mb(s.state_bytes),
            mb(s.own_stored_bytes)
        );
    }
}

fn print_best(b: &pb::BestReply, json: bool) {
    if json {
        let v: Vec<serde_json::Value> = b
            .checkpoints
            .iter()
            .map(|c| {
                serde_json::json!({
                    "checkpoint": c.checkpoint_id,
                    "run": c.run,
                    "step": c.step,
                    "metric": b.metric,
                    "value": c.value,
                    "size": c.size,
                    "sha256": c.sha256,
                    "metrics": c.metrics.iter().collect::<BTreeMap<_, _>>(),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "metric": b.metric, "mode": b.mode, "checkpoints": v
            }))
            .expect("serialisable")
        );
        return;
    }
    if b.checkpoints.is_empty() {
        println!("no checkpoint has a value of {} yet", b.metric);
        return;
    }
    println!("best by {} ({}):", b.metric, b.mode);
    println!(
        "  {:>10}  {:<44} {:>8} {:>10} {:>10}",
        "checkpoint", "run", "step", "value", "MB"
    );
    for c in &b.checkpoints {
        println!(
            "  {:>10}  {:<44} {:>8} {:>10.4} {:>10.1}",
            c.checkpoint_id,
            c.run,
            c.step,
            c.value,
            c.size as f64 / 1e6
        );
    }
}

/// Curves by run, by metric.
type Charts = BTreeMap<String, BTreeMap<String, (Vec<i64>, Vec<f64>)>>;

/// Terminal line charts: one per metric, every run overlaid with its own symbol.
fn chart(
    metric: &str,
    curves: &BTreeMap<String, (Vec<i64>, Vec<f64>)>,
    w: usize,
    h: usize,
) -> String {
    const MARKS: [char; 8] = ['*', 'o', '+', 'x', '#', '@', '%', '&'];
    let pts: Vec<(i64, f64)> = curves
        .values()
        .flat_map(|(s, v)| s.iter().copied().zip(v.iter().copied()))
        .filter(|(_, v)| v.is_finite())
        .collect();
    if pts.is_empty() {
        return String::new();
    }
    let (x0, x1) = (
        pts.iter().map(|p| p.0).min().unwrap_or(0),
        pts.iter().map(|p| p.0).max().unwrap_or(1),
    );
    let (y0, y1) = (
        pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min),
        pts.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max),
    );
    let xs = (x1 - x0).max(1) as f64;
    let ys = if y1 > y0 { y1 - y0 } else { 1.0 };
    let mut grid = vec![vec![' '; w]; h];
    for (i, (s, v)) in curves.values().enumerate() {
        for (x, y) in s.iter().zip(v) {
            if !y.is_finite() {
                continue;
            }
            let c = (((*x - x0) as f64 / xs) * (w - 1) as f64).round() as usize;
            let r = (((y - y0) / ys) * (h - 1) as f64).round() as usize;
            grid[h - 1 - r.min(h - 1)][c.min(w - 1)] = MARKS[i % MARKS.len()];
        }
    }
    let mut out = format!("{metric}\n");
    for (i, row) in grid.iter().enumerate() {
        let label = if i == 0 {
            format!("{y1:>10.4}")
        } else if i == h - 1 {
            format!("{y0:>10.4}")
        } else {
            " ".repeat(10)
        };
        out.push_str(&format!("{label} |{}\n", row.iter().collect::<String>()));
    }
    out.push_str(&format!(
        "{} +{}\n{} {:<w$}{}\n",
        " ".repeat(10),
        "-".repeat(w),
        " ".repeat(10),
        x0,
        x1,
        w = w.saturating_sub(x1.to_string().len())
    ));
    let legend: Vec<String> = curves
        .keys()
        .enumerate()
        .map(|(i, r)| format!("{} {r}", MARKS[i % MARKS.len()]))
        .collect();
    out.push_str(&format!("{}   {}\n", " ".repeat(10), legend.join("   ")));
    out
}

async fn watch(
    conn: &Conn,
    experiment: &str,
    run: Option<String>,
    metrics: Vec<String>,
    once: bool,
) -> Result<()> {
    let mut c = connect(conn).await?;
    let mut stream = c
        .watch_metrics(pb::WatchRequest {
            experiment: experiment.into(),
            run: run.unwrap_or_default(),
            metrics: metrics.clone(),
            backlog_only: once,
        })
        .await
        .map_err(grpc)?
        .into_inner();
    // metric -> run -> curve
    let mut data: Charts = BTreeMap::new();
    let mut states: BTreeMap<String, RunState> = BTreeMap::new();
    let mut last_draw = Instant::now() - Duration::from_secs(10);
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let draw = |data: &Charts, states: &BTreeMap<String, RunState>| {
        let mut out = String::new();
        if tty {
            out.push_str("\x1b[2J\x1b[H");
        }
        out.push_str(&format!(
            "{experiment}: {}\n\n",
            states
                .iter()
                .map(|(r, s)| format!("{r} {s}"))
                .collect::<Vec<_>>()
                .join(" | ")
        ));
        let shown: Vec<&String> = if metrics.is_empty() {
            // Default: losses first, then eval metrics; at most 6 charts.
            let mut names: Vec<&String> = data.keys().collect();
            names.sort_by_key(|n| {
                (
                    !n.starts_with("loss/total"),
                    !n.starts_with("eval/score"),
                    !n.starts_with("loss"),
                    (*n).clone(),
                )
            });
            names.into_iter().take(6).collect()
        } else {
            data.keys().collect()
        };
        for m in shown {
            out.push_str(&chart(m, &data[m], 64, 10));
            out.push('\n');
        }
        print!("{out}");
        let _ = std::io::stdout().flush();
    };
    while let Some(u) = stream.message().await.map_err(grpc)? {
        if let Ok(state) = RunState::try_from(u.run_state) {
            states.insert(u.run.clone(), state);
        } else {
            let e = data.entry(u.name).or_default().entry(u.run).or_default();
            e.0.extend(u.steps);
            e.1.extend(u.values);
        }
        if !once && last_draw.elapsed() > Duration::from_millis(1000) {
            draw(&data, &states);
            last_draw = Instant::now();
        }
    }
    draw(&data, &states);
    Ok(())
}

/// `plume up`: Postgres (private unless DATABASE_URL), the coordinator in this process, and
/// local workers as child processes.
async fn up(
    workers: usize,
    device: &str,
    port: u16,
    submit_file: Option<&Path>,
    lease_secs: u64,
    http_port: u16,
) -> Result<()> {
    let home = home();
    std::fs::create_dir_all(&home)?;
    let home = home.canonicalize()?;
    let (url, _pg) = plume_coordinator::pg::database_or_private(home.join("postgres")).await?;
    let store = Store::connect(&url, Duration::from_secs(lease_secs)).await?;
    let endpoint = Endpoint {
        url: String::new(),
        user_token: random_token(),
        worker_token: random_token(),
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    let endpoint = Endpoint {
        url: format!("http://{addr}"),
        ..endpoint
    };
    let path = home.join("coordinator.json");
    std::fs::write(&path, serde_json::to_string_pretty(&endpoint)?)?;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let coordinator = Coordinator::new(
        store,
        Config {
            worker_token: endpoint.worker_token.clone(),
            user_token: endpoint.user_token.clone(),
            heartbeat: Duration::from_millis(1000),
            limits: Limits::default(),
        },
    );
    let http = match tokio::net::TcpListener::bind(("127.0.0.1", http_port)).await {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            eprintln!("port {http_port} is taken; the dashboard takes another");
            tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?
        }
        Err(e) => return Err(e).context("binding the dashboard"),
    };
    let dashboard_addr = http.local_addr()?;
    let dashboard = tokio::spawn(plume_coordinator::web::serve(
        coordinator.clone(),
        http,
        std::future::pending(),
    ));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(coordinator, listener, None, async {
        let _ = stop_rx.await;
    }));
    eprintln!(
        "coordinator on {} (endpoint in {})",
        endpoint.url,
        path.display()
    );
    // The token rides in the fragment, which browsers never send to a server; the page
    // trades it for a session cookie and drops it from the address bar.
    eprintln!(
        "dashboard: http://{dashboard_addr}/#token={}",
        endpoint.user_token
    );
    let bin = worker_binary()?;
    // CPU workers share the machine's cores: libtorch's OpenMP would give each one a thread
    // per core, and oversubscribed spinning threads run an order of magnitude slower (two
    // 2-thread workers on 2 cores measured 3 s per generator step instead of 0.4 s).
    let threads_each =
        (device == "cpu" && std::env::var_os("OMP_NUM_THREADS").is_none()).then(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            (cores / workers.max(1)).max(1)
        });
    let mut children = Workers(Vec::new());
    for i in 0..workers {
        let dir = home.join("workers").join(i.to_string());
        std::fs::create_dir_all(&dir)?;
        let log = std::fs::File::create(dir.join("worker.log"))?;
        let mut command = Command::new(&bin);
        if let Some(n) = threads_each {
            command.env("OMP_NUM_THREADS", n.to_string());
        }
        let child = command
            .args(["--coordinator", &endpoint.url, "--device", device, "--name"])
            .arg(format!("local-{i}"))
            .arg("--work-dir")
            .arg(&dir)
            .env("PLUME_WORKER_TOKEN", &endpoint.worker_token)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        children.0.push(child);
    }
    eprintln!(
        "{workers} worker(s) on {device}{}; logs in {}",
        threads_each.map_or(String::new(), |n| format!(", {n} thread(s) each")),
        home.join("workers").display()
    );
    let result = match submit_file {
        Some(file) => {
            let conn = Conn {
                coordinator: Some(endpoint.url.clone()),
                token: Some(endpoint.user_token.clone()),
            };
            // A signal stops everything cleanly (workers, coordinator, private Postgres):
            // the experiment stays in the store, and the next `plume up` resumes its runs.
            tokio::select! {
                r = follow(&conn, file) => r,
                _ = wait_for_signal() => Err(anyhow::anyhow!(
                    "interrupted; the experiment is kept in {} and `plume up` there resumes it",
                    home.display()
                )),
            }
        }
        None => {
            eprintln!("ready; Ctrl-C stops everything");
            wait_for_signal().await;
            Ok(())
        }
    };
    drop(children);
    let _ = stop_tx.send(());
    let _ = server.await;
    dashboard.abort();
    result
}

/// One experiment's runs, metrics and storage, as `show` and `table` print them.
async fn experiment_detail(conn: &Conn, experiment: String) -> Result<pb::ExperimentDetail> {
    let mut c = connect(conn).await?;
    Ok(c.get_experiment(pb::GetRequest { experiment })
        .await
        .map_err(grpc)?
        .into_inner())
}

/// Submits, prints progress until every run ended, then the best checkpoint.
async fn follow(conn: &Conn, file: &Path) -> Result<()> {
    let reply = submit(conn, file, false).await?;
    let mut c = connect(conn).await?;
    let id = reply.experiment_id.to_string();
    let started = Instant::now();
    let mut last_line = String::new();
    loop {
        let d = c
            .get_experiment(pb::GetRequest {
                experiment: id.clone(),
            })
            .await
            .map_err(grpc)?
            .into_inner();
        let s = d.summary.clone().unwrap_or_default();
        let running: Vec<String> = d
            .runs
            .iter()
            .filter(|r| r.state == i32::from(RunState::Running))
            .map(|r| format!("{} {}/{}", r.name, r.step, r.total_steps))
            .collect();
        let done = d.runs.iter().filter(|r| r.ended).count();
        let line = format!(
            "[{:>4}s] {done}/{} runs done; running: {}",
            started.elapsed().as_secs(),
            d.runs.len(),
            if running.is_empty() {
                "-".into()
            } else {
                running.join(", ")
            }
        );
        if line != last_line {
            println!("{line}");
            last_line = line;
        }
        let state = ExperimentState::try_from(s.state).map_err(|e| anyhow::anyhow!(e))?;
        if state.is_final() {
            println!();
            print_experiment(&d, true);
            print_storage(&d);
            let b = c
                .best_checkpoints(pb::BestRequest {
                    experiment: id.clone(),
                    metric: String::new(),
                    top: 3,
                })
                .await
                .map_err(grpc)?
                .into_inner();
            println!();
            print_best(&b, false);
            if state != ExperimentState::Succeeded {
                bail!("experiment {} ended {state}", s.name);
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
