//! The coordinator's gRPC services. It keeps no state that is not in Postgres: sessions only
//! cache what a worker said in its last heartbeat, so a restarted coordinator loses nothing.

use crate::experiment::{self, Mode};
use crate::follow::{self, Follower};
use crate::states::{Outcome, RunState};
use crate::store::{Fence, Series, Store, StoreError};
use pb::user_api_server::{UserApi, UserApiServer};
use pb::worker_api_server::{WorkerApi, WorkerApiServer};
use pb::RunState as PbRunState;
use plume_proto::v1 as pb;
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// Limits on what clients may send.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest gRPC message.
    pub max_message: usize,
    /// Largest checkpoint upload.
    pub max_checkpoint: u64,
    /// Largest artifact upload.
    pub max_artifact: u64,
    /// Most points in one metric batch.
    pub max_points: usize,
    /// Most log lines in one batch.
    pub max_log_lines: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message: 16 << 20,
            max_checkpoint: 4 << 30,
            max_artifact: 64 << 20,
            max_points: 1 << 20,
            max_log_lines: 10_000,
        }
    }
}

/// Coordinator settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Token workers present.
    pub worker_token: String,
    /// Token users (CLI, dashboard) present.
    pub user_token: String,
    /// Heartbeat period asked of workers.
    pub heartbeat: Duration,
    /// Size limits.
    pub limits: Limits,
}

/// Shared state of both services.
#[derive(Clone)]
pub struct Coordinator {
    store: Store,
    cfg: Arc<Config>,
    /// Woken when work may have become available (submit, finish, requeue).
    work: Arc<Notify>,
}

pub(crate) fn status(e: StoreError) -> Status {
    match e {
        StoreError::Stale { .. } => Status::failed_precondition(e.to_string()),
        StoreError::NotFound(m) => Status::not_found(m),
        StoreError::Invalid(m) => Status::invalid_argument(m),
        StoreError::Db(e) => Status::unavailable(format!("database: {e}")),
    }
}

fn fence(f: Option<pb::Fence>) -> Result<Fence, Status> {
    let f = f.ok_or_else(|| Status::invalid_argument("missing fence"))?;
    Ok(Fence {
        worker: f.worker_id,
        run: f.run_id,
        attempt: f.attempt,
    })
}

/// Constant-time comparison of a request's bearer token.
fn check_token(meta: &tonic::metadata::MetadataMap, expected: &str) -> Result<(), Status> {
    let got = meta
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| Status::unauthenticated("missing bearer token"))?;
    if !tokens_match(got, expected) {
        return Err(Status::unauthenticated("invalid token for this service"));
    }
    Ok(())
}

/// Constant-time token comparison; an empty expected token matches nothing.
pub(crate) fn tokens_match(got: &str, expected: &str) -> bool {
    let (a, b) = (got.as_bytes(), expected.as_bytes());
    let diff = a.len() ^ b.len()
        | a.iter()
            .zip(b.iter().cycle())
            .fold(0usize, |d, (x, y)| d | (x ^ y) as usize);
    diff == 0 && !b.is_empty()
}

impl Coordinator {
    /// A coordinator over `store`.
    pub fn new(store: Store, cfg: Config) -> Coordinator {
        Coordinator {
            store,
            cfg: Arc::new(cfg),
            work: Arc::new(Notify::new()),
        }
    }

    /// Both services, with token checks and message size limits.
    pub fn services(
        &self,
    ) -> (
        tonic::service::interceptor::InterceptedService<
            WorkerApiServer<Coordinator>,
            impl tonic::service::Interceptor + Clone,
        >,
        tonic::service::interceptor::InterceptedService<
            UserApiServer<Coordinator>,
            impl tonic::service::Interceptor + Clone,
        >,
    ) {
        let max = self.cfg.limits.max_message;
        let wt = self.cfg.worker_token.clone();
        let ut = self.cfg.user_token.clone();
        let worker = WorkerApiServer::new(self.clone())
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        let user = UserApiServer::new(self.clone())
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        (
            tonic::service::interceptor::InterceptedService::new(worker, move |r: Request<()>| {
                check_token(r.metadata(), &wt)?;
                Ok(r)
            }),
            tonic::service::interceptor::InterceptedService::new(user, move |r: Request<()>| {
                check_token(r.metadata(), &ut)?;
                Ok(r)
            }),
        )
    }

