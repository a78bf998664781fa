//! Commands that change experiments and runs: `submit`, `cancel`, `rerun`, and the ones that
//! fetch a run's output: `logs`, `download`.

use super::*;

/// Arguments of `plume submit`.
#[derive(clap::Args)]
pub struct SubmitArgs {
    /// The experiment file.
    pub file: PathBuf,
    /// Validate and print the expanded runs; store nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Add the file's new runs and sweep points to this experiment (id or name) instead of
    /// creating one. Runs it already has must match the file and are reused with their
    /// checkpoints (a finished generator is not trained again); any conflict is listed and
    /// nothing changes. With --dry-run: what would be added and reused.
    #[arg(long, value_name = "EXPERIMENT")]
    pub extend: Option<String>,
    #[command(flatten)]
    pub conn: Conn,
}

/// Arguments of `plume cancel`.
#[derive(clap::Args)]
pub struct CancelArgs {
    /// Experiment id or name.
    pub experiment: String,
    /// Only this run.
    #[arg(long)]
    pub run: Option<String>,
    #[command(flatten)]
    pub conn: Conn,
}

/// Arguments of `plume rerun`.
#[derive(clap::Args)]
pub struct RerunArgs {
    /// Experiment id or name.
    pub experiment: String,
    /// Only this run (failed or cancelled).
    #[arg(long)]
    pub run: Option<String>,
    /// The failed runs (what a rerun without --run takes; the flag says so explicitly).
    #[arg(long, conflicts_with = "run")]
    pub failed: bool,
    /// Cancelled runs too.
    #[arg(long)]
    pub cancelled: bool,
    #[command(flatten)]
    pub conn: Conn,
}

/// Arguments of `plume logs`.
#[derive(clap::Args)]
pub struct LogsArgs {
    /// Experiment id or name.
    pub experiment: String,
    /// Run name.
    pub run: String,
    /// Last this many lines.
    #[arg(long, default_value_t = 200)]
    pub tail: u32,
    #[command(flatten)]
    pub conn: Conn,
}

/// Arguments of `plume download`.
#[derive(clap::Args)]
pub struct DownloadArgs {
    /// Checkpoint id (from `plume best`).
    pub checkpoint: i64,
    /// Where to write it.
    #[arg(long)]
    pub out: PathBuf,
    /// The whole file with its resume state (optimizer moments, a GAN's discriminator),
    /// to continue training elsewhere; by default the weights alone.
    #[arg(long)]
    pub with_state: bool,
    #[command(flatten)]
    pub conn: Conn,
}

/// `plume submit`.
pub async fn submit_command(args: SubmitArgs) -> Result<()> {
    let SubmitArgs {
        file,
        dry_run,
        extend,
        conn,
    } = args;
    match extend {
        Some(exp) => extend_experiment(&conn, &file, &exp, dry_run).await,
        None => submit(&conn, &file, dry_run).await.map(|_| ()),
    }
}

/// `plume cancel`.
pub async fn cancel_command(args: CancelArgs) -> Result<()> {
    let CancelArgs {
        experiment,
        run,
        conn,
    } = args;
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

/// `plume rerun`.
pub async fn rerun_command(args: RerunArgs) -> Result<()> {
    let RerunArgs {
        experiment,
        run,
        failed: _,
        cancelled,
        conn,
    } = args;
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

/// `plume logs`.
pub async fn logs_command(args: LogsArgs) -> Result<()> {
    let LogsArgs {
        experiment,
        run,
        tail,
        conn,
    } = args;
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

/// `plume download`.
pub async fn download_command(args: DownloadArgs) -> Result<()> {
    let DownloadArgs {
        checkpoint,
        out,
        with_state,
        conn,
    } = args;
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

/// An experiment file's text, refused before reading if it is over the size limit.
fn read_experiment_file(file: &Path) -> Result<String> {
    let meta = std::fs::metadata(file).with_context(|| format!("{}", file.display()))?;
    let max = plume_coordinator::experiment::MAX_EXPERIMENT_BYTES as u64;
    if meta.len() > max {
        bail!(
            "{}: the file is {} bytes; experiments are at most {max} bytes",
            file.display(),
            meta.len()
        );
    }
    std::fs::read_to_string(file).with_context(|| format!("{}: not UTF-8 text", file.display()))
}

/// `plume submit --extend EXP FILE`.
async fn extend_experiment(conn: &Conn, file: &Path, exp: &str, dry_run: bool) -> Result<()> {
    let yaml = read_experiment_file(file)?;
    let mut c = connect(conn).await?;
    let r = c
        .submit_experiment(pb::SubmitRequest {
            yaml,
            file_name: file.display().to_string(),
            dry_run,
            extend: exp.to_string(),
        })
        .await
        .map_err(grpc)?
        .into_inner();
    println!(
        "experiment {} ({}): {} {} run(s), {} reused, {} not in the file kept{}",
        r.experiment_id,
        r.name,
        if dry_run { "would add" } else { "added" },
        r.runs.len(),
        r.reused.len(),
        r.untouched.len(),
        if dry_run {
            " (dry run, nothing stored)"
        } else {
            ""
        }
    );
    for run in &r.runs {
        println!("  + {}", run_line(run, 46));
    }
    for name in &r.reused {
        println!("  = {name} (reused with its checkpoints)");
    }
    for b in &r.blocked {
        println!("  ! {b}: the added run waits until it is rerun (`plume rerun`)");
    }
    if r.runs.is_empty() {
        println!("nothing to add: the experiment already has every run of the file");
    }
    Ok(())
}

/// A stored or planned run on one line: name (padded to `width`), job, state, needs.
fn run_line(r: &pb::RunSummary, width: usize) -> String {
    format!(
        "{:<width$} {:<19} {:<8} needs [{}]",
        r.name,
        r.job_kind,
        RunState::name_of(r.state),
        r.needs.join(", ")
    )
}

pub(crate) async fn submit(conn: &Conn, file: &Path, dry_run: bool) -> Result<pb::SubmitReply> {
    let yaml = read_experiment_file(file)?;
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
            extend: String::new(),
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
        println!("  {}", run_line(r, 48));
        if dry_run {
            for line in r.config.lines() {
                println!("      {line}");
            }
        }
    }
    Ok(reply)
}
