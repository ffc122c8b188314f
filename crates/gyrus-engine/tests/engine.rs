//! The engine against the real ONNX Runtime library and real models.
//!
//! Needs `ORT_DYLIB_PATH` (libonnxruntime from the onnxruntime wheel) and `GYRUS_TEST_MODELS`
//! (a directory written by `scripts/make_models.py`); `scripts/test.sh` sets both. Without
//! them the tests fail, saying so, rather than pass without running anything.

use std::path::PathBuf;

use gyrus_engine::{
    DataType, EngineError, Model, ModelSet, SessionConfig, ShapePolicy, Tensor, TensorData,
};

fn setup() -> PathBuf {
    let lib = std::env::var_os("ORT_DYLIB_PATH")
        .expect("ORT_DYLIB_PATH must point at libonnxruntime (scripts/test.sh sets it)");
    gyrus_engine::init_library(&PathBuf::from(lib)).expect("ONNX Runtime loads");
    let dir = PathBuf::from(
        std::env::var_os("GYRUS_TEST_MODELS")
            .expect("GYRUS_TEST_MODELS must name the output of scripts/make_models.py"),
    );
    assert!(
        dir.join("iris.onnx").is_file(),
        "{} has no iris.onnx",
        dir.display()
    );
    dir
}

fn load(name: &str) -> Model {
    let dir = setup();
    Model::load(
        name,
        &dir.join(format!("{name}.onnx")),
        &SessionConfig::default(),
        &mut |w| panic!("unexpected warning: {w}"),
    )
    .expect("model loads")
}

fn f32s(name: &str, shape: Vec<i64>, values: &[f32]) -> Tensor {
    Tensor {
        name: name.into(),
        dtype: DataType::Fp32,
        shape,
        data: TensorData::Raw(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
    }
}

fn as_f32(t: &Tensor) -> Vec<f32> {
    match &t.data {
        TensorData::Raw(b) => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        other => panic!("not numeric: {other:?}"),
    }
}

#[test]
fn iris_signature_and_batches() {
    let model = load("iris");
    let sig = model.signature();
    assert_eq!(sig.inputs.len(), 1);
    assert_eq!(sig.inputs[0].name, "input");
    assert_eq!(sig.inputs[0].dtype, DataType::Fp32);
    assert_eq!(sig.inputs[0].shape, vec![-1, 4]);
    let outputs: Vec<(&str, DataType)> = sig
        .outputs
        .iter()
        .map(|o| (o.name.as_str(), o.dtype))
        .collect();
    assert_eq!(
        outputs,
        vec![
            ("label", DataType::Int64),
            ("probabilities", DataType::Fp32)
        ]
    );

    // A batch of two: a setosa and a virginica.
    let out = model
        .infer(
            vec![f32s(
                "input",
                vec![2, 4],
                &[5.1, 3.5, 1.4, 0.2, 6.7, 3.0, 5.2, 2.3],
            )],
            ShapePolicy::Exact,
        )
        .expect("inference");
    assert_eq!(out[0].name, "label");
    assert_eq!(out[0].shape, vec![2]);
    let TensorData::Raw(labels) = &out[0].data else {
        panic!("labels")
    };
    let labels: Vec<i64> = labels
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect();
    assert_eq!(labels, vec![0, 2]);
    assert_eq!(out[1].shape, vec![2, 3]);
    let probs = as_f32(&out[1]);
    for row in probs.chunks(3) {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-4, "{row:?}");
    }

    // One example without its batch dimension: leading dims are added on request only.
    let single = f32s("input", vec![4], &[5.1, 3.5, 1.4, 0.2]);
    let out = model
        .infer(vec![single.clone()], ShapePolicy::AddLeadingDims)
        .expect("leading dims");
    assert_eq!(out[0].shape, vec![1]);
    let err = model.infer(vec![single], ShapePolicy::Exact).unwrap_err();
    assert_eq!(
        err.to_string(),
        "input \"input\": expected shape [-1, 4] (rank 2), found [4] (rank 1)"
    );
    assert!(err.is_client_error());
}