    /// Requeues runs whose lease expired, every second, forever.
    pub async fn reaper(self) {
        let mut tick = tokio::time::interval(Duration::from_millis(1000));
        loop {
            tick.tick().await;
            match self.store.reap_expired().await {
                Ok(n) if n > 0 => {
                    tracing::warn!("{n} attempt(s) lost (lease expired)");
                    self.work.notify_waiters();
                }
                Ok(_) => {}
                Err(e) => tracing::error!("reaper: {e}"),
            }
        }
    }

    /// An experiment's id and row, by id or name.
    async fn experiment(&self, key: &str) -> Result<(i64, crate::store::ExperimentRow), Status> {
        let id = self.store.resolve_experiment(key).await.map_err(status)?;
        let row = self
            .store
            .experiments(Some(id))
            .await
            .map_err(status)?
            .pop()
            .ok_or_else(|| Status::not_found("experiment vanished"))?;
        Ok((id, row))
    }

    async fn worker_kinds(&self, id: i64) -> Result<Vec<String>, Status> {
        let caps: Option<serde_json::Value> =
            sqlx::query_scalar("SELECT capabilities FROM workers WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.store.pool)
                .await
                .map_err(|e| status(e.into()))?;
        let caps = caps.ok_or_else(|| Status::not_found("unknown worker; register again"))?;
        Ok(caps["job_kinds"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn collect_upload(
        &self,
        mut stream: Streaming<pb::UploadChunk>,
        max: u64,
    ) -> Result<(pb::UploadHeader, Vec<u8>), Status> {
        let mut header: Option<pb::UploadHeader> = None;
        let mut data = Vec::new();
        while let Some(chunk) = stream.message().await? {
            if let Some(h) = chunk.header {
                if header.is_some() {
                    return Err(Status::invalid_argument("header sent twice"));
                }
                if h.size > max {
                    return Err(Status::resource_exhausted(format!(
                        "upload of {} bytes exceeds the limit of {max}",
                        h.size
                    )));
                }
                data.reserve(h.size as usize);
                header = Some(h);
            }
            let h = header
                .as_ref()
                .ok_or_else(|| Status::invalid_argument("the first chunk must carry the header"))?;
            if (data.len() + chunk.data.len()) as u64 > h.size {
                return Err(Status::invalid_argument(
                    "more bytes than the header announced",
                ));
            }
            data.extend_from_slice(&chunk.data);
        }
        let h = header.ok_or_else(|| Status::invalid_argument("empty upload"))?;
        if data.len() as u64 != h.size {
            return Err(Status::invalid_argument(format!(
                "truncated upload: {} of {} bytes",
                data.len(),
                h.size
            )));
        }
        if crate::blobs::sha256_hex(&data) != h.sha256 {
            return Err(Status::invalid_argument("upload does not match its sha256"));
        }
        Ok((h, data))
    }

    fn download_stream(
        data: Vec<u8>,
        sha: String,
        step: i64,
    ) -> Pin<Box<dyn Stream<Item = Result<pb::DataChunk, Status>> + Send>> {
        let total = data.len() as u64;
        let chunks: Vec<Result<pb::DataChunk, Status>> = if data.is_empty() {
            vec![Ok(pb::DataChunk {
                data: Vec::new(),
                total_size: 0,
                sha256: sha,
                step,
            })]
        } else {
            data.chunks(1 << 20)
                .enumerate()
                .map(|(i, c)| {
                    Ok(pb::DataChunk {
                        data: c.to_vec(),
                        total_size: if i == 0 { total } else { 0 },
                        sha256: if i == 0 { sha.clone() } else { String::new() },
                        step,
                    })
                })
                .collect()
        };
        Box::pin(tokio_stream::iter(chunks))
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl WorkerApi for Coordinator {
    async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterReply>, Status> {
        let r = req.into_inner();
        let caps = r.capabilities.unwrap_or_default();
        if r.name.len() > 256 || caps.job_kinds.len() > 64 {
            return Err(Status::invalid_argument("registration too large"));
        }
        let json = serde_json::json!({
            "devices": caps.devices,
            "memory_bytes": caps.memory_bytes,
            "version": caps.version,
            "job_kinds": caps.job_kinds,
            "hostname": caps.hostname,
        });
        let id = self
            .store
            .register_worker(&r.name, json)
            .await
            .map_err(status)?;
        tracing::info!("worker {id} registered ({})", r.name);
        Ok(Response::new(pb::RegisterReply {
            worker_id: id,
            heartbeat_ms: self.cfg.heartbeat.as_millis() as u32,
            lease_ms: self.store.lease.as_millis() as u32,
        }))
    }

    type SessionStream = BoxStream<pb::CoordinatorMessage>;

    async fn session(
        &self,
        req: Request<Streaming<pb::WorkerMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let mut inbound = req.into_inner();
        let worker = match inbound.message().await?.and_then(|m| m.kind) {
            Some(pb::worker_message::Kind::Hello(h)) => h.worker_id,
            _ => return Err(Status::invalid_argument("a session starts with Hello")),
        };
        if !self.store.worker_exists(worker).await.map_err(status)? {
            return Err(Status::not_found("unknown worker; register again"));
        }
        let kinds = self.worker_kinds(worker).await?;
        let (tx, rx) = mpsc::channel::<Result<pb::CoordinatorMessage, Status>>(16);
        let me = self.clone();
        tokio::spawn(async move {
            let mut idle = false;
            let mut running: Option<Fence> = None;
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    msg = inbound.message() => match msg {
                        Ok(Some(pb::WorkerMessage { kind: Some(pb::worker_message::Kind::Heartbeat(hb)) })) => {
                            idle = hb.idle;
                            running = hb.running.map(|f| Fence { worker, run: f.run_id, attempt: f.attempt });
                            if let Some(f) = running {
                                if f.worker != worker { continue; }
                                match me.store.heartbeat(f, hb.step, hb.total_steps).await {
                                    Ok(false) => {}
                                    Ok(true) => {
                                        let _ = tx.send(Ok(cancel_msg(f, "cancelled by user"))).await;
                                    }
                                    Err(StoreError::Stale { .. }) => {
                                        let _ = tx.send(Ok(cancel_msg(f, "this attempt lost its lease; the run was reassigned"))).await;
                                    }
                                    Err(e) => tracing::error!("heartbeat: {e}"),
                                }
                            }
                        }
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => break,
                    },
                    _ = tick.tick() => {}
                    _ = me.work.notified() => {}
                }
                if idle && running.is_none() {
                    match me.store.claim(worker, &kinds).await {
                        Ok(Some(c)) => {
                            let msg = pb::CoordinatorMessage {
                                kind: Some(pb::coordinator_message::Kind::Assign(pb::Assignment {
                                    fence: Some(pb::Fence {
                                        worker_id: c.fence.worker,
                                        run_id: c.fence.run,
                                        attempt: c.fence.attempt,
                                    }),
                                    experiment: c.experiment,
                                    run_name: c.run_name,
                                    job_kind: c.job_kind,
                                    job_yaml: c.config,
                                    inputs: c
                                        .inputs
                                        .into_iter()
                                        .map(|(field, checkpoint_id)| pb::Input {
                                            field,
                                            checkpoint_id,
                                        })
                                        .collect(),
                                    resume_checkpoint: c.resume.map_or(0, |r| r.0),
                                    resume_step: c.resume.map_or(0, |r| r.1),
                                })),
                            };
                            idle = false;
                            running = Some(c.fence);
                            if tx.send(Ok(msg)).await.is_err() {
                                break;
                            }
                        }
                        Ok(None) => {}
                        Err(e) => tracing::error!("claim: {e}"),
                    }
                }
            }
            tracing::info!("worker {worker}: session closed");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn report_metrics(
        &self,
        req: Request<pb::MetricBatch>,
    ) -> Result<Response<pb::Ack>, Status> {
        let b = req.into_inner();
        let f = fence(b.fence)?;
        let n = b.steps.len();
        if n > self.cfg.limits.max_points {
            return Err(Status::resource_exhausted(format!(
                "{n} points in one batch; at most {}",
                self.cfg.limits.max_points
            )));
        }
        if b.values.len() != n
            || b.name_index.len() != n
            || (!b.times.is_empty() && b.times.len() != n)
        {
            return Err(Status::invalid_argument("metric columns differ in length"));
        }
        if b.names.iter().any(|s| s.is_empty() || s.len() > 128) {
            return Err(Status::invalid_argument("metric names are 1 to 128 bytes"));
        }
        let mut series: BTreeMap<String, Series> = BTreeMap::new();
        for i in 0..n {
            let name = b
                .names
                .get(b.name_index[i] as usize)
                .ok_or_else(|| Status::invalid_argument("name index out of range"))?;
            let s = series.entry(name.clone()).or_default();
            s.steps.push(b.steps[i]);
            s.values.push(b.values[i]);
        }
        let applied = self
            .store
            .ingest(f, b.seq as i64, &series)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::Ack { applied }))
    }

    async fn report_logs(&self, req: Request<pb::LogBatch>) -> Result<Response<pb::Ack>, Status> {
        let b = req.into_inner();
        let f = fence(b.fence)?;
        if b.lines.len() > self.cfg.limits.max_log_lines {
            return Err(Status::resource_exhausted(
                "too many log lines in one batch",
            ));
        }
        let lines: Vec<String> = b
            .lines
            .into_iter()
            .map(|l| l.chars().take(4096).collect())
            .collect();
        self.store.append_logs(f, &lines).await.map_err(status)?;
        Ok(Response::new(pb::Ack { applied: true }))
    }

    async fn upload_checkpoint(
        &self,
        req: Request<Streaming<pb::UploadChunk>>,
    ) -> Result<Response<pb::UploadReply>, Status> {
        let (h, data) = self
            .collect_upload(req.into_inner(), self.cfg.limits.max_checkpoint)
            .await?;
        let f = fence(h.fence)?;
        let (id, stored) = self
            .store
            .store_checkpoint(f, h.step, &data)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::UploadReply {
            id,
            stored_bytes: stored,
        }))
    }

    async fn upload_artifact(
        &self,
        req: Request<Streaming<pb::UploadChunk>>,
    ) -> Result<Response<pb::UploadReply>, Status> {
        let (h, data) = self
            .collect_upload(req.into_inner(), self.cfg.limits.max_artifact)
            .await?;
        let f = fence(h.fence)?;
        if h.name.is_empty()
            || h.name.len() > 64
            || !h
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(Status::invalid_argument(
                "artifact names are 1 to 64 of [A-Za-z0-9_-]",
            ));
        }
        let (id, stored) = self
            .store
            .store_artifact(f, h.step, &h.name, &data)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::UploadReply {
            id,
            stored_bytes: stored,
        }))
    }

