//! The binary tensor data extension's byte layout: splitting a body at
//! `Inference-Header-Content-Length`, taking each binary input's bytes in order (checking the
//! declared `binary_data_size` against the shape before copying anything), and writing
//! outputs. Numeric tensors are raw little-endian, BOOL one byte per element, BYTES a 4-byte
//! little-endian length before each element.

use gyrus_engine::{DataType, ShapeDisplay, Tensor, TensorData};

use crate::error::OipError;

/// Splits a request body into its JSON header and its binary part.
pub(crate) fn split(body: &[u8], header_length: Option<usize>) -> Result<(&[u8], &[u8]), OipError> {
    match header_length {
        None => Ok((body, &[])),
        Some(n) if n > body.len() => Err(OipError::Binary(format!(
            "Inference-Header-Content-Length is {n} but the body has only {} bytes",
            body.len()
        ))),
        Some(n) => Ok(body.split_at(n)),
    }
}

/// Takes the next `size` bytes of the binary part as the elements of one input.
/// `has_binary_part` says whether the request had an `Inference-Header-Content-Length` at all,
/// only to explain a missing part better.
pub(crate) fn take_input(
    name: &str,
    dtype: DataType,
    shape: &[i64],
    count: usize,
    size: u64,
    rest: &mut &[u8],
    has_binary_part: bool,
) -> Result<TensorData, OipError> {
    let available = rest.len();
    let size = match usize::try_from(size) {
        Ok(size) if size <= available => size,
        _ if !has_binary_part => {
            return Err(OipError::Binary(format!(
                "input {name:?}: binary_data_size is {size} but the request has no binary part \
                 (no Inference-Header-Content-Length header)"
            )))
        }
        _ => {
            return Err(OipError::Binary(format!(
                "input {name:?}: binary_data_size is {size} but only {available} bytes of binary \
                 data are left"
            )))
        }
    };
    let (bytes, tail) = rest.split_at(size);
    *rest = tail;
    match dtype.size() {
        Some(element) => {
            let needed = count.checked_mul(element);
            if needed != Some(size) {
                return Err(OipError::Binary(format!(
                    "input {name:?}: binary_data_size is {size} but shape {} of {dtype} needs {}",
                    ShapeDisplay(shape),
                    match needed {
                        Some(n) => format!("{n} bytes"),
                        None => "more bytes than can be addressed".to_owned(),
                    }
                )));
            }
            if dtype == DataType::Bool {
                if let Some(i) = bytes.iter().position(|&b| b > 1) {
                    return Err(OipError::Binary(format!(
                        "input {name:?}: BOOL element {i} is the byte {}; BOOL elements must be \
                         0 or 1",
                        bytes[i]
                    )));
                }
            }
            Ok(TensorData::Raw(bytes.to_vec()))
        }
        None => parse_strings(name, shape, count, bytes).map(TensorData::Strings),
    }
}

/// Reads length-prefixed BYTES elements, failing as soon as the framing or the count is off.
fn parse_strings(
    name: &str,
    shape: &[i64],
    count: usize,
    mut bytes: &[u8],
) -> Result<Vec<Vec<u8>>, OipError> {
    // Each element takes at least its 4-byte length, so this is bounded by the body.
    let mut items = Vec::with_capacity(count.min(bytes.len() / 4));
    while !bytes.is_empty() {
        let i = items.len();
        let Some((prefix, tail)) = bytes.split_first_chunk::<4>() else {
            return Err(OipError::Binary(format!(
                "input {name:?}: BYTES element {i} is cut short: {} bytes left where a 4-byte \
                 length was expected",
                bytes.len()
            )));
        };
        let len = u32::from_le_bytes(*prefix) as usize;
        if len > tail.len() {
            return Err(OipError::Binary(format!(
                "input {name:?}: BYTES element {i} has length {len} but only {} bytes are left \
                 in its binary_data_size",
                tail.len()
            )));
        }
        if i == count {
            return Err(OipError::Binary(format!(
                "input {name:?}: shape {} holds {count} BYTES elements but the binary data has \
                 more",
                ShapeDisplay(shape)
            )));
        }
        let (item, tail) = tail.split_at(len);
        items.push(item.to_vec());
        bytes = tail;
    }
    if items.len() != count {
        return Err(OipError::Binary(format!(
            "input {name:?}: shape {} holds {count} BYTES elements but the binary data has {}",
            ShapeDisplay(shape),
            items.len()
        )));
    }
    Ok(items)
}

/// How many bytes [`append`] writes for a tensor that passed `check_output`.
pub(crate) fn encoded_len(tensor: &Tensor) -> usize {
    match &tensor.data {
        TensorData::Raw(bytes) => bytes.len(),
        TensorData::Strings(items) => items.iter().map(|s| 4 + s.len()).sum(),
    }
}

