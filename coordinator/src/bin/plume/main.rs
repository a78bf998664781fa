//! `plume`: run the coordinator (`up`, `serve`), talk to it (`submit`, `ls`, `show`, `watch`,
//! `best`, `cancel`, `logs`, `download`, `token rotate`).

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use plume_coordinator::bench::Suite;
use plume_coordinator::client::{home, user_client, write_private, Endpoint, UserClient};
use plume_coordinator::pg::{free_port, PrivatePostgres};
use plume_coordinator::server::auth::random_token;
use plume_coordinator::server::{serve, Config, Coordinator, Intervals, Limits};
use plume_coordinator::states::{AttemptState, ExperimentState, RunState};
use plume_coordinator::store::{SeedMode, Store};
use plume_proto::v1 as pb;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod cluster;
mod inspect;
mod runs;
mod token;
mod watch;

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

/// The settings a `plume.toml` (`[plume]`) or a `PLUME_*` variable may give (flag ids; see
/// the `plume-settings` crate). `--port` is left out: `up` and `postgres` mean different ports.
const SETTINGS: plume_settings::Spec = plume_settings::Spec {
    section: "plume",
    keys: &[
        "coordinator",
        "token",
        "workers",
        "device",
        "lease_secs",
        "http_port",
        "database_url",
        "listen",
        "http",
        "tls_cert",
        "tls_key",
    ],
};

#[derive(Subcommand)]
enum Cmd {
    /// The merged settings (plume.toml files, PLUME_* variables, flags) and where each came
    /// from; tokens are never printed.
    Config,
    /// Coordinator + local workers (+ a private Postgres when DATABASE_URL is unset).
    Up(cluster::UpArgs),
    /// The coordinator alone, on an existing database.
    Serve(Box<cluster::ServeArgs>),
    /// A private Postgres in the foreground (prints its URL), for development and tests.
    Postgres(cluster::PostgresArgs),
    /// Submit an experiment YAML; prints its id and runs.
    Submit(runs::SubmitArgs),
    /// Experiments and their run counts.
    Ls(inspect::LsArgs),
    /// One experiment: runs, states, progress, attempts, last metrics.
    Show(inspect::ShowArgs),
    /// Live loss curves in the terminal, one chart per metric, runs overlaid.
    Watch(watch::WatchArgs),
    /// A results table: one row per run, one column per metric (default: the objective and
    /// every headline eval/ and gen/ metric)
    Table(inspect::TableArgs),
    /// The best checkpoints of an experiment.
    Best(inspect::BestArgs),
    /// Cancel an experiment's unfinished runs (or one run).
    Cancel(runs::CancelArgs),
    /// Requeue failed runs (and with --cancelled, cancelled ones), or one run, with a fresh
    /// restart budget; each resumes from its latest checkpoint.
    Rerun(runs::RerunArgs),
    /// Log lines of a run.
    Logs(runs::LogsArgs),
    /// Coordinator benchmarks through gRPC and Postgres (private unless DATABASE_URL): metric
    /// ingestion, curve fetch, `best` over many runs, dispatch latency, many worker sessions.
    Bench(cluster::BenchArgs),
    /// Download a checkpoint by id.
    Download(runs::DownloadArgs),
    /// Fault injection on a real experiment (kill -9 of workers and the coordinator, Postgres
    /// restarts, a worker stopped past its lease); prints whether nothing was lost.
    Chaos(Box<plume_coordinator::chaos::ChaosArgs>),
    /// Access tokens: `plume token rotate [--worker] [--grace SECS] [--write FILE]`.
    #[command(subcommand)]
    Token(token::TokenCmd),
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

/// Error text of a gRPC status, without transport noise.
fn grpc(e: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", e.message())
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
    let cwd = std::env::current_dir().context("the current directory")?;
    let (cli, settings) = plume_settings::parse_or_exit::<Cli>(&SETTINGS, &cwd);
    match cli.command {
        Cmd::Config => {
            println!("plume's settings ([plume] in plume.toml, PLUME_* variables, flags):");
            print!("{}", plume_settings::report(&settings, &cwd));
            Ok(())
        }
        Cmd::Up(args) => cluster::up_command(args).await,
        Cmd::Serve(args) => cluster::serve_command(*args).await,
        Cmd::Postgres(args) => cluster::postgres_command(args).await,
        Cmd::Submit(args) => runs::submit_command(args).await,
        Cmd::Ls(args) => inspect::ls_command(args).await,
        Cmd::Show(args) => inspect::show_command(args).await,
        Cmd::Watch(args) => watch::watch_command(args).await,
        Cmd::Table(args) => inspect::table_command(args).await,
        Cmd::Best(args) => inspect::best_command(args).await,
        Cmd::Cancel(args) => runs::cancel_command(args).await,
        Cmd::Rerun(args) => runs::rerun_command(args).await,
        Cmd::Logs(args) => runs::logs_command(args).await,
        Cmd::Bench(args) => cluster::bench_command(args).await,
        Cmd::Download(args) => runs::download_command(args).await,
        Cmd::Token(cmd) => token::token_command(cmd).await,
        Cmd::Chaos(args) => cluster::chaos_command(*args).await,
    }
}
