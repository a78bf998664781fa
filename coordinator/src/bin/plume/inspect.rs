//! Read-only views of experiments: `ls`, `show`, `table`, `best`.

use super::*;

/// Arguments of `plume ls`.
#[derive(clap::Args)]
pub struct LsArgs {
    #[command(flatten)]
    pub conn: Conn,
}

/// Arguments of `plume show`.
#[derive(clap::Args)]
pub struct ShowArgs {
    /// Experiment id or name.
    pub experiment: String,
    #[command(flatten)]
    pub conn: Conn,
}

/// Arguments of `plume table`.
#[derive(clap::Args)]
pub struct TableArgs {
    /// Experiment id or name.
    pub experiment: String,
    /// Comma-separated metric names.
    #[arg(long, value_delimiter = ',')]
    pub metrics: Vec<String>,
    /// Which value of each metric's history.
    #[arg(long, value_enum, default_value = "last")]
    pub stat: plume_coordinator::table::Stat,
    /// Markdown, to paste into a results file.
    #[arg(long)]
    pub markdown: bool,
    #[command(flatten)]
    pub conn: Conn,
}

/// Arguments of `plume best`.
#[derive(clap::Args)]
pub struct BestArgs {
    /// Experiment id or name.
    pub experiment: String,
    /// Rank by this metric (default: the experiment's objective).
    #[arg(long)]
    pub metric: Option<String>,
    /// How many.
    #[arg(long, default_value_t = 5)]
    pub top: u32,
    /// JSON output.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub conn: Conn,
}

/// `plume ls`.
pub async fn ls_command(args: LsArgs) -> Result<()> {
    let LsArgs { conn } = args;
    let mut c = connect(&conn).await?;
    let list = c
        .list_experiments(pb::ListRequest {})
        .await
        .map_err(grpc)?
        .into_inner();
    println!(
        "{:>4}  {:<24} {:<10} {:<44} {:>10} {:>8} {:>5}",
        "id", "name", "state", "runs", "best", "priority", "next"
    );
    for e in list.experiments {
        let runs: Vec<String> = e
            .run_states
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect();
        println!(
            "{:>4}  {:<24} {:<10} {:<44} {:>10} {:>8} {:>5}",
            e.id,
            e.name,
            ExperimentState::name_of(e.state),
            runs.join(", "),
            if e.has_best {
                format!("{:.4}", e.best_objective)
            } else {
                "-".into()
            },
            e.priority,
            // Where its first queued run stands in the queue of every experiment.
            match e.next_queue_position {
                0 => "-".to_string(),
                p => format!("#{p}"),
            }
        );
    }
    Ok(())
}

/// `plume show`.
pub async fn show_command(args: ShowArgs) -> Result<()> {
    let ShowArgs { experiment, conn } = args;
    let d = experiment_detail(&conn, experiment).await?;
    print_experiment(&d, true);
    print_storage(&d);
    print_worker_time(&d);
    Ok(())
}

/// What the experiment cost: the wall time its attempts held a worker slot, per job kind
/// (a running attempt counts up to now).
fn print_worker_time(d: &pb::ExperimentDetail) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.as_secs() as i64);
    let mut by_kind: BTreeMap<&str, (i64, usize)> = BTreeMap::new();
    for r in &d.runs {
        for a in &r.attempts {
            let end = if a.ended_unix > 0 { a.ended_unix } else { now };
            let e = by_kind.entry(r.job_kind.as_str()).or_default();
            e.0 += (end - a.started_unix).max(0);
            e.1 += 1;
        }
    }
    if by_kind.is_empty() {
        return;
    }
    let total: i64 = by_kind.values().map(|v| v.0).sum();
    let parts: Vec<String> = by_kind
        .iter()
        .map(|(k, (secs, n))| format!("{k} {secs} s ({n} attempts)"))
        .collect();
    println!("worker time: {total} s; {}", parts.join(", "));
}

