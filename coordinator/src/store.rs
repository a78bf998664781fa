//! Everything the coordinator knows lives in Postgres; this module is the only place that
//! speaks SQL. Every statement is parameterised. Writes about a run are fenced by
//! `(worker, run, attempt)`: a stale attempt's write finds no matching lease and is refused.

use crate::blobs;
use crate::experiment::{Experiment, Mode};
use crate::states::{AttemptState, ExperimentState, Outcome, RunState};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::Row;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// Store errors that callers tell apart.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The attempt no longer holds the run's lease (lost, reassigned, finished or cancelled).
    #[error("stale attempt: run {run} attempt {attempt} is not leased to worker {worker}")]
    Stale {
        /// Run id.
        run: i64,
        /// Attempt number.
        attempt: i32,
        /// Worker id.
        worker: i64,
    },
    /// Something named does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Invalid request.
    #[error("{0}")]
    Invalid(String),
    /// Database failure.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

type Result<T> = std::result::Result<T, StoreError>;

/// `(worker, run, attempt)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    /// Worker id.
    pub worker: i64,
    /// Run id.
    pub run: i64,
    /// Attempt number.
    pub attempt: i32,
}

/// Work handed to a worker.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The new attempt's fence.
    pub fence: Fence,
    /// Experiment name.
    pub experiment: String,
    /// Run name.
    pub run_name: String,
    /// Job kind.
    pub job_kind: String,
    /// Job YAML.
    pub config: String,
    /// `(field, checkpoint id)` of upstream runs.
    pub inputs: Vec<(String, i64)>,
    /// Checkpoint to resume from and its step.
    pub resume: Option<(i64, i64)>,
}

/// Summary of one metric of a run.
#[derive(Debug, Clone)]
pub struct MetricSummary {
    /// Metric name.
    pub name: String,
    /// Last value.
    pub last: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Step of the last value.
    pub last_step: i64,
    /// Points.
    pub count: i64,
}

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
}

/// A checkpoint ranked by `best`.
#[derive(Debug, Clone)]
pub struct Ranked {
    /// Checkpoint id.
    pub id: i64,
    /// Run id.
    pub run_id: i64,
    /// Run name.
    pub run: String,
    /// Step.
    pub step: i64,
    /// Metric value at that step.
    pub value: f64,
    /// Bytes.
    pub size: i64,
    /// SHA-256 (hex).
    pub sha256: String,
}

/// The Postgres store.
#[derive(Clone)]
pub struct Store {
    /// The connection pool.
    pub pool: PgPool,
    /// Lease length.
    pub lease: Duration,
}

