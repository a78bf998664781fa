//! What Plume's system tests share: the built `plume` and `plume-worker` binaries as child
//! processes that die with the test, a private PostgreSQL, polling with a deadline, and the
//! headless browser. The tests themselves are in `tests/`; each starts real processes.

pub mod slurm;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// User token of the test coordinators.
pub const USER: &str = "user-token-for-tests";
/// Worker token of the test coordinators.
pub const WORKER: &str = "worker-token-for-tests";

/// A binary of the workspace's build, next to the test executables' `deps/` directory.
pub fn bin(name: &str) -> PathBuf {
    // Integration tests live in target/<profile>/deps; the binaries one level up.
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the workspace first (cargo test --workspace builds it; \
         alone: cargo build --release -p plume-coordinator -p plume-worker)",
        path.display()
    );
    path
}

/// A child process killed (and reaped) when dropped, so a failing test leaves none behind.
pub struct Kill(pub Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `plume serve` with the test tokens and `args`, its output appended to `log`.
pub fn serve(db: &str, args: &[&str], log: &Path) -> Kill {
    serve_env(db, args, &[], log)
}

/// [`serve`] with extra environment variables.
pub fn serve_env(db: &str, args: &[&str], env: &[(&str, &Path)], log: &Path) -> Kill {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Kill(
        Command::new(bin("plume"))
            .arg("serve")
            .args(args)
            .env("DATABASE_URL", db)
            .env("PLUME_WORKER_TOKEN", WORKER)
            .env("PLUME_USER_TOKEN", USER)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// The test coordinator: gRPC on `port`, 4 s leases, the dashboard on `http` (or none).
pub fn coordinator(db: &str, port: u16, http: Option<u16>, log: &Path) -> Kill {
    let listen = format!("127.0.0.1:{port}");
    let http = http.map_or("off".to_string(), |p| format!("127.0.0.1:{p}"));
    serve(
        db,
        &["--listen", &listen, "--lease-secs", "4", "--http", &http],
        log,
    )
}

/// A private Postgres in `dir` on a free port, started off the async runtime's threads.
pub async fn postgres(dir: PathBuf) -> plume_coordinator::pg::PrivatePostgres {
    plume_coordinator::pg::PrivatePostgres::start_in_background(dir)
        .await
        .unwrap()
}

/// A private Postgres, a store on it, and the test coordinator (no dashboard) answering.
pub struct Served {
    /// The database (stopped when dropped).
    pub pg: plume_coordinator::pg::PrivatePostgres,
    /// A store on it, for checks the API does not show.
    pub store: plume_coordinator::store::Store,
    /// The `plume serve` process.
    pub coordinator: Kill,
    /// Its gRPC port.
    pub port: u16,
    /// Its gRPC address.
    pub url: String,
}

/// Starts [`Served`] in `dir` and waits until the coordinator answers.
pub async fn served(dir: &Path) -> Served {
    let pg = postgres(dir.join("pg")).await;
    let store = plume_coordinator::store::Store::connect(&pg.url, Duration::from_secs(4))
        .await
        .unwrap();
    let port = plume_coordinator::pg::free_port().unwrap();
    let coordinator = coordinator(&pg.url, port, None, &dir.join("coordinator.log"));
    let url = format!("http://127.0.0.1:{port}");
    wait_for("the coordinator", 30, || {
        let url = url.clone();
        async move {
            plume_coordinator::client::user_client(&url, USER)
                .await
                .is_ok()
        }
    })
    .await;
    Served {
        pg,
        store,
        coordinator,
        port,
        url,
    }
}

/// A worker process on the test coordinator at `port`, one libtorch thread, its log in
/// `dir/worker.log`.
pub fn worker(port: u16, name: &str, dir: &Path) -> Kill {
    worker_with(&format!("http://127.0.0.1:{port}"), name, dir, &[])
}

/// [`worker`] on the coordinator at `url`, with extra flags (`--simulate-gpus 2x24`,
/// `--slots 2`).
pub fn worker_with(url: &str, name: &str, dir: &Path, flags: &[&str]) -> Kill {
    std::fs::create_dir_all(dir).unwrap();
    let log = std::fs::File::create(dir.join("worker.log")).unwrap();
    Kill(
        Command::new(bin("plume-worker"))
            .args(["--coordinator", url, "--device", "cpu", "--name", name])
            .args(flags)
            .arg("--work-dir")
            .arg(dir)
            .env("PLUME_WORKER_TOKEN", WORKER)
            .env("OMP_NUM_THREADS", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// `plume ARGS` against the test coordinator at `url`: (success, stdout then stderr).
pub fn plume(url: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin("plume"))
        .args(args)
        .args(["--coordinator", url, "--token", USER])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Polls `f` every 200 ms until it holds; fails the test after `secs`.
pub async fn wait_for<F, Fut>(what: &str, secs: u64, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Experiment `name` through the user API, after checking that every run succeeded.
pub async fn succeeded_experiment(
    c: &mut plume_coordinator::client::UserClient,
    name: &str,
) -> plume_proto::v1::ExperimentDetail {
    use plume_coordinator::states::RunState;
    let detail = c
        .get_experiment(plume_proto::v1::GetRequest {
            experiment: name.into(),
        })
        .await
        .unwrap()
        .into_inner();
    for r in &detail.runs {
        assert_eq!(
            RunState::try_from(r.state),
            Ok(RunState::Succeeded),
            "{}: {}",
            r.name,
            r.error
        );
    }
    detail
}

pub use plume_webdriver::Browser;
