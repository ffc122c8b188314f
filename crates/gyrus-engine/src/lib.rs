//! The ONNX Runtime engine: loads `libonnxruntime` at run time, holds one session per model
//! (shared by every caller in the replica), reads each model's signature, and runs inference
//! on [`Tensor`]s after checking them against that signature so that a bad request is a
//! precise [`EngineError::InvalidInput`] instead of an ONNX Runtime failure.
//!
//! ONNX Runtime's `Run` is not safe to call concurrently on one session (see `ort`'s notes),
//! so each model's session sits behind a mutex: requests to one model run one at a time, each
//! using the session's intra-op threads.

mod convert;
mod error;
mod library;
pub mod tensor;
mod validate;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::ValueType;

pub use error::EngineError;
pub use library::{init_library, library_version, MIN_LIBRARY_VERSION};
pub use tensor::{DataType, ModelSignature, ShapeDisplay, Tensor, TensorData, TensorInfo};
pub use validate::{check_inputs, ShapePolicy};

/// How much ONNX Runtime may rewrite the graph when it loads a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OptimizationLevel {
    Disable,
    Basic,
    Extended,
    #[default]
    All,
}

/// An execution provider the engine knows how to ask ONNX Runtime for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    TensorRt,
    Cuda,
    Cpu,
}

impl Provider {
    /// ONNX Runtime's name, as its Python API spells it.
    pub fn ort_name(self) -> &'static str {
        match self {
            Provider::TensorRt => "TensorrtExecutionProvider",
            Provider::Cuda => "CUDAExecutionProvider",
            Provider::Cpu => "CPUExecutionProvider",
        }
    }
}

/// Which execution providers a session asks for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Providers {
    /// CUDA when this ONNX Runtime build has it (the `onnxruntime-gpu` wheel), else CPU; no
    /// warnings either way.
    #[default]
    Auto,
    /// The user's list, in order of preference. One that cannot be used is skipped with a
    /// warning; CPU is always the last resort.
    List(Vec<Provider>),
}

/// Session options, from the API's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    pub intra_op_threads: usize,
    pub inter_op_threads: usize,
    pub optimization: OptimizationLevel,
    pub parallel_execution: bool,
    pub providers: Providers,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            intra_op_threads: 1,
            inter_op_threads: 1,
            optimization: OptimizationLevel::All,
            parallel_execution: false,
            providers: Providers::Auto,
        }
    }
}

/// One loaded model.
pub struct Model {
    name: String,
    path: PathBuf,
    signature: ModelSignature,
    providers: Vec<&'static str>,
    session: Mutex<Session>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("signature", &self.signature)
            .finish()
    }
}

