//! The error type of the worker pool. Inference has its own,
//! [`InferenceError`](crate::InferenceError).

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong between the replica and its Python workers.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The interpreter could not be started at all (missing binary, bad permissions...).
    #[error("cannot start Python worker with {}: {source}", python.display())]
    Spawn {
        python: PathBuf,
        source: std::io::Error,
    },
    /// The user's predictor failed to load or construct. `traceback` is the full Python
    /// traceback; the worker has also printed it to the API's log.
    #[error("worker {worker} failed to initialise the predictor: {error}")]
    InitFailed {
        worker: usize,
        error: String,
        traceback: String,
    },
    /// The worker process died (before it was ready, or while handling this request).
    #[error("worker {worker} exited: {detail}")]
    WorkerExited { worker: usize, detail: String },
    /// A worker sent something that does not follow the protocol.
    #[error("worker protocol error: {0}")]
    Protocol(String),
    /// The request cannot be framed (a field is longer than the protocol allows). The
    /// request is at fault, not the worker.
    #[error("request cannot be sent to a worker: {0}")]
    InvalidRequest(String),
    #[error("I/O error talking to a worker: {0}")]
    Io(#[from] std::io::Error),
    /// [`WorkerPool::shutdown`](crate::WorkerPool::shutdown) was called.
    #[error("the worker pool is shutting down")]
    ShuttingDown,
    /// No worker could take the request: they keep crashing, or every thread stayed busy for
    /// the whole queue timeout. Nothing was sent, so the request can be retried as is, after
    /// `retry_after` (a hint, at least one second).
    #[error("{reason}; retry later")]
    Unavailable {
        reason: String,
        retry_after: Duration,
        /// Every worker is down (crash-looping), rather than all of them busy.
        workers_down: bool,
    },
}
