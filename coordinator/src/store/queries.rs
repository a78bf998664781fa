//! The read side of experiments and runs: names to ids, listings, one run's detail,
//! progress, dependencies and attempts.

use super::*;
use crate::slurm::plan::JobWorker;

/// A run as lists show it.
#[derive(Debug, Clone)]
pub struct RunRow {
    /// Id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// Job kind.
    pub job_kind: String,
    /// State.
    pub state: RunState,
    /// Current attempt.
    pub attempt: i32,
    /// Job YAML.
    pub config: String,
    /// Progress.
    pub step: i64,
    /// Total steps.
    pub total_steps: i64,
    /// Failure message.
    pub error: Option<String>,
    /// The job's `method`, if it has one.
    pub method: Option<String>,
    /// Its ablation and sweep values (written at expansion; names are never parsed).
    pub params: BTreeMap<String, String>,
    /// GPUs it asks for (`resources.gpus`).
    pub gpus: i32,
    /// Memory each must have, MB.
    pub min_gpu_memory_mb: i64,
    /// Devices its running attempt holds.
    pub devices: Vec<String>,
}

/// A run's state and progress.
#[derive(Debug, Clone, PartialEq)]
pub struct RunProgress {
    /// Id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// State.
    pub state: RunState,
    /// Current attempt.
    pub attempt: i32,
    /// Progress.
    pub step: i64,
    /// Total steps.
    pub total_steps: i64,
    /// Failure message.
    pub error: Option<String>,
}

/// An attempt of a run.
#[derive(Debug, Clone)]
pub struct AttemptRow {
    /// Attempt number.
    pub attempt: i32,
    /// Worker.
    pub worker: i64,
    /// The worker's name.
    pub worker_name: String,
    /// The Slurm job the worker ran in (empty outside Slurm).
    pub slurm_job_id: String,
    /// How it went (so far).
    pub state: AttemptState,
    /// Unix seconds.
    pub started: i64,
    /// Unix seconds (0 while running).
    pub ended: i64,
    /// Step it resumed from.
    pub resumed_from_step: i64,
    /// Why it ended.
    pub message: String,
    /// The upstream checkpoints it was handed: `(config field, checkpoint id)`.
    pub inputs: Vec<(String, i64)>,
}

/// An experiment as lists show it.
#[derive(Debug, Clone)]
pub struct ExperimentRow {
    /// Id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// State.
    pub state: ExperimentState,
    /// Unix seconds.
    pub created: i64,
    /// Objective metric.
    pub objective: String,
    /// max or min.
    pub mode: String,
    /// The YAML as submitted.
    pub yaml: String,
    /// Runs per state.
    pub run_states: BTreeMap<RunState, i64>,
    /// Best objective value over its checkpoints.
    pub best: Option<f64>,
    /// Higher goes first.
    pub priority: i32,
}

impl Store {
    /// An experiment id by id or name (the newest with that name).
    pub async fn resolve_experiment(&self, key: &str) -> Result<i64> {
        let id: Option<i64> = if let Ok(n) = key.parse::<i64>() {
            sqlx::query_scalar("SELECT id FROM experiments WHERE id = $1")
                .bind(n)
                .fetch_optional(&self.pool)
                .await?
        } else {
            sqlx::query_scalar(
                "SELECT id FROM experiments WHERE name = $1 ORDER BY id DESC LIMIT 1",
            )
            .bind(key)
            .fetch_optional(&self.pool)
            .await?
        };
        id.ok_or_else(|| StoreError::NotFound(format!("no experiment {key:?}")))
    }