impl Model {
    /// Loads `path` into a new session. [`init_library`] must have succeeded first.
    /// Warnings (a requested execution provider that is not available) go to `warn`.
    pub fn load(
        name: &str,
        path: &Path,
        config: &SessionConfig,
        warn: &mut dyn FnMut(String),
    ) -> Result<Model, EngineError> {
        let load_error = |message: String| EngineError::Load {
            model: name.to_string(),
            path: path.to_path_buf(),
            message,
        };
        let env = library::environment()?;
        let builder = Session::builder(&env).map_err(|e| load_error(e.to_string()))?;
        let level = match config.optimization {
            OptimizationLevel::Disable => GraphOptimizationLevel::Disable,
            OptimizationLevel::Basic => GraphOptimizationLevel::Level1,
            OptimizationLevel::Extended => GraphOptimizationLevel::Level2,
            OptimizationLevel::All => GraphOptimizationLevel::All,
        };
        let err = |e: ort::Error<ort::session::builder::SessionBuilder>| load_error(e.to_string());
        let builder = builder
            .with_intra_threads(config.intra_op_threads)
            .map_err(err)?
            .with_inter_threads(config.inter_op_threads)
            .map_err(err)?
            .with_parallel_execution(config.parallel_execution)
            .map_err(err)?
            .with_optimization_level(level)
            .map_err(err)?;
        let (mut builder, providers) = library::apply_providers(builder, &config.providers, warn)
            .map_err(|e| load_error(e.to_string()))?;
        let session = builder
            .commit_from_file(path)
            .map_err(|e| load_error(e.to_string()))?;
        let signature = read_signature(&session).map_err(load_error)?;
        Ok(Model {
            name: name.to_string(),
            path: path.to_path_buf(),
            signature,
            providers,
            session: Mutex::new(session),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn signature(&self) -> &ModelSignature {
        &self.signature
    }

    /// The execution providers the session was given, in order of preference.
    pub fn providers(&self) -> &[&'static str] {
        &self.providers
    }

    /// Checks `inputs` against the signature and runs the model. Returns every output, in the
    /// model's order.
    pub fn infer(
        &self,
        mut inputs: Vec<Tensor>,
        policy: ShapePolicy,
    ) -> Result<Vec<Tensor>, EngineError> {
        validate::check_inputs(&self.signature, &mut inputs, policy)?;
        let values = inputs
            .iter()
            .map(|t| convert::to_value(t).map(|v| (t.name.clone(), v)))
            .collect::<Result<Vec<_>, EngineError>>()?;
        let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let outputs = session
            .run(values)
            .map_err(|e| EngineError::Rejected(e.to_string()))?;
        self.signature
            .outputs
            .iter()
            .map(|info| match outputs.get(info.name.as_str()) {
                Some(value) => convert::from_value(&info.name, value),
                None => Err(EngineError::Run(format!(
                    "ONNX Runtime returned no output \"{}\"",
                    info.name
                ))),
            })
            .collect()
    }
}

fn read_signature(session: &Session) -> Result<ModelSignature, String> {
    let read = |outlets: &[ort::value::Outlet], what: &str| {
        outlets
            .iter()
            .map(|o| match o.dtype() {
                ValueType::Tensor { ty, shape, .. } => match convert::data_type(*ty) {
                    Some(dtype) => Ok(TensorInfo {
                        name: o.name().to_string(),
                        dtype,
                        shape: shape.iter().map(|d| if *d < 0 { -1 } else { *d }).collect(),
                    }),
                    None => Err(format!(
                        "{what} \"{}\" has element type {ty:?}, which gyrus cannot serve",
                        o.name()
                    )),
                },
                other => Err(format!(
                    "{what} \"{}\" is a {other:?}, not a tensor; gyrus serves tensor inputs and outputs only",
                    o.name()
                )),
            })
            .collect::<Result<Vec<_>, String>>()
    };
    Ok(ModelSignature {
        inputs: read(session.inputs(), "input")?,
        outputs: read(session.outputs(), "output")?,
    })
}

/// The models of one replica, in the order the API lists them.
#[derive(Debug, Default)]
pub struct ModelSet {
    models: Vec<Arc<Model>>,
}

impl ModelSet {
    pub fn new(models: Vec<Model>) -> ModelSet {
        ModelSet {
            models: models.into_iter().map(Arc::new).collect(),
        }
    }

    pub fn models(&self) -> &[Arc<Model>] {
        &self.models
    }

    pub fn names(&self) -> Vec<String> {
        self.models.iter().map(|m| m.name.clone()).collect()
    }

    /// The model called `name`; with `None`, the only model (an error when there are
    /// several). As in Cortex, a name given to a single-model API is ignored.
    pub fn get(&self, name: Option<&str>) -> Result<&Arc<Model>, EngineError> {
        match (name, self.models.as_slice()) {
            (_, [only]) => Ok(only),
            (None, _) => Err(EngineError::ModelRequired {
                available: self.names(),
            }),
            (Some(name), all) => {
                all.iter()
                    .find(|m| m.name == name)
                    .ok_or_else(|| EngineError::UnknownModel {
                        name: name.to_string(),
                        available: self.names(),
                    })
            }
        }
    }

    /// The model called exactly `name` (the Open Inference Protocol addresses models by name).
    pub fn find(&self, name: &str) -> Option<&Arc<Model>> {
        self.models.iter().find(|m| m.name == name)
    }
}