fn pack_i64(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
fn pack_f64(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
fn unpack_i64(b: &[u8]) -> Vec<i64> {
    b.chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect()
}
fn unpack_f64(b: &[u8]) -> Vec<f64> {
    b.chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect()
}

/// Points of one metric in a batch.
#[derive(Debug, Default, Clone)]
pub struct Series {
    /// Steps, in report order.
    pub steps: Vec<i64>,
    /// Values.
    pub values: Vec<f64>,
}

/// Points of one metric with the wall time (Unix seconds) each was stored at.
#[derive(Debug, Default, Clone)]
pub struct TimedSeries {
    /// Steps, ascending.
    pub steps: Vec<i64>,
    /// Values.
    pub values: Vec<f64>,
    /// Unix seconds.
    pub times: Vec<f64>,
}

/// What [`Store::timed_curves`] read.
#[derive(Debug, Default, Clone)]
pub struct TimedCurves {
    /// By metric: every point, or for the metrics in `overview` their chunks' overviews.
    pub curves: BTreeMap<String, TimedSeries>,
    /// By metric: how many points are stored (in the chunks the range touches).
    pub totals: BTreeMap<String, usize>,
    /// Metrics read from overviews.
    pub overview: Vec<String>,
    /// The run's stream cursor at the time of this read.
    pub cursor: i64,
}

/// A chunk of one run's points, as live streams send them.
#[derive(Debug, Clone)]
pub struct NewChunk {
    /// Run id.
    pub run: i64,
    /// Chunk id (the run's stream cursor after it).
    pub id: i64,
    /// Metric.
    pub name: String,
    /// When it was stored (Unix seconds).
    pub time: f64,
    /// The points.
    pub series: Series,
}

/// A stored checkpoint of a run.
#[derive(Debug, Clone)]
pub struct CheckpointRow {
    /// Id (for downloads).
    pub id: i64,
    /// Step.
    pub step: i64,
    /// Attempt that wrote it.
    pub attempt: i32,
    /// Bytes.
    pub size: i64,
    /// Of those, bytes of resume state (optimizer moments...): 0 once dropped.
    pub state_size: i64,
    /// Whether its resume state was dropped (a newer checkpoint landed, or the run finished).
    pub state_dropped: bool,
    /// SHA-256 (hex).
    pub sha256: String,
    /// The experiment's objective at this step.
    pub objective: Option<f64>,
    /// Unix seconds.
    pub created: i64,
}

/// What one run's checkpoints weigh.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunStorage {
    /// How many it keeps.
    pub checkpoints: i64,
    /// Bytes of weights (and headers) as files.
    pub weight_bytes: i64,
    /// Bytes of resume state as files.
    pub state_bytes: i64,
    /// Bytes of the chunks no other run of the experiment references.
    pub own_stored_bytes: i64,
}

/// What an experiment's checkpoints weigh: as files (weights + state) and as stored (each
/// distinct chunk once); the difference is what dedup saved.
#[derive(Debug, Clone, Default)]
pub struct Storage {
    /// By run id.
    pub runs: BTreeMap<i64, RunStorage>,
    /// Bytes of weights as files.
    pub weight_bytes: i64,
    /// Bytes of resume state as files.
    pub state_bytes: i64,
    /// Bytes of distinct chunks as stored (encoded).
    pub stored_bytes: i64,
    /// Bytes of distinct chunks as files (what storing them unencoded would take).
    pub distinct_bytes: i64,
}

/// A stored picture of a run.
#[derive(Debug, Clone)]
pub struct ArtifactRow {
    /// Id.
    pub id: i64,
    /// Name (`samples.png`, `edits.png`, ...).
    pub name: String,
    /// Step.
    pub step: i64,
    /// Bytes.
    pub size: i64,
}

impl Store {
    /// Connects and applies the migrations.
    pub async fn connect(url: &str, lease: Duration) -> anyhow::Result<Store> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to Postgres: {e}"))?;
        sqlx::migrate!("../migrations").run(&pool).await?;
        Ok(Store { pool, lease })
    }

    fn lease_secs(&self) -> f64 {
        self.lease.as_secs_f64()
    }

    /// Stores a validated experiment: its runs (those without needs queued at once), their
    /// dependencies and a submit event, in one transaction.
    pub async fn submit(
        &self,
        exp: &Experiment,
        file_name: &str,
        yaml: &str,
    ) -> Result<(i64, Vec<RunRow>)> {
        let mut tx = self.pool.begin().await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO experiments (name, file_name, yaml, objective_metric, objective_mode, \
             max_restarts, keep_best, keep_latest, keep_final_state) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9) \
             RETURNING id",
        )
        .bind(&exp.name)
        .bind(file_name)
        .bind(yaml)
        .bind(&exp.objective.metric)
        .bind(exp.objective.mode.as_str())
        .bind(exp.max_restarts as i32)
        .bind(exp.retention.keep.best as i32)
        .bind(exp.retention.keep.latest as i32)
        .bind(exp.retention.keep.final_state)
        .fetch_one(&mut *tx)
        .await?;
        let mut ids: HashMap<&str, i64> = HashMap::new();
        let mut rows = Vec::new();
        for r in &exp.runs {
            let state = if r.inputs.is_empty() {
                RunState::Queued
            } else {
                RunState::Pending
            };
            let run_id: i64 = sqlx::query_scalar(
                "INSERT INTO runs (experiment_id, name, job_kind, config, state, total_steps, method, params, queued_at) \
                 VALUES ($1,$2,$3,$4,$5,$6,$7,$8, CASE WHEN $5 = $9 THEN clock_timestamp() END) RETURNING id",
            )
            .bind(id)
            .bind(&r.name)
            .bind(&r.job)
            .bind(&r.config)
            .bind(state)
            .bind(r.total_steps)
            .bind(&r.method)
            .bind(sqlx::types::Json(&r.params))
            .bind(RunState::Queued)
            .fetch_one(&mut *tx)
            .await?;
            for (field, up) in &r.inputs {
                sqlx::query("INSERT INTO run_deps (run_id, upstream_id, field) VALUES ($1,$2,$3)")
                    .bind(run_id)
                    .bind(ids[up.as_str()])
                    .bind(field)
                    .execute(&mut *tx)
                    .await?;
            }
            ids.insert(r.name.as_str(), run_id);
            rows.push(RunRow {
                id: run_id,
                name: r.name.clone(),
                job_kind: r.job.clone(),
                state,
                attempt: 0,
                config: r.config.clone(),
                step: 0,
                total_steps: r.total_steps,
                error: None,
                method: r.method.clone(),
                params: r.params.clone(),
            });
        }
        sqlx::query(
            "INSERT INTO events (experiment_id, kind, message) VALUES ($1, 'submitted', $2)",
        )
        .bind(id)
        .bind(format!("{} runs from {file_name}", exp.runs.len()))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((id, rows))
    }

    /// Registers a worker (or refreshes one that reconnects with its id).
    pub async fn register_worker(&self, name: &str, caps: serde_json::Value) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "INSERT INTO workers (name, capabilities) VALUES ($1, $2) RETURNING id",
        )
        .bind(name)
        .bind(caps)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Whether a worker id exists (a reconnecting worker keeps its id).
    pub async fn worker_exists(&self, id: i64) -> Result<bool> {
        let n: Option<i64> =
            sqlx::query_scalar("UPDATE workers SET last_seen = now() WHERE id = $1 RETURNING id")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(n.is_some())
    }

    /// Claims the oldest queued run this worker can run, as a new attempt holding a lease.
    /// `FOR UPDATE SKIP LOCKED` lets any number of coordinators share the database.
    pub async fn claim(&self, worker: i64, job_kinds: &[String]) -> Result<Option<Claim>> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "SELECT r.id, r.name, r.job_kind, r.config, r.attempt, e.name AS exp FROM runs r \
             JOIN experiments e ON e.id = r.experiment_id \
             WHERE r.state = $2 AND r.job_kind = ANY($1) \
             ORDER BY r.queued_at, r.id LIMIT 1 FOR UPDATE OF r SKIP LOCKED",
        )
        .bind(job_kinds)
        .bind(RunState::Queued)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let run: i64 = row.get("id");
        let attempt: i32 = row.get::<i32, _>("attempt") + 1;
        let resume: Option<(i64, i64)> = sqlx::query_as(
            "SELECT id, step FROM checkpoints WHERE run_id = $1 ORDER BY step DESC LIMIT 1",
        )
        .bind(run)
        .fetch_optional(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE runs SET state = $5, attempt = $2, lease_worker = $3, \
             lease_expires = now() + make_interval(secs => $4) WHERE id = $1",
        )
        .bind(run)
        .bind(attempt)
        .bind(worker)
        .bind(self.lease_secs())
        .bind(RunState::Running)
        .execute(&mut *tx)
        .await?;
        let from = resume.map_or(0, |r| r.1);
        sqlx::query(
            "INSERT INTO attempts (run_id, attempt, worker_id, resumed_from_step) VALUES ($1,$2,$3,$4)",
        )
        .bind(run)
        .bind(attempt)
        .bind(worker)
        .bind(from)
        .execute(&mut *tx)
        .await?;
        if attempt > 1 {
            // The new attempt redoes everything after its checkpoint: cut the lost attempt's
            // later points so the curve keeps one point per (metric, step).
            truncate_after(&mut tx, run, from).await?;
        }
        let inputs: Vec<(String, i64)> = sqlx::query_as(
            "SELECT d.field, (SELECT c.id FROM checkpoints c WHERE c.run_id = d.upstream_id \
             ORDER BY c.step DESC LIMIT 1) FROM run_deps d WHERE d.run_id = $1",
        )
        .bind(run)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|(f, c): (String, Option<i64>)| (f, c.unwrap_or(0)))
        .collect();
        if let Some((field, _)) = inputs.iter().find(|(_, c)| *c == 0) {
            return Err(StoreError::Invalid(format!(
                "run {run}: the upstream run for `{field}` left no checkpoint"
            )));
        }
        event(
            &mut tx,
            run,
            "started",
            &format!(
                "attempt {attempt} on worker {worker}{}",
                if from > 0 {
                    format!(", resuming from step {from}")
                } else {
                    String::new()
                }
            ),
        )
        .await?;
        tx.commit().await?;
        Ok(Some(Claim {
            fence: Fence {
                worker,
                run,
                attempt,
            },
            experiment: row.get("exp"),
            run_name: row.get("name"),
            job_kind: row.get("job_kind"),
            config: row.get("config"),
            inputs,
            resume,
        }))
    }

    /// Renews the lease of a running attempt and records progress. Returns whether a cancel
    /// was requested; `Stale` when the attempt lost its lease.
    pub async fn heartbeat(&self, f: Fence, step: i64, total: i64) -> Result<bool> {
        sqlx::query("UPDATE workers SET last_seen = now() WHERE id = $1")
            .bind(f.worker)
            .execute(&self.pool)
            .await?;
        let r: Option<bool> = sqlx::query_scalar(
            "UPDATE runs SET lease_expires = now() + make_interval(secs => $4), \
             step = GREATEST(step, $5), total_steps = CASE WHEN $6 > 0 THEN $6 ELSE total_steps END \
             WHERE id = $1 AND attempt = $2 AND lease_worker = $3 AND state = $7 \
             RETURNING cancel_requested",
        )
        .bind(f.run)
        .bind(f.attempt)
        .bind(f.worker)
        .bind(self.lease_secs())
        .bind(step)
        .bind(total)
        .bind(RunState::Running)
        .fetch_optional(&self.pool)
        .await?;
        r.ok_or(StoreError::Stale {
            run: f.run,
            attempt: f.attempt,
            worker: f.worker,
        })
    }

    /// Ingests one metric batch: fence check, idempotency by `(run, attempt, seq)`, one insert
    /// of packed rows, one upsert of summaries, one update of checkpoint objectives.
    pub async fn ingest(
        &self,
        f: Fence,
        seq: i64,
        batch: &BTreeMap<String, Series>,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        lock_fence(&mut tx, f).await?;
        let fresh = sqlx::query(
            "INSERT INTO metric_batches (run_id, attempt, seq) VALUES ($1,$2,$3) ON CONFLICT DO NOTHING",
        )
        .bind(f.run)
        .bind(f.attempt)
        .bind(seq)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !fresh {
            tx.commit().await?;
            return Ok(false);
        }
        insert_series(&mut tx, f.run, batch).await?;
        let objective = objective_metric(&mut tx, f.run).await?;
        if let Some(s) = batch.get(&objective) {
            sqlx::query(
                "UPDATE checkpoints c SET objective = p.v FROM UNNEST($2::int8[], $3::float8[]) AS p(s, v) \
                 WHERE c.run_id = $1 AND c.step = p.s",
            )
            .bind(f.run)
            .bind(&s.steps)
            .bind(&s.values)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Appends log lines of an attempt.
    pub async fn append_logs(&self, f: Fence, lines: &[String]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        lock_fence(&mut tx, f).await?;
        sqlx::query("INSERT INTO logs (run_id, attempt, line) SELECT $1, $2, UNNEST($3::text[])")
            .bind(f.run)
            .bind(f.attempt)
            .bind(lines)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Stores a checkpoint file: chunks at tensor boundaries, each stored once by content.
    /// Returns `(checkpoint id, bytes newly stored)`.
    pub async fn store_checkpoint(&self, f: Fence, step: i64, data: &[u8]) -> Result<(i64, u64)> {
        let chunks = blobs::split_checkpoint(data)
            .map_err(|e| StoreError::Invalid(format!("not a checkpoint: {e}")))?;
        let parts = blobs::part_sizes(data)
            .map_err(|e| StoreError::Invalid(format!("not a checkpoint: {e}")))?;
        let mut tx = self.pool.begin().await?;
        lock_fence(&mut tx, f).await?;
        chunk_lock(&mut tx, false).await?;
        let (hashes, new_bytes) = store_chunks(&mut tx, data, &chunks, true).await?;
        let objective_name = objective_metric(&mut tx, f.run).await?;
        let objective = value_at(&mut tx, f.run, &objective_name, step).await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO checkpoints (run_id, attempt, step, size, sha256, chunks, objective, state_size) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8) ON CONFLICT (run_id, step) DO UPDATE SET \
             attempt = EXCLUDED.attempt, size = EXCLUDED.size, sha256 = EXCLUDED.sha256, \
             chunks = EXCLUDED.chunks, objective = EXCLUDED.objective, state_size = EXCLUDED.state_size \
             RETURNING id",
        )
        .bind(f.run)
        .bind(f.attempt)
        .bind(step)
        .bind(data.len() as i64)
        .bind(blobs::sha256_hex(data))
        .bind(&hashes)
        .bind(objective)
        .bind(parts.state as i64)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        // A resume reads only the latest checkpoint: the older ones give up their state. Only
        // when there is some (usually one older checkpoint), in a transaction of its own that
        // takes the chunk lock exclusively before anything else (an upload holds it shared,
        // and upgrading would deadlock two uploads); most uploads take no exclusive lock.
        let older: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM checkpoints WHERE run_id = $1 AND step < $2 AND state_size > 0",
        )
        .bind(f.run)
        .bind(step)
        .fetch_all(&self.pool)
        .await?;
        if !older.is_empty() {
            let mut tx = self.pool.begin().await?;
            chunk_lock(&mut tx, true).await?;
            drop_states(&mut tx, &older, Vec::new()).await?;
            tx.commit().await?;
        }
        Ok((id, new_bytes))
    }

    /// Stores a picture of a run.
    pub async fn store_artifact(
        &self,
        f: Fence,
        step: i64,
        name: &str,
        data: &[u8],
    ) -> Result<(i64, u64)> {
        let chunks = blobs::split_plain(data);
        let mut tx = self.pool.begin().await?;
        lock_fence(&mut tx, f).await?;
        chunk_lock(&mut tx, false).await?;
        let (hashes, new_bytes) = store_chunks(&mut tx, data, &chunks, false).await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO artifacts (run_id, step, name, size, chunks) VALUES ($1,$2,$3,$4,$5) \
             ON CONFLICT (run_id, name, step) DO UPDATE SET size = EXCLUDED.size, chunks = EXCLUDED.chunks \
             RETURNING id",
        )
        .bind(f.run)
        .bind(step)
        .bind(name)
        .bind(data.len() as i64)
        .bind(&hashes)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((id, new_bytes))
    }

    /// The bytes of a checkpoint with its SHA-256 and step: the whole file, or with
    /// `with_state` false its weights alone (what every reader but a resume needs).
    pub async fn checkpoint_bytes(
        &self,
        id: i64,
        with_state: bool,
    ) -> Result<(Vec<u8>, String, i64)> {
        type Row = (Vec<Vec<u8>>, String, i64, i64, bool);
        let row: Option<Row> = sqlx::query_as(
            "SELECT chunks, sha256, step, state_size, state_dropped FROM checkpoints WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let (hashes, sha, step, state_size, dropped) =
            row.ok_or_else(|| StoreError::NotFound(format!("no checkpoint {id}")))?;
        if with_state && dropped {
            return Err(StoreError::Invalid(format!(
                "checkpoint {id} (step {step}) holds weights only: resume state is kept in a \
                 run's latest checkpoint, and in a finished run's only with \
                 `checkpoints: {{keep: {{final_state: true}}}}`"
            )));
        }
        let mut conn = self.pool.acquire().await?;
        if !with_state && state_size > 0 {
            if let Some((w, kept)) = layout_without_state(&mut conn, id, &hashes).await? {
                let mut data = w.header;
                data.extend(chunk_data(&mut conn, &kept).await?);
                let sha = blobs::sha256_hex(&data);
                return Ok((data, sha, step));
            }
        }
        Ok((chunk_data(&mut conn, &hashes).await?, sha, step))
    }

    /// The bytes of an artifact.
    pub async fn artifact_bytes(&self, id: i64) -> Result<Vec<u8>> {
        let hashes: Option<Vec<Vec<u8>>> =
            sqlx::query_scalar("SELECT chunks FROM artifacts WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        let hashes = hashes.ok_or_else(|| StoreError::NotFound(format!("no artifact {id}")))?;
        self.read_chunks(&hashes).await
    }

    async fn read_chunks(&self, hashes: &[Vec<u8>]) -> Result<Vec<u8>> {
        chunk_data(&mut *self.pool.acquire().await?, hashes).await
    }

    /// Ends an attempt. Success queues the runs whose needs are now all met; failure fails the
    /// runs that needed it; either way retention runs and the experiment's state is updated.
    pub async fn finish(&self, f: Fence, outcome: Outcome, message: &str, step: i64) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        lock_fence(&mut tx, f).await?;
        let Some(state) = outcome.final_run_state() else {
            // Its worker is going away: the attempt counts as lost, the run goes straight
            // back to the queue and resumes from its latest checkpoint.
            sqlx::query(
                "UPDATE attempts SET state = $4, ended_at = now(), message = $3 WHERE run_id = $1 AND attempt = $2",
            )
            .bind(f.run)
            .bind(f.attempt)
            .bind(format!("released by its worker at step {step}: {message}"))
            .bind(AttemptState::Lost)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE runs SET state = $2, queued_at = clock_timestamp(), lease_worker = NULL, \
                 lease_expires = NULL WHERE id = $1",
            )
            .bind(f.run)
            .bind(RunState::Queued)
            .execute(&mut *tx)
            .await?;
            event(&mut tx, f.run, Outcome::Released.as_str(), message).await?;
            tx.commit().await?;
            return Ok(());
        };
        let attempt_state = match state {
            RunState::Succeeded => AttemptState::Succeeded,
            RunState::Cancelled => AttemptState::Cancelled,
            _ => AttemptState::Failed,
        };
        sqlx::query(
            "UPDATE attempts SET state = $3, ended_at = now(), message = $4 WHERE run_id = $1 AND attempt = $2",
        )
        .bind(f.run)
        .bind(f.attempt)
        .bind(attempt_state)
        .bind(message)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE runs SET state = $2, lease_worker = NULL, lease_expires = NULL, step = GREATEST(step, $3), \
             error = CASE WHEN $2 = $5 THEN $4 ELSE error END WHERE id = $1",
        )
        .bind(f.run)
        .bind(state)
        .bind(step)
        .bind(message)
        .bind(RunState::Failed)
        .execute(&mut *tx)
        .await?;
        event(&mut tx, f.run, state.as_str(), message).await?;
        settle(&mut tx, f.run, state).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Attempts whose lease ran out: marked lost; the run is requeued while restarts remain
    /// (a cancelled run becomes cancelled, an exhausted one failed). Returns how many.
    pub async fn reap_expired(&self) -> Result<usize> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<(i64, i32, bool, i32)> = sqlx::query_as(
            "SELECT r.id, r.attempt - r.restart_base, r.cancel_requested, e.max_restarts FROM runs r \
             JOIN experiments e ON e.id = r.experiment_id \
             WHERE r.state = $1 AND r.lease_expires < now() FOR UPDATE OF r SKIP LOCKED",
        )
        .bind(RunState::Running)
        .fetch_all(&mut *tx)
        .await?;
        for &(run, attempt, cancel, max_restarts) in &rows {
            // `attempt` counts from the last rerun; the attempt row is the run's latest.
            sqlx::query(
                "UPDATE attempts SET state = $2, ended_at = now(), message = 'lease expired (worker died or was cut off)' \
                 WHERE run_id = $1 AND attempt = (SELECT attempt FROM runs WHERE id = $1)",
            )
            .bind(run)
            .bind(AttemptState::Lost)
            .execute(&mut *tx)
            .await?;
            let (state, msg) = if cancel {
                (
                    RunState::Cancelled,
                    "cancelled while its worker was unreachable".to_string(),
                )
            } else if attempt <= max_restarts {
                (
                    RunState::Queued,
                    format!("an attempt was lost; requeued (restart {attempt} of {max_restarts})"),
                )
            } else {
                (
                    RunState::Failed,
                    format!(
                        "an attempt was lost and no restarts remain (max_restarts {max_restarts})"
                    ),
                )
            };
            sqlx::query(
                "UPDATE runs SET state = $2, lease_worker = NULL, lease_expires = NULL, \
                 queued_at = CASE WHEN $2 = $4 THEN clock_timestamp() ELSE queued_at END, \
                 error = CASE WHEN $2 = $5 THEN $3 ELSE error END WHERE id = $1",
            )
            .bind(run)
            .bind(state)
            .bind(&msg)
            .bind(RunState::Queued)
            .bind(RunState::Failed)
            .execute(&mut *tx)
            .await?;
            event(&mut tx, run, AttemptState::Lost.as_str(), &msg).await?;
            if state.is_final() {
                settle(&mut tx, run, state).await?;
            }
        }
        tx.commit().await?;
        Ok(rows.len())
    }

    /// Asks runs to stop: pending and queued ones stop at once, running ones are told through
    /// their worker's session. Returns the names affected.
    pub async fn cancel(&self, experiment: i64, run: Option<&str>) -> Result<Vec<String>> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<(i64, String, RunState)> = sqlx::query_as(
            "SELECT id, name, state FROM runs WHERE experiment_id = $1 AND ($2::text IS NULL OR name = $2) \
             AND state = ANY($3) ORDER BY id FOR UPDATE",
        )
        .bind(experiment)
        .bind(run)
        .bind(unended_run_states())
        .fetch_all(&mut *tx)
        .await?;
        for (id, _, state) in &rows {
            if *state == RunState::Running {
                sqlx::query("UPDATE runs SET cancel_requested = true WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                event(&mut tx, *id, "cancel", "cancel requested").await?;
            } else {
                sqlx::query("UPDATE runs SET state = $2 WHERE id = $1")
                    .bind(id)
                    .bind(RunState::Cancelled)
                    .execute(&mut *tx)
                    .await?;
                let kind = RunState::Cancelled.as_str();
                event(&mut tx, *id, kind, "cancelled before it started").await?;
                settle(&mut tx, *id, RunState::Cancelled).await?;
            }
        }
        tx.commit().await?;
        Ok(rows.into_iter().map(|r| r.1).collect())
    }

    /// Requeues runs that ended without succeeding: the failed ones (and with
    /// `with_cancelled` the cancelled ones too), or the one named `run`. Each gets a fresh
    /// restart budget and resumes from its latest checkpoint; one whose upstream runs have not
    /// all succeeded waits for them (rerun them too). Returns the names requeued.
    pub async fn rerun(
        &self,
        experiment: i64,
        run: Option<&str>,
        with_cancelled: bool,
    ) -> Result<Vec<String>> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<(i64, String, RunState)> = sqlx::query_as(
            "SELECT id, name, state FROM runs WHERE experiment_id = $1 AND ($2::text IS NULL OR name = $2) \
             ORDER BY id FOR UPDATE",
        )
        .bind(experiment)
        .bind(run)
        .fetch_all(&mut *tx)
        .await?;
        if let (Some(name), Some((_, _, state))) = (run, rows.first()) {
            if !matches!(state, RunState::Failed | RunState::Cancelled) {
                return Err(StoreError::Invalid(format!(
                    "run {name} is {state}; only failed or cancelled runs can be rerun"
                )));
            }
        }
        let chosen: Vec<(i64, String)> = rows
            .into_iter()
            .filter(|(_, _, s)| {
                *s == RunState::Failed
                    || (*s == RunState::Cancelled && (with_cancelled || run.is_some()))
            })
            .map(|(id, name, _)| (id, name))
            .collect();
        for (id, _) in &chosen {
            sqlx::query(
                "UPDATE runs SET state = $2, error = NULL, cancel_requested = false, \
                 restart_base = attempt WHERE id = $1",
            )
            .bind(id)
            .bind(RunState::Pending)
            .execute(&mut *tx)
            .await?;
            event(
                &mut tx,
                *id,
                "rerun",
                "rerun requested: a fresh restart budget",
            )
            .await?;
        }
        let ids: Vec<i64> = chosen.iter().map(|(id, _)| *id).collect();
        sqlx::query(
            "UPDATE runs r SET state = $2, queued_at = clock_timestamp() WHERE r.id = ANY($1) \
             AND NOT EXISTS (SELECT 1 FROM run_deps d JOIN runs u ON u.id = d.upstream_id \
                             WHERE d.run_id = r.id AND u.state <> $3)",
        )
        .bind(&ids)
        .bind(RunState::Queued)
        .bind(RunState::Succeeded)
        .execute(&mut *tx)
        .await?;
        if !ids.is_empty() {
            sqlx::query("UPDATE experiments SET state = $2 WHERE id = $1")
                .bind(experiment)
                .bind(ExperimentState::Running)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(chosen.into_iter().map(|(_, name)| name).collect())
    }

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
             e.objective_metric, e.objective_mode, e.yaml, \
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

    async fn run_rows(&self, experiment: i64, only: Option<i64>) -> Result<Vec<RunRow>> {
        let rows = sqlx::query(
            "SELECT id, name, job_kind, state, attempt, config, step, total_steps, error, method, params \
             FROM runs WHERE experiment_id = $1 AND ($2::int8 IS NULL OR id = $2) ORDER BY id",
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

    /// Metric summaries of a run.
    pub async fn summaries(&self, run: i64) -> Result<Vec<MetricSummary>> {
        let rows: Vec<(String, f64, f64, f64, i64, i64)> = sqlx::query_as(
            "SELECT name, last_value, min_value, max_value, last_step, count FROM metric_summaries \
             WHERE run_id = $1 ORDER BY name",
        )
        .bind(run)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(name, last, min, max, last_step, count)| MetricSummary {
                name,
                last,
                min,
                max,
                last_step,
                count,
            })
            .collect())
    }

    /// Attempts of a run.
    pub async fn attempts(&self, run: i64) -> Result<Vec<AttemptRow>> {
        let rows = sqlx::query(
            "SELECT attempt, worker_id, state, extract(epoch FROM started_at)::int8 AS s, \
             COALESCE(extract(epoch FROM ended_at)::int8, 0) AS e, resumed_from_step, message \
             FROM attempts WHERE run_id = $1 ORDER BY attempt",
        )
        .bind(run)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| AttemptRow {
                attempt: r.get("attempt"),
                worker: r.get("worker_id"),
                state: r.get("state"),
                started: r.get("s"),
                ended: r.get("e"),
                resumed_from_step: r.get("resumed_from_step"),
                message: r.get("message"),
            })
            .collect())
    }

    /// One metric curve of a run, by step.
    pub async fn curve(&self, run: i64, name: &str) -> Result<Series> {
        let rows: Vec<(Vec<u8>, Vec<u8>)> = sqlx::query_as(
            "SELECT steps, vals FROM metric_chunks WHERE run_id = $1 AND name = $2 ORDER BY first_step, id",
        )
        .bind(run)
        .bind(name)
        .fetch_all(&self.pool)
        .await?;
        let mut s = Series::default();
        for (st, va) in rows {
            s.steps.extend(unpack_i64(&st));
            s.values.extend(unpack_f64(&va));
        }
        Ok(s)
    }

    /// Checkpoints of an experiment ranked by `metric` (the objective's stored values, or for
    /// another metric its value at each checkpoint's step).
    pub async fn best(
        &self,
        experiment: i64,
        metric: &str,
        mode: Mode,
        top: usize,
    ) -> Result<Vec<Ranked>> {
        let objective: String =
            sqlx::query_scalar("SELECT objective_metric FROM experiments WHERE id = $1")
                .bind(experiment)
                .fetch_one(&self.pool)
                .await?;
        let order = match mode {
            Mode::Max => "DESC",
            Mode::Min => "ASC",
        };
        if metric == objective {
            let rows = sqlx::query(&format!(
                "SELECT c.id, c.run_id, r.name, c.step, c.objective, c.size, c.sha256 FROM checkpoints c \
                 JOIN runs r ON r.id = c.run_id WHERE r.experiment_id = $1 AND c.objective IS NOT NULL \
                 ORDER BY c.objective {order}, c.id LIMIT $2"
            ))
            .bind(experiment)
            .bind(top as i64)
            .fetch_all(&self.pool)
            .await?;
            return Ok(rows
                .into_iter()
                .map(|r| Ranked {
                    id: r.get("id"),
                    run_id: r.get("run_id"),
                    run: r.get("name"),
                    step: r.get("step"),
                    value: r.get("objective"),
                    size: r.get("size"),
                    sha256: r.get("sha256"),
                })
                .collect());
        }
        let rows = sqlx::query(
            "SELECT c.id, c.run_id, r.name, c.step, c.size, c.sha256 FROM checkpoints c \
             JOIN runs r ON r.id = c.run_id WHERE r.experiment_id = $1",
        )
        .bind(experiment)
        .fetch_all(&self.pool)
        .await?;
        let mut ranked = Vec::new();
        let mut conn = self.pool.acquire().await?;
        for r in rows {
            let run_id: i64 = r.get("run_id");
            let step: i64 = r.get("step");
            if let Some(value) = value_at(&mut conn, run_id, metric, step).await? {
                ranked.push(Ranked {
                    id: r.get("id"),
                    run_id,
                    run: r.get("name"),
                    step,
                    value,
                    size: r.get("size"),
                    sha256: r.get("sha256"),
                });
            }
        }
        ranked.sort_by(|a, b| {
            let o = a.value.total_cmp(&b.value);
            if mode == Mode::Max {
                o.reverse()
            } else {
                o
            }
        });
        ranked.truncate(top);
        Ok(ranked)
    }

    /// Every metric a run reported at exactly `step`, in one query.
    pub async fn metrics_at(&self, run: i64, step: i64) -> Result<BTreeMap<String, f64>> {
        let rows: Vec<(String, Vec<u8>, Vec<u8>)> = sqlx::query_as(
            "SELECT name, steps, vals FROM metric_chunks WHERE run_id = $1 AND first_step <= $2 \
             AND last_step >= $2 ORDER BY id",
        )
        .bind(run)
        .bind(step)
        .fetch_all(&self.pool)
        .await?;
        let mut out = BTreeMap::new();
        for (name, st, va) in rows {
            for (s, v) in unpack_i64(&st).into_iter().zip(unpack_f64(&va)) {
                if s == step {
                    out.insert(name.clone(), v);
                }
            }
        }
        Ok(out)
    }

    /// The last `tail` log lines of a run.
    pub async fn logs(&self, run: i64, tail: i64) -> Result<Vec<String>> {
        let mut lines: Vec<(i32, String)> = sqlx::query_as(
            "SELECT attempt, line FROM logs WHERE run_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(run)
        .bind(tail)
        .fetch_all(&self.pool)
        .await?;
        lines.reverse();
        Ok(lines
            .into_iter()
            .map(|(a, l)| format!("[attempt {a}] {l}"))
            .collect())
    }

    /// Curves of a run with each point's wall time (when its chunk was stored), optionally
    /// only the steps in `[from, to]`, for drawing at about `target` points: a curve long
    /// enough is read from its chunks' overviews (see `crate::downsample::overview`) instead
    /// of every point. Also the true point counts, and the run's stream cursor: everything
    /// is read in one snapshot, so every chunk with a larger id arrived after this read.
    pub async fn timed_curves(
        &self,
        run: i64,
        names: &[String],
        range: (Option<i64>, Option<i64>),
        target: usize,
    ) -> Result<TimedCurves> {
        let (from, to) = range;
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await?;
        let filter = "run_id = $1 AND (cardinality($2::text[]) = 0 OR name = ANY($2)) \
             AND ($3::int8 IS NULL OR last_step >= $3) AND ($4::int8 IS NULL OR first_step <= $4)";
        // octet_length reads a stored value's size without decompressing it.
        let counts: Vec<(String, i64)> = sqlx::query_as(&format!(
            "SELECT name, sum(octet_length(steps) / 8)::int8 FROM metric_chunks WHERE {filter} GROUP BY name"
        ))
        .bind(run)
        .bind(names)
        .bind(from)
        .bind(to)
        .fetch_all(&mut *tx)
        .await?;
        let coarse: Vec<String> = counts
            .iter()
            .filter(|(_, n)| crate::downsample::overview_suffices(*n as usize, target))
            .map(|(name, _)| name.clone())
            .collect();
        let rows = sqlx::query(&format!(
            "SELECT name, \
             CASE WHEN name = ANY($5) AND overview_steps IS NOT NULL THEN overview_steps ELSE steps END, \
             CASE WHEN name = ANY($5) AND overview_vals IS NOT NULL THEN overview_vals ELSE vals END, \
             extract(epoch FROM reported_at)::float8 FROM metric_chunks WHERE {filter} \
             ORDER BY name, first_step, id"
        ))
        .bind(run)
        .bind(names)
        .bind(from)
        .bind(to)
        .bind(&coarse)
        .fetch_all(&mut *tx)
        .await?;
        let cursor: i64 =
            sqlx::query_scalar("SELECT COALESCE(max(id), 0) FROM metric_chunks WHERE run_id = $1")
                .bind(run)
                .fetch_one(&mut *tx)
                .await?;
        tx.commit().await?;
        let mut curves: BTreeMap<String, TimedSeries> = BTreeMap::new();
        let (lo, hi) = (from.unwrap_or(i64::MIN), to.unwrap_or(i64::MAX));
        for row in rows {
            let time: f64 = row.get(3);
            let s = curves.entry(row.get(0)).or_default();
            let steps = unpack_i64(row.get(1));
            let values = unpack_f64(row.get(2));
            for (step, value) in steps.into_iter().zip(values) {
                if (lo..=hi).contains(&step) {
                    s.steps.push(step);
                    s.values.push(value);
                    s.times.push(time);
                }
            }
        }
        Ok(TimedCurves {
            curves,
            totals: counts.into_iter().map(|(n, c)| (n, c as usize)).collect(),
            overview: coarse,
            cursor,
        })
    }

    /// Chunks of several runs newer than each run's cursor, oldest first, at most `limit`:
    /// what a live stream sends next. One statement for any number of runs.
    pub async fn chunks_after(&self, cursors: &[(i64, i64)], limit: i64) -> Result<Vec<NewChunk>> {
        let (runs, afters): (Vec<i64>, Vec<i64>) = cursors.iter().copied().unzip();
        let rows = sqlx::query(
            "SELECT c.run_id, c.id, c.name, c.steps, c.vals, extract(epoch FROM c.reported_at)::float8 \
             FROM UNNEST($1::int8[], $2::int8[]) AS k(run, after) \
             JOIN metric_chunks c ON c.run_id = k.run AND c.id > k.after ORDER BY c.id LIMIT $3",
        )
        .bind(&runs)
        .bind(&afters)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| NewChunk {
                run: r.get(0),
                id: r.get(1),
                name: r.get(2),
                time: r.get(5),
                series: Series {
                    steps: unpack_i64(r.get(3)),
                    values: unpack_f64(r.get(4)),
                },
            })
            .collect())
    }

    /// Checkpoints of a run, by step.
    pub async fn checkpoints(&self, run: i64) -> Result<Vec<CheckpointRow>> {
        let rows = sqlx::query(
            "SELECT id, step, attempt, size, sha256, objective, extract(epoch FROM created_at)::int8, \
             state_size, state_dropped FROM checkpoints WHERE run_id = $1 ORDER BY step",
        )
        .bind(run)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| CheckpointRow {
                id: r.get(0),
                step: r.get(1),
                attempt: r.get(2),
                size: r.get(3),
                sha256: r.get(4),
                objective: r.get(5),
                created: r.get(6),
                state_size: r.get(7),
                state_dropped: r.get(8),
            })
            .collect())
    }

    /// Deletes checkpoints and then the chunks nothing references any more; returns the
    /// bytes freed. (Retention does the same for a finished run; `plume bench storage`
    /// measures this at scale.)
    pub async fn delete_checkpoints(&self, ids: &[i64]) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        chunk_lock(&mut tx, true).await?;
        let deleted: Vec<Vec<Vec<u8>>> =
            sqlx::query_scalar("DELETE FROM checkpoints WHERE id = ANY($1) RETURNING chunks")
                .bind(ids)
                .fetch_all(&mut *tx)
                .await?;
        let candidates: Vec<Vec<u8>> = deleted.into_iter().flatten().collect();
        let freed = collect_garbage(&mut tx, &candidates).await?;
        tx.commit().await?;
        Ok(freed)
    }

    /// What an experiment's checkpoints weigh, per run and in all: weights and resume state
    /// as files, the chunks only that run references, and the distinct chunks stored.
    pub async fn storage(&self, experiment: i64) -> Result<Storage> {
        let rows: Vec<(i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT c.run_id, count(*), sum(c.size - c.state_size)::int8, sum(c.state_size)::int8 \
             FROM checkpoints c JOIN runs r ON r.id = c.run_id WHERE r.experiment_id = $1 GROUP BY c.run_id",
        )
        .bind(experiment)
        .fetch_all(&self.pool)
        .await?;
        let own: HashMap<i64, i64> = sqlx::query_as(
            "WITH refs AS (SELECT DISTINCT c.run_id, unnest(c.chunks) AS h FROM checkpoints c \
                 JOIN runs r ON r.id = c.run_id WHERE r.experiment_id = $1), \
             owners AS (SELECT h, min(run_id) AS run_id FROM refs GROUP BY h HAVING count(*) = 1) \
             SELECT o.run_id, sum(octet_length(b.data))::int8 FROM owners o JOIN blob_chunks b ON b.hash = o.h \
             GROUP BY o.run_id",
        )
        .bind(experiment)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .collect();
        let (stored, distinct): (Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT sum(octet_length(b.data))::int8, sum(b.size)::int8 FROM blob_chunks b \
             WHERE b.hash IN (SELECT unnest(c.chunks) FROM checkpoints c JOIN runs r ON r.id = c.run_id \
             WHERE r.experiment_id = $1)",
        )
        .bind(experiment)
        .fetch_one(&self.pool)
        .await?;
        let runs: BTreeMap<i64, RunStorage> = rows
            .into_iter()
            .map(|(run, n, weights, state)| {
                (
                    run,
                    RunStorage {
                        checkpoints: n,
                        weight_bytes: weights,
                        state_bytes: state,
                        own_stored_bytes: own.get(&run).copied().unwrap_or(0),
                    },
                )
            })
            .collect();
        Ok(Storage {
            weight_bytes: runs.values().map(|r| r.weight_bytes).sum(),
            state_bytes: runs.values().map(|r| r.state_bytes).sum(),
            stored_bytes: stored.unwrap_or(0),
            distinct_bytes: distinct.unwrap_or(0),
            runs,
        })
    }

    /// Pictures of a run (sample grids, edit galleries), by name then step.
    pub async fn artifacts(&self, run: i64) -> Result<Vec<ArtifactRow>> {
        let rows: Vec<(i64, String, i64, i64)> = sqlx::query_as(
            "SELECT id, name, step, size FROM artifacts WHERE run_id = $1 ORDER BY name, step",
        )
        .bind(run)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, name, step, size)| ArtifactRow {
                id,
                name,
                step,
                size,
            })
            .collect())
    }

    /// The experiment and run names of a checkpoint (for its download's file name).
    pub async fn checkpoint_owner(&self, id: i64) -> Result<(String, String)> {
        sqlx::query_as(
            "SELECT e.name, r.name FROM checkpoints x JOIN runs r ON r.id = x.run_id \
             JOIN experiments e ON e.id = r.experiment_id WHERE x.id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("no checkpoint {id}")))
    }
}

