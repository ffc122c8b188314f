//! Signatures and version directories from synthetic SavedModels (encoded with the same prost
//! messages); the real ones, made by TensorFlow, are read in the engine's integration tests.

use std::collections::BTreeMap;

use super::*;
use crate::proto::{Dim, MetaInfoDef, SignatureDef, TensorShapeProto};

fn tensor(name: &str, dtype: i32, dims: &[i64]) -> proto::TensorInfo {
    proto::TensorInfo {
        name: Some(name.to_string()),
        dtype,
        tensor_shape: Some(TensorShapeProto {
            dim: dims
                .iter()
                .map(|&size| Dim {
                    size,
                    name: String::new(),
                })
                .collect(),
            unknown_rank: false,
        }),
        coo_sparse: None,
        composite_tensor: None,
    }
}

fn iris_signature() -> SignatureDef {
    SignatureDef {
        inputs: BTreeMap::from([(
            "x".to_string(),
            tensor("serving_default_x:0", dtype::FLOAT, &[-1, 4]),
        )]),
        outputs: BTreeMap::from([
            (
                "probabilities".to_string(),
                tensor("StatefulPartitionedCall:1", dtype::FLOAT, &[-1, 3]),
            ),
            (
                "class_ids".to_string(),
                tensor("StatefulPartitionedCall:0", dtype::INT64, &[-1]),
            ),
        ]),
        method_name: "tensorflow/serving/predict".into(),
    }
}

fn saved(tags: &[&str], signatures: &[(&str, SignatureDef)]) -> SavedModel {
    SavedModel {
        meta_graphs: vec![MetaGraphDef {
            meta_info_def: Some(MetaInfoDef {
                tags: tags.iter().map(|t| t.to_string()).collect(),
                tensorflow_version: String::new(),
            }),
            signature_def: signatures
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        }],
    }
}

#[test]
fn default_signature_in_key_order_with_graph_tensors() {
    let model = saved(
        &["serve"],
        &[
            ("serving_default", iris_signature()),
            ("__saved_model_init_op", SignatureDef::default()),
        ],
    );
    let s = serving_signature(&model, None).unwrap();
    assert_eq!(s.key, "serving_default");
    assert_eq!(s.signature.inputs[0].name, "x");
    assert_eq!(s.signature.inputs[0].dtype, DataType::Fp32);
    assert_eq!(s.signature.inputs[0].shape, vec![-1, 4]);
    let outputs: Vec<_> = s
        .signature
        .outputs
        .iter()
        .map(|o| o.name.as_str())
        .collect();
    assert_eq!(outputs, ["class_ids", "probabilities"]);
    assert_eq!(s.input_tensors, ["serving_default_x:0"]);
    assert_eq!(
        s.output_tensors,
        ["StatefulPartitionedCall:0", "StatefulPartitionedCall:1"]
    );
}

#[test]
fn signature_key_choice_and_errors_list_the_signatures() {
    let two = saved(
        &["serve"],
        &[("a", iris_signature()), ("b", iris_signature())],
    );
    assert_eq!(serving_signature(&two, Some("b")).unwrap().key, "b");
    assert_eq!(
        serving_signature(&two, Some("predict"))
            .unwrap_err()
            .to_string(),
        "signature_key \"predict\" is not in the model; its signatures are \"a\", \"b\""
    );
    assert_eq!(
        serving_signature(&two, None).unwrap_err().to_string(),
        "the model has several signatures and none is \"serving_default\"; set signature_key to one of \"a\", \"b\""
    );
    let one = saved(&["serve"], &[("predict", iris_signature())]);
    assert_eq!(serving_signature(&one, None).unwrap().key, "predict");
    assert!(matches!(
        serving_signature(&one, Some("__saved_model_init_op")),
        Err(SavedModelError::UnknownSignature { .. })
    ));
    let none = saved(&["serve"], &[]);
    assert!(matches!(
        serving_signature(&none, None),
        Err(SavedModelError::NoSignatures)
    ));
    let train = saved(&["train"], &[("serving_default", iris_signature())]);
    assert_eq!(
        serving_signature(&train, None).unwrap_err().to_string(),
        "the SavedModel has no meta graph tagged \"serve\" (its tag sets: [train])"
    );
}

#[test]
fn unsupported_tensors_are_named() {
    let mut sparse = iris_signature();
    sparse.inputs.insert(
        "ids".into(),
        proto::TensorInfo {
            name: None,
            coo_sparse: Some(vec![]),
            ..tensor("", dtype::INT64, &[-1])
        },
    );
    let err = serving_signature(&saved(&["serve"], &[("serving_default", sparse)]), None)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "signature \"serving_default\": input \"ids\" is a sparse or composite tensor; gyrus serves dense tensors"
    );
    let mut complex = iris_signature();
    complex
        .outputs
        .insert("c".into(), tensor("out:2", 8, &[-1]));
    let err = serving_signature(&saved(&["serve"], &[("serving_default", complex)]), None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("output \"c\" has element type DT_COMPLEX64"),
        "{err}"
    );
    let mut unknown = iris_signature();
    unknown.inputs.get_mut("x").unwrap().tensor_shape = Some(TensorShapeProto {
        dim: vec![],
        unknown_rank: true,
    });
    let err = serving_signature(&saved(&["serve"], &[("serving_default", unknown)]), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("input \"x\" has an unknown rank"), "{err}");
}

#[test]
fn every_served_dtype_round_trips() {
    for d in DataType::ALL {
        assert_eq!(data_type(tf_data_type(d)), Some(d), "{d}");
    }
}

#[test]
fn locate_serves_the_highest_integer_version() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let bytes = saved(&["serve"], &[("serving_default", iris_signature())]).encode_to_vec();
    for v in ["1", "10", "9"] {
        std::fs::create_dir_all(root.join(v)).unwrap();
        std::fs::write(root.join(v).join("saved_model.pb"), &bytes).unwrap();
    }
    // Not versions: a non-integer name, and an integer directory without a SavedModel.
    std::fs::create_dir_all(root.join("11")).unwrap();
    std::fs::create_dir_all(root.join("latest")).unwrap();
    let found = locate(root).unwrap();
    assert_eq!(found.version, Some(10));
    assert_eq!(found.dir, root.join("10"));
    assert_eq!(
        read_signature(&found.dir, None).unwrap().key,
        "serving_default"
    );
    // The directory itself holding saved_model.pb wins, without a version.
    assert_eq!(locate(&root.join("9")).unwrap().version, None);
    let empty = tempfile::tempdir().unwrap();
    std::fs::write(empty.path().join("model.onnx"), b"").unwrap();
    let err = locate(empty.path()).unwrap_err().to_string();
    assert!(
        err.ends_with(
            "holds no saved_model.pb, nor integer version directories with one (found: model.onnx)"
        ),
        "{err}"
    );
    assert!(!is_model_dir(empty.path()));
    assert!(is_model_dir(root));
}

#[test]
fn a_corrupt_file_is_a_decode_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("saved_model.pb"), b"\xff\xff\xff").unwrap();
    let err = read_signature(dir.path(), None).unwrap_err();
    assert!(matches!(err, SavedModelError::Decode { .. }), "{err}");
}
