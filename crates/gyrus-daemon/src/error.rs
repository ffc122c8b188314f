//! The control plane's error type and its one mapping to HTTP status codes.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The request is wrong (bad config, bad archive, unsupported feature): 400.
    #[error("{0}")]
    BadRequest(String),
    #[error("api {0:?} is not deployed")]
    ApiNotFound(String),
    /// The request conflicts with the current state (a model in use): 409.
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] gyrus_store::StoreError),
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
            Self::ApiNotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Store(e) => match e {
                gyrus_store::StoreError::NotFound { .. } => StatusCode::NOT_FOUND,
                gyrus_store::StoreError::Exists(_) => StatusCode::CONFLICT,
                e if e.is_client_error() => StatusCode::BAD_REQUEST,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
            Self::State(_) | Self::Io { .. } | Self::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}

impl IntoResponse for DaemonError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!("{self}");
        }
        (
            status,
            axum::Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response()
    }
}