type Tx<'a> = sqlx::Transaction<'a, sqlx::Postgres>;

/// The names of the states a run has not ended in (for `state = ANY(...)`).
fn unended_run_states() -> Vec<&'static str> {
    RunState::ALL
        .iter()
        .filter(|s| !s.is_final())
        .map(|s| s.as_str())
        .collect()
}

/// Locks the run row if `f` still holds its lease; `Stale` otherwise.
async fn lock_fence(tx: &mut Tx<'_>, f: Fence) -> Result<()> {
    let ok: Option<i64> = sqlx::query_scalar(
        "SELECT id FROM runs WHERE id = $1 AND attempt = $2 AND lease_worker = $3 \
         AND state = $4 AND lease_expires > now() FOR SHARE",
    )
    .bind(f.run)
    .bind(f.attempt)
    .bind(f.worker)
    .bind(RunState::Running)
    .fetch_optional(&mut **tx)
    .await?;
    ok.map(|_| ()).ok_or(StoreError::Stale {
        run: f.run,
        attempt: f.attempt,
        worker: f.worker,
    })
}

/// The objective metric of a run's experiment.
async fn objective_metric(tx: &mut Tx<'_>, run: i64) -> Result<String> {
    Ok(sqlx::query_scalar(
        "SELECT e.objective_metric FROM runs r JOIN experiments e ON e.id = r.experiment_id WHERE r.id = $1",
    )
    .bind(run)
    .fetch_one(&mut **tx)
    .await?)
}

