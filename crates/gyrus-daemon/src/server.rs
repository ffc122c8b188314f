//! The daemon's HTTP surface on `GYRUS_ADDR`: the control API under `/_gyrus/v1` (what the CLI
//! calls) and, for every other path, the gateway.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use gyrus_gateway::Gateway;
use serde::Deserialize;

use crate::api::{DeployResponse, Health, API_PREFIX, FETCH_ENV_HEADER};
use crate::error::DaemonError;
use crate::home::GyrusHome;
use crate::model_source::{FetchContext, ModelSources};
use crate::project;
use crate::pyenv::PythonEnvs;
use crate::state::StateStore;
use crate::supervisor::Supervisor;

pub struct AppState {
    pub home: GyrusHome,
    /// Who may use the control API.
    pub guard: crate::auth::ControlGuard,
    pub addr: String,
    pub state: Arc<StateStore>,
    pub supervisor: Arc<Supervisor>,
    pub gateway: Gateway,
    /// The gateway's route table, where batch APIs' endpoints are found.
    pub routes: Arc<gyrus_gateway::RouteTable>,
    pub jobs: Arc<crate::jobs::JobService>,
    pub shutdown: tokio::sync::Notify,
    /// Set when the daemon begins to stop: long-lived responses (`logs -f`) end.
    pub stopping: std::sync::atomic::AtomicBool,
    /// Deploy, refresh and delete.
    pub deploys: crate::deploy::DeployService,
    pub envs: Arc<PythonEnvs>,
    pub sources: Arc<ModelSources>,
    pub compute: Arc<gyrus_compute::Compute>,
    /// This executable, for `gyrus inspect-model`.
    pub self_exe: std::path::PathBuf,
    /// Uploads (deploys, model saves and imports) being received at once.
    pub uploads: Arc<tokio::sync::Semaphore>,
    /// Metrics and the dashboard's series.
    pub telemetry: Arc<crate::telemetry::Telemetry>,
    /// The dashboard's sign-in codes and browser sessions.
    pub sessions: crate::dashboard::Sessions,
    /// X-Request-IDs for what the daemon answers itself.
    pub request_ids: gyrus_launch::telemetry::RequestIds,
}

/// Uploads received at once; more are refused with 503 and Retry-After rather than queued, so
/// a flood of large bodies costs the daemon disk bandwidth for two at most.
pub const MAX_CONCURRENT_UPLOADS: usize = 2;

impl AppState {
    /// A slot to receive an upload, or 503 when [`MAX_CONCURRENT_UPLOADS`] are under way.
    pub fn upload_permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, DaemonError> {
        self.uploads
            .clone()
            .try_acquire_owned()
            .map_err(|_| DaemonError::Busy {
                message: format!(
                    "{MAX_CONCURRENT_UPLOADS} uploads are already being received; retry in a few seconds"
                ),
                retry_after_secs: 5,
            })
    }
}

/// API names come from URLs here: hold them to the spec's rule before they touch a path.
pub(crate) fn check_name(name: &str) -> Result<(), DaemonError> {
    gyrus_spec::check_api_name(name).map_err(|e| DaemonError::BadRequest(format!("API name {e}")))
}

/// A header written with [`crate::api::encode_header`]; `None` when absent.
pub(crate) fn json_header<T: serde::de::DeserializeOwned>(
    headers: &axum::http::HeaderMap,
    name: &str,
) -> Result<Option<T>, DaemonError> {
    headers
        .get(name)
        .map(|v| {
            crate::api::decode_header(v.as_bytes())
                .map_err(|e| DaemonError::BadRequest(format!("header {name}: {e}")))
        })
        .transpose()
}

pub fn router(app: Arc<AppState>) -> Router {
    // Every route needs the token except health, which answers a bare "ok" without one; the
    // browser checks come first and cover health too.
    let control = Router::new()
        .route("/deploy", post(deploy))
        .route("/apis", get(list_apis))
        .route("/apis/{name}", get(get_api).delete(delete_api))
        .route("/apis/{name}/refresh", post(refresh_api))
        .route("/apis/{name}/logs", get(logs))
        .route("/apis/{name}/series", get(crate::observe_api::series))
        .route("/dashboard/login", post(crate::dashboard::login_link))
        .route("/shutdown", post(shutdown))
        .merge(crate::store_api::routes())
        .merge(crate::jobs_api::routes())
        .route_layer(axum::middleware::from_fn_with_state(
            app.clone(),
            require_token,
        ))
        .route("/health", get(health))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            refuse_browsers,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(
            project::MAX_ARCHIVE_BYTES,
        ));
    use crate::dashboard::{self, UI_PATH};
    let ui = Router::new()
        .route(UI_PATH, get(dashboard::page))
        .route(&format!("{UI_PATH}/login"), get(dashboard::login))
        .route(&format!("{UI_PATH}/{{*file}}"), get(dashboard::asset))
        .route(&format!("{UI_PATH}/"), get(dashboard::page))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            refuse_browsers,
        ));
    // Prometheus sends no Origin; a page rebinding its name to this address cannot pass Host.
    let metrics = Router::new()
        .route("/metrics", get(crate::observe_api::metrics))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            refuse_browsers,
        ));
    Router::new()
        .nest(API_PREFIX, control)
        .merge(ui)
        .merge(metrics)
        .fallback(gateway)
        .with_state(app)
}