/// `plume table`.
pub async fn table_command(args: TableArgs) -> Result<()> {
    let TableArgs {
        experiment,
        metrics,
        stat,
        markdown,
        conn,
    } = args;
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

/// `plume best`.
pub async fn best_command(args: BestArgs) -> Result<()> {
    let BestArgs {
        experiment,
        metric,
        top,
        json,
        conn,
    } = args;
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

/// A run's rungs: `rung 0 @10 0.5120 rank 1/1 promoted · rung 1 @30 0.4800 rank 2/3 stopped`.
fn rung_line(rungs: &[pb::RungResult]) -> String {
    rungs
        .iter()
        .map(|g| {
            format!(
                "rung {} @{} {:.4} rank {}/{} {}",
                g.rung,
                g.step,
                g.value,
                g.rank,
                g.seen,
                if g.promoted { "promoted" } else { "stopped" }
            )
        })
        .collect::<Vec<_>>()
        .join(" · ")
}

pub(crate) fn print_experiment(d: &pb::ExperimentDetail, attempts: bool) {
    let s = d.summary.clone().unwrap_or_default();
    println!(
        "experiment {} ({}): {}  objective {}  priority {}",
        s.id,
        s.name,
        ExperimentState::name_of(s.state),
        s.objective,
        s.priority
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
        let state = match r.queue_position {
            0 => RunState::name_of(r.state).to_string(),
            p => format!("queued #{p}"),
        };
        println!(
            "  {:<44} {:<19} {:<10} attempt {:<2} {:>12}  {}",
            r.name,
            r.job_kind,
            state,
            r.attempt,
            progress,
            key.join(" ")
        );
        print_run_notes(r);
        // One attempt on a plain worker says nothing the run line does not; a Slurm job id
        // always matters (it is what `scancel` and `sacct` take).
        let slurm = r.attempts.iter().any(|a| !a.slurm_job_id.is_empty());
        if attempts && (r.attempts.len() > 1 || slurm) {
            for a in &r.attempts {
                let slurm = match a.slurm_job_id.as_str() {
                    "" => String::new(),
                    id => format!(", slurm job {id}"),
                };
                println!(
                    "      attempt {} on worker {} ({}{slurm}): {} (from step {}) {}",
                    a.attempt,
                    a.worker_id,
                    a.worker_name,
                    AttemptState::name_of(a.state),
                    a.resumed_from_step,
                    a.message
                );
            }
        }
    }
}

/// What `plume show` says under a run's line: why it waits, the devices it holds, its
/// error, its ASHA rungs and the upstream checkpoints it was handed.
fn print_run_notes(r: &pb::RunSummary) {
    if !r.queue_reason.is_empty() {
        println!("      waiting: {}", r.queue_reason);
    }
    if !r.devices.is_empty() && RunState::try_from(r.state) == Ok(RunState::Running) {
        println!("      devices: {}", r.devices.join(", "));
    }
    if !r.error.is_empty() {
        println!("      error: {}", r.error);
    }
    if !r.rungs.is_empty() {
        println!("      ASHA: {}", rung_line(&r.rungs));
    }
    if let Some(a) = r.attempts.last().filter(|a| !a.inputs.is_empty()) {
        let mut inputs: Vec<_> = a.inputs.iter().collect();
        inputs.sort();
        let text: Vec<String> = inputs
            .iter()
            .map(|(field, id)| format!("{field} = checkpoint {id}"))
            .collect();
        println!("      inputs: {}", text.join(", "));
    }
}

/// Megabytes, for storage lines.
fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// The storage lines of `show`: what the checkpoints weigh as files (weights and resume
/// state) against what is stored, then per run.
pub(crate) fn print_storage(d: &pb::ExperimentDetail) {
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

pub(crate) fn print_best(b: &pb::BestReply, json: bool) {
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

/// One experiment's runs, metrics and storage, as `show` and `table` print them.
pub(crate) async fn experiment_detail(
    conn: &Conn,
    experiment: String,
) -> Result<pb::ExperimentDetail> {
    let mut c = connect(conn).await?;
    Ok(c.get_experiment(pb::GetRequest { experiment })
        .await
        .map_err(grpc)?
        .into_inner())
}
