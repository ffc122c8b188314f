//! The Open Inference Protocol's infer request and response
//! (`POST /v2/models/<model>[/versions/<v>]/infer`), with the binary tensor data extension.
//!
//! The request's JSON header is parsed by hand-written serde visitors so that an input's
//! `data` streams straight into its tensor buffer (`json_in`) when its name, datatype and shape
//! came first, as clients write them. JSON field order is free, so a `data` that comes earlier
//! is kept as borrowed text (`&RawValue`) and decoded at the end of its input object. Binary
//! inputs are then taken from the bytes after the header, in input order.

use std::collections::HashSet;
use std::fmt;

use gyrus_engine::{DataType, ShapeDisplay, Tensor, TensorData};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::binary;
use crate::error::OipError;
use crate::json_in::{self, OptionalData, Sink};
use crate::json_out::{Flat, FloatStyle};

/// A decoded infer request.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedInfer {
    /// The request's `id`, to echo in the response.
    pub id: Option<String>,
    /// The inputs in request order, each checked against its own shape and datatype (not
    /// against the model's signature: that is the engine's job).
    pub inputs: Vec<Tensor>,
    /// Which outputs to return and how; hand it to [`encode_infer`].
    pub outputs: OutputSelection,
}

/// Which outputs a request wants back and in which form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputSelection {
    /// The outputs the request named, in its order; `None` for every output in the model's
    /// order (also when the request sent an empty `outputs` list).
    pub requested: Option<Vec<RequestedOutput>>,
    /// The request-level `parameters.binary_data_output`: binary for every output that does not
    /// say otherwise.
    pub binary_default: bool,
}

/// One entry of the request's `outputs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedOutput {
    /// The output's name.
    pub name: String,
    /// The output's `parameters.binary_data`, if given; it overrides `binary_default`.
    pub binary: Option<bool>,
}

/// Only the parameters gyrus acts on; others (`priority`, `timeout`, ...) are ignored.
#[derive(Deserialize)]
struct RequestParameters {
    binary_data_output: Option<bool>,
}

#[derive(Deserialize)]
struct InputParameters {
    binary_data_size: Option<u64>,
}

#[derive(Deserialize)]
struct OutputJson {
    name: String,
    parameters: Option<OutputParameters>,
}

#[derive(Deserialize)]
struct OutputParameters {
    binary_data: Option<bool>,
    /// Any value asks for the classification extension, which gyrus does not implement.
    classification: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum RequestField {
    Id,
    Parameters,
    Inputs,
    Outputs,
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum InputField {
    Name,
    Shape,
    Datatype,
    Parameters,
    Data,
    #[serde(other)]
    Other,
}

/// What the request's JSON header says, each input's JSON data already decoded.
struct Header {
    id: Option<String>,
    binary_default: bool,
    inputs: Vec<InputHeader>,
    outputs: Option<Vec<OutputJson>>,
}

struct InputHeader {
    name: String,
    dtype: DataType,
    shape: Vec<i64>,
    count: usize,
    data: InputData,
}

enum InputData {
    Json(TensorData),
    /// `binary_data_size`: the bytes come after the header.
    Binary(u64),
}

/// Shared by the header's visitors. A rule broken inside the parse is recorded here and the
/// parse stopped with a placeholder error, keeping serde_json's positions (which are for
/// malformed JSON) out of messages about well-formed JSON that breaks a rule.
struct Parse {
    error: Option<OipError>,
    /// The most elements any `data` in the header can hold: two characters each.
    max_elements: usize,
}

impl Parse {
    fn fail<E: de::Error>(&mut self, error: OipError) -> E {
        self.error = Some(error);
        E::custom("invalid inference request")
    }
}

struct RequestSeed<'p> {
    parse: &'p mut Parse,
}

impl<'de> DeserializeSeed<'de> for RequestSeed<'_> {
    type Value = Header;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Header, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RequestSeed<'_> {
    type Value = Header;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an inference request object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Header, A::Error> {
        let mut id = None;
        let mut parameters: Option<Option<RequestParameters>> = None;
        let mut inputs = None;
        let mut outputs = None;
        while let Some(field) = map.next_key::<RequestField>()? {
            match field {
                RequestField::Id if id.is_some() => return Err(de::Error::duplicate_field("id")),
                RequestField::Id => id = Some(map.next_value::<Option<String>>()?),
                RequestField::Parameters if parameters.is_some() => {
                    return Err(de::Error::duplicate_field("parameters"))
                }
                RequestField::Parameters => parameters = Some(map.next_value()?),
                RequestField::Inputs if inputs.is_some() => {
                    return Err(de::Error::duplicate_field("inputs"))
                }
                RequestField::Inputs => {
                    inputs = Some(map.next_value_seed(InputsSeed {
                        parse: &mut *self.parse,
                    })?)
                }
                RequestField::Outputs if outputs.is_some() => {
                    return Err(de::Error::duplicate_field("outputs"))
                }
                RequestField::Outputs => outputs = Some(map.next_value::<Option<Vec<_>>>()?),
                RequestField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Header {
            id: id.flatten(),
            binary_default: parameters
                .flatten()
                .and_then(|p| p.binary_data_output)
                .unwrap_or(false),
            inputs: inputs.ok_or_else(|| de::Error::missing_field("inputs"))?,
            outputs: outputs.flatten(),
        })
    }
}

struct InputsSeed<'p> {
    parse: &'p mut Parse,
}

