//! The replica process: one per replica of one API version. It owns the replica's HTTP server
//! on an ephemeral loopback port, the `max_replica_concurrency` gate, the models (ONNX or
//! TensorFlow, loaded by `engines`, behind one [`InferenceService`] shared by everything in the
//! replica), the pool of Python workers, and the line-per-event report to the supervisor on
//! stdout.
//!
//! Lifecycle: bind → `listening` event → load models → start workers (every constructor
//! returns) → `ready` event → serve until SIGTERM, SIGINT or EOF on stdin (the daemon is
//! gone), then drain.
//!
//! What it serves ([`Serving`]): a Python predictor (`predictor.path`) answers `POST /predict`,
//! with `onnx_client` / `tensorflow_client` reaching the models through the inference
//! service; a model API (`predictor.type: onnx` or `tensorflow` without a path) answers `POST /predict` with the simple JSON API and
//! `/v2/...` with the Open Inference Protocol (see [`models`]). Failures become responses in
//! one place, `error`.

mod batch;
mod engines;
mod error;
mod handed;
mod models;
mod telemetry;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use gyrus_launch::{ReplicaEvent, ReplicaLaunch};
use gyrus_runtime::{
    Backend, InferenceService, OnnxBackend, PredictRequest, RuntimeError, ServiceConfig,
    WorkerConfig, WorkerPool,
};
use gyrus_spec::ApiSpec;
use tokio::io::AsyncReadExt;
use tokio::sync::Semaphore;

use crate::engines::{batching_policies, load_models, load_tensorflow_models, signatures_json};
use crate::error::ServeError;

/// The largest request body a replica accepts. Predict payloads are usually small; this
/// bounds memory per request while leaving room for images and files.
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// How long in-flight requests may take to finish once a replica is told to stop.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a request waits for a free worker thread before it is answered 503: long enough
/// to ride out a burst or a worker's restart, short of a client's patience.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(30);

/// The first delay before restarting a worker that died (it doubles while it keeps dying).
const WORKER_RESTART_BACKOFF: Duration = Duration::from_secs(1);

