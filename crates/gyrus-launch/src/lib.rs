//! The contract between the daemon and a replica process, defined once and used by both sides.
//!
//! - [`ReplicaLaunch`]: everything a replica needs to serve one version of an API. The daemon's
//!   launcher writes it as one JSON line on the replica's stdin (not argv, where `ps` would show
//!   it, and not the environment, which the predictor inherits); the replica reads it once.
//!   After that line, stdin stays open: its end (EOF) tells the replica to stop.
//! - [`ReplicaEvent`]: what a replica reports, one JSON line each on its stdout.
//!
//! A Kubernetes launcher will carry the same two types in a pod's spec and logs.

pub mod telemetry;

use std::path::PathBuf;

use gyrus_spec::ApiSpec;
use serde::{Deserialize, Serialize};

/// What a replica is started with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicaLaunch {
    /// `<api>-g<generation>-r<n>`, unique within the daemon's life.
    pub id: String,
    /// The resolved spec of the version it serves.
    pub spec: ApiSpec,
    /// The extracted project snapshot: the predictor's working directory.
    pub project_dir: PathBuf,
    /// The Python interpreter of the API's environment.
    pub python: PathBuf,
    /// Where the embedded worker script is written.
    pub lib_dir: PathBuf,
    /// Absolute local path of `predictor.model`, if the API has one.
    pub model_path: Option<PathBuf>,
    /// The models to load into the engine (ONNX and TensorFlow predictors).
    pub models: Vec<ModelFile>,
    /// `libonnxruntime`, for replicas that load ONNX models.
    pub onnx_library: Option<PathBuf>,
    /// `libtensorflow_cc.so.2`, for replicas that load SavedModels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tensorflow_library: Option<PathBuf>,
    /// Set for a batch API's job worker: the job it works for. Such a replica serves the
    /// daemon's batch calls (`POST /_batch/<batch id>`, `POST /_job_complete`), not users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobLaunch>,
    /// Set when the daemon hands this replica its clients' connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handoff: Option<HandoffLaunch>,
}

/// How a replica takes connections from the daemon (`gyrus_gateway::handoff`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HandoffLaunch {
    /// The descriptor of its end of the hand-off channel, inherited from the daemon.
    pub fd: i32,
    /// Where requests on those connections that belong to another API are sent: the
    /// daemon's own address.
    pub daemon: std::net::SocketAddr,
}

/// What a job worker's predictor is constructed with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobLaunch {
    pub job_id: String,
    /// The API's `predictor.config` with the job's `config` merged over it (the job's keys
    /// win): the constructor's `config`.
    pub config: serde_json::Value,
    /// The constructor's `job_spec`: the submission, with `job_id`.
    pub job_spec: serde_json::Value,
}

/// One model for the engine: the name it is served under and its local file (ONNX) or
/// directory (a SavedModel, or one with integer version directories).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelFile {
    pub name: String,
    pub path: PathBuf,
    /// The SavedModel signature to serve (`signature_key`); `None` for the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_key: Option<String>,
    /// For a model from the store whose signature says `batchable`: its `batch_dim`. Such a
    /// model is batched by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_batch_dim: Option<i64>,
}

/// One line on a replica's stdout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum ReplicaEvent {
    /// Bound its HTTP port (loopback), before loading anything.
    Listening { port: u16 },
    /// Models loaded and every Python worker constructed: it can serve.
    Ready,
    /// It cannot serve (before `Ready`); it exits next.
    Failed { error: String },
    /// Once a second while ready: the requests in flight (the autoscaler's input), and whether
    /// the predictor's workers are crash-looping (always false for a model API). Also the
    /// replica's heartbeat: a ready replica that stops sending it is hung.
    Metrics {
        in_flight: usize,
        #[serde(default)]
        workers_crash_looping: bool,
        /// Per model of the inference service (model APIs and model predictors): what it ran
        /// since the replica started.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        models: Vec<ModelStats>,
        /// The requests it answered since it started, by route, status class and latency;
        /// 503s by reason; time in Python workers; the tracker's counts.
        #[serde(default, skip_serializing_if = "telemetry::RequestStats::is_empty")]
        requests: telemetry::RequestStats,
    },
}

