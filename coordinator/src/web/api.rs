//! Handlers of the JSON API (documented in `docs/api.md`). Experiment-level answers are the
//! gRPC replies serialised as JSON (one implementation in `server`); run pages, curves and
//! files are read from the store here.

use super::{ApiError, ApiQuery, COOKIE};
use crate::downsample::{self, Method};
use crate::server::Coordinator;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;

type ApiResult<T> = Result<T, ApiError>;

/// `GET /api/experiments`.
pub async fn experiments(State(c): State<Coordinator>) -> ApiResult<Json<Value>> {
    Ok(Json(json!(c.list().await?)))
}

/// `GET /api/experiments/{exp}`: runs with method, params, needs, attempts and summaries.
pub async fn experiment(
    State(c): State<Coordinator>,
    Path(exp): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(c.detail(&exp).await?)))
}

/// Query of `POST /api/experiments`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitQuery {
    /// Validate and expand only.
    #[serde(default)]
    pub dry_run: bool,
    /// File name for error messages.
    #[serde(default)]
    pub file: Option<String>,
    /// Add the file's new runs to this experiment (id or name).
    #[serde(default)]
    pub extend: Option<String>,
}

/// `POST /api/experiments` with the experiment YAML as the body.
pub async fn submit(
    State(c): State<Coordinator>,
    ApiQuery(q): ApiQuery<SubmitQuery>,
    body: String,
) -> ApiResult<Json<Value>> {
    let file = q.file.unwrap_or_else(|| "experiment.yaml".into());
    Ok(Json(json!(
        c.submit(&file, &body, q.dry_run, q.extend.as_deref())
            .await?
    )))
}

/// Query of `POST /api/experiments/{exp}/cancel`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelQuery {
    /// Only this run.
    #[serde(default)]
    pub run: String,
}

/// `POST /api/experiments/{exp}/cancel[?run=]`.
pub async fn cancel(
    State(c): State<Coordinator>,
    Path(exp): Path<String>,
    ApiQuery(q): ApiQuery<CancelQuery>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(c.cancel_runs(&exp, &q.run).await?)))
}

/// Query of `POST /api/experiments/{exp}/rerun`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RerunQuery {
    /// Only this run.
    #[serde(default)]
    pub run: String,
    /// Cancelled runs too.
    #[serde(default)]
    pub cancelled: bool,
}

/// `POST /api/experiments/{exp}/rerun[?run=][&cancelled=true]`: requeues failed runs.
pub async fn rerun(
    State(c): State<Coordinator>,
    Path(exp): Path<String>,
    ApiQuery(q): ApiQuery<RerunQuery>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(c.rerun_runs(&exp, &q.run, q.cancelled).await?)))
}

/// Query of `GET /api/experiments/{exp}/best`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BestQuery {
    /// Rank by this metric (default: the objective).
    #[serde(default)]
    pub metric: String,
    /// How many (default 5, at most 1000).
    #[serde(default)]
    pub top: u32,
}

/// `GET /api/experiments/{exp}/best`.
pub async fn best(
    State(c): State<Coordinator>,
    Path(exp): Path<String>,
    ApiQuery(q): ApiQuery<BestQuery>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(c.best(&exp, &q.metric, q.top).await?)))
}

async fn run_id(c: &Coordinator, exp: &str, run: &str) -> ApiResult<(i64, i64)> {
    let e = c.store().resolve_experiment(exp).await?;
    let r = c.store().resolve_run(e, run).await?;
    Ok((e, r))
}

/// A checkpoint as the run page lists it.
#[derive(Debug, Serialize)]
struct CheckpointJson {
    id: i64,
    step: i64,
    attempt: i32,
    size: i64,
    state_size: i64,
    state_dropped: bool,
    sha256: String,
    objective: Option<f64>,
    created_unix: i64,
    metrics: BTreeMap<String, f64>,
}