/// The `Retry-After` of a 503 for load (`max_replica_concurrency`) or a replica stopping:
/// the next attempt may well land on another replica, or on a free slot, at once.
const RETRY_SOON: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("invalid replica spec: {0}")]
    Spec(#[from] serde_json::Error),
    #[error("cannot listen on 127.0.0.1: {0}")]
    Bind(std::io::Error),
    #[error("cannot write the worker script under {dir}: {source}")]
    WorkerScript {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Workers(#[from] RuntimeError),
    #[error("{0}")]
    Engine(#[from] gyrus_engine::EngineError),
    #[error("predictor.type is onnx but the replica was given no ONNX Runtime library")]
    NoOnnxLibrary,
    #[error("predictor.type is tensorflow but the replica was given no TensorFlow library")]
    NoTensorflowLibrary,
    #[error("{0}")]
    Batching(String),
    #[error("cannot start the inference engine thread: {0}")]
    EngineThread(std::io::Error),
    #[error("predictor.type {0} without predictor.path: this replica has nothing to serve")]
    NothingToServe(String),
    #[error("server error: {0}")]
    Serve(std::io::Error),
    #[error("cannot take the daemon's hand-off channel: {0}")]
    Handoff(std::io::Error),
}

/// Reports an event to the daemon: one line on stdout.
fn emit(event: &ReplicaEvent) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    // If the daemon has gone, there is no one to tell; the stdin watcher stops us.
    let _ = writeln!(out, "{}", event.to_line());
    let _ = out.flush();
}

/// What a replica serves.
enum Serving {
    /// A Python predictor (`predictor.path`): `POST /predict` goes to its workers. An
    /// ONNXPredictor's workers reach the models through the inference service that their pool
    /// holds (`WorkerConfig::tensors`); the replica's routes do not use it.
    Python(Arc<WorkerPool>),
    /// A model API (`predictor.type: onnx` without a path): `POST /predict` and `/v2/...`.
    Models(InferenceService),
}

struct ReplicaState {
    api: String,
    id: String,
    serving: Serving,
    telemetry: Arc<telemetry::Telemetry>,
    gate: Arc<Semaphore>,
    max_concurrency: usize,
}

impl ReplicaState {
    fn busy_message(&self) -> String {
        format!(
            "replica {} of api {} is at max_replica_concurrency ({}); try again later",
            self.id, self.api, self.max_concurrency
        )
    }

    /// A slot under `max_replica_concurrency`, or `None` when the replica is full (503).
    fn admit(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.gate.try_acquire().ok()
    }

    fn in_flight(&self) -> usize {
        self.max_concurrency - self.gate.available_permits()
    }
}

/// Runs a replica to completion. Errors before `ready` are also reported as a `failed` event.
pub async fn run(opts: ReplicaLaunch) -> Result<(), ReplicaError> {
    match run_inner(opts).await {
        Ok(()) => Ok(()),
        Err(e) => {
            emit(&ReplicaEvent::Failed {
                error: e.to_string(),
            });
            Err(e)
        }
    }
}

async fn run_inner(opts: ReplicaLaunch) -> Result<(), ReplicaError> {
    // Watched from the start: a daemon that dies (its pipe closes) or a stop while models load
    // or a predictor's constructor runs ends this process at once, as there is nothing to
    // drain yet; once serving, it drains first.
    let (stop_tx, stopping) = tokio::sync::watch::channel(false);
    let serving_now = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let id = opts.id.clone();
        let serving_now = serving_now.clone();
        tokio::spawn(async move {
            let why = stop_signal().await;
            tracing::info!("replica {id}: stopping ({why})");
            if !serving_now.load(std::sync::atomic::Ordering::SeqCst) {
                std::process::exit(0);
            }
            let _ = stop_tx.send(true);
        });
    }
    // First, before any Python worker is started: close-on-exec, so workers do not inherit it.
    let channel = match &opts.handoff {
        // SAFETY: the launcher put our end of the channel at this descriptor for us alone.
        Some(h) => Some(unsafe {
            gyrus_gateway::handoff::channel::Channel::from_raw_fd(h.fd)
                .map_err(ReplicaError::Handoff)?
        }),
        None => None,
    };
    let spec = &opts.spec;
    let api_spec_value = serde_json::to_value(spec)?;

    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .map_err(ReplicaError::Bind)?;
    let port = listener.local_addr().map_err(ReplicaError::Bind)?.port();
    emit(&ReplicaEvent::Listening { port });

    let backend: Option<Arc<dyn Backend>> = match spec.predictor.kind {
        gyrus_spec::PredictorType::Onnx => {
            Some(Arc::new(OnnxBackend::new(load_models(&opts, spec).await?)))
        }
        gyrus_spec::PredictorType::Tensorflow => {
            Some(Arc::new(load_tensorflow_models(&opts).await?))
        }
        gyrus_spec::PredictorType::Python => None,
    };
    let models = match backend {
        Some(backend) => {
            let config = ServiceConfig {
                batching: batching_policies(spec, &opts.models, backend.models())?,
                ..ServiceConfig::default()
            };
            Some(InferenceService::start(backend, config).map_err(ReplicaError::EngineThread)?)
        }
        None => None,
    };

    // Kept for the metrics events: a model predictor's service lives in its worker pool.
    let engine = models.clone();
    let serving = match (&spec.predictor.path, models) {
        (Some(path), models) => {
            Serving::Python(start_workers(&opts, spec, path, &api_spec_value, models).await?)
        }
        (None, Some(service)) => Serving::Models(service),
        // The spec requires a path for python predictors and the daemon refuses the others.
        (None, None) => {
            return Err(ReplicaError::NothingToServe(
                spec.predictor.kind.to_string(),
            ))
        }
    };
    tracing::info!("replica {}: ready on 127.0.0.1:{port}", opts.id);

    let max_concurrency = spec.autoscaling.max_replica_concurrency as usize;
    let serves_models = matches!(serving, Serving::Models(_));
    let paths = handed::Paths {
        endpoint: spec.endpoint.clone(),
        models: match &serving {
            Serving::Models(service) => service.names(),
            Serving::Python(_) => Vec::new(),
        },
    };
    let telemetry = Arc::new(telemetry::Telemetry::new(
        !serves_models,
        spec.tracker.as_ref().filter(|_| opts.job.is_none()),
        opts.id.clone(),
    ));
    let state = Arc::new(ReplicaState {
        api: spec.name.clone(),
        id: opts.id.clone(),
        serving,
        telemetry: telemetry.clone(),
        gate: Arc::new(Semaphore::new(max_concurrency)),
        max_concurrency,
    });
    let mut app = Router::new()
        .route("/predict", post(predict))
        .route("/", get(health));
    if opts.job.is_some() {
        app = app
            .route("/_batch/{batch_id}", post(batch::predict_batch))
            .route("/_job_complete", post(batch::job_complete));
    }
    if serves_models {
        app = app
            .route("/v2", get(models::server_metadata))
            .route("/v2/health/live", get(models::server_live))
            .route("/v2/health/ready", get(models::server_live))
            .route("/v2/models/{name}", get(models::model_metadata))
            .route("/v2/models/{name}/ready", get(models::model_ready))
            .route("/v2/models/{name}/infer", post(models::infer))
            .route(
                "/v2/models/{name}/versions/{version}",
                get(models::model_metadata_version),
            )
            .route(
                "/v2/models/{name}/versions/{version}/ready",
                get(models::model_ready_version),
            )
            .route(
                "/v2/models/{name}/versions/{version}/infer",
                post(models::infer_version),
            );
    }
    let app = app
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            telemetry,
            telemetry::observe,
        ))
        .with_state(state.clone());

    emit(&ReplicaEvent::Ready);
    let report = {
        let state = state.clone();
        move || {
            emit(&ReplicaEvent::Metrics {
                in_flight: state.in_flight(),
                workers_crash_looping: match &state.serving {
                    Serving::Python(pool) => pool.crash_looping(),
                    Serving::Models(_) => false,
                },
                models: engine.as_ref().map(|e| e.stats()).unwrap_or_default(),
                requests: state.telemetry.snapshot(),
            })
        }
    };
    let every_second_report = report.clone();
    tokio::spawn(async move {
        let mut every_second = tokio::time::interval(Duration::from_secs(1));
        loop {
            every_second.tick().await;
            every_second_report();
        }
    });

    serving_now.store(true, std::sync::atomic::Ordering::SeqCst);
    let handed = match (channel, &opts.handoff) {
        (Some(channel), Some(h)) => {
            let handed =
                handed::Handed::new(channel, app.clone(), paths, h.daemon, stopping.clone());
            Some(tokio::spawn(handed.run()))
        }
        _ => None,
    };
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        // Small request/response pairs: Nagle would add up to 40 ms per answer.
        let _ = tcp.set_nodelay(true);
    });
    let mut stop = stopping.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
        .map_err(ReplicaError::Serve)?;
    // Handed connections: closed after their response, or given back to the daemon.
    if let Some(task) = handed {
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, task).await;
    }

    // Let in-flight requests finish, bounded, then stop the workers.
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    while state.gate.available_permits() < state.max_concurrency
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Serving::Python(pool) = &state.serving {
        pool.shutdown().await;
    }
    // What it answered since the last report, drain included: counted before it goes.
    report();
    tracing::info!("replica {}: stopped", opts.id);
    Ok(())
}

