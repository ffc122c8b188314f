//! `gyrus-oip`: the pure codecs between HTTP bodies and [`gyrus_engine::Tensor`]s, for the two
//! APIs gyrus serves ONNX models with. No I/O and no HTTP server: the replica's HTTP layer
//! reads headers and bodies, calls these functions and writes what they return.
//!
//! - The Open Inference Protocol v2 REST API (KServe V2, Triton's HTTP API), with the binary
//!   tensor data extension: [`decode_infer`] / [`encode_infer`] (module `infer`, with the
//!   byte layout in `binary`), and the metadata and error bodies ([`server_metadata`],
//!   [`model_metadata`], [`error_body`]; module `metadata`).
//! - gyrus's simple JSON model API: [`decode_simple`] / [`encode_simple`] (module `simple`).
//! - Request body decompression by `Content-Encoding`: [`decompress`] (module `compress`).
//!
//! JSON tensor data is decoded by `json_in` straight into each tensor's little-endian buffer
//! and written by `json_out` straight from it, without `serde_json::Value` trees. Errors are
//! one [`OipError`] with its [`OipErrorKind`]; the server maps kinds to status codes.
//!
//! Decoders check requests against themselves (shape against data, datatype against values),
//! not against a model's signature: that is the engine's job. The exception is the simple
//! API, whose element types come from the signature by input name.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod binary;
mod compress;
mod error;
mod infer;
mod json_in;
mod json_out;
mod metadata;
mod simple;

pub use compress::decompress;
pub use error::{OipError, OipErrorKind};
pub use infer::{
    decode_infer, encode_infer, DecodedInfer, EncodedResponse, OutputSelection, RequestedOutput,
};
pub use metadata::{
    error_body, model_metadata, server_metadata, ModelMetadata, ServerMetadata, TensorMetadata,
};
pub use simple::{decode_simple, encode_simple, encode_simple_body};
