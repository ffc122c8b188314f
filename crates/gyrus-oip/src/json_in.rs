//! Streaming decoder for JSON tensor data (nested or flat lists of scalars), shared by the Open
//! Inference Protocol's `data` field and the simple JSON API. It is a serde `DeserializeSeed`
//! that writes each element straight into the tensor's little-endian byte buffer for the
//! declared dtype and infers the shape from the nesting as it goes, so a large `data` array
//! never becomes a `serde_json::Value` tree. The two protocols differ only in how JSON values
//! of another kind are converted ([`Rules`]).
//!
//! Semantic errors (a value out of range, a ragged list) are kept in the [`Sink`] and the
//! deserializer is stopped with a placeholder error: that keeps our messages free of
//! serde_json's positions, which would be relative to the `data` text rather than the body.

use std::fmt;

use gyrus_engine::{DataType, ShapeDisplay, TensorData};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

use crate::error::OipError;

/// How JSON values whose kind differs from the dtype's are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rules {
    /// Open Inference Protocol: integer dtypes take JSON integers only, float dtypes take any
    /// number, BOOL takes true/false, BYTES takes strings.
    Strict,
    /// Simple JSON API, like numpy's `astype`: floats truncate toward zero into integer
    /// dtypes and booleans count as 0/1 for numeric dtypes. BOOL still takes only true/false
    /// and nothing converts between numbers and strings.
    Cast,
}

/// One JSON leaf as serde_json reports it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Scalar<'a> {
    Bool(bool),
    I64(i64),
    U64(u64),
    F64(f64),
    Str(&'a str),
    Null,
    Object,
}

/// Describes what was found, for "expected X, found Y" messages.
impl fmt::Display for Scalar<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Scalar::Bool(b) => write!(f, "the boolean {b}"),
            Scalar::I64(i) => write!(f, "the number {i}"),
            Scalar::U64(u) => write!(f, "the number {u}"),
            Scalar::F64(x) => write!(f, "the number {}", FloatDisplay(x)),
            Scalar::Str(s) => {
                // Long strings would drown the message; the start is enough to recognise it.
                const MAX: usize = 40;
                match s.char_indices().nth(MAX) {
                    Some((cut, _)) => write!(f, "a string {:?}...", &s[..cut]),
                    None => write!(f, "a string {s:?}"),
                }
            }
            Scalar::Null => f.write_str("null"),
            Scalar::Object => f.write_str("an object"),
        }
    }
}

/// Shows a float the way a person would write it, without 300 digits for `1e300`.
struct FloatDisplay(f64);

impl fmt::Display for FloatDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let x = self.0;
        if x != 0.0 && x.is_finite() && (x.abs() >= 1e16 || x.abs() < 1e-6) {
            write!(f, "{x:e}")
        } else {
            write!(f, "{x}")
        }
    }
}

/// Marks a dimension whose first list has not closed yet.
const UNKNOWN: usize = usize::MAX;

/// Collects the elements and the shape of one tensor while its JSON is parsed.
pub(crate) struct Sink<'n> {
    name: &'n str,
    dtype: DataType,
    rules: Rules,
    raw: Vec<u8>,
    strings: Vec<Vec<u8>>,
    count: usize,
    /// Stop as soon as the data holds more elements than this (the declared shape's count).
    max_count: Option<usize>,
    /// The length of the lists at each depth, `UNKNOWN` until the first one closes.
    dims: Vec<usize>,
    /// The depth at which scalars sit, once the first one is seen.
    leaf_depth: Option<usize>,
    error: Option<String>,
}

