//! The worker as a coordinator's client: `plume-worker --coordinator URL --token T`.
//!
//! One session stream carries heartbeats up (they renew the lease of the running attempt) and
//! assignments and cancels down. A job runs on its own thread against [`GrpcReporter`], which
//! queues everything it reports; one sender task delivers the queue in order (metrics batched,
//! each batch with an increasing `seq`, so a resend after a lost reply is not applied twice),
//! retrying through coordinator restarts. The job keeps running while the coordinator is away.
//!
//! This file holds the session and the job thread; `reporter` the queue and its sender;
//! `transfer` uploads, downloads and retries.

use crate::job::{CancelToken, Outcome, Reporter};
use crate::runner::{self, JobSpec};
use anyhow::Context;
use plume_jobs::yaml;
use plume_proto::v1 as pb;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

mod reporter;
mod slot;
mod transfer;

pub use reporter::GrpcReporter;
use reporter::*;
pub use slot::Slot;
use slot::*;
use transfer::*;

/// How to reach the coordinator and what this worker is.
#[derive(Debug, Clone)]
pub struct RemoteOptions {
    /// Coordinator URL.
    pub coordinator: String,
    /// Worker token.
    pub token: String,
    /// The device slots: one run at a time on each (a multi-GPU run takes several).
    pub slots: Vec<Slot>,
    /// Worker name (shown in attempts).
    pub name: String,
    /// Where checkpoints of running jobs and downloaded inputs live.
    pub work_dir: PathBuf,
    /// Exit after this long without a run (batch systems: give the allocation back).
    pub idle_exit: Option<Duration>,
    /// The Slurm job this worker runs in (`SLURM_JOB_ID`), reported so attempts name it.
    pub slurm_job_id: Option<String>,
}

#[derive(Clone)]
struct Auth(MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        r.metadata_mut().insert("authorization", self.0.clone());
        Ok(r)
    }
}

type Client = pb::worker_api_client::WorkerApiClient<InterceptedService<Channel, Auth>>;

async fn client(opts: &RemoteOptions) -> anyhow::Result<Client> {
    let ca = std::env::var_os("PLUME_CA_CERT").map(PathBuf::from);
    let channel = plume_proto::endpoint(&opts.coordinator, ca.as_deref())
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .connect()
        .await?;
    let auth = Auth(format!("Bearer {}", opts.token).parse()?);
    Ok(
        pb::worker_api_client::WorkerApiClient::with_interceptor(channel, auth)
            .max_decoding_message_size(16 << 20)
            .max_encoding_message_size(16 << 20),
    )
}

/// Runs the worker until SIGINT, SIGTERM or SIGUSR1 (or `--idle-exit`): connects (with
/// backoff), registers once, and serves sessions, reconnecting whenever the coordinator goes
/// away. On a signal the running job checkpoints and its run is released at once, so a batch
/// system's warning signal (`sbatch --signal=B:USR1@120`) or `scancel` loses no work; a second
/// SIGINT or SIGTERM exits without waiting.
pub fn serve(opts: RemoteOptions) -> anyhow::Result<()> {
    std::fs::create_dir_all(&opts.work_dir)
        .with_context(|| format!("creating {}", opts.work_dir.display()))?;
    anyhow::ensure!(!opts.slots.is_empty(), "a worker needs at least one slot");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let host = Arc::new(Host::default());
    let slots: Vec<Arc<Shared>> = (0..opts.slots.len())
        .map(|_| Arc::new(Shared::new(host.clone())))
        .collect();
    rt.block_on(async {
        spawn_signal_handler(slots.clone())?;
        // One session per slot, all under one registration: the coordinator gives each free
        // slot a run that fits the devices the other slots' runs leave free.
        let sessions: Vec<_> = slots
            .into_iter()
            .map(|s| tokio::spawn(session_loop(opts.clone(), s)))
            .collect();
        for s in sessions {
            s.await??;
        }
        Ok(())
    })
}