async fn start_workers(
    opts: &ReplicaLaunch,
    spec: &ApiSpec,
    predictor_path: &str,
    api_spec_value: &serde_json::Value,
    models: Option<InferenceService>,
) -> Result<Arc<WorkerPool>, ReplicaError> {
    let script = gyrus_runtime::install_worker_script(&opts.lib_dir).map_err(|source| {
        ReplicaError::WorkerScript {
            dir: opts.lib_dir.clone(),
            source,
        }
    })?;
    let threads = spec.autoscaling.threads_per_worker as usize;
    let (config, job_spec) = match &opts.job {
        Some(job) => (job.config.clone(), job.job_spec.clone()),
        None => (
            serde_json::Value::Object(spec.predictor.config.clone()),
            serde_json::Value::Null,
        ),
    };
    let init = serde_json::json!({
        "predictor_path": predictor_path,
        "predictor_type": spec.predictor.kind,
        "api_kind": spec.kind.to_string(),
        "config": config,
        "api_spec": api_spec_value,
        "job_spec": job_spec,
        "model_path": opts.model_path,
        "models": models.as_ref().map(|service| signatures_json(service.models())),
        "threads": threads,
        "api_name": spec.name,
        // Cortex's server_side_batching of a Python predictor: its worker groups requests and
        // calls predict() with a list (a TensorFlow predictor's model is batched instead).
        "server_side_batching": spec
            .predictor
            .server_side_batching
            .filter(|_| spec.predictor.kind == gyrus_spec::PredictorType::Python && opts.job.is_none())
            .map(|b| serde_json::json!({
                "max_batch_size": b.max_batch_size,
                "batch_interval": b.batch_interval.as_duration().as_secs_f64(),
            })),
    });
    let config = WorkerConfig {
        python: opts.python.clone(),
        script,
        cwd: opts.project_dir.clone(),
        env: Vec::new(),
        init,
        threads,
        tensors: models,
        queue_timeout: QUEUE_TIMEOUT,
        restart_backoff: WORKER_RESTART_BACKOFF,
    };
    let workers = spec.autoscaling.workers_per_replica as usize;
    tracing::info!(
        "replica {}: starting {workers} worker(s) with {threads} thread(s) each",
        opts.id
    );
    Ok(WorkerPool::start(config, workers).await?)
}

async fn not_found(uri: axum::http::Uri) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        format!("no such path on this API: {}", uri.path()),
    )
}

