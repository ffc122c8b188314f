//! Conversions between the engine's [`Tensor`] and `ort` values. Numeric input bytes are
//! handed to ONNX Runtime without a copy when they are suitably aligned.

use half::{bf16, f16};
use ort::session::SessionInputValue;
use ort::value::{DynValue, Tensor as OrtTensor, TensorElementType, TensorRef};

use crate::{DataType, EngineError, Tensor, TensorData};

pub(crate) fn data_type(ty: TensorElementType) -> Option<DataType> {
    Some(match ty {
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::Uint8 => DataType::Uint8,
        TensorElementType::Uint16 => DataType::Uint16,
        TensorElementType::Uint32 => DataType::Uint32,
        TensorElementType::Uint64 => DataType::Uint64,
        TensorElementType::Int8 => DataType::Int8,
        TensorElementType::Int16 => DataType::Int16,
        TensorElementType::Int32 => DataType::Int32,
        TensorElementType::Int64 => DataType::Int64,
        TensorElementType::Float16 => DataType::Fp16,
        TensorElementType::Bfloat16 => DataType::Bf16,
        TensorElementType::Float32 => DataType::Fp32,
        TensorElementType::Float64 => DataType::Fp64,
        TensorElementType::String => DataType::String,
        _ => return None,
    })
}

fn run_error(e: ort::Error) -> EngineError {
    EngineError::Run(e.to_string())
}

/// Plain numeric element types: every bit pattern is a valid value.
trait Pod: Copy + ort::value::PrimitiveTensorElementType + std::fmt::Debug + 'static {
    const SIZE: usize;
    fn from_le(bytes: &[u8]) -> Self;
    fn write_le(self, out: &mut Vec<u8>);
}

macro_rules! pod {
    ($($t:ty),*) => {$(
        impl Pod for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            fn from_le(bytes: &[u8]) -> Self {
                let mut a = [0u8; std::mem::size_of::<$t>()];
                a.copy_from_slice(bytes);
                <$t>::from_le_bytes(a)
            }
            fn write_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}
pod!(u8, u16, u32, u64, i8, i16, i32, i64, f32, f64, f16, bf16);

fn numeric<'a, T: Pod>(
    shape: &[i64],
    bytes: &'a [u8],
) -> Result<SessionInputValue<'a>, EngineError> {
    // SAFETY: `T` is a plain numeric type (see `Pod`), so any bytes are a valid `T`; `align_to`
    // only yields the middle slice at `T`'s alignment, and little-endian is the target's order
    // on every platform gyrus builds for (checked below).
    let (prefix, middle, suffix) = unsafe { bytes.align_to::<T>() };
    if cfg!(target_endian = "little") && prefix.is_empty() && suffix.is_empty() {
        let view = TensorRef::from_array_view((shape.to_vec(), middle)).map_err(run_error)?;
        return Ok(SessionInputValue::from(view));
    }
    let owned: Vec<T> = bytes.chunks_exact(T::SIZE).map(T::from_le).collect();
    let tensor = OrtTensor::from_array((shape.to_vec(), owned)).map_err(run_error)?;
    Ok(SessionInputValue::from(tensor))
}

