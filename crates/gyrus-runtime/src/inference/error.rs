//! [`InferenceError`], the one error type of inference, and its [`ErrorKind`].
//!
//! Messages are written for whoever sent the request (they go into `{"error": ...}` or back to
//! `onnx_client` unchanged). The kind is what a protocol layer maps to its status: the replica
//! maps it to HTTP statuses in one place (`gyrus-replica`'s `error` module), and INFER frames
//! carry [`InferenceError::is_client_error`].

use gyrus_engine::EngineError;

/// What kind of failure an [`InferenceError`] is, for the protocol layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request is wrong: inputs that do not fit the model's signature, values the model
    /// refuses, a model name that is missing or unknown where a request names it in its
    /// parameters or body. HTTP 400.
    InvalidRequest,
    /// The request addresses a model or a version that does not exist, where the model is the
    /// resource a request is sent to (the Open Inference Protocol's `/v2/models/<name>`).
    /// HTTP 404.
    NotFound,
    /// The engine's queue is full: retry later. HTTP 503 with `Retry-After`.
    Overloaded,
    /// A fault of the server or of the model runtime, not of the request. HTTP 500.
    Internal,
}

/// Everything that can go wrong running inference. See the module documentation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InferenceError {
    /// A request named a model the API does not serve.
    #[error("unknown model \"{name}\"; this API serves {}", quote_list(available))]
    UnknownModel {
        name: String,
        available: Vec<String>,
    },
    /// The API serves several models and the request did not say which.
    #[error(
        "this API serves several models, so the model name is required: {}",
        quote_list(available)
    )]
    ModelRequired { available: Vec<String> },
    /// A request was addressed to a model the API does not serve (see [`ErrorKind::NotFound`]).
    #[error("unknown model \"{name}\"; this API serves {}", quote_list(available))]
    ModelNotFound {
        name: String,
        available: Vec<String>,
    },
    /// A request was addressed to a version of a model that does not exist.
    #[error("model \"{name}\" has no version \"{version}\"; the version served is \"{served}\"")]
    VersionNotFound {
        name: String,
        version: String,
        served: String,
    },
    /// The request's tensors do not fit the model's signature.
    #[error("{0}")]
    InvalidInput(String),
    /// The model runtime refused to run the model on inputs that match its signature: the
    /// values themselves are the problem (dynamic dimensions that disagree between inputs,
    /// indices out of range, ...), so this is the request's fault.
    #[error("the model cannot run on these inputs: {0}")]
    Rejected(String),
    /// The engine's queue already holds `capacity` requests.
    #[error(
        "the inference engine is overloaded ({capacity} requests already waiting); retry later"
    )]
    Overloaded { capacity: usize },
    /// A batched model already has `limit` requests waiting (its `max_queue_size`).
    #[error(
        "model \"{model}\" already has {limit} requests waiting (its batching.max_queue_size); retry later"
    )]
    QueueFull { model: String, limit: usize },
    /// A request to a batched model waited past its `max_latency` and was dropped unrun.
    #[error(
        "the request to model \"{model}\" waited {} ms for the engine, past the model's batching.max_latency of {} ms; it was dropped before it ran",
        waited.as_millis(),
        max_latency.as_millis()
    )]
    DeadlineExceeded {
        model: String,
        waited: std::time::Duration,
        max_latency: std::time::Duration,
    },
    /// The engine thread is gone (the service is shutting down).
    #[error("the inference engine has stopped")]
    Stopped,
    /// Anything else: a fault of the server or of the model runtime; the message says what.
    #[error("{0}")]
    Internal(String),
}

impl InferenceError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            InferenceError::UnknownModel { .. }
            | InferenceError::ModelRequired { .. }
            | InferenceError::InvalidInput(_)
            | InferenceError::Rejected(_) => ErrorKind::InvalidRequest,
            InferenceError::ModelNotFound { .. } | InferenceError::VersionNotFound { .. } => {
                ErrorKind::NotFound
            }
            InferenceError::Overloaded { .. }
            | InferenceError::QueueFull { .. }
            | InferenceError::DeadlineExceeded { .. } => ErrorKind::Overloaded,
            InferenceError::Stopped | InferenceError::Internal(_) => ErrorKind::Internal,
        }
    }

    /// Whether the request caused it (its kind is [`ErrorKind::InvalidRequest`] or
    /// [`ErrorKind::NotFound`]).
    pub fn is_client_error(&self) -> bool {
        matches!(self.kind(), ErrorKind::InvalidRequest | ErrorKind::NotFound)
    }
}

impl From<EngineError> for InferenceError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::UnknownModel { name, available } => {
                InferenceError::UnknownModel { name, available }
            }
            EngineError::ModelRequired { available } => InferenceError::ModelRequired { available },
            EngineError::InvalidInput(message) => InferenceError::InvalidInput(message),
            EngineError::Rejected(message) => InferenceError::Rejected(message),
            other @ (EngineError::Run(_)
            | EngineError::Library { .. }
            | EngineError::NotInitialised(_)
            | EngineError::Load { .. }) => InferenceError::Internal(other.to_string()),
        }
    }
}

fn quote_list(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_keep_their_message_and_side() {
        let cases = [
            EngineError::UnknownModel {
                name: "x".into(),
                available: vec!["a".into(), "b".into()],
            },
            EngineError::ModelRequired {
                available: vec!["a".into(), "b".into()],
            },
            EngineError::InvalidInput("missing input \"x\"".into()),
            EngineError::Rejected("dims".into()),
            EngineError::Run("no output".into()),
            EngineError::NotInitialised("ONNX Runtime"),
        ];
        for e in cases {
            let (message, client) = (e.to_string(), e.is_client_error());
            let converted = InferenceError::from(e);
            assert_eq!(converted.to_string(), message);
            assert_eq!(converted.is_client_error(), client, "{message}");
        }
    }

    #[test]
    fn kinds() {
        let not_found = InferenceError::ModelNotFound {
            name: "x".into(),
            available: vec!["a".into()],
        };
        assert_eq!(not_found.kind(), ErrorKind::NotFound);
        assert_eq!(
            not_found.to_string(),
            "unknown model \"x\"; this API serves \"a\""
        );
        let version = InferenceError::VersionNotFound {
            name: "a".into(),
            version: "2".into(),
            served: "1".into(),
        };
        assert_eq!(version.kind(), ErrorKind::NotFound);
        assert_eq!(
            version.to_string(),
            "model \"a\" has no version \"2\"; the version served is \"1\""
        );
        assert!(version.is_client_error());
        let overloaded = InferenceError::Overloaded { capacity: 4 };
        assert_eq!(overloaded.kind(), ErrorKind::Overloaded);
        assert!(!overloaded.is_client_error());
        assert_eq!(InferenceError::Stopped.kind(), ErrorKind::Internal);
        assert_eq!(
            InferenceError::Rejected("r".into()).kind(),
            ErrorKind::InvalidRequest
        );
    }
}
