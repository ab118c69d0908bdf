//! The REST API (`weir serve`): modules and jobs over HTTP, JSON, under
//! `/v1`, described by `GET /v1/openapi.json`.
//!
//! Rules:
//! - Every call that changes something needs `Authorization: Bearer
//!   <token>`; reads do not. The token is given to [`Server::open`] or read
//!   from (or generated into) `<data dir>/token` at first start.
//! - Bodies are limited ([`MODULE_BODY_LIMIT`], [`SPEC_BODY_LIMIT`]);
//!   larger ones get 413 before they are read.
//! - Errors are `{"error": "..."}` naming what was wrong, with 400 (bad
//!   input), 401 (no or wrong token), 404 (unknown name), 409 (conflict:
//!   a job of that name runs, a module in use), 500 (the server's fault).
//! - Blocking work (compiling a module, waiting for a savepoint) runs on
//!   the blocking pool, never on the request threads.
//! - `/` serves the web dashboard ([`dashboard`]), a client of this API
//!   like any other.

pub mod dashboard;
pub mod jobs;
pub mod logs;
pub mod registry;
pub mod view;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use jobs::{JobManager, JobsError, Submit};
use registry::{ModuleRegistry, RegistryError};

use crate::runtime::{JobEnv, SwapError};

/// Largest module upload.
pub const MODULE_BODY_LIMIT: usize = 64 << 20;
/// Largest job spec.
pub const SPEC_BODY_LIMIT: usize = 1 << 20;

/// An API error: status and message.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        let status = match &e {
            RegistryError::BadName(_) | RegistryError::Module(_) => StatusCode::BAD_REQUEST,
            RegistryError::NotFound(_) | RegistryError::NoVersion { .. } => StatusCode::NOT_FOUND,
            RegistryError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

impl From<JobsError> for ApiError {
    fn from(e: JobsError) -> Self {
        let status = match &e {
            // A spec naming an unknown module is a bad spec, not a 404.
            JobsError::Spec(_)
            | JobsError::LocalModule(_)
            | JobsError::Module { .. }
            | JobsError::SavepointTarget(_) => StatusCode::BAD_REQUEST,
            JobsError::Running(_) | JobsError::NotRunning(_) | JobsError::StopTimeout(_) => {
                StatusCode::CONFLICT
            }
            JobsError::NotFound(_) | JobsError::NoOperator { .. } => StatusCode::NOT_FOUND,
            JobsError::Job(crate::runtime::JobError::Spec(_))
            | JobsError::Job(crate::runtime::JobError::Module { .. })
            | JobsError::Job(crate::runtime::JobError::Checkpoint(_))
            | JobsError::Checkpoint(_) => StatusCode::BAD_REQUEST,
            JobsError::Swap { source, .. } => match source {
                SwapError::NoOperator(_) => StatusCode::NOT_FOUND,
                SwapError::NotWasm(_) | SwapError::NoCheckpoints => StatusCode::BAD_REQUEST,
                SwapError::Busy(_) | SwapError::NotRunning => StatusCode::CONFLICT,
            },
            JobsError::Job(_) | JobsError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

struct AppState {
    token: String,
    env: JobEnv,
    registry: Arc<ModuleRegistry>,
    jobs: JobManager,
}

type Shared = Arc<AppState>;

fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(t) if constant_time_eq(t.as_bytes(), state.token.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError(StatusCode::UNAUTHORIZED, "wrong token".into())),
        None => Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "this call changes the server: send `Authorization: Bearer <token>`".into(),
        )),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("worker failed: {e}"),
        )
    })?
}

#[derive(Deserialize)]
struct UploadQuery {
    name: String,
}

async fn upload_module(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<UploadQuery>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    authorize(&state, &headers)?;
    let s = state.clone();
    let info = blocking(move || Ok(s.registry.upload(&s.env.wasm, &q.name, &body)?)).await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::to_value(info).expect("serializes")),
    ))
}

async fn list_modules(State(state): State<Shared>) -> Json<serde_json::Value> {
    Json(serde_json::to_value(state.registry.list()).expect("serializes"))
}

async fn get_module(
    State(state): State<Shared>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let versions = state.registry.versions(&name)?;
    Ok(Json(
        serde_json::json!({ "name": name, "versions": versions }),
    ))
}

async fn delete_module(
    State(state): State<Shared>,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
) -> Result<StatusCode, ApiError> {
    authorize(&state, &headers)?;
    if let Some(job) = state.jobs.uses_module(&name) {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("module `{name}` is used by running job `{job}`"),
        ));
    }
    state.registry.delete(&name)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn submit_job(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(options): Query<Submit>,
    body: String,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    authorize(&state, &headers)?;
    let s = state.clone();
    let info = blocking(move || Ok(s.jobs.submit(&body, &options)?)).await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::to_value(info).expect("serializes")),
    ))
}

