//! The TensorFlow engine against the real library (from the tensorflow-cpu wheel) and real
//! SavedModels.
//!
//! Needs `GYRUS_TF_LIBRARY` (libtensorflow_cc.so.2) and `GYRUS_TEST_TF_MODELS` (a directory
//! written by `scripts/make_tf_models.py`); `scripts/test.sh` sets both. Without them the tests
//! fail, saying so, rather than pass without running anything.

use std::path::PathBuf;

use gyrus_engine::{DataType, EngineError, ShapePolicy, Tensor, TensorData};
use gyrus_tensorflow::{Model, SessionConfig};

fn models() -> PathBuf {
    let lib = std::env::var_os("GYRUS_TF_LIBRARY")
        .expect("GYRUS_TF_LIBRARY must point at libtensorflow_cc.so.2 (scripts/test.sh sets it)");
    gyrus_tensorflow::init_library(&PathBuf::from(lib)).expect("TensorFlow loads");
    let dir = PathBuf::from(
        std::env::var_os("GYRUS_TEST_TF_MODELS")
            .expect("GYRUS_TEST_TF_MODELS must name the output of scripts/make_tf_models.py"),
    );
    assert!(dir.join("iris").is_dir(), "{} has no iris", dir.display());
    dir
}

fn load(name: &str, key: Option<&str>) -> Result<Model, EngineError> {
    Model::load(name, &models().join(name), key, &SessionConfig::default())
}

fn tensor<T: Copy>(name: &str, dtype: DataType, shape: Vec<i64>, values: &[T]) -> Tensor {
    let bytes = unsafe {
        std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), std::mem::size_of_val(values))
    };
    Tensor {
        name: name.into(),
        dtype,
        shape,
        data: TensorData::Raw(bytes.to_vec()),
    }
}

