//! The resolved API specification: what one API of a config file means once every default is
//! filled in, whichever config format it was written in. Replicas receive it as JSON, so every
//! type here round-trips through serde_json exactly.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::units::{CountOrPercent, Cpu, DurationSpec, Memory};

mod onnx;
mod splitter;

use onnx::providers_serde;
pub use onnx::{ExecutionMode, ExecutionProviderName, GraphOptimizationLevel, OnnxOptions};
pub use splitter::{SplitTarget, SplitterKind, SplitterSpec};

/// One API, fully resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiSpec {
    pub name: String,
    pub kind: ApiKind,
    /// Always starts with `/`.
    pub endpoint: String,
    pub predictor: PredictorSpec,
    pub tracker: Option<TrackerSpec>,
    pub compute: ComputeSpec,
    pub autoscaling: AutoscalingSpec,
    pub update_strategy: UpdateStrategySpec,
    pub format: ConfigFormat,
}

/// What kind of API it is. `SyncAPI` in a config file is an alias of `RealtimeAPI`.
#[allow(clippy::upper_case_acronyms)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ApiKind {
    RealtimeAPI,
    BatchAPI,
}

impl ApiKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ApiKind::RealtimeAPI => "RealtimeAPI",
            ApiKind::BatchAPI => "BatchAPI",
        }
    }
}

impl fmt::Display for ApiKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which config format the API was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConfigFormat {
    /// Seeds 000/002/003: a list of APIs with `predictor.type`, `autoscaling`,
    /// `update_strategy`.
    Current,
    /// Seed 001: `kind: api` items (and an optional `kind: deployment`), `predictor.metadata`,
    /// replica counts under `compute`, function-style predictors allowed.
    Legacy,
}

/// The predictor: the user's Python code and the model(s) it serves.
///
/// Serialized with the fields below in order, except that [`PredictorSpec::onnx`] appears as
/// `session_options` (its four numeric and named options) and `execution_providers` (`"auto"`
/// or a list of names), as in a config file, and only for ONNX predictors.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictorSpec {
    /// `type` when serialized.
    pub kind: PredictorType,
    /// Path of the predictor's Python file, relative to the project directory.
    pub path: Option<String>,
    /// A single model: a URL (`s3://…`, `gs://…`, `az://…`, `https://…`), a model store tag
    /// (`iris:latest`, `iris:1a2b`; see [`crate::ModelRef`]) or a local path (relative to the
    /// project directory, or absolute).
    pub model: Option<String>,
    /// Several models; exclusive with `model`.
    pub models: Option<ModelsSpec>,
    /// `config` (or `metadata` in the legacy format), passed to the predictor. `{}` by default.
    pub config: serde_json::Map<String, serde_json::Value>,
    /// Appended to PYTHONPATH, relative to the project directory (default: the project
    /// directory itself).
    pub python_path: Option<String>,
    pub env: BTreeMap<String, String>,
    /// ONNX Runtime session options: `Some` for every ONNX predictor read from a config file,
    /// `None` for other types. A spec serialized before these options existed deserializes
    /// with `None` even for an ONNX predictor; treat that as [`OnnxOptions::defaults_for`] the
    /// API's `compute.cpu`.
    pub onnx: Option<OnnxOptions>,
    /// `s3`: where `s3://` models come from when it is not AWS (an S3-compatible server).
    pub s3: Option<S3Options>,
    /// `signature_key`: the SavedModel signature served for `model` (TensorFlow predictors;
    /// default: `serving_default`, else the model's only signature).
    pub signature_key: Option<String>,
    /// `server_side_batching` (Cortex): group requests for Python and TensorFlow predictors.
    pub server_side_batching: Option<ServerSideBatching>,
    /// `batching`: adaptive batching of the model engines' requests (ONNX and TensorFlow), for
    /// every model of the API unless an entry of `models` has its own.
    pub batching: Option<BatchingSpec>,
    /// `preinstalled_packages` (default true): add to the API's environment the packages that
    /// Cortex's images had pre-installed for this predictor type and that the project's code
    /// imports without listing them.
    pub preinstalled_packages: bool,
}

