//! Inference: running a served model on tensors, whatever protocol the tensors came in by.
//!
//! - [`Backend`] (module `backend`): what a model runtime gives the replica: its models' names
//!   and signatures, and `infer` on [`Tensor`](gyrus_engine::Tensor)s. ONNX Runtime implements
//!   it ([`OnnxBackend`], module `onnx`), and so does TensorFlow ([`TensorflowBackend`], module
//!   `tensorflow`).
//! - [`InferenceService`] (module `service`): owns a backend on a dedicated engine thread fed
//!   by a bounded queue, so that inference never runs on the replica's I/O thread. Both the
//!   replica's model API (HTTP handlers, [`InferenceService::infer`]) and the Python workers'
//!   `onnx_client` (INFER frames, [`InferenceService::submit`]) go through it. It is where the
//!   batching dispatcher will sit.
//! - [`InferenceError`] (module `error`): the one error type of inference, with an
//!   [`ErrorKind`] that the protocol layers map to their status codes (the replica maps it to
//!   HTTP in one place; gRPC codes later). Nothing here knows about HTTP.

mod backend;
mod batch;
mod cost;
mod dispatch;
mod error;
mod onnx;
mod queue;
mod service;
mod stats;
mod tensorflow;

pub use backend::{Backend, ModelInfo};
pub use batch::BatchPolicy;
pub use error::{ErrorKind, InferenceError};
pub use onnx::OnnxBackend;
pub use service::{
    InferenceService, ServiceConfig, DEFAULT_INLINE_BELOW, DEFAULT_QUEUE_CAPACITY, MODEL_VERSION,
};
pub use stats::{ModelStats, BATCH_BUCKETS};
pub use tensorflow::TensorflowBackend;
