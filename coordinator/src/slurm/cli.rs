//! Slurm's commands (`sbatch`, `squeue`, `scancel`), run as child processes with a time
//! limit: a hung controller delays one launcher round, never the coordinator.

use super::plan::{BatchJob, BatchState};
use super::SlurmError;
use std::path::Path;
use std::time::Duration;
use tokio::process::Command;

/// Longest a Slurm command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `program args`, returning its standard output, or an error with its standard error.
async fn run(program: &str, args: &[String]) -> Result<String, SlurmError> {
    let out = tokio::time::timeout(
        COMMAND_TIMEOUT,
        Command::new(program).args(args).kill_on_drop(true).output(),
    )
    .await
    .map_err(|_| SlurmError::Command {
        program: program.into(),
        message: format!("no answer in {} s", COMMAND_TIMEOUT.as_secs()),
    })?
    .map_err(|e| SlurmError::Command {
        program: program.into(),
        message: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(SlurmError::Command {
            program: program.into(),
            message: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Checks that Slurm's client commands are installed and answer.
pub async fn check() -> Result<String, SlurmError> {
    Ok(run("sbatch", &["--version".into()])
        .await?
        .trim()
        .to_string())
}

/// Submits `script` with `args`; returns the new job's id.
pub async fn sbatch(args: &[String], script: &Path) -> Result<String, SlurmError> {
    let mut all = vec!["--parsable".to_string()];
    all.extend_from_slice(args);
    all.push(script.display().to_string());
    let out = run("sbatch", &all).await?;
    // `--parsable` prints `id` or `id;cluster`.
    let id = out.trim().split(';').next().unwrap_or("").to_string();
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SlurmError::Command {
            program: "sbatch".into(),
            message: format!("unexpected output {out:?}"),
        });
    }
    Ok(id)
}

/// The jobs named `name` (this coordinator's worker jobs).
pub async fn squeue(name: &str) -> Result<Vec<BatchJob>, SlurmError> {
    let args = [
        "--noheader".to_string(),
        "--name".into(),
        name.into(),
        "--format=%i|%T".into(),
    ];
    Ok(run("squeue", &args)
        .await?
        .lines()
        .filter_map(|l| {
            let (id, state) = l.trim().split_once('|')?;
            Some(BatchJob {
                id: id.to_string(),
                state: BatchState::parse(state),
            })
        })
        .collect())
}

/// Cancels job `id`: Slurm sends SIGTERM, and the worker releases its run (if any) first.
pub async fn scancel(id: &str) -> Result<(), SlurmError> {
    run("scancel", &[id.to_string()]).await.map(|_| ())
}
