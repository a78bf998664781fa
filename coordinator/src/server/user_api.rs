//! The user-facing gRPC service: a thin layer over [`Coordinator`]'s answers (`answers.rs`),
//! plus the streams (metrics, checkpoint downloads) only gRPC serves.

use super::*;

/// Longest grace period of a rotated token.
const MAX_TOKEN_GRACE_SECS: u32 = 7 * 86_400;

#[tonic::async_trait]
impl UserApi for Coordinator {
    async fn rotate_token(
        &self,
        req: Request<pb::RotateTokenRequest>,
    ) -> Result<Response<pb::RotateTokenReply>, Status> {
        let r = req.into_inner();
        let role = match pb::TokenRole::try_from(r.role) {
            Ok(pb::TokenRole::User) => TokenRole::User,
            Ok(pb::TokenRole::Worker) => TokenRole::Worker,
            _ => return Err(Status::invalid_argument("role: expected user or worker")),
        };
        if r.grace_secs > MAX_TOKEN_GRACE_SECS {
            return Err(Status::invalid_argument(format!(
                "grace_secs: at most {MAX_TOKEN_GRACE_SECS} (7 days)"
            )));
        }
        let (token, ends) = self
            .rotate_token(role, Duration::from_secs(r.grace_secs.into()))
            .await
            .map_err(status)?;
        tracing::warn!(
            "the {} token was rotated; the old ones end in {} s",
            role.name(),
            r.grace_secs
        );
        let unix = ends
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        Ok(Response::new(pb::RotateTokenReply {
            token,
            old_valid_until_unix: unix,
        }))
    }

    async fn submit_experiment(
        &self,
        req: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitReply>, Status> {
        let r = req.into_inner();
        Ok(Response::new(
            self.submit(
                &r.file_name,
                &r.yaml,
                r.dry_run,
                Some(r.extend.as_str()).filter(|e| !e.is_empty()),
            )
            .await?,
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
        let poll = self.cfg.intervals.follow_poll;
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
                    tokio::time::sleep(poll).await;
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
        Ok(Response::new(
            self.checkpoint_download(req.into_inner()).await?,
        ))
    }
}