impl<'de> DeserializeSeed<'de> for InputsSeed<'_> {
    type Value = Vec<InputHeader>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Vec<InputHeader>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for InputsSeed<'_> {
    type Value = Vec<InputHeader>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of inputs")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<InputHeader>, A::Error> {
        let mut inputs = Vec::with_capacity(seq.size_hint().unwrap_or(1).min(16));
        while let Some(input) = seq.next_element_seed(InputSeed {
            parse: &mut *self.parse,
        })? {
            inputs.push(input);
        }
        Ok(inputs)
    }
}

struct InputSeed<'p> {
    parse: &'p mut Parse,
}

impl<'de> DeserializeSeed<'de> for InputSeed<'_> {
    type Value = InputHeader;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<InputHeader, D::Error> {
        d.deserialize_map(self)
    }
}

/// An input's `data` as far as the parse got.
enum Data<'de> {
    Absent,
    /// Seen before the name, datatype and shape it needs: decoded once they are known.
    Deferred(&'de RawValue),
    Decoded(TensorData),
}

impl<'de> Visitor<'de> for InputSeed<'_> {
    type Value = InputHeader;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an input object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<InputHeader, A::Error> {
        let parse = self.parse;
        let mut name: Option<String> = None;
        let mut shape: Option<Vec<i64>> = None;
        let mut datatype: Option<Datatype> = None;
        let mut parameters: Option<Option<InputParameters>> = None;
        let mut data: Option<Data<'de>> = None;
        // Resolved as soon as name, datatype and shape are all known.
        let mut resolved: Option<(DataType, usize)> = None;
        while let Some(field) = map.next_key::<InputField>()? {
            match field {
                InputField::Name if name.is_some() => {
                    return Err(de::Error::duplicate_field("name"))
                }
                InputField::Name => name = Some(map.next_value()?),
                InputField::Shape if shape.is_some() => {
                    return Err(de::Error::duplicate_field("shape"))
                }
                InputField::Shape => shape = Some(map.next_value()?),
                InputField::Datatype if datatype.is_some() => {
                    return Err(de::Error::duplicate_field("datatype"))
                }
                InputField::Datatype => datatype = Some(map.next_value()?),
                InputField::Parameters if parameters.is_some() => {
                    return Err(de::Error::duplicate_field("parameters"))
                }
                InputField::Parameters => parameters = Some(map.next_value()?),
                InputField::Data if data.is_some() => {
                    return Err(de::Error::duplicate_field("data"))
                }
                InputField::Data => {
                    let (Some(name), Some(shape), Some(datatype)) = (&name, &shape, &datatype)
                    else {
                        data = Some(match map.next_value::<Option<&'de RawValue>>()? {
                            Some(raw) => Data::Deferred(raw),
                            None => Data::Absent,
                        });
                        continue;
                    };
                    let (dtype, count) =
                        resolve(name, datatype, shape).map_err(|e| parse.fail(e))?;
                    resolved = Some((dtype, count));
                    // The streaming path: elements go straight into the tensor's buffer.
                    let reserve = count.min(parse.max_elements);
                    let mut sink = Sink::for_oip(name, dtype, count, reserve);
                    match map.next_value_seed(OptionalData(&mut sink)) {
                        Ok(true) => {}
                        Ok(false) => {
                            data = Some(Data::Absent);
                            continue;
                        }
                        Err(e) => {
                            return Err(match sink.take_error() {
                                Some(message) => parse.fail(OipError::Invalid(message)),
                                None => e,
                            })
                        }
                    }
                    let decoded = sink.finish_oip(shape, count).map_err(|e| parse.fail(e))?;
                    data = Some(Data::Decoded(decoded));
                }
                InputField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let name = name.ok_or_else(|| de::Error::missing_field("name"))?;
        let shape = shape.ok_or_else(|| de::Error::missing_field("shape"))?;
        let datatype = datatype.ok_or_else(|| de::Error::missing_field("datatype"))?;
        let (dtype, count) = match resolved {
            Some(r) => r,
            None => resolve(&name, &datatype, &shape).map_err(|e| parse.fail(e))?,
        };
        let binary_size = parameters.flatten().and_then(|p| p.binary_data_size);
        let data = match (data.unwrap_or(Data::Absent), binary_size) {
            (Data::Absent, Some(size)) => InputData::Binary(size),
            (Data::Absent, None) => {
                return Err(parse.fail(OipError::Invalid(format!(
                    "input {name:?}: has no data (give data, or parameters.binary_data_size \
                     with the bytes after the JSON header)"
                ))))
            }
            (_, Some(_)) => {
                return Err(parse.fail(OipError::Invalid(format!(
                    "input {name:?}: has both data and parameters.binary_data_size; give one"
                ))))
            }
            (Data::Decoded(data), None) => InputData::Json(data),
            (Data::Deferred(raw), None) => InputData::Json(
                json_in::decode_oip_data(&name, dtype, &shape, count, raw.get())
                    .map_err(|e| parse.fail(e))?,
            ),
        };
        Ok(InputHeader {
            name,
            dtype,
            shape,
            count,
            data,
        })
    }
}

