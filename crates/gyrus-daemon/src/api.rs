//! The JSON shapes of the daemon's HTTP API (`/_gyrus/v1`), shared by the daemon and the CLI.

use serde::{Deserialize, Serialize};

/// Path prefix of the control API. Endpoints under it are reserved (the spec rejects them).
pub const API_PREFIX: &str = "/_gyrus/v1";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub version: String,
    /// The rest is only told to a request with the daemon's token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
}

/// One API as `gyrus get` and `gyrus describe` show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiInfo {
    pub name: String,
    pub kind: String,
    pub predictor_type: String,
    pub endpoint: String,
    pub url: String,
    /// `updating`, `live` or `error`.
    pub status: String,
    /// What the API is doing now, e.g. "installing requirements.txt".
    pub message: Option<String>,
    /// What the latest deploy did that its user should know, e.g. the packages gyrus added.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The model download under way, while a deploy fetches a URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<DownloadProgress>,
    pub error: Option<String>,
    pub replicas: ReplicaCounts,
    /// The in-flight load and the autoscaler's decisions, once a version serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingInfo>,
    pub generation: u64,
    pub created_at: String,
    pub updated_at: String,
    pub replica_details: Vec<ReplicaInfo>,
    /// Per model of a model API or model predictor: what the inference service of its live
    /// replicas did since they started, summed (requests, batch sizes, queue, shed requests).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<gyrus_launch::ModelStats>,
    /// A batch API's jobs (it has no replicas of its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jobs: Option<BatchJobs>,
    /// A traffic splitter's APIs (it has no replicas of its own).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub splits: Vec<SplitInfo>,
}

/// One API of a traffic splitter, as `gyrus get` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SplitInfo {
    pub api: String,
    /// Percent of the requests it answers; for the shadow, percent copied to it.
    pub weight: u32,
    pub shadow: bool,
    /// The API's status, or `not deployed`.
    pub status: String,
}

/// A batch API's jobs, as `gyrus get` shows them.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct BatchJobs {
    /// Jobs still enqueuing or running.
    pub running: u32,
    /// Their worker processes serving now.
    pub workers_running: u32,
    /// Every job the API has a record of.
    pub total: u32,
    /// The newest jobs, newest first (at most 10).
    pub recent: Vec<JobBrief>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobBrief {
    pub job_id: String,
    pub status: String,
    pub created_time: String,
    pub end_time: Option<String>,
    pub total_batch_count: u64,
    pub succeeded: u64,
    pub failed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DownloadProgress {
    pub url: String,
    pub done: u64,
    pub total: Option<u64>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, Default)]
pub struct ReplicaCounts {
    /// The desired count (set by the autoscaler between min_replicas and max_replicas).
    pub requested: u32,
    pub ready: u32,
    #[serde(default)]
    pub starting: u32,
    /// Dead and waiting to be restarted, or failed to start.
    #[serde(default)]
    pub failed: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AutoscalingInfo {
    /// The total in-flight requests averaged over `window` (what the autoscaler acts on).
    pub in_flight_avg: Option<f64>,
    /// The total of the last second.
    pub in_flight_now: Option<u32>,
    pub window_secs: u64,
    /// The autoscaler's last tick.
    pub last_decision: Option<ScalingDecision>,
    /// The last tick that changed the replica count.
    pub last_change: Option<ScalingDecision>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScalingDecision {
    pub at: String,
    pub from: u32,
    pub to: u32,
    pub avg_in_flight: Option<f64>,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicaInfo {
    pub id: String,
    pub generation: u64,
    pub pid: Option<u32>,
    pub port: Option<u16>,
    /// `starting`, `ready`, `stopping`, `failed`, `restarting`.
    pub state: String,
    pub in_flight: usize,
    pub started_at: String,
    pub restarts: u32,
    /// Why it failed or was stopped (e.g. out of memory), when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why the replica this one replaced exited (a crash, out of memory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployResponse {
    pub apis: Vec<DeployedApi>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployedApi {
    pub name: String,
    pub endpoint: String,
    /// `created`, `updated` or `up to date`.
    pub result: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// The value of a header holding JSON: base64 of it, so that any value (secrets, non-ASCII)
/// fits in a header.
pub fn encode_header<T: Serialize>(value: &T) -> Result<String, serde_json::Error> {
    Ok(data_encoding::BASE64.encode(&serde_json::to_vec(value)?))
}

/// The inverse of [`encode_header`].
pub fn decode_header<T: serde::de::DeserializeOwned>(raw: &[u8]) -> Result<T, String> {
    let bytes = data_encoding::BASE64
        .decode(raw)
        .map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

/// Header of `POST /deploy`: the deploying user's AWS_*, GOOGLE_*, AZURE_* variables and HOME,
/// as base64 of a JSON object, for fetching model URLs with their credentials.
pub const FETCH_ENV_HEADER: &str = "x-gyrus-fetch-env";

/// Header of `POST /models`: what to save, as base64 of a JSON [`SaveRequest`]. The body is an
/// uncompressed tar of the model's file or directory.
pub const SAVE_HEADER: &str = "x-gyrus-save";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SaveRequest {
    pub name: String,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// `{method: {batchable, batch_dim}}`; empty means `{run: {batchable: false}}`.
    #[serde(default)]
    pub signatures: std::collections::BTreeMap<String, SignatureOptions>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct SignatureOptions {
    pub batchable: bool,
    pub batch_dim: i64,
}

/// One stored model version, as `gyrus models list` and `get` show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelEntry {
    pub tag: String,
    /// Where its files are (a directory under GYRUS_HOME/models).
    pub path: String,
    /// The APIs deployed with this version.
    pub used_by: Vec<String>,
    pub info: gyrus_store::ModelInfo,
}
