//! `plume bench --suite scheduling`: what the coordinator costs per run, through real worker
//! sessions. `runs` one-step `probe` runs (one metric point, no checkpoint) go through
//! `workers` `plume-worker` processes and a `plume serve` process; the table gives the runs
//! per second between the first attempt's start and the last one's end, and the CPU time per
//! run of the coordinator, of Postgres and of the workers, read from /proc.

use crate::chaos::{connect, Cluster};
use crate::pg::free_port;
use crate::store::Store;
use plume_proto::v1 as pb;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// CPU seconds (user + system) of process `pid`, from /proc/PID/stat.
fn cpu_secs(pid: u32, tick: f64) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start at field 3 (state).
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / tick
}

/// CPU seconds of every `postgres` process on the machine (the private server's backends).
fn postgres_cpu(tick: f64) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .map(|pid| cpu_secs(pid, tick))
        .sum()
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// An experiment of `n` one-step probe runs (a sweep over the probe's unused seed).
fn experiment(i: usize, n: usize) -> String {
    let seeds: Vec<String> = (0..n).map(|s| s.to_string()).collect();
    format!(
        "name: scheduling-{i}\n\
         dataset: {{kind: synthetic-birds, images: 200, resolution: 32, seed: 3}}\n\
         runs:\n  - {{name: p, job: probe, steps: 1, checkpoint_every: 0}}\n\
         sweep:\n  seed: [{}]\n\
         objective: {{metric: probe/score, mode: max}}\n",
        seeds.join(", ")
    )
}

