//! Serializing tensor elements as JSON straight from their raw bytes: flat lists for the Open
//! Inference Protocol's `data`, nested lists per shape for the simple JSON API. Non-finite
//! floats become `null` (serde_json's rule; JSON has no NaN or infinity), BYTES elements become
//! strings, lossily decoded when they are not UTF-8.

use std::fmt::{self, Write as _};

use gyrus_engine::{DataType, Tensor, TensorData};
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::Serialize;

/// How 32-bit (and narrower) floats are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FloatStyle {
    /// `serialize_f32`: serde_json's writer prints the shortest form that reads back as the
    /// same f32 (`0.1`).
    F32,
    /// For `serde_json::Value`, which only holds f64: widen through the f32's shortest decimal
    /// form, so `0.1f32` becomes `0.1` rather than `0.10000000149011612`.
    ShortestF64,
}

/// Little-endian array from a slice that is known to hold `N` bytes, without a panic path.
fn le<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = bytes.len().min(N);
    out[..n].copy_from_slice(&bytes[..n]);
    out
}

/// The f64 nearest to the shortest decimal that reads back as `x`.
pub(crate) fn shortest_f64(x: f32) -> f64 {
    if !x.is_finite() {
        return f64::from(x);
    }
    // `{:e}` never needs more than ~16 bytes for an f32 (`-1.1754942e-38`).
    struct Buf {
        bytes: [u8; 32],
        len: usize,
    }
    impl fmt::Write for Buf {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            let end = self.len + s.len();
            let slot = self.bytes.get_mut(self.len..end).ok_or(fmt::Error)?;
            slot.copy_from_slice(s.as_bytes());
            self.len = end;
            Ok(())
        }
    }
    let mut buf = Buf {
        bytes: [0; 32],
        len: 0,
    };
    if write!(buf, "{x:e}").is_err() {
        return f64::from(x);
    }
    std::str::from_utf8(&buf.bytes[..buf.len])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::from(x))
}

/// One element of a tensor.
struct Leaf<'a> {
    dtype: DataType,
    raw: &'a [u8],
    string: Option<&'a [u8]>,
    style: FloatStyle,
}

impl Serialize for Leaf<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if let Some(bytes) = self.string {
            return s.serialize_str(&String::from_utf8_lossy(bytes));
        }
        let b = self.raw;
        let float = |x: f32, s: S| match self.style {
            FloatStyle::F32 => s.serialize_f32(x),
            FloatStyle::ShortestF64 => s.serialize_f64(shortest_f64(x)),
        };
        match self.dtype {
            DataType::Bool => s.serialize_bool(b.first().is_some_and(|&v| v != 0)),
            DataType::Uint8 => s.serialize_u8(u8::from_le_bytes(le(b))),
            DataType::Uint16 => s.serialize_u16(u16::from_le_bytes(le(b))),
            DataType::Uint32 => s.serialize_u32(u32::from_le_bytes(le(b))),
            DataType::Uint64 => s.serialize_u64(u64::from_le_bytes(le(b))),
            DataType::Int8 => s.serialize_i8(i8::from_le_bytes(le(b))),
            DataType::Int16 => s.serialize_i16(i16::from_le_bytes(le(b))),
            DataType::Int32 => s.serialize_i32(i32::from_le_bytes(le(b))),
            DataType::Int64 => s.serialize_i64(i64::from_le_bytes(le(b))),
            DataType::Fp16 => float(half::f16::from_le_bytes(le(b)).to_f32(), s),
            DataType::Bf16 => float(half::bf16::from_le_bytes(le(b)).to_f32(), s),
            DataType::Fp32 => float(f32::from_le_bytes(le(b)), s),
            DataType::Fp64 => s.serialize_f64(f64::from_le_bytes(le(b))),
            // Raw bytes under a string dtype: nothing sensible to show per element.
            DataType::String => s.serialize_unit(),
        }
    }
}

/// Element access by row-major index for a tensor whose data and shape agree.
#[derive(Clone, Copy)]
struct Elements<'a> {
    tensor: &'a Tensor,
    style: FloatStyle,
}

