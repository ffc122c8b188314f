//! The runtime of a gyrus replica: the Python workers and the inference service.
//!
//! A replica serves its API through `workers_per_replica` Python processes, each running the
//! embedded [`WORKER_PY`] script with the user's predictor and `threads_per_worker` threads.
//! The replica talks to each worker over a socketpair (fd 3 in the child) with the binary
//! frames described in `docs/architecture.md` ("Worker protocol"); [`WorkerPool`] owns the
//! processes, balances requests over them and restarts the ones that die.
//!
//! Models run in an [`InferenceService`] (module `inference`): a [`Backend`] (ONNX Runtime's
//! [`OnnxBackend`], TensorFlow's [`TensorflowBackend`]) on a dedicated engine thread, off the
//! replica's I/O thread. The replica's model API and the workers' `onnx_client` and
//! `tensorflow_client` (INFER frames, module `tensor_frame`) all go through it.
//!
//! ```no_run
//! # async fn demo(config: gyrus_runtime::WorkerConfig) -> Result<(), gyrus_runtime::RuntimeError> {
//! let pool = gyrus_runtime::WorkerPool::start(config, 2).await?;
//! let response = pool
//!     .call(gyrus_runtime::PredictRequest {
//!         content_type: "application/json".into(),
//!         body: bytes::Bytes::from_static(b"{\"x\": 1}"),
//!         ..Default::default()
//!     })
//!     .await?;
//! assert_eq!(response.status, 200);
//! pool.shutdown().await;
//! # Ok(()) }
//! ```

mod error;
mod inference;
mod pool;
mod process;
mod protocol;
mod tensor_frame;

use std::path::{Path, PathBuf};

pub use error::RuntimeError;
pub use inference::{
    Backend, BatchPolicy, ErrorKind, InferenceError, InferenceService, ModelInfo, ModelStats,
    OnnxBackend, ServiceConfig, TensorflowBackend, BATCH_BUCKETS, DEFAULT_INLINE_BELOW,
    DEFAULT_QUEUE_CAPACITY, MODEL_VERSION,
};
pub use pool::WorkerPool;
pub use tensor_frame::InferCall;

/// The Python worker, embedded so that a gyrus binary always runs the worker it was built with.
pub const WORKER_PY: &str = include_str!("../python/gyrus_worker.py");

/// FNV-1a of the script, computed at compile time; it names the installed file so that
/// binaries of different versions sharing one `GYRUS_HOME` never overwrite each other's.
const WORKER_HASH: u64 = {
    let bytes = WORKER_PY.as_bytes();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
};

/// Writes the worker script to `dir/worker-<hash>.py` unless an identical file is already
/// there, and returns its path. The file is written to a temporary name and renamed, so
/// concurrent replicas never see (or run) a partial script.
pub fn install_worker_script(dir: &Path) -> std::io::Result<PathBuf> {
    let path = dir.join(format!("worker-{WORKER_HASH:016x}.py"));
    if std::fs::read(&path).is_ok_and(|existing| existing == WORKER_PY.as_bytes()) {
        return Ok(path);
    }
    std::fs::create_dir_all(dir)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = dir.join(format!(
        ".worker-{WORKER_HASH:016x}.{}.{nanos}.tmp",
        std::process::id()
    ));
    std::fs::write(&tmp, WORKER_PY)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })?;
    Ok(path)
}

/// How to start the workers of one replica.
#[derive(Clone)]
pub struct WorkerConfig {
    /// The Python interpreter (base, or of the API's requirements environment).
    pub python: PathBuf,
    /// The installed worker script, see [`install_worker_script`].
    pub script: PathBuf,
    /// The project snapshot; the worker runs here and imports resolve against it.
    pub cwd: PathBuf,
    /// Added to the inherited environment (the API's `env` and `.env`, PYTHONPATH...).
    pub env: Vec<(String, String)>,
    /// The INIT message: a JSON object with `predictor_path`, `predictor_type`, `config`,
    /// `api_spec`, `job_spec`, `model_path` and `api_name`. The pool sets `worker_index` and
    /// `threads` for each worker.
    pub init: serde_json::Value,
    /// Threads per worker (`threads_per_worker`); 0 is taken as 1.
    pub threads: usize,
    /// Answers the workers' INFER frames (`onnx_client.predict`); `None` when the API has no
    /// models, and then INFER frames are answered with an error.
    pub tensors: Option<InferenceService>,
    /// How long a call waits for a free worker thread before it fails with
    /// [`RuntimeError::Unavailable`].
    pub queue_timeout: std::time::Duration,
    /// The delay before restarting a worker that died; it doubles on each further restart
    /// (up to 30 s) until a worker stays up long enough to count as healthy again.
    pub restart_backoff: std::time::Duration,
}

impl std::fmt::Debug for WorkerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerConfig")
            .field("python", &self.python)
            .field("script", &self.script)
            .field("cwd", &self.cwd)
            .field("threads", &self.threads)
            .field("tensors", &self.tensors.is_some())
            .field("queue_timeout", &self.queue_timeout)
            .field("restart_backoff", &self.restart_backoff)
            .finish_non_exhaustive()
    }
}

/// One request for `predict`, as the replica's HTTP server received it.
#[derive(Debug, Clone, Default)]
pub struct PredictRequest {
    /// The Content-Type header, which decides how the worker decodes `body`.
    pub content_type: String,
    /// The raw query string (without `?`); sent only if `predict` takes `query_params`.
    pub query: String,
    /// Request headers; sent (with lower-cased names) only if `predict` takes `headers`.
    pub headers: Vec<(String, String)>,
    pub body: bytes::Bytes,
    /// `?debug=true`: the worker logs the payload and the prediction.
    pub debug: bool,
    /// What the worker calls.
    pub call: Call,
    /// The request's `X-Request-ID`, for the worker's log lines about it (empty: none).
    pub request_id: String,
}

/// What a request asks the worker to call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Call {
    /// A realtime API's `predict(payload, ...)`.
    #[default]
    Predict,
    /// A batch API's `predict(payload, batch_id)`: the body is the batch, a JSON list of items.
    /// A failure is answered with the error and the user's traceback
    /// (`{"error": ..., "traceback": ...}`).
    Batch { batch_id: String },
    /// A batch API's `on_job_complete()`, once per job, after every batch.
    JobComplete,
}

/// What the worker answered: the prediction encoded by type, or a 400/500 error object.
#[derive(Debug, Clone)]
pub struct PredictResponse {
    pub status: u16,
    pub content_type: String,
    pub body: bytes::Bytes,
    /// From the request frame's write to the response frame: the time the worker took.
    pub worker_time: std::time::Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_is_idempotent() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let lib = dir.path().join("lib");
        let first = install_worker_script(&lib)?;
        let second = install_worker_script(&lib)?;
        assert_eq!(first, second);
        assert_eq!(std::fs::read_to_string(&first)?, WORKER_PY);
        // Only the script itself: no temporary files left behind.
        assert_eq!(std::fs::read_dir(&lib)?.count(), 1);
        Ok(())
    }
}
