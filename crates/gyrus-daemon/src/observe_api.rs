//! The HTTP side of telemetry: `GET /metrics` (Prometheus text; open on a loopback address,
//! behind the token otherwise), `GET /_gyrus/v1/apis/<name>/series` (the dashboard's charts),
//! and the one-second tick that feeds the series.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use crate::error::DaemonError;
use crate::server::AppState;
use crate::telemetry::{ApiView, MAX_SERIES_SECONDS};

/// What every API looks like now, for the gauges and the series; with a batch API's jobs
/// (read from SQLite) only when asked.
fn views(app: &AppState, with_jobs: bool) -> Vec<ApiView> {
    app.supervisor
        .names()
        .iter()
        .filter_map(|name| {
            let info = app.supervisor.info(name)?;
            let info = if with_jobs {
                crate::server::with_jobs(app, info)
            } else {
                info
            };
            let tracker = app
                .supervisor
                .serving_plan(name)
                .and_then(|plan| plan.spec.tracker.clone());
            Some(ApiView { info, tracker })
        })
        .collect()
}

/// Starts the tick; it ends with the daemon.
pub fn start_tick(app: Arc<AppState>) {
    tokio::spawn(async move {
        let mut every_second = tokio::time::interval(Duration::from_secs(1));
        every_second.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            every_second.tick().await;
            if app.stopping.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            let apis = views(&app, false);
            app.telemetry
                .tick(&apis, app.gateway.refusals(), app.routes.split_counts());
        }
    });
}

/// `GET /metrics`.
pub async fn metrics(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, DaemonError> {
    if !app.guard.is_loopback() {
        app.guard.require_token(&headers)?;
    }
    let text = tokio::task::spawn_blocking(move || {
        let apis = views(&app, true);
        app.telemetry.render(&apis)
    })
    .await
    .map_err(|e| DaemonError::Internal(format!("rendering the metrics: {e}")))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

#[derive(Deserialize)]
pub struct SeriesQuery {
    seconds: Option<usize>,
}

/// `GET /_gyrus/v1/apis/<name>/series?seconds=N`.
pub async fn series(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    Query(q): Query<SeriesQuery>,
) -> Result<Json<serde_json::Value>, DaemonError> {
    crate::server::check_name(&name)?;
    let seconds = q.seconds.unwrap_or(300);
    if seconds == 0 || seconds > MAX_SERIES_SECONDS {
        return Err(DaemonError::BadRequest(format!(
            "seconds must be between 1 and {MAX_SERIES_SECONDS} (the daemon keeps ten minutes)"
        )));
    }
    if app.supervisor.info(&name).is_none() {
        return Err(DaemonError::no_api(name, &app.supervisor.names()));
    }
    // An API deployed less than a second ago has no point yet.
    Ok(Json(app.telemetry.series_json(&name, seconds).unwrap_or_else(|| {
        serde_json::json!({"api": name, "interval_seconds": 1, "points": [], "decisions": [], "tracker": null})
    })))
}
