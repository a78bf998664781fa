//! The Slurm launcher (`plume serve --slurm`): submits `plume-worker` batch jobs through
//! `sbatch` and scales them with the queue, between a minimum and a maximum, cancelling
//! workers that stay idle. Plume keeps scheduling the runs; Slurm only provides the workers.
//!
//! Each worker job runs `exec plume-worker --coordinator URL ...`, so the worker is the batch
//! shell and Slurm's warning signal (`--signal=B:USR1@N`) and `scancel`'s SIGTERM reach it: it
//! checkpoints, releases its run to be resumed elsewhere and exits. `--requeue` lets Slurm
//! requeue a preempted job. The worker token travels as a path (`PLUME_WORKER_TOKEN_FILE`,
//! the only variable exported), never in the script or the job's environment, both of which
//! Slurm keeps on disk.
//!
//! - `plan`: the scaling rule, a pure function;
//! - `cli`: `sbatch`, `squeue`, `scancel`;
//! - this file: settings, the job script and the launcher loop.

mod cli;
pub mod plan;

use crate::store::Store;
use plan::{plan, Bounds};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why the launcher cannot start or a Slurm command failed.
#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    /// A setting is out of range or inconsistent.
    #[error("--slurm-{flag}: {message}")]
    Setting {
        /// The flag, without `--slurm-`.
        flag: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A Slurm command failed or timed out.
    #[error("{program}: {message}")]
    Command {
        /// `sbatch`, `squeue` or `scancel`.
        program: String,
        /// Its error output or exit status.
        message: String,
    },
    /// Writing the job script or the log directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// `plume serve`'s Slurm flags.
#[derive(clap::Args, Debug, Clone)]
pub struct SlurmArgs {
    /// Launch workers as Slurm batch jobs (sbatch must be on PATH).
    #[arg(long)]
    pub slurm: bool,
    /// Worker jobs kept even with an empty queue.
    #[arg(long, default_value_t = 0)]
    pub slurm_min_workers: u32,
    /// Most worker jobs at once (pending or running).
    #[arg(long, default_value_t = 4)]
    pub slurm_max_workers: u32,
    /// Seconds an idle worker job above the minimum is kept before it is cancelled.
    #[arg(long, default_value_t = 300)]
    pub slurm_idle_secs: u64,
    /// Partition (sbatch --partition); default: the cluster's default.
    #[arg(long)]
    pub slurm_partition: Option<String>,
    /// Time limit of each worker job (sbatch --time: MM, MM:SS, HH:MM:SS, D-HH[:MM[:SS]]).
    #[arg(long, default_value = "04:00:00")]
    pub slurm_time: String,
    /// GPUs per worker job (sbatch --gres=gpu:N); 0 for CPU workers.
    #[arg(long, default_value_t = 0)]
    pub slurm_gpus: u32,
    /// Seconds before the time limit at which Slurm sends USR1 and the worker hands its run
    /// back (sbatch --signal=B:USR1@N).
    #[arg(long, default_value_t = 120)]
    pub slurm_signal_secs: u32,
    /// File with the worker token, readable from the compute nodes (the user's own file).
    #[arg(long)]
    pub slurm_token_file: Option<PathBuf>,
    /// Directory for the job script and the workers' logs and scratch (shared with the
    /// compute nodes).
    #[arg(long, default_value = ".plume/slurm")]
    pub slurm_dir: PathBuf,
    /// URL the workers dial (default: this coordinator's listen address).
    #[arg(long)]
    pub slurm_coordinator_url: Option<String>,
    /// The plume-worker binary on the compute nodes (default: the one beside `plume`).
    #[arg(long)]
    pub slurm_worker_bin: Option<PathBuf>,
    /// Worker device (cpu, cuda, cuda:N, auto).
    #[arg(long, default_value = "auto")]
    pub slurm_device: String,
    /// Slurm job name of the worker jobs; the launcher adopts running jobs of this name.
    #[arg(long, default_value = "plume-worker")]
    pub slurm_job_name: String,
    /// Another sbatch argument (account, QoS, constraint ...); repeatable.
    #[arg(
        long = "slurm-sbatch-arg",
        value_name = "ARG",
        allow_hyphen_values = true
    )]
    pub slurm_sbatch_args: Vec<String>,
    /// Seconds between launcher rounds.
    #[arg(long, default_value_t = 2, hide = true)]
    pub slurm_poll_secs: u64,
}

