//! Serving models without Python: the simple JSON API (`POST /predict`) and the Open Inference
//! Protocol v2 REST API (`/v2/...`), both through the replica's [`InferenceService`].
//!
//! The handlers decode and encode on the I/O thread (the codecs of `gyrus-oip`), resolve the
//! model there (names and signatures are fixed), and hand the run itself to the service's
//! engine thread, awaiting its answer: inference never runs on the I/O thread, which keeps
//! accepting, decoding and answering other requests meanwhile. One engine thread runs every
//! model, one run at a time, as ONNX Runtime allows per session anyway; a replica is one
//! process, so replicas are how a model API uses more cores.
//!
//! Every error of this module is a [`ServeError`], which `crate::error` maps to a response.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use gyrus_engine::ShapePolicy;
use gyrus_oip::OipError;
use gyrus_runtime::{InferenceService, ModelInfo};

use crate::error::ServeError;
use crate::{ReplicaState, Serving, MAX_BODY_BYTES};

/// The Open Inference Protocol's header giving the JSON part's length in a binary body.
const HEADER_LENGTH: HeaderName = HeaderName::from_static("inference-header-content-length");

fn body_bytes(headers: &HeaderMap, body: &Bytes) -> Result<Bytes, ServeError> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok());
    match gyrus_oip::decompress(body, encoding, MAX_BODY_BYTES)? {
        std::borrow::Cow::Borrowed(_) => Ok(body.clone()),
        std::borrow::Cow::Owned(v) => Ok(Bytes::from(v)),
    }
}

fn model_param(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "model")
        .map(|(_, v)| v.into_owned())
}

/// A slot under `max_replica_concurrency`, or the 503 that says the replica is full.
fn admit(state: &ReplicaState) -> Result<tokio::sync::SemaphorePermit<'_>, ServeError> {
    state
        .admit()
        .ok_or_else(|| ServeError::Busy(state.busy_message()))
}

/// `POST /predict` of a model API: `{"input": nested list}` in, `{"output": nested list}` out.
pub(crate) async fn predict(
    state: &ReplicaState,
    service: &InferenceService,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ServeError> {
    let _permit = admit(state)?;
    let body = body_bytes(headers, &body)?;
    let model = service.select(model_param(query).as_deref())?;
    let inputs = gyrus_oip::decode_simple(&body, &model.signature)?;
    let outputs = service
        .infer(&model.name, inputs, ShapePolicy::AddLeadingDims)
        .await?;
    let body = gyrus_oip::encode_simple_body(&outputs);
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response())
}

/// The model a `/v2/models/<name>[/versions/<version>]` path addresses, and the service that
/// runs it.
fn find_model<'a>(
    state: &'a ReplicaState,
    name: &str,
    version: Option<&str>,
) -> Result<(&'a InferenceService, &'a ModelInfo), ServeError> {
    // The /v2 routes exist only for a model API; a Python predictor has no such paths.
    let Serving::Models(service) = &state.serving else {
        return Err(ServeError::NotFound("this API has no models".into()));
    };
    Ok((service, service.find(name, version)?))
}

pub(crate) async fn server_live() -> StatusCode {
    StatusCode::OK
}

pub(crate) async fn server_metadata() -> Response {
    axum::Json(gyrus_oip::server_metadata(env!("CARGO_PKG_VERSION"))).into_response()
}

pub(crate) async fn model_metadata(
    State(state): State<Arc<ReplicaState>>,
    Path(name): Path<String>,
) -> Result<Response, ServeError> {
    let (_, model) = find_model(&state, &name, None)?;
    Ok(axum::Json(metadata(model)).into_response())
}

pub(crate) async fn model_metadata_version(
    State(state): State<Arc<ReplicaState>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, ServeError> {
    let (_, model) = find_model(&state, &name, Some(&version))?;
    Ok(axum::Json(metadata(model)).into_response())
}

fn metadata(model: &ModelInfo) -> serde_json::Value {
    gyrus_oip::model_metadata(
        &model.name,
        &model.version,
        model.platform,
        &model.signature,
    )
}

pub(crate) async fn model_ready(
    State(state): State<Arc<ReplicaState>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ServeError> {
    find_model(&state, &name, None).map(|_| StatusCode::OK)
}

pub(crate) async fn model_ready_version(
    State(state): State<Arc<ReplicaState>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<StatusCode, ServeError> {
    find_model(&state, &name, Some(&version)).map(|_| StatusCode::OK)
}

pub(crate) async fn infer(
    State(state): State<Arc<ReplicaState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ServeError> {
    infer_inner(&state, &name, None, &headers, body).await
}

pub(crate) async fn infer_version(
    State(state): State<Arc<ReplicaState>>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ServeError> {
    infer_inner(&state, &name, Some(&version), &headers, body).await
}

async fn infer_inner(
    state: &ReplicaState,
    name: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ServeError> {
    let _permit = admit(state)?;
    let (service, model) = find_model(state, name, version)?;
    let body = body_bytes(headers, &body)?;
    let header_length = match headers.get(&HEADER_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or_else(|| {
                    ServeError::Codec(OipError::Invalid(format!(
                        "Inference-Header-Content-Length must be a byte count, found {v:?}"
                    )))
                })?,
        ),
    };
    let request = gyrus_oip::decode_infer(&body, header_length)?;
    let outputs = service
        .infer(&model.name, request.inputs, ShapePolicy::Exact)
        .await?;
    let encoded = gyrus_oip::encode_infer(
        &model.name,
        Some(&model.version),
        request.id.as_deref(),
        outputs,
        &request.outputs,
    )?;
    let mut response = encoded.body.into_response();
    let headers = response.headers_mut();
    match encoded.header_length {
        Some(n) => {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            headers.insert(HEADER_LENGTH, HeaderValue::from(n));
        }
        None => {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_query_parameter() {
        assert_eq!(model_param(Some("model=iris")), Some("iris".into()));
        assert_eq!(model_param(Some("debug=1&model=a%2Db")), Some("a-b".into()));
        assert_eq!(model_param(Some("model=50%")), Some("50%".into()));
        // Not an escape (a sign is not a hex digit); the + is a space as usual.
        assert_eq!(model_param(Some("model=%+5")), Some("% 5".into()));
        assert_eq!(model_param(Some("models=x")), None);
        assert_eq!(model_param(Some("model=%e2%82")), Some("\u{fffd}".into()));
        assert_eq!(model_param(Some("model=%\u{e9}x")), Some("%\u{e9}x".into()));
        assert_eq!(model_param(None), None);
    }
}
