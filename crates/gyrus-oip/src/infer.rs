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
use serde::Deserialize;
use serde_json::value::RawValue;

mod encode;

pub use encode::{encode_infer, EncodedResponse};

use crate::binary;
use crate::error::OipError;
use crate::json_in::{self, OptionalData, Sink};

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

#[cfg(test)]
mod tests;
