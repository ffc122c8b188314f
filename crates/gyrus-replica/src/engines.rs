//! The replica's model engines: loading an API's models into ONNX Runtime or TensorFlow (on a
//! blocking thread, once, before the replica is ready), the batching policy of each model, and
//! the models' signatures as the Python workers' model clients receive them.

use gyrus_engine::{Model, ModelSet, SessionConfig};
use gyrus_launch::{ModelFile, ReplicaLaunch};
use gyrus_runtime::{BatchPolicy, ModelInfo, TensorflowBackend};
use gyrus_spec::{ApiSpec, OnnxOptions};

use crate::ReplicaError;

/// The engine's session options for an API's `session_options` and `execution_providers`.
fn session_config(options: Option<&OnnxOptions>) -> SessionConfig {
    let Some(o) = options else {
        return SessionConfig::default();
    };
    SessionConfig {
        intra_op_threads: o.intra_op_num_threads as usize,
        inter_op_threads: o.inter_op_num_threads as usize,
        optimization: match o.graph_optimization_level {
            gyrus_spec::GraphOptimizationLevel::DisableAll => {
                gyrus_engine::OptimizationLevel::Disable
            }
            gyrus_spec::GraphOptimizationLevel::EnableBasic => {
                gyrus_engine::OptimizationLevel::Basic
            }
            gyrus_spec::GraphOptimizationLevel::EnableExtended => {
                gyrus_engine::OptimizationLevel::Extended
            }
            gyrus_spec::GraphOptimizationLevel::EnableAll => gyrus_engine::OptimizationLevel::All,
        },
        parallel_execution: o.execution_mode == gyrus_spec::ExecutionMode::Parallel,
        providers: match &o.execution_providers {
            None => gyrus_engine::Providers::Auto,
            Some(list) => gyrus_engine::Providers::List(
                list.iter()
                    .map(|p| match p {
                        gyrus_spec::ExecutionProviderName::Tensorrt => {
                            gyrus_engine::Provider::TensorRt
                        }
                        gyrus_spec::ExecutionProviderName::Cuda => gyrus_engine::Provider::Cuda,
                        gyrus_spec::ExecutionProviderName::Cpu => gyrus_engine::Provider::Cpu,
                    })
                    .collect(),
            ),
        },
    }
}

/// Loads every model of the API, in order. Runs on a blocking thread: big models take seconds.
pub(crate) async fn load_models(
    opts: &ReplicaLaunch,
    spec: &ApiSpec,
) -> Result<ModelSet, ReplicaError> {
    let library = opts
        .onnx_library
        .clone()
        .ok_or(ReplicaError::NoOnnxLibrary)?;
    let config = session_config(spec.predictor.onnx.as_ref());
    let models = opts.models.clone();
    let id = opts.id.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        gyrus_engine::init_library(&library)?;
        let mut loaded = Vec::new();
        for ModelFile { name, path, .. } in &models {
            let started = std::time::Instant::now();
            let mut warn = |w: String| tracing::warn!("replica {id}: warning: model {name}: {w}");
            let model = Model::load(name, path, &config, &mut warn)?;
            tracing::info!(
                "replica {id}: loaded model {name} from {} in {} ms ({})",
                path.display(),
                started.elapsed().as_millis(),
                model.providers().join(", ")
            );
            loaded.push(model);
        }
        Ok::<_, gyrus_engine::EngineError>(loaded)
    })
    .await
    .map_err(|e| ReplicaError::Serve(std::io::Error::other(e.to_string())))??;
    Ok(ModelSet::new(loaded))
}

/// Loads every SavedModel of the API, in order, on a blocking thread.
pub(crate) async fn load_tensorflow_models(
    opts: &ReplicaLaunch,
) -> Result<TensorflowBackend, ReplicaError> {
    let library = opts
        .tensorflow_library
        .clone()
        .ok_or(ReplicaError::NoTensorflowLibrary)?;
    let models = opts.models.clone();
    let id = opts.id.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        gyrus_tensorflow::init_library(&library)?;
        let config = gyrus_tensorflow::SessionConfig::default();
        let mut loaded = Vec::new();
        for m in &models {
            let started = std::time::Instant::now();
            let model = gyrus_tensorflow::Model::load(
                &m.name,
                &m.path,
                m.signature_key.as_deref(),
                &config,
            )?;
            tracing::info!(
                "replica {id}: loaded SavedModel {} from {}{} (signature \"{}\") in {} ms",
                m.name,
                model.dir().display(),
                model
                    .version()
                    .map(|v| format!(", version {v}"))
                    .unwrap_or_default(),
                model.signature_key(),
                started.elapsed().as_millis(),
            );
            loaded.push(model);
        }
        Ok::<_, gyrus_engine::EngineError>(loaded)
    })
    .await
    .map_err(|e| ReplicaError::Serve(std::io::Error::other(e.to_string())))??;
    Ok(TensorflowBackend::new(loaded))
}

