//! The Open Inference Protocol's metadata bodies (`GET /v2`, `GET /v2/models/<model>`) and its
//! error body, as serde types with builders from a [`ModelSignature`].

use gyrus_engine::{ModelSignature, TensorInfo};
use serde::{Deserialize, Serialize};

/// The server metadata response (`GET /v2`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerMetadata {
    /// Always `gyrus`.
    pub name: String,
    /// gyrus's version.
    pub version: String,
    /// The protocol extensions gyrus implements: `binary_tensor_data`.
    pub extensions: Vec<String>,
}

impl ServerMetadata {
    /// gyrus's server metadata for the given version string.
    pub fn new(version: &str) -> ServerMetadata {
        ServerMetadata {
            name: "gyrus".to_owned(),
            version: version.to_owned(),
            extensions: vec!["binary_tensor_data".to_owned()],
        }
    }
}

/// One input or output in [`ModelMetadata`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorMetadata {
    /// The tensor's name.
    pub name: String,
    /// The protocol's datatype name (`FP32`, `BYTES`, ...).
    pub datatype: String,
    /// The declared shape; `-1` marks a dimension of any size.
    pub shape: Vec<i64>,
}

impl From<&TensorInfo> for TensorMetadata {
    fn from(info: &TensorInfo) -> TensorMetadata {
        TensorMetadata {
            name: info.name.clone(),
            datatype: info.dtype.oip_name().to_owned(),
            shape: info.shape.clone(),
        }
    }
}

/// The model metadata response (`GET /v2/models/<model>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelMetadata {
    /// The model's name as clients address it.
    pub name: String,
    /// The versions served; gyrus serves one per model.
    pub versions: Vec<String>,
    /// Triton's platform name: `onnxruntime_onnx`, `tensorflow_savedmodel`.
    pub platform: String,
    /// The model's inputs, in its order.
    pub inputs: Vec<TensorMetadata>,
    /// The model's outputs, in its order.
    pub outputs: Vec<TensorMetadata>,
}

impl ModelMetadata {
    /// The metadata of a model serving `version` on `platform` with this signature.
    pub fn from_signature(
        name: &str,
        version: &str,
        platform: &str,
        signature: &ModelSignature,
    ) -> ModelMetadata {
        ModelMetadata {
            name: name.to_owned(),
            versions: vec![version.to_owned()],
            platform: platform.to_owned(),
            inputs: signature.inputs.iter().map(TensorMetadata::from).collect(),
            outputs: signature.outputs.iter().map(TensorMetadata::from).collect(),
        }
    }
}

/// The `GET /v2` body: `{"name": "gyrus", "version": ..., "extensions": ["binary_tensor_data"]}`.
pub fn server_metadata(version: &str) -> serde_json::Value {
    serde_json::to_value(ServerMetadata::new(version)).unwrap_or_default()
}

/// The `GET /v2/models/<model>` body for a model with this signature.
pub fn model_metadata(
    name: &str,
    version: &str,
    platform: &str,
    signature: &ModelSignature,
) -> serde_json::Value {
    serde_json::to_value(ModelMetadata::from_signature(
        name, version, platform, signature,
    ))
    .unwrap_or_default()
}

/// An error body, `{"error": "message"}`, as the protocol (and every gyrus endpoint) sends it.
pub fn error_body(message: &str) -> Vec<u8> {
    #[derive(Serialize)]
    struct ErrorBody<'a> {
        error: &'a str,
    }
    serde_json::to_vec(&ErrorBody { error: message })
        .unwrap_or_else(|_| b"{\"error\":\"internal error\"}".to_vec())
}

#[cfg(test)]
mod tests {
    use gyrus_engine::DataType;
    use serde_json::json;

    use super::*;

    #[test]
    fn server() {
        assert_eq!(
            server_metadata("0.1.0"),
            json!({"name": "gyrus", "version": "0.1.0", "extensions": ["binary_tensor_data"]})
        );
    }

    #[test]
    fn model() {
        let signature = ModelSignature {
            inputs: vec![TensorInfo {
                name: "x".into(),
                dtype: DataType::Fp32,
                shape: vec![-1, 4],
            }],
            outputs: vec![
                TensorInfo {
                    name: "label".into(),
                    dtype: DataType::String,
                    shape: vec![-1],
                },
                TensorInfo {
                    name: "p".into(),
                    dtype: DataType::Fp64,
                    shape: vec![-1, 3],
                },
            ],
        };
        let value = model_metadata("iris", "1", "onnxruntime_onnx", &signature);
        assert_eq!(
            value,
            json!({
                "name": "iris",
                "versions": ["1"],
                "platform": "onnxruntime_onnx",
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
                "outputs": [
                    {"name": "label", "datatype": "BYTES", "shape": [-1]},
                    {"name": "p", "datatype": "FP64", "shape": [-1, 3]}
                ]
            })
        );
        let back: ModelMetadata = serde_json::from_value(value).unwrap();
        assert_eq!(
            back,
            ModelMetadata::from_signature("iris", "1", "onnxruntime_onnx", &signature)
        );
    }

    #[test]
    fn errors() {
        assert_eq!(error_body("bad \"x\""), br#"{"error":"bad \"x\""}"#);
    }
}
