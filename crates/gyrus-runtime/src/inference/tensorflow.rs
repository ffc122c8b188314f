//! [`TensorflowBackend`]: TensorFlow SavedModels (`gyrus_tensorflow::Model`s) as a [`Backend`].

use gyrus_engine::{ShapePolicy, Tensor};
use gyrus_tensorflow::Model;

use super::{Backend, InferenceError, ModelInfo, MODEL_VERSION};

/// The SavedModels of one replica, in the API's order. Built from models already loaded
/// ([`gyrus_tensorflow::Model::load`] takes seconds for big models: callers run it on a
/// blocking thread before starting the service).
#[derive(Debug)]
pub struct TensorflowBackend {
    loaded: Vec<Model>,
    models: Vec<ModelInfo>,
}

impl TensorflowBackend {
    pub fn new(loaded: Vec<Model>) -> TensorflowBackend {
        let models = loaded
            .iter()
            .map(|m| ModelInfo {
                name: m.name().to_string(),
                // A SavedModel in a version directory is served as that version, as
                // TensorFlow Serving does.
                version: m
                    .version()
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| MODEL_VERSION.to_string()),
                platform: "tensorflow_savedmodel",
                signature: m.signature().clone(),
            })
            .collect();
        TensorflowBackend { loaded, models }
    }

    /// The loaded models (their directories, versions and signature keys, for logs).
    pub fn loaded(&self) -> &[Model] {
        &self.loaded
    }
}

impl Backend for TensorflowBackend {
    fn models(&self) -> &[ModelInfo] {
        &self.models
    }

    fn infer(
        &self,
        model: &str,
        inputs: Vec<Tensor>,
        policy: ShapePolicy,
    ) -> Result<Vec<Tensor>, InferenceError> {
        let found = self
            .loaded
            .iter()
            .find(|m| m.name() == model)
            .ok_or_else(|| self.unknown_model(model))?;
        Ok(found.infer(inputs, policy)?)
    }
}
