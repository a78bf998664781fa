//! A private PostgreSQL for `plume up` and the tests when `DATABASE_URL` is unset: the
//! installed server binaries, a data directory Plume owns, a loopback port. Postgres refuses
//! to run as root, so when started as root the server runs as the `postgres` OS user.

use anyhow::{bail, Context};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running private server; stopped (fast shutdown) when dropped.
pub struct PrivatePostgres {
    child: Option<Child>,
    data: PathBuf,
    bin: PathBuf,
    as_postgres: bool,
    /// Connection URL of the `plume` database.
    pub url: String,
}

fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(d) = std::env::var_os("PLUME_PG_BIN") {
        return Ok(PathBuf::from(d));
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("initdb").is_file())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    if let Some(d) = found.pop() {
        return Ok(d);
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        if dir.join("initdb").is_file() {
            return Ok(dir);
        }
    }
    bail!("no PostgreSQL server binaries (initdb) found: install postgresql or set DATABASE_URL")
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

impl PrivatePostgres {
    fn command(&self, program: &str) -> Command {
        command(&self.bin, program, self.as_postgres)
    }

    /// Starts (initialising on first use) a server with its data under `dir`, listening on
    /// 127.0.0.1:`port`, and creates the `plume` database.
    pub fn start(dir: &Path, port: u16) -> anyhow::Result<PrivatePostgres> {
        Self::start_with(dir, port, &[])
    }

    /// [`PrivatePostgres::start`] with extra server settings (`name=value`, as for `-c`).
    pub fn start_with(dir: &Path, port: u16, settings: &[&str]) -> anyhow::Result<PrivatePostgres> {
        let bin = bin_dir()?;
        let as_postgres = running_as_root();
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = dir.canonicalize()?;
        if as_postgres {
            reachable_by_the_server_user(&dir)?;
        }
        let mut pg = PrivatePostgres {
            child: None,
            data: dir.join("pgdata"),
            bin,
            as_postgres,
            url: format!("postgres://postgres@127.0.0.1:{port}/plume"),
        };
        pg.initialise_or_stop_leftover()?;
        pg.spawn_server(&dir, port, settings)?;
        pg.wait_and_create_database(&dir, port)?;
        Ok(pg)
    }

