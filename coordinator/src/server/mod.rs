//! The coordinator's gRPC services. It keeps no state that is not in Postgres: sessions only
//! cache what a worker said in its last heartbeat, so a restarted coordinator loses nothing.
//!
//! - `worker_api`: the service workers call;
//! - `user_api`: the service users call, over `answers`, which the dashboard's JSON API
//!   shares;
//! - `rescuer`: requeues the runs of workers that went silent;
//! - `auth`: the tokens the services accept (hashed in Postgres, cached here);
//! - this file: limits, config, authentication and what both services share.

use crate::experiment::{self, Mode};
use crate::follow::Follower;
use crate::states::{Outcome, RunState};
use crate::store::{Beat, Claim, Fence, SeedMode, Series, Store, StoreError, TokenRole};
use auth::Tokens;
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

mod answers;
pub mod auth;
mod rescuer;
mod user_api;
mod worker_api;

pub use answers::{planned_reply, planned_run, QueryError};

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
    /// Longest an experiment's validation may take before the submit is refused.
    pub parse_time: Duration,
    /// Wrong tokens one address may present to the dashboard per `Intervals::sign_in_window`.
    pub sign_in_failures: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message: 16 << 20,
            max_checkpoint: 4 << 30,
            max_artifact: 64 << 20,
            max_points: 1 << 20,
            max_log_lines: 10_000,
            parse_time: Duration::from_secs(10),
            sign_in_failures: 10,
        }
    }
}

/// Coordinator settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Worker token given at start (see `token_mode`); `None`: the database's.
    pub worker_token: Option<String>,
    /// User token (CLI, dashboard) given at start; `None`: the database's.
    pub user_token: Option<String>,
    /// How the tokens given at start are taken into the database.
    pub token_mode: SeedMode,
    /// Periods.
    pub intervals: Intervals,
    /// Size limits.
    pub limits: Limits,
}

/// Every period the coordinator keeps, in one place as the size limits are.
#[derive(Debug, Clone)]
pub struct Intervals {
    /// Heartbeat period asked of workers.
    pub heartbeat: Duration,
    /// How often the rescuer looks for expired leases.
    pub rescue: Duration,
    /// How often an idle worker's session looks for claimable work between wake-ups.
    pub claim_poll: Duration,
    /// How often a metric follower (gRPC `WatchMetrics`, the dashboard's SSE) polls.
    pub follow_poll: Duration,
    /// HTTP/2 keep-alive ping period.
    pub keepalive: Duration,
    /// The window in which `Limits::sign_in_failures` wrong dashboard tokens lock an address.
    pub sign_in_window: Duration,
    /// How often the live tokens are re-read (a rotation by another coordinator, an expiry).
    pub token_refresh: Duration,
}

impl Default for Intervals {
    fn default() -> Self {
        Intervals {
            heartbeat: Duration::from_millis(1000),
            rescue: Duration::from_millis(1000),
            claim_poll: Duration::from_millis(500),
            follow_poll: Duration::from_millis(500),
            keepalive: Duration::from_secs(10),
            sign_in_window: Duration::from_secs(60),
            token_refresh: Duration::from_secs(2),
        }
    }
}

/// Shared state of both services.
#[derive(Clone)]
pub struct Coordinator {
    store: Store,
    cfg: Arc<Config>,
    /// Woken when work may have become available (submit, finish, requeue).
    work: Arc<Notify>,
    /// The dashboard's failed sign-ins by address.
    sign_in: Arc<crate::web::SignInGuard>,
    /// The tokens it accepts.
    tokens: Arc<Tokens>,
}

pub(crate) fn status(e: StoreError) -> Status {
    QueryError::from(e).into()
}

fn fence(f: Option<pb::Fence>) -> Result<Fence, Status> {
    let f = f.ok_or_else(|| Status::invalid_argument("missing fence"))?;
    Ok(Fence {
        worker: f.worker_id,
        run: f.run_id,
        attempt: f.attempt,
    })
}

/// Checks a request's bearer token against the live tokens of `role`.
fn check_token(
    meta: &tonic::metadata::MetadataMap,
    tokens: &Tokens,
    role: TokenRole,
) -> Result<(), Status> {
    let got = meta
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| Status::unauthenticated("missing bearer token"))?;
    if !tokens.accepts(role, got) {
        return Err(Status::unauthenticated("invalid token for this service"));
    }
    Ok(())
}