/// `GET /api/experiments/{exp}/runs/{run}`: the run (as in the experiment), its
/// checkpoints with every metric at their steps, and its pictures.
pub async fn run(
    State(c): State<Coordinator>,
    Path((exp, run)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let (summary, objective) = c.run_detail(&exp, &run).await?;
    let id = summary.id;
    let store = c.store();
    let mut checkpoints = Vec::new();
    for k in store.checkpoints(id).await? {
        checkpoints.push(CheckpointJson {
            metrics: store.metrics_at(id, k.step).await?,
            id: k.id,
            step: k.step,
            attempt: k.attempt,
            size: k.size,
            state_size: k.state_size,
            state_dropped: k.state_dropped,
            sha256: k.sha256,
            objective: k.objective,
            created_unix: k.created,
        });
    }
    let artifacts: Vec<Value> = store
        .artifacts(id)
        .await?
        .into_iter()
        .map(|a| json!({"id": a.id, "name": a.name, "step": a.step, "size": a.size}))
        .collect();
    Ok(Json(json!({
        "experiment": exp,
        "objective": objective,
        "run": summary,
        "checkpoints": checkpoints,
        "artifacts": artifacts,
    })))
}

/// Query of `GET .../curves`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CurveQuery {
    /// Comma-separated metric names (empty: all).
    #[serde(default)]
    pub names: String,
    /// Most points per curve (default 2000, 10 to 20 000).
    #[serde(default)]
    pub points: Option<usize>,
    /// `minmax` (default) or `lttb`.
    #[serde(default)]
    pub method: Option<String>,
    /// Only steps at or after this.
    #[serde(default)]
    pub from: Option<i64>,
    /// Only steps at or before this.
    #[serde(default)]
    pub to: Option<i64>,
}

/// One downsampled curve.
#[derive(Debug, Serialize)]
pub struct CurveJson {
    /// Steps.
    pub steps: Vec<i64>,
    /// Values (non-finite ones as `null`).
    pub values: Vec<f64>,
    /// Unix seconds each point was stored.
    pub times: Vec<f64>,
    /// Points stored (in the chunks the requested range touches).
    pub total: usize,
    /// Whether this was reduced from the chunks' stored overviews (which keep every
    /// extreme of each 64-point bucket) rather than from every point.
    pub from_overview: bool,
}

/// The curves of a run, downsampled, with the cursor a live stream resumes from.
#[derive(Debug, Serialize)]
pub struct CurvesJson {
    /// The run's stream cursor at the time of this read.
    pub cursor: i64,
    /// Downsampling used.
    pub method: &'static str,
    /// By metric.
    pub curves: BTreeMap<String, CurveJson>,
}

/// Reads and downsamples curves of one run: the work behind `GET .../curves`.
async fn load_curves(
    c: &Coordinator,
    run: i64,
    names: &[String],
    q: &CurveQuery,
) -> ApiResult<CurvesJson> {
    let points = q.points.unwrap_or(2000).clamp(10, 20_000);
    let method: Method = q
        .method
        .as_deref()
        .unwrap_or("minmax")
        .parse()
        .map_err(ApiError::bad_request)?;
    let read = c
        .store()
        .timed_curves(run, names, (q.from, q.to), points)
        .await?;
    let curves = read
        .curves
        .into_iter()
        .map(|(name, s)| {
            let xs: Vec<f64> = s.steps.iter().map(|&x| x as f64).collect();
            let keep = downsample::keep(&s.values, &xs, points, method);
            let curve = CurveJson {
                steps: keep.iter().map(|&i| s.steps[i]).collect(),
                values: keep.iter().map(|&i| s.values[i]).collect(),
                times: keep.iter().map(|&i| s.times[i]).collect(),
                total: read.totals.get(&name).copied().unwrap_or(s.steps.len()),
                from_overview: read.overview.contains(&name),
            };
            (name, curve)
        })
        .collect();
    Ok(CurvesJson {
        cursor: read.cursor,
        method: match method {
            Method::MinMax => "minmax",
            Method::Lttb => "lttb",
        },
        curves,
    })
}

