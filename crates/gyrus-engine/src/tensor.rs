//! Tensors as the engine's callers hand them over: a name, an element type, a shape and the
//! elements as raw little-endian bytes (or byte strings for string tensors). Every protocol
//! (the simple JSON API, the Open Inference Protocol, the Python worker protocol) decodes into
//! this one type, so the checks against a model's signature are written once.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An element type that ONNX Runtime can take as a model input or give as an output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DataType {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Bf16,
    Fp32,
    Fp64,
    /// Strings; in the Open Inference Protocol, `BYTES`.
    String,
}

impl DataType {
    pub const ALL: [DataType; 14] = [
        DataType::Bool,
        DataType::Uint8,
        DataType::Uint16,
        DataType::Uint32,
        DataType::Uint64,
        DataType::Int8,
        DataType::Int16,
        DataType::Int32,
        DataType::Int64,
        DataType::Fp16,
        DataType::Bf16,
        DataType::Fp32,
        DataType::Fp64,
        DataType::String,
    ];

    /// The Open Inference Protocol's name (`FP32`, `BYTES`, ...).
    pub fn oip_name(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::Uint8 => "UINT8",
            DataType::Uint16 => "UINT16",
            DataType::Uint32 => "UINT32",
            DataType::Uint64 => "UINT64",
            DataType::Int8 => "INT8",
            DataType::Int16 => "INT16",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Fp16 => "FP16",
            DataType::Bf16 => "BF16",
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
            DataType::String => "BYTES",
        }
    }

    pub fn from_oip_name(name: &str) -> Option<DataType> {
        DataType::ALL.into_iter().find(|d| d.oip_name() == name)
    }

    /// numpy's name for the dtype (`float32`, ...); what Python code sees.
    pub fn numpy_name(self) -> &'static str {
        match self {
            DataType::Bool => "bool",
            DataType::Uint8 => "uint8",
            DataType::Uint16 => "uint16",
            DataType::Uint32 => "uint32",
            DataType::Uint64 => "uint64",
            DataType::Int8 => "int8",
            DataType::Int16 => "int16",
            DataType::Int32 => "int32",
            DataType::Int64 => "int64",
            DataType::Fp16 => "float16",
            // numpy has no bfloat16; the Python side widens it to float32 on the way out.
            DataType::Bf16 => "bfloat16",
            DataType::Fp32 => "float32",
            DataType::Fp64 => "float64",
            DataType::String => "str",
        }
    }

    pub fn from_numpy_name(name: &str) -> Option<DataType> {
        DataType::ALL.into_iter().find(|d| d.numpy_name() == name)
    }

    /// Bytes per element; `None` for strings.
    pub fn size(self) -> Option<usize> {
        Some(match self {
            DataType::Bool | DataType::Uint8 | DataType::Int8 => 1,
            DataType::Uint16 | DataType::Int16 | DataType::Fp16 | DataType::Bf16 => 2,
            DataType::Uint32 | DataType::Int32 | DataType::Fp32 => 4,
            DataType::Uint64 | DataType::Int64 | DataType::Fp64 => 8,
            DataType::String => return None,
        })
    }

    pub fn is_float(self) -> bool {
        matches!(
            self,
            DataType::Fp16 | DataType::Bf16 | DataType::Fp32 | DataType::Fp64
        )
    }

    pub fn is_integer(self) -> bool {
        matches!(
            self,
            DataType::Uint8
                | DataType::Uint16
                | DataType::Uint32
                | DataType::Uint64
                | DataType::Int8
                | DataType::Int16
                | DataType::Int32
                | DataType::Int64
        )
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.oip_name())
    }
}

/// A tensor's elements.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// Row-major, little-endian, `size()` bytes per element; bools are one byte, 0 or 1.
    Raw(Vec<u8>),
    /// One byte string per element, row-major (UTF-8 for ONNX string tensors).
    Strings(Vec<Vec<u8>>),
}

/// One named tensor. The constructor does not check that data and shape agree; use
/// [`Tensor::check`] (the engine does before every run).
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub dtype: DataType,
    pub shape: Vec<i64>,
    pub data: TensorData,
}