    type DownloadStream = BoxStream<pb::DataChunk>;

    async fn download(
        &self,
        req: Request<pb::DownloadRequest>,
    ) -> Result<Response<Self::DownloadStream>, Status> {
        let r = req.into_inner();
        let (data, sha, step) = self
            .store
            .checkpoint_bytes(r.checkpoint_id, r.with_state)
            .await
            .map_err(status)?;
        Ok(Response::new(Coordinator::download_stream(data, sha, step)))
    }

    async fn finish(&self, req: Request<pb::FinishRequest>) -> Result<Response<pb::Ack>, Status> {
        let r = req.into_inner();
        let f = fence(r.fence)?;
        let outcome =
            Outcome::try_from(r.outcome).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let message: String = r.message.chars().take(8192).collect();
        self.store
            .finish(f, outcome, &message, r.step)
            .await
            .map_err(status)?;
        self.work.notify_waiters();
        Ok(Response::new(pb::Ack { applied: true }))
    }
}

fn cancel_msg(f: Fence, reason: &str) -> pb::CoordinatorMessage {
    pb::CoordinatorMessage {
        kind: Some(pb::coordinator_message::Kind::Cancel(pb::CancelRun {
            fence: Some(pb::Fence {
                worker_id: f.worker,
                run_id: f.run,
                attempt: f.attempt,
            }),
            reason: reason.into(),
        })),
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
    }
}

