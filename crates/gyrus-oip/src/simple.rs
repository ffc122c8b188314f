//! gyrus's simple JSON model API (`POST /<api>` for an ONNX model): the body is an object of
//! input name → nested list or scalar, or, for a model with exactly one input, that input's
//! nested list or scalar alone. Element types come from the model's signature and JSON
//! values are cast like numpy's `astype`; shapes come from the nesting. The response is an
//! object of output name → nested list.

use std::fmt;

use gyrus_engine::{ModelSignature, Tensor};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

use crate::error::{name_list, OipError};
use crate::json_in::{Node, Rules, Sink};
use crate::json_out::{FloatStyle, NestedMap};

/// Decodes a simple API request for a model with this signature.
///
/// Each input's dtype is the signature's; its shape is the nesting's (a scalar has shape
/// `[]`). JSON numbers are cast like numpy's `astype`: a float into an integer dtype truncates
/// toward zero, out of range is an error, `true`/`false` count as 1/0 for numeric dtypes.
/// BOOL takes only `true`/`false`, string inputs only strings, numeric inputs no strings.
/// Shapes are not checked against the signature (the engine does that); names are, because the
/// dtype is looked up by name: an unknown or missing input is an error that lists the
/// model's inputs. A JSON object is always read as input name → value, even for a
/// single-input model. Tensors come back in the signature's order.
pub fn decode_simple(body: &[u8], signature: &ModelSignature) -> Result<Vec<Tensor>, OipError> {
    let mut state = State {
        signature,
        slots: (0..signature.inputs.len()).map(|_| None).collect(),
        error: None,
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = Top { state: &mut state }
        .deserialize(&mut de)
        .and_then(|()| de.end());
    if let Err(e) = parsed {
        return Err(match state.error.take() {
            Some(message) => OipError::Invalid(message),
            None => OipError::Json(format!("invalid JSON body: {e}")),
        });
    }
    let mut tensors = Vec::with_capacity(state.slots.len());
    for (slot, info) in state.slots.into_iter().zip(&signature.inputs) {
        match slot {
            Some(tensor) => tensors.push(tensor),
            None => {
                return Err(OipError::Invalid(format!(
                    "missing input {:?}; the model takes {}",
                    info.name,
                    input_names(signature)
                )))
            }
        }
    }
    Ok(tensors)
}

/// Encodes a simple API response as a JSON value: an object of output name → nested list
/// following the output's shape (a bare value for shape `[]`). Integers are JSON integers,
/// floats JSON numbers (FP16, BF16 and FP32 widened through their shortest decimal form, so
/// `0.1f32` shows as `0.1`), BOOL true/false, strings strings (lossily decoded when not
/// UTF-8). Non-finite floats become `null`, JSON having no NaN or infinity. An output whose
/// data disagrees with its shape is written as a flat list rather than failing.
pub fn encode_simple(outputs: &[Tensor]) -> serde_json::Value {
    serde_json::to_value(NestedMap {
        outputs,
        style: FloatStyle::ShortestF64,
    })
    .unwrap_or(serde_json::Value::Null)
}

/// [`encode_simple`] written straight to bytes, without building a `serde_json::Value`: the
/// faster path for the HTTP layer, with the same output.
pub fn encode_simple_body(outputs: &[Tensor]) -> Vec<u8> {
    serde_json::to_vec(&NestedMap {
        outputs,
        style: FloatStyle::F32,
    })
    .unwrap_or_else(|_| b"{}".to_vec())
}

fn input_names(signature: &ModelSignature) -> String {
    let names: Vec<&str> = signature.inputs.iter().map(|i| i.name.as_str()).collect();
    name_list(&names)
}

struct State<'g> {
    signature: &'g ModelSignature,
    slots: Vec<Option<Tensor>>,
    error: Option<String>,
}

impl State<'_> {
    fn fail<E: de::Error>(&mut self, message: String) -> Result<(), E> {
        self.error = Some(message);
        Err(E::custom("invalid request"))
    }

    /// Decodes one input's value with the given seed driver and stores the tensor.
    fn decode_input<E: de::Error>(
        &mut self,
        index: usize,
        name: String,
        drive: impl FnOnce(Node<'_, '_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let Some(info) = self.signature.inputs.get(index) else {
            return self.fail(format!("internal error: no input {index}"));
        };
        let mut sink = Sink::new(&name, info.dtype, Rules::Cast);
        let result = drive(Node {
            sink: &mut sink,
            depth: 0,
        });
        if let Err(e) = result {
            if let Some(message) = sink.take_error() {
                self.error = Some(message);
            }
            return Err(e);
        }
        let dtype = info.dtype;
        let (shape, data) = sink.finish();
        if let Some(slot) = self.slots.get_mut(index) {
            *slot = Some(Tensor {
                name,
                dtype,
                shape,
                data,
            });
        }
        Ok(())
    }

    /// The single input a bare (non-object) body stands for.
    fn only_input<E: de::Error>(&mut self) -> Result<String, E> {
        match self.signature.inputs.as_slice() {
            [only] => Ok(only.name.clone()),
            inputs => {
                let message = if inputs.is_empty() {
                    "the model takes no inputs; send {}".to_owned()
                } else {
                    format!(
                        "the model takes {} inputs ({}); send a JSON object with one key per \
                         input",
                        inputs.len(),
                        input_names(self.signature)
                    )
                };
                self.fail(message).map(|()| String::new())
            }
        }
    }
}

