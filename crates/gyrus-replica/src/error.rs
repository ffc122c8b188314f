//! [`ServeError`]: every way a request to a replica can fail once it is routed, and the one
//! place that maps failures to HTTP statuses ([`ServeError::status`]). Inference errors
//! ([`InferenceError`], by kind), codec errors ([`OipError`], by kind) and worker pool errors
//! ([`RuntimeError`]) all become a response here, as `{"error": message}`; every 503 says when
//! to retry with `Retry-After`.

use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use gyrus_launch::telemetry::RejectReason;
use gyrus_oip::{OipError, OipErrorKind};
use gyrus_runtime::{ErrorKind, InferenceError, RuntimeError};

use crate::RETRY_SOON;

#[derive(Debug)]
pub(crate) enum ServeError {
    /// Decoding the request or encoding the response (simple JSON API, Open Inference
    /// Protocol).
    Codec(OipError),
    /// Resolving the model or running it.
    Inference(InferenceError),
    /// A Python predictor's worker pool.
    Workers(RuntimeError),
    /// A path this replica does not serve.
    NotFound(String),
    /// `max_replica_concurrency` requests are already in flight.
    Busy(String),
}

impl From<OipError> for ServeError {
    fn from(e: OipError) -> Self {
        ServeError::Codec(e)
    }
}

impl From<InferenceError> for ServeError {
    fn from(e: InferenceError) -> Self {
        ServeError::Inference(e)
    }
}

impl From<RuntimeError> for ServeError {
    fn from(e: RuntimeError) -> Self {
        ServeError::Workers(e)
    }
}