/// `batching` of a predictor or of one of its models: how the engine batches the requests of
/// a model with a dynamic batch axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchingSpec {
    /// `false` turns batching off for a model whose API batches the others.
    pub enabled: bool,
    /// The most rows in one run.
    pub max_batch_size: u32,
    /// A request still waiting for the engine after this is dropped unrun (503).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_latency: Option<DurationSpec>,
    /// How long the first request may wait for others while the engine is idle.
    pub max_queue_delay: DurationSpec,
    /// The most requests waiting for the model; beyond, 503 at once.
    pub max_queue_size: u32,
}

impl Default for BatchingSpec {
    /// Good without tuning: batches grow only from requests that queue while the engine is
    /// busy (no wait when it is idle), up to 32 rows; no deadline; 1024 waiting.
    fn default() -> Self {
        BatchingSpec {
            enabled: true,
            max_batch_size: 32,
            max_latency: None,
            max_queue_delay: DurationSpec::from_secs(0),
            max_queue_size: 1024,
        }
    }
}

/// `predictor.server_side_batching`, as Cortex defined it: requests that arrive within
/// `batch_interval` are grouped, up to `max_batch_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerSideBatching {
    pub max_batch_size: u32,
    pub batch_interval: DurationSpec,
}

/// `predictor.s3`: overrides `AWS_ENDPOINT_URL` and `AWS_REGION` for this API's `s3://` models.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct S3Options {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PredictorType {
    Python,
    Onnx,
    Tensorflow,
}

impl PredictorType {
    pub fn as_str(&self) -> &'static str {
        match self {
            PredictorType::Python => "python",
            PredictorType::Onnx => "onnx",
            PredictorType::Tensorflow => "tensorflow",
        }
    }
}

impl fmt::Display for PredictorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The serialized form of a predictor (see [`PredictorSpec`]).
#[derive(Serialize)]
struct PredictorOut<'a> {
    #[serde(rename = "type")]
    kind: PredictorType,
    path: &'a Option<String>,
    model: &'a Option<String>,
    models: &'a Option<ModelsSpec>,
    config: &'a serde_json::Map<String, serde_json::Value>,
    python_path: &'a Option<String>,
    env: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_options: Option<SessionOptions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    execution_providers: Option<ProvidersOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    s3: &'a Option<S3Options>,
    #[serde(skip_serializing_if = "Option::is_none")]
    signature_key: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_side_batching: &'a Option<ServerSideBatching>,
    #[serde(skip_serializing_if = "Option::is_none")]
    batching: &'a Option<BatchingSpec>,
    preinstalled_packages: bool,
}

#[derive(Deserialize)]
struct PredictorIn {
    #[serde(rename = "type")]
    kind: PredictorType,
    path: Option<String>,
    model: Option<String>,
    models: Option<ModelsSpec>,
    config: serde_json::Map<String, serde_json::Value>,
    python_path: Option<String>,
    env: BTreeMap<String, String>,
    #[serde(default)]
    session_options: Option<SessionOptions>,
    /// `None` when absent; `Some(None)` for `"auto"`.
    #[serde(default, deserialize_with = "present_providers")]
    execution_providers: Option<Option<Vec<ExecutionProviderName>>>,
    #[serde(default)]
    s3: Option<S3Options>,
    #[serde(default)]
    signature_key: Option<String>,
    #[serde(default)]
    server_side_batching: Option<ServerSideBatching>,
    #[serde(default)]
    batching: Option<BatchingSpec>,
    #[serde(default = "yes")]
    preinstalled_packages: bool,
}

fn yes() -> bool {
    true
}

fn present_providers<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<Vec<ExecutionProviderName>>>, D::Error> {
    providers_serde::deserialize(deserializer).map(Some)
}