impl<'a> Elements<'a> {
    /// How many elements the data holds, whatever the shape says.
    fn len(&self) -> usize {
        match (&self.tensor.data, self.tensor.dtype.size()) {
            (TensorData::Raw(bytes), Some(size)) => bytes.len() / size,
            (TensorData::Raw(_), None) => 0,
            (TensorData::Strings(items), _) => items.len(),
        }
    }

    fn leaf(&self, i: usize) -> Leaf<'a> {
        let dtype = self.tensor.dtype;
        match &self.tensor.data {
            TensorData::Raw(bytes) => {
                let size = dtype.size().unwrap_or(0);
                let start = i.saturating_mul(size);
                let raw = bytes.get(start..start.saturating_add(size)).unwrap_or(&[]);
                Leaf {
                    dtype,
                    raw,
                    string: None,
                    style: self.style,
                }
            }
            TensorData::Strings(items) => Leaf {
                dtype,
                raw: &[],
                string: Some(items.get(i).map_or(&[][..], Vec::as_slice)),
                style: self.style,
            },
        }
    }
}

/// All of a tensor's elements as one flat JSON list.
pub(crate) struct Flat<'a>(Elements<'a>);

impl<'a> Flat<'a> {
    pub(crate) fn new(tensor: &'a Tensor, style: FloatStyle) -> Flat<'a> {
        Flat(Elements { tensor, style })
    }
}

impl Serialize for Flat<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let n = self.0.len();
        let mut seq = s.serialize_seq(Some(n))?;
        for i in 0..n {
            seq.serialize_element(&self.0.leaf(i))?;
        }
        seq.end()
    }
}

/// Deeper than any real model's output; the nested writer recurses once per dimension.
pub(crate) const MAX_NESTED_RANK: usize = 64;

/// A tensor as nested lists following its shape; a bare value for shape `[]`.
pub(crate) struct Nested<'a> {
    elements: Elements<'a>,
    /// `None` when the shape cannot be followed (see [`Nested::new`]): write a flat list.
    dims: Option<Vec<usize>>,
}

impl<'a> Nested<'a> {
    /// Falls back to a flat list when the shape disagrees with the data, when following it
    /// would write far more empty lists than there are elements (`[1e12, 0]`), or when its
    /// rank would make the writer recurse deeper than [`MAX_NESTED_RANK`].
    pub(crate) fn new(tensor: &'a Tensor, style: FloatStyle) -> Nested<'a> {
        let elements = Elements { tensor, style };
        let dims: Option<Vec<usize>> = tensor
            .shape
            .iter()
            .map(|&d| usize::try_from(d).ok())
            .collect();
        let dims = dims.filter(|dims| {
            let count = Tensor::element_count(&tensor.shape);
            let mut lists = 0usize;
            let mut width = 1usize;
            for &d in dims {
                lists = lists.saturating_add(width);
                width = width.saturating_mul(d);
            }
            count == Some(elements.len())
                && lists <= elements.len().saturating_add(1 << 16)
                && dims.len() <= MAX_NESTED_RANK
        });
        Nested { elements, dims }
    }
}

struct Level<'a, 'b> {
    elements: Elements<'a>,
    dims: &'b [usize],
    offset: usize,
}

impl Serialize for Level<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Some((&n, inner)) = self.dims.split_first() else {
            return self.elements.leaf(self.offset).serialize(s);
        };
        // Saturating: with a zero dimension the other dimensions may multiply past usize.
        let stride = inner.iter().fold(1usize, |acc, &d| acc.saturating_mul(d));
        let mut seq = s.serialize_seq(Some(n))?;
        for i in 0..n {
            seq.serialize_element(&Level {
                elements: self.elements,
                dims: inner,
                offset: self.offset.saturating_add(i.saturating_mul(stride)),
            })?;
        }
        seq.end()
    }
}

impl Serialize for Nested<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.dims {
            Some(dims) => Level {
                elements: self.elements,
                dims,
                offset: 0,
            }
            .serialize(s),
            None => Flat(self.elements).serialize(s),
        }
    }
}

/// The simple API's response object: output name → nested data.
pub(crate) struct NestedMap<'a> {
    pub(crate) outputs: &'a [Tensor],
    pub(crate) style: FloatStyle,
}