/// Starts `workers` worker processes and waits until they have registered.
async fn start_workers(cluster: &mut Cluster, store: &Store, workers: u32) -> anyhow::Result<()> {
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM workers")
        .fetch_one(&store.pool)
        .await?;
    for _ in 0..workers {
        cluster.start_worker()?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM workers")
            .fetch_one(&store.pool)
            .await?;
        if n - before >= workers as i64 {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the workers did not register");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Submits `runs` probe runs as experiments of at most `MAX_RUNS`; returns their ids.
async fn submit(c: &mut crate::client::UserClient, runs: usize) -> anyhow::Result<Vec<i64>> {
    let mut ids = vec![];
    let per = crate::experiment::MAX_RUNS;
    for (i, chunk) in (0..runs).collect::<Vec<_>>().chunks(per).enumerate() {
        let reply = c
            .submit_experiment(pb::SubmitRequest {
                yaml: experiment(i, chunk.len()),
                file_name: "scheduling.yaml".into(),
                dry_run: false,
                extend: String::new(),
            })
            .await
            .map_err(|e| anyhow::anyhow!("submit: {}", e.message()))?
            .into_inner();
        ids.push(reply.experiment_id);
    }
    Ok(ids)
}

/// Waits until every experiment in `ids` has ended (a generous deadline for `runs` runs).
async fn wait_ended(store: &Store, ids: &[i64], runs: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120 + runs as u64 / 5);
    loop {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM experiments WHERE id = ANY($1) AND state = 'running'",
        )
        .bind(ids)
        .fetch_one(&store.pool)
        .await?;
        if open == 0 {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the runs did not finish in time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// The experiments' succeeded runs, their attempts, and the seconds from the first attempt's
/// start to the last one's end.
async fn outcome(store: &Store, ids: &[i64]) -> anyhow::Result<(i64, i64, f64)> {
    Ok(sqlx::query_as(
        "SELECT count(DISTINCT r.id) FILTER (WHERE r.state = 'succeeded'), count(*), \
         COALESCE(extract(epoch FROM max(a.ended_at) - min(a.started_at)), 0)::float8 \
         FROM runs r JOIN attempts a ON a.run_id = r.id WHERE r.experiment_id = ANY($1)",
    )
    .bind(ids)
    .fetch_one(&store.pool)
    .await?)
}

/// What the private server loads for `--statements`.
const STATEMENT_STATS: &[&str] = &["shared_preload_libraries=pg_stat_statements"];

/// Turns on Postgres's per-statement statistics (`--statements`), with a clear error where
/// the server lacks them.
async fn start_statement_stats(store: &Store) -> anyhow::Result<()> {
    let ready = async {
        sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .execute(&store.pool)
            .await?;
        sqlx::query("SELECT pg_stat_statements_reset()")
            .execute(&store.pool)
            .await
    };
    ready.await.map_err(|e| {
        anyhow::anyhow!(
            "--statements needs the pg_stat_statements extension loaded by the server \
             (postgresql-contrib; shared_preload_libraries, which the private server sets, \
             not a DATABASE_URL one): {e}"
        )
    })?;
    Ok(())
}

/// The statements Postgres spent the most time in since [`start_statement_stats`], per run.
async fn statement_table(store: &Store, out: &mut String, runs: usize) -> anyhow::Result<()> {
    let rows: Vec<(i64, f64, String)> = sqlx::query_as(
        "SELECT calls, total_exec_time, query FROM pg_stat_statements \
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         ORDER BY total_exec_time DESC LIMIT 12",
    )
    .fetch_all(&store.pool)
    .await?;
    // Foreign-key checks are Postgres's own statements inside the writes, not round trips.
    let total: i64 = sqlx::query_scalar(
        "SELECT COALESCE(sum(calls), 0)::int8 FROM pg_stat_statements \
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND query NOT LIKE '%FOR KEY SHARE OF x%'",
    )
    .fetch_one(&store.pool)
    .await?;
    let _ = writeln!(
        out,
        "  statements per run, BEGIN and COMMIT included (foreign-key checks not) {:>7.1}",
        total as f64 / runs as f64
    );
    let _ = writeln!(
        out,
        "  Postgres statements by execution time (pg_stat_statements; waits on locks included):"
    );
    let _ = writeln!(out, "    calls/run  ms/call   ms/run  statement");
    for (calls, total_ms, query) in rows {
        let text: String = query.split_whitespace().collect::<Vec<_>>().join(" ");
        let text: String = text.chars().take(96).collect();
        let _ = writeln!(
            out,
            "    {:>9.2} {:>8.3} {:>8.3}  {text}",
            calls as f64 / runs as f64,
            total_ms / calls.max(1) as f64,
            total_ms / runs as f64,
        );
    }
    Ok(())
}

/// The scheduling rows of `plume bench`; with `statements`, the statements Postgres spent
/// its time in.
pub async fn suite(
    out: &mut String,
    runs: usize,
    workers: u32,
    worker_bin: PathBuf,
    statements: bool,
) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let settings = if statements { STATEMENT_STATS } else { &[] };
    let (db, _pg) = crate::pg::database_or_private(tmp.path().join("pg"), settings).await?;
    let store = Store::connect(&db, Duration::from_secs(15)).await?;
    let mut cluster = Cluster {
        dir: tmp.path().to_path_buf(),
        plume: std::env::current_exe()?,
        worker_bin,
        db,
        port: free_port()?,
        lease_secs: 15,
        coordinator: None,
        workers: vec![],
        started_workers: 0,
    };
    cluster.start_coordinator()?;
    let mut c = connect(&cluster.url(), Duration::from_secs(30)).await?;
    start_workers(&mut cluster, &store, workers).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let tick = clock_ticks();
    let coord_pid = cluster.coordinator.as_ref().map_or(0, |p| p.0.id());
    let worker_pids: Vec<u32> = cluster.workers.iter().map(|(_, p)| p.0.id()).collect();
    let workers_cpu = || worker_pids.iter().map(|&p| cpu_secs(p, tick)).sum::<f64>();
    if statements {
        start_statement_stats(&store).await?;
    }
    let (c0, p0, w0) = (cpu_secs(coord_pid, tick), postgres_cpu(tick), workers_cpu());
    let started = Instant::now();
    let ids = submit(&mut c, runs).await?;
    let submitted = started.elapsed();
    wait_ended(&store, &ids, runs).await?;
    let wall = started.elapsed().as_secs_f64();
    let (c1, p1, w1) = (cpu_secs(coord_pid, tick), postgres_cpu(tick), workers_cpu());
    let (succeeded, attempts, window) = outcome(&store, &ids).await?;
    let per_run = |secs: f64| secs * 1e3 / runs as f64;
    let rate = runs as f64 / window.max(1e-9);
    let coord_ms = per_run(c1 - c0);
    let _ = writeln!(
        out,
        "scheduling: {runs} one-step probe runs, {workers} worker processes ({succeeded} succeeded \
         in {attempts} attempts; submitted in {:.1} s, all ended after {wall:.1} s)",
        submitted.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "  runs/s, first attempt start to last attempt end      {rate:>9.0} (target >= 500) {}",
        if rate >= 500.0 { "met" } else { "NOT met" }
    );
    let _ = writeln!(
        out,
        "  coordinator CPU per run                              {coord_ms:>8.2} ms (target < 2) {}",
        if coord_ms < 2.0 { "met" } else { "NOT met" }
    );
    let _ = writeln!(
        out,
        "  Postgres CPU per run                                 {:>8.2} ms",
        per_run(p1 - p0)
    );
    let _ = writeln!(
        out,
        "  worker processes' CPU per run                        {:>8.2} ms",
        per_run(w1 - w0)
    );
    if statements {
        statement_table(&store, out, runs).await?;
    }
    anyhow::ensure!(
        succeeded as usize == runs,
        "only {succeeded} of {runs} runs succeeded"
    );
    Ok(())
}
