//! What users ask, answered once for both the gRPC `UserApi` and the dashboard's JSON API,
//! and the conversions from store rows to API messages.

use super::*;

/// Why a question could not be answered. The answers speak neither gRPC nor HTTP: each
/// layer maps this to its own codes (`tonic::Status`, the dashboard's `ApiError`).
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// No such experiment, run or checkpoint.
    #[error("{0}")]
    NotFound(String),
    /// The request is wrong (a bad experiment file, an unknown metric).
    #[error("{0}")]
    Invalid(String),
    /// The request came from an attempt that no longer holds its run.
    #[error("{0}")]
    Stale(String),
    /// The database cannot be reached.
    #[error("database: {0}")]
    Unavailable(String),
    /// A fault of the coordinator's own.
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for QueryError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Stale { .. } => QueryError::Stale(e.to_string()),
            StoreError::NotFound(m) => QueryError::NotFound(m),
            StoreError::Invalid(m) => QueryError::Invalid(m),
            StoreError::Db(e) => QueryError::Unavailable(e.to_string()),
        }
    }
}

impl From<QueryError> for Status {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::NotFound(m) => Status::not_found(m),
            QueryError::Invalid(m) => Status::invalid_argument(m),
            QueryError::Stale(m) => Status::failed_precondition(m),
            QueryError::Unavailable(_) => Status::unavailable(e.to_string()),
            QueryError::Internal(m) => Status::internal(m),
        }
    }
}

/// A planned (not yet stored) run as `submit --dry-run` shows it.
pub fn planned_run(p: &crate::experiment::PlannedRun) -> pb::RunSummary {
    pb::RunSummary {
        name: p.name.clone(),
        job_kind: p.job.clone(),
        state: if p.inputs.is_empty() {
            RunState::Queued
        } else {
            RunState::Pending
        }
        .into(),
        needs: p.inputs.iter().map(|i| i.1.clone()).collect(),
        config: p.config.clone(),
        total_steps: p.total_steps,
        method: p.method.clone().unwrap_or_default(),
        params: p.params.clone().into_iter().collect(),
        ..Default::default()
    }
}

/// The reply of a dry run: the expanded runs, nothing stored.
pub fn planned_reply(exp: &crate::experiment::Experiment) -> pb::SubmitReply {
    pb::SubmitReply {
        experiment_id: 0,
        name: exp.name.clone(),
        runs: exp.runs.iter().map(planned_run).collect(),
        ..Default::default()
    }
}

/// The run summaries of `submit` and `get`.
pub(super) fn run_summary(r: &crate::store::RunRow) -> pb::RunSummary {
    pb::RunSummary {
        id: r.id,
        name: r.name.clone(),
        job_kind: r.job_kind.clone(),
        state: r.state.into(),
        ended: r.state.is_final(),
        attempt: r.attempt,
        config: r.config.clone(),
        step: r.step,
        total_steps: r.total_steps,
        error: r.error.clone().unwrap_or_default(),
        method: r.method.clone().unwrap_or_default(),
        params: r.params.clone().into_iter().collect(),
        gpus: r.gpus,
        min_gpu_memory_mb: r.min_gpu_memory_mb,
        devices: r.devices.clone(),
        ..Default::default()
    }
}

pub(super) fn experiment_summary(e: &crate::store::ExperimentRow) -> pb::ExperimentSummary {
    pb::ExperimentSummary {
        id: e.id,
        name: e.name.clone(),
        state: e.state.into(),
        created_unix: e.created,
        run_states: e
            .run_states
            .iter()
            .map(|(s, n)| (s.as_str().to_string(), *n))
            .collect(),
        objective: format!("{} ({})", e.objective, e.mode),
        best_objective: e.best.unwrap_or(0.0),
        has_best: e.best.is_some(),
        runs_ended: e
            .run_states
            .iter()
            .filter(|(s, _)| s.is_final())
            .map(|(_, n)| n)
            .sum(),
        priority: e.priority,
        next_queue_position: 0,
    }
}

/// What users ask, answered once for both the gRPC `UserApi` and the dashboard's JSON API.
impl Coordinator {
    /// The store (the dashboard reads curves, checkpoints and pictures straight from it).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Parses an experiment on the blocking pool, so no parse can stall the runtime that
    /// serves every other request, and gives up after `limits.parse_time` (the parse itself
    /// then finishes in the background; the budgets keep that to milliseconds).
    async fn parse_off_runtime(
        &self,
        file: &str,
        yaml: &str,
    ) -> Result<experiment::Experiment, QueryError> {
        let limit = self.cfg.limits.parse_time;
        let (f, y) = (file.to_string(), yaml.to_string());
        let parse = tokio::task::spawn_blocking(move || experiment::parse(&f, &y));
        match tokio::time::timeout(limit, parse).await {
            Ok(Ok(parsed)) => parsed.map_err(|e| QueryError::Invalid(e.to_string())),
            Ok(Err(e)) => Err(QueryError::Internal(format!(
                "{file}: the parser failed: {e}"
            ))),
            Err(_) => Err(QueryError::Invalid(format!(
                "{file}: validating the experiment took longer than {} s; nothing was stored",
                limit.as_secs_f64()
            ))),
        }
    }