async fn event(tx: &mut Tx<'_>, run: i64, kind: &str, message: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO events (experiment_id, run_id, kind, message) \
         SELECT experiment_id, id, $2, $3 FROM runs WHERE id = $1",
    )
    .bind(run)
    .bind(kind)
    .bind(message)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Merges each series into the run's summaries (last by step, min, max, count): one
/// statement for any number of metrics. Used by ingestion and by the rebuild after a resume.
async fn merge_summaries(
    tx: &mut Tx<'_>,
    run: i64,
    series: &BTreeMap<String, Series>,
) -> Result<()> {
    let mut names = Vec::new();
    let (mut lasts, mut last_values, mut mins, mut maxs, mut counts) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (name, s) in series {
        let Some((i_last, _)) = s.steps.iter().enumerate().max_by_key(|(i, st)| (**st, *i)) else {
            continue;
        };
        names.push(name.clone());
        lasts.push(s.steps[i_last]);
        last_values.push(s.values[i_last]);
        mins.push(s.values.iter().copied().fold(f64::INFINITY, f64::min));
        maxs.push(s.values.iter().copied().fold(f64::NEG_INFINITY, f64::max));
        counts.push(s.steps.len() as i64);
    }
    if names.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO metric_summaries AS s (run_id, name, last_step, last_value, min_value, max_value, count) \
         SELECT $1, * FROM UNNEST($2::text[], $3::int8[], $4::float8[], $5::float8[], $6::float8[], $7::int8[]) \
         ON CONFLICT (run_id, name) DO UPDATE SET \
         last_value = CASE WHEN EXCLUDED.last_step >= s.last_step THEN EXCLUDED.last_value ELSE s.last_value END, \
         last_step = GREATEST(s.last_step, EXCLUDED.last_step), \
         min_value = LEAST(s.min_value, EXCLUDED.min_value), \
         max_value = GREATEST(s.max_value, EXCLUDED.max_value), count = s.count + EXCLUDED.count",
    )
    .bind(run)
    .bind(&names)
    .bind(&lasts)
    .bind(&last_values)
    .bind(&mins)
    .bind(&maxs)
    .bind(&counts)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A chunk's stored overview (`crate::downsample::overview`), packed; `None` when short.
