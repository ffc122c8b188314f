//! Reading a SavedModel without TensorFlow: which directory holds it (TensorFlow Serving's
//! integer version subdirectories, the highest served), and the signature gyrus serves, read
//! from `saved_model.pb` with prost. Pure Rust, so the daemon checks `signature_key` when a
//! project is deployed, on machines where TensorFlow is not installed yet.

use std::path::{Path, PathBuf};

use gyrus_engine::{DataType, ModelSignature, TensorInfo};
use prost::Message;

use crate::proto::{self, dtype, MetaGraphDef, SavedModel};

/// The tag of the meta graph that serving loads (`tf.saved_model.SERVING`).
pub const SERVE_TAG: &str = "serve";
/// The signature served when the config names none (`tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY`).
pub const DEFAULT_SIGNATURE_KEY: &str = "serving_default";
/// A signature TensorFlow adds for its own initialisation, never one to serve.
const INIT_OP_KEY: &str = "__saved_model_init_op";
const SAVED_MODEL_PB: &str = "saved_model.pb";

/// Why a SavedModel cannot be served. Every one is the model's or the config's fault.
#[derive(Debug, thiserror::Error)]
pub enum SavedModelError {
    #[error(
        "{path} is not a SavedModel: it holds no saved_model.pb, nor integer version \
         directories with one (found: {})",
        found_list(found)
    )]
    NotFound { path: PathBuf, found: Vec<String> },
    #[error("{path} has saved_model.pbtxt only; gyrus reads the binary saved_model.pb that tf.saved_model.save writes")]
    TextFormat { path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid saved_model.pb: {source}")]
    Decode {
        path: PathBuf,
        source: prost::DecodeError,
    },
    #[error("the SavedModel has no meta graph tagged \"serve\" (its tag sets: {tags})")]
    NoServeTag { tags: String },
    #[error(
        "signature_key \"{key}\" is not in the model; its signatures are {}",
        quote_list(available)
    )]
    UnknownSignature { key: String, available: Vec<String> },
    #[error(
        "the model has several signatures and none is \"serving_default\"; set signature_key to one of {}",
        quote_list(available)
    )]
    NoDefaultSignature { available: Vec<String> },
    #[error("the model has no signatures to serve; export it with tf.saved_model.save(..., signatures=...)")]
    NoSignatures,
    #[error("signature \"{key}\": {message}")]
    Unsupported { key: String, message: String },
}

fn found_list(found: &[String]) -> String {
    if found.is_empty() {
        "nothing".to_string()
    } else {
        found.join(", ")
    }
}

fn quote_list(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where a model's SavedModel is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The directory holding `saved_model.pb`.
    pub dir: PathBuf,
    /// The version subdirectory it is in, when the model has versions.
    pub version: Option<u64>,
}

/// Finds the SavedModel of a model directory: the directory itself when it holds
/// `saved_model.pb`, else its highest integer-named subdirectory that does (as TensorFlow
/// Serving serves the highest version).
pub fn locate(path: &Path) -> Result<Located, SavedModelError> {
    if path.join(SAVED_MODEL_PB).is_file() {
        return Ok(Located {
            dir: path.to_path_buf(),
            version: None,
        });
    }
    let entries = std::fs::read_dir(path).map_err(|source| SavedModelError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut found = Vec::new();
    let mut best: Option<(u64, PathBuf)> = None;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let child = entry.path();
        if let Ok(version) = name.parse::<u64>() {
            if child.join(SAVED_MODEL_PB).is_file() && best.as_ref().is_none_or(|b| version > b.0) {
                best = Some((version, child.clone()));
            }
        }
        found.push(name);
    }
    if let Some((version, dir)) = best {
        return Ok(Located {
            dir,
            version: Some(version),
        });
    }
    if path.join("saved_model.pbtxt").is_file() {
        return Err(SavedModelError::TextFormat {
            path: path.to_path_buf(),
        });
    }
    found.sort();
    Err(SavedModelError::NotFound {
        path: path.to_path_buf(),
        found,
    })
}