/// `GET /api/experiments/{exp}/runs/{run}/curves?names=&points=&method=&from=&to=`.
pub async fn curves(
    State(c): State<Coordinator>,
    Path((exp, run)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<CurveQuery>,
) -> ApiResult<Json<CurvesJson>> {
    let (_, id) = run_id(&c, &exp, &run).await?;
    let names: Vec<String> = q
        .names
        .split(',')
        .filter(|n| !n.is_empty())
        .map(String::from)
        .collect();
    Ok(Json(load_curves(&c, id, &names, &q).await?))
}

/// Query of `GET .../logs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    /// Last lines (default 200).
    #[serde(default)]
    pub tail: u32,
}

/// `GET /api/experiments/{exp}/runs/{run}/logs?tail=`.
pub async fn logs(
    State(c): State<Coordinator>,
    Path((exp, run)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<LogsQuery>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(c.log_tail(&exp, &run, q.tail).await?)))
}

/// A file name made only of `[A-Za-z0-9._-]` (run names hold `@`, `=` and `,`).
fn safe_file_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Query of `GET /api/checkpoints/{id}/file`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileQuery {
    /// The whole file with its resume state (default: the weights alone).
    #[serde(default)]
    pub with_state: bool,
}

/// `GET /api/checkpoints/{id}/file[?with_state=true]`: the checkpoint's bytes (weights only
/// by default), checked against its SHA-256.
pub async fn checkpoint_file(
    State(c): State<Coordinator>,
    Path(id): Path<i64>,
    ApiQuery(q): ApiQuery<FileQuery>,
) -> ApiResult<Response> {
    let (exp, run) = c.store().checkpoint_owner(id).await?;
    let (data, sha, step) = c.store().checkpoint_bytes(id, q.with_state).await?;
    let name = safe_file_name(&format!("{exp}-{run}-step{step}.ckpt"));
    let mut res = Response::new(Body::from(data));
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&sha) {
        h.insert("x-checkpoint-sha256", v);
    }
    Ok(res)
}

/// `GET /api/artifacts/{id}`: a stored picture (immutable, so cached).
pub async fn artifact(State(c): State<Coordinator>, Path(id): Path<i64>) -> ApiResult<Response> {
    let data = c.store().artifact_bytes(id).await?;
    let kind = if data.starts_with(b"\x89PNG\r\n\x1a\n") {
        "image/png"
    } else {
        "application/octet-stream"
    };
    Ok((
        [
            (header::CONTENT_TYPE, kind),
            (
                header::CACHE_CONTROL,
                "private, max-age=31536000, immutable",
            ),
        ],
        data,
    )
        .into_response())
}

/// Body of `POST /api/login`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    /// The user token.
    pub token: String,
}

/// `POST /api/login {"token": ...}`: checks the token and sets the session cookie.
pub async fn login(
    State(c): State<Coordinator>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    body: String,
) -> ApiResult<Response> {
    if let Some(refused) = super::sign_in_refusal(&c, peer.ip()) {
        return Ok(refused);
    }
    let l: Login = serde_json::from_str(&body)
        .map_err(|e| ApiError::bad_request(format!("expected {{\"token\": \"...\"}}: {e}")))?;
    if !c.is_user_token(l.token.trim()) {
        c.sign_in_guard().failed(peer.ip());
        return Err(ApiError {
            code: StatusCode::UNAUTHORIZED,
            message: "invalid user token".into(),
        });
    }
    let cookie = format!(
        "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age=2592000",
        l.token.trim()
    );
    let value = HeaderValue::from_str(&cookie)
        .map_err(|_| ApiError::bad_request("the token has characters a cookie cannot hold"))?;
    Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, value)]).into_response())
}

/// `POST /api/logout`: clears the session cookie.
pub async fn logout() -> Response {
    (
        StatusCode::NO_CONTENT,
        [(
            header::SET_COOKIE,
            format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
        )],
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::safe_file_name;

    #[test]
    fn file_names_lose_hostile_characters() {
        assert_eq!(
            safe_file_name("q-m3@losses.preservation=0,lr=1e-3-step4.ckpt"),
            "q-m3_losses.preservation_0_lr_1e-3-step4.ckpt"
        );
        assert_eq!(safe_file_name("a\"\r\n/../b"), "a____.._b");
    }
}