/// A `datatype` value: known, or the unknown name for the error message.
struct Datatype(Result<DataType, String>);

impl<'de> Deserialize<'de> for Datatype {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Datatype, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Datatype;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a datatype name such as \"FP32\"")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Datatype, E> {
                Ok(Datatype(
                    DataType::from_oip_name(v).ok_or_else(|| v.to_owned()),
                ))
            }
        }
        d.deserialize_str(V)
    }
}

/// The input's dtype and element count, or why the header's declaration is unusable.
fn resolve(name: &str, datatype: &Datatype, shape: &[i64]) -> Result<(DataType, usize), OipError> {
    let dtype = match &datatype.0 {
        Ok(dtype) => *dtype,
        Err(unknown) => {
            return Err(OipError::Invalid(format!(
                "input {name:?}: unknown datatype {unknown:?}; expected one of {}",
                DataType::ALL.map(DataType::oip_name).join(", ")
            )))
        }
    };
    Ok((dtype, element_count(name, shape)?))
}

/// Decodes an infer request body. `header_length` is the `Inference-Header-Content-Length`
/// header: the JSON header's length when binary tensor data follows it; `None` when the whole
/// body is JSON.
///
/// Every input must carry either `data` (JSON, nested or flat, row-major) or
/// `parameters.binary_data_size` (its bytes follow the header, in input order); the binary
/// part must be used up exactly. Input names must be unique. Nothing is allocated in
/// proportion to a shape before the body is known to hold that much data. Unknown fields and
/// parameters are ignored; `classification` on an output is refused as unsupported.
pub fn decode_infer(body: &[u8], header_length: Option<usize>) -> Result<DecodedInfer, OipError> {
    let (header, mut rest) = binary::split(body, header_length)?;
    let mut parse = Parse {
        error: None,
        max_elements: header.len() / 2 + 1,
    };
    let mut de = serde_json::Deserializer::from_slice(header);
    let parsed = RequestSeed { parse: &mut parse }
        .deserialize(&mut de)
        .and_then(|header| de.end().map(|()| header));
    let request = match parsed {
        Ok(request) => request,
        Err(e) => {
            return Err(parse
                .error
                .take()
                .unwrap_or_else(|| OipError::Json(format!("invalid inference request: {e}"))))
        }
    };
    let has_binary_part = header_length.is_some();

    let mut inputs = Vec::with_capacity(request.inputs.len());
    for input in request.inputs {
        let data = match input.data {
            InputData::Json(data) => data,
            InputData::Binary(size) => binary::take_input(
                &input.name,
                input.dtype,
                &input.shape,
                input.count,
                size,
                &mut rest,
                has_binary_part,
            )?,
        };
        inputs.push(Tensor {
            name: input.name,
            dtype: input.dtype,
            shape: input.shape,
            data,
        });
    }
    if !rest.is_empty() {
        return Err(OipError::Binary(format!(
            "{} bytes of binary data are left after the last binary input (check \
             binary_data_size and Inference-Header-Content-Length)",
            rest.len()
        )));
    }
    if let Some(name) = first_duplicate(inputs.iter().map(|t| t.name.as_str())) {
        return Err(OipError::Invalid(format!("input {name:?} is given twice")));
    }

    let requested = match request.outputs {
        None => None,
        Some(list) if list.is_empty() => None,
        Some(list) => {
            let mut requested = Vec::with_capacity(list.len());
            for output in list {
                let (binary, classification) = match output.parameters {
                    Some(p) => (p.binary_data, p.classification.is_some()),
                    None => (None, false),
                };
                if classification {
                    return Err(OipError::Unsupported(format!(
                        "the classification extension (requested for output {:?})",
                        output.name
                    )));
                }
                requested.push(RequestedOutput {
                    name: output.name,
                    binary,
                });
            }
            if let Some(name) = first_duplicate(requested.iter().map(|o| o.name.as_str())) {
                return Err(OipError::Invalid(format!(
                    "output {name:?} is requested twice"
                )));
            }
            Some(requested)
        }
    };
    Ok(DecodedInfer {
        id: request.id,
        inputs,
        outputs: OutputSelection {
            requested,
            binary_default: request.binary_default,
        },
    })
}