/// Whether `path` looks like a TensorFlow model directory (for `models.dir`): a SavedModel,
/// or integer version directories holding one.
pub fn is_model_dir(path: &Path) -> bool {
    path.is_dir() && locate(path).is_ok()
}

/// A signature chosen for serving: the model's inputs and outputs under the signature's keys
/// (what requests name them), and the graph tensors they feed and fetch, in the same order
/// (sorted by key, as TensorFlow Serving lists them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServingSignature {
    pub key: String,
    pub signature: ModelSignature,
    /// Graph tensor names (`op:index`) of the inputs, in `signature.inputs`' order.
    pub input_tensors: Vec<String>,
    /// Graph tensor names of the outputs, in `signature.outputs`' order.
    pub output_tensors: Vec<String>,
}

/// Reads the `serve` meta graph of the SavedModel in `dir` and picks its signature:
/// `signature_key`, else `serving_default`, else the only one.
pub fn read_signature(
    dir: &Path,
    signature_key: Option<&str>,
) -> Result<ServingSignature, SavedModelError> {
    let file = dir.join(SAVED_MODEL_PB);
    let bytes = std::fs::read(&file).map_err(|source| SavedModelError::Read {
        path: file.clone(),
        source,
    })?;
    let saved = SavedModel::decode(bytes.as_slice())
        .map_err(|source| SavedModelError::Decode { path: file, source })?;
    serving_signature(&saved, signature_key)
}

/// The TensorFlow version that wrote the `serve` meta graph of the SavedModel in `dir` (as
/// `saved_model.pb` records it), when it says.
pub fn writer_version(dir: &Path) -> Option<String> {
    let bytes = std::fs::read(dir.join(SAVED_MODEL_PB)).ok()?;
    let saved = SavedModel::decode(bytes.as_slice()).ok()?;
    let graph = serve_graph(&saved).ok()?;
    graph
        .meta_info_def
        .as_ref()
        .map(|m| m.tensorflow_version.clone())
        .filter(|v| !v.is_empty())
}

/// [`read_signature`] on a decoded SavedModel.
pub fn serving_signature(
    saved: &SavedModel,
    signature_key: Option<&str>,
) -> Result<ServingSignature, SavedModelError> {
    let graph = serve_graph(saved)?;
    let available: Vec<String> = graph
        .signature_def
        .keys()
        .filter(|k| *k != INIT_OP_KEY)
        .cloned()
        .collect();
    let key = match signature_key {
        Some(key) if graph.signature_def.contains_key(key) && key != INIT_OP_KEY => key.to_string(),
        Some(key) => {
            return Err(SavedModelError::UnknownSignature {
                key: key.to_string(),
                available,
            })
        }
        None if available.iter().any(|k| k == DEFAULT_SIGNATURE_KEY) => {
            DEFAULT_SIGNATURE_KEY.to_string()
        }
        None => match available.as_slice() {
            [only] => only.clone(),
            [] => return Err(SavedModelError::NoSignatures),
            _ => return Err(SavedModelError::NoDefaultSignature { available }),
        },
    };
    let def = &graph.signature_def[&key];
    let unsupported = |message: String| SavedModelError::Unsupported {
        key: key.clone(),
        message,
    };
    let mut signature = ModelSignature {
        inputs: Vec::new(),
        outputs: Vec::new(),
    };
    let mut input_tensors = Vec::new();
    let mut output_tensors = Vec::new();
    for (what, map, infos, tensors) in [
        (
            "input",
            &def.inputs,
            &mut signature.inputs,
            &mut input_tensors,
        ),
        (
            "output",
            &def.outputs,
            &mut signature.outputs,
            &mut output_tensors,
        ),
    ] {
        for (name, info) in map {
            let (tensor, tensor_info) =
                tensor_info(name, info).map_err(|m| unsupported(format!("{what} {m}")))?;
            infos.push(tensor_info);
            tensors.push(tensor);
        }
    }
    if signature.outputs.is_empty() {
        return Err(unsupported("it has no outputs".to_string()));
    }
    Ok(ServingSignature {
        key,
        signature,
        input_tensors,
        output_tensors,
    })
}

