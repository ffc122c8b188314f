//! The parts of TensorFlow's protocol buffers that gyrus reads or writes, declared with prost's
//! derive (no `protoc` and no `.proto` files at build time). Field numbers are TensorFlow's
//! (`tensorflow/core/protobuf/saved_model.proto`, `meta_graph.proto`,
//! `framework/tensor_shape.proto`, `protobuf/config.proto`); every field not declared here is
//! skipped when decoding, so a SavedModel's graph is never materialised.

use std::collections::BTreeMap;

/// `saved_model.pb`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SavedModel {
    #[prost(message, repeated, tag = "2")]
    pub meta_graphs: Vec<MetaGraphDef>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct MetaGraphDef {
    #[prost(message, optional, tag = "1")]
    pub meta_info_def: Option<MetaInfoDef>,
    #[prost(btree_map = "string, message", tag = "5")]
    pub signature_def: BTreeMap<String, SignatureDef>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct MetaInfoDef {
    #[prost(string, repeated, tag = "4")]
    pub tags: Vec<String>,
    /// The TensorFlow version that wrote the graph (`tf.__version__`).
    #[prost(string, tag = "5")]
    pub tensorflow_version: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SignatureDef {
    #[prost(btree_map = "string, message", tag = "1")]
    pub inputs: BTreeMap<String, TensorInfo>,
    #[prost(btree_map = "string, message", tag = "2")]
    pub outputs: BTreeMap<String, TensorInfo>,
    #[prost(string, tag = "3")]
    pub method_name: String,
}

/// A signature's tensor. `name`, `coo_sparse` and `composite_tensor` are one `oneof` in
/// TensorFlow; declared as separate optional fields they decode the same.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorInfo {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(int32, tag = "2")]
    pub dtype: i32,
    #[prost(message, optional, tag = "3")]
    pub tensor_shape: Option<TensorShapeProto>,
    #[prost(bytes = "vec", optional, tag = "4")]
    pub coo_sparse: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "5")]
    pub composite_tensor: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShapeProto {
    #[prost(message, repeated, tag = "2")]
    pub dim: Vec<Dim>,
    #[prost(bool, tag = "3")]
    pub unknown_rank: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Dim {
    #[prost(int64, tag = "1")]
    pub size: i64,
    #[prost(string, tag = "2")]
    pub name: String,
}

/// The session options gyrus sets (`TF_SetConfig` takes a serialized `ConfigProto`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConfigProto {
    #[prost(int32, tag = "2")]
    pub intra_op_parallelism_threads: i32,
    #[prost(int32, tag = "5")]
    pub inter_op_parallelism_threads: i32,
}

/// TensorFlow's `DataType` enum values (`framework/types.proto`) that gyrus serves.
pub mod dtype {
    pub const FLOAT: i32 = 1;
    pub const DOUBLE: i32 = 2;
    pub const INT32: i32 = 3;
    pub const UINT8: i32 = 4;
    pub const INT16: i32 = 5;
    pub const INT8: i32 = 6;
    pub const STRING: i32 = 7;
    pub const INT64: i32 = 9;
    pub const BOOL: i32 = 10;
    pub const BFLOAT16: i32 = 14;
    pub const UINT16: i32 = 17;
    pub const HALF: i32 = 19;
    pub const UINT32: i32 = 22;
    pub const UINT64: i32 = 23;

    /// TensorFlow's name for a `DataType` value, for messages (`DT_COMPLEX64`, ...).
    pub fn name(value: i32) -> String {
        let known = match value {
            0 => "DT_INVALID",
            1 => "DT_FLOAT",
            2 => "DT_DOUBLE",
            3 => "DT_INT32",
            4 => "DT_UINT8",
            5 => "DT_INT16",
            6 => "DT_INT8",
            7 => "DT_STRING",
            8 => "DT_COMPLEX64",
            9 => "DT_INT64",
            10 => "DT_BOOL",
            11 => "DT_QINT8",
            12 => "DT_QUINT8",
            13 => "DT_QINT32",
            14 => "DT_BFLOAT16",
            15 => "DT_QINT16",
            16 => "DT_QUINT16",
            17 => "DT_UINT16",
            18 => "DT_COMPLEX128",
            19 => "DT_HALF",
            20 => "DT_RESOURCE",
            21 => "DT_VARIANT",
            22 => "DT_UINT32",
            23 => "DT_UINT64",
            _ => return format!("DataType {value}"),
        };
        known.to_string()
    }
}