/// The body's top-level value.
struct Top<'s, 'g> {
    state: &'s mut State<'g>,
}

impl<'de> DeserializeSeed<'de> for Top<'_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

/// Forwards a bare top-level scalar to the single input's decoder.
macro_rules! bare_scalar {
    ($method:ident $(, $arg:ident : $ty:ty)?) => {
        fn $method<E: de::Error>(self $(, $arg: $ty)?) -> Result<(), E> {
            let name = self.state.only_input()?;
            self.state.decode_input(0, name, |node| node.$method($($arg)?))
        }
    };
}

impl<'de> Visitor<'de> for Top<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of input name to nested list, or a nested list")
    }

    bare_scalar!(visit_bool, v: bool);
    bare_scalar!(visit_i64, v: i64);
    bare_scalar!(visit_u64, v: u64);
    bare_scalar!(visit_f64, v: f64);
    bare_scalar!(visit_str, v: &str);
    bare_scalar!(visit_unit);

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        let name = self.state.only_input()?;
        self.state.decode_input(0, name, |node| node.visit_seq(seq))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            let Some(index) = self
                .state
                .signature
                .inputs
                .iter()
                .position(|i| i.name == key)
            else {
                let message = format!(
                    "unknown input {key:?}; the model takes {}",
                    input_names(self.state.signature)
                );
                return self.state.fail(message);
            };
            if self.state.slots.get(index).is_some_and(Option::is_some) {
                return self.state.fail(format!("input {key:?} is given twice"));
            }
            self.state
                .decode_input(index, key, |node| map.next_value_seed(node))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use gyrus_engine::{DataType, TensorData, TensorInfo};
    use serde_json::json;

    use super::*;

    fn sig(inputs: &[(&str, DataType)]) -> ModelSignature {
        ModelSignature {
            inputs: inputs
                .iter()
                .map(|(name, dtype)| TensorInfo {
                    name: (*name).into(),
                    dtype: *dtype,
                    shape: vec![-1],
                })
                .collect(),
            outputs: vec![],
        }
    }

    fn decode(body: &str, inputs: &[(&str, DataType)]) -> Result<Vec<Tensor>, OipError> {
        decode_simple(body.as_bytes(), &sig(inputs))
    }

    fn err(body: &str, inputs: &[(&str, DataType)]) -> String {
        decode(body, inputs).unwrap_err().to_string()
    }

    fn f32s(xs: &[f32]) -> TensorData {
        TensorData::Raw(xs.iter().flat_map(|x| x.to_le_bytes()).collect())
    }

    #[test]
    fn object_bodies_use_the_signatures_dtypes_and_order() {
        let t = decode(
            r#"{"b": [[1, 2]], "a": 5.5}"#,
            &[("a", DataType::Fp32), ("b", DataType::Int64)],
        )
        .unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].name, "a");
        assert_eq!(t[0].shape, Vec::<i64>::new());
        assert_eq!(t[0].data, f32s(&[5.5]));
        assert_eq!(t[1].name, "b");
        assert_eq!(t[1].dtype, DataType::Int64);
        assert_eq!(t[1].shape, vec![1, 2]);
        assert_eq!(
            t[1].data,
            TensorData::Raw([1i64, 2].iter().flat_map(|x| x.to_le_bytes()).collect())
        );
    }

    #[test]
    fn bare_bodies_for_single_input_models() {
        let t = decode("[[1, 2], [3, 4]]", &[("x", DataType::Fp32)]).unwrap();
        assert_eq!(t[0].name, "x");
        assert_eq!(t[0].shape, vec![2, 2]);
        assert_eq!(t[0].data, f32s(&[1.0, 2.0, 3.0, 4.0]));
        let t = decode("3", &[("x", DataType::Uint8)]).unwrap();
        assert_eq!(t[0].shape, Vec::<i64>::new());
        assert_eq!(t[0].data, TensorData::Raw(vec![3]));
        let t = decode("\"hi\"", &[("x", DataType::String)]).unwrap();
        assert_eq!(t[0].data, TensorData::Strings(vec![b"hi".to_vec()]));
        let t = decode("[]", &[("x", DataType::Fp32)]).unwrap();
        assert_eq!(t[0].shape, vec![0]);
        assert_eq!(
            err("[1]", &[("a", DataType::Fp32), ("b", DataType::Fp32)]),
            "the model takes 2 inputs (\"a\", \"b\"); send a JSON object with one key per input"
        );
        assert_eq!(err("[1]", &[]), "the model takes no inputs; send {}");
        assert!(decode("{}", &[]).unwrap().is_empty());
    }

    #[test]
    fn names_are_checked() {
        let inputs = [("a", DataType::Fp32), ("b", DataType::Fp32)];
        assert_eq!(
            err(r#"{"a": 1, "k": 2}"#, &inputs),
            "unknown input \"k\"; the model takes \"a\", \"b\""
        );
        assert_eq!(
            err(r#"{"a": 1}"#, &inputs),
            "missing input \"b\"; the model takes \"a\", \"b\""
        );
        assert_eq!(
            err(r#"{"a": 1, "a": 2, "b": 3}"#, &inputs),
            "input \"a\" is given twice"
        );
        assert_eq!(
            err(r#"{"input": [1]}"#, &[("x", DataType::Fp32)]),
            "unknown input \"input\"; the model takes \"x\""
        );
    }

    #[test]
    fn numpy_like_casts() {
        let t = decode("[1.9, -1.9, true, false]", &[("x", DataType::Int32)]).unwrap();
        assert_eq!(
            t[0].data,
            TensorData::Raw(
                [1i32, -1, 1, 0]
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect()
            )
        );
        let t = decode("[1, 2.5, true]", &[("x", DataType::Fp64)]).unwrap();
        assert_eq!(
            t[0].data,
            TensorData::Raw(
                [1.0f64, 2.5, 1.0]
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect()
            )
        );
        let t = decode("[255.9]", &[("x", DataType::Uint8)]).unwrap();
        assert_eq!(t[0].data, TensorData::Raw(vec![255]));
        assert_eq!(
            err("[256.0]", &[("x", DataType::Uint8)]),
            "input \"x\": 256 is out of range for UINT8"
        );
        assert_eq!(
            err("[-1]", &[("x", DataType::Uint64)]),
            "input \"x\": -1 is out of range for UINT64"
        );
        assert_eq!(
            err("[1e300]", &[("x", DataType::Int64)]),
            "input \"x\": 1e300 is out of range for INT64"
        );
    }

    #[test]
    fn kind_mismatches_name_the_input() {
        assert_eq!(
            err(r#"{"x": ["abc"]}"#, &[("x", DataType::Fp32)]),
            "input \"x\": expected FP32 numbers, found a string \"abc\""
        );
        assert_eq!(
            err(r#"{"x": [1]}"#, &[("x", DataType::Bool)]),
            "input \"x\": expected BOOL values (true or false), found the number 1"
        );
        assert_eq!(
            err(r#"{"x": [1]}"#, &[("x", DataType::String)]),
            "input \"x\": expected BYTES strings, found the number 1"
        );
        assert_eq!(
            err(r#"{"x": [null]}"#, &[("x", DataType::Int8)]),
            "input \"x\": expected INT8 numbers, found null"
        );
        assert_eq!(
            err(r#"{"x": [[1, 2], [3]]}"#, &[("x", DataType::Int8)]),
            "input \"x\": ragged nested list: lists at depth 1 have 2 and 1 elements"
        );
        assert!(
            err(r#"{"x": [1, [2]]}"#, &[("x", DataType::Int8)]).starts_with("input \"x\": ragged")
        );
        assert!(err(r#"{"x": {"y": 1}}"#, &[("x", DataType::Int8)]).contains("found an object"));
    }

    #[test]
    fn malformed_json_says_where() {
        let e = err("{\"x\": [1, 2,\n ]}", &[("x", DataType::Fp32)]);
        assert!(e.contains("line 2 column 2"), "{e}");
        let e = err("", &[("x", DataType::Fp32)]);
        assert!(e.starts_with("invalid JSON body: EOF while parsing"), "{e}");
        let e = err("[1] x", &[("x", DataType::Fp32)]);
        assert!(e.contains("trailing characters"), "{e}");
    }

    #[test]
    fn encode_nests_per_shape() {
        let outputs = vec![
            Tensor {
                name: "label".into(),
                dtype: DataType::String,
                shape: vec![2],
                data: TensorData::Strings(vec![b"setosa".to_vec(), vec![0xff]]),
            },
            Tensor {
                name: "probs".into(),
                dtype: DataType::Fp32,
                shape: vec![1, 3],
                data: f32s(&[0.1, 0.2, f32::NAN]),
            },
            Tensor {
                name: "n".into(),
                dtype: DataType::Int64,
                shape: vec![],
                data: TensorData::Raw((-3i64).to_le_bytes().to_vec()),
            },
            Tensor {
                name: "ok".into(),
                dtype: DataType::Bool,
                shape: vec![2],
                data: TensorData::Raw(vec![1, 0]),
            },
            Tensor {
                name: "h".into(),
                dtype: DataType::Fp16,
                shape: vec![1],
                data: TensorData::Raw(half::f16::from_f32(1.5).to_le_bytes().to_vec()),
            },
        ];
        let want = json!({
            "label": ["setosa", "\u{fffd}"],
            "probs": [[0.1, 0.2, null]],
            "n": -3,
            "ok": [true, false],
            "h": [1.5],
        });
        assert_eq!(encode_simple(&outputs), want);
        let body = encode_simple_body(&outputs);
        assert_eq!(
            String::from_utf8(body).unwrap(),
            r#"{"label":["setosa","�"],"probs":[[0.1,0.2,null]],"n":-3,"ok":[true,false],"h":[1.5]}"#
        );
    }
}