    /// Validates an experiment YAML and, unless `dry_run`, stores it and its runs; with
    /// `extend`, adds its new runs to that experiment instead.
    pub async fn submit(
        &self,
        file_name: &str,
        yaml: &str,
        dry_run: bool,
        extend: Option<&str>,
    ) -> Result<pb::SubmitReply, QueryError> {
        let file: String = file_name.chars().take(256).collect();
        let exp = self.parse_off_runtime(&file, yaml).await?;
        if let Some(key) = extend {
            let id = self.store.resolve_experiment(key).await?;
            let ext = self.store.extend(id, &exp, &file, dry_run).await?;
            if !dry_run && !ext.added.is_empty() {
                self.work.notify_waiters();
            }
            let planned: std::collections::HashMap<&str, &crate::experiment::PlannedRun> =
                exp.runs.iter().map(|p| (p.name.as_str(), p)).collect();
            return Ok(pb::SubmitReply {
                experiment_id: id,
                name: exp.name.clone(),
                runs: ext
                    .added
                    .iter()
                    .map(|r| pb::RunSummary {
                        needs: planned_run(planned[r.name.as_str()]).needs,
                        ..run_summary(r)
                    })
                    .collect(),
                reused: ext.reused,
                untouched: ext.untouched,
                blocked: ext
                    .blocked
                    .into_iter()
                    .map(|(run, up)| format!("{run}: {up}"))
                    .collect(),
            });
        }
        if dry_run {
            return Ok(planned_reply(&exp));
        }
        let (id, runs) = self.store.submit(&exp, &file, yaml).await?;
        self.work.notify_waiters();
        Ok(pb::SubmitReply {
            experiment_id: id,
            name: exp.name.clone(),
            runs: runs
                .iter()
                .zip(&exp.runs)
                .map(|(r, p)| pb::RunSummary {
                    needs: planned_run(p).needs,
                    ..run_summary(r)
                })
                .collect(),
            ..Default::default()
        })
    }

    /// Every experiment, newest first.
    pub async fn list(&self) -> Result<pb::ListReply, QueryError> {
        let rows = self.store.experiments(None).await?;
        let queue = self.store.queue().await?;
        Ok(pb::ListReply {
            experiments: rows
                .iter()
                .map(|e| pb::ExperimentSummary {
                    next_queue_position: queue.first.get(&e.id).copied().unwrap_or(0),
                    ..experiment_summary(e)
                })
                .collect(),
        })
    }

    /// One experiment with its runs, their metric summaries and attempts.
    pub async fn detail(&self, key: &str) -> Result<pb::ExperimentDetail, QueryError> {
        let (id, e) = self.experiment(key).await?;
        let storage = self.store.storage(id).await?;
        let mut queue = self.store.queue().await?;
        let mut runs = Vec::new();
        for r in self.store.runs(id).await? {
            let mut s = self.full_run_summary(&r).await?;
            s.storage = Some(run_storage(storage.runs.get(&r.id)));
            s.queue_position = queue.positions.get(&r.id).copied().unwrap_or(0);
            s.queue_reason = queue.reasons.remove(&r.id).unwrap_or_default();
            runs.push(s);
        }
        Ok(pb::ExperimentDetail {
            summary: Some(pb::ExperimentSummary {
                next_queue_position: queue.first.get(&id).copied().unwrap_or(0),
                ..experiment_summary(&e)
            }),
            runs,
            yaml: e.yaml,
            checkpoint_bytes: (storage.weight_bytes + storage.state_bytes) as u64,
            stored_bytes: storage.stored_bytes as u64,
            weight_bytes: storage.weight_bytes as u64,
            state_bytes: storage.state_bytes as u64,
        })
    }

    /// One run as the experiment lists it, and its experiment's objective (`metric (mode)`):
    /// what a run page needs, without reading the other runs.
    pub async fn run_detail(
        &self,
        key: &str,
        run: &str,
    ) -> Result<(pb::RunSummary, String), QueryError> {
        let (id, e) = self.experiment(key).await?;
        let run_id = self.store.resolve_run(id, run).await?;
        let row = self.store.run(id, run_id).await?;
        let mut summary = self.full_run_summary(&row).await?;
        let storage = self.store.storage(id).await?;
        summary.storage = Some(run_storage(storage.runs.get(&run_id)));
        Ok((summary, experiment_summary(&e).objective))
    }