/// Checked launcher settings.
#[derive(Debug, Clone)]
pub struct SlurmConfig {
    bounds: Bounds,
    partition: Option<String>,
    time: String,
    gpus: u32,
    signal_secs: u32,
    token_file: PathBuf,
    dir: PathBuf,
    coordinator_url: String,
    worker_bin: PathBuf,
    device: String,
    job_name: String,
    sbatch_args: Vec<String>,
    poll: Duration,
}

fn setting(flag: &'static str, message: impl Into<String>) -> SlurmError {
    SlurmError::Setting {
        flag,
        message: message.into(),
    }
}

/// Seconds in a Slurm time limit (`MM`, `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM`,
/// `D-HH:MM:SS`), or `None` when it is not one.
pub fn time_limit_secs(s: &str) -> Option<u64> {
    let (days, rest) = match s.split_once('-') {
        Some((d, r)) => (Some(d.parse::<u64>().ok()?), r),
        None => (None, s),
    };
    let parts: Vec<u64> = rest
        .split(':')
        .map(|p| {
            (!p.is_empty() && p.len() <= 6)
                .then(|| p.parse().ok())
                .flatten()
        })
        .collect::<Option<_>>()?;
    let secs = match (days, parts.as_slice()) {
        (None, [m]) => m * 60,
        (None, [m, s]) => m * 60 + s,
        (None, [h, m, s]) | (Some(_), [h, m, s]) => h * 3600 + m * 60 + s,
        (Some(_), [h]) => h * 3600,
        (Some(_), [h, m]) => h * 3600 + m * 60,
        _ => return None,
    };
    days.unwrap_or(0).checked_mul(86_400)?.checked_add(secs)
}

/// A name or path that can sit inside `--export=` and a shell single-quoted word.
fn plain(flag: &'static str, s: &str) -> Result<(), SlurmError> {
    if s.is_empty() || s.len() > 4096 || s.chars().any(|c| c == ',' || c.is_control()) {
        return Err(setting(
            flag,
            format!("{s:?}: empty, too long, or has a comma"),
        ));
    }
    Ok(())
}

impl SlurmArgs {
    /// The numeric flags: bounds, time limit and warning.
    fn check_numbers(&self) -> Result<(), SlurmError> {
        if !(1..=1000).contains(&self.slurm_max_workers) {
            return Err(setting("max-workers", "must be 1..=1000"));
        }
        if self.slurm_min_workers > self.slurm_max_workers {
            return Err(setting(
                "min-workers",
                "must not exceed --slurm-max-workers",
            ));
        }
        if !(1..=7 * 86_400).contains(&self.slurm_idle_secs) {
            return Err(setting("idle-secs", "must be 1..=604800"));
        }
        if !(1..=3600).contains(&self.slurm_poll_secs) {
            return Err(setting("poll-secs", "must be 1..=3600"));
        }
        if self.slurm_gpus > 64 {
            return Err(setting("gpus", "must be 0..=64"));
        }
        let limit = time_limit_secs(&self.slurm_time).ok_or_else(|| {
            setting(
                "time",
                format!("{:?} is not a Slurm time limit", self.slurm_time),
            )
        })?;
        if self.slurm_signal_secs == 0 || self.slurm_signal_secs as u64 >= limit {
            return Err(setting(
                "signal-secs",
                format!("must be 1 and below the time limit ({limit} s)"),
            ));
        }
        if self.slurm_signal_secs > 65_535 {
            return Err(setting("signal-secs", "Slurm allows at most 65535"));
        }
        Ok(())
    }