impl Coordinator {
    /// A coordinator over `store`: takes the tokens given in `cfg` into the database (see
    /// [`SeedMode`]) and loads the live ones.
    pub async fn start(store: Store, cfg: Config) -> anyhow::Result<Coordinator> {
        auth::seed(
            &store,
            TokenRole::User,
            cfg.user_token.as_deref(),
            cfg.token_mode,
        )
        .await?;
        auth::seed(
            &store,
            TokenRole::Worker,
            cfg.worker_token.as_deref(),
            cfg.token_mode,
        )
        .await?;
        let tokens = Arc::new(Tokens::default());
        tokens.refresh(&store).await?;
        tokens.spawn_refresh(store.clone(), cfg.intervals.token_refresh);
        let sign_in =
            crate::web::SignInGuard::new(cfg.limits.sign_in_failures, cfg.intervals.sign_in_window);
        Ok(Coordinator {
            store,
            cfg: Arc::new(cfg),
            work: Arc::new(Notify::new()),
            sign_in: Arc::new(sign_in),
            tokens,
        })
    }

    /// Whether `token` is a live user token (the dashboard's sign-in).
    pub fn is_user_token(&self, token: &str) -> bool {
        self.tokens.accepts(TokenRole::User, token)
    }

    /// A new token of `role`; the old ones end after `grace`. Returns it and when they end.
    pub async fn rotate_token(
        &self,
        role: TokenRole,
        grace: Duration,
    ) -> Result<(String, std::time::SystemTime), StoreError> {
        let token = auth::random_token();
        let ends = self.store.rotate_token(role, &token, grace).await?;
        self.tokens.refresh(&self.store).await?;
        Ok((token, ends))
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
        let (wt, ut) = (self.tokens.clone(), self.tokens.clone());
        let worker = WorkerApiServer::new(self.clone())
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        let user = UserApiServer::new(self.clone())
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        (
            tonic::service::interceptor::InterceptedService::new(worker, move |r: Request<()>| {
                check_token(r.metadata(), &wt, TokenRole::Worker)?;
                Ok(r)
            }),
            tonic::service::interceptor::InterceptedService::new(user, move |r: Request<()>| {
                check_token(r.metadata(), &ut, TokenRole::User)?;
                Ok(r)
            }),
        )
    }

    /// The dashboard's failed sign-ins by address.
    pub fn sign_in_guard(&self) -> &crate::web::SignInGuard {
        &self.sign_in
    }

    /// The periods it keeps.
    pub fn intervals(&self) -> &Intervals {
        &self.cfg.intervals
    }

    /// An experiment's id and row, by id or name.
    async fn experiment(
        &self,
        key: &str,
    ) -> Result<(i64, crate::store::ExperimentRow), QueryError> {
        let id = self.store.resolve_experiment(key).await?;
        let row = self
            .store
            .experiments(Some(id))
            .await?
            .pop()
            .ok_or_else(|| QueryError::NotFound("experiment vanished".into()))?;
        Ok((id, row))
    }

    /// A registered worker as its claims see it (read once per session).
    async fn claimant(&self, id: i64) -> Result<crate::store::Claimant, Status> {
        self.store
            .claimant(id)
            .await
            .map_err(status)?
            .ok_or_else(|| Status::not_found("unknown worker; register again"))
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

    /// A checkpoint's bytes as a stream of 1 MiB chunks, the first carrying the total size and
    /// the sha256: what workers (inputs) and users (`plume download`) both receive.
    async fn checkpoint_download(
        &self,
        r: pb::DownloadRequest,
    ) -> Result<BoxStream<pb::DataChunk>, Status> {
        let (data, sha, step) = self
            .store
            .checkpoint_bytes(r.checkpoint_id, r.with_state)
            .await
            .map_err(status)?;
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
        Ok(Box::pin(tokio_stream::iter(chunks)))
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Serves both services on `addr` until `shutdown` resolves; runs the lease rescuer alongside.
pub async fn serve(
    coordinator: Coordinator,
    listener: tokio::net::TcpListener,
    tls: Option<tonic::transport::ServerTlsConfig>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let rescuer = tokio::spawn(coordinator.clone().rescuer());
    let (worker, user) = coordinator.services();
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(coordinator.cfg.intervals.keepalive));
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
    rescuer.abort();
    Ok(result?)
}