/// Writes a tensor's elements in the extension's layout. Strings longer than `u32::MAX`
/// bytes are refused earlier by `check_output`.
pub(crate) fn append(out: &mut Vec<u8>, tensor: &Tensor) {
    match &tensor.data {
        TensorData::Raw(bytes) => out.extend_from_slice(bytes),
        TensorData::Strings(items) => {
            for item in items {
                let len = u32::try_from(item.len()).unwrap_or(u32::MAX);
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(item);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(
        dtype: DataType,
        shape: &[i64],
        size: u64,
        part: &[u8],
    ) -> Result<(TensorData, usize), OipError> {
        let count = Tensor::element_count(shape).unwrap();
        let mut rest = part;
        let data = take_input("x", dtype, shape, count, size, &mut rest, true)?;
        Ok((data, rest.len()))
    }

    #[test]
    fn split_at_the_header_length() {
        assert_eq!(split(b"{}abc", Some(2)).unwrap(), (&b"{}"[..], &b"abc"[..]));
        assert_eq!(split(b"{}", Some(2)).unwrap(), (&b"{}"[..], &b""[..]));
        assert_eq!(split(b"{}", None).unwrap(), (&b"{}"[..], &b""[..]));
        assert_eq!(
            split(b"{}", Some(3)).unwrap_err().to_string(),
            "Inference-Header-Content-Length is 3 but the body has only 2 bytes"
        );
    }

    #[test]
    fn numeric_inputs_take_exactly_their_size() {
        let part: Vec<u8> = (0..20).collect();
        let (data, left) = take(DataType::Fp32, &[2, 2], 16, &part).unwrap();
        assert_eq!(data, TensorData::Raw(part[..16].to_vec()));
        assert_eq!(left, 4);
        assert_eq!(
            take(DataType::Fp32, &[2, 2], 12, &part)
                .unwrap_err()
                .to_string(),
            "input \"x\": binary_data_size is 12 but shape [2, 2] of FP32 needs 16 bytes"
        );
        assert_eq!(
            take(DataType::Fp32, &[2, 2], 24, &part)
                .unwrap_err()
                .to_string(),
            "input \"x\": binary_data_size is 24 but only 20 bytes of binary data are left"
        );
    }

    #[test]
    fn huge_claims_fail_before_allocating() {
        let e = take(DataType::Fp32, &[1_000_000_000_000], 4, &[0; 4]).unwrap_err();
        assert!(e.to_string().contains("needs 4000000000000 bytes"), "{e}");
        let e = take(DataType::Fp64, &[1 << 61, 2], 8, &[0; 8]).unwrap_err();
        assert!(
            e.to_string()
                .contains("needs more bytes than can be addressed"),
            "{e}"
        );
        let e = take(DataType::Fp32, &[4], u64::MAX, &[0; 16]).unwrap_err();
        assert!(e.to_string().contains("only 16 bytes"), "{e}");
        let e = take(DataType::String, &[1_000_000_000_000], 8, &[0; 8]).unwrap_err();
        assert!(e.to_string().contains("has 2"), "{e}");
    }

    #[test]
    fn bools_are_zero_or_one() {
        let (data, _) = take(DataType::Bool, &[3], 3, &[0, 1, 1]).unwrap();
        assert_eq!(data, TensorData::Raw(vec![0, 1, 1]));
        assert_eq!(
            take(DataType::Bool, &[3], 3, &[0, 2, 1])
                .unwrap_err()
                .to_string(),
            "input \"x\": BOOL element 1 is the byte 2; BOOL elements must be 0 or 1"
        );
    }

    #[test]
    fn bytes_framing() {
        let part = [3, 0, 0, 0, b'a', b'b', b'c', 0, 0, 0, 0];
        let (data, left) = take(DataType::String, &[2], 11, &part).unwrap();
        assert_eq!(data, TensorData::Strings(vec![b"abc".to_vec(), vec![]]));
        assert_eq!(left, 0);
        assert!(take(DataType::String, &[3], 11, &part)
            .unwrap_err()
            .to_string()
            .contains("holds 3 BYTES elements but the binary data has 2"));
        assert!(take(DataType::String, &[1], 11, &part)
            .unwrap_err()
            .to_string()
            .contains("holds 1 BYTES elements but the binary data has more"));
        assert!(take(DataType::String, &[1], 6, &part)
            .unwrap_err()
            .to_string()
            .contains("BYTES element 0 has length 3 but only 2 bytes are left"));
        assert!(take(DataType::String, &[2], 9, &part)
            .unwrap_err()
            .to_string()
            .contains("BYTES element 1 is cut short: 2 bytes left"));
    }

    #[test]
    fn missing_binary_part() {
        let mut rest: &[u8] = &[];
        let e = take_input("x", DataType::Fp32, &[1], 1, 4, &mut rest, false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "input \"x\": binary_data_size is 4 but the request has no binary part (no \
             Inference-Header-Content-Length header)"
        );
    }

    #[test]
    fn append_frames_strings() {
        let t = Tensor {
            name: "s".into(),
            dtype: DataType::String,
            shape: vec![2],
            data: TensorData::Strings(vec![b"hi".to_vec(), b"".to_vec()]),
        };
        let mut out = Vec::new();
        append(&mut out, &t);
        assert_eq!(out, [2, 0, 0, 0, b'h', b'i', 0, 0, 0, 0]);
        assert_eq!(encoded_len(&t), out.len());
    }
}