fn packed_overview(s: &Series) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    match crate::downsample::overview(&s.values) {
        Some(keep) => {
            let st: Vec<i64> = keep.iter().map(|&i| s.steps[i]).collect();
            let va: Vec<f64> = keep.iter().map(|&i| s.values[i]).collect();
            (Some(pack_i64(&st)), Some(pack_f64(&va)))
        }
        None => (None, None),
    }
}

/// Packs each metric's points into one row, then merges the summaries. Two statements per
/// batch.
async fn insert_series(tx: &mut Tx<'_>, run: i64, batch: &BTreeMap<String, Series>) -> Result<()> {
    let mut names = Vec::new();
    let (mut firsts, mut lasts, mut steps, mut vals) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut o_steps, mut o_vals) = (Vec::new(), Vec::new());
    for (name, s) in batch {
        let (Some(first), Some(last)) = (s.steps.iter().min(), s.steps.iter().max()) else {
            continue;
        };
        names.push(name.clone());
        firsts.push(*first);
        lasts.push(*last);
        steps.push(pack_i64(&s.steps));
        vals.push(pack_f64(&s.values));
        let (os, ov) = packed_overview(s);
        o_steps.push(os);
        o_vals.push(ov);
    }
    if names.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO metric_chunks (run_id, name, first_step, last_step, steps, vals, overview_steps, overview_vals) \
         SELECT $1, * FROM UNNEST($2::text[], $3::int8[], $4::int8[], $5::bytea[], $6::bytea[], $7::bytea[], $8::bytea[])",
    )
    .bind(run)
    .bind(&names)
    .bind(&firsts)
    .bind(&lasts)
    .bind(&steps)
    .bind(&vals)
    .bind(&o_steps)
    .bind(&o_vals)
    .execute(&mut **tx)
    .await?;
    merge_summaries(tx, run, batch).await
}