/// The four session options of [`OnnxOptions`], as `session_options` holds them.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct SessionOptions {
    intra_op_num_threads: u32,
    inter_op_num_threads: u32,
    graph_optimization_level: GraphOptimizationLevel,
    execution_mode: ExecutionMode,
}

struct ProvidersOut<'a>(&'a Option<Vec<ExecutionProviderName>>);

impl Serialize for ProvidersOut<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        providers_serde::serialize(self.0, serializer)
    }
}

impl Serialize for PredictorSpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let onnx = self.onnx.as_ref();
        PredictorOut {
            kind: self.kind,
            path: &self.path,
            model: &self.model,
            models: &self.models,
            config: &self.config,
            python_path: &self.python_path,
            env: &self.env,
            session_options: onnx.map(|o| SessionOptions {
                intra_op_num_threads: o.intra_op_num_threads,
                inter_op_num_threads: o.inter_op_num_threads,
                graph_optimization_level: o.graph_optimization_level,
                execution_mode: o.execution_mode,
            }),
            execution_providers: onnx.map(|o| ProvidersOut(&o.execution_providers)),
            s3: &self.s3,
            signature_key: &self.signature_key,
            server_side_batching: &self.server_side_batching,
            batching: &self.batching,
            preinstalled_packages: self.preinstalled_packages,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for PredictorSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let p = PredictorIn::deserialize(deserializer)?;
        let onnx = match (p.session_options, p.execution_providers) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(serde::de::Error::custom(
                    "execution_providers without session_options",
                ))
            }
            (Some(s), providers) => Some(OnnxOptions {
                intra_op_num_threads: s.intra_op_num_threads,
                inter_op_num_threads: s.inter_op_num_threads,
                graph_optimization_level: s.graph_optimization_level,
                execution_mode: s.execution_mode,
                execution_providers: providers.flatten(),
            }),
        };
        Ok(PredictorSpec {
            kind: p.kind,
            path: p.path,
            model: p.model,
            models: p.models,
            config: p.config,
            python_path: p.python_path,
            env: p.env,
            onnx,
            s3: p.s3,
            signature_key: p.signature_key,
            server_side_batching: p.server_side_batching,
            batching: p.batching,
            preinstalled_packages: p.preinstalled_packages,
        })
    }
}

/// Several models for one API: named paths, and/or a directory holding one model per entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelsSpec {
    pub paths: Vec<NamedModel>,
    pub dir: Option<String>,
    /// `models.signature_key`: the SavedModel signature of every model that does not name its
    /// own (TensorFlow predictors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedModel {
    pub name: String,
    /// A URL or a local path, like [`PredictorSpec::model`].
    pub model: String,
    /// The SavedModel signature to serve (TensorFlow predictors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_key: Option<String>,
    /// This model's own `batching` (instead of the predictor's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batching: Option<BatchingSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackerSpec {
    /// The JSON key of the response to track.
    pub key: Option<String>,
    pub model_type: ModelType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelType {
    Classification,
    Regression,
}

impl ModelType {
    pub fn as_str(&self) -> &'static str {
        match self {
            ModelType::Classification => "classification",
            ModelType::Regression => "regression",
        }
    }
}

impl fmt::Display for ModelType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Resources requested per replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComputeSpec {
    pub cpu: Cpu,
    pub gpu: u32,
    pub mem: Option<Memory>,
}

impl Default for ComputeSpec {
    /// `cpu: 200m`, `gpu: 0`, no memory request.
    fn default() -> Self {
        ComputeSpec {
            cpu: Cpu::default(),
            gpu: 0,
            mem: None,
        }
    }
}

