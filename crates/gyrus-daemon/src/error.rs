//! The control plane's error type and its one mapping to HTTP status codes.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The request is wrong (bad config, bad archive, unsupported feature): 400.
    #[error("{0}")]
    BadRequest(String),
    /// No API of that name: 404. The second field is a hint (`; did you mean ...?`).
    #[error("api {0:?} is not deployed{1}")]
    ApiNotFound(String, String),
    /// Something else the URL names is not there (a job): 404.
    #[error("{0}")]
    NotFound(String),
    /// No token, or not this daemon's: 401.
    #[error("{0}")]
    Unauthorized(String),
    /// A request a browser sent for another site (foreign Origin or Host): 403.
    #[error("{0}")]
    Forbidden(String),
    /// A control request in a content type the CLI never sends: 415.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The upload is larger than the daemon accepts: 413.
    #[error("{0}")]
    TooLarge(String),
    /// The client stopped sending in the middle of a request: 408.
    #[error("{0}")]
    Timeout(String),
    /// Too much is under way (concurrent uploads); retry after the given seconds: 503.
    #[error("{message}")]
    Busy {
        message: String,
        retry_after_secs: u64,
    },
    /// The request conflicts with the current state (a model in use): 409.
    #[error("{0}")]
    Conflict(String),
    /// A server the daemon had to ask on the caller's behalf (object storage) failed.
    #[error("{0}")]
    BadGateway(String),
    #[error(transparent)]
    Store(#[from] gyrus_store::StoreError),
    /// A deploy's models: 400 when the config names what is not there, 5xx for our faults.
    #[error(transparent)]
    ModelSource(#[from] crate::model_source::ModelSourceError),
    #[error("state database: {0}")]
    State(#[from] rusqlite::Error),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Internal(String),
}

impl DaemonError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::ApiNotFound(..) | Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::BadGateway(_) => StatusCode::BAD_GATEWAY,
            Self::Store(e) => match e {
                gyrus_store::StoreError::NotFound { .. } => StatusCode::NOT_FOUND,
                gyrus_store::StoreError::Exists(_) => StatusCode::CONFLICT,
                e if e.is_client_error() => StatusCode::BAD_REQUEST,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
            Self::ModelSource(e) if e.is_client_error() => StatusCode::BAD_REQUEST,
            Self::ModelSource(crate::model_source::ModelSourceError::Remote { .. }) => {
                StatusCode::BAD_GATEWAY
            }
            Self::ModelSource(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::State(_) | Self::Io { .. } | Self::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}

impl DaemonError {
    /// No API named `name`; `known` are the deployed ones, for a did-you-mean.
    pub fn no_api(name: impl Into<String>, known: &[String]) -> Self {
        let name = name.into();
        let hint = gyrus_spec::suggest::did_you_mean(&name, known.iter().map(String::as_str));
        DaemonError::ApiNotFound(name, hint)
    }
}

impl IntoResponse for DaemonError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!("{self}");
        }
        let mut response = (
            status,
            axum::Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response();
        let headers = response.headers_mut();
        match &self {
            Self::Unauthorized(_) => {
                headers.insert(
                    axum::http::header::WWW_AUTHENTICATE,
                    axum::http::HeaderValue::from_static("Bearer realm=\"gyrus\""),
                );
            }
            Self::Busy {
                retry_after_secs, ..
            } => {
                headers.insert(
                    axum::http::header::RETRY_AFTER,
                    axum::http::HeaderValue::from(*retry_after_secs),
                );
            }
            _ => {}
        }
        response
    }
}
