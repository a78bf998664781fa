//! Commands that start things: `up` (coordinator, workers, a private Postgres, the
//! dashboard), `serve`, `postgres` and `bench`.

use super::*;
use crate::watch::follow;

/// Arguments of `plume up`.
#[derive(clap::Args)]
pub struct UpArgs {
    /// Local worker processes.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Device of each worker (cpu, cuda, cuda:N, auto).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Port of the coordinator (0: any free port).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Submit this experiment, follow it to the end, print the best checkpoint and exit.
    #[arg(long)]
    pub submit: Option<PathBuf>,
    /// Lease length in seconds (a silent worker's run is requeued after this).
    #[arg(long, default_value_t = 15)]
    pub lease_secs: u64,
    /// Dashboard port on 127.0.0.1 (another free port if taken; 0: any free port).
    #[arg(long, default_value_t = 8080)]
    pub http_port: u16,
}

/// Arguments of `plume serve`.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// Postgres URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:50151")]
    pub listen: String,
    /// Token workers must present. Needed at the first start on a database only: it is
    /// stored hashed, and after `plume token rotate` the database's tokens rule.
    #[arg(long, env = "PLUME_WORKER_TOKEN", hide_env_values = true)]
    pub worker_token: Option<String>,
    /// Token users must present (as --worker-token: needed at the first start only).
    #[arg(long, env = "PLUME_USER_TOKEN", hide_env_values = true)]
    pub user_token: Option<String>,
    /// Lease length in seconds.
    #[arg(long, default_value_t = 15)]
    pub lease_secs: u64,
    /// TLS certificate (PEM); with --tls-key, serve over TLS.
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// Dashboard and JSON API listen address (plain HTTP; `off` to disable). Put a TLS
    /// proxy in front of it before exposing it beyond this host.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: String,
    #[command(flatten)]
    pub slurm: plume_coordinator::slurm::SlurmArgs,
}

/// Arguments of `plume postgres`.
#[derive(clap::Args)]
pub struct PostgresArgs {
    /// Data directory (created and owned by Plume).
    #[arg(long)]
    pub dir: PathBuf,
    /// Port (0: any free port).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
}

/// Arguments of `plume bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Simulated worker sessions.
    #[arg(long, default_value_t = 200)]
    pub sessions: usize,
    /// Millions of metric points behind the `best` query.
    #[arg(long, default_value_t = 10)]
    pub points_millions: usize,
    /// Only these benchmarks.
    #[arg(long, value_enum, default_value_t = Suite::All)]
    pub suite: Suite,
    /// Runs of the scheduling suite.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub runs: u64,
    /// Worker processes of the scheduling suite.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub workers: u32,
    /// Scheduling suite: also list the statements Postgres spent its time in
    /// (pg_stat_statements, loaded into the private server).
    #[arg(long)]
    pub statements: bool,
}

