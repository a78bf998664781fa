//! The worker-facing service: registration, the session stream (claims, heartbeats,
//! cancellations), metric and log reports, checkpoint and artifact uploads, downloads and
//! finishing. Every write is fenced by the attempt's `(worker, run, attempt)`.

use super::*;

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
        let slurm_ok = caps.slurm_job_id.len() <= 32
            && caps
                .slurm_job_id
                .bytes()
                .all(|b| b.is_ascii_digit() || b == b'_');
        if !slurm_ok {
            return Err(Status::invalid_argument(
                "slurm_job_id: expected Slurm's numeric job id",
            ));
        }
        if caps.device_info.len() > 256
            || caps
                .device_info
                .iter()
                .any(|d| d.name.is_empty() || d.name.len() > 64 || d.kind.len() > 16)
        {
            return Err(Status::invalid_argument(
                "device_info: at most 256 devices, each named in 1 to 64 bytes",
            ));
        }
        let device_info: Vec<crate::store::Device> = caps
            .device_info
            .iter()
            .map(|d| crate::store::Device {
                name: d.name.clone(),
                kind: d.kind.clone(),
                memory_bytes: d.memory_bytes,
            })
            .collect();
        let json = serde_json::json!({
            "device_info": device_info,
            "devices": caps.devices,
            "memory_bytes": caps.memory_bytes,
            "version": caps.version,
            "job_kinds": caps.job_kinds,
            "hostname": caps.hostname,
            "slurm_job_id": caps.slurm_job_id,
        });
        let id = self
            .store
            .register_worker(&r.name, json)
            .await
            .map_err(status)?;
        tracing::info!("worker {id} registered ({})", r.name);
        Ok(Response::new(pb::RegisterReply {
            worker_id: id,
            heartbeat_ms: self.cfg.intervals.heartbeat.as_millis() as u32,
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
        let claimant = self.claimant(worker).await?;
        let (tx, rx) = mpsc::channel::<Result<pb::CoordinatorMessage, Status>>(16);
        let me = self.clone();
        tokio::spawn(async move {
            let mut idle = false;
            let mut running: Option<Fence> = None;
            // Assignments sent in this session (heartbeats echo how many they saw).
            let mut assigned: u64 = 0;
            let mut last_touch: Option<std::time::Instant> = None;
            let mut tick = tokio::time::interval(me.cfg.intervals.claim_poll);
            loop {
                tokio::select! {
                    msg = inbound.message() => match msg {
                        Ok(Some(pb::WorkerMessage { kind: Some(pb::worker_message::Kind::Heartbeat(hb)) })) => {
                            let reported = hb.running.map(|f| Fence { worker, run: f.run_id, attempt: f.attempt });
                            // A heartbeat sent before the worker saw our last assignment is
                            // stale about what it runs: acting on its "idle" would assign twice.
                            if hb.assignments_seen >= assigned {
                                idle = hb.idle;
                                running = reported;
                            }
                            if reported.is_none() {
                                touch_when_due(&me.store, worker, &mut last_touch).await;
                            }
                            if let Some(f) = reported {
                                if f.worker != worker { continue; }
                                match me.store.heartbeat(f, hb.step, hb.total_steps).await {
                                    Ok(Beat::Renewed { cancel_requested: false, stop_requested: false } | Beat::Finished) => {}
                                    Ok(Beat::Renewed { cancel_requested: true, .. }) => {
                                        let _ = tx.send(Ok(cancel_msg(f, "cancelled by user"))).await;
                                    }
                                    Ok(Beat::Renewed { stop_requested: true, .. }) => {
                                        let _ = tx.send(Ok(cancel_msg(f, "stopped by the search (ASHA)"))).await;
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
                    match me.store.claim(&claimant).await {
                        Ok(Some(c)) => {
                            let fence = c.fence;
                            let msg = assignment(c);
                            idle = false;
                            running = Some(fence);
                            assigned += 1;
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
        let done = self
            .store
            .ingest_judged(f, b.seq as i64, &series)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::Ack {
            applied: done.applied,
            stop: done.stop,
        }))
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
        Ok(Response::new(pb::Ack {
            applied: true,
            stop: false,
        }))
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
        Ok(Response::new(
            self.checkpoint_download(req.into_inner()).await?,
        ))
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
        Ok(Response::new(pb::Ack {
            applied: true,
            stop: false,
        }))
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

/// Marks an idle worker alive. Idle slots beat every second, but a worker counts as connected
/// for a whole lease, so writing that down once per quarter lease is enough.
async fn touch_when_due(store: &Store, worker: i64, last: &mut Option<std::time::Instant>) {
    if last.is_some_and(|t| t.elapsed() < store.lease / 4) {
        return;
    }
    *last = Some(std::time::Instant::now());
    if let Err(e) = store.touch_worker(worker).await {
        tracing::error!("heartbeat: {e}");
    }
}

/// The message that hands a claimed run to its worker.
fn assignment(c: Claim) -> pb::CoordinatorMessage {
    let assignment = pb::Assignment {
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
        devices: c.devices,
    };
    pb::CoordinatorMessage {
        kind: Some(pb::coordinator_message::Kind::Assign(assignment)),
    }
}