impl<'n> Sink<'n> {
    pub(crate) fn new(name: &'n str, dtype: DataType, rules: Rules) -> Sink<'n> {
        Sink {
            name,
            dtype,
            rules,
            raw: Vec::new(),
            strings: Vec::new(),
            count: 0,
            max_count: None,
            dims: Vec::new(),
            leaf_depth: None,
            error: None,
        }
    }

    /// Declares how many elements the data must hold and reserves room for at most
    /// `reserve` of them (the caller bounds that by the body's size, not the claim).
    fn expect(&mut self, count: usize, reserve: usize) {
        self.max_count = Some(count);
        let reserve = reserve.min(count);
        match self.dtype.size() {
            Some(size) => self.raw.reserve(reserve.saturating_mul(size)),
            None => self.strings.reserve(reserve),
        }
    }

    /// The error recorded while parsing, if any; it wins over serde_json's placeholder.
    pub(crate) fn take_error(&mut self) -> Option<String> {
        self.error.take()
    }

    /// The inferred shape and the elements.
    pub(crate) fn finish(self) -> (Vec<i64>, TensorData) {
        let shape = self
            .dims
            .iter()
            .map(|&d| i64::try_from(d).unwrap_or(i64::MAX))
            .collect();
        let data = match self.dtype {
            DataType::String => TensorData::Strings(self.strings),
            _ => TensorData::Raw(self.raw),
        };
        (shape, data)
    }

    fn fail(&mut self, message: fmt::Arguments<'_>) -> Result<(), ()> {
        self.error = Some(format!("input {:?}: {message}", self.name));
        Err(())
    }

    fn enter_list(&mut self, depth: usize) -> Result<(), ()> {
        if let Some(leaf) = self.leaf_depth {
            if depth >= leaf {
                return self.fail(format_args!(
                    "ragged nested list: a list at depth {depth} where other elements at that \
                     depth are values"
                ));
            }
        }
        if self.dims.len() == depth {
            self.dims.push(UNKNOWN);
        }
        Ok(())
    }

    fn leave_list(&mut self, depth: usize, len: usize) -> Result<(), ()> {
        match self.dims.get_mut(depth) {
            Some(d) if *d == UNKNOWN => {
                *d = len;
                Ok(())
            }
            Some(d) if *d == len => Ok(()),
            Some(d) => {
                let first = *d;
                self.fail(format_args!(
                    "ragged nested list: lists at depth {depth} have {first} and {len} elements"
                ))
            }
            // enter_list pushed this depth; reaching here would be a bug, not bad input.
            None => self.fail(format_args!(
                "internal error: list depth {depth} not tracked"
            )),
        }
    }

    fn leaf(&mut self, depth: usize, value: Scalar<'_>) -> Result<(), ()> {
        match self.leaf_depth {
            Some(d) if d == depth => {}
            None if self.dims.len() <= depth => self.leaf_depth = Some(depth),
            _ => {
                return self.fail(format_args!(
                    "ragged nested list: {value} at depth {depth} where other elements at that \
                     depth are {}",
                    if self.dims.len() > depth {
                        "lists"
                    } else {
                        "at another depth"
                    }
                ))
            }
        }
        if let Some(max) = self.max_count {
            if self.count >= max {
                return self.fail(format_args!(
                    "the shape holds {max} elements but the data has more"
                ));
            }
        }
        self.count += 1;
        match self.push(value) {
            Ok(()) => Ok(()),
            Err(message) => self.fail(format_args!("{message}")),
        }
    }

    fn push(&mut self, value: Scalar<'_>) -> Result<(), String> {
        match self.dtype {
            DataType::Bool => match value {
                Scalar::Bool(b) => self.raw.push(u8::from(b)),
                other => return Err(self.expected(other)),
            },
            DataType::Uint8 => {
                let x: u8 = self.int(value)?;
                self.raw.push(x)
            }
            DataType::Uint16 => {
                let x: u16 = self.int(value)?;
                self.raw.extend_from_slice(&x.to_le_bytes())
            }
            DataType::Uint32 => {
                let x: u32 = self.int(value)?;
                self.raw.extend_from_slice(&x.to_le_bytes())
            }
            DataType::Uint64 => {
                let x: u64 = self.int(value)?;
                self.raw.extend_from_slice(&x.to_le_bytes())
            }
            DataType::Int8 => {
                let x: i8 = self.int(value)?;
                self.raw.extend_from_slice(&x.to_le_bytes())
            }
            DataType::Int16 => {
                let x: i16 = self.int(value)?;
                self.raw.extend_from_slice(&x.to_le_bytes())
            }
            DataType::Int32 => {
                let x: i32 = self.int(value)?;
                self.raw.extend_from_slice(&x.to_le_bytes())
            }
            DataType::Int64 => {
                let x: i64 = self.int(value)?;
                self.raw.extend_from_slice(&x.to_le_bytes())
            }
            DataType::Fp16 => {
                let x = self.float(value)?;
                self.raw
                    .extend_from_slice(&half::f16::from_f64(x).to_le_bytes())
            }
            DataType::Bf16 => {
                let x = self.float(value)?;
                self.raw
                    .extend_from_slice(&half::bf16::from_f64(x).to_le_bytes())
            }
            DataType::Fp32 => {
                let x = self.float(value)?;
                self.raw.extend_from_slice(&(x as f32).to_le_bytes())
            }
            DataType::Fp64 => {
                let x = self.float(value)?;
                self.raw.extend_from_slice(&x.to_le_bytes())
            }
            DataType::String => match value {
                Scalar::Str(s) => self.strings.push(s.as_bytes().to_vec()),
                other => return Err(self.expected(other)),
            },
        }
        Ok(())
    }

    fn int<T: TryFrom<i128>>(&self, value: Scalar<'_>) -> Result<T, String> {
        let wide: i128 = match value {
            Scalar::I64(i) => i.into(),
            Scalar::U64(u) => u.into(),
            Scalar::F64(x) if self.rules == Rules::Cast => {
                let t = x.trunc();
                // Beyond ±2^100 no integer dtype fits; the bound keeps the cast exact.
                if !(t.is_finite() && t.abs() < 1e30) {
                    return Err(self.out_of_range(value));
                }
                t as i128
            }
            Scalar::Bool(b) if self.rules == Rules::Cast => i128::from(u8::from(b)),
            other => return Err(self.expected(other)),
        };
        T::try_from(wide).map_err(|_| self.out_of_range(value))
    }

    fn float(&self, value: Scalar<'_>) -> Result<f64, String> {
        match value {
            Scalar::I64(i) => Ok(i as f64),
            Scalar::U64(u) => Ok(u as f64),
            Scalar::F64(x) => Ok(x),
            Scalar::Bool(b) if self.rules == Rules::Cast => Ok(f64::from(u8::from(b))),
            other => Err(self.expected(other)),
        }
    }

    fn expected(&self, found: Scalar<'_>) -> String {
        let what = match self.dtype {
            DataType::Bool => "values (true or false)",
            DataType::String => "strings",
            d if d.is_integer() && self.rules == Rules::Strict => "integers",
            _ => "numbers",
        };
        format!("expected {} {what}, found {found}", self.dtype)
    }

    fn out_of_range(&self, value: Scalar<'_>) -> String {
        let shown = match value {
            Scalar::I64(i) => i.to_string(),
            Scalar::U64(u) => u.to_string(),
            Scalar::F64(x) => FloatDisplay(x).to_string(),
            other => other.to_string(),
        };
        format!("{shown} is out of range for {}", self.dtype)
    }
}

/// Turns a recorded failure into a serde error that stops the parse; its text is never shown.
fn stop<E: de::Error>(r: Result<(), ()>) -> Result<(), E> {
    r.map_err(|()| E::custom("invalid tensor data"))
}

/// One JSON value at `depth` lists deep inside a tensor's data.
pub(crate) struct Node<'s, 'n> {
    pub(crate) sink: &'s mut Sink<'n>,
    pub(crate) depth: usize,
}

impl<'de> DeserializeSeed<'de> for Node<'_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a nested list of tensor elements")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        stop(self.sink.leaf(self.depth, Scalar::Bool(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        stop(self.sink.leaf(self.depth, Scalar::I64(v)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        stop(self.sink.leaf(self.depth, Scalar::U64(v)))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        stop(self.sink.leaf(self.depth, Scalar::F64(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        stop(self.sink.leaf(self.depth, Scalar::Str(v)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        stop(self.sink.leaf(self.depth, Scalar::Null))
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        stop(self.sink.leaf(self.depth, Scalar::Null))
    }

    fn visit_map<A: MapAccess<'de>>(self, _map: A) -> Result<(), A::Error> {
        stop(self.sink.leaf(self.depth, Scalar::Object))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Node { sink, depth } = self;
        stop(sink.enter_list(depth))?;
        let mut len = 0usize;
        while seq
            .next_element_seed(Node {
                sink: &mut *sink,
                depth: depth + 1,
            })?
            .is_some()
        {
            len += 1;
        }
        stop(sink.leave_list(depth, len))
    }
}