impl ServeError {
    /// The HTTP status, and for a 503 how long to wait before retrying.
    pub(crate) fn status(&self) -> (StatusCode, Option<Duration>) {
        let status = match self {
            ServeError::Codec(e) => match e.kind() {
                OipErrorKind::InvalidRequest => StatusCode::BAD_REQUEST,
                OipErrorKind::UnsupportedEncoding => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                OipErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                OipErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ServeError::Inference(e) => match e.kind() {
                ErrorKind::InvalidRequest => StatusCode::BAD_REQUEST,
                ErrorKind::NotFound => StatusCode::NOT_FOUND,
                ErrorKind::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
                ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ServeError::Workers(e) => match e {
                // The request was sent and the worker died: the gateway's error, not ours.
                RuntimeError::WorkerExited { .. } => StatusCode::BAD_GATEWAY,
                RuntimeError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
                RuntimeError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
                RuntimeError::Unavailable { retry_after, .. } => {
                    return (StatusCode::SERVICE_UNAVAILABLE, Some(*retry_after))
                }
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ServeError::NotFound(_) => StatusCode::NOT_FOUND,
            ServeError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        let retry_after = (status == StatusCode::SERVICE_UNAVAILABLE).then_some(RETRY_SOON);
        (status, retry_after)
    }

    /// Why a 503 was given, for the metrics. The models' own refusals (a full queue, a missed
    /// deadline) are counted by the inference service instead, which sees them whichever path
    /// the request came by.
    pub(crate) fn reject_reason(&self) -> Option<RejectReason> {
        match self {
            ServeError::Busy(_) => Some(RejectReason::ConcurrencyLimit),
            ServeError::Inference(InferenceError::Overloaded { .. }) => {
                Some(RejectReason::QueueFull)
            }
            ServeError::Workers(RuntimeError::Unavailable { workers_down, .. }) => {
                Some(if *workers_down {
                    RejectReason::WorkerUnavailable
                } else {
                    RejectReason::WorkerTimeout
                })
            }
            ServeError::Workers(RuntimeError::ShuttingDown) => Some(RejectReason::ReplicaStopped),
            _ => None,
        }
    }

    fn message(self) -> String {
        match self {
            ServeError::Codec(e) => e.to_string(),
            ServeError::Inference(e) => e.to_string(),
            ServeError::Workers(e @ RuntimeError::WorkerExited { .. }) => {
                format!("the predictor's worker process died while handling this request: {e}")
            }
            ServeError::Workers(RuntimeError::InvalidRequest(message)) => message,
            ServeError::Workers(e) => e.to_string(),
            ServeError::NotFound(message) | ServeError::Busy(message) => message,
        }
    }
}

impl IntoResponse for ServeError {
    fn into_response(self) -> Response {
        let reason = self.reject_reason();
        let mut response = match self.status() {
            (StatusCode::SERVICE_UNAVAILABLE, retry_after) => {
                crate::unavailable_response(self.message(), retry_after.unwrap_or(RETRY_SOON))
            }
            (status, _) => crate::error_response(status, self.message()),
        };
        if let Some(reason) = reason {
            response.extensions_mut().insert(reason);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(e: impl Into<ServeError>) -> u16 {
        e.into().status().0.as_u16()
    }

    #[test]
    fn codec_errors() {
        assert_eq!(status(OipError::Invalid("x".into())), 400);
        assert_eq!(status(OipError::Json("x".into())), 400);
        assert_eq!(status(OipError::Binary("x".into())), 400);
        assert_eq!(status(OipError::Unsupported("x".into())), 400);
        let unknown_output = OipError::UnknownOutput {
            name: "z".into(),
            available: vec![],
        };
        assert_eq!(status(unknown_output), 400);
        let corrupt = OipError::Decompress {
            encoding: "gzip".into(),
            message: "bad".into(),
        };
        assert_eq!(status(corrupt), 400);
        assert_eq!(status(OipError::UnsupportedEncoding("br".into())), 415);
        assert_eq!(status(OipError::TooLarge { limit: 1 }), 413);
        let bug = OipError::InvalidOutput {
            name: "y".into(),
            message: "m".into(),
        };
        assert_eq!(status(bug), 500);
    }

    #[test]
    fn inference_errors() {
        let names = vec!["a".to_string(), "b".to_string()];
        let unknown = InferenceError::UnknownModel {
            name: "x".into(),
            available: names.clone(),
        };
        assert_eq!(status(unknown), 400);
        let required = InferenceError::ModelRequired {
            available: names.clone(),
        };
        assert_eq!(status(required), 400);
        assert_eq!(status(InferenceError::InvalidInput("x".into())), 400);
        assert_eq!(status(InferenceError::Rejected("x".into())), 400);
        let not_found = InferenceError::ModelNotFound {
            name: "x".into(),
            available: names,
        };
        assert_eq!(status(not_found), 404);
        let version = InferenceError::VersionNotFound {
            name: "a".into(),
            version: "2".into(),
            served: "1".into(),
        };
        assert_eq!(status(version), 404);
        assert_eq!(status(InferenceError::Internal("x".into())), 500);
        assert_eq!(status(InferenceError::Stopped), 500);
        let overloaded = ServeError::from(InferenceError::Overloaded { capacity: 1 });
        assert_eq!(
            overloaded.status(),
            (StatusCode::SERVICE_UNAVAILABLE, Some(RETRY_SOON))
        );
        let r = overloaded.into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()["retry-after"], "1");
    }

    #[test]
    fn worker_errors() {
        let died = RuntimeError::WorkerExited {
            worker: 0,
            detail: "killed".into(),
        };
        assert_eq!(status(died), 502);
        assert_eq!(status(RuntimeError::InvalidRequest("x".into())), 400);
        assert_eq!(status(RuntimeError::Protocol("x".into())), 500);
        let unavailable = ServeError::from(RuntimeError::Unavailable {
            reason: "crashing".into(),
            retry_after: Duration::from_secs(7),
            workers_down: true,
        });
        assert_eq!(
            unavailable.status(),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Some(Duration::from_secs(7))
            )
        );
        assert_eq!(unavailable.into_response().headers()["retry-after"], "7");
        let closing = ServeError::from(RuntimeError::ShuttingDown).into_response();
        assert_eq!(closing.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(closing.headers()["retry-after"], "1");
    }
}