#[test]
fn input_errors_name_what_was_expected_and_found() {
    let model = load("add");
    let a = f32s("a", vec![1, 2], &[1.0, 2.0]);
    let b = f32s("b", vec![1, 2], &[3.0, 4.0]);
    let out = model
        .infer(vec![b.clone(), a.clone()], ShapePolicy::Exact)
        .expect("order of inputs does not matter");
    assert_eq!(as_f32(&out[0]), vec![4.0, 6.0]);

    let cases: Vec<(Vec<Tensor>, &str)> = vec![
        (
            vec![a.clone()],
            "missing input \"b\"; the model takes \"a\" (FP32 [-1, 2]), \"b\" (FP32 [-1, 2])",
        ),
        (
            vec![a.clone(), b.clone(), f32s("c", vec![1, 2], &[0.0, 0.0])],
            "unknown input \"c\"; the model takes \"a\" (FP32 [-1, 2]), \"b\" (FP32 [-1, 2])",
        ),
        (
            vec![a.clone(), a.clone(), b.clone()],
            "input \"a\" is given more than once",
        ),
        (
            vec![
                a.clone(),
                Tensor {
                    name: "b".into(),
                    dtype: DataType::Int64,
                    shape: vec![1, 2],
                    data: TensorData::Raw(vec![0; 16]),
                },
            ],
            "input \"b\": expected FP32, found INT64",
        ),
        (
            vec![a.clone(), f32s("b", vec![1, 3], &[0.0; 3])],
            "input \"b\": expected shape [-1, 2], found [1, 3] (dimension 1 must be 2)",
        ),
        (
            vec![
                a.clone(),
                Tensor {
                    data: TensorData::Raw(vec![0; 4]),
                    ..b.clone()
                },
            ],
            "input \"b\": shape [1, 2] of FP32 needs 8 bytes, found 4",
        ),
    ];
    for (inputs, expected) in cases {
        let err = model.infer(inputs, ShapePolicy::Exact).unwrap_err();
        assert!(matches!(err, EngineError::InvalidInput(_)), "{err:?}");
        assert_eq!(err.to_string(), expected);
    }
}

#[test]
fn fixed_shapes_are_checked() {
    let model = load("fixed");
    assert_eq!(model.signature().inputs[0].shape, vec![2, 3]);
    let ok = model
        .infer(
            vec![f32s("x", vec![2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])],
            ShapePolicy::Exact,
        )
        .expect("fixed shape");
    assert_eq!(as_f32(&ok[0]), vec![2.0, 4.0, 6.0, 8.0, 10.0, 12.0]);
    let err = model
        .infer(vec![f32s("x", vec![3, 2], &[0.0; 6])], ShapePolicy::Exact)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "input \"x\": expected shape [2, 3], found [3, 2] (dimension 0 must be 2)"
    );
}

#[test]
fn every_datatype_round_trips() {
    let dir = setup();
    for (file, dtype) in [
        ("bool", DataType::Bool),
        ("uint8", DataType::Uint8),
        ("uint16", DataType::Uint16),
        ("uint32", DataType::Uint32),
        ("uint64", DataType::Uint64),
        ("int8", DataType::Int8),
        ("int16", DataType::Int16),
        ("int32", DataType::Int32),
        ("int64", DataType::Int64),
        ("float16", DataType::Fp16),
        ("float32", DataType::Fp32),
        ("float64", DataType::Fp64),
        ("string", DataType::String),
    ] {
        let model = Model::load(
            file,
            &dir.join(format!("identity_{file}.onnx")),
            &SessionConfig::default(),
            &mut |w| panic!("{w}"),
        )
        .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(model.signature().inputs[0].dtype, dtype, "{file}");
        let data = match dtype.size() {
            Some(size) => TensorData::Raw(
                (0..6 * size)
                    .map(|i| {
                        if dtype == DataType::Bool {
                            (i % 2) as u8
                        } else {
                            i as u8
                        }
                    })
                    .collect(),
            ),
            None => TensorData::Strings(
                ["a", "", "ünï", "d", "e", "f"]
                    .iter()
                    .map(|s| s.as_bytes().to_vec())
                    .collect(),
            ),
        };
        let input = Tensor {
            name: "x".into(),
            dtype,
            shape: vec![2, 3],
            data: data.clone(),
        };
        let out = model
            .infer(vec![input], ShapePolicy::Exact)
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(out[0].dtype, dtype, "{file}");
        assert_eq!(out[0].shape, vec![2, 3], "{file}");
        assert_eq!(out[0].data, data, "{file}");
    }
}