/// The batching of each model that has it enabled (its `models` entry's `batching`, else the
/// predictor's, else Cortex's `server_side_batching` of a TensorFlow predictor, else the
/// defaults for a store model saved as `batchable`). A model without a dynamic batch axis
/// (dimension 0 of every input and output of any size) cannot be batched: that fails the
/// replica, and so the deploy, with a message.
pub(crate) fn batching_policies(
    spec: &ApiSpec,
    files: &[ModelFile],
    models: &[ModelInfo],
) -> Result<Vec<(String, BatchPolicy)>, ReplicaError> {
    let p = &spec.predictor;
    let mut policies = Vec::new();
    for m in models {
        let own = p
            .models
            .as_ref()
            .and_then(|ms| ms.paths.iter().find(|e| e.name == m.name))
            .and_then(|e| e.batching);
        // Cortex's server_side_batching of a TensorFlow predictor batched its model (TensorFlow
        // Serving's batching): the same as `batching` with that size and wait.
        let cortex = p
            .server_side_batching
            .filter(|_| p.kind == gyrus_spec::PredictorType::Tensorflow)
            .map(|s| gyrus_spec::BatchingSpec {
                max_batch_size: s.max_batch_size,
                max_queue_delay: s.batch_interval,
                ..gyrus_spec::BatchingSpec::default()
            });
        let store_dim = files
            .iter()
            .find(|f| f.name == m.name)
            .and_then(|f| f.store_batch_dim);
        // Batched by default when the store says so along dimension 0; a model batchable along
        // another dimension is refused only when the config asks for batching.
        let asked = own.or(p.batching).or(cortex);
        let from_store = store_dim
            .filter(|d| *d == 0)
            .map(|_| gyrus_spec::BatchingSpec::default());
        let Some(b) = asked.or(from_store).filter(|b| b.enabled) else {
            continue;
        };
        if let Some(dim) = store_dim.filter(|d| *d != 0) {
            return Err(ReplicaError::Batching(format!(
                "model \"{}\" cannot be batched: its store signature has batch_dim {dim}, and gyrus batches along dimension 0; set batching.enabled: false for it",
                m.name
            )));
        }
        let tensors = m.signature.inputs.iter().map(|t| ("input", t));
        let outputs = m.signature.outputs.iter().map(|t| ("output", t));
        if let Some((what, t)) = tensors
            .chain(outputs)
            .find(|(_, t)| t.shape.first() != Some(&-1))
        {
            return Err(ReplicaError::Batching(format!(
                "model \"{}\" cannot be batched: batching needs a dynamic batch axis (dimension 0 of any size, None in TensorFlow, a symbolic dimension in ONNX) on every input and output, and {what} \"{}\" has shape {}; export the model with a dynamic first dimension, or set batching.enabled: false for it",
                m.name,
                t.name,
                gyrus_engine::ShapeDisplay(&t.shape)
            )));
        }
        policies.push((
            m.name.clone(),
            BatchPolicy {
                max_batch_size: b.max_batch_size as usize,
                max_queue_delay: b.max_queue_delay.as_duration(),
                max_latency: b.max_latency.map(|d| d.as_duration()),
                max_queue_size: b.max_queue_size as usize,
            },
        ));
    }
    Ok(policies)
}

/// The models' signatures as the Python worker's `onnx_client` wants them.
pub(crate) fn signatures_json(models: &[ModelInfo]) -> serde_json::Value {
    let tensors = |list: &[gyrus_engine::TensorInfo]| -> serde_json::Value {
        list.iter()
            .map(|t| {
                serde_json::json!({
                    "name": t.name,
                    "dtype": t.dtype.numpy_name(),
                    "shape": t.shape,
                })
            })
            .collect()
    };
    models
        .iter()
        .map(|m| {
            serde_json::json!({
                "name": m.name,
                "version": m.version,
                "inputs": tensors(&m.signature.inputs),
                "outputs": tensors(&m.signature.outputs),
            })
        })
        .collect()
}
