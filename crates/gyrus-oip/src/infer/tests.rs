//! The infer request decoder and response encoder, against hand-written bodies.

use serde_json::{json, Value};

use super::*;
use crate::OipErrorKind;

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
    let body = br#"{"inputs": [{"data": [1, 2], "datatype": "INT8", "shape": [2], "name": "x"}]}"#;
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
        err(json!({"inputs": [{"name": "x", "shape": [-1, 4], "datatype": "FP32", "data": []}]})),
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
    assert_eq!(e.kind(), OipErrorKind::InvalidRequest);
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
    assert_eq!(e.kind(), OipErrorKind::InvalidRequest);
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
    assert_eq!(e.kind(), OipErrorKind::Internal);
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