/// Removes every point after `step` (and pictures after it), then rebuilds the run's
/// summaries from what is left.
async fn truncate_after(tx: &mut Tx<'_>, run: i64, step: i64) -> Result<()> {
    sqlx::query("DELETE FROM metric_chunks WHERE run_id = $1 AND first_step > $2")
        .bind(run)
        .bind(step)
        .execute(&mut **tx)
        .await?;
    let straddling: Vec<(i64, Vec<u8>, Vec<u8>)> = sqlx::query_as(
        "SELECT id, steps, vals FROM metric_chunks WHERE run_id = $1 AND last_step > $2",
    )
    .bind(run)
    .bind(step)
    .fetch_all(&mut **tx)
    .await?;
    for (id, st, va) in straddling {
        let (s, v): (Vec<i64>, Vec<f64>) = unpack_i64(&st)
            .into_iter()
            .zip(unpack_f64(&va))
            .filter(|(s, _)| *s <= step)
            .unzip();
        let last = s.iter().copied().max().unwrap_or(step);
        let kept = Series {
            steps: s,
            values: v,
        };
        let (os, ov) = packed_overview(&kept);
        sqlx::query(
            "UPDATE metric_chunks SET steps = $2, vals = $3, last_step = $4, overview_steps = $5, \
             overview_vals = $6 WHERE id = $1",
        )
        .bind(id)
        .bind(pack_i64(&kept.steps))
        .bind(pack_f64(&kept.values))
        .bind(last)
        .bind(os)
        .bind(ov)
        .execute(&mut **tx)
        .await?;
    }
    sqlx::query("DELETE FROM artifacts WHERE run_id = $1 AND step > $2")
        .bind(run)
        .bind(step)
        .execute(&mut **tx)
        .await?;
    sqlx::query("DELETE FROM metric_summaries WHERE run_id = $1")
        .bind(run)
        .execute(&mut **tx)
        .await?;
    let rows: Vec<(String, Vec<u8>, Vec<u8>)> = sqlx::query_as(
        "SELECT name, steps, vals FROM metric_chunks WHERE run_id = $1 ORDER BY first_step, id",
    )
    .bind(run)
    .fetch_all(&mut **tx)
    .await?;
    let mut all: BTreeMap<String, Series> = BTreeMap::new();
    for (name, st, va) in rows {
        let s = all.entry(name).or_default();
        s.steps.extend(unpack_i64(&st));
        s.values.extend(unpack_f64(&va));
    }
    merge_summaries(tx, run, &all).await
}

