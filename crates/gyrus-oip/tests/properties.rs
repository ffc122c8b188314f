//! Property tests: the decoders never panic on arbitrary input, tensors of every dtype survive
//! request and response round trips in both JSON and binary form, and decompression is
//! lossless within its limit. The request builders and the response decoder here are written
//! independently of the crate, from the protocol's description.

use std::io::Write;

use flate2::write::{GzEncoder, ZlibEncoder};
use flate2::Compression;
use gyrus_engine::{DataType, ModelSignature, Tensor, TensorData, TensorInfo};
use gyrus_oip::{
    decode_infer, decode_simple, decompress, encode_infer, encode_simple, encode_simple_body,
    OipError, OutputSelection, RequestedOutput,
};
use proptest::prelude::*;
use serde_json::{json, Value};

// ---- strategies ----

fn dtype() -> impl Strategy<Value = DataType> {
    prop::sample::select(DataType::ALL.to_vec())
}

/// Replaces what JSON cannot carry (non-finite floats) and what a BOOL cannot hold.
fn sanitize(dtype: DataType, bytes: &mut [u8], finite: bool) {
    match dtype {
        DataType::Bool => bytes.iter_mut().for_each(|b| *b &= 1),
        DataType::Fp16 if finite => {
            for c in bytes.chunks_exact_mut(2) {
                if !half::f16::from_le_bytes([c[0], c[1]]).is_finite() {
                    c.copy_from_slice(&[0, 0]);
                }
            }
        }
        DataType::Bf16 if finite => {
            for c in bytes.chunks_exact_mut(2) {
                if !half::bf16::from_le_bytes([c[0], c[1]]).is_finite() {
                    c.copy_from_slice(&[0, 0]);
                }
            }
        }
        DataType::Fp32 if finite => {
            for c in bytes.chunks_exact_mut(4) {
                if !f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_finite() {
                    c.copy_from_slice(&[0; 4]);
                }
            }
        }
        DataType::Fp64 if finite => {
            for c in bytes.chunks_exact_mut(8) {
                let mut a = [0u8; 8];
                a.copy_from_slice(c);
                if !f64::from_le_bytes(a).is_finite() {
                    c.copy_from_slice(&[0; 8]);
                }
            }
        }
        _ => {}
    }
}

/// A tensor of any dtype with a small shape. `json_safe`: finite floats and UTF-8 strings.
/// `min_dim` 1 keeps shapes recoverable from nesting alone.
fn tensor(json_safe: bool, min_dim: i64) -> impl Strategy<Value = Tensor> {
    (dtype(), prop::collection::vec(min_dim..4i64, 0..4)).prop_flat_map(move |(dtype, shape)| {
        let count = Tensor::element_count(&shape).unwrap();
        let data: BoxedStrategy<TensorData> = match dtype.size() {
            Some(size) => prop::collection::vec(any::<u8>(), count * size)
                .prop_map(move |mut bytes| {
                    sanitize(dtype, &mut bytes, json_safe);
                    TensorData::Raw(bytes)
                })
                .boxed(),
            None if json_safe => prop::collection::vec(any::<String>(), count)
                .prop_map(|s| TensorData::Strings(s.into_iter().map(String::into_bytes).collect()))
                .boxed(),
            None => prop::collection::vec(prop::collection::vec(any::<u8>(), 0..6), count)
                .prop_map(TensorData::Strings)
                .boxed(),
        };
        data.prop_map(move |data| Tensor {
            name: String::new(),
            dtype,
            shape: shape.clone(),
            data,
        })
    })
}

