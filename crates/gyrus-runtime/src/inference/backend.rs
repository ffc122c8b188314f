//! The [`Backend`] trait: what the inference service needs from a model runtime (ONNX Runtime,
//! TensorFlow), and [`ModelInfo`], a served model as callers see it.
//!
//! Loading is not part of the trait: it is each implementation's constructor, run before the
//! service starts (for ONNX Runtime, [`gyrus_engine::Model::load`] for each model, gathered in
//! a [`gyrus_engine::ModelSet`] and wrapped in [`OnnxBackend::new`](super::OnnxBackend::new)).
//! A backend's set of models is fixed once it is built.

use gyrus_engine::{ModelSignature, ShapePolicy, Tensor};

use super::InferenceError;

/// One served model: its name (what requests address it by), the version served and its
/// signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    pub name: String,
    /// The version the Open Inference Protocol reports and accepts: a TensorFlow model's
    /// version directory, else [`MODEL_VERSION`](super::MODEL_VERSION).
    pub version: String,
    /// The runtime, by Triton's platform names (`onnxruntime_onnx`, `tensorflow_savedmodel`).
    pub platform: &'static str,
    pub signature: ModelSignature,
}

/// A model runtime holding loaded models. See the module documentation.
///
/// `models` and `signature` are read on any thread (the replica's I/O thread answers metadata
/// and resolves model names with them); `infer` is called by the inference service's engine
/// thread only.
pub trait Backend: Send + Sync + 'static {
    /// The served models, in the API's order. The list never changes.
    fn models(&self) -> &[ModelInfo];

    /// Runs `model` (exactly one of [`Backend::models`]' names) on `inputs`, which it checks
    /// against the model's signature first (a mismatch is [`InferenceError::InvalidInput`]).
    /// Returns every output, in the model's order.
    fn infer(
        &self,
        model: &str,
        inputs: Vec<Tensor>,
        policy: ShapePolicy,
    ) -> Result<Vec<Tensor>, InferenceError>;

    /// Checks `inputs` against `model`'s signature without running it, as `infer` would, and
    /// puts them in the model's order (so that requests can be batched before they run).
    fn check(
        &self,
        model: &str,
        inputs: &mut Vec<Tensor>,
        policy: ShapePolicy,
    ) -> Result<(), InferenceError> {
        let signature = self
            .signature(model)
            .ok_or_else(|| self.unknown_model(model))?;
        Ok(gyrus_engine::check_inputs(signature, inputs, policy)?)
    }

    /// The error for a model name this backend does not serve.
    fn unknown_model(&self, model: &str) -> InferenceError {
        InferenceError::UnknownModel {
            name: model.to_string(),
            available: self.names(),
        }
    }

    /// The names of the served models, in order.
    fn names(&self) -> Vec<String> {
        self.models().iter().map(|m| m.name.clone()).collect()
    }

    /// The signature of the model called exactly `model`.
    fn signature(&self, model: &str) -> Option<&ModelSignature> {
        self.models()
            .iter()
            .find(|m| m.name == model)
            .map(|m| &m.signature)
    }
}