async fn list_jobs(State(state): State<Shared>) -> Json<serde_json::Value> {
    Json(serde_json::to_value(state.jobs.list()).expect("serializes"))
}

async fn get_job(
    State(state): State<Shared>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let s = state.clone();
    let job = name.clone();
    let checkpoints = blocking(move || Ok(s.jobs.checkpoints(&job)?)).await?;
    let info = state.jobs.get(&name)?;
    let mut answer = serde_json::to_value(&info).expect("serializes");
    answer["latest_checkpoint"] = checkpoints.last().copied().into();
    // The graph and the live figures (throughput counters, watermarks,
    // backpressure) in the same answer as the state: one call shows a job.
    if let Ok((spec, modules)) = state.jobs.spec(&name) {
        let values = crate::metrics::metrics().job_values(&name);
        let figures = view::figures(&spec, &values, info.records_in, crate::time::now_millis());
        answer["graph"] = serde_json::to_value(view::graph(&spec, &modules)).expect("serializes");
        answer["figures"] = serde_json::to_value(figures).expect("serializes");
    }
    Ok(Json(answer))
}

async fn job_checkpoints(
    State(state): State<Shared>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let s = state.clone();
    let job = name.clone();
    let ids = blocking(move || Ok(s.jobs.checkpoints(&job)?)).await?;
    let history = crate::checkpoint::history::history().of(&name);
    Ok(Json(
        serde_json::json!({ "complete": ids, "history": history }),
    ))
}

async fn job_logs(
    State(state): State<Shared>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.jobs.get(&name)?;
    Ok(Json(
        serde_json::json!({ "lines": logs::job_logs().of(&name) }),
    ))
}

async fn job_graph(
    State(state): State<Shared>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<view::JobGraph>, ApiError> {
    let (spec, modules) = state.jobs.spec(&name)?;
    Ok(Json(view::graph(&spec, &modules)))
}

async fn job_figures(
    State(state): State<Shared>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<view::JobFigures>, ApiError> {
    let (spec, _) = state.jobs.spec(&name)?;
    let info = state.jobs.get(&name)?;
    let values = crate::metrics::metrics().job_values(&name);
    Ok(Json(view::figures(
        &spec,
        &values,
        info.records_in,
        crate::time::now_millis(),
    )))
}

async fn job_savepoints(
    State(state): State<Shared>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let s = state.clone();
    let savepoints = blocking(move || Ok(s.jobs.savepoints(&name)?)).await?;
    Ok(Json(serde_json::json!({ "savepoints": savepoints })))
}

#[derive(Deserialize)]
struct SavepointQuery {
    /// Where the savepoint goes instead of the data folder.
    target: Option<PathBuf>,
}

async fn savepoint(
    state: Shared,
    headers: HeaderMap,
    name: String,
    stop: bool,
    target: Option<PathBuf>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&state, &headers)?;
    let s = state.clone();
    let path = blocking(move || Ok(s.jobs.savepoint(&name, stop, target)?)).await?;
    Ok(Json(serde_json::json!({ "savepoint": path })))
}

async fn take_savepoint(
    State(state): State<Shared>,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
    Query(query): Query<SavepointQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    savepoint(state, headers, name, false, query.target).await
}

async fn stop_job(
    State(state): State<Shared>,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
    Query(query): Query<SavepointQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    savepoint(state, headers, name, true, query.target).await
}

#[derive(Deserialize)]
struct ResumeQuery {
    savepoint: Option<PathBuf>,
    parallelism: Option<u32>,
}

async fn resume_job(
    State(state): State<Shared>,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
    Query(query): Query<ResumeQuery>,
) -> Result<(StatusCode, Json<jobs::JobInfo>), ApiError> {
    authorize(&state, &headers)?;
    let s = state.clone();
    let info =
        blocking(move || Ok(s.jobs.resume(&name, query.savepoint, query.parallelism)?)).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

#[derive(Deserialize)]
struct RescaleQuery {
    parallelism: u32,
}

async fn rescale_job(
    State(state): State<Shared>,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
    Query(query): Query<RescaleQuery>,
) -> Result<Json<jobs::JobInfo>, ApiError> {
    authorize(&state, &headers)?;
    let s = state.clone();
    let info = blocking(move || Ok(s.jobs.rescale(&name, query.parallelism)?)).await?;
    Ok(Json(info))
}

#[derive(Deserialize)]
struct UpgradeQuery {
    /// Registry module, `name` (latest) or `name@version`.
    module: String,
    /// How long the new version must run without failing; default 3s.
    probation: Option<String>,
}

async fn upgrade_operator(
    State(state): State<Shared>,
    headers: HeaderMap,
    UrlPath((name, operator)): UrlPath<(String, String)>,
    Query(query): Query<UpgradeQuery>,
) -> Result<Json<jobs::UpgradeOutcome>, ApiError> {
    authorize(&state, &headers)?;
    let probation = match &query.probation {
        Some(text) => crate::graph::spec::parse_duration(text).map_err(|problem| {
            ApiError::from(JobsError::Spec(crate::graph::SpecError::Invalid {
                field: "probation".into(),
                problem,
            }))
        })?,
        None => std::time::Duration::from_secs(3),
    };
    let s = state.clone();
    let outcome =
        blocking(move || Ok(s.jobs.upgrade(&name, &operator, &query.module, probation)?)).await?;
    Ok(Json(outcome))
}

async fn cancel_job(
    State(state): State<Shared>,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
) -> Result<StatusCode, ApiError> {
    authorize(&state, &headers)?;
    state.jobs.cancel(&name)?;
    Ok(StatusCode::ACCEPTED)
}

async fn openapi() -> Json<serde_json::Value> {
    Json(serde_json::from_str(OPENAPI).expect("the OpenAPI document is JSON"))
}

const OPENAPI: &str = include_str!("openapi.json");

async fn prometheus_metrics() -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::metrics().render(),
    )
}