    /// `initdb` on first use; otherwise stops a server a killed `plume up` left behind.
    fn initialise_or_stop_leftover(&self) -> anyhow::Result<()> {
        let data = &self.data;
        if data.join("PG_VERSION").is_file() {
            if data.join("postmaster.pid").exists() {
                let _ = self
                    .command("pg_ctl")
                    .args(["stop", "-m", "fast", "-D"])
                    .arg(data)
                    .output();
            }
            return Ok(());
        }
        std::fs::create_dir_all(data)?;
        if self.as_postgres {
            chown_postgres(data)?;
        }
        let out = self
            .command("initdb")
            .args(["-D"])
            .arg(data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-instructions",
            ])
            .output()
            .context("running initdb")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// Starts `postgres` on 127.0.0.1:`port`, its socket and log under `dir`.
    fn spawn_server(&mut self, dir: &Path, port: u16, settings: &[&str]) -> anyhow::Result<()> {
        let sock = dir.join("sock");
        std::fs::create_dir_all(&sock)?;
        if self.as_postgres {
            chown_postgres(&sock)?;
        }
        let log = std::fs::File::create(dir.join("postgres.log"))?;
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(&self.data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", sock.display()))
            .args(["-c", "max_connections=200"])
            // Commits return before their WAL reaches the disk: a crash of the machine (not of
            // a process) can lose the last fraction of a second, never corrupt anything.
            // Heartbeats stay fast while checkpoints stream in.
            .args(["-c", "synchronous_commit=off"])
            // Look for tables to vacuum every 5 s, not every minute: the queue of runs
            // churns fast, and each claim walks the dead entries vacuum would remove.
            .args(["-c", "autovacuum_naptime=5"])
            .args(settings.iter().flat_map(|s| ["-c", s]))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting postgres")?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits (30 s at most) until the server answers, then creates `plume` if it is missing.
    fn wait_and_create_database(&mut self, dir: &Path, port: u16) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let log = dir.join("postgres.log");
        loop {
            let out = self.psql(
                port,
                "-tAc",
                "SELECT 1 FROM pg_database WHERE datname = 'plume'",
            )?;
            if out.status.success() {
                if String::from_utf8_lossy(&out.stdout).trim() != "1" {
                    let c = self.psql(port, "-c", "CREATE DATABASE plume")?;
                    if !c.status.success() {
                        bail!(
                            "creating database plume: {}",
                            String::from_utf8_lossy(&c.stderr)
                        );
                    }
                }
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("postgres exited ({status}); see {}", log.display());
            }
            if Instant::now() > deadline {
                bail!(
                    "postgres did not accept connections within 30 s; see {}",
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `psql FLAG SQL` against the maintenance database.
    fn psql(&self, port: u16, flag: &str, sql: &str) -> anyhow::Result<std::process::Output> {
        let port = port.to_string();
        let args = [
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "-d",
            "postgres",
        ];
        Ok(self.command("psql").args(args).args([flag, sql]).output()?)
    }

    /// [`PrivatePostgres::start`] on a free port, from async code: `initdb` and the server's
    /// start block for seconds, so they run on the blocking pool, not a runtime thread.
    pub async fn start_in_background(dir: PathBuf) -> anyhow::Result<PrivatePostgres> {
        let port = free_port()?;
        tokio::task::spawn_blocking(move || PrivatePostgres::start(&dir, port)).await?
    }

    /// `pg_ctl restart -m fast`: every connection is cut, running transactions roll back, and
    /// the server comes back with the same options (for `plume chaos`).
    pub fn restart_fast(&mut self) -> anyhow::Result<()> {
        let log = self.data.join("pg_ctl_restart.log");
        let out = self
            .command("pg_ctl")
            .args(["restart", "-m", "fast", "-w", "-t", "60", "-D"])
            .arg(&self.data)
            .arg("-l")
            .arg(&log)
            .output()
            .context("running pg_ctl restart")?;
        if !out.status.success() {
            bail!(
                "pg_ctl restart failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Stops the server (fast shutdown: running transactions are rolled back, data is safe).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = self
                .command("pg_ctl")
                .args(["stop", "-m", "fast", "-w", "-D"])
                .arg(&self.data)
                .output();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

fn command(bin: &Path, program: &str, as_postgres: bool) -> Command {
    if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(program));
        c.current_dir("/");
        c
    } else {
        Command::new(bin.join(program))
    }
}

/// The server runs as user `postgres`: it must be able to reach `dir` through every parent.
fn reachable_by_the_server_user(dir: &Path) -> anyhow::Result<()> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    let mut a = dir.parent();
    while let Some(p) = a {
        let mode = std::fs::metadata(p)?.permissions().mode();
        if mode & 0o001 == 0 {
            bail!("{} is not searchable by other users; the private Postgres (run as user postgres) cannot reach {}", p.display(), dir.display());
        }
        a = p.parent();
    }
    Ok(())
}

fn chown_postgres(p: &Path) -> anyhow::Result<()> {
    let out = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(p)
        .output()?;
    if !out.status.success() {
        bail!(
            "chown postgres {}: {}",
            p.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// `DATABASE_URL` when it is set, else a private Postgres in `dir` on a free port with the
/// extra server `settings` (said on stderr; it stops when the returned guard drops). Initdb
/// and start-up block for seconds, so they run off the async runtime's threads.
pub async fn database_or_private(
    dir: std::path::PathBuf,
    settings: &'static [&'static str],
) -> anyhow::Result<(String, Option<PrivatePostgres>)> {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        if !url.is_empty() {
            return Ok((url, None));
        }
    }
    let port = free_port()?;
    eprintln!("starting a private PostgreSQL in {}", dir.display());
    let pg = tokio::task::spawn_blocking(move || PrivatePostgres::start_with(&dir, port, settings))
        .await??;
    Ok((pg.url.clone(), Some(pg)))
}

/// A free loopback port (bound and released; good enough for tests and `plume up`).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