/// The value of `name` at `step` (its last point at or before it).
async fn value_at(
    conn: &mut sqlx::PgConnection,
    run: i64,
    name: &str,
    step: i64,
) -> Result<Option<f64>> {
    let rows: Vec<(Vec<u8>, Vec<u8>)> = sqlx::query_as(
        "SELECT steps, vals FROM metric_chunks WHERE run_id = $1 AND name = $2 AND first_step <= $3 \
         ORDER BY first_step DESC, id DESC LIMIT 4",
    )
    .bind(run)
    .bind(name)
    .bind(step)
    .fetch_all(&mut *conn)
    .await?;
    let mut best: Option<(i64, f64)> = None;
    for (st, va) in rows {
        for (s, v) in unpack_i64(&st).into_iter().zip(unpack_f64(&va)) {
            if s <= step && best.is_none_or(|(bs, _)| s >= bs) {
                best = Some((s, v));
            }
        }
    }
    Ok(best.filter(|(s, _)| *s == step).map(|(_, v)| v))
}

/// Uploads hold this lock shared, garbage collection exclusively: a chunk an upload found
/// already present cannot be collected before the upload's row references it.
async fn chunk_lock(tx: &mut Tx<'_>, exclusive: bool) -> Result<()> {
    let q = if exclusive {
        "SELECT pg_advisory_xact_lock(7262)"
    } else {
        "SELECT pg_advisory_xact_lock_shared(7262)"
    };
    sqlx::query(q).execute(&mut **tx).await?;
    Ok(())
}

/// Stores chunks not yet present; returns their hashes in order and the bytes newly stored.
/// With `tensors`, every chunk after the first (the safetensors header) is tensor data and is
/// kept in its smallest encoding ([`blobs::encode_tensor_chunk`]); only new chunks are encoded.
async fn store_chunks(
    tx: &mut Tx<'_>,
    data: &[u8],
    ranges: &[std::ops::Range<usize>],
    tensors: bool,
) -> Result<(Vec<Vec<u8>>, u64)> {
    let hashes: Vec<Vec<u8>> = ranges
        .iter()
        .map(|r| blobs::sha256(&data[r.clone()]))
        .collect();
    let present: std::collections::HashSet<Vec<u8>> =
        sqlx::query_scalar("SELECT hash FROM blob_chunks WHERE hash = ANY($1)")
            .bind(&hashes)
            .fetch_all(&mut **tx)
            .await?
            .into_iter()
            .collect();
    let mut seen = std::collections::HashSet::new();
    let new: Vec<usize> = (0..ranges.len())
        .filter(|&i| !present.contains(&hashes[i]) && seen.insert(hashes[i].clone()))
        .collect();
    let mut new_bytes = 0u64;
    // Insert 16 chunks (at most 64 MiB) per statement.
    for group in new.chunks(16) {
        let mut g_hashes = Vec::new();
        let (mut sizes, mut codes, mut datas) = (Vec::new(), Vec::new(), Vec::new());
        for &i in group {
            let bytes = &data[ranges[i].clone()];
            let (encoding, stored) = if tensors && i > 0 {
                blobs::encode_tensor_chunk(bytes)
            } else {
                (blobs::Encoding::Raw, bytes.to_vec())
            };
            g_hashes.push(hashes[i].clone());
            sizes.push(bytes.len() as i32);
            codes.push(encoding as i16);
            datas.push(stored);
        }
        let inserted: Vec<i32> = sqlx::query_scalar(
            "INSERT INTO blob_chunks (hash, size, encoding, data) \
             SELECT * FROM UNNEST($1::bytea[], $2::int4[], $3::int2[], $4::bytea[]) \
             ON CONFLICT (hash) DO NOTHING RETURNING octet_length(data)",
        )
        .bind(&g_hashes)
        .bind(&sizes)
        .bind(&codes)
        .bind(&datas)
        .fetch_all(&mut **tx)
        .await?;
        new_bytes += inserted.iter().map(|&s| s as u64).sum::<u64>();
    }
    Ok((hashes, new_bytes))
}

