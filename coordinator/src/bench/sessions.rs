//! `plume bench` (coordinator suite): many fake worker sessions claiming runs, for
//! dispatch latency (submit to assignment) and claim throughput.

use super::*;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// `n` fake workers on sessions; submits `runs` one-step runs (one experiment per run when
/// `one_by_one`, measuring submit -> assignment); each worker finishes what it gets at once.
/// Returns per-assignment latencies (ms) and claims/s.
pub(super) async fn sessions_bench(
    addr: &str,
    user: &mut crate::client::UserClient,
    n: usize,
    runs: usize,
    stamp: u64,
    one_by_one: bool,
) -> anyhow::Result<(Vec<f64>, f64)> {
    let (got_tx, mut got_rx) = mpsc::unbounded_channel::<(Instant, f64)>();
    let mut handles = Vec::new();
    let beats = Arc::new(Mutex::new(Vec::new()));
    let channels = n.div_ceil(25);
    let mut clients = Vec::new();
    for _ in 0..channels {
        clients.push(worker_client(addr).await?);
    }
    for i in 0..n {
        let mut c = clients[i % channels].clone();
        let id = register(&mut c, &format!("sim-{i}")).await?;
        let session = SimulatedSession {
            c,
            id,
            i,
            got: got_tx.clone(),
            beats: beats.clone(),
        };
        handles.push(tokio::spawn(session.run()));
    }
    drop(got_tx);
    // Let every session open and report idle.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let t0 = Instant::now();
    let latencies = if one_by_one {
        one_by_one_dispatch(user, &mut got_rx, runs, stamp).await?
    } else {
        user.submit_experiment(pb::SubmitRequest {
            yaml: experiment_yaml(&format!("swarm-{stamp}"), runs),
            file_name: "bench.yaml".into(),
            dry_run: false,
            extend: String::new(),
        })
        .await?;
        let mut waits = Vec::new();
        for k in 0..runs {
            if k % 100 == 0 {
                eprintln!("bench: {k}/{runs} claimed");
            }
            let (_, wait) = tokio::time::timeout(Duration::from_secs(60), got_rx.recv())
                .await?
                .ok_or_else(|| anyhow::anyhow!("sessions ended early"))?;
            waits.push(wait);
        }
        waits
    };
    let rate = runs as f64 / t0.elapsed().as_secs_f64();
    for h in handles {
        h.abort();
    }
    for b in beats.lock().expect("lock").iter() {
        b.abort();
    }
    // Let the coordinator see the sessions close before the next benchmark.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok((latencies, rate))
}

/// Submits `runs` one-run experiments one at a time; each one's time from submit to its
/// assignment reaching a session, in ms.
async fn one_by_one_dispatch(
    user: &mut crate::client::UserClient,
    got_rx: &mut mpsc::UnboundedReceiver<(Instant, f64)>,
    runs: usize,
    stamp: u64,
) -> anyhow::Result<Vec<f64>> {
    let mut latencies = Vec::new();
    for k in 0..runs {
        let t = Instant::now();
        user.submit_experiment(pb::SubmitRequest {
            yaml: experiment_yaml(&format!("dispatch-{stamp}-{k}"), 1),
            file_name: "bench.yaml".into(),
            dry_run: false,
            extend: String::new(),
        })
        .await?;
        let (at, _) = tokio::time::timeout(Duration::from_secs(10), got_rx.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("no assignment"))?;
        latencies.push((at - t).as_secs_f64() * 1e3);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(latencies)
}

/// A worker session that does no work: it reports idle, finishes every run it is handed at
/// once, and sends when each assignment came and how long it had waited idle.
struct SimulatedSession {
    c: WorkerClient,
    id: i64,
    i: usize,
    got: mpsc::UnboundedSender<(Instant, f64)>,
    beats: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl SimulatedSession {
    async fn run(mut self) {
        let (tx, rx) = mpsc::channel(8);
        let hello = pb::worker_message::Kind::Hello(pb::Hello { worker_id: self.id });
        let _ = tx.send(pb::WorkerMessage { kind: Some(hello) }).await;
        let idle = pb::WorkerMessage {
            kind: Some(pb::worker_message::Kind::Heartbeat(pb::Heartbeat {
                idle: true,
                ..Default::default()
            })),
        };
        let _ = tx.send(idle).await;
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let mut inbound = match self.c.session(stream).await {
            Ok(r) => r.into_inner(),
            Err(e) => {
                eprintln!("bench: session {} refused: {}", self.i, e.message());
                return;
            }
        };
        // Heartbeats echo the assignments seen, as a real worker's do: the coordinator acts
        // only on an "idle" sent after its last assignment arrived.
        let seen = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let idle_beat = |seen: &std::sync::atomic::AtomicU64| pb::WorkerMessage {
            kind: Some(pb::worker_message::Kind::Heartbeat(pb::Heartbeat {
                idle: true,
                assignments_seen: seen.load(std::sync::atomic::Ordering::SeqCst),
                ..Default::default()
            })),
        };
        let beat = {
            let (tx, seen) = (tx.clone(), seen.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if tx.send(idle_beat(&seen)).await.is_err() {
                        return;
                    }
                }
            })
        };
        self.beats.lock().expect("lock").push(beat.abort_handle());
        let mut idle_since = Instant::now();
        // The first wait includes the time before anything was submitted: not counted.
        let mut first = true;
        loop {
            let m = match inbound.message().await {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    eprintln!("bench: session {} ended: {}", self.i, e.message());
                    break;
                }
            };
            let Some(pb::coordinator_message::Kind::Assign(a)) = m.kind else {
                continue;
            };
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let now = Instant::now();
            let wait = match first {
                true => f64::NAN,
                false => (now - idle_since).as_secs_f64() * 1e3,
            };
            first = false;
            let _ = self.got.send((now, wait));
            let _ = self
                .c
                .finish(pb::FinishRequest {
                    fence: a.fence,
                    outcome: pb::finish_request::Outcome::Succeeded as i32,
                    message: String::new(),
                    step: 1,
                })
                .await;
            idle_since = Instant::now();
            let _ = tx.send(idle_beat(&seen)).await;
        }
        beat.abort();
    }
}
