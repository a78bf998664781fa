//! How runs move through their states: claims under a lease, heartbeats, finishing, expiry,
//! cancellation and reruns. Every write about a running attempt is fenced.

use super::metrics::truncate_after;
use super::settle::settle;
use super::*;

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

/// What a heartbeat found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// The lease was renewed; whether the run must stop.
    Renewed {
        /// A user asked to cancel the run.
        cancel_requested: bool,
        /// The experiment's search (ASHA) did not promote the run.
        stop_requested: bool,
    },
    /// The attempt already ended by its own worker's Finish (a heartbeat sent just before it
    /// arrived after it): nothing to renew and nothing lost.
    Finished,
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
    /// The worker's devices the attempt holds.
    pub devices: Vec<String>,
}

impl Store {
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

    /// Claims the run a free slot of this worker takes (see `placement`), as a new attempt
    /// holding a lease and the devices it needs. `FOR UPDATE SKIP LOCKED` lets any number of
    /// coordinators share the database.
    pub async fn claim(&self, claimant: &Claimant) -> Result<Option<Claim>> {
        let worker = claimant.worker;
        let mut found = None;
        for reread in [false, true] {
            // The order is read before the transaction begins: a claim holding one connection
            // while it waits for another would starve the pool under many claims at once.
            let (order, fresh) = self.claim_order(reread).await?;
            if !order.is_empty() {
                let mut tx = self.pool.begin().await?;
                if let Some(p) = super::placement::pick_run(&mut tx, claimant, &order).await? {
                    found = Some((tx, p));
                    break;
                }
            }
            if fresh {
                break;
            }
        }
        let Some((mut tx, picked)) = found else {
            return Ok(None);
        };
        let row = picked.row;
        let run: i64 = row.get("id");
        let attempt: i32 = row.get::<i32, _>("attempt") + 1;
        let (resume, inputs) = starting_point(&mut tx, run).await?;
        let from = resume.map_or(0, |r| r.1);
        let message = started_message(attempt, worker, from);
        // The run, its new attempt and the event in one statement: every claim passes here.
        sqlx::query(
            "WITH run AS (UPDATE runs SET state = $5, attempt = $2, lease_worker = $3, \
                          devices = $6, lease_expires = now() + make_interval(secs => $4) \
                          WHERE id = $1), \
             attempt AS (INSERT INTO attempts (run_id, attempt, worker_id, resumed_from_step, \
                                               inputs) VALUES ($1, $2, $3, $7, $8)) \
             INSERT INTO events (experiment_id, run_id, kind, message) \
             VALUES ($9, $1, 'started', $10)",
        )
        .bind(run)
        .bind(attempt)
        .bind(worker)
        .bind(self.lease_secs())
        .bind(RunState::Running)
        .bind(&picked.devices)
        .bind(from)
        .bind(sqlx::types::Json(&inputs))
        .bind(picked.experiment)
        .bind(&message)
        .execute(&mut *tx)
        .await?;
        if attempt > 1 {
            // The new attempt redoes everything after its checkpoint: cut the lost attempt's
            // later points so the curve keeps one point per (metric, step).
            truncate_after(&mut tx, run, from).await?;
        }
        tx.commit().await?;
        // Best effort: the run is claimed; a lost fairness timestamp must not lose the claim.
        if let Err(e) = self.served(picked.experiment).await {
            tracing::warn!("recording experiment {} as served: {e}", picked.experiment);
        }
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
            devices: picked.devices,
        }))
    }

    /// Renews the lease of a running attempt and records progress. `Stale` when the attempt
    /// lost its lease (another attempt has the run, or the rescuer took it back); a heartbeat
    /// that arrives after its own attempt finished is [`Beat::Finished`], not a lost lease.
    pub async fn heartbeat(&self, f: Fence, step: i64, total: i64) -> Result<Beat> {
        self.touch_worker(f.worker).await?;
        let r: Option<(bool, bool)> = sqlx::query_as(
            "UPDATE runs SET lease_expires = now() + make_interval(secs => $4), \
             step = GREATEST(step, $5), total_steps = CASE WHEN $6 > 0 THEN $6 ELSE total_steps END \
             WHERE id = $1 AND attempt = $2 AND lease_worker = $3 AND state = $7 \
             RETURNING cancel_requested, stop_requested",
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
        if let Some((cancel_requested, stop_requested)) = r {
            return Ok(Beat::Renewed {
                cancel_requested,
                stop_requested,
            });
        }
        // The worker's heartbeat and its Finish race on separate streams: an attempt that
        // ended by its own worker's hand is finished, whatever the heartbeat says.
        let ended: Option<AttemptState> = sqlx::query_scalar(
            "SELECT state FROM attempts WHERE run_id = $1 AND attempt = $2 AND worker_id = $3",
        )
        .bind(f.run)
        .bind(f.attempt)
        .bind(f.worker)
        .fetch_optional(&self.pool)
        .await?;
        match ended {
            Some(s) if s.is_final() && s != AttemptState::Lost => Ok(Beat::Finished),
            _ => Err(StoreError::Stale {
                run: f.run,
                attempt: f.attempt,
                worker: f.worker,
            }),
        }
    }

    /// Ends an attempt. Success queues the runs whose needs are now all met; failure fails the
    /// runs that needed it; either way retention runs and the experiment's state is updated.
    pub async fn finish(&self, f: Fence, outcome: Outcome, message: &str, step: i64) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let leased = lock_fence(&mut tx, f).await?;
        // A run the search stopped ends stopped, whether its worker cancelled the job or was
        // going away at that moment.
        let state = match outcome {
            Outcome::Cancelled | Outcome::Released if leased.stop_requested => {
                Some(RunState::Stopped)
            }
            _ => outcome.final_run_state(),
        };
        let message = match state {
            Some(RunState::Stopped) => format!("stopped by the search (ASHA) at step {step}"),
            _ => message.to_string(),
        };
        let message = message.as_str();
        let Some(state) = state else {
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
            RunState::Stopped => AttemptState::Stopped,
            _ => AttemptState::Failed,
        };
        // The attempt, the run and the event in one statement: every run's end passes here.
        sqlx::query(
            "WITH attempt AS (UPDATE attempts SET state = $3, ended_at = now(), message = $4 \
                              WHERE run_id = $1 AND attempt = $2), \
             run AS (UPDATE runs SET state = $5, lease_worker = NULL, lease_expires = NULL, \
                     step = GREATEST(step, $6), error = CASE WHEN $5 = $7 THEN $4 ELSE error END \
                     WHERE id = $1) \
             INSERT INTO events (experiment_id, run_id, kind, message) VALUES ($8, $1, $9, $4)",
        )
        .bind(f.run)
        .bind(f.attempt)
        .bind(attempt_state)
        .bind(message)
        .bind(state)
        .bind(step)
        .bind(RunState::Failed)
        .bind(leased.experiment)
        .bind(state.as_str())
        .execute(&mut *tx)
        .await?;
        settle(&mut tx, f.run, leased.experiment, state).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Attempts whose lease ran out: marked lost; the run is requeued while restarts remain
    /// (a cancelled run becomes cancelled, an exhausted one failed). Returns how many.
    pub async fn reap_expired(&self) -> Result<usize> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<(i64, i32, bool, bool, i32, i64)> = sqlx::query_as(
            "SELECT r.id, r.attempt - r.restart_base, r.cancel_requested, r.stop_requested, \
             e.max_restarts, e.id FROM runs r \
             JOIN experiments e ON e.id = r.experiment_id \
             WHERE r.state = $1 AND r.lease_expires < now() FOR UPDATE OF r SKIP LOCKED",
        )
        .bind(RunState::Running)
        .fetch_all(&mut *tx)
        .await?;
        for &(run, attempt, cancel, stop, max_restarts, experiment) in &rows {
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
            } else if stop {
                (
                    RunState::Stopped,
                    "stopped by the search (ASHA) while its worker was unreachable".to_string(),
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
                settle(&mut tx, run, experiment, state).await?;
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
                settle(&mut tx, *id, experiment, RunState::Cancelled).await?;
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
}

/// The event that says an attempt started.
fn started_message(attempt: i32, worker: i64, from_step: i64) -> String {
    match from_step {
        0 => format!("attempt {attempt} on worker {worker}"),
        _ => format!("attempt {attempt} on worker {worker}, resuming from step {from_step}"),
    }
}

/// Where a new attempt of `run` starts: its latest checkpoint `(id, step)` if any, and the
/// latest checkpoint of each upstream run it needs, by config field (one statement). An
/// upstream run without one is an error (the run cannot start).
async fn starting_point(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    run: i64,
) -> Result<(Option<(i64, i64)>, Vec<(String, i64)>)> {
    type Upstream = Vec<(String, Option<i64>)>;
    let (resume_id, resume_step, upstream): (
        Option<i64>,
        Option<i64>,
        sqlx::types::Json<Upstream>,
    ) = sqlx::query_as(
        "SELECT c.id, c.step, (SELECT COALESCE(jsonb_agg(jsonb_build_array(d.field, \
                 (SELECT u.id FROM checkpoints u WHERE u.run_id = d.upstream_id \
                  ORDER BY u.step DESC LIMIT 1)) ORDER BY d.field), '[]') \
                 FROM run_deps d WHERE d.run_id = $1) \
             FROM (SELECT 1) one LEFT JOIN LATERAL (SELECT id, step FROM checkpoints \
                 WHERE run_id = $1 ORDER BY step DESC LIMIT 1) c ON true",
    )
    .bind(run)
    .fetch_one(&mut **tx)
    .await?;
    let mut inputs = Vec::with_capacity(upstream.0.len());
    for (field, checkpoint) in upstream.0 {
        let Some(checkpoint) = checkpoint else {
            return Err(StoreError::Invalid(format!(
                "run {run}: the upstream run for `{field}` left no checkpoint"
            )));
        };
        inputs.push((field, checkpoint));
    }
    Ok((resume_id.zip(resume_step), inputs))
}
