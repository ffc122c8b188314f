//! Encoding an infer response: the selected outputs, as JSON data or binary, in the order asked.

use gyrus_engine::{ShapeDisplay, Tensor, TensorData};
use serde::Serialize;

use super::OutputSelection;
use crate::binary;
use crate::error::OipError;
use crate::json_out::{Flat, FloatStyle};

/// An encoded infer response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedResponse {
    /// The body: the JSON header, then the binary outputs in output order, if any.
    pub body: Vec<u8>,
    /// `Some(length of the JSON header)` when binary outputs follow it: send it as
    /// `Inference-Header-Content-Length` with `Content-Type: application/octet-stream`.
    /// `None` for a plain `application/json` body.
    pub header_length: Option<usize>,
}

#[derive(Serialize)]
struct ResponseJson<'a> {
    model_name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    model_version: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: Vec<OutputEntry<'a>>,
}

#[derive(Serialize)]
struct OutputEntry<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [i64],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinaryParameters>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Flat<'a>>,
}

#[derive(Serialize)]
struct BinaryParameters {
    binary_data_size: usize,
}

/// Encodes an infer response. `outputs` are everything the model gave, in the model's order;
/// `selection` (from [`decode_infer`]) picks which to return, in which order and in which
/// form. A requested output the model does not give is [`OipError::UnknownOutput`], listing
/// those it does.
///
/// JSON `data` is a flat row-major list: integers as JSON integers, FP16/BF16/FP32 as the
/// shortest number that reads back as the same f32, BOOL as true/false, BYTES as strings
/// (lossily decoded when not UTF-8). JSON has no NaN or infinity: non-finite floats are written
/// as `null` in JSON data; ask for binary output to get them bit-exact.
pub fn encode_infer(
    model_name: &str,
    model_version: Option<&str>,
    id: Option<&str>,
    outputs: Vec<Tensor>,
    selection: &OutputSelection,
) -> Result<EncodedResponse, OipError> {
    let picked: Vec<(&Tensor, bool)> = match &selection.requested {
        None => outputs
            .iter()
            .map(|t| (t, selection.binary_default))
            .collect(),
        Some(requested) => requested
            .iter()
            .map(|r| {
                outputs
                    .iter()
                    .find(|t| t.name == r.name)
                    .map(|t| (t, r.binary.unwrap_or(selection.binary_default)))
                    .ok_or_else(|| OipError::UnknownOutput {
                        name: r.name.clone(),
                        available: outputs.iter().map(|t| t.name.clone()).collect(),
                    })
            })
            .collect::<Result<_, _>>()?,
    };
    let mut binary_len = 0usize;
    let mut entries = Vec::with_capacity(picked.len());
    for &(tensor, binary) in &picked {
        check_output(tensor, binary)?;
        let size = binary.then(|| binary::encoded_len(tensor));
        binary_len = binary_len.saturating_add(size.unwrap_or(0));
        entries.push(OutputEntry {
            name: &tensor.name,
            datatype: tensor.dtype.oip_name(),
            shape: &tensor.shape,
            parameters: size.map(|binary_data_size| BinaryParameters { binary_data_size }),
            data: (!binary).then(|| Flat::new(tensor, FloatStyle::F32)),
        });
    }
    let response = ResponseJson {
        model_name,
        model_version,
        id,
        outputs: entries,
    };
    let mut body = Vec::with_capacity(256 + binary_len);
    serde_json::to_writer(&mut body, &response).map_err(|e| OipError::InvalidOutput {
        name: String::new(),
        message: format!("cannot be written as JSON: {e}"),
    })?;
    let header_length = body.len();
    let mut any_binary = false;
    for &(tensor, binary) in &picked {
        if binary {
            binary::append(&mut body, tensor);
            any_binary = true;
        }
    }
    Ok(EncodedResponse {
        body,
        header_length: any_binary.then_some(header_length),
    })
}

/// Refuses output tensors whose data disagrees with their shape or dtype: writing them would
/// produce a response the client cannot parse.
fn check_output(tensor: &Tensor, binary: bool) -> Result<(), OipError> {
    let fail = |message: String| {
        Err(OipError::InvalidOutput {
            name: tensor.name.clone(),
            message,
        })
    };
    let Some(count) = Tensor::element_count(&tensor.shape) else {
        return fail(format!("invalid shape {}", ShapeDisplay(&tensor.shape)));
    };
    match (&tensor.data, tensor.dtype.size()) {
        (TensorData::Raw(bytes), Some(size)) => {
            if count.checked_mul(size) != Some(bytes.len()) {
                return fail(format!(
                    "shape {} of {} needs {} bytes, the data has {}",
                    ShapeDisplay(&tensor.shape),
                    tensor.dtype,
                    count.saturating_mul(size),
                    bytes.len()
                ));
            }
        }
        (TensorData::Strings(items), None) => {
            if items.len() != count {
                return fail(format!(
                    "shape {} holds {count} elements, the data has {}",
                    ShapeDisplay(&tensor.shape),
                    items.len()
                ));
            }
            if binary && items.iter().any(|s| u32::try_from(s.len()).is_err()) {
                return fail("a BYTES element is longer than 4 GiB".to_owned());
            }
        }
        _ => {
            return fail(format!(
                "its data does not match the dtype {}",
                tensor.dtype
            ))
        }
    }
    Ok(())
}