    /// Checks the flags; `listen` and `tls` give the default URL workers dial.
    pub fn config(&self, listen: &str, tls: bool) -> Result<Option<SlurmConfig>, SlurmError> {
        if !self.slurm {
            return Ok(None);
        }
        self.check_numbers()?;
        let token_file = self.slurm_token_file.clone().ok_or_else(|| {
            setting(
                "token-file",
                "is needed with --slurm: a file holding the worker token",
            )
        })?;
        plain("token-file", &token_file.display().to_string())?;
        let meta = std::fs::metadata(&token_file)
            .map_err(|e| setting("token-file", format!("{}: {e}", token_file.display())))?;
        if !meta.is_file() || meta.len() == 0 {
            return Err(setting(
                "token-file",
                format!("{} is not a file holding a token", token_file.display()),
            ));
        }
        let worker_bin = match &self.slurm_worker_bin {
            Some(b) => b.clone(),
            None => std::env::current_exe()
                .map_err(|e| setting("worker-bin", e.to_string()))?
                .with_file_name("plume-worker"),
        };
        plain("worker-bin", &worker_bin.display().to_string())?;
        let dir = std::path::absolute(&self.slurm_dir)
            .map_err(|e| setting("dir", format!("{}: {e}", self.slurm_dir.display())))?;
        plain("dir", &dir.display().to_string())?;
        plain("device", &self.slurm_device)?;
        if !self
            .slurm_job_name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            || self.slurm_job_name.is_empty()
        {
            return Err(setting(
                "job-name",
                "letters, digits, '-', '_' and '.' only",
            ));
        }
        if let Some(p) = &self.slurm_partition {
            plain("partition", p)?;
        }
        let coordinator_url = match &self.slurm_coordinator_url {
            Some(u) => u.clone(),
            None => default_url(listen, tls),
        };
        plain("coordinator-url", &coordinator_url)?;
        Ok(Some(SlurmConfig {
            bounds: Bounds {
                min_workers: self.slurm_min_workers,
                max_workers: self.slurm_max_workers,
                idle_timeout: Duration::from_secs(self.slurm_idle_secs),
            },
            partition: self.slurm_partition.clone(),
            time: self.slurm_time.clone(),
            gpus: self.slurm_gpus,
            signal_secs: self.slurm_signal_secs,
            token_file: std::path::absolute(&token_file)
                .map_err(|e| setting("token-file", e.to_string()))?,
            dir,
            coordinator_url,
            worker_bin,
            device: self.slurm_device.clone(),
            job_name: self.slurm_job_name.clone(),
            sbatch_args: self.slurm_sbatch_args.clone(),
            poll: Duration::from_secs(self.slurm_poll_secs),
        }))
    }
}

/// The URL of `listen` as a compute node dials it: a wildcard address becomes this host's
/// name.
fn default_url(listen: &str, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let addr = match listen.rsplit_once(':') {
        Some(("0.0.0.0" | "[::]", port)) if !host.trim().is_empty() => {
            format!("{}:{port}", host.trim())
        }
        _ => listen.to_string(),
    };
    format!("{scheme}://{addr}")
}