/// What a replica's inference service did for one model since the replica started
/// (cumulative counters, so the daemon can sum replicas and take differences).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelStats {
    pub model: String,
    /// Whether the model's requests are batched (`batching`).
    pub batching: bool,
    /// Requests answered by a run of the model.
    pub requests: u64,
    /// Runs of the model (a batch is one run).
    pub runs: u64,
    /// Runs by rows: 1, 2, 3-4, 5-8, 9-16, 17-32, 33-64, 65-128, more.
    pub batch_sizes: Vec<u64>,
    /// Requests waiting for the engine now.
    pub queued: u64,
    /// Requests refused because the model's queue was full (`max_queue_size`).
    pub shed_queue_full: u64,
    /// Requests dropped unrun after waiting past `max_latency`.
    pub shed_deadline: u64,
    /// Microseconds requests waited in the queue, in all.
    pub queue_us: u64,
    /// Microseconds the engine spent running the model, in all.
    pub engine_us: u64,
    /// Engine runs by duration (seconds, [`telemetry::LATENCY_BOUNDS`]).
    #[serde(
        default,
        skip_serializing_if = "telemetry::HistogramSnapshot::is_empty"
    )]
    pub run_seconds: telemetry::HistogramSnapshot,
    /// Requests by time waited in the queue (seconds).
    #[serde(
        default,
        skip_serializing_if = "telemetry::HistogramSnapshot::is_empty"
    )]
    pub queue_seconds: telemetry::HistogramSnapshot,
    /// Runs by rows ([`telemetry::BATCH_BOUNDS`]).
    #[serde(
        default,
        skip_serializing_if = "telemetry::HistogramSnapshot::is_empty"
    )]
    pub batch_rows: telemetry::HistogramSnapshot,
}

impl ReplicaEvent {
    /// The event as its stdout line, without the newline.
    pub fn to_line(&self) -> String {
        // Plain enums of strings and numbers always serialize.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// An event from a stdout line; `None` for anything else the replica printed there.
    pub fn from_line(line: &str) -> Option<ReplicaEvent> {
        serde_json::from_str(line).ok()
    }
}

impl ReplicaLaunch {
    /// The launch as its stdin line, without the newline.
    pub fn to_line(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }

    /// Reads the launch from its stdin line.
    pub fn from_line(line: &str) -> Result<ReplicaLaunch, serde_json::Error> {
        serde_json::from_str(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_in_the_wire_format() {
        for (event, line) in [
            (
                ReplicaEvent::Listening { port: 8080 },
                r#"{"event":"listening","port":8080}"#,
            ),
            (ReplicaEvent::Ready, r#"{"event":"ready"}"#),
            (
                ReplicaEvent::Failed {
                    error: "boom".into(),
                },
                r#"{"event":"failed","error":"boom"}"#,
            ),
            (
                ReplicaEvent::Metrics {
                    in_flight: 3,
                    workers_crash_looping: true,
                    models: Vec::new(),
                    requests: Default::default(),
                },
                r#"{"event":"metrics","in_flight":3,"workers_crash_looping":true}"#,
            ),
        ] {
            assert_eq!(event.to_line(), line);
            assert_eq!(ReplicaEvent::from_line(line), Some(event));
        }
        // Older replicas did not send the flag; other output is not an event.
        assert_eq!(
            ReplicaEvent::from_line(r#"{"event":"metrics","in_flight":0}"#),
            Some(ReplicaEvent::Metrics {
                in_flight: 0,
                workers_crash_looping: false,
                models: Vec::new(),
                requests: Default::default(),
            })
        );
        assert_eq!(ReplicaEvent::from_line("hello from print()"), None);
    }
}
