//! The resolved API specification: what one API of a config file means once every default is
//! filled in, whichever config format it was written in. Replicas receive it as JSON, so every
//! type here round-trips through serde_json exactly.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::units::{CountOrPercent, Cpu, DurationSpec, Memory};

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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictorSpec {
    #[serde(rename = "type")]
    pub kind: PredictorType,
    /// Path of the predictor's Python file, relative to the project directory.
    pub path: Option<String>,
    /// A single model: a URL (`s3://…`, `gs://…`, `https://…`) or a local path (relative to
    /// the project directory, or absolute).
    pub model: Option<String>,
    /// Several models; exclusive with `model`.
    pub models: Option<ModelsSpec>,
    /// `config` (or `metadata` in the legacy format), passed to the predictor. `{}` by default.
    pub config: serde_json::Map<String, serde_json::Value>,
    /// Appended to PYTHONPATH, relative to the project directory (default: the project
    /// directory itself).
    pub python_path: Option<String>,
    pub env: BTreeMap<String, String>,
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

/// Several models for one API: named paths, and/or a directory holding one model per entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelsSpec {
    pub paths: Vec<NamedModel>,
    pub dir: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedModel {
    pub name: String,
    /// A URL or a local path, like [`PredictorSpec::model`].
    pub model: String,
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