async fn gateway(State(app): State<Arc<AppState>>, req: Request) -> Response {
    // Replicas give the requests they answer an X-Request-ID; what the daemon answers itself
    // (no ready replica, unknown paths, batch submissions) gets one here.
    let client_id = req
        .headers()
        .get(REQUEST_ID)
        .filter(|v| gyrus_launch::telemetry::valid_request_id(v.as_bytes()))
        .cloned();
    let mut response = route_gateway(&app, req).await;
    if !response.headers().contains_key(REQUEST_ID) {
        let id = client_id.unwrap_or_else(|| {
            axum::http::HeaderValue::from_bytes(&app.request_ids.make())
                .unwrap_or(axum::http::HeaderValue::from_static("0"))
        });
        response.headers_mut().insert(REQUEST_ID, id);
    }
    response
}

const REQUEST_ID: axum::http::HeaderName = axum::http::HeaderName::from_static("x-request-id");

async fn route_gateway(app: &Arc<AppState>, req: Request) -> Response {
    if let Some(api) = app.routes.batch_api(req.uri().path()) {
        // Submitting a job runs code on this machine: the control API's rules apply.
        if let Err(e) = app
            .guard
            .refuse_browsers(req.method(), req.headers())
            .and_then(|()| app.guard.require_token(req.headers()))
        {
            return refused(e);
        }
        return crate::jobs_api::endpoint(app.clone(), api, req)
            .await
            .unwrap_or_else(IntoResponse::into_response);
    }
    app.gateway.handle(req).await.map(Body::new)
}

async fn refuse_browsers(
    State(app): State<Arc<AppState>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    match app.guard.refuse_browsers(req.method(), req.headers()) {
        Ok(()) => next.run(req).await,
        Err(e) => refused(e),
    }
}

/// The token; or, for reads only, the dashboard's session cookie (`dashboard`).
async fn require_token(
    State(app): State<Arc<AppState>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let reads = matches!(*req.method(), Method::GET | Method::HEAD);
    if reads && app.sessions.is_signed_in(req.headers()) {
        return next.run(req).await;
    }
    match app.guard.require_token(req.headers()) {
        Ok(()) => next.run(req).await,
        Err(e) => refused(e),
    }
}

/// A request refused before its body was read: the connection closes after the answer (the
/// unread body is still on it), and says so, so that the client does not send its next request
/// on a connection about to be closed.
pub(crate) fn refused(e: DaemonError) -> Response {
    let mut response = e.into_response();
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}

/// Without the token: that a gyrus daemon answers, and its version. With it: where it runs.
async fn health(State(app): State<Arc<AppState>>, headers: axum::http::HeaderMap) -> Json<Health> {
    let authenticated = app.guard.is_authenticated(&headers) || app.sessions.is_signed_in(&headers);
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        pid: authenticated.then(std::process::id),
        home: authenticated.then(|| app.home.root().display().to_string()),
        addr: authenticated.then(|| app.addr.clone()),
    })
}

async fn shutdown(State(app): State<Arc<AppState>>) -> Json<serde_json::Value> {
    app.shutdown.notify_one();
    Json(serde_json::json!({"status": "shutting down"}))
}

#[derive(Deserialize)]
struct DeployQuery {
    config_file: Option<String>,
}

