//! Serving models without Python: the simple JSON API (`POST /predict`) and the Open Inference
//! Protocol v2 REST API (`/v2/...`), both straight into the replica's ONNX Runtime engine.
//!
//! Inference runs on the replica's I/O thread. Each model's session is used by one run at a
//! time anyway (ONNX Runtime's `Run` is not concurrency-safe), and a thread hop would cost more
//! than an iris-sized model takes; a replica is one process, so replicas are how a model API
//! uses more cores.
//!
//! Every error of this module becomes a response in [`ServeError::into_response`], the one
//! place that maps failures to HTTP statuses.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use gyrus_engine::{EngineError, Model, ShapePolicy};
use gyrus_oip::OipError;

use crate::{ReplicaState, MAX_BODY_BYTES};

/// The Open Inference Protocol's header giving the JSON part's length in a binary body.
const HEADER_LENGTH: HeaderName = HeaderName::from_static("inference-header-content-length");

/// The only model version a gyrus API has (versions arrive with the model store).
const MODEL_VERSION: &str = "1";

pub(crate) enum ServeError {
    Oip(OipError),
    Engine(EngineError),
    NotFound(String),
    Busy(String),
}

impl From<OipError> for ServeError {
    fn from(e: OipError) -> Self {
        ServeError::Oip(e)
    }
}

impl From<EngineError> for ServeError {
    fn from(e: EngineError) -> Self {
        ServeError::Engine(e)
    }
}

impl IntoResponse for ServeError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            ServeError::Oip(e) => (
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST),
                e.to_string(),
            ),
            ServeError::Engine(e) if e.is_client_error() => {
                (StatusCode::BAD_REQUEST, e.to_string())
            }
            ServeError::Engine(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            ServeError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            ServeError::Busy(m) => (StatusCode::SERVICE_UNAVAILABLE, m),
        };
        crate::error_response(status, message)
    }
}

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
    models: &gyrus_engine::ModelSet,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ServeError> {
    let _permit = admit(state)?;
    let body = body_bytes(headers, &body)?;
    let model = models.get(model_param(query).as_deref())?;
    let inputs = gyrus_oip::decode_simple(&body, model.signature())?;
    let outputs = model.infer(inputs, ShapePolicy::AddLeadingDims)?;
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

fn find_model<'a>(
    state: &'a ReplicaState,
    name: &str,
    version: Option<&str>,
) -> Result<&'a Arc<Model>, ServeError> {
    let models = state
        .models
        .as_ref()
        .ok_or_else(|| ServeError::NotFound("this API has no models".into()))?;
    let model = models.find(name).ok_or_else(|| {
        let unknown = EngineError::UnknownModel {
            name: name.to_string(),
            available: models.names(),
        };
        ServeError::NotFound(unknown.to_string())
    })?;
    match version {
        None => Ok(model),
        Some(v) if v == MODEL_VERSION => Ok(model),
        Some(v) => Err(ServeError::NotFound(format!(
            "model \"{name}\" has no version \"{v}\"; its only version is \"{MODEL_VERSION}\""
        ))),
    }
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
    let model = find_model(&state, &name, None)?;
    Ok(axum::Json(gyrus_oip::model_metadata(model.name(), model.signature())).into_response())
}

pub(crate) async fn model_metadata_version(
    State(state): State<Arc<ReplicaState>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, ServeError> {
    let model = find_model(&state, &name, Some(&version))?;
    Ok(axum::Json(gyrus_oip::model_metadata(model.name(), model.signature())).into_response())
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
    infer_inner(&state, &name, None, &headers, body)
}

pub(crate) async fn infer_version(
    State(state): State<Arc<ReplicaState>>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ServeError> {
    infer_inner(&state, &name, Some(&version), &headers, body)
}

fn infer_inner(
    state: &ReplicaState,
    name: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ServeError> {
    let _permit = admit(state)?;
    let model = find_model(state, name, version)?;
    let body = body_bytes(headers, &body)?;
    let header_length = match headers.get(&HEADER_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or_else(|| {
                    ServeError::Oip(OipError::Invalid(format!(
                        "Inference-Header-Content-Length must be a byte count, found {v:?}"
                    )))
                })?,
        ),
    };
    let request = gyrus_oip::decode_infer(&body, header_length)?;
    let outputs = model.infer(request.inputs, ShapePolicy::Exact)?;
    let encoded = gyrus_oip::encode_infer(
        model.name(),
        Some(MODEL_VERSION),
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
