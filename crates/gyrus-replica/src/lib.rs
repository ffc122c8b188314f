//! The replica process: one per replica of one API version. It owns the replica's HTTP server
//! on an ephemeral loopback port, the `max_replica_concurrency` gate, the pool of Python
//! workers, and the line-per-event report to the supervisor on stdout.
//!
//! Lifecycle: bind → `listening` event → start workers (every constructor returns) → `ready`
//! event → serve until SIGTERM, SIGINT or EOF on stdin (the daemon is gone), then drain.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use gyrus_runtime::{PredictRequest, RuntimeError, WorkerConfig, WorkerPool};
use gyrus_spec::ApiSpec;
use serde::Serialize;
use tokio::io::AsyncReadExt;
use tokio::sync::Semaphore;

/// The largest request body a replica accepts. Predict payloads are usually small; this
/// bounds memory per request while leaving room for images and files.
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// How long in-flight requests may take to finish once a replica is told to stop.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

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
    #[error("server error: {0}")]
    Serve(std::io::Error),
}

/// What the supervisor tells a replica to run.
#[derive(Debug, Clone)]
pub struct ReplicaOptions {
    pub id: String,
    /// The resolved spec as JSON (what `gyrus-spec` produces).
    pub spec_json: String,
    /// The extracted project snapshot: the predictor's working directory.
    pub project_dir: PathBuf,
    /// The Python interpreter of the API's environment.
    pub python: PathBuf,
    /// Where the embedded worker script is written.
    pub lib_dir: PathBuf,
    /// Absolute local path of `predictor.model`, if the API has one.
    pub model_path: Option<PathBuf>,
}

/// One line on stdout per lifecycle event; the supervisor parses these.
#[derive(Debug, Serialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum ReplicaEvent {
    Listening { port: u16 },
    Ready,
    Failed { error: String },
}

fn emit(event: &ReplicaEvent) {
    use std::io::Write;
    if let Ok(line) = serde_json::to_string(event) {
        let mut out = std::io::stdout().lock();
        // If the supervisor has gone, there is no one to tell; the stdin watcher stops us.
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

struct ReplicaState {
    api: String,
    id: String,
    pool: Arc<WorkerPool>,
    gate: Arc<Semaphore>,
    max_concurrency: usize,
}

/// Runs a replica to completion. Errors before `ready` are also reported as a `failed` event.
pub async fn run(opts: ReplicaOptions) -> Result<(), ReplicaError> {
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

async fn run_inner(opts: ReplicaOptions) -> Result<(), ReplicaError> {
    let spec: ApiSpec = serde_json::from_str(&opts.spec_json)?;
    let api_spec_value: serde_json::Value = serde_json::from_str(&opts.spec_json)?;

    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .map_err(ReplicaError::Bind)?;
    let port = listener.local_addr().map_err(ReplicaError::Bind)?.port();
    emit(&ReplicaEvent::Listening { port });

    let script = gyrus_runtime::install_worker_script(&opts.lib_dir).map_err(|source| {
        ReplicaError::WorkerScript {
            dir: opts.lib_dir.clone(),
            source,
        }
    })?;
    let threads = spec.autoscaling.threads_per_worker as usize;
    let init = serde_json::json!({
        "predictor_path": spec.predictor.path,
        "predictor_type": spec.predictor.kind,
        "config": spec.predictor.config,
        "api_spec": api_spec_value,
        "job_spec": null,
        "model_path": opts.model_path,
        "threads": threads,
        "api_name": spec.name,
    });
    let config = WorkerConfig {
        python: opts.python.clone(),
        script,
        cwd: opts.project_dir.clone(),
        env: Vec::new(),
        init,
        threads,
    };
    let workers = spec.autoscaling.workers_per_replica as usize;
    eprintln!(
        "replica {}: starting {workers} worker(s) with {threads} thread(s) each",
        opts.id
    );
    let pool = WorkerPool::start(config, workers).await?;
    eprintln!("replica {}: ready on 127.0.0.1:{port}", opts.id);

    let max_concurrency = spec.autoscaling.max_replica_concurrency as usize;
    let state = Arc::new(ReplicaState {
        api: spec.name.clone(),
        id: opts.id.clone(),
        pool: pool.clone(),
        gate: Arc::new(Semaphore::new(max_concurrency)),
        max_concurrency,
    });
    let app = Router::new()
        .route("/predict", post(predict))
        .route("/", get(health))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state.clone());

    emit(&ReplicaEvent::Ready);

    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        // Small request/response pairs: Nagle would add up to 40 ms per answer.
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(stop_signal())
        .await
        .map_err(ReplicaError::Serve)?;

    // Let in-flight requests finish, bounded, then stop the workers.
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    while state.gate.available_permits() < state.max_concurrency
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pool.shutdown().await;
    eprintln!("replica {}: stopped", opts.id);
    Ok(())
}

/// Resolves on SIGTERM, SIGINT, or EOF on stdin (the supervisor's end of the pipe closed).
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return,
    };
    let mut int = match signal(SignalKind::interrupt()) {
        Ok(s) => s,
        Err(_) => return,
    };
    let stdin_closed = async {
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 64];
        loop {
            match stdin.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = stdin_closed => {}
    }
}

async fn health(State(state): State<Arc<ReplicaState>>) -> Response {
    axum::Json(serde_json::json!({
        "api": state.api,
        "replica": state.id,
        "status": "ready",
        "in_flight": state.pool.in_flight(),
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
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        // Too large, or the client went away mid-body: its mistake, said in JSON like the rest.
        Err(rejection) => return error_response(rejection.status(), rejection.body_text()),
    };
    let Ok(_permit) = state.gate.try_acquire() else {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "replica {} of api {} is at max_replica_concurrency ({}); try again later",
                state.id, state.api, state.max_concurrency
            ),
        );
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let forwarded_headers = if state.pool.wants_headers() {
        headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect()
    } else {
        Vec::new()
    };
    let query = uri.query();
    let req = PredictRequest {
        content_type,
        query: if state.pool.wants_query_params() {
            query.unwrap_or("").to_owned()
        } else {
            String::new()
        },
        headers: forwarded_headers,
        body,
        debug: debug_requested(query),
    };
    match state.pool.call(req).await {
        Ok(resp) => {
            let status = StatusCode::from_u16(resp.status).unwrap_or(StatusCode::OK);
            let ctype = HeaderValue::from_str(&resp.content_type)
                .unwrap_or(HeaderValue::from_static("application/octet-stream"));
            (status, [(header::CONTENT_TYPE, ctype)], resp.body).into_response()
        }
        Err(e @ RuntimeError::WorkerExited { .. }) => error_response(
            StatusCode::BAD_GATEWAY,
            format!("the predictor's worker process died while handling this request: {e}"),
        ),
        Err(RuntimeError::InvalidRequest(msg)) => error_response(StatusCode::BAD_REQUEST, msg),
        Err(e @ RuntimeError::ShuttingDown) => {
            error_response(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
        Err(e) => error_response(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn error_response(status: StatusCode, message: String) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::debug_requested;

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