    /// A run id by experiment and name.
    pub async fn resolve_run(&self, experiment: i64, name: &str) -> Result<i64> {
        sqlx::query_scalar("SELECT id FROM runs WHERE experiment_id = $1 AND name = $2")
            .bind(experiment)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("no run {name:?} in this experiment")))
    }

    /// Experiments, newest first (optionally one).
    pub async fn experiments(&self, only: Option<i64>) -> Result<Vec<ExperimentRow>> {
        let rows = sqlx::query(
            "SELECT e.id, e.name, e.state, extract(epoch FROM e.created_at)::int8 AS created, \
             e.objective_metric, e.objective_mode, e.yaml, e.priority, \
             (SELECT CASE WHEN e.objective_mode = 'max' THEN max(c.objective) ELSE min(c.objective) END \
              FROM checkpoints c JOIN runs r ON r.id = c.run_id WHERE r.experiment_id = e.id) AS best \
             FROM experiments e WHERE ($1::int8 IS NULL OR e.id = $1) ORDER BY e.id DESC LIMIT 500",
        )
        .bind(only)
        .fetch_all(&self.pool)
        .await?;
        let counts: Vec<(i64, RunState, i64)> = sqlx::query_as(
            "SELECT experiment_id, state, count(*) FROM runs WHERE ($1::int8 IS NULL OR experiment_id = $1) \
             GROUP BY experiment_id, state",
        )
        .bind(only)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let id: i64 = r.get("id");
                ExperimentRow {
                    id,
                    name: r.get("name"),
                    state: r.get("state"),
                    created: r.get("created"),
                    objective: r.get("objective_metric"),
                    mode: r.get("objective_mode"),
                    yaml: r.get("yaml"),
                    run_states: counts
                        .iter()
                        .filter(|c| c.0 == id)
                        .map(|c| (c.1, c.2))
                        .collect(),
                    best: r.get("best"),
                    priority: r.get("priority"),
                }
            })
            .collect())
    }

    /// Runs of an experiment in submission order.
    pub async fn runs(&self, experiment: i64) -> Result<Vec<RunRow>> {
        self.run_rows(experiment, None).await
    }

    /// One run of an experiment.
    pub async fn run(&self, experiment: i64, run: i64) -> Result<RunRow> {
        self.run_rows(experiment, Some(run))
            .await?
            .pop()
            .ok_or_else(|| StoreError::NotFound(format!("no run {run} in this experiment")))
    }

    pub(super) async fn run_rows(&self, experiment: i64, only: Option<i64>) -> Result<Vec<RunRow>> {
        let rows = sqlx::query(
            "SELECT id, name, job_kind, state, attempt, config, step, total_steps, error, method, \
             params, gpus, min_gpu_memory_mb, devices FROM runs WHERE experiment_id = $1 AND ($2::int8 IS NULL OR id = $2) ORDER BY id",
        )
        .bind(experiment)
        .bind(only)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| RunRow {
                id: r.get("id"),
                name: r.get("name"),
                job_kind: r.get("job_kind"),
                state: r.get("state"),
                attempt: r.get("attempt"),
                config: r.get("config"),
                step: r.get("step"),
                total_steps: r.get("total_steps"),
                error: r.get("error"),
                method: r.get("method"),
                params: r
                    .get::<sqlx::types::Json<BTreeMap<String, String>>, _>("params")
                    .0,
                gpus: r.get("gpus"),
                min_gpu_memory_mb: r.get("min_gpu_memory_mb"),
                devices: r.get("devices"),
            })
            .collect())
    }

    /// State and progress of an experiment's runs, without their configs: what live
    /// streams poll every half second.
    pub async fn progress(&self, experiment: i64) -> Result<Vec<RunProgress>> {
        let rows = sqlx::query(
            "SELECT id, name, state, attempt, step, total_steps, error FROM runs \
             WHERE experiment_id = $1 ORDER BY id",
        )
        .bind(experiment)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| RunProgress {
                id: r.get(0),
                name: r.get(1),
                state: r.get(2),
                attempt: r.get(3),
                step: r.get(4),
                total_steps: r.get(5),
                error: r.get(6),
            })
            .collect())
    }

    /// Names of the runs a run needs.
    pub async fn needs(&self, run: i64) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT u.name FROM run_deps d JOIN runs u ON u.id = d.upstream_id WHERE d.run_id = $1 ORDER BY u.id",
        )
        .bind(run)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Attempts of a run.
    pub async fn attempts(&self, run: i64) -> Result<Vec<AttemptRow>> {
        let rows = sqlx::query(
            "SELECT a.attempt, a.worker_id, w.name AS worker_name, \
             COALESCE(w.capabilities->>'slurm_job_id', '') AS slurm_job_id, a.state, \
             extract(epoch FROM a.started_at)::int8 AS s, \
             COALESCE(extract(epoch FROM a.ended_at)::int8, 0) AS e, a.resumed_from_step, \
             a.message, a.inputs FROM attempts a JOIN workers w ON w.id = a.worker_id \
             WHERE a.run_id = $1 ORDER BY a.attempt",
        )
        .bind(run)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| AttemptRow {
                attempt: r.get("attempt"),
                worker: r.get("worker_id"),
                worker_name: r.get("worker_name"),
                slurm_job_id: r.get("slurm_job_id"),
                state: r.get("state"),
                started: r.get("s"),
                ended: r.get("e"),
                resumed_from_step: r.get("resumed_from_step"),
                message: r.get("message"),
                inputs: r
                    .get::<sqlx::types::Json<Vec<(String, i64)>>, _>("inputs")
                    .0,
            })
            .collect())
    }

    /// Runs waiting for a worker (the launcher scales to this).
    pub async fn queued_runs(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM runs WHERE state = 'queued'")
            .fetch_one(&self.pool)
            .await?;
        Ok(n as u64)
    }

    /// The newest worker registered from each of these Slurm jobs: whether it holds a lease,
    /// and since when it has had nothing to do.
    pub async fn slurm_workers(&self, job_ids: &[String]) -> Result<Vec<JobWorker>> {
        if job_ids.is_empty() {
            return Ok(vec![]);
        }
        let rows = sqlx::query(
            "SELECT DISTINCT ON (job) w.capabilities->>'slurm_job_id' AS job, \
             EXISTS (SELECT 1 FROM runs r WHERE r.lease_worker = w.id) AS busy, \
             extract(epoch FROM now() - GREATEST(w.registered_at, \
               (SELECT max(a.ended_at) FROM attempts a WHERE a.worker_id = w.id)))::float8 AS idle \
             FROM workers w WHERE w.capabilities->>'slurm_job_id' = ANY($1) \
             ORDER BY job, w.id DESC",
        )
        .bind(job_ids)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| JobWorker {
                job_id: r.get("job"),
                busy: r.get("busy"),
                idle: Duration::from_secs_f64(r.get::<f64, _>("idle").max(0.0)),
            })
            .collect())
    }
}