impl Tensor {
    /// The number of elements the shape holds, or `None` when a dimension is negative or the
    /// shape is too large to describe: the product of its dimensions, zeros counted as 1, must
    /// fit in an i64 (runtimes compute shapes that way, and TensorFlow aborts the process on a
    /// shape that overflows, even one holding no elements).
    pub fn element_count(shape: &[i64]) -> Option<usize> {
        shape.iter().try_fold(1i64, |acc, &d| {
            (d >= 0).then(|| acc.checked_mul(d.max(1)))?
        })?;
        shape.iter().try_fold(1usize, |acc, &d| {
            usize::try_from(d).ok().and_then(|d| acc.checked_mul(d))
        })
    }

    /// Checks that the data holds exactly the elements the shape and dtype call for.
    pub fn check(&self) -> Result<(), String> {
        let Some(count) = Tensor::element_count(&self.shape) else {
            return Err(format!(
                "input \"{}\": invalid shape {}",
                self.name,
                ShapeDisplay(&self.shape)
            ));
        };
        match (&self.data, self.dtype.size()) {
            (TensorData::Raw(bytes), Some(size)) => {
                if count.checked_mul(size) != Some(bytes.len()) {
                    return Err(format!(
                        "input \"{}\": shape {} of {} needs {} bytes, found {}",
                        self.name,
                        ShapeDisplay(&self.shape),
                        self.dtype,
                        count.saturating_mul(size),
                        bytes.len()
                    ));
                }
                if self.dtype == DataType::Bool && bytes.iter().any(|b| *b > 1) {
                    return Err(format!(
                        "input \"{}\": BOOL elements must be bytes 0 or 1",
                        self.name
                    ));
                }
                Ok(())
            }
            (TensorData::Strings(items), None) => {
                if items.len() != count {
                    return Err(format!(
                        "input \"{}\": shape {} needs {} elements, found {}",
                        self.name,
                        ShapeDisplay(&self.shape),
                        count,
                        items.len()
                    ));
                }
                Ok(())
            }
            _ => Err(format!(
                "input \"{}\": {} data does not match the dtype {}",
                self.name,
                if matches!(self.data, TensorData::Raw(_)) {
                    "numeric"
                } else {
                    "string"
                },
                self.dtype
            )),
        }
    }
}

/// Shows a shape as `[-1, 4]`.
pub struct ShapeDisplay<'a>(pub &'a [i64]);

impl fmt::Display for ShapeDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

/// A model input or output as the model declares it. `-1` marks a dimension of any size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DataType,
    pub shape: Vec<i64>,
}

/// What a model takes and gives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSignature {
    pub inputs: Vec<TensorInfo>,
    pub outputs: Vec<TensorInfo>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oip_and_numpy_names_round_trip() {
        for d in DataType::ALL {
            assert_eq!(DataType::from_oip_name(d.oip_name()), Some(d));
            assert_eq!(DataType::from_numpy_name(d.numpy_name()), Some(d));
        }
        assert_eq!(DataType::from_oip_name("FLOAT"), None);
    }

    #[test]
    fn check_counts_bytes_and_elements() {
        let t = Tensor {
            name: "x".into(),
            dtype: DataType::Fp32,
            shape: vec![2, 2],
            data: TensorData::Raw(vec![0; 16]),
        };
        assert!(t.check().is_ok());
        let short = Tensor {
            data: TensorData::Raw(vec![0; 12]),
            ..t.clone()
        };
        assert_eq!(
            short.check().unwrap_err(),
            "input \"x\": shape [2, 2] of FP32 needs 16 bytes, found 12"
        );
        let negative = Tensor {
            shape: vec![-1, 4],
            ..t.clone()
        };
        assert!(negative
            .check()
            .unwrap_err()
            .contains("invalid shape [-1, 4]"));
        let strings = Tensor {
            name: "s".into(),
            dtype: DataType::String,
            shape: vec![3],
            data: TensorData::Strings(vec![b"a".to_vec(), b"b".to_vec()]),
        };
        assert_eq!(
            strings.check().unwrap_err(),
            "input \"s\": shape [3] needs 3 elements, found 2"
        );
        let huge = Tensor {
            shape: vec![i64::MAX, i64::MAX],
            ..t.clone()
        };
        assert!(huge.check().is_err());
        // No elements, but dimensions whose product overflows: refused, not handed on.
        let empty_but_huge = Tensor {
            shape: vec![4294967296, 2147483649, 0, 3],
            data: TensorData::Raw(Vec::new()),
            ..t
        };
        assert!(empty_but_huge
            .check()
            .unwrap_err()
            .contains("invalid shape [4294967296, 2147483649, 0, 3]"));
    }
}
