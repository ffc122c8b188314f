//! The TensorFlow engine: SavedModels served through TensorFlow's C API, which is loaded at run
//! time from the `tensorflow-cpu` wheel's `libtensorflow_cc.so.2` (so gyrus builds, and runs
//! every other kind of API, without TensorFlow installed).
//!
//! - [`saved_model`]: which directory holds a model (integer version subdirectories, the highest
//!   served) and the signature to serve, read from `saved_model.pb` with prost: pure Rust, so
//!   the daemon checks `signature_key` at deploy time without TensorFlow;
//! - [`Model`]: one SavedModel in one session; `infer` checks the request's tensors against the
//!   signature with the same code as the ONNX engine ([`gyrus_engine::check_inputs`]), then
//!   runs `TF_SessionRun`. Errors are [`gyrus_engine::EngineError`], the one error type of
//!   every engine, so each protocol maps them once.
//!
//! Requests address a model's inputs and outputs by the signature's keys (`x`,
//! `probabilities`), as TensorFlow Serving's predict API does, not by graph tensor names.

mod capi;
mod model;
mod proto;
pub mod saved_model;

pub use capi::{init_library, library_version};
pub use model::{Model, SessionConfig};
pub use saved_model::{SavedModelError, DEFAULT_SIGNATURE_KEY};

/// The library file inside the `tensorflow` package of a wheel install.
pub const LIBRARY_FILE: &str = "libtensorflow_cc.so.2";
