//! The HTTP side of batch jobs, two ways in, both behind the control API's token and browser
//! checks (a job runs code and reads what its submission names):
//!
//! - the control API, for the CLI: `POST|GET /_gyrus/v1/apis/<api>/jobs` (submit, list),
//!   `GET|DELETE /_gyrus/v1/apis/<api>/jobs/<job>` (status, stop),
//!   `GET /_gyrus/v1/apis/<api>/jobs/<job>/logs` (`?follow=true`, `?tail=N`);
//! - the batch API's own endpoint, as Cortex's users call it: `POST /<endpoint>` submits
//!   (`?dryRun=true` only says what would run), `GET /<endpoint>?jobID=<job>` shows a job
//!   (without `jobID`, the list), `DELETE /<endpoint>?jobID=<job>` stops it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use http_body_util::BodyExt;

use crate::api::FETCH_ENV_HEADER;
use crate::error::DaemonError;
use crate::jobs::MAX_SUBMISSION_BYTES;
use crate::server::{json_header, log_response, AppState, LogsQuery};

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/apis/{name}/jobs", get(list).post(submit))
        .route("/apis/{name}/jobs/{job}", get(show).delete(stop))
        .route("/apis/{name}/jobs/{job}/logs", get(logs))
}

fn check_name(name: &str) -> Result<(), DaemonError> {
    gyrus_spec::check_api_name(name).map_err(|e| DaemonError::BadRequest(format!("API name {e}")))
}

fn dry_run(query: &HashMap<String, String>) -> bool {
    query
        .get("dryRun")
        .or_else(|| query.get("dry_run"))
        .is_some_and(|v| v == "true" || v == "1")
}

/// The submitting user's environment for reading files at URLs (as `gyrus deploy` sends it).
fn fetch_env(headers: &HeaderMap) -> Result<BTreeMap<String, String>, DaemonError> {
    Ok(json_header(headers, FETCH_ENV_HEADER)?.unwrap_or_default())
}

async fn submit(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<serde_json::Value>, DaemonError> {
    check_name(&name)?;
    let env = fetch_env(&headers)?;
    Ok(Json(
        app.jobs.submit(&name, &body, dry_run(&query), env).await?,
    ))
}

async fn list(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, DaemonError> {
    check_name(&name)?;
    Ok(Json(app.jobs.list(&name)?))
}

async fn show(
    State(app): State<Arc<AppState>>,
    Path((name, job)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, DaemonError> {
    check_name(&name)?;
    Ok(Json(app.jobs.get(&name, &job)?))
}

async fn stop(
    State(app): State<Arc<AppState>>,
    Path((name, job)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, DaemonError> {
    check_name(&name)?;
    Ok(Json(app.jobs.stop(&name, &job)?))
}

async fn logs(
    State(app): State<Arc<AppState>>,
    Path((name, job)): Path<(String, String)>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, DaemonError> {
    check_name(&name)?;
    let path = app.jobs.log_path(&name, &job)?;
    log_response(app, path, q).await
}

/// A request to a batch API's endpoint (the caller has passed the guard).
pub async fn endpoint(
    app: Arc<AppState>,
    api: String,
    req: Request,
) -> Result<Response, DaemonError> {
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let job = query.get("jobID").or_else(|| query.get("job_id")).cloned();
    match (req.method().clone(), job) {
        (Method::POST, _) => {
            let env = fetch_env(req.headers())?;
            let body = http_body_util::Limited::new(req.into_body(), MAX_SUBMISSION_BYTES)
                .collect()
                .await
                .map_err(|e| {
                    DaemonError::TooLarge(format!(
                        "the submission could not be read whole ({e}); the limit is {MAX_SUBMISSION_BYTES} bytes"
                    ))
                })?
                .to_bytes();
            Ok(Json(app.jobs.submit(&api, &body, dry_run(&query), env).await?).into_response())
        }
        (Method::GET, Some(job)) => Ok(Json(app.jobs.get(&api, &job)?).into_response()),
        (Method::GET, None) => Ok(Json(app.jobs.list(&api)?).into_response()),
        (Method::DELETE, Some(job)) => Ok(Json(app.jobs.stop(&api, &job)?).into_response()),
        (Method::DELETE, None) => Err(DaemonError::BadRequest(
            "DELETE needs the job to stop: ?jobID=<job id>".into(),
        )),
        (method, _) => Err(DaemonError::BadRequest(format!(
            "{method} is not allowed on a batch API's endpoint: POST submits a job, GET ?jobID= shows one, DELETE ?jobID= stops one"
        ))),
    }
}