/// `s` as one single-quoted shell word.
fn quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl SlurmConfig {
    /// The batch script: the worker replaces the shell, so Slurm's signals reach it.
    fn script(&self) -> String {
        format!(
            "#!/bin/sh\n\
             # Written by `plume serve --slurm` at each start. The worker token is read from\n\
             # PLUME_WORKER_TOKEN_FILE; nothing secret is in this file.\n\
             exec {bin} --coordinator {url} --device {device} --name \"slurm-$SLURM_JOB_ID\" \\\n\
             \x20   --work-dir {dir}/\"$SLURM_JOB_ID\"\n",
            bin = quoted(&self.worker_bin.display().to_string()),
            url = quoted(&self.coordinator_url),
            device = quoted(&self.device),
            dir = quoted(&self.dir.join("scratch").display().to_string()),
        )
    }

    fn script_path(&self) -> PathBuf {
        self.dir.join("plume-worker.sbatch")
    }

    /// sbatch's arguments for one worker job.
    fn sbatch_args(&self) -> Vec<String> {
        let mut export = format!("PLUME_WORKER_TOKEN_FILE={}", self.token_file.display());
        if let Some(ca) = std::env::var_os("PLUME_CA_CERT") {
            export.push_str(&format!(",PLUME_CA_CERT={}", ca.to_string_lossy()));
        }
        let mut a = vec![
            format!("--job-name={}", self.job_name),
            "--requeue".into(),
            format!("--signal=B:USR1@{}", self.signal_secs),
            format!("--time={}", self.time),
            format!("--output={}", self.dir.join("logs/worker-%j.log").display()),
            format!("--export={export}"),
        ];
        if let Some(p) = &self.partition {
            a.push(format!("--partition={p}"));
        }
        if self.gpus > 0 {
            a.push(format!("--gres=gpu:{}", self.gpus));
        }
        a.extend(self.sbatch_args.iter().cloned());
        a
    }

    /// Writes the job script and makes the log and scratch directories.
    fn prepare(&self) -> Result<(), SlurmError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SlurmError::Io { path, source }
        };
        for d in ["logs", "scratch"] {
            let p = self.dir.join(d);
            std::fs::create_dir_all(&p).map_err(io(&p))?;
        }
        let path = self.script_path();
        std::fs::write(&path, self.script()).map_err(io(&path))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .map_err(io(&path))?;
        Ok(())
    }
}

/// Checks Slurm and writes the job script: call before serving, so a missing `sbatch` stops
/// `plume serve` at once with a clear error.
pub async fn prepare(cfg: &SlurmConfig) -> Result<String, SlurmError> {
    let version = cli::check().await?;
    cfg.prepare()?;
    Ok(version)
}

/// The launcher loop: one round every poll interval, until the task is aborted. A failing
/// round is reported once (and again when its error changes) and retried.
pub async fn launch(store: Store, cfg: SlurmConfig) {
    let mut last_error = String::new();
    let mut tick = tokio::time::interval(cfg.poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match round(&store, &cfg).await {
            Ok(()) => last_error.clear(),
            Err(e) => {
                let e = e.to_string();
                if e != last_error {
                    eprintln!("slurm launcher: {e} (retrying every {:?})", cfg.poll);
                    last_error = e;
                }
            }
        }
    }
}

/// One round: look at Slurm and the queue, then submit or cancel worker jobs.
async fn round(store: &Store, cfg: &SlurmConfig) -> anyhow::Result<()> {
    let jobs = cli::squeue(&cfg.job_name).await?;
    let ids: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();
    let workers = store.slurm_workers(&ids).await?;
    let queued = store.queued_runs().await?;
    let p = plan(queued, &jobs, &workers, cfg.bounds);
    for _ in 0..p.submit {
        let id = cli::sbatch(&cfg.sbatch_args(), &cfg.script_path()).await?;
        eprintln!(
            "slurm launcher: submitted worker job {id} ({queued} runs queued, {} jobs before)",
            jobs.len()
        );
    }
    for (id, why) in p.cancel {
        cli::scancel(&id).await?;
        eprintln!("slurm launcher: cancelled worker job {id}: {why}");
    }
    remove_scratch_of_ended_jobs(&cfg.dir.join("scratch"), &ids);
    Ok(())
}