/// SIGINT, SIGTERM and SIGUSR1 stop the worker (see [`serve`]); a second SIGINT or SIGTERM
/// exits at once.
fn spawn_signal_handler(slots: Vec<Arc<Shared>>) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    tokio::spawn(async move {
        loop {
            let (name, repeatable_exit) = tokio::select! {
                _ = int.recv() => ("SIGINT", true),
                _ = term.recv() => ("SIGTERM", true),
                _ = usr1.recv() => ("SIGUSR1", false),
            };
            if !stop_all(&slots, name) && repeatable_exit {
                eprintln!("second {name}: exiting without a final checkpoint");
                std::process::exit(130);
            }
        }
    });
    Ok(())
}

async fn session_loop(opts: RemoteOptions, shared: Arc<Shared>) -> anyhow::Result<()> {
    let mut backoff = Duration::from_millis(200);
    loop {
        if shared.idle_and_stopping() || shared.idle_expired(opts.idle_exit) {
            return Ok(());
        }
        let mut c = match client(&opts).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("coordinator unreachable ({e}); retrying in {backoff:?}");
                backoff = wait(backoff).await;
                continue;
            }
        };
        // The slots share one registration: the first to need it registers.
        let heartbeat;
        let mut registration = shared.host.registration.lock().await;
        let id = match *registration {
            Some((id, period)) => {
                heartbeat = period;
                id
            }
            None => match register(&mut c, &opts).await {
                Ok(r) => {
                    heartbeat = Duration::from_millis(r.heartbeat_ms.clamp(100, 60_000) as u64);
                    eprintln!("registered as worker {}", r.worker_id);
                    *registration = Some((r.worker_id, heartbeat));
                    r.worker_id
                }
                Err(s) if s.code() == Code::Unauthenticated => {
                    anyhow::bail!("the coordinator refused the worker token: {}", s.message())
                }
                Err(s) => {
                    drop(registration);
                    eprintln!("register failed ({}); retrying", s.message());
                    backoff = wait(backoff).await;
                    continue;
                }
            },
        };
        drop(registration);
        let (up_tx, up_rx) = mpsc::channel::<pb::WorkerMessage>(16);
        up_tx
            .send(pb::WorkerMessage {
                kind: Some(pb::worker_message::Kind::Hello(pb::Hello { worker_id: id })),
            })
            .await?;
        let inbound = match c
            .session(tokio_stream::wrappers::ReceiverStream::new(up_rx))
            .await
        {
            Ok(s) => s.into_inner(),
            Err(s) if s.code() == Code::NotFound => {
                // The coordinator's database forgot us: register again (once for all slots).
                let mut registration = shared.host.registration.lock().await;
                if registration.map(|r| r.0) == Some(id) {
                    *registration = None;
                }
                continue;
            }
            Err(s) => {
                eprintln!("session refused ({}); retrying", s.message());
                backoff = wait(backoff).await;
                continue;
            }
        };
        backoff = Duration::from_millis(200);
        shared.assignments_seen.store(0, Ordering::SeqCst);
        let beat = spawn_heartbeats(shared.clone(), up_tx.clone(), heartbeat);
        let end = serve_session(inbound, &opts, &shared, &c).await;
        beat.abort();
        if end == SessionEnd::ShutDown {
            return Ok(());
        }
        tokio::time::sleep(backoff).await;
    }
}

/// Sleeps `backoff`; returns the next one (doubled, at most 5 s).
async fn wait(backoff: Duration) -> Duration {
    tokio::time::sleep(backoff).await;
    (backoff * 2).min(Duration::from_secs(5))
}