async fn deploy(
    State(app): State<Arc<AppState>>,
    Query(q): Query<DeployQuery>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<Json<DeployResponse>, DaemonError> {
    let fetch_env: std::collections::BTreeMap<String, String> =
        json_header(&headers, FETCH_ENV_HEADER)?.unwrap_or_default();
    let config_name = q.config_file.unwrap_or_else(|| "cortex.yaml".into());
    // The slot is held until the upload is extracted, even if the client goes away meanwhile.
    let permit = app.upload_permit()?;
    let upload = project::spool(
        body,
        &app.home.projects(),
        project::MAX_ARCHIVE_BYTES as u64,
    )
    .await?;
    let fetch = FetchContext {
        env: fetch_env,
        freshness: gyrus_remote::Freshness::CheckRemote,
    };
    Ok(Json(
        app.deploys
            .deploy(upload, permit, config_name, fetch)
            .await?,
    ))
}

async fn list_apis(State(app): State<Arc<AppState>>) -> Json<Vec<crate::api::ApiInfo>> {
    let splitters = &app.deploys.splitters;
    let apis = app
        .supervisor
        .names()
        .into_iter()
        .filter_map(|n| app.supervisor.info(&n))
        .map(|info| with_jobs(&app, info));
    let splits = splitters
        .names()
        .into_iter()
        .filter_map(|n| splitters.info(&n, &app.supervisor));
    let mut all: Vec<crate::api::ApiInfo> = apis.chain(splits).collect();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    Json(all)
}

async fn get_api(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<crate::api::ApiInfo>, DaemonError> {
    check_name(&name)?;
    app.supervisor
        .info(&name)
        .map(|info| with_jobs(&app, info))
        .or_else(|| app.deploys.splitters.info(&name, &app.supervisor))
        .map(Json)
        .ok_or_else(|| DaemonError::no_api(&name, &app.deploys.known_names()))
}

/// A batch API's info with its jobs.
pub(crate) fn with_jobs(app: &AppState, mut info: crate::api::ApiInfo) -> crate::api::ApiInfo {
    if info.kind == gyrus_spec::ApiKind::BatchAPI.to_string() {
        info.jobs = app.jobs.summary(&info.name).ok();
    }
    info
}

async fn delete_api(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, DaemonError> {
    check_name(&name)?;
    app.deploys.delete(&name).await?;
    app.jobs.delete_api(&name)?;
    Ok(Json(serde_json::json!({"deleted": name})))
}

async fn refresh_api(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
) -> Result<Json<serde_json::Value>, DaemonError> {
    check_name(&name)?;
    // With the user's environment a refresh checks model URLs again; without, it reuses the
    // downloads it has.
    let fetch = match json_header(&headers, FETCH_ENV_HEADER)? {
        Some(env) => FetchContext {
            env,
            freshness: gyrus_remote::Freshness::CheckRemote,
        },
        None => FetchContext::cached(),
    };
    let generation = app.deploys.refresh(&name, fetch).await?;
    Ok(Json(
        serde_json::json!({"refreshed": name, "generation": generation}),
    ))
}

#[derive(Deserialize)]
pub(crate) struct LogsQuery {
    #[serde(default)]
    follow: bool,
    tail: Option<usize>,
}

async fn logs(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, DaemonError> {
    check_name(&name)?;
    let path = app.home.api_log(&name);
    if app.state.get(&name)?.is_none() && !path.exists() {
        if app.deploys.splitters.contains(&name) {
            return Err(DaemonError::BadRequest(format!(
                "{name:?} is a traffic splitter: it has no logs of its own; read those of its APIs (gyrus get {name} lists them)"
            )));
        }
        return Err(DaemonError::no_api(name, &app.deploys.known_names()));
    }
    log_response(app, path, q).await
}

/// A log file's text (its last `tail` lines), then with `follow` what is appended to it until
/// the client goes or the daemon stops.
pub(crate) async fn log_response(
    app: Arc<AppState>,
    path: std::path::PathBuf,
    q: LogsQuery,
) -> Result<Response, DaemonError> {
    // The last lines are read from the end: log files grow, and the dashboard asks often.
    let (content, offset) = {
        let path = path.clone();
        let tail = q.tail;
        tokio::task::spawn_blocking(move || crate::logs::read_tail(&path, tail))
            .await
            .map_err(|e| DaemonError::Internal(format!("reading the log: {e}")))?
            .unwrap_or_default()
    };
    let initial = Bytes::from(content);
    if !q.follow {
        return Ok(([("content-type", "text/plain; charset=utf-8")], initial).into_response());
    }
    let stream = futures_util::stream::unfold(
        (Some(initial), path, offset, app),
        |(first, path, mut offset, app)| async move {
            if let Some(b) = first {
                return Some((Ok::<_, std::io::Error>(b), (None, path, offset, app)));
            }
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if app.stopping.load(std::sync::atomic::Ordering::Relaxed) {
                    return None;
                }
                let Ok(meta) = tokio::fs::metadata(&path).await else {
                    continue;
                };
                if meta.len() < offset {
                    offset = 0; // truncated or recreated
                }
                if meta.len() > offset {
                    let chunk = read_from(&path, offset).await.unwrap_or_default();
                    offset += chunk.len() as u64;
                    return Some((Ok(Bytes::from(chunk)), (None, path, offset, app)));
                }
            }
        },
    );
    Ok((
        [("content-type", "text/plain; charset=utf-8")],
        Body::from_stream(stream),
    )
        .into_response())
}

async fn read_from(path: &std::path::Path, offset: u64) -> std::io::Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut f = tokio::fs::File::open(path).await?;
    f.seek(std::io::SeekFrom::Start(offset)).await?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).await?;
    Ok(buf)
}
