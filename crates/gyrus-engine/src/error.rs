//! The engine's errors. [`EngineError::is_client_error`] says which ones a request caused, so
//! the HTTP layers can answer 400 for those and 500 for the rest.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A runtime's shared library (`runtime`: "ONNX Runtime", "TensorFlow") could not be
    /// found, loaded or initialised.
    #[error("{runtime} library {path}: {message}")]
    Library {
        runtime: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("{0} is not initialised: call init_library first")]
    NotInitialised(&'static str),
    /// A model did not load (the runtime's message).
    #[error("model \"{model}\" ({path}) failed to load: {message}")]
    Load {
        model: String,
        path: PathBuf,
        message: String,
    },
    /// A request named a model the API does not serve.
    #[error("unknown model \"{name}\"; this API serves {}", quote_list(available))]
    UnknownModel {
        name: String,
        available: Vec<String>,
    },
    /// The API serves several models and the request did not say which.
    #[error(
        "this API serves several models, so the model name is required: {}",
        quote_list(available)
    )]
    ModelRequired { available: Vec<String> },
    /// The request's tensors do not fit the model's signature.
    #[error("{0}")]
    InvalidInput(String),
    /// ONNX Runtime refused to run the model on inputs that match its signature: the values
    /// themselves are the problem (dynamic dimensions that disagree between inputs, indices out
    /// of range, ...), so this is the request's fault.
    #[error("the model cannot run on these inputs: {0}")]
    Rejected(String),
    /// Something failed around a run (creating tensors, reading outputs): a server fault.
    #[error("inference failed: {0}")]
    Run(String),
}

impl EngineError {
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            EngineError::InvalidInput(_)
                | EngineError::Rejected(_)
                | EngineError::UnknownModel { .. }
                | EngineError::ModelRequired { .. }
        )
    }
}

fn quote_list(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ")
}