/// Replica counts, workers and the request-based autoscaler's parameters
/// (see `cortex-semantics.md`, section 4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoscalingSpec {
    pub min_replicas: u32,
    pub max_replicas: u32,
    pub init_replicas: u32,
    pub workers_per_replica: u32,
    pub threads_per_worker: u32,
    pub target_replica_concurrency: f64,
    pub max_replica_concurrency: u32,
    pub window: DurationSpec,
    pub downscale_stabilization_period: DurationSpec,
    pub upscale_stabilization_period: DurationSpec,
    pub max_downscale_factor: f64,
    pub max_upscale_factor: f64,
    pub downscale_tolerance: f64,
    pub upscale_tolerance: f64,
    /// Only in the legacy format (default 80 there). Kept, but gyrus scales on in-flight
    /// requests, not CPU.
    pub target_cpu_utilization: Option<u32>,
}

impl Default for AutoscalingSpec {
    /// The defaults of seed 000/003.
    fn default() -> Self {
        AutoscalingSpec {
            min_replicas: 1,
            max_replicas: 100,
            init_replicas: 1,
            workers_per_replica: 1,
            threads_per_worker: 1,
            target_replica_concurrency: 1.0,
            max_replica_concurrency: 1024,
            window: DurationSpec::from_secs(60),
            downscale_stabilization_period: DurationSpec::from_secs(300),
            upscale_stabilization_period: DurationSpec::from_secs(0),
            max_downscale_factor: 0.5,
            max_upscale_factor: 10.0,
            downscale_tolerance: 0.1,
            upscale_tolerance: 0.1,
            target_cpu_utilization: None,
        }
    }
}

/// How a new version of an API replaces the old one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStrategySpec {
    pub max_surge: CountOrPercent,
    pub max_unavailable: CountOrPercent,
}

impl UpdateStrategySpec {
    /// `(surge, unavailable)` replicas for `desired` replicas, as Kubernetes computes them:
    /// surge rounds up, unavailable rounds down, and when both come out as 0, one replica may be
    /// unavailable so that the update can make progress.
    pub fn resolve(&self, desired: u32) -> (u32, u32) {
        let surge = self.max_surge.resolve_up(desired);
        let unavailable = self.max_unavailable.resolve_down(desired);
        if surge == 0 && unavailable == 0 {
            (0, 1)
        } else {
            (surge, unavailable)
        }
    }
}

impl Default for UpdateStrategySpec {
    /// 25% and 25%.
    fn default() -> Self {
        UpdateStrategySpec {
            max_surge: CountOrPercent::Percent(25),
            max_unavailable: CountOrPercent::Percent(25),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_intra_op_threads_round_cpu_up() {
        let threads = |millis| OnnxOptions::default_intra_op_num_threads(Cpu::from_millis(millis));
        assert_eq!(threads(200), 1);
        assert_eq!(threads(1), 1);
        assert_eq!(threads(0), 1);
        assert_eq!(threads(1000), 1);
        assert_eq!(threads(1001), 2);
        assert_eq!(threads(2500), 3);
        assert_eq!(threads(u64::MAX), u32::MAX);
    }

    #[test]
    fn names_match_serde() {
        for level in GraphOptimizationLevel::ALL {
            let json = serde_json::to_value(level).unwrap_or_default();
            assert_eq!(json, level.as_str());
            assert_eq!(serde_json::from_value(json).ok(), Some(level));
        }
        for mode in ExecutionMode::ALL {
            let json = serde_json::to_value(mode).unwrap_or_default();
            assert_eq!(json, mode.as_str());
            assert_eq!(serde_json::from_value(json).ok(), Some(mode));
        }
        for provider in ExecutionProviderName::ALL {
            let json = serde_json::to_value(provider).unwrap_or_default();
            assert_eq!(json, provider.as_str());
            assert_eq!(serde_json::from_value(json).ok(), Some(provider));
        }
        assert_eq!(
            GraphOptimizationLevel::EnableAll.ort_name(),
            "ORT_ENABLE_ALL"
        );
        assert_eq!(ExecutionMode::Parallel.ort_name(), "ORT_PARALLEL");
        assert_eq!(
            ExecutionProviderName::Tensorrt.ort_name(),
            "TensorrtExecutionProvider"
        );
    }
}