/// An Open Inference Protocol input's `data`, which may be `null` (meaning absent). Yields
/// whether data was present.
pub(crate) struct OptionalData<'s, 'n>(pub(crate) &'s mut Sink<'n>);

impl<'de> DeserializeSeed<'de> for OptionalData<'_, '_> {
    type Value = bool;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for OptionalData<'_, '_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a nested list of tensor elements or null")
    }

    fn visit_none<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        Node {
            sink: self.0,
            depth: 0,
        }
        .deserialize(deserializer)
        .map(|()| true)
    }
}

impl<'n> Sink<'n> {
    /// A sink for an Open Inference Protocol input declaring `count` elements. `reserve` must
    /// be bounded by the body's size, not by the claim.
    pub(crate) fn for_oip(name: &'n str, dtype: DataType, count: usize, reserve: usize) -> Self {
        let mut sink = Sink::new(name, dtype, Rules::Strict);
        sink.expect(count, reserve);
        sink
    }

    /// Checks the parsed data against the declared shape: a flat list of the right length or
    /// a nesting that matches the shape exactly are accepted; a bare scalar only for shape
    /// `[]`.
    pub(crate) fn finish_oip(self, shape: &[i64], count: usize) -> Result<TensorData, OipError> {
        let name = self.name;
        let found = self.count;
        let (nested, data) = self.finish();
        let flat = nested.len() == 1;
        // Nesting cannot show the dimensions after an empty one: `[[]]` is all of shape
        // [1, 0, 2].
        let cut_at_zero = nested.last() == Some(&0) && shape.starts_with(&nested);
        if !flat && nested.as_slice() != shape && !cut_at_zero {
            return Err(OipError::Invalid(if nested.is_empty() {
                format!(
                    "input {name:?}: data is a single value but shape is {} (a single value \
                     needs shape [])",
                    ShapeDisplay(shape)
                )
            } else {
                format!(
                    "input {name:?}: data is nested as {} but shape is {}",
                    ShapeDisplay(&nested),
                    ShapeDisplay(shape)
                )
            }));
        }
        if found != count {
            return Err(OipError::Invalid(format!(
                "input {name:?}: shape {} holds {count} elements but data has {found}",
                ShapeDisplay(shape)
            )));
        }
        Ok(data)
    }
}