/// Removes the scratch directories (downloaded inputs, checkpoints in progress) of jobs
/// Slurm no longer lists; a requeued job is listed (pending), so its directory stays. Their
/// logs stay in `logs/`.
fn remove_scratch_of_ended_jobs(scratch: &Path, live: &[String]) {
    let Ok(entries) = std::fs::read_dir(scratch) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let is_job = !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit());
        if is_job && !live.contains(&name) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_slurm_time_limits() {
        assert_eq!(time_limit_secs("30"), Some(1800));
        assert_eq!(time_limit_secs("5:30"), Some(330));
        assert_eq!(time_limit_secs("04:00:00"), Some(14_400));
        assert_eq!(time_limit_secs("1-2"), Some(93_600));
        assert_eq!(time_limit_secs("1-00:01"), Some(86_460));
        for bad in ["", "x", "1:2:3:4", "-5", "1-", "::", "1-2:3:4:5"] {
            assert_eq!(time_limit_secs(bad), None, "{bad:?}");
        }
    }

    /// `plume serve`'s Slurm flags, parsed as the CLI parses them.
    fn args(flags: &[&str]) -> SlurmArgs {
        #[derive(clap::Parser)]
        struct Serve {
            #[command(flatten)]
            slurm: SlurmArgs,
        }
        let argv = std::iter::once("serve").chain(flags.iter().copied());
        <Serve as clap::Parser>::parse_from(argv).slurm
    }

    #[test]
    fn refuses_bad_settings_by_flag() {
        let tmp = tempfile::tempdir().unwrap();
        let token = tmp.path().join("token");
        std::fs::write(&token, "t\n").unwrap();
        let token = token.display().to_string();
        let ok = ["--slurm", "--slurm-token-file", token.as_str()];
        let cfg = args(&ok).config("0.0.0.0:50151", false).unwrap().unwrap();
        assert!(
            cfg.coordinator_url.ends_with(":50151"),
            "{}",
            cfg.coordinator_url
        );
        assert!(!cfg.coordinator_url.contains("0.0.0.0"));
        assert!(args(&[]).config("x", false).unwrap().is_none());
        let cases: &[(&[&str], &str)] = &[
            (&["--slurm"], "--slurm-token-file: is needed"),
            (
                &["--slurm-min-workers", "5", "--slurm-max-workers", "2"],
                "--slurm-min-workers",
            ),
            (
                &["--slurm-max-workers", "0"],
                "--slurm-max-workers: must be 1..=1000",
            ),
            (
                &["--slurm-time", "ten"],
                "--slurm-time: \"ten\" is not a Slurm time limit",
            ),
            (
                &["--slurm-time", "2", "--slurm-signal-secs", "120"],
                "--slurm-signal-secs",
            ),
            (&["--slurm-job-name", "a b"], "--slurm-job-name"),
            (&["--slurm-partition", "a,b"], "--slurm-partition"),
        ];
        for (extra, want) in cases {
            let mut flags = ok.to_vec();
            if extra == &["--slurm"] {
                flags = vec!["--slurm"];
            } else {
                flags.extend_from_slice(extra);
            }
            let e = args(&flags)
                .config("127.0.0.1:1", false)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(want), "{flags:?}: {e}");
        }
    }

    #[test]
    fn the_job_script_holds_no_token_and_execs_the_worker() {
        let tmp = tempfile::tempdir().unwrap();
        let token = tmp.path().join("token");
        std::fs::write(&token, "secret-token\n").unwrap();
        let t = token.display().to_string();
        let cfg = args(&["--slurm", "--slurm-token-file", &t, "--slurm-gpus", "2"])
            .config("127.0.0.1:9", true)
            .unwrap()
            .unwrap();
        let script = cfg.script();
        assert!(!script.contains("secret-token"));
        assert!(script.contains("exec '"), "{script}");
        assert!(script.contains("'https://127.0.0.1:9'"), "{script}");
        let a = cfg.sbatch_args();
        for want in [
            "--requeue",
            "--signal=B:USR1@120",
            "--gres=gpu:2",
            "--time=04:00:00",
        ] {
            assert!(a.iter().any(|x| x == want), "{want} missing from {a:?}");
        }
        assert!(
            a.contains(&format!("--export=PLUME_WORKER_TOKEN_FILE={t}")),
            "{a:?}"
        );
    }

    #[test]
    fn quotes_shell_words() {
        assert_eq!(quoted("a b"), "'a b'");
        assert_eq!(quoted("it's"), r"'it'\''s'");
    }
}
