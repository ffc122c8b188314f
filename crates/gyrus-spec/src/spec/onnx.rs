//! The ONNX Runtime options of an ONNX predictor, resolved: session options (threads, graph
//! optimisation, execution mode) and execution providers, with their accepted spellings and
//! the serialized form of `execution_providers` (`"auto"` or a list).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::units::Cpu;

/// ONNX Runtime session options, resolved. Present (Some) exactly when predictor.type is onnx.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OnnxOptions {
    /// Threads that run one operator (ONNX Runtime's intra-op pool); 0 lets ONNX Runtime
    /// decide (one per physical core). Default: `compute.cpu` rounded up, at least 1.
    pub intra_op_num_threads: u32,
    /// Threads that run independent operators at once; used only when `execution_mode` is
    /// parallel. 0 lets ONNX Runtime decide. Default 1.
    pub inter_op_num_threads: u32,
    /// Default [`GraphOptimizationLevel::EnableAll`].
    pub graph_optimization_level: GraphOptimizationLevel,
    /// Default [`ExecutionMode::Sequential`].
    pub execution_mode: ExecutionMode,
    /// None: automatic (CUDA when the ONNX Runtime build has it and a GPU answers, else CPU).
    /// Otherwise the providers to try in order; one that is not available is skipped with a
    /// warning, and CPU is always the last resort (listed or not). Serialized as `"auto"` or
    /// a list of names.
    #[serde(with = "providers_serde")]
    pub execution_providers: Option<Vec<ExecutionProviderName>>,
}

impl OnnxOptions {
    /// The default `intra_op_num_threads` for a CPU request: whole cores, rounded up, at
    /// least 1 (`200m` gives 1, `2.5` gives 3).
    pub fn default_intra_op_num_threads(cpu: Cpu) -> u32 {
        u32::try_from(cpu.millis().div_ceil(1000))
            .unwrap_or(u32::MAX)
            .max(1)
    }

    /// Every option at its default, for an API that requests `cpu`.
    pub fn defaults_for(cpu: Cpu) -> Self {
        OnnxOptions {
            intra_op_num_threads: Self::default_intra_op_num_threads(cpu),
            inter_op_num_threads: 1,
            graph_optimization_level: GraphOptimizationLevel::EnableAll,
            execution_mode: ExecutionMode::Sequential,
            execution_providers: None,
        }
    }
}

/// How much ONNX Runtime rewrites the graph when it loads a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GraphOptimizationLevel {
    DisableAll,
    EnableBasic,
    EnableExtended,
    EnableAll,
}

impl GraphOptimizationLevel {
    pub const ALL: [GraphOptimizationLevel; 4] = [
        GraphOptimizationLevel::DisableAll,
        GraphOptimizationLevel::EnableBasic,
        GraphOptimizationLevel::EnableExtended,
        GraphOptimizationLevel::EnableAll,
    ];

    /// The name in a config file (`enable_all`).
    pub fn as_str(&self) -> &'static str {
        match self {
            GraphOptimizationLevel::DisableAll => "disable_all",
            GraphOptimizationLevel::EnableBasic => "enable_basic",
            GraphOptimizationLevel::EnableExtended => "enable_extended",
            GraphOptimizationLevel::EnableAll => "enable_all",
        }
    }

    /// The name in onnxruntime's Python API (`ORT_ENABLE_ALL`), also accepted in a config file.
    pub fn ort_name(&self) -> &'static str {
        match self {
            GraphOptimizationLevel::DisableAll => "ORT_DISABLE_ALL",
            GraphOptimizationLevel::EnableBasic => "ORT_ENABLE_BASIC",
            GraphOptimizationLevel::EnableExtended => "ORT_ENABLE_EXTENDED",
            GraphOptimizationLevel::EnableAll => "ORT_ENABLE_ALL",
        }
    }
}

impl fmt::Display for GraphOptimizationLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether ONNX Runtime runs a graph's operators one at a time or independent ones at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionMode {
    Sequential,
    Parallel,
}

impl ExecutionMode {
    pub const ALL: [ExecutionMode; 2] = [ExecutionMode::Sequential, ExecutionMode::Parallel];

    /// The name in a config file (`sequential`).
    pub fn as_str(&self) -> &'static str {
        match self {
            ExecutionMode::Sequential => "sequential",
            ExecutionMode::Parallel => "parallel",
        }
    }

    /// The name in onnxruntime's Python API (`ORT_SEQUENTIAL`), also accepted in a config file.
    pub fn ort_name(&self) -> &'static str {
        match self {
            ExecutionMode::Sequential => "ORT_SEQUENTIAL",
            ExecutionMode::Parallel => "ORT_PARALLEL",
        }
    }
}

impl fmt::Display for ExecutionMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An ONNX Runtime execution provider that a config file can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionProviderName {
    Tensorrt,
    Cuda,
    Cpu,
}

impl ExecutionProviderName {
    pub const ALL: [ExecutionProviderName; 3] = [
        ExecutionProviderName::Tensorrt,
        ExecutionProviderName::Cuda,
        ExecutionProviderName::Cpu,
    ];

    /// The name in a config file (`cuda`).
    pub fn as_str(&self) -> &'static str {
        match self {
            ExecutionProviderName::Tensorrt => "tensorrt",
            ExecutionProviderName::Cuda => "cuda",
            ExecutionProviderName::Cpu => "cpu",
        }
    }

    /// ONNX Runtime's name (`CUDAExecutionProvider`), also accepted in a config file.
    pub fn ort_name(&self) -> &'static str {
        match self {
            ExecutionProviderName::Tensorrt => "TensorrtExecutionProvider",
            ExecutionProviderName::Cuda => "CUDAExecutionProvider",
            ExecutionProviderName::Cpu => "CPUExecutionProvider",
        }
    }
}

impl fmt::Display for ExecutionProviderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `execution_providers` in serialized form: `"auto"` for `None`, else the list.
pub(super) mod providers_serde {
    use serde::de::{self, SeqAccess, Visitor};
    use serde::ser::SerializeSeq;
    use serde::{Deserializer, Serializer};

    use super::ExecutionProviderName;

    pub const AUTO: &str = "auto";

    pub fn serialize<S: Serializer>(
        providers: &Option<Vec<ExecutionProviderName>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match providers {
            None => serializer.serialize_str(AUTO),
            Some(list) => {
                let mut seq = serializer.serialize_seq(Some(list.len()))?;
                for provider in list {
                    seq.serialize_element(provider)?;
                }
                seq.end()
            }
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Vec<ExecutionProviderName>>, D::Error> {
        struct Providers;

        impl<'de> Visitor<'de> for Providers {
            type Value = Option<Vec<ExecutionProviderName>>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"auto\" or a list of execution providers")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                if v == AUTO {
                    Ok(None)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(v), &self))
                }
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut list = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(8));
                while let Some(provider) = seq.next_element()? {
                    list.push(provider);
                }
                Ok(Some(list))
            }
        }

        deserializer.deserialize_any(Providers)
    }
}
