//! A job worker's calls from the daemon (batch APIs): `POST /_batch/<batch id>` runs
//! `predict(payload, batch_id)` on one batch (the body, a JSON list of items), and
//! `POST /_job_complete` runs `on_job_complete()`. The worker's answer is passed on as it is: 200
//! with what `predict` returned, or 500 with `{"error", "traceback"}`, which the daemon keeps
//! with the batch. Only replicas started for a job have these routes, and only the daemon
//! calls them (the gateway routes nothing to a job worker).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use gyrus_runtime::{Call, PredictRequest};

use crate::error::ServeError;
use crate::{ReplicaState, Serving};

pub(crate) async fn predict_batch(
    State(state): State<Arc<ReplicaState>>,
    Path(batch_id): Path<String>,
    body: Bytes,
) -> Result<Response, ServeError> {
    call(&state, Call::Batch { batch_id }, body).await
}

pub(crate) async fn job_complete(
    State(state): State<Arc<ReplicaState>>,
) -> Result<Response, ServeError> {
    call(&state, Call::JobComplete, Bytes::new()).await
}

async fn call(state: &ReplicaState, call: Call, body: Bytes) -> Result<Response, ServeError> {
    let Serving::Python(pool) = &state.serving else {
        return Err(ServeError::NotFound(
            "a job worker runs a Python predictor".into(),
        ));
    };
    let req = PredictRequest {
        content_type: "application/json".into(),
        body,
        call,
        ..PredictRequest::default()
    };
    let resp = pool.call(req).await?;
    let status = StatusCode::from_u16(resp.status).unwrap_or(StatusCode::OK);
    let ctype = HeaderValue::from_str(&resp.content_type)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    Ok((status, [(header::CONTENT_TYPE, ctype)], resp.body).into_response())
}