/// A few tensors with distinct names.
fn tensors(json_safe: bool, min_dim: i64) -> impl Strategy<Value = Vec<Tensor>> {
    prop::collection::vec(tensor(json_safe, min_dim), 0..4).prop_map(|mut ts| {
        for (i, t) in ts.iter_mut().enumerate() {
            t.name = format!("t{i}");
        }
        ts
    })
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        (-300i64..300).prop_map(Value::from),
        "[a-z]{0,3}".prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map("[a-z]{1,2}|inputs|outputs|data|shape", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Request-shaped JSON with random parts, to reach past the header's structure checks.
fn request_like() -> impl Strategy<Value = Value> {
    let input = (
        "[a-c]",
        prop::collection::vec(prop_oneof![-2i64..5, Just(i64::MAX), Just(1 << 40)], 0..4),
        prop_oneof![
            prop::sample::select(DataType::ALL.map(DataType::oip_name).to_vec())
                .prop_map(str::to_owned),
            "[A-Z]{0,5}",
        ],
        prop::option::of(json_value()),
        prop::option::of(prop_oneof![0u64..40, Just(u64::MAX)]),
    )
        .prop_map(|(name, shape, datatype, data, size)| {
            let mut input = json!({"name": name, "shape": shape, "datatype": datatype});
            if let Some(data) = data {
                input["data"] = data;
            }
            if let Some(size) = size {
                input["parameters"] = json!({"binary_data_size": size});
            }
            input
        });
    (
        prop::collection::vec(input, 0..4),
        prop::option::of(prop::collection::vec(
            ("[a-c]", prop::option::of(any::<bool>())),
            0..3,
        )),
        any::<bool>(),
    )
        .prop_map(|(inputs, outputs, binary)| {
            let mut request =
                json!({"inputs": inputs, "parameters": {"binary_data_output": binary}});
            if let Some(outputs) = outputs {
                request["outputs"] = outputs
                    .into_iter()
                    .map(|(name, b)| match b {
                        Some(b) => json!({"name": name, "parameters": {"binary_data": b}}),
                        None => json!({"name": name}),
                    })
                    .collect();
            }
            request
        })
}

// ---- test-side codecs, from the protocol's description ----

fn chunks<const N: usize>(bytes: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    bytes.chunks_exact(N).map(|c| {
        let mut a = [0u8; N];
        a.copy_from_slice(c);
        a
    })
}

/// The tensor's elements as JSON values; floats widened exactly to f64.
fn json_elements(t: &Tensor) -> Vec<Value> {
    let bytes = match &t.data {
        TensorData::Raw(bytes) => bytes,
        TensorData::Strings(items) => {
            return items
                .iter()
                .map(|s| Value::from(String::from_utf8(s.clone()).unwrap()))
                .collect()
        }
    };
    match t.dtype {
        DataType::Bool => bytes.iter().map(|&b| Value::from(b != 0)).collect(),
        DataType::Uint8 => bytes.iter().map(|&b| Value::from(b)).collect(),
        DataType::Int8 => bytes.iter().map(|&b| Value::from(b as i8)).collect(),
        DataType::Uint16 => chunks(bytes)
            .map(|c| Value::from(u16::from_le_bytes(c)))
            .collect(),
        DataType::Int16 => chunks(bytes)
            .map(|c| Value::from(i16::from_le_bytes(c)))
            .collect(),
        DataType::Uint32 => chunks(bytes)
            .map(|c| Value::from(u32::from_le_bytes(c)))
            .collect(),
        DataType::Int32 => chunks(bytes)
            .map(|c| Value::from(i32::from_le_bytes(c)))
            .collect(),
        DataType::Uint64 => chunks(bytes)
            .map(|c| Value::from(u64::from_le_bytes(c)))
            .collect(),
        DataType::Int64 => chunks(bytes)
            .map(|c| Value::from(i64::from_le_bytes(c)))
            .collect(),
        DataType::Fp16 => chunks(bytes)
            .map(|c| Value::from(half::f16::from_le_bytes(c).to_f64()))
            .collect(),
        DataType::Bf16 => chunks(bytes)
            .map(|c| Value::from(half::bf16::from_le_bytes(c).to_f64()))
            .collect(),
        DataType::Fp32 => chunks(bytes)
            .map(|c| Value::from(f64::from(f32::from_le_bytes(c))))
            .collect(),
        DataType::Fp64 => chunks(bytes)
            .map(|c| Value::from(f64::from_le_bytes(c)))
            .collect(),
        DataType::String => unreachable!("string tensors hold Strings"),
    }
}

fn nest(items: &[Value], shape: &[i64]) -> Value {
    match shape.split_first() {
        None => items[0].clone(),
        Some((&n, inner)) => {
            let stride = Tensor::element_count(inner).unwrap();
            Value::Array(
                (0..n as usize)
                    .map(|i| nest(&items[i * stride..(i + 1) * stride], inner))
                    .collect(),
            )
        }
    }
}

fn binary_part(t: &Tensor) -> Vec<u8> {
    match &t.data {
        TensorData::Raw(bytes) => bytes.clone(),
        TensorData::Strings(items) => items
            .iter()
            .flat_map(|s| {
                (s.len() as u32)
                    .to_le_bytes()
                    .into_iter()
                    .chain(s.iter().copied())
            })
            .collect(),
    }
}

/// Builds a request sending each tensor as binary (`binary[i]`) or JSON (nested or flat).
/// `data_first` puts `data` before the fields it needs, as JSON allows.
fn build_request(
    ts: &[Tensor],
    binary: &[bool],
    nested: bool,
    data_first: bool,
) -> (Vec<u8>, Option<usize>) {
    let mut parts = Vec::new();
    let inputs: Vec<Value> = ts
        .iter()
        .zip(binary)
        .map(|(t, &bin)| {
            let mut input = serde_json::Map::new();
            if bin {
                let part = binary_part(t);
                input.insert("parameters".into(), json!({"binary_data_size": part.len()}));
                parts.push(part);
            } else {
                let items = json_elements(t);
                let data = if nested {
                    nest(&items, &t.shape)
                } else {
                    Value::Array(items)
                };
                input.insert("data".into(), data);
            }
            let header = [
                ("name", json!(t.name)),
                ("shape", json!(t.shape)),
                ("datatype", json!(t.dtype.oip_name())),
            ];
            for (key, value) in header {
                if data_first {
                    input.insert(key.into(), value);
                } else {
                    input.shift_insert(0, key.into(), value);
                }
            }
            Value::Object(input)
        })
        .collect();
    let mut body = json!({"id": "req", "inputs": inputs})
        .to_string()
        .into_bytes();
    let header_length = body.len();
    for part in parts {
        body.extend(part);
    }
    (body, binary.iter().any(|&b| b).then_some(header_length))
}

/// Decodes an infer response the way a client would.
fn parse_response(body: &[u8], header_length: Option<usize>) -> Vec<Tensor> {
    let len = header_length.unwrap_or(body.len());
    let header: Value = serde_json::from_slice(&body[..len]).unwrap();
    let mut rest = &body[len..];
    let mut out = Vec::new();
    for o in header["outputs"].as_array().unwrap() {
        let dtype = DataType::from_oip_name(o["datatype"].as_str().unwrap()).unwrap();
        let shape: Vec<i64> = serde_json::from_value(o["shape"].clone()).unwrap();
        let data = if let Some(size) = o["parameters"]["binary_data_size"].as_u64() {
            let (part, tail) = rest.split_at(size as usize);
            rest = tail;
            if dtype == DataType::String {
                let mut items = Vec::new();
                let mut p = part;
                while !p.is_empty() {
                    let n = u32::from_le_bytes(p[..4].try_into().unwrap()) as usize;
                    items.push(p[4..4 + n].to_vec());
                    p = &p[4 + n..];
                }
                TensorData::Strings(items)
            } else {
                TensorData::Raw(part.to_vec())
            }
        } else {
            let items = o["data"].as_array().unwrap();
            from_json_items(dtype, items)
        };
        out.push(Tensor {
            name: o["name"].as_str().unwrap().to_owned(),
            dtype,
            shape,
            data,
        });
    }
    assert!(rest.is_empty());
    out
}

fn from_json_items(dtype: DataType, items: &[Value]) -> TensorData {
    let mut raw = Vec::new();
    for v in items {
        match dtype {
            DataType::String => {
                return TensorData::Strings(
                    items
                        .iter()
                        .map(|v| v.as_str().unwrap().as_bytes().to_vec())
                        .collect(),
                )
            }
            DataType::Bool => raw.push(u8::from(v.as_bool().unwrap())),
            DataType::Uint8 => raw.push(v.as_u64().unwrap() as u8),
            DataType::Int8 => raw.push(v.as_i64().unwrap() as i8 as u8),
            DataType::Uint16 => raw.extend((v.as_u64().unwrap() as u16).to_le_bytes()),
            DataType::Int16 => raw.extend((v.as_i64().unwrap() as i16).to_le_bytes()),
            DataType::Uint32 => raw.extend((v.as_u64().unwrap() as u32).to_le_bytes()),
            DataType::Int32 => raw.extend((v.as_i64().unwrap() as i32).to_le_bytes()),
            DataType::Uint64 => raw.extend(v.as_u64().unwrap().to_le_bytes()),
            DataType::Int64 => raw.extend(v.as_i64().unwrap().to_le_bytes()),
            DataType::Fp16 => raw.extend(half::f16::from_f64(v.as_f64().unwrap()).to_le_bytes()),
            DataType::Bf16 => raw.extend(half::bf16::from_f64(v.as_f64().unwrap()).to_le_bytes()),
            DataType::Fp32 => raw.extend((v.as_f64().unwrap() as f32).to_le_bytes()),
            DataType::Fp64 => raw.extend(v.as_f64().unwrap().to_le_bytes()),
        }
    }
    if dtype == DataType::String {
        return TensorData::Strings(Vec::new());
    }
    TensorData::Raw(raw)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut e = ZlibEncoder::new(Vec::new(), Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn signature_of(ts: &[Tensor]) -> ModelSignature {
    ModelSignature {
        inputs: ts
            .iter()
            .map(|t| TensorInfo {
                name: t.name.clone(),
                dtype: t.dtype,
                shape: t.shape.clone(),
            })
            .collect(),
        outputs: vec![],
    }
}

// ---- properties ----

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn decode_infer_never_panics_on_bytes(
        body in prop::collection::vec(any::<u8>(), 0..256),
        header_length in prop::option::of(0usize..300),
    ) {
        let _ = decode_infer(&body, header_length);
    }

    #[test]
    fn decode_infer_never_panics_on_json(value in json_value()) {
        let _ = decode_infer(value.to_string().as_bytes(), None);
    }

    #[test]
    fn decode_infer_never_panics_on_request_like_json(
        request in request_like(),
        tail in prop::collection::vec(any::<u8>(), 0..48),
        with_header in any::<bool>(),
    ) {
        let mut body = request.to_string().into_bytes();
        let len = body.len();
        body.extend(tail);
        if let Ok(decoded) = decode_infer(&body, with_header.then_some(len)) {
            for t in &decoded.inputs {
                prop_assert!(t.check().is_ok(), "{:?}", t.check());
            }
            // Whatever the request selects, encoding either works or names an unknown output.
            match encode_infer("m", None, decoded.id.as_deref(), decoded.inputs, &decoded.outputs) {
                Ok(_) | Err(OipError::UnknownOutput { .. }) => {}
                Err(e) => prop_assert!(false, "unexpected {e}"),
            }
        }
    }

    #[test]
    fn decode_simple_never_panics(
        value in json_value(),
        bytes in prop::collection::vec(any::<u8>(), 0..128),
        inputs in prop::collection::vec(("[a-z]{1,2}", dtype()), 0..3),
    ) {
        let signature = ModelSignature {
            inputs: inputs
                .into_iter()
                .map(|(name, dtype)| TensorInfo { name, dtype, shape: vec![-1] })
                .collect(),
            outputs: vec![],
        };
        if let Ok(ts) = decode_simple(value.to_string().as_bytes(), &signature) {
            for t in &ts {
                prop_assert!(t.check().is_ok(), "{:?}", t.check());
            }
        }
        let _ = decode_simple(&bytes, &signature);
    }

    #[test]
    fn binary_requests_round_trip(ts in tensors(false, 0)) {
        let all_binary = vec![true; ts.len()];
        let (body, header_length) = build_request(&ts, &all_binary, false, false);
        let decoded = decode_infer(&body, header_length).unwrap();
        prop_assert_eq!(decoded.id.as_deref(), Some("req"));
        prop_assert_eq!(decoded.inputs, ts);
    }

    #[test]
    fn json_requests_round_trip(
        ts in tensors(true, 0),
        nested in any::<bool>(),
        data_first in any::<bool>(),
    ) {
        let all_json = vec![false; ts.len()];
        let (body, header_length) = build_request(&ts, &all_json, nested, data_first);
        prop_assert_eq!(header_length, None);
        let decoded = decode_infer(&body, None).unwrap();
        prop_assert_eq!(decoded.inputs, ts);
    }

    #[test]
    fn mixed_requests_round_trip(
        ts in tensors(true, 0),
        binary in prop::collection::vec(any::<bool>(), 4),
        nested in any::<bool>(),
        data_first in any::<bool>(),
    ) {
        let (body, header_length) = build_request(&ts, &binary[..ts.len()], nested, data_first);
        let decoded = decode_infer(&body, header_length).unwrap();
        prop_assert_eq!(decoded.inputs, ts);
    }

    #[test]
    fn binary_responses_round_trip(ts in tensors(false, 0)) {
        let selection = OutputSelection { requested: None, binary_default: true };
        let r = encode_infer("m", Some("1"), None, ts.clone(), &selection).unwrap();
        prop_assert_eq!(r.header_length.is_some(), !ts.is_empty());
        prop_assert_eq!(parse_response(&r.body, r.header_length), ts);
    }

    #[test]
    fn json_responses_round_trip(ts in tensors(true, 0)) {
        let r = encode_infer("m", None, Some("x"), ts.clone(), &OutputSelection::default()).unwrap();
        prop_assert_eq!(r.header_length, None);
        prop_assert_eq!(parse_response(&r.body, None), ts);
    }

    #[test]
    fn selected_responses_round_trip(
        ts in tensors(true, 0),
        picks in prop::collection::vec((0usize..4, prop::option::of(any::<bool>())), 0..4),
        binary_default in any::<bool>(),
    ) {
        let mut requested: Vec<RequestedOutput> = Vec::new();
        for (i, binary) in picks {
            let name = format!("t{i}");
            if !requested.iter().any(|r| r.name == name) {
                requested.push(RequestedOutput { name, binary });
            }
        }
        let selection = OutputSelection { requested: Some(requested.clone()), binary_default };
        let result = encode_infer("m", None, None, ts.clone(), &selection);
        let unknown = requested.iter().find(|r| !ts.iter().any(|t| t.name == r.name));
        match (result, unknown) {
            (Err(OipError::UnknownOutput { name, available }), Some(first)) => {
                prop_assert_eq!(name, first.name.clone());
                prop_assert_eq!(available.len(), ts.len());
            }
            (Ok(r), None) => {
                let want: Vec<Tensor> = requested
                    .iter()
                    .map(|r| ts.iter().find(|t| t.name == r.name).unwrap().clone())
                    .collect();
                prop_assert_eq!(parse_response(&r.body, r.header_length), want);
            }
            (other, unknown) => prop_assert!(false, "{other:?} for unknown {unknown:?}"),
        }
    }

    #[test]
    fn simple_api_round_trips(ts in tensors(true, 1)) {
        let signature = signature_of(&ts);
        let body = encode_simple_body(&ts);
        prop_assert_eq!(decode_simple(&body, &signature).unwrap(), ts.clone());
        // The Value form says the same, modulo f32's shorter decimal widening.
        let value = encode_simple(&ts);
        let reparsed: Value = serde_json::from_slice(&body).unwrap();
        prop_assert_eq!(value.as_object().map(|o| o.len()), Some(ts.len()));
        prop_assert_eq!(
            decode_simple(value.to_string().as_bytes(), &signature).unwrap(),
            decode_simple(reparsed.to_string().as_bytes(), &signature).unwrap()
        );
    }

    #[test]
    fn decompression_round_trips(
        data in prop::collection::vec(any::<u8>(), 0..4096),
        repeat in 1usize..64,
    ) {
        let data = data.repeat(repeat);
        let gz = gzip(&data);
        prop_assert_eq!(&*decompress(&gz, Some("gzip"), data.len()).unwrap(), &data[..]);
        let z = zlib(&data);
        prop_assert_eq!(&*decompress(&z, Some("deflate"), data.len()).unwrap(), &data[..]);
        if !data.is_empty() {
            prop_assert_eq!(
                decompress(&gz, Some("gzip"), data.len() - 1).unwrap_err(),
                OipError::TooLarge { limit: data.len() - 1 }
            );
            prop_assert_eq!(
                decompress(&z, Some("deflate"), data.len() - 1).unwrap_err(),
                OipError::TooLarge { limit: data.len() - 1 }
            );
        }
    }

    #[test]
    fn decompress_never_panics(
        body in prop::collection::vec(any::<u8>(), 0..256),
        encoding in prop_oneof![
            Just("gzip".to_owned()),
            Just("deflate".to_owned()),
            Just("identity".to_owned()),
            "[a-z, ]{0,12}",
        ],
        limit in 0usize..1024,
    ) {
        if let Ok(out) = decompress(&body, Some(&encoding), limit) {
            prop_assert!(out.len() <= limit);
        }
    }
}