/// A configured server: its routes and state, not yet listening.
pub struct Server {
    pub token: String,
    /// True when the token was generated now (print it once).
    pub token_generated: bool,
    router: Router,
    jobs_state: Shared,
}

impl Server {
    /// Opens the data folder (registry, job records, token) and resubmits
    /// the jobs that were running.
    pub fn open(data_dir: &Path, env: JobEnv, token: Option<String>) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let (token, token_generated) = match token {
            Some(t) => (t, false),
            None => load_or_make_token(&data_dir.join("token"))?,
        };
        let registry = Arc::new(ModuleRegistry::open(data_dir)?);
        let jobs = JobManager::new(data_dir, env.clone(), registry.clone());
        let state = Arc::new(AppState {
            token: token.clone(),
            env,
            registry,
            jobs,
        });
        let router = Router::new()
            .route("/v1/health", get(|| async { "ok" }))
            // Open like the health check, for scrapers: counts and timings,
            // no record contents.
            .route("/metrics", get(prometheus_metrics))
            .route("/v1/openapi.json", get(openapi))
            .route(
                "/v1/modules",
                post(upload_module)
                    .layer(DefaultBodyLimit::max(MODULE_BODY_LIMIT))
                    .get(list_modules),
            )
            .route("/v1/modules/{name}", get(get_module).delete(delete_module))
            .route(
                "/v1/jobs",
                post(submit_job)
                    .layer(DefaultBodyLimit::max(SPEC_BODY_LIMIT))
                    .get(list_jobs),
            )
            .route("/v1/jobs/{name}", get(get_job))
            .route("/v1/jobs/{name}/checkpoints", get(job_checkpoints))
            .route("/v1/jobs/{name}/logs", get(job_logs))
            .route("/v1/jobs/{name}/graph", get(job_graph))
            .route("/v1/jobs/{name}/figures", get(job_figures))
            .route("/v1/jobs/{name}/savepoints", get(job_savepoints))
            .route("/v1/jobs/{name}/savepoint", post(take_savepoint))
            .route("/v1/jobs/{name}/stop", post(stop_job))
            .route("/v1/jobs/{name}/cancel", post(cancel_job))
            .route("/v1/jobs/{name}/rescale", post(rescale_job))
            .route("/v1/jobs/{name}/resume", post(resume_job))
            .route(
                "/v1/jobs/{name}/operators/{operator}/upgrade",
                post(upgrade_operator),
            )
            .merge(dashboard::routes())
            .with_state(state.clone());
        Ok(Server {
            token,
            token_generated,
            router,
            jobs_state: state,
        })
    }

    /// Serves until `shutdown` resolves; resumes the recorded jobs first.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let state = self.jobs_state.clone();
        tokio::task::spawn_blocking(move || state.jobs.resume_all())
            .await
            .map_err(std::io::Error::other)?;
        axum::serve(listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
    }
}

fn load_or_make_token(path: &Path) -> anyhow::Result<(String, bool)> {
    if let Ok(t) = std::fs::read_to_string(path) {
        return Ok((t.trim().to_owned(), false));
    }
    let mut bytes = [0u8; 24];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
    let token = hex::encode(bytes);
    std::fs::write(path, &token)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok((token, true))
}

/// Where `weir serve` listens and keeps its data, by default.
pub fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

pub fn default_data_dir() -> PathBuf {
    PathBuf::from("weir-data")
}