/// Decodes an Open Inference Protocol input's `data` from its JSON text, for when the field
/// came before the name, datatype or shape it needs.
pub(crate) fn decode_oip_data(
    name: &str,
    dtype: DataType,
    shape: &[i64],
    count: usize,
    text: &str,
) -> Result<TensorData, OipError> {
    // Every element takes at least two characters ("1,"), so this bounds the reservation by
    // what the body can actually hold, whatever the shape claims.
    let mut sink = Sink::for_oip(name, dtype, count, text.len() / 2 + 1);
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = Node {
        sink: &mut sink,
        depth: 0,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end());
    if let Err(e) = parsed {
        return Err(match sink.take_error() {
            Some(message) => OipError::Invalid(message),
            None => OipError::Json(format!("input {name:?}: invalid data: {e}")),
        });
    }
    sink.finish_oip(shape, count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oip(dtype: DataType, shape: &[i64], text: &str) -> Result<TensorData, OipError> {
        let count = gyrus_engine::Tensor::element_count(shape).unwrap();
        decode_oip_data("x", dtype, shape, count, text)
    }

    fn raw(data: TensorData) -> Vec<u8> {
        match data {
            TensorData::Raw(b) => b,
            TensorData::Strings(_) => panic!("expected raw data"),
        }
    }

    fn message(r: Result<TensorData, OipError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn flat_and_nested_lists_are_row_major() {
        let flat = raw(oip(DataType::Int32, &[2, 2], "[1, 2, 3, 4]").unwrap());
        let nested = raw(oip(DataType::Int32, &[2, 2], "[[1, 2], [3, 4]]").unwrap());
        assert_eq!(flat, nested);
        let want: Vec<u8> = [1i32, 2, 3, 4]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(flat, want);
    }

    #[test]
    fn scalars_and_empty_tensors() {
        assert_eq!(raw(oip(DataType::Uint8, &[], "7").unwrap()), vec![7]);
        assert_eq!(raw(oip(DataType::Uint8, &[], "[7]").unwrap()), vec![7]);
        assert!(raw(oip(DataType::Fp32, &[0], "[]").unwrap()).is_empty());
        assert!(raw(oip(DataType::Fp32, &[2, 0], "[[], []]").unwrap()).is_empty());
        assert!(raw(oip(DataType::Fp32, &[2, 0], "[]").unwrap()).is_empty());
        assert!(raw(oip(DataType::Fp32, &[1, 0, 2], "[[]]").unwrap()).is_empty());
        assert!(oip(DataType::Fp32, &[1, 1, 2], "[[]]").is_err());
        assert_eq!(
            message(oip(DataType::Uint8, &[1], "7")),
            "input \"x\": data is a single value but shape is [1] (a single value needs shape [])"
        );
    }

    #[test]
    fn nesting_must_match_the_shape() {
        assert_eq!(
            message(oip(DataType::Int32, &[2, 3], "[[1, 2], [3, 4], [5, 6]]")),
            "input \"x\": data is nested as [3, 2] but shape is [2, 3]"
        );
        assert_eq!(
            message(oip(DataType::Int32, &[1, 2, 2], "[[1, 2], [3, 4]]")),
            "input \"x\": data is nested as [2, 2] but shape is [1, 2, 2]"
        );
        assert_eq!(
            message(oip(DataType::Int32, &[2, 2], "[[1, 2], [3]]")),
            "input \"x\": ragged nested list: lists at depth 1 have 2 and 1 elements"
        );
        assert!(message(oip(DataType::Int32, &[2, 2], "[[1, 2], 3, 4]")).contains("ragged"));
        assert!(message(oip(DataType::Int32, &[3], "[1, [2], 3]")).contains("ragged"));
        assert!(message(oip(DataType::Int32, &[2, 1], "[[], 1]")).contains("ragged"));
        assert!(message(oip(DataType::Int32, &[2, 1], "[[[]], [[[]]]]")).contains("ragged"));
    }

    #[test]
    fn element_counts() {
        assert_eq!(
            message(oip(DataType::Fp32, &[4], "[1, 2, 3]")),
            "input \"x\": shape [4] holds 4 elements but data has 3"
        );
        assert_eq!(
            message(oip(DataType::Fp32, &[2], "[1, 2, 3]")),
            "input \"x\": the shape holds 2 elements but the data has more"
        );
    }

    #[test]
    fn strict_rules() {
        assert_eq!(
            message(oip(DataType::Uint8, &[2], "[1, 300]")),
            "input \"x\": 300 is out of range for UINT8"
        );
        assert_eq!(
            message(oip(DataType::Int8, &[1], "[-129]")),
            "input \"x\": -129 is out of range for INT8"
        );
        assert_eq!(
            message(oip(DataType::Int32, &[1], "[1.5]")),
            "input \"x\": expected INT32 integers, found the number 1.5"
        );
        assert_eq!(
            message(oip(DataType::Bool, &[1], "[1]")),
            "input \"x\": expected BOOL values (true or false), found the number 1"
        );
        assert_eq!(
            message(oip(DataType::Fp32, &[1], "[\"abc\"]")),
            "input \"x\": expected FP32 numbers, found a string \"abc\""
        );
        assert_eq!(
            message(oip(DataType::String, &[1], "[3]")),
            "input \"x\": expected BYTES strings, found the number 3"
        );
        assert_eq!(
            message(oip(DataType::Fp64, &[1], "[null]")),
            "input \"x\": expected FP64 numbers, found null"
        );
        assert_eq!(
            message(oip(DataType::Fp64, &[1], "[{}]")),
            "input \"x\": expected FP64 numbers, found an object"
        );
        assert_eq!(
            message(oip(DataType::Int64, &[1], "[18446744073709551615]")),
            "input \"x\": 18446744073709551615 is out of range for INT64"
        );
        let long = format!("[\"{}\"]", "a".repeat(100));
        assert!(message(oip(DataType::Fp32, &[1], &long)).ends_with("aaa\"..."));
    }

    #[test]
    fn integer_limits() {
        let b = raw(oip(DataType::Uint64, &[1], "[18446744073709551615]").unwrap());
        assert_eq!(b, u64::MAX.to_le_bytes());
        let b = raw(oip(DataType::Int64, &[1], "[-9223372036854775808]").unwrap());
        assert_eq!(b, i64::MIN.to_le_bytes());
        let b = raw(oip(DataType::Int16, &[2], "[-32768, 32767]").unwrap());
        assert_eq!(b, [0x00, 0x80, 0xff, 0x7f]);
    }

    #[test]
    fn floats_of_every_width() {
        let b = raw(oip(DataType::Fp16, &[2], "[1.5, 2]").unwrap());
        assert_eq!(
            b,
            [half::f16::from_f32(1.5), half::f16::from_f32(2.0)]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect::<Vec<_>>()
        );
        let b = raw(oip(DataType::Bf16, &[1], "[-3]").unwrap());
        assert_eq!(b, half::bf16::from_f32(-3.0).to_le_bytes());
        let b = raw(oip(DataType::Fp32, &[1], "[0.1]").unwrap());
        assert_eq!(b, 0.1f32.to_le_bytes());
        let b = raw(oip(DataType::Fp64, &[1], "[0.1]").unwrap());
        assert_eq!(b, 0.1f64.to_le_bytes());
    }

    #[test]
    fn malformed_data_names_the_input() {
        // Only reachable when the caller hands over text serde_json did not validate.
        let e = message(oip(DataType::Fp32, &[1], "[1,"));
        assert!(e.starts_with("input \"x\": invalid data: "), "{e}");
    }
}