/// Registers this worker with what it can run.
async fn register(
    c: &mut Client,
    opts: &RemoteOptions,
) -> Result<pb::RegisterReply, tonic::Status> {
    let kinds: Vec<String> = runner::JOB_KINDS.iter().map(|s| s.to_string()).collect();
    let hostname = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let request = pb::RegisterRequest {
        name: opts.name.clone(),
        capabilities: Some(pb::Capabilities {
            devices: opts.slots.iter().map(|s| s.info.name.clone()).collect(),
            device_info: opts.slots.iter().map(|s| s.info.clone()).collect(),
            memory_bytes: 0,
            version: env!("CARGO_PKG_VERSION").into(),
            job_kinds: kinds,
            hostname: hostname.trim().into(),
            slurm_job_id: opts.slurm_job_id.clone().unwrap_or_default(),
        }),
    };
    Ok(c.register(request).await?.into_inner())
}

/// Heartbeats: now and then every `period`, with the running attempt and its progress.
fn spawn_heartbeats(
    shared: Arc<Shared>,
    up_tx: mpsc::Sender<pb::WorkerMessage>,
    period: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shared.beat_now.notified() => {}
            }
            let hb = {
                let r = shared.running.lock().expect("lock");
                let stopping = shared.shutting_down();
                pb::Heartbeat {
                    running: r.as_ref().map(|r| r.fence),
                    idle: r.is_none() && !stopping,
                    step: r.as_ref().map_or(0, |r| r.step.load(Ordering::Relaxed)),
                    total_steps: r.as_ref().map_or(0, |r| r.total.load(Ordering::Relaxed)),
                    assignments_seen: shared.assignments_seen.load(Ordering::SeqCst),
                }
            };
            let msg = pb::WorkerMessage {
                kind: Some(pb::worker_message::Kind::Heartbeat(hb)),
            };
            if up_tx.send(msg).await.is_err() {
                return;
            }
        }
    })
}

/// How a session ended.
#[derive(Debug, PartialEq, Eq)]
enum SessionEnd {
    /// The stream broke: reconnect.
    Lost,
    /// Shutting down with no run left: exit.
    ShutDown,
}

/// Serves one session: starts assigned runs and passes cancels on, until the stream ends or
/// the worker is shutting down with nothing running.
async fn serve_session(
    mut inbound: tonic::Streaming<pb::CoordinatorMessage>,
    opts: &RemoteOptions,
    shared: &Arc<Shared>,
    c: &Client,
) -> SessionEnd {
    loop {
        let msg = tokio::select! {
            m = inbound.message() => m,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                if shared.idle_and_stopping() || shared.idle_expired(opts.idle_exit) {
                    return SessionEnd::ShutDown;
                }
                continue;
            }
        };
        use pb::coordinator_message::Kind;
        match msg {
            Ok(Some(pb::CoordinatorMessage {
                kind: Some(Kind::Assign(a)),
            })) => {
                shared.assignments_seen.fetch_add(1, Ordering::SeqCst);
                if shared.running.lock().expect("lock").is_some() {
                    continue; // the coordinator's view lags a heartbeat; it will re-offer
                }
                start_job(opts, shared, c.clone(), a);
            }
            Ok(Some(pb::CoordinatorMessage {
                kind: Some(Kind::Cancel(cr)),
            })) => {
                let r = shared.running.lock().expect("lock");
                if let Some(r) = r.as_ref().filter(|r| Some(r.fence) == cr.fence) {
                    eprintln!(
                        "run {} attempt {}: {}",
                        r.fence.run_id, r.fence.attempt, cr.reason
                    );
                    r.cancel.cancel();
                }
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => {
                eprintln!("session ended; reconnecting");
                return SessionEnd::Lost;
            }
        }
    }
}

/// One assigned attempt's inputs, as its job thread sees them.
struct Attempt<'a> {
    a: &'a pb::Assignment,
    fence: pb::Fence,
    handle: &'a tokio::runtime::Handle,
    cache: &'a Path,
    dir: &'a Path,
}