impl Serialize for NestedMap<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.outputs.len()))?;
        for tensor in self.outputs {
            map.serialize_entry(&tensor.name, &Nested::new(tensor, self.style))?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(dtype: DataType, shape: &[i64], data: TensorData) -> Tensor {
        Tensor {
            name: "y".into(),
            dtype,
            shape: shape.to_vec(),
            data,
        }
    }

    fn f32s(xs: &[f32]) -> TensorData {
        TensorData::Raw(xs.iter().flat_map(|x| x.to_le_bytes()).collect())
    }

    #[test]
    fn shortest_decimal_widening() {
        assert_eq!(shortest_f64(0.1), 0.1);
        assert_eq!(shortest_f64(-1.5e-40), -1.5e-40);
        assert_eq!(shortest_f64(f32::MAX), 3.4028235e38);
        assert!(shortest_f64(f32::NAN).is_nan());
        assert_eq!(shortest_f64(f32::INFINITY), f64::INFINITY);
    }

    #[test]
    fn flat_lists_and_non_finite_floats() {
        let t = tensor(
            DataType::Fp32,
            &[2, 2],
            f32s(&[0.1, f32::NAN, f32::INFINITY, -2.0]),
        );
        let json = serde_json::to_string(&Flat::new(&t, FloatStyle::F32)).unwrap();
        assert_eq!(json, "[0.1,null,null,-2.0]");
    }

    #[test]
    fn nested_lists_follow_the_shape() {
        let t = tensor(DataType::Fp32, &[2, 2], f32s(&[1.0, 2.0, 3.0, 4.0]));
        let json = serde_json::to_string(&Nested::new(&t, FloatStyle::F32)).unwrap();
        assert_eq!(json, "[[1.0,2.0],[3.0,4.0]]");
        let scalar = tensor(
            DataType::Int64,
            &[],
            TensorData::Raw(7i64.to_le_bytes().to_vec()),
        );
        let json = serde_json::to_string(&Nested::new(&scalar, FloatStyle::F32)).unwrap();
        assert_eq!(json, "7");
        let empty = tensor(DataType::Fp32, &[2, 0], f32s(&[]));
        let json = serde_json::to_string(&Nested::new(&empty, FloatStyle::F32)).unwrap();
        assert_eq!(json, "[[],[]]");
    }

    #[test]
    fn inconsistent_tensors_do_not_panic() {
        let short = tensor(DataType::Fp32, &[3], f32s(&[1.0]));
        let json = serde_json::to_string(&Nested::new(&short, FloatStyle::F32)).unwrap();
        assert_eq!(json, "[1.0]");
        let wide = tensor(DataType::Fp32, &[0, 1 << 40, 1 << 40], f32s(&[]));
        let json = serde_json::to_string(&Nested::new(&wide, FloatStyle::F32)).unwrap();
        assert_eq!(json, "[]");
        let huge = tensor(DataType::Fp32, &[1_000_000_000_000, 0], f32s(&[]));
        let json = serde_json::to_string(&Nested::new(&huge, FloatStyle::F32)).unwrap();
        assert_eq!(json, "[]");
        let negative = tensor(DataType::Fp32, &[-1], f32s(&[1.0]));
        let json = serde_json::to_string(&Nested::new(&negative, FloatStyle::F32)).unwrap();
        assert_eq!(json, "[1.0]");
        let deep = tensor(DataType::Fp32, &[1; 10_000], f32s(&[1.0]));
        let json = serde_json::to_string(&Nested::new(&deep, FloatStyle::F32)).unwrap();
        assert_eq!(json, "[1.0]");
        let mixed = tensor(DataType::String, &[1], TensorData::Raw(vec![1, 2]));
        let json = serde_json::to_string(&Nested::new(&mixed, FloatStyle::F32)).unwrap();
        assert_eq!(json, "[]");
        let strings = tensor(
            DataType::Fp32,
            &[1],
            TensorData::Strings(vec![b"a".to_vec()]),
        );
        let json = serde_json::to_string(&Nested::new(&strings, FloatStyle::F32)).unwrap();
        assert_eq!(json, "[\"a\"]");
    }
}