/// After a run reaches a final state: queue dependants whose needs all succeeded (or fail
/// them if this one did not), apply checkpoint retention, settle the experiment's state.
async fn settle(tx: &mut Tx<'_>, run: i64, state: RunState) -> Result<()> {
    if state == RunState::Succeeded {
        sqlx::query(
            "UPDATE runs r SET state = $2, queued_at = clock_timestamp() WHERE r.state = $3 \
             AND r.id IN (SELECT run_id FROM run_deps WHERE upstream_id = $1) \
             AND NOT EXISTS (SELECT 1 FROM run_deps d JOIN runs u ON u.id = d.upstream_id \
                             WHERE d.run_id = r.id AND u.state <> $4)",
        )
        .bind(run)
        .bind(RunState::Queued)
        .bind(RunState::Pending)
        .bind(RunState::Succeeded)
        .execute(&mut **tx)
        .await?;
    } else {
        // Fail everything downstream, transitively.
        let name: String = sqlx::query_scalar("SELECT name FROM runs WHERE id = $1")
            .bind(run)
            .fetch_one(&mut **tx)
            .await?;
        sqlx::query(
            "WITH RECURSIVE down(id) AS (SELECT run_id FROM run_deps WHERE upstream_id = $1 \
             UNION SELECT d.run_id FROM run_deps d JOIN down ON d.upstream_id = down.id) \
             UPDATE runs SET state = $3, error = $2 WHERE id IN (SELECT id FROM down) AND state = $4",
        )
        .bind(run)
        .bind(format!("upstream run {name} {state}"))
        .bind(RunState::Failed)
        .bind(RunState::Pending)
        .execute(&mut **tx)
        .await?;
    }
    retain(tx, run, state == RunState::Succeeded).await?;
    sqlx::query(
        "UPDATE experiments e SET state = CASE \
            WHEN EXISTS (SELECT 1 FROM runs WHERE experiment_id = e.id AND state = $2) THEN $3 \
            WHEN EXISTS (SELECT 1 FROM runs WHERE experiment_id = e.id AND state = $4) THEN $5 \
            ELSE $6 END \
         WHERE e.id = (SELECT experiment_id FROM runs WHERE id = $1) \
         AND NOT EXISTS (SELECT 1 FROM runs WHERE experiment_id = e.id AND state = ANY($7))",
    )
    .bind(run)
    .bind(RunState::Failed)
    .bind(ExperimentState::Failed)
    .bind(RunState::Cancelled)
    .bind(ExperimentState::Cancelled)
    .bind(ExperimentState::Succeeded)
    .bind(unended_run_states())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Keeps a finished run's `latest` checkpoints by step and `best` by objective; deletes the
/// rest, drops the resume state of a succeeded run (unless its experiment keeps the final
/// state), and deletes the chunks no checkpoint or artifact references any more.
async fn retain(tx: &mut Tx<'_>, run: i64, succeeded: bool) -> Result<()> {
    let deleted: Vec<Vec<Vec<u8>>> = sqlx::query_scalar(
        "WITH policy AS (SELECT e.keep_best, e.keep_latest, e.objective_mode FROM runs r \
                         JOIN experiments e ON e.id = r.experiment_id WHERE r.id = $1), \
         ranked AS (SELECT c.id, \
             row_number() OVER (ORDER BY c.step DESC) AS by_step, \
             row_number() OVER (ORDER BY CASE WHEN (SELECT objective_mode FROM policy) = 'max' \
                 THEN -c.objective ELSE c.objective END ASC NULLS LAST) AS by_objective, \
             c.objective FROM checkpoints c WHERE c.run_id = $1) \
         DELETE FROM checkpoints WHERE id IN (SELECT id FROM ranked WHERE by_step > (SELECT keep_latest FROM policy) \
             AND (objective IS NULL OR by_objective > (SELECT keep_best FROM policy))) RETURNING chunks",
    )
    .bind(run)
    .fetch_all(&mut **tx)
    .await?;
    let orphans: Vec<Vec<u8>> = deleted.into_iter().flatten().collect();
    let with_state: Vec<i64> = if succeeded {
        sqlx::query_scalar(
            "SELECT c.id FROM checkpoints c JOIN runs r ON r.id = c.run_id \
             JOIN experiments e ON e.id = r.experiment_id \
             WHERE c.run_id = $1 AND c.state_size > 0 AND NOT e.keep_final_state",
        )
        .bind(run)
        .fetch_all(&mut **tx)
        .await?
    } else {
        Vec::new()
    };
    if orphans.is_empty() && with_state.is_empty() {
        return Ok(());
    }
    chunk_lock(tx, true).await?;
    drop_states(tx, &with_state, orphans).await
}

/// Drops the resume state of checkpoints `ids`, then collects their freed chunks together
/// with `orphans` (chunks the caller already unreferenced). The caller holds the chunk lock
/// exclusively.
async fn drop_states(tx: &mut Tx<'_>, ids: &[i64], mut orphans: Vec<Vec<u8>>) -> Result<()> {
    for &id in ids {
        orphans.extend(drop_state(tx, id).await?);
    }
    collect_garbage(tx, &orphans).await?;
    Ok(())
}

/// A stored checkpoint's weights-only form: the new header and the chunks it keeps, or
/// `None` when there is no state to drop (or the file is laid out otherwise than Plume
/// writes them, which is logged and then kept whole).
async fn layout_without_state(
    conn: &mut sqlx::PgConnection,
    id: i64,
    hashes: &[Vec<u8>],
) -> Result<Option<(blobs::WithoutState, Vec<Vec<u8>>)>> {
    let Some(header_hash) = hashes.first() else {
        return Ok(None);
    };
    let rows: Vec<(Vec<u8>, i32)> =
        sqlx::query_as("SELECT hash, size FROM blob_chunks WHERE hash = ANY($1)")
            .bind(hashes)
            .fetch_all(&mut *conn)
            .await?;
    let sizes: HashMap<Vec<u8>, usize> = rows.into_iter().map(|(h, n)| (h, n as usize)).collect();
    let chunk_sizes: Vec<usize> = hashes[1..]
        .iter()
        .map(|h| sizes.get(h).copied().unwrap_or(0))
        .collect();
    let header = chunk_data(&mut *conn, std::slice::from_ref(header_hash)).await?;
    match blobs::without_state(&header, &chunk_sizes) {
        Ok(Some(w)) => {
            let kept = hashes[1..]
                .iter()
                .zip(&w.keep)
                .filter(|(_, k)| **k)
                .map(|(h, _)| h.clone())
                .collect();
            Ok(Some((w, kept)))
        }
        Ok(None) => Ok(None),
        Err(e) => {
            tracing::warn!("checkpoint {id}: resume state kept ({e})");
            Ok(None)
        }
    }
}

/// The bytes of chunks, in order, decoded.
async fn chunk_data(conn: &mut sqlx::PgConnection, hashes: &[Vec<u8>]) -> Result<Vec<u8>> {
    let rows: Vec<(Vec<u8>, i32, i16, Vec<u8>)> =
        sqlx::query_as("SELECT hash, size, encoding, data FROM blob_chunks WHERE hash = ANY($1)")
            .bind(hashes)
            .fetch_all(&mut *conn)
            .await?;
    let mut by_hash: HashMap<Vec<u8>, Vec<u8>> = HashMap::with_capacity(rows.len());
    for (hash, size, code, data) in rows {
        let corrupt = |m: String| StoreError::Invalid(format!("chunk {}: {m}", hex::encode(&hash)));
        let encoding = blobs::Encoding::from_code(code)
            .ok_or_else(|| corrupt(format!("unknown encoding {code}")))?;
        let bytes = blobs::decode_chunk(encoding, &data, size as usize).map_err(corrupt)?;
        by_hash.insert(hash, bytes);
    }
    let mut out = Vec::new();
    for h in hashes {
        out.extend_from_slice(
            by_hash.get(h).ok_or_else(|| {
                StoreError::NotFound(format!("chunk {} is missing", hex::encode(h)))
            })?,
        );
    }
    Ok(out)
}

/// Rewrites checkpoint `id` without its resume state: a new header chunk and the weights'
/// chunks, unchanged (see [`blobs::without_state`]). Returns the chunks it no longer
/// references, for [`collect_garbage`]. The caller holds the chunk lock exclusively.
async fn drop_state(tx: &mut Tx<'_>, id: i64) -> Result<Vec<Vec<u8>>> {
    let hashes: Vec<Vec<u8>> = sqlx::query_scalar("SELECT chunks FROM checkpoints WHERE id = $1")
        .bind(id)
        .fetch_one(&mut **tx)
        .await?;
    let Some((rewritten, kept)) = layout_without_state(tx, id, &hashes).await? else {
        sqlx::query("UPDATE checkpoints SET state_size = 0 WHERE id = $1")
            .bind(id)
            .execute(&mut **tx)
            .await?;
        return Ok(Vec::new());
    };
    let mut file = rewritten.header.clone();
    file.extend(chunk_data(tx, &kept).await?);
    let (mut new_hashes, _) = store_chunks(
        tx,
        &rewritten.header,
        std::slice::from_ref(&(0..rewritten.header.len())),
        false,
    )
    .await?;
    new_hashes.extend(kept);
    sqlx::query(
        "UPDATE checkpoints SET chunks = $2, size = $3, sha256 = $4, state_size = 0, \
         state_dropped = true WHERE id = $1",
    )
    .bind(id)
    .bind(&new_hashes)
    .bind(file.len() as i64)
    .bind(blobs::sha256_hex(&file))
    .execute(&mut **tx)
    .await?;
    Ok(hashes
        .into_iter()
        .filter(|h| !new_hashes.contains(h))
        .collect())
}

/// Deletes those of `candidates` that no checkpoint or artifact references; returns the
/// logical bytes freed. Each candidate is one lookup in `chunk_refs`, so the cost grows with
/// what was deleted, not with what is stored. The caller holds the chunk lock exclusively.
async fn collect_garbage(tx: &mut Tx<'_>, candidates: &[Vec<u8>]) -> Result<u64> {
    if candidates.is_empty() {
        return Ok(0);
    }
    let mut unique = candidates.to_vec();
    unique.sort();
    unique.dedup();
    // `chunk_refs` (kept by triggers) says which rows reference a chunk: one index lookup per
    // candidate, whatever else is stored.
    let freed: Option<i64> = sqlx::query_scalar(
        "WITH cand AS (SELECT DISTINCT unnest($1::bytea[]) AS h), \
         gone AS (DELETE FROM blob_chunks b USING cand WHERE b.hash = cand.h \
                  AND NOT EXISTS (SELECT 1 FROM chunk_refs r WHERE r.hash = b.hash) RETURNING b.size) \
         SELECT sum(size)::int8 FROM gone",
    )
    .bind(&unique)
    .fetch_one(&mut **tx)
    .await?;
    Ok(freed.unwrap_or(0) as u64)
}