#[test]
fn invalid_utf8_in_a_string_tensor_is_a_client_error() {
    let model = load("identity_string");
    let err = model
        .infer(
            vec![Tensor {
                name: "x".into(),
                dtype: DataType::String,
                shape: vec![1, 3],
                data: TensorData::Strings(vec![b"a".to_vec(), vec![0xff], b"c".to_vec()]),
            }],
            ShapePolicy::Exact,
        )
        .unwrap_err();
    assert!(err.is_client_error());
    assert!(
        err.to_string().contains("element 1 is not valid UTF-8"),
        "{err}"
    );
}

#[test]
fn a_corrupt_model_fails_with_onnx_runtimes_message() {
    let dir = setup();
    let err = Model::load(
        "broken",
        &dir.join("corrupt.onnx"),
        &SessionConfig::default(),
        &mut |_| {},
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("model \"broken\" ("), "{text}");
    assert!(text.contains("failed to load"), "{text}");
    assert!(text.to_lowercase().contains("protobuf"), "{text}");
}

#[test]
fn unavailable_providers_warn_and_fall_back_to_cpu() {
    let dir = setup();
    let config = SessionConfig {
        providers: gyrus_engine::Providers::List(vec![
            gyrus_engine::Provider::TensorRt,
            gyrus_engine::Provider::Cuda,
            gyrus_engine::Provider::Cpu,
        ]),
        ..SessionConfig::default()
    };
    let mut warnings = Vec::new();
    let model = Model::load("iris", &dir.join("iris.onnx"), &config, &mut |w| {
        warnings.push(w)
    })
    .expect("falls back to CPU");
    assert_eq!(model.providers(), ["CPUExecutionProvider"]);
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[0].contains("TensorrtExecutionProvider"),
        "{warnings:?}"
    );
    assert!(
        warnings[1].contains("CUDAExecutionProvider"),
        "{warnings:?}"
    );
    assert!(warnings.iter().all(|w| w.contains("falling back")));
}

#[test]
fn model_sets_pick_by_name() {
    let set = ModelSet::new(vec![load("iris"), load("add")]);
    assert_eq!(set.get(Some("add")).map(|m| m.name()).ok(), Some("add"));
    assert_eq!(
        set.get(None).unwrap_err().to_string(),
        "this API serves several models, so the model name is required: \"iris\", \"add\""
    );
    assert_eq!(
        set.get(Some("nope")).unwrap_err().to_string(),
        "unknown model \"nope\"; this API serves \"iris\", \"add\""
    );
    // One model: its name is optional, as in Cortex.
    let single = ModelSet::new(vec![load("iris")]);
    assert_eq!(
        single.get(Some("other")).map(|m| m.name()).ok(),
        Some("iris")
    );
}

#[test]
fn values_the_model_cannot_run_on_are_client_errors() {
    let model = load("add");
    // Both inputs match the signature, but their batch sizes disagree.
    let err = model
        .infer(
            vec![
                f32s("a", vec![2, 2], &[0.0; 4]),
                f32s("b", vec![3, 2], &[0.0; 6]),
            ],
            ShapePolicy::Exact,
        )
        .unwrap_err();
    assert!(matches!(err, EngineError::Rejected(_)), "{err:?}");
    assert!(err.is_client_error());
    assert!(
        err.to_string()
            .starts_with("the model cannot run on these inputs: "),
        "{err}"
    );

    let strings = load("identity_string");
    let err = strings
        .infer(
            vec![Tensor {
                name: "x".into(),
                dtype: DataType::String,
                shape: vec![1, 3],
                data: TensorData::Strings(vec![b"a".to_vec(), b"b\0c".to_vec(), b"d".to_vec()]),
            }],
            ShapePolicy::Exact,
        )
        .unwrap_err();
    assert!(err.is_client_error());
    assert!(
        err.to_string().contains("element 1 contains a NUL"),
        "{err}"
    );
}