/// `plume up`.
pub async fn up_command(args: UpArgs) -> Result<()> {
    let UpArgs {
        workers,
        device,
        port,
        submit,
        lease_secs,
        http_port,
    } = args;
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

/// `plume serve`.
pub async fn serve_command(args: ServeArgs) -> Result<()> {
    let ServeArgs {
        database_url,
        listen,
        worker_token,
        user_token,
        lease_secs,
        tls_cert,
        tls_key,
        http,
        slurm,
    } = args;
    let slurm = slurm.config(&listen, tls_cert.is_some())?;
    let store = Store::connect(&database_url, Duration::from_secs(lease_secs)).await?;
    let launcher = match slurm {
        Some(cfg) => {
            let version = plume_coordinator::slurm::prepare(&cfg).await?;
            eprintln!("slurm launcher on ({version})");
            Some(tokio::spawn(plume_coordinator::slurm::launch(
                store.clone(),
                cfg,
            )))
        }
        None => None,
    };
    let coordinator = Coordinator::start(
        store,
        Config {
            worker_token,
            user_token,
            token_mode: SeedMode::IfNone,
            intervals: Intervals::default(),
            limits: Limits::default(),
        },
    )
    .await?;
    let pem = match (&tls_cert, &tls_key) {
        (Some(c), Some(k)) => Some((c.clone(), k.clone())),
        (None, None) => None,
        _ => bail!("--tls-cert and --tls-key go together"),
    };
    let tls = match &pem {
        Some((c, k)) => Some(tonic::transport::ServerTlsConfig::new().identity(
            tonic::transport::Identity::from_pem(std::fs::read(c)?, std::fs::read(k)?),
        )),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    eprintln!("plume coordinator listening on {listen}");
    let dashboard = match http.as_str() {
        "off" => None,
        _ => Some(serve_dashboard(&coordinator, &http, pem.as_ref()).await?),
    };
    let result = serve(coordinator, listener, tls, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await;
    if let Some(d) = dashboard {
        d.abort();
    }
    if let Some(l) = launcher {
        // The worker jobs stay: they reconnect to the next coordinator, whose launcher adopts
        // them by job name.
        l.abort();
    }
    result
}

/// The dashboard on `addr`, over TLS with the gRPC certificate when there is one; stops on
/// Ctrl-C.
async fn serve_dashboard(
    coordinator: &Coordinator,
    addr: &str,
    pem: Option<&(PathBuf, PathBuf)>,
) -> Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the dashboard to {addr}"))?;
    let local = l.local_addr()?;
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let coordinator = coordinator.clone();
    Ok(match pem {
        Some((cert, key)) => {
            let tls = plume_coordinator::web::server_config(cert, key)?;
            eprintln!("dashboard on https://{local}");
            tokio::spawn(plume_coordinator::web::serve_tls(coordinator, l, tls, stop))
        }
        None => {
            eprintln!("dashboard on http://{local}");
            tokio::spawn(plume_coordinator::web::serve(coordinator, l, stop))
        }
    })
}

/// `plume postgres`.
pub async fn postgres_command(args: PostgresArgs) -> Result<()> {
    let PostgresArgs { dir, port } = args;
    let port = if port == 0 { free_port()? } else { port };
    let pg = tokio::task::spawn_blocking(move || PrivatePostgres::start(&dir, port)).await??;
    println!("{}", pg.url);
    std::io::stdout().flush()?;
    wait_for_signal().await;
    drop(pg);
    Ok(())
}

/// `plume bench`.
pub async fn bench_command(args: BenchArgs) -> Result<()> {
    let BenchArgs {
        sessions,
        points_millions,
        suite,
        runs,
        workers,
        statements,
    } = args;
    if statements && !matches!(suite, Suite::Scheduling) {
        anyhow::bail!("--statements applies to --suite scheduling only");
    }
    if let Suite::Scheduling = suite {
        let table = plume_coordinator::bench::run_scheduling(
            runs as usize,
            workers,
            worker_binary()?,
            statements,
        )
        .await?;
        print!("{table}");
        return Ok(());
    }
    print!(
        "{}",
        plume_coordinator::bench::run(sessions, points_millions, suite).await?
    );
    Ok(())
}

/// With a file, submits it and follows it to the end; without, waits for Ctrl-C. A signal
/// stops everything cleanly either way.
async fn follow_or_wait(
    submit_file: Option<&Path>,
    endpoint: &Endpoint,
    home: &Path,
) -> Result<()> {
    match submit_file {
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
    }
}

/// Writes where the coordinator listens and its tokens to `home/coordinator.json`, readable
/// by the user alone; the CLI finds the coordinator there.
pub(crate) fn write_endpoint(home: &Path, endpoint: &Endpoint) -> Result<PathBuf> {
    let path = home.join("coordinator.json");
    write_private(&path, &serde_json::to_string_pretty(endpoint)?)?;
    Ok(path)
}

/// The dashboard's listener on `http_port`, or on any free port when that one is taken.
async fn bind_dashboard(http_port: u16) -> Result<tokio::net::TcpListener> {
    match tokio::net::TcpListener::bind(("127.0.0.1", http_port)).await {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            eprintln!("port {http_port} is taken; the dashboard takes another");
            Ok(tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?)
        }
        Err(e) => Err(e).context("binding the dashboard"),
    }
}

/// `workers` worker processes on `device` against the endpoint, each with its directory and
/// log under `home/workers/`.
fn start_workers(
    workers: usize,
    device: &str,
    home: &Path,
    endpoint: &Endpoint,
) -> Result<Workers> {
    // CPU workers share the machine's cores: libtorch's OpenMP would give each one a thread
    // per core, and oversubscribed spinning threads run an order of magnitude slower (two
    // 2-thread workers on 2 cores measured 3 s per generator step instead of 0.4 s).
    let threads_each =
        (device == "cpu" && std::env::var_os("OMP_NUM_THREADS").is_none()).then(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            (cores / workers.max(1)).max(1)
        });
    let bin = worker_binary()?;
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
    Ok(children)
}

/// `plume chaos`: the table on stdout; a missed goal is a failure.
pub async fn chaos_command(args: plume_coordinator::chaos::ChaosArgs) -> Result<()> {
    let plume = std::env::current_exe()?;
    let report = plume_coordinator::chaos::run(args, plume, worker_binary()?).await?;
    print!("{}", report.table());
    if !report.passed() {
        bail!("chaos: a goal was missed (see the table)");
    }
    Ok(())
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

async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
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
    let (url, _pg) = plume_coordinator::pg::database_or_private(home.join("postgres"), &[]).await?;
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
    let path = write_endpoint(&home, &endpoint)?;
    // `up` writes fresh tokens to its endpoint file at each start; they replace the last ones.
    let coordinator = Coordinator::start(
        store,
        Config {
            worker_token: Some(endpoint.worker_token.clone()),
            user_token: Some(endpoint.user_token.clone()),
            token_mode: SeedMode::Replace,
            intervals: Intervals::default(),
            limits: Limits::default(),
        },
    )
    .await?;
    let http = bind_dashboard(http_port).await?;
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
    let children = start_workers(workers, device, &home, &endpoint)?;
    let result = follow_or_wait(submit_file, &endpoint, &home).await;
    drop(children);
    let _ = stop_tx.send(());
    let _ = server.await;
    dashboard.abort();
    result
}