fn element_count(name: &str, shape: &[i64]) -> Result<usize, OipError> {
    if shape.iter().any(|&d| d < 0) {
        return Err(OipError::Invalid(format!(
            "input {name:?}: shape {} has a negative dimension",
            ShapeDisplay(shape)
        )));
    }
    Tensor::element_count(shape).ok_or_else(|| {
        OipError::Invalid(format!(
            "input {name:?}: shape {} holds more elements than can be addressed",
            ShapeDisplay(shape)
        ))
    })
}

/// The first name that occurs twice. Requests name a handful of tensors, so a linear scan
/// is cheapest; a set keeps a request with thousands of them from going quadratic.
fn first_duplicate<'a>(names: impl ExactSizeIterator<Item = &'a str>) -> Option<&'a str> {
    if names.len() <= 16 {
        let all: Vec<&str> = names.collect();
        return all
            .iter()
            .enumerate()
            .find(|(i, name)| all[..*i].contains(name))
            .map(|(_, name)| *name);
    }
    let mut seen = HashSet::with_capacity(names.len());
    names.into_iter().find(|name| !seen.insert(*name))
}

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

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn f32s(xs: &[f32]) -> TensorData {
        TensorData::Raw(xs.iter().flat_map(|x| x.to_le_bytes()).collect())
    }

    fn decode_json(value: Value) -> Result<DecodedInfer, OipError> {
        decode_infer(value.to_string().as_bytes(), None)
    }

    fn err(value: Value) -> String {
        decode_json(value).unwrap_err().to_string()
    }

    /// A binary request: the header, then `parts` in order.
    fn binary_request(header: Value, parts: &[&[u8]]) -> (Vec<u8>, usize) {
        let mut body = header.to_string().into_bytes();
        let len = body.len();
        for part in parts {
            body.extend_from_slice(part);
        }
        (body, len)
    }

    #[test]
    fn iris_request() {
        let r = decode_json(json!({
            "id": "42",
            "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                        "data": [[5.1, 3.5, 1.4, 0.2]]}]
        }))
        .unwrap();
        assert_eq!(r.id.as_deref(), Some("42"));
        assert_eq!(
            r.inputs,
            vec![Tensor {
                name: "x".into(),
                dtype: DataType::Fp32,
                shape: vec![1, 4],
                data: f32s(&[5.1, 3.5, 1.4, 0.2]),
            }]
        );
        assert_eq!(r.outputs, OutputSelection::default());
    }

    #[test]
    fn every_datatype_from_json() {
        let cases: Vec<(&str, Value, Vec<u8>)> = vec![
            ("BOOL", json!([true, false]), vec![1, 0]),
            ("UINT8", json!([0, 255]), vec![0, 255]),
            ("UINT16", json!([1, 65535]), vec![1, 0, 255, 255]),
            ("UINT32", json!([1, 2]), vec![1, 0, 0, 0, 2, 0, 0, 0]),
            (
                "UINT64",
                json!([1, u64::MAX]),
                [1u64, u64::MAX]
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect(),
            ),
            ("INT8", json!([-128, 127]), vec![0x80, 0x7f]),
            ("INT16", json!([-1, 2]), vec![255, 255, 2, 0]),
            (
                "INT32",
                json!([-1, 2]),
                [-1i32, 2].iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
            (
                "INT64",
                json!([i64::MIN, 2]),
                [i64::MIN, 2].iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
            (
                "FP16",
                json!([0.5, 1]),
                [half::f16::from_f32(0.5), half::f16::ONE]
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect(),
            ),
            (
                "BF16",
                json!([0.5, -2]),
                [half::bf16::from_f32(0.5), half::bf16::from_f32(-2.0)]
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect(),
            ),
            (
                "FP32",
                json!([0.5, 1e-3]),
                [0.5f32, 1e-3]
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect(),
            ),
            (
                "FP64",
                json!([0.5, 1e-300]),
                [0.5f64, 1e-300]
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect(),
            ),
        ];
        for (datatype, data, want) in cases {
            let r = decode_json(json!({
                "inputs": [{"name": "x", "shape": [2], "datatype": datatype, "data": data}]
            }))
            .unwrap_or_else(|e| panic!("{datatype}: {e}"));
            assert_eq!(r.inputs[0].data, TensorData::Raw(want), "{datatype}");
            assert_eq!(r.inputs[0].dtype.oip_name(), datatype);
        }
        let r = decode_json(json!({
            "inputs": [{"name": "s", "shape": [2], "datatype": "BYTES", "data": ["héllo", ""]}]
        }))
        .unwrap();
        assert_eq!(
            r.inputs[0].data,
            TensorData::Strings(vec!["héllo".as_bytes().to_vec(), vec![]])
        );
    }

    #[test]
    fn field_order_is_free() {
        let body =
            br#"{"inputs": [{"data": [1, 2], "datatype": "INT8", "shape": [2], "name": "x"}]}"#;
        let r = decode_infer(body, None).unwrap();
        assert_eq!(r.inputs[0].data, TensorData::Raw(vec![1, 2]));
    }

    #[test]
    fn request_level_rules() {
        assert_eq!(
            err(json!({"inputs": [{"name": "x", "shape": [1], "datatype": "FLOAT", "data": [1]}]})),
            "input \"x\": unknown datatype \"FLOAT\"; expected one of BOOL, UINT8, UINT16, \
             UINT32, UINT64, INT8, INT16, INT32, INT64, FP16, BF16, FP32, FP64, BYTES"
        );
        assert_eq!(
            err(
                json!({"inputs": [{"name": "x", "shape": [-1, 4], "datatype": "FP32", "data": []}]})
            ),
            "input \"x\": shape [-1, 4] has a negative dimension"
        );
        assert_eq!(
            err(
                json!({"inputs": [{"name": "x", "shape": [i64::MAX, i64::MAX], "datatype": "FP32",
                                   "data": [1]}]})
            ),
            format!(
                "input \"x\": shape [{0}, {0}] holds more elements than can be addressed",
                i64::MAX
            )
        );
        assert_eq!(
            err(json!({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]})),
            "input \"x\": has no data (give data, or parameters.binary_data_size with the bytes \
             after the JSON header)"
        );
        assert_eq!(
            err(
                json!({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1],
                                   "parameters": {"binary_data_size": 4}}]})
            ),
            "input \"x\": has both data and parameters.binary_data_size; give one"
        );
        assert_eq!(
            err(json!({"inputs": [
                {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]},
                {"name": "x", "shape": [1], "datatype": "FP32", "data": [2]}
            ]})),
            "input \"x\" is given twice"
        );
        assert!(err(json!({"id": "1"})).contains("missing field `inputs`"));
        assert!(err(
            json!({"inputs": [{"name": "x", "shape": [1.5], "datatype": "FP32",
                                       "data": [1]}]})
        )
        .starts_with("invalid inference request: invalid type: floating point `1.5`"));
    }

    #[test]
    fn malformed_json_says_where() {
        let e = decode_infer(b"{\"inputs\": [\n  {\"name\": \"x\",,}]}", None).unwrap_err();
        assert!(matches!(e, OipError::Json(_)));
        assert!(e.to_string().contains("line 2 column"), "{e}");
    }

    #[test]
    fn huge_shapes_fail_fast() {
        let e = err(
            json!({"inputs": [{"name": "x", "shape": [1_000_000_000_000i64],
                                       "datatype": "FP32", "data": [1]}]}),
        );
        assert_eq!(
            e,
            "input \"x\": shape [1000000000000] holds 1000000000000 elements but data has 1"
        );
        let (body, len) = binary_request(
            json!({"inputs": [{"name": "x", "shape": [1_000_000_000_000i64], "datatype": "FP32",
                               "parameters": {"binary_data_size": 4}}]}),
            &[&[0; 4]],
        );
        let e = decode_infer(&body, Some(len)).unwrap_err();
        assert!(e.to_string().contains("needs 4000000000000 bytes"), "{e}");
    }

    #[test]
    fn unknown_parameters_are_ignored() {
        let r = decode_json(json!({
            "parameters": {"priority": 1, "timeout": 100, "binary_data_output": true},
            "inputs": [{"name": "x", "shape": [1], "datatype": "INT8", "data": [1],
                        "parameters": {"shared_memory_region": "r"}}],
            "outputs": [{"name": "y", "parameters": {"other": [1, 2]}},
                        {"name": "z", "parameters": {"binary_data": false}}]
        }))
        .unwrap();
        assert_eq!(
            r.outputs,
            OutputSelection {
                requested: Some(vec![
                    RequestedOutput {
                        name: "y".into(),
                        binary: None
                    },
                    RequestedOutput {
                        name: "z".into(),
                        binary: Some(false)
                    },
                ]),
                binary_default: true,
            }
        );
        let r = decode_json(json!({"inputs": [], "outputs": []})).unwrap();
        assert_eq!(r.outputs.requested, None);
    }

    #[test]
    fn classification_is_refused() {
        let e = decode_json(json!({
            "inputs": [],
            "outputs": [{"name": "y", "parameters": {"classification": 3}}]
        }))
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "the classification extension (requested for output \"y\") is not supported"
        );
        assert_eq!(e.status(), 400);
        assert_eq!(
            err(json!({"inputs": [], "outputs": [{"name": "y"}, {"name": "y"}]})),
            "output \"y\" is requested twice"
        );
    }

    #[test]
    fn binary_inputs_in_order() {
        let strings = [2, 0, 0, 0, b'h', b'i', 1, 0, 0, 0, b'!'];
        let (body, len) = binary_request(
            json!({"inputs": [
                {"name": "a", "shape": [2], "datatype": "FP32",
                 "parameters": {"binary_data_size": 8}},
                {"name": "j", "shape": [1], "datatype": "INT8", "data": [5]},
                {"name": "s", "shape": [2], "datatype": "BYTES",
                 "parameters": {"binary_data_size": 11}},
                {"name": "b", "shape": [3], "datatype": "BOOL",
                 "parameters": {"binary_data_size": 3}}
            ]}),
            &[&[0, 0, 128, 63, 0, 0, 0, 64], &strings, &[1, 0, 1]],
        );
        let r = decode_infer(&body, Some(len)).unwrap();
        assert_eq!(r.inputs[0].data, f32s(&[1.0, 2.0]));
        assert_eq!(r.inputs[1].data, TensorData::Raw(vec![5]));
        assert_eq!(
            r.inputs[2].data,
            TensorData::Strings(vec![b"hi".to_vec(), b"!".to_vec()])
        );
        assert_eq!(r.inputs[3].data, TensorData::Raw(vec![1, 0, 1]));
    }

    #[test]
    fn header_length_edge_cases() {
        let header = json!({"inputs": [{"name": "a", "shape": [1], "datatype": "FP32",
                                        "parameters": {"binary_data_size": 4}}]});
        let (body, len) = binary_request(header.clone(), &[&[0; 4]]);
        assert!(decode_infer(&body, Some(len)).is_ok());
        assert_eq!(
            decode_infer(&body, Some(body.len() + 1))
                .unwrap_err()
                .to_string(),
            format!(
                "Inference-Header-Content-Length is {} but the body has only {} bytes",
                body.len() + 1,
                body.len()
            )
        );
        // Too short a header length cuts the JSON.
        let e = decode_infer(&body, Some(len - 1)).unwrap_err();
        assert!(matches!(e, OipError::Json(_)), "{e}");
        let e = decode_infer(&body, Some(0)).unwrap_err();
        assert!(e.to_string().contains("EOF while parsing"), "{e}");
        // No header length: the binary bytes are taken as trailing JSON.
        let e = decode_infer(&body, None).unwrap_err();
        assert!(e.to_string().contains("trailing characters"), "{e}");
        let (header_only, len) = binary_request(header, &[]);
        assert_eq!(
            decode_infer(&header_only, None).unwrap_err().to_string(),
            "input \"a\": binary_data_size is 4 but the request has no binary part (no \
             Inference-Header-Content-Length header)"
        );
        assert_eq!(
            decode_infer(&header_only, Some(len))
                .unwrap_err()
                .to_string(),
            "input \"a\": binary_data_size is 4 but only 0 bytes of binary data are left"
        );
        let junk = b"not json{}";
        assert!(matches!(
            decode_infer(junk, Some(junk.len())).unwrap_err(),
            OipError::Json(_)
        ));
    }

    #[test]
    fn binary_size_mismatch_and_trailing_bytes() {
        let (body, len) = binary_request(
            json!({"inputs": [{"name": "a", "shape": [2], "datatype": "FP32",
                               "parameters": {"binary_data_size": 4}}]}),
            &[&[0; 8]],
        );
        assert_eq!(
            decode_infer(&body, Some(len)).unwrap_err().to_string(),
            "input \"a\": binary_data_size is 4 but shape [2] of FP32 needs 8 bytes"
        );
        let (body, len) = binary_request(
            json!({"inputs": [{"name": "a", "shape": [1], "datatype": "FP32",
                               "parameters": {"binary_data_size": 4}}]}),
            &[&[0; 8]],
        );
        assert_eq!(
            decode_infer(&body, Some(len)).unwrap_err().to_string(),
            "4 bytes of binary data are left after the last binary input (check \
             binary_data_size and Inference-Header-Content-Length)"
        );
        let (body, len) = binary_request(
            json!({"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1]}]}),
            &[&[0; 3]],
        );
        assert!(decode_infer(&body, Some(len))
            .unwrap_err()
            .to_string()
            .starts_with("3 bytes of binary data are left"));
    }

    fn outputs() -> Vec<Tensor> {
        vec![
            Tensor {
                name: "label".into(),
                dtype: DataType::String,
                shape: vec![1],
                data: TensorData::Strings(vec![b"setosa".to_vec()]),
            },
            Tensor {
                name: "probs".into(),
                dtype: DataType::Fp32,
                shape: vec![1, 3],
                data: f32s(&[0.9, 0.1, f32::NAN]),
            },
        ]
    }

    #[test]
    fn json_response() {
        let r = encode_infer(
            "iris",
            Some("1"),
            Some("42"),
            outputs(),
            &OutputSelection::default(),
        )
        .unwrap();
        assert_eq!(r.header_length, None);
        assert_eq!(
            String::from_utf8(r.body).unwrap(),
            r#"{"model_name":"iris","model_version":"1","id":"42","outputs":[{"name":"label","datatype":"BYTES","shape":[1],"data":["setosa"]},{"name":"probs","datatype":"FP32","shape":[1,3],"data":[0.9,0.1,null]}]}"#
        );
        let r = encode_infer("m", None, None, vec![], &OutputSelection::default()).unwrap();
        assert_eq!(r.body, br#"{"model_name":"m","outputs":[]}"#);
    }

    #[test]
    fn binary_response_and_selection() {
        let selection = OutputSelection {
            requested: Some(vec![
                RequestedOutput {
                    name: "probs".into(),
                    binary: None,
                },
                RequestedOutput {
                    name: "label".into(),
                    binary: Some(false),
                },
            ]),
            binary_default: true,
        };
        let r = encode_infer("iris", None, None, outputs(), &selection).unwrap();
        let len = r.header_length.unwrap();
        let header: Value = serde_json::from_slice(&r.body[..len]).unwrap();
        assert_eq!(
            header,
            json!({"model_name": "iris", "outputs": [
                {"name": "probs", "datatype": "FP32", "shape": [1, 3],
                 "parameters": {"binary_data_size": 12}},
                {"name": "label", "datatype": "BYTES", "shape": [1], "data": ["setosa"]}
            ]})
        );
        let f32s = match f32s(&[0.9, 0.1, f32::NAN]) {
            TensorData::Raw(b) => b,
            TensorData::Strings(_) => unreachable!(),
        };
        assert_eq!(&r.body[len..], &f32s[..]);

        let strings = OutputSelection {
            requested: Some(vec![RequestedOutput {
                name: "label".into(),
                binary: Some(true),
            }]),
            binary_default: false,
        };
        let r = encode_infer("iris", None, None, outputs(), &strings).unwrap();
        let len = r.header_length.unwrap();
        assert_eq!(&r.body[len..], b"\x06\x00\x00\x00setosa");
        assert!(String::from_utf8_lossy(&r.body[..len]).contains("\"binary_data_size\":10"));
    }

    #[test]
    fn unknown_and_invalid_outputs() {
        let selection = OutputSelection {
            requested: Some(vec![RequestedOutput {
                name: "z".into(),
                binary: None,
            }]),
            binary_default: false,
        };
        let e = encode_infer("iris", None, None, outputs(), &selection).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown output \"z\"; the model gives \"label\", \"probs\""
        );
        assert_eq!(e.status(), 400);
        let bad = vec![Tensor {
            name: "y".into(),
            dtype: DataType::Fp32,
            shape: vec![2],
            data: f32s(&[1.0]),
        }];
        let e = encode_infer("m", None, None, bad, &OutputSelection::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "output \"y\": shape [2] of FP32 needs 8 bytes, the data has 4"
        );
        assert_eq!(e.status(), 500);
        let mixed = vec![Tensor {
            name: "y".into(),
            dtype: DataType::String,
            shape: vec![1],
            data: TensorData::Raw(vec![1]),
        }];
        let e = encode_infer("m", None, None, mixed, &OutputSelection::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "output \"y\": its data does not match the dtype BYTES"
        );
    }

    #[test]
    fn duplicate_detection_scales() {
        let names: Vec<String> = (0..100).map(|i| format!("n{i}")).collect();
        assert_eq!(first_duplicate(names.iter().map(String::as_str)), None);
        let mut dup = names.clone();
        dup.push("n50".into());
        assert_eq!(first_duplicate(dup.iter().map(String::as_str)), Some("n50"));
        assert_eq!(first_duplicate(["a", "b", "a"].into_iter()), Some("a"));
        assert_eq!(first_duplicate(["a", "b"].into_iter()), None);
    }
}