/// The run summaries of `submit` and `get`.
fn run_summary(r: &crate::store::RunRow) -> pb::RunSummary {
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
        ..Default::default()
    }
}

fn experiment_summary(e: &crate::store::ExperimentRow) -> pb::ExperimentSummary {
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
    }
}

/// What users ask, answered once for both the gRPC `UserApi` and the dashboard's JSON API.
impl Coordinator {
    /// The store (the dashboard reads curves, checkpoints and pictures straight from it).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Whether `token` is the user token (constant time).
    pub fn is_user_token(&self, token: &str) -> bool {
        tokens_match(token, &self.cfg.user_token)
    }

    /// Validates an experiment YAML and, unless `dry_run`, stores it and its runs.
    pub async fn submit(
        &self,
        file_name: &str,
        yaml: &str,
        dry_run: bool,
    ) -> Result<pb::SubmitReply, Status> {
        let file: String = file_name.chars().take(256).collect();
        let exp =
            experiment::parse(&file, yaml).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if dry_run {
            return Ok(planned_reply(&exp));
        }
        let (id, runs) = self.store.submit(&exp, &file, yaml).await.map_err(status)?;
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
        })
    }

    /// Every experiment, newest first.
    pub async fn list(&self) -> Result<pb::ListReply, Status> {
        let rows = self.store.experiments(None).await.map_err(status)?;
        Ok(pb::ListReply {
            experiments: rows.iter().map(experiment_summary).collect(),
        })
    }

    /// One experiment with its runs, their metric summaries and attempts.
    pub async fn detail(&self, key: &str) -> Result<pb::ExperimentDetail, Status> {
        let (id, e) = self.experiment(key).await?;
        let storage = self.store.storage(id).await.map_err(status)?;
        let mut runs = Vec::new();
        for r in self.store.runs(id).await.map_err(status)? {
            let mut s = self.full_run_summary(&r).await?;
            s.storage = Some(run_storage(storage.runs.get(&r.id)));
            runs.push(s);
        }
        Ok(pb::ExperimentDetail {
            summary: Some(experiment_summary(&e)),
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
    ) -> Result<(pb::RunSummary, String), Status> {
        let (id, e) = self.experiment(key).await?;
        let run_id = self.store.resolve_run(id, run).await.map_err(status)?;
        let row = self.store.run(id, run_id).await.map_err(status)?;
        let mut summary = self.full_run_summary(&row).await?;
        let storage = self.store.storage(id).await.map_err(status)?;
        summary.storage = Some(run_storage(storage.runs.get(&run_id)));
        Ok((summary, experiment_summary(&e).objective))
    }

    /// A run with its needs, metric summaries and attempts.
    async fn full_run_summary(&self, r: &crate::store::RunRow) -> Result<pb::RunSummary, Status> {
        {
            let mut s = run_summary(r);
            s.needs = self.store.needs(r.id).await.map_err(status)?;
            s.metrics = self
                .store
                .summaries(r.id)
                .await
                .map_err(status)?
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
                .await
                .map_err(status)?
                .into_iter()
                .map(|a| pb::AttemptInfo {
                    attempt: a.attempt,
                    worker_id: a.worker,
                    state: a.state.into(),
                    started_unix: a.started,
                    ended_unix: a.ended,
                    resumed_from_step: a.resumed_from_step,
                    message: a.message,
                })
                .collect();
            Ok(s)
        }
    }

    /// The `top` checkpoints by `metric` (empty: the objective), with every metric at each.
    pub async fn best(&self, key: &str, metric: &str, top: u32) -> Result<pb::BestReply, Status> {
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
        let ranked = self
            .store
            .best(id, &metric, mode, top)
            .await
            .map_err(status)?;
        let mut out = Vec::new();
        for c in ranked {
            let metrics = self
                .store
                .metrics_at(c.run_id, c.step)
                .await
                .map_err(status)?;
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
    pub async fn cancel_runs(&self, key: &str, run: &str) -> Result<pb::CancelReply, Status> {
        let id = self.store.resolve_experiment(key).await.map_err(status)?;
        let run = (!run.is_empty()).then_some(run);
        if let Some(name) = run {
            self.store.resolve_run(id, name).await.map_err(status)?;
        }
        let cancelled = self.store.cancel(id, run).await.map_err(status)?;
        Ok(pb::CancelReply { cancelled })
    }

    /// Requeues failed (and optionally cancelled) runs, or one named run.
    pub async fn rerun_runs(
        &self,
        key: &str,
        run: &str,
        with_cancelled: bool,
    ) -> Result<pb::RerunReply, Status> {
        let id = self.store.resolve_experiment(key).await.map_err(status)?;
        let run = (!run.is_empty()).then_some(run);
        if let Some(name) = run {
            self.store.resolve_run(id, name).await.map_err(status)?;
        }
        let requeued = self
            .store
            .rerun(id, run, with_cancelled)
            .await
            .map_err(status)?;
        // Idle worker sessions look for work now rather than at their next poll.
        self.work.notify_waiters();
        Ok(pb::RerunReply { requeued })
    }

    /// The last `tail` log lines of a run (0: 200; at most 100 000).
    pub async fn log_tail(&self, key: &str, run: &str, tail: u32) -> Result<pb::LogsReply, Status> {
        let id = self.store.resolve_experiment(key).await.map_err(status)?;
        let run = self.store.resolve_run(id, run).await.map_err(status)?;
        let tail = if tail == 0 { 200 } else { tail.min(100_000) } as i64;
        let lines = self.store.logs(run, tail).await.map_err(status)?;
        Ok(pb::LogsReply { lines })
    }
}

#[tonic::async_trait]
impl UserApi for Coordinator {
    async fn submit_experiment(
        &self,
        req: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitReply>, Status> {
        let r = req.into_inner();
        Ok(Response::new(
            self.submit(&r.file_name, &r.yaml, r.dry_run).await?,
        ))
    }

    async fn list_experiments(
        &self,
        _req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListReply>, Status> {
        Ok(Response::new(self.list().await?))
    }

    async fn get_experiment(
        &self,
        req: Request<pb::GetRequest>,
    ) -> Result<Response<pb::ExperimentDetail>, Status> {
        Ok(Response::new(
            self.detail(&req.into_inner().experiment).await?,
        ))
    }

    type WatchMetricsStream = BoxStream<pb::MetricUpdate>;

    async fn watch_metrics(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchMetricsStream>, Status> {
        let r = req.into_inner();
        let exp = self
            .store
            .resolve_experiment(&r.experiment)
            .await
            .map_err(status)?;
        let mut runs: Vec<(i64, String)> = self
            .store
            .runs(exp)
            .await
            .map_err(status)?
            .into_iter()
            .map(|x| (x.id, x.name))
            .collect();
        if !r.run.is_empty() {
            runs.retain(|x| x.1 == r.run);
            if runs.is_empty() {
                return Err(Status::not_found(format!("no run {:?}", r.run)));
            }
        }
        let (tx, rx) = mpsc::channel(64);
        let store = self.store.clone();
        let wanted: Vec<String> = r.metrics;
        tokio::spawn(async move {
            let cursors = runs.iter().map(|(id, _)| (*id, 0)).collect();
            let mut follower = Follower::new(store, exp, cursors, true);
            let names: BTreeMap<i64, String> = runs.into_iter().collect();
            loop {
                let Ok(look) = follower.look().await else {
                    return;
                };
                // One update per run and metric per look, points in chunk order.
                let mut merged: BTreeMap<(i64, String), Series> = BTreeMap::new();
                for ch in look.chunks {
                    if !wanted.is_empty() && !wanted.contains(&ch.name) {
                        continue;
                    }
                    let m = merged.entry((ch.run, ch.name)).or_default();
                    m.steps.extend(ch.series.steps);
                    m.values.extend(ch.series.values);
                }
                let points = merged
                    .into_iter()
                    .map(|((run, metric), s)| pb::MetricUpdate {
                        run: names[&run].clone(),
                        name: metric,
                        steps: s.steps,
                        values: s.values,
                        run_state: PbRunState::Unspecified.into(),
                    });
                let states = look
                    .changed
                    .into_iter()
                    .filter(|(_, state_changed)| *state_changed)
                    .map(|(row, _)| pb::MetricUpdate {
                        run: row.name,
                        run_state: row.state.into(),
                        ..Default::default()
                    });
                for u in points.chain(states) {
                    if tx.send(Ok(u)).await.is_err() {
                        return;
                    }
                }
                if look.finished || (r.backlog_only && look.caught_up) {
                    return;
                }
                if look.caught_up {
                    tokio::time::sleep(follow::POLL).await;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn best_checkpoints(
        &self,
        req: Request<pb::BestRequest>,
    ) -> Result<Response<pb::BestReply>, Status> {
        let r = req.into_inner();
        Ok(Response::new(
            self.best(&r.experiment, &r.metric, r.top).await?,
        ))
    }

    async fn cancel(
        &self,
        req: Request<pb::CancelRequest>,
    ) -> Result<Response<pb::CancelReply>, Status> {
        let r = req.into_inner();
        Ok(Response::new(
            self.cancel_runs(&r.experiment, &r.run).await?,
        ))
    }

    async fn rerun(
        &self,
        req: Request<pb::RerunRequest>,
    ) -> Result<Response<pb::RerunReply>, Status> {
        let r = req.into_inner();
        Ok(Response::new(
            self.rerun_runs(&r.experiment, &r.run, r.with_cancelled)
                .await?,
        ))
    }

    async fn logs(&self, req: Request<pb::LogsRequest>) -> Result<Response<pb::LogsReply>, Status> {
        let r = req.into_inner();
        Ok(Response::new(
            self.log_tail(&r.experiment, &r.run, r.tail).await?,
        ))
    }

    type DownloadCheckpointStream = BoxStream<pb::DataChunk>;

    async fn download_checkpoint(
        &self,
        req: Request<pb::DownloadRequest>,
    ) -> Result<Response<Self::DownloadCheckpointStream>, Status> {
        let r = req.into_inner();
        let (data, sha, step) = self
            .store
            .checkpoint_bytes(r.checkpoint_id, r.with_state)
            .await
            .map_err(status)?;
        Ok(Response::new(Coordinator::download_stream(data, sha, step)))
    }
}

/// Serves both services on `addr` until `shutdown` resolves; runs the lease reaper alongside.
pub async fn serve(
    coordinator: Coordinator,
    listener: tokio::net::TcpListener,
    tls: Option<tonic::transport::ServerTlsConfig>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let reaper = tokio::spawn(coordinator.clone().reaper());
    let (worker, user) = coordinator.services();
    let mut builder =
        tonic::transport::Server::builder().http2_keepalive_interval(Some(Duration::from_secs(10)));
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    // Accepted sockets need no-delay set here: the builder's option covers only the listeners
    // it binds itself. Without it a small reply waits ~40 ms for the peer's delayed ACK.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let result = builder
        .add_service(worker)
        .add_service(user)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    reaper.abort();
    Ok(result?)
}

/// A run's checkpoint bytes for the API (zeros for a run without checkpoints).
fn run_storage(s: Option<&crate::store::RunStorage>) -> pb::RunStorage {
    let s = s.copied().unwrap_or_default();
    pb::RunStorage {
        checkpoints: s.checkpoints,
        weight_bytes: s.weight_bytes as u64,
        state_bytes: s.state_bytes as u64,
        own_stored_bytes: s.own_stored_bytes as u64,
    }
}