/// Resolves on SIGTERM, SIGINT, or EOF on stdin (the supervisor's end of the pipe closed), with
/// which one it was.
async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return "no signal handler",
    };
    let mut int = match signal(SignalKind::interrupt()) {
        Ok(s) => s,
        Err(_) => return "no signal handler",
    };
    let stdin_closed = async {
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 64];
        loop {
            match stdin.read(&mut buf).await {
                // A signal that interrupted the read (a library's handler without SA_RESTART)
                // is not the daemon going away.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                    tracing::warn!("reading stdin was interrupted; still watching it");
                    continue;
                }
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
        _ = stdin_closed => "the daemon closed its pipe",
    }
}

async fn health(State(state): State<Arc<ReplicaState>>) -> Response {
    axum::Json(serde_json::json!({
        "api": state.api,
        "replica": state.id,
        "status": "ready",
        "in_flight": state.in_flight(),
    }))
    .into_response()
}

/// `?debug=true` (or `1`), found without building a map of the query on every request.
fn debug_requested(query: Option<&str>) -> bool {
    let Some(q) = query else { return false };
    q.split('&').any(|pair| {
        pair.strip_prefix("debug=")
            .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
    })
}

async fn predict(
    State(state): State<Arc<ReplicaState>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        // Too large, or the client went away mid-body: its mistake, said in JSON like the rest.
        Err(rejection) => return error_response(rejection.status(), rejection.body_text()),
    };
    let query = query.as_deref();
    let answer = match &state.serving {
        Serving::Python(pool) => predict_python(&state, pool, query, &headers, body).await,
        Serving::Models(service) => models::predict(&state, service, query, &headers, body).await,
    };
    answer.unwrap_or_else(IntoResponse::into_response)
}

/// `POST /predict` of a Python predictor: the request as it came, to the least busy worker.
async fn predict_python(
    state: &ReplicaState,
    pool: &WorkerPool,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ServeError> {
    let Some(_permit) = state.admit() else {
        return Err(ServeError::Busy(state.busy_message()));
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let forwarded_headers = if pool.wants_headers() {
        headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect()
    } else {
        Vec::new()
    };
    let req = PredictRequest {
        content_type,
        query: if pool.wants_query_params() {
            query.unwrap_or("").to_owned()
        } else {
            String::new()
        },
        headers: forwarded_headers,
        body,
        debug: debug_requested(query),
        call: gyrus_runtime::Call::Predict,
        request_id: headers
            .get(telemetry::REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
    };
    let resp = pool.call(req).await?;
    state.telemetry.tally().worker_time(resp.worker_time);
    let status = StatusCode::from_u16(resp.status).unwrap_or(StatusCode::OK);
    let ctype = HeaderValue::from_str(&resp.content_type)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    let mut response = (status, [(header::CONTENT_TYPE, ctype)], resp.body).into_response();
    // Every 503 says when to retry: the predictor's own, and an engine refusing its model
    // calls for load (the worker's `Overloaded`).
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_SOON.as_secs()));
    }
    Ok(response)
}

/// A JSON error response. Every 503 of a replica means "try again": it says when, with
/// `Retry-After`.
fn error_response(status: StatusCode, message: String) -> Response {
    if status == StatusCode::SERVICE_UNAVAILABLE {
        return unavailable_response(message, RETRY_SOON);
    }
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

/// A 503 with `Retry-After: <retry_after in whole seconds, rounded up, at least 1>`.
fn unavailable_response(message: String, retry_after: Duration) -> Response {
    let seconds = retry_after
        .as_secs()
        .saturating_add(u64::from(retry_after.subsec_nanos() > 0))
        .max(1);
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, HeaderValue::from(seconds))],
        axum::Json(serde_json::json!({ "error": message })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_503_says_when_to_retry() {
        let retry_after = |r: &Response| {
            r.headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let r = unavailable_response("x".into(), Duration::from_millis(2100));
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(retry_after(&r).as_deref(), Some("3"));
        let r = unavailable_response("x".into(), Duration::ZERO);
        assert_eq!(retry_after(&r).as_deref(), Some("1"));
        let r = unavailable_response("x".into(), Duration::from_secs(4));
        assert_eq!(retry_after(&r).as_deref(), Some("4"));
        let r = error_response(StatusCode::SERVICE_UNAVAILABLE, "busy".into());
        assert_eq!(retry_after(&r).as_deref(), Some("1"));
        let r = error_response(StatusCode::BAD_GATEWAY, "died".into());
        assert_eq!(retry_after(&r), None);
    }

    #[test]
    fn debug_flag() {
        assert!(debug_requested(Some("debug=true")));
        assert!(debug_requested(Some("a=1&debug=TRUE")));
        assert!(debug_requested(Some("debug=1&debug=1")));
        assert!(!debug_requested(Some("debug=false")));
        assert!(!debug_requested(Some("nodebug=true")));
        assert!(!debug_requested(None));
    }
}
