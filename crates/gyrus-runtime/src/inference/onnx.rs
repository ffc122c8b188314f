//! [`OnnxBackend`]: ONNX Runtime (the engine's [`ModelSet`]) as a [`Backend`].

use gyrus_engine::{ModelSet, ShapePolicy, Tensor};

use super::{Backend, InferenceError, ModelInfo};

/// The models of one replica in ONNX Runtime. Built from models already loaded (loading is
/// [`gyrus_engine::Model::load`], which takes seconds for big models: callers run it on a
/// blocking thread before starting the service).
#[derive(Debug)]
pub struct OnnxBackend {
    set: ModelSet,
    models: Vec<ModelInfo>,
}

impl OnnxBackend {
    pub fn new(set: ModelSet) -> OnnxBackend {
        let models = set
            .models()
            .iter()
            .map(|m| ModelInfo {
                name: m.name().to_string(),
                version: super::MODEL_VERSION.to_string(),
                platform: "onnxruntime_onnx",
                signature: m.signature().clone(),
            })
            .collect();
        OnnxBackend { set, models }
    }

    /// The loaded models (their files and execution providers, for logs).
    pub fn model_set(&self) -> &ModelSet {
        &self.set
    }
}

impl Backend for OnnxBackend {
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
            .set
            .find(model)
            .ok_or_else(|| self.unknown_model(model))?;
        Ok(found.infer(inputs, policy)?)
    }
}