fn serve_graph(saved: &SavedModel) -> Result<&MetaGraphDef, SavedModelError> {
    let tags = |g: &MetaGraphDef| {
        g.meta_info_def
            .as_ref()
            .map(|m| m.tags.clone())
            .unwrap_or_default()
    };
    saved
        .meta_graphs
        .iter()
        .find(|g| tags(g).iter().any(|t| t == SERVE_TAG))
        .ok_or_else(|| SavedModelError::NoServeTag {
            tags: saved
                .meta_graphs
                .iter()
                .map(|g| format!("[{}]", tags(g).join(", ")))
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// One signature tensor: its graph tensor name and how gyrus describes it.
fn tensor_info(name: &str, info: &proto::TensorInfo) -> Result<(String, TensorInfo), String> {
    let Some(tensor) = info.name.as_ref().filter(|n| !n.is_empty()) else {
        return Err(format!(
            "\"{name}\" is a sparse or composite tensor; gyrus serves dense tensors"
        ));
    };
    let dtype = data_type(info.dtype).ok_or_else(|| {
        format!(
            "\"{name}\" has element type {}, which gyrus cannot serve",
            dtype::name(info.dtype)
        )
    })?;
    let shape = match &info.tensor_shape {
        Some(s) if s.unknown_rank => {
            return Err(format!(
                "\"{name}\" has an unknown rank; export the model with a tf.TensorSpec of known rank (dimensions may be None)"
            ))
        }
        Some(s) => s.dim.iter().map(|d| if d.size < 0 { -1 } else { d.size }).collect(),
        None => Vec::new(),
    };
    Ok((
        tensor.clone(),
        TensorInfo {
            name: name.to_string(),
            dtype,
            shape,
        },
    ))
}

/// gyrus's element type for a TensorFlow `DataType` value.
pub fn data_type(value: i32) -> Option<DataType> {
    Some(match value {
        dtype::FLOAT => DataType::Fp32,
        dtype::DOUBLE => DataType::Fp64,
        dtype::INT32 => DataType::Int32,
        dtype::UINT8 => DataType::Uint8,
        dtype::INT16 => DataType::Int16,
        dtype::INT8 => DataType::Int8,
        dtype::STRING => DataType::String,
        dtype::INT64 => DataType::Int64,
        dtype::BOOL => DataType::Bool,
        dtype::BFLOAT16 => DataType::Bf16,
        dtype::UINT16 => DataType::Uint16,
        dtype::HALF => DataType::Fp16,
        dtype::UINT32 => DataType::Uint32,
        dtype::UINT64 => DataType::Uint64,
        _ => return None,
    })
}

/// TensorFlow's `DataType` value for gyrus's element type.
pub fn tf_data_type(dtype: DataType) -> i32 {
    match dtype {
        DataType::Fp32 => dtype::FLOAT,
        DataType::Fp64 => dtype::DOUBLE,
        DataType::Int32 => dtype::INT32,
        DataType::Uint8 => dtype::UINT8,
        DataType::Int16 => dtype::INT16,
        DataType::Int8 => dtype::INT8,
        DataType::String => dtype::STRING,
        DataType::Int64 => dtype::INT64,
        DataType::Bool => dtype::BOOL,
        DataType::Bf16 => dtype::BFLOAT16,
        DataType::Uint16 => dtype::UINT16,
        DataType::Fp16 => dtype::HALF,
        DataType::Uint32 => dtype::UINT32,
        DataType::Uint64 => dtype::UINT64,
    }
}

#[cfg(test)]
mod tests;