    /// A run with its needs, metric summaries and attempts.
    pub(super) async fn full_run_summary(
        &self,
        r: &crate::store::RunRow,
    ) -> Result<pb::RunSummary, QueryError> {
        {
            let mut s = run_summary(r);
            s.needs = self.store.needs(r.id).await?;
            s.metrics = self
                .store
                .summaries(r.id)
                .await?
                .into_iter()
                .map(|m| pb::MetricSummary {
                    name: m.name,
                    last: m.last,
                    min: m.min,
                    max: m.max,
                    last_step: m.last_step,
                    count: m.count,
                })
                .collect();
            s.attempts = self
                .store
                .attempts(r.id)
                .await?
                .into_iter()
                .map(|a| pb::AttemptInfo {
                    attempt: a.attempt,
                    worker_id: a.worker,
                    state: a.state.into(),
                    started_unix: a.started,
                    ended_unix: a.ended,
                    resumed_from_step: a.resumed_from_step,
                    message: a.message,
                    worker_name: a.worker_name,
                    slurm_job_id: a.slurm_job_id,
                    inputs: a.inputs.into_iter().collect(),
                })
                .collect();
            s.rungs = self.store.rungs(r.id).await?;
            Ok(s)
        }
    }

    /// The `top` checkpoints by `metric` (empty: the objective), with every metric at each.
    pub async fn best(
        &self,
        key: &str,
        metric: &str,
        top: u32,
    ) -> Result<pb::BestReply, QueryError> {
        let (id, e) = self.experiment(key).await?;
        let metric = if metric.is_empty() {
            e.objective.clone()
        } else {
            metric.to_string()
        };
        // Losses are minimised; for other metrics than the objective, guess by name.
        let mode = if metric == e.objective {
            if e.mode == "max" {
                Mode::Max
            } else {
                Mode::Min
            }
        } else if metric.starts_with("loss")
            || metric.contains("fid")
            || metric.ends_with("realism")
        {
            Mode::Min
        } else {
            Mode::Max
        };
        let top = if top == 0 { 5 } else { top.min(1000) } as usize;
        let ranked = self.store.best(id, &metric, mode, top).await?;
        let mut out = Vec::new();
        for c in ranked {
            let metrics = self.store.metrics_at(c.run_id, c.step).await?;
            out.push(pb::BestCheckpoint {
                checkpoint_id: c.id,
                run: c.run,
                step: c.step,
                value: c.value,
                size: c.size as u64,
                sha256: c.sha256,
                metrics: metrics.into_iter().collect(),
            });
        }
        Ok(pb::BestReply {
            metric,
            mode: mode.as_str().into(),
            checkpoints: out,
        })
    }

    /// Cancels an experiment's unfinished runs, or one run (`run` non-empty).
    pub async fn cancel_runs(&self, key: &str, run: &str) -> Result<pb::CancelReply, QueryError> {
        let id = self.store.resolve_experiment(key).await?;
        let run = (!run.is_empty()).then_some(run);
        if let Some(name) = run {
            self.store.resolve_run(id, name).await?;
        }
        let cancelled = self.store.cancel(id, run).await?;
        Ok(pb::CancelReply { cancelled })
    }

    /// Requeues failed (and optionally cancelled) runs, or one named run.
    pub async fn rerun_runs(
        &self,
        key: &str,
        run: &str,
        with_cancelled: bool,
    ) -> Result<pb::RerunReply, QueryError> {
        let id = self.store.resolve_experiment(key).await?;
        let run = (!run.is_empty()).then_some(run);
        if let Some(name) = run {
            self.store.resolve_run(id, name).await?;
        }
        let requeued = self.store.rerun(id, run, with_cancelled).await?;
        // Idle worker sessions look for work now rather than at their next poll.
        self.work.notify_waiters();
        Ok(pb::RerunReply { requeued })
    }

    /// The last `tail` log lines of a run (0: 200; at most 100 000).
    pub async fn log_tail(
        &self,
        key: &str,
        run: &str,
        tail: u32,
    ) -> Result<pb::LogsReply, QueryError> {
        let id = self.store.resolve_experiment(key).await?;
        let run = self.store.resolve_run(id, run).await?;
        let tail = if tail == 0 { 200 } else { tail.min(100_000) } as i64;
        let lines = self.store.logs(run, tail).await?;
        Ok(pb::LogsReply { lines })
    }
}

/// A run's checkpoint bytes for the API (zeros for a run without checkpoints).
pub(super) fn run_storage(s: Option<&crate::store::RunStorage>) -> pb::RunStorage {
    let s = s.copied().unwrap_or_default();
    pb::RunStorage {
        checkpoints: s.checkpoints,
        weight_bytes: s.weight_bytes as u64,
        state_bytes: s.state_bytes as u64,
        own_stored_bytes: s.own_stored_bytes as u64,
    }
}