/// The `ort` value for a tensor that passed [`Tensor::check`].
pub(crate) fn to_value(t: &Tensor) -> Result<SessionInputValue<'_>, EngineError> {
    let shape = &t.shape;
    match (&t.data, t.dtype) {
        (TensorData::Raw(b), DataType::Bool) => {
            let owned: Vec<bool> = b.iter().map(|x| *x != 0).collect();
            let tensor = OrtTensor::from_array((shape.to_vec(), owned)).map_err(run_error)?;
            Ok(SessionInputValue::from(tensor))
        }
        (TensorData::Raw(b), DataType::Uint8) => numeric::<u8>(shape, b),
        (TensorData::Raw(b), DataType::Uint16) => numeric::<u16>(shape, b),
        (TensorData::Raw(b), DataType::Uint32) => numeric::<u32>(shape, b),
        (TensorData::Raw(b), DataType::Uint64) => numeric::<u64>(shape, b),
        (TensorData::Raw(b), DataType::Int8) => numeric::<i8>(shape, b),
        (TensorData::Raw(b), DataType::Int16) => numeric::<i16>(shape, b),
        (TensorData::Raw(b), DataType::Int32) => numeric::<i32>(shape, b),
        (TensorData::Raw(b), DataType::Int64) => numeric::<i64>(shape, b),
        (TensorData::Raw(b), DataType::Fp16) => numeric::<f16>(shape, b),
        (TensorData::Raw(b), DataType::Bf16) => numeric::<bf16>(shape, b),
        (TensorData::Raw(b), DataType::Fp32) => numeric::<f32>(shape, b),
        (TensorData::Raw(b), DataType::Fp64) => numeric::<f64>(shape, b),
        (TensorData::Strings(items), DataType::String) => {
            let strings = items
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    // ONNX Runtime copies strings as C strings: a NUL would cut them short.
                    if s.contains(&0) {
                        return Err(EngineError::InvalidInput(format!(
                            "input \"{}\": element {i} contains a NUL character, which ONNX string tensors cannot hold",
                            t.name
                        )));
                    }
                    String::from_utf8(s.clone()).map_err(|_| {
                        EngineError::InvalidInput(format!(
                            "input \"{}\": element {i} is not valid UTF-8 (ONNX string tensors hold text)",
                            t.name
                        ))
                    })
                })
                .collect::<Result<Vec<String>, _>>()?;
            let tensor =
                OrtTensor::from_string_array((shape.to_vec(), &strings[..])).map_err(run_error)?;
            Ok(SessionInputValue::from(tensor))
        }
        _ => Err(EngineError::InvalidInput(format!(
            "input \"{}\": data does not match dtype {}",
            t.name, t.dtype
        ))),
    }
}

fn extract<T: Pod>(name: &str, value: &DynValue) -> Result<(Vec<i64>, Vec<u8>), EngineError> {
    let (shape, data) = value.try_extract_tensor::<T>().map_err(run_error)?;
    let mut bytes = Vec::with_capacity(data.len() * T::SIZE);
    for x in data {
        x.write_le(&mut bytes);
    }
    let _ = name;
    Ok((shape.to_vec(), bytes))
}

/// The engine tensor for one output value.
pub(crate) fn from_value(name: &str, value: &DynValue) -> Result<Tensor, EngineError> {
    let ty = match value.dtype() {
        ort::value::ValueType::Tensor { ty, .. } => *ty,
        other => {
            return Err(EngineError::Run(format!(
                "output \"{name}\" is a {other:?}, not a tensor"
            )))
        }
    };
    let dtype = data_type(ty).ok_or_else(|| {
        EngineError::Run(format!(
            "output \"{name}\" has unsupported element type {ty:?}"
        ))
    })?;
    let (shape, data) = match dtype {
        DataType::Bool => {
            let (shape, data) = value.try_extract_tensor::<bool>().map_err(run_error)?;
            (
                shape.to_vec(),
                TensorData::Raw(data.iter().map(|b| *b as u8).collect()),
            )
        }
        DataType::String => {
            let (shape, data) = value.try_extract_strings().map_err(run_error)?;
            (
                shape.to_vec(),
                TensorData::Strings(data.into_iter().map(String::into_bytes).collect()),
            )
        }
        DataType::Uint8 => raw(extract::<u8>(name, value)?),
        DataType::Uint16 => raw(extract::<u16>(name, value)?),
        DataType::Uint32 => raw(extract::<u32>(name, value)?),
        DataType::Uint64 => raw(extract::<u64>(name, value)?),
        DataType::Int8 => raw(extract::<i8>(name, value)?),
        DataType::Int16 => raw(extract::<i16>(name, value)?),
        DataType::Int32 => raw(extract::<i32>(name, value)?),
        DataType::Int64 => raw(extract::<i64>(name, value)?),
        DataType::Fp16 => raw(extract::<f16>(name, value)?),
        DataType::Bf16 => raw(extract::<bf16>(name, value)?),
        DataType::Fp32 => raw(extract::<f32>(name, value)?),
        DataType::Fp64 => raw(extract::<f64>(name, value)?),
    };
    Ok(Tensor {
        name: name.to_string(),
        dtype,
        shape,
        data,
    })
}

fn raw((shape, bytes): (Vec<i64>, Vec<u8>)) -> (Vec<i64>, TensorData) {
    (shape, TensorData::Raw(bytes))
}
