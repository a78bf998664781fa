//! What a running job reports, on its way to the coordinator: [`GrpcReporter`] queues metrics,
//! logs, checkpoints and artifacts; one sender task delivers the queue in order, metrics
//! batched with an increasing `seq` so that a resend after a lost reply is not applied twice.

use super::*;

/// One metric point: name, step, value, seconds since the job started.
pub(super) type Point = (String, i64, f64, f64);

/// What the reporter hands to the sender task, delivered in order.
pub(super) enum Op {
    Metrics(Vec<Point>),
    Log(String),
    Checkpoint(i64, PathBuf),
    Artifact(i64, String, Vec<u8>),
    Finish(pb::finish_request::Outcome, String, i64),
}

/// The reporter a remote job runs against: queues, never blocks on the network.
pub struct GrpcReporter {
    pub(super) queue: mpsc::UnboundedSender<Op>,
    pub(super) dir: PathBuf,
    pub(super) started: Instant,
    pub(super) step: Arc<AtomicI64>,
    pub(super) total: Arc<AtomicI64>,
}

impl Reporter for GrpcReporter {
    fn metrics(&mut self, step: i64, values: &[(&str, f64)]) -> anyhow::Result<()> {
        let t = self.started.elapsed().as_secs_f64();
        let points = values
            .iter()
            .map(|(k, v)| ((*k).to_string(), step, *v, t))
            .collect();
        let _ = self.queue.send(Op::Metrics(points));
        Ok(())
    }
    fn checkpoint_path(&mut self, step: i64) -> anyhow::Result<PathBuf> {
        let dir = self.dir.join("checkpoints");
        std::fs::create_dir_all(&dir)?;
        Ok(dir.join(format!("step-{step:08}.safetensors")))
    }
    fn checkpoint_written(&mut self, step: i64, path: &Path) -> anyhow::Result<()> {
        let _ = self.queue.send(Op::Checkpoint(step, path.to_owned()));
        Ok(())
    }
    fn artifact(&mut self, step: i64, name: &str, png: &[u8]) -> anyhow::Result<()> {
        let _ = self
            .queue
            .send(Op::Artifact(step, name.to_owned(), png.to_vec()));
        Ok(())
    }
    fn log(&mut self, line: &str) {
        eprintln!("{line}");
        let _ = self.queue.send(Op::Log(line.to_owned()));
    }
    fn progress(&mut self, step: i64, total: i64, _losses: &[(&str, f64)]) {
        self.step.store(step, Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
    }
    fn finish(&mut self, message: &str) {
        self.log(message);
    }
}

/// A metrics op with whatever is already queued behind it (up to 50,000 points): the
/// points, the log lines met on the way, and the first other op, left in `pending`.
fn coalesce_metrics(
    mut points: Vec<Point>,
    rx: &mut mpsc::UnboundedReceiver<Op>,
    pending: &mut Option<Op>,
) -> (Vec<Point>, Vec<String>) {
    let mut lines = Vec::new();
    while points.len() < 50_000 {
        match rx.try_recv() {
            Ok(Op::Metrics(more)) => points.extend(more),
            Ok(Op::Log(l)) => lines.push(l),
            Ok(other) => {
                *pending = Some(other);
                break;
            }
            Err(_) => break,
        }
    }
    (points, lines)
}

/// Points as one batch, each metric name sent once.
fn metric_batch(
    fence: pb::Fence,
    seq: u64,
    points: Vec<(String, i64, f64, f64)>,
) -> pb::MetricBatch {
    let mut names: Vec<String> = Vec::new();
    let mut batch = pb::MetricBatch {
        fence: Some(fence),
        seq,
        ..Default::default()
    };
    for (name, step, value, t) in points {
        let i = match names.iter().position(|n| *n == name) {
            Some(i) => i,
            None => {
                names.push(name);
                names.len() - 1
            }
        };
        batch.name_index.push(i as u32);
        batch.steps.push(step);
        batch.values.push(value);
        batch.times.push(t);
    }
    batch.names = names;
    batch
}

/// Ends the attempt with `outcome` (retried while the coordinator is unreachable).
async fn finish(
    c: &Client,
    fence: pb::Fence,
    outcome: pb::finish_request::Outcome,
    message: String,
    step: i64,
) -> Result<(), Status> {
    retry("finish", || {
        let mut c = c.clone();
        let m = message.clone();
        async move {
            c.finish(pb::FinishRequest {
                fence: Some(fence),
                outcome: outcome as i32,
                message: m,
                step,
            })
            .await
        }
    })
    .await
    .map(|_| ())
}

/// Delivers a job's reports in order; consecutive metric reports go out as one batch.
pub(super) async fn send_queue(
    mut c: Client,
    fence: pb::Fence,
    mut rx: mpsc::UnboundedReceiver<Op>,
    cancel: CancelToken,
) {
    let mut seq = 0u64;
    let mut pending: Option<Op> = None;
    let mut stale = false;
    loop {
        let op = match pending.take() {
            Some(op) => op,
            None => match rx.recv().await {
                Some(op) => op,
                None => return,
            },
        };
        if stale {
            continue; // drain: this attempt may no longer write
        }
        let result: Result<(), Status> = match op {
            Op::Metrics(points) => {
                let (points, lines) = coalesce_metrics(points, &mut rx, &mut pending);
                seq += 1;
                let batch = metric_batch(fence, seq, points);
                let r = retry("metrics", || {
                    let mut c = c.clone();
                    let b = batch.clone();
                    async move { c.report_metrics(b).await }
                })
                .await
                .map(|ack| stop_if_asked(&ack.into_inner(), fence, &cancel));
                if r.is_ok() && !lines.is_empty() {
                    send_logs(&mut c, fence, lines).await
                } else {
                    r
                }
            }
            Op::Log(l) => {
                let mut lines = vec![l];
                while let Ok(op) = rx.try_recv() {
                    match op {
                        Op::Log(l) => lines.push(l),
                        other => {
                            pending = Some(other);
                            break;
                        }
                    }
                }
                send_logs(&mut c, fence, lines).await
            }
            Op::Checkpoint(step, path) => match std::fs::read(&path) {
                Ok(data) => upload(&mut c, fence, step, "", data, true).await,
                Err(e) => {
                    eprintln!("cannot read checkpoint {}: {e}", path.display());
                    Ok(())
                }
            },
            Op::Artifact(step, name, data) => upload(&mut c, fence, step, &name, data, false).await,
            Op::Finish(outcome, message, step) => finish(&c, fence, outcome, message, step).await,
        };
        if let Err(s) = result {
            if s.code() == Code::FailedPrecondition {
                eprintln!(
                    "run {} attempt {}: {}; stopping it",
                    fence.run_id,
                    fence.attempt,
                    s.message()
                );
                stale = true;
                cancel.cancel();
            } else {
                eprintln!("report refused: {}", s.message());
            }
        }
    }
}

/// The experiment's search did not promote this run at a rung (`Ack.stop`): stop now, with a
/// checkpoint, rather than at the next heartbeat.
fn stop_if_asked(ack: &pb::Ack, fence: pb::Fence, cancel: &CancelToken) {
    if ack.stop && !cancel.is_cancelled() {
        eprintln!(
            "run {} attempt {}: stopped by the search (ASHA)",
            fence.run_id, fence.attempt
        );
        cancel.cancel();
    }
}
