//! Everything the coordinator knows lives in Postgres; this module is the only place that
//! speaks SQL. Every statement is parameterised. Writes about a run are fenced by
//! `(worker, run, attempt)`: a stale attempt's write finds no matching lease and is refused.
//!
//! One file per family of queries, all methods of [`Store`]:
//! - `submit`: storing an experiment, or extending one with new runs;
//! - `lifecycle`: claims, heartbeats, finishing, expiry, cancellation, reruns;
//! - `metrics`: metric points and logs: ingestion, summaries, one curve, the log tail;
//! - `curves`: reading metrics back: best checkpoints, values at a step, timed curves, live
//!   chunks;
//! - `checkpoints`: checkpoint and artifact blobs, retention, storage, garbage collection;
//! - `queries`: the read side of experiments and runs;
//! - `placement`: which queued run a worker's free slot takes, queue positions and reasons;
//! - `fair_share`: the order experiments are served in (priority, then fair share);
//! - `settle`: what follows a run's end (dependants, retention, the experiment's state);
//! - `search`: ASHA's rung decisions, taken as metrics arrive;
//! - `tokens`: access tokens, stored hashed.
//!
//! This file holds what they share: the error type, the connection, and the fence lock.

use crate::blobs;
use crate::experiment::{Experiment, Mode};
use crate::states::{AttemptState, ExperimentState, Outcome, RunState};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::Row;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

mod checkpoints;
mod curves;
mod fair_share;
mod lifecycle;
mod metrics;
mod placement;
mod queries;
mod search;
mod settle;
mod submit;
mod tokens;

pub use checkpoints::{ArtifactRow, CheckpointRow, RunStorage, Storage};
pub use curves::{NewChunk, Ranked, TimedCurves, TimedSeries};
pub use fair_share::{queue_order, Share};
pub use lifecycle::{Beat, Claim, Fence};
pub use metrics::{Ingested, MetricSummary, Series};
pub use placement::{pick, unhostable, Claimant, Device, QueueView};
pub use queries::{AttemptRow, ExperimentRow, RunProgress, RunRow};
pub use submit::Extension;
pub use tokens::{token_hash, LiveToken, SeedMode, Seeded, TokenRole};

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

/// The Postgres store.
#[derive(Clone)]
pub struct Store {
    /// The connection pool.
    pub pool: PgPool,
    /// Lease length.
    pub lease: Duration,
    /// The claim order this coordinator last read, and when it recorded experiments as
    /// served (see `fair_share`).
    claim_memory: std::sync::Arc<std::sync::Mutex<fair_share::ClaimMemory>>,
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
        Ok(Store {
            pool,
            lease,
            claim_memory: Default::default(),
        })
    }

    fn lease_secs(&self) -> f64 {
        self.lease.as_secs_f64()
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

/// What a fenced write learns as it takes the lock: the leased run's experiment and what
/// writes about the run need to know of it (read in the same statement, to save a round trip
/// on every metric batch and every finish).
struct Leased {
    /// The run's experiment.
    experiment: i64,
    /// The search (ASHA) asked the run to stop.
    stop_requested: bool,
    /// The experiment's objective metric.
    objective: String,
    /// The experiment's search, if any.
    search: Option<crate::experiment::search::Search>,
}

/// Locks the run row (shared) if `f` still holds its lease; `Stale` otherwise.
async fn lock_fence(tx: &mut Tx<'_>, f: Fence) -> Result<Leased> {
    type Row = (i64, bool, String, Option<serde_json::Value>);
    let row: Option<Row> = sqlx::query_as(
        "SELECT r.experiment_id, r.stop_requested, e.objective_metric, e.search \
         FROM runs r JOIN experiments e ON e.id = r.experiment_id \
         WHERE r.id = $1 AND r.attempt = $2 AND r.lease_worker = $3 \
         AND r.state = $4 AND r.lease_expires > now() FOR SHARE OF r",
    )
    .bind(f.run)
    .bind(f.attempt)
    .bind(f.worker)
    .bind(RunState::Running)
    .fetch_optional(&mut **tx)
    .await?;
    let (experiment, stop_requested, objective, search) = row.ok_or(StoreError::Stale {
        run: f.run,
        attempt: f.attempt,
        worker: f.worker,
    })?;
    Ok(Leased {
        experiment,
        stop_requested,
        objective,
        // Written by `submit` from the parsed experiment, so it always reads back.
        search: search.and_then(|v| serde_json::from_value(v).ok()),
    })
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
