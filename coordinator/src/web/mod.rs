//! The web dashboard: a JSON API over the same queries as the gRPC `UserApi`, live metric
//! streams as server-sent events, and a single-page front end whose files are compiled into
//! the binary (no CDN, nothing fetched at run time).
//!
//! Every `/api` route but `login` needs the user token, as a bearer header (scripts, the
//! CLI) or as the `HttpOnly`, `SameSite=Strict` cookie that `POST /api/login` sets (the
//! browser: `EventSource` cannot send headers). A mutation authenticated by cookie must also
//! carry `X-Plume-Request: 1`, which a cross-site form cannot add. See `docs/api.md`.

pub mod api;
pub mod assets;
mod sign_in;
pub mod stream;
mod tls;

pub use sign_in::SignInGuard;
pub use tls::{serve_tls, server_config};

use crate::server::Coordinator;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::net::{IpAddr, SocketAddr};

/// Name of the session cookie holding the user token.
pub const COOKIE: &str = "plume_token";
/// Header a cookie-authenticated mutation must carry (cross-site requests cannot set it).
pub const CSRF_HEADER: &str = "x-plume-request";

/// Errors of the JSON API: a status code and a message, sent as `{"error": "..."}`.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// HTTP status.
    pub code: StatusCode,
    /// What went wrong, for a person.
    pub message: String,
}

impl ApiError {
    /// A 400 with `message`.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            code: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
}

impl From<crate::server::QueryError> for ApiError {
    fn from(e: crate::server::QueryError) -> Self {
        use crate::server::QueryError as Q;
        let code = match &e {
            Q::NotFound(_) => StatusCode::NOT_FOUND,
            Q::Invalid(_) | Q::Stale(_) => StatusCode::BAD_REQUEST,
            Q::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Q::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError {
            code,
            message: e.to_string(),
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        crate::server::QueryError::from(e).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.code,
            axum::Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

/// `Query<T>` whose rejection (an unknown or malformed parameter) is an [`ApiError`], so
/// every error of the API has the same JSON shape.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e| ApiError::bad_request(e.body_text()))
    }
}

/// The whole dashboard: pages, assets and the JSON API.
pub fn router(coordinator: Coordinator) -> Router {
    let api = Router::new()
        .route("/experiments", get(api::experiments).post(api::submit))
        .route("/experiments/{exp}", get(api::experiment))
        .route("/experiments/{exp}/cancel", post(api::cancel))
        .route("/experiments/{exp}/rerun", post(api::rerun))
        .route("/experiments/{exp}/best", get(api::best))
        .route("/experiments/{exp}/stream", get(stream::stream))
        .route("/experiments/{exp}/runs/{run}", get(api::run))
        .route("/experiments/{exp}/runs/{run}/curves", get(api::curves))
        .route("/experiments/{exp}/runs/{run}/logs", get(api::logs))
        .route("/checkpoints/{id}/file", get(api::checkpoint_file))
        .route("/artifacts/{id}", get(api::artifact))
        .route("/logout", post(api::logout))
        .route_layer(axum::middleware::from_fn_with_state(
            coordinator.clone(),
            require_user,
        ))
        .route("/login", post(api::login))
        // Experiment files are small (the parser refuses more than 1 MiB anyway).
        .layer(axum::extract::DefaultBodyLimit::max(2 << 20));
    Router::new()
        .nest("/api", api)
        .merge(assets::routes())
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(coordinator)
}

/// Serves the dashboard on `listener` until `shutdown` resolves.
pub async fn serve(
    coordinator: Coordinator,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Each connection's peer address reaches the handlers (failed sign-ins are counted by it).
    let app = router(coordinator).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// A 429 with `Retry-After` while `ip` has used up its failed sign-ins.
fn sign_in_refusal(c: &Coordinator, ip: IpAddr) -> Option<Response> {
    c.sign_in_guard().check(ip).err().map(|wait| {
        let secs = wait.as_secs() + 1;
        let message = format!("too many wrong tokens from this address; try again in {secs} s");
        (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, secs.to_string())],
            axum::Json(serde_json::json!({ "error": message })),
        )
            .into_response()
    })
}

/// The token a request presents: `Authorization: Bearer` first, then the session cookie.
/// The second value says whether it came from the cookie.
fn presented_token(headers: &HeaderMap) -> Option<(&str, bool)> {
    if let Some(t) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return Some((t.trim(), false));
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| (v, true))
}

async fn require_user(
    State(c): State<Coordinator>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(refused) = sign_in_refusal(&c, peer.ip()) {
        return Ok(refused);
    }
    let Some((token, from_cookie)) = presented_token(req.headers()) else {
        return Err(ApiError {
            code: StatusCode::UNAUTHORIZED,
            message: "sign in with the user token".into(),
        });
    };
    if !c.is_user_token(token) {
        c.sign_in_guard().failed(peer.ip());
        return Err(ApiError {
            code: StatusCode::UNAUTHORIZED,
            message: "invalid user token".into(),
        });
    }
    let mutation = !matches!(*req.method(), Method::GET | Method::HEAD);
    if mutation && from_cookie && !req.headers().contains_key(CSRF_HEADER) {
        return Err(ApiError {
            code: StatusCode::FORBIDDEN,
            message: format!(
                "a change made with the session cookie needs the {CSRF_HEADER} header"
            ),
        });
    }
    Ok(next.run(req).await)
}

/// Headers every response carries: the page may run only its own scripts, never be framed.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; \
             connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("no-referrer"),
    );
    res
}