fn f32s(t: &Tensor) -> Vec<f32> {
    let TensorData::Raw(b) = &t.data else {
        panic!("not numeric")
    };
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn i64s(t: &Tensor) -> Vec<i64> {
    let TensorData::Raw(b) = &t.data else {
        panic!("not numeric")
    };
    b.chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn iris_classifies_with_named_inputs_and_outputs() {
    let model = load("iris", None).unwrap();
    assert_eq!(model.version(), Some(1));
    assert_eq!(model.signature_key(), "serving_default");
    let names: Vec<_> = model
        .signature()
        .inputs
        .iter()
        .map(|i| i.name.as_str())
        .collect();
    assert_eq!(
        names,
        ["petal_length", "petal_width", "sepal_length", "sepal_width"]
    );
    let inputs = [
        ("sepal_length", [5.2f32, 6.7]),
        ("sepal_width", [3.6, 3.0]),
        ("petal_length", [1.4, 5.2]),
        ("petal_width", [0.3, 2.3]),
    ]
    .iter()
    .map(|(n, v)| tensor(n, DataType::Fp32, vec![2], v))
    .collect();
    let out = model.infer(inputs, ShapePolicy::Exact).unwrap();
    assert_eq!(out[0].name, "class_ids");
    assert_eq!(out[0].dtype, DataType::Int64);
    assert_eq!(i64s(&out[0]), [0, 2]);
    assert_eq!(out[1].name, "probabilities");
    assert_eq!(out[1].shape, [2, 3]);
    let p = f32s(&out[1]);
    assert!((p[0] + p[1] + p[2] - 1.0).abs() < 1e-5);
    assert!(p[0] > 0.9, "{p:?}");
}

#[test]
fn a_scalar_gets_its_batch_dimension_when_asked() {
    let model = load("iris", None).unwrap();
    let one = |policy| {
        let inputs = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
            .iter()
            .zip([5.2f32, 3.6, 1.4, 0.3])
            .map(|(n, v)| tensor(n, DataType::Fp32, vec![], &[v]))
            .collect();
        model.infer(inputs, policy)
    };
    assert_eq!(i64s(&one(ShapePolicy::AddLeadingDims).unwrap()[0]), [0]);
    let err = one(ShapePolicy::Exact).unwrap_err().to_string();
    assert!(
        err.contains("expected shape [-1] (rank 1), found [] (rank 0)"),
        "{err}"
    );
}

#[test]
fn requests_that_do_not_fit_are_client_errors_naming_the_input() {
    let model = load("iris-x", None).unwrap();
    assert_eq!(model.version(), None);
    let cases = [
        (
            tensor("y", DataType::Fp32, vec![1, 4], &[0f32; 4]),
            "unknown input \"y\"; the model takes \"x\" (FP32 [-1, 4])",
        ),
        (
            tensor("x", DataType::Fp64, vec![1, 4], &[0f64; 4]),
            "input \"x\": expected FP32, found FP64",
        ),
        (
            tensor("x", DataType::Fp32, vec![1, 3], &[0f32; 3]),
            "input \"x\": expected shape [-1, 4], found [1, 3] (dimension 1 must be 4)",
        ),
    ];
    for (input, message) in cases {
        let err = model.infer(vec![input], ShapePolicy::Exact).unwrap_err();
        assert!(err.is_client_error(), "{err}");
        assert_eq!(err.to_string(), message);
    }
}

#[test]
fn versions_signature_keys_and_dtypes() {
    let v = load("versions", None).unwrap();
    assert_eq!(v.version(), Some(2));
    let out = v
        .infer(
            vec![tensor("x", DataType::Fp32, vec![1, 2], &[1.5f32, -1.0])],
            ShapePolicy::Exact,
        )
        .unwrap();
    assert_eq!(f32s(&out[0]), [3.0, -2.0]);

    let err = load("two-signatures", None).unwrap_err().to_string();
    assert!(
        err.contains("set signature_key to one of \"double\", \"square\""),
        "{err}"
    );
    let err = load("two-signatures", Some("cube"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "signature_key \"cube\" is not in the model; its signatures are \"double\", \"square\""
        ),
        "{err}"
    );
    let square = load("two-signatures", Some("square")).unwrap();
    let out = square
        .infer(
            vec![tensor("x", DataType::Fp32, vec![2], &[3f32, -4.0])],
            ShapePolicy::Exact,
        )
        .unwrap();
    assert_eq!(f32s(&out[0]), [9.0, 16.0]);

    let kinds = load("kinds", None).unwrap();
    let out = kinds
        .infer(
            vec![
                tensor("i", DataType::Int64, vec![1, 2], &[i64::MAX / 4, -3]),
                tensor("f", DataType::Fp64, vec![1], &[0.1f64]),
                tensor("b", DataType::Bool, vec![2], &[1u8, 0]),
            ],
            ShapePolicy::Exact,
        )
        .unwrap();
    let names: Vec<_> = out.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["f2", "i2", "nb"]);
    let TensorData::Raw(f2) = &out[0].data else {
        panic!()
    };
    assert_eq!(f64::from_le_bytes(f2[..8].try_into().unwrap()), 0.2);
    assert_eq!(i64s(&out[1]), [i64::MAX / 4 * 2, -6]);
    assert_eq!(out[2].data, TensorData::Raw(vec![0, 1]));
}

#[test]
fn strings_in_and_out() {
    let model = load("strings", None).unwrap();
    let long = "a string longer than the twenty-two bytes kept inline".to_string();
    let input = Tensor {
        name: "text".into(),
        dtype: DataType::String,
        shape: vec![3],
        data: TensorData::Strings(vec![b"ab".to_vec(), Vec::new(), long.clone().into_bytes()]),
    };
    for _ in 0..3 {
        let out = model
            .infer(vec![input.clone()], ShapePolicy::Exact)
            .unwrap();
        let TensorData::Raw(len) = &out[0].data else {
            panic!()
        };
        let lens: Vec<i32> = len
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(lens, [2, 0, long.len() as i32]);
        // An identity output may share the input's buffer: long strings (not kept inline in
        // TF_TString) must survive the inputs being freed.
        assert_eq!(out[1].name, "same");
        assert_eq!(out[1].data, input.data);
        assert_eq!(
            out[2].data,
            TensorData::Strings(vec![
                b"AB".to_vec(),
                Vec::new(),
                long.to_uppercase().into_bytes()
            ])
        );
    }
}

#[test]
fn values_the_graph_refuses_are_rejected_not_internal() {
    // An empty batch runs (TensorFlow takes N = 0); a model that is not a SavedModel does not load.
    let model = load("iris-x", None).unwrap();
    let out = model
        .infer(
            vec![tensor::<f32>("x", DataType::Fp32, vec![0, 4], &[])],
            ShapePolicy::Exact,
        )
        .unwrap();
    assert_eq!(out[1].shape, [0, 3]);
    let dir = tempfile::tempdir().unwrap();
    let err = Model::load("nothing", dir.path(), None, &SessionConfig::default()).unwrap_err();
    assert!(err.to_string().contains("is not a SavedModel"), "{err}");
    // Inputs that disagree on the batch dimension: TensorFlow's stack refuses them.
    let iris = load("iris", None).unwrap();
    let inputs = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
        .iter()
        .enumerate()
        .map(|(i, n)| {
            tensor(
                n,
                DataType::Fp32,
                vec![if i == 0 { 2 } else { 1 }],
                &vec![1f32; if i == 0 { 2 } else { 1 }],
            )
        })
        .collect();
    let err = iris.infer(inputs, ShapePolicy::Exact).unwrap_err();
    assert!(matches!(err, EngineError::Rejected(_)), "{err:?}");
}

#[test]
fn a_missing_library_says_so() {
    // Runs in its own process state: init_library's first outcome sticks, so this only checks
    // the message of a path that is not there when nothing was loaded yet in this test binary.
    let err = gyrus_engine::EngineError::NotInitialised("TensorFlow").to_string();
    assert_eq!(
        err,
        "TensorFlow is not initialised: call init_library first"
    );
}