impl Attempt<'_> {
    /// Downloads the upstream checkpoints (and the one to resume from), fills them into the
    /// job's config, and runs the job.
    fn run(
        &self,
        mut c: Client,
        device: tch::Device,
        reporter: &mut GrpcReporter,
        cancel: &CancelToken,
    ) -> anyhow::Result<Outcome> {
        let (a, fence, handle, cache) = (self.a, self.fence, self.handle, self.cache);
        std::fs::create_dir_all(cache)?;
        std::fs::create_dir_all(self.dir)?;
        let mut config: yaml::Mapping =
            yaml::from_str(&a.job_yaml).context("the coordinator sent a job that is not YAML")?;
        for input in &a.inputs {
            let path =
                handle.block_on(download(&mut c, fence, input.checkpoint_id, false, cache))?;
            config.insert(
                input.field.clone(),
                yaml::Value::String(path.display().to_string()),
            );
        }
        let resume = if a.resume_checkpoint > 0 {
            reporter.log(&format!("resuming from step {}", a.resume_step));
            Some(handle.block_on(download(&mut c, fence, a.resume_checkpoint, true, cache))?)
        } else {
            None
        };
        let text = yaml::to_string(&config)?;
        let spec = JobSpec::from_yaml(&text, &format!("{}/{}", a.experiment, a.run_name))?;
        runner::run(&spec, resume.as_deref(), device, reporter, cancel)
    }
}

/// How an attempt's result is reported: a cancel while the worker shuts down hands the run
/// back to be resumed elsewhere.
fn finish_of(
    result: anyhow::Result<Outcome>,
    stopping: bool,
) -> (pb::finish_request::Outcome, String, i64) {
    use pb::finish_request::Outcome as O;
    match result {
        Ok(Outcome::Completed { step }) => (O::Succeeded, "completed".to_string(), step),
        Ok(Outcome::Cancelled { step }) if stopping => {
            (O::Released, "worker shutting down".to_string(), step)
        }
        Ok(Outcome::Cancelled { step }) => {
            (O::Cancelled, format!("cancelled at step {step}"), step)
        }
        Err(e) => (O::Failed, format!("{e:#}"), 0),
    }
}

fn start_job(opts: &RemoteOptions, shared: &Arc<Shared>, c: Client, a: pb::Assignment) {
    let Some(fence) = a.fence else {
        return;
    };
    let cancel = CancelToken::default();
    let step = Arc::new(AtomicI64::new(a.resume_step));
    let total = Arc::new(AtomicI64::new(0));
    shared.started(Running {
        fence,
        cancel: cancel.clone(),
        step: step.clone(),
        total: total.clone(),
    });
    if shared.shutting_down() {
        cancel.cancel();
    }
    let dir = opts
        .work_dir
        .join("runs")
        .join(format!("run-{}-attempt-{}", fence.run_id, fence.attempt));
    let cache = opts.work_dir.join("cache");
    let device = job_device(&opts.slots, &a.devices);
    let shared = shared.clone();
    let handle = tokio::runtime::Handle::current();
    let (queue, rx) = mpsc::unbounded_channel::<Op>();
    let sender = handle.spawn(send_queue(c.clone(), fence, rx, cancel.clone()));
    std::thread::spawn(move || {
        eprintln!(
            "run {} ({}/{}) attempt {}: {}",
            fence.run_id, a.experiment, a.run_name, fence.attempt, a.job_kind
        );
        let mut reporter = GrpcReporter {
            queue: queue.clone(),
            dir: dir.clone(),
            started: Instant::now(),
            step,
            total,
        };
        let attempt = Attempt {
            a: &a,
            fence,
            handle: &handle,
            cache: &cache,
            dir: &dir,
        };
        let result = attempt.run(c, device, &mut reporter, &cancel);
        let (o, m, s) = finish_of(result, shared.shutting_down());
        eprintln!("run {} attempt {}: {m}", fence.run_id, fence.attempt);
        let _ = queue.send(Op::Finish(o, m, s));
        drop(queue);
        drop(reporter);
        let _ = handle.block_on(sender);
        let _ = std::fs::remove_dir_all(&dir);
        shared.ended();
    });
}
