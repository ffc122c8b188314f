//! `model.yaml`: the description every stored version carries (types, reading, writing), and
//! how a directory's model file is found. The key order of the structs below is the order
//! `docs/model-store.md` gives, because serde writes fields in declaration order. Field types
//! are kept to plain strings, integers, booleans, maps and lists so that files written by
//! Python's `yaml.safe_dump` read back, and ours read there.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::StoreError;

/// The name of the description file in every version directory (and first in every archive).
pub const MODEL_YAML: &str = "model.yaml";

/// The preferred model file name; a single ONNX file is saved under it.
pub const SAVED_MODEL: &str = "saved_model.onnx";

/// The file that makes a directory a TensorFlow SavedModel; such a version is stored as the
/// SavedModel directory itself (`saved_model.pb`, `variables/`, `assets/` ...).
pub const TF_SAVED_MODEL_PB: &str = "saved_model.pb";

/// `module` and `context.framework_name` of ONNX models.
pub const MODULE_ONNX: &str = "gyrus.onnx";
pub const FRAMEWORK_ONNX: &str = "onnx";
/// `module` and `context.framework_name` of TensorFlow SavedModels.
pub const MODULE_TENSORFLOW: &str = "gyrus.tensorflow";
pub const FRAMEWORK_TENSORFLOW: &str = "tensorflow";

/// `model.yaml`, exactly the keys of the contract. Unknown keys are ignored when reading.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ModelInfo {
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub module: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub options: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub context: Context,
    #[serde(default)]
    pub signatures: BTreeMap<String, Signature>,
    /// RFC 3339 with a time zone; what `list` sorts by.
    pub creation_time: String,
    /// Bytes of all files but `model.yaml`.
    pub size: u64,
    /// Every file but `model.yaml`, sorted by path.
    #[serde(default)]
    pub files: Vec<FileEntry>,
}

/// Where the model came from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct Context {
    #[serde(default)]
    pub framework_name: String,
    #[serde(default)]
    pub framework_versions: BTreeMap<String, String>,
    #[serde(default)]
    pub gyrus_version: String,
}

/// One callable of the model, as BentoML describes it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct Signature {
    #[serde(default)]
    pub batchable: bool,
    #[serde(default)]
    pub batch_dim: i64,
    #[serde(default)]
    pub input_spec: Vec<TensorSpec>,
    #[serde(default)]
    pub output_spec: Vec<TensorSpec>,
}

/// One input or output tensor: its name, Open Inference Protocol datatype and shape (-1 marks
/// a dynamic axis).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: String,
    #[serde(default)]
    pub shape: Vec<i64>,
}

/// One stored file: '/'-separated relative path, size in bytes, lowercase hex sha256.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

impl ModelInfo {
    /// Parses `model.yaml` text; the error is one line naming line and column when known.
    pub fn from_yaml(text: &str) -> Result<ModelInfo, String> {
        serde_saphyr::from_str(text).map_err(|err| {
            let message = err.without_snippet().to_string();
            // The message may span lines (the crate renders context); keep the first one
            // so errors stay one line in logs and HTTP replies.
            let first = message.lines().next().unwrap_or("").trim().to_string();
            match err.location() {
                Some(at) if !first.contains(&format!("line {}", at.line())) => {
                    format!("line {} column {}: {first}", at.line(), at.column())
                }
                _ => first,
            }
        })
    }

    /// The framework of the model: `context.framework_name`, else what `module` implies
    /// (`gyrus.onnx` → `onnx`), else `onnx` (what the store held before it took SavedModels).
    pub fn framework(&self) -> &str {
        if !self.context.framework_name.is_empty() {
            return &self.context.framework_name;
        }
        match self.module.strip_prefix("gyrus.") {
            Some(framework) if !framework.is_empty() => framework,
            _ => FRAMEWORK_ONNX,
        }
    }

    /// Whether the stored version is a TensorFlow SavedModel directory.
    pub fn is_tensorflow(&self) -> bool {
        self.framework() == FRAMEWORK_TENSORFLOW
    }

    /// Writes `model.yaml` text, keys in the contract's order.
    pub fn to_yaml(&self) -> Result<String, String> {
        serde_saphyr::to_string(self).map_err(|err| err.to_string())
    }

    /// Reads and parses the `model.yaml` at `path`; any failure is [`StoreError::Corrupt`]
    /// naming the file (a missing file too: callers that treat a missing file as "not a model"
    /// check for it first).
    pub fn read(path: &Path) -> Result<ModelInfo, StoreError> {
        let text = fs::read_to_string(path).map_err(|err| StoreError::Corrupt {
            path: path.to_path_buf(),
            reason: err.to_string(),
        })?;
        ModelInfo::from_yaml(&text).map_err(|reason| StoreError::Corrupt {
            path: path.to_path_buf(),
            reason,
        })
    }
}

/// The model file of a directory: `saved_model.onnx` if present, else the single top-level
/// `*.onnx` file. The error names what was found, so a user sees why their directory was not
/// accepted.
pub fn model_file(dir: &Path) -> Result<PathBuf, StoreError> {
    let preferred = dir.join(SAVED_MODEL);
    if preferred.is_file() {
        return Ok(preferred);
    }
    let entries = fs::read_dir(dir).map_err(|source| StoreError::Io {
        context: format!("cannot read {}", dir.display()),
        source,
    })?;
    let mut onnx = Vec::new();
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| StoreError::Io {
            context: format!("cannot read {}", dir.display()),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_onnx = Path::new(&name)
            .extension()
            .is_some_and(|ext| ext.eq_ignore_ascii_case("onnx"));
        if is_onnx && entry.path().is_file() {
            onnx.push(entry.path());
        }
        if name != MODEL_YAML {
            found.push(name);
        }
    }
    if onnx.len() == 1 {
        return Ok(onnx.remove(0));
    }
    found.sort();
    Err(StoreError::NoModelFile {
        dir: dir.to_path_buf(),
        found,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Python's `yaml.safe_dump(info, sort_keys=False)` writes for the contract's example.
    const PYYAML: &str = r#"name: iris
version: 0vd8k1s2m4q6r8tu
module: gyrus.onnx
labels:
  team: ml
options: {}
metadata:
  accuracy: '0.97'
  epochs: 12
  tags:
  - a
  - b
context:
  framework_name: onnx
  framework_versions:
    onnxruntime: 1.31.1
  gyrus_version: 0.1.0
signatures:
  run:
    batchable: false
    batch_dim: 0
    input_spec:
    - name: input
      datatype: FP32
      shape:
      - -1
      - 4
    output_spec:
    - name: label
      datatype: INT64
      shape:
      - -1
creation_time: '2026-11-21T22:53:53.123456+00:00'
size: 3151
files:
- path: saved_model.onnx
  size: 3151
  sha256: 5b0c0000000000000000000000000000000000000000000000000000000000ff
python_only: ignored
"#;

    #[test]
    fn reads_pyyaml_output() {
        let info = ModelInfo::from_yaml(PYYAML).unwrap();
        assert_eq!(info.name, "iris");
        assert_eq!(info.version, "0vd8k1s2m4q6r8tu");
        assert_eq!(info.labels["team"], "ml");
        assert!(info.options.is_empty());
        assert_eq!(info.metadata["accuracy"], serde_json::json!("0.97"));
        assert_eq!(info.metadata["epochs"], serde_json::json!(12));
        assert_eq!(info.metadata["tags"], serde_json::json!(["a", "b"]));
        assert_eq!(info.context.framework_versions["onnxruntime"], "1.31.1");
        assert_eq!(info.context.gyrus_version, "0.1.0");
        let run = &info.signatures["run"];
        assert!(!run.batchable);
        assert_eq!(run.input_spec[0].shape, vec![-1, 4]);
        assert_eq!(run.output_spec[0].datatype, "INT64");
        assert_eq!(info.creation_time, "2026-11-21T22:53:53.123456+00:00");
        assert_eq!(info.size, 3151);
        assert_eq!(info.files[0].path, "saved_model.onnx");
    }

    #[test]
    fn writes_in_contract_order_and_reads_back() {
        let info = ModelInfo::from_yaml(PYYAML).unwrap();
        let text = info.to_yaml().unwrap();
        let keys: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with([' ', '-']))
            .filter_map(|l| l.split(':').next())
            .collect();
        assert_eq!(
            keys,
            [
                "name",
                "version",
                "module",
                "labels",
                "options",
                "metadata",
                "context",
                "signatures",
                "creation_time",
                "size",
                "files"
            ]
        );
        // Strings that YAML would read as numbers or times stay quoted.
        assert!(text.contains("accuracy: '0.97'") || text.contains("accuracy: \"0.97\""));
        assert!(text.contains("options: {}"), "{text}");
        assert_eq!(ModelInfo::from_yaml(&text).unwrap(), info);
    }

    #[test]
    fn defaults_for_optional_keys() {
        let text = "name: a\nversion: b\ncreation_time: '2026-01-01T00:00:00+00:00'\nsize: 0\n\
                    signatures:\n  run:\n    batchable: true\n";
        let info = ModelInfo::from_yaml(text).unwrap();
        assert!(info.files.is_empty());
        assert_eq!(info.signatures["run"].batch_dim, 0);
        assert!(info.signatures["run"].input_spec.is_empty());
    }

    #[test]
    fn parse_errors_name_the_position() {
        let err = ModelInfo::from_yaml("name: a\nversion: b\nsize: [1\n").unwrap_err();
        assert!(err.contains("line"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        let err = ModelInfo::from_yaml("name: a\nversion: b\nsize: -3\n").unwrap_err();
        assert!(err.contains("line 3"), "{err}");
    }

    /// A TensorFlow SavedModel's `model.yaml`: the same keys, the framework in `module` and
    /// `context`, the serving signature under its key, and the directory's files.
    const TENSORFLOW: &str = r#"name: iris-tf
version: 0vd8k1s2m4q6r8tv
module: gyrus.tensorflow
labels: {}
options: {}
metadata: {}
context:
  framework_name: tensorflow
  framework_versions:
    tensorflow: 2.21.0
  gyrus_version: 0.1.0
signatures:
  serving_default:
    batchable: false
    batch_dim: 0
    input_spec:
    - name: x
      datatype: FP32
      shape:
      - -1
      - 4
    output_spec:
    - name: class_ids
      datatype: INT64
      shape:
      - -1
    - name: probabilities
      datatype: FP32
      shape:
      - -1
      - 3
creation_time: '2026-12-05T18:00:00.000000+00:00'
size: 300
files:
- path: fingerprint.pb
  size: 50
  sha256: 00000000000000000000000000000000000000000000000000000000000000aa
- path: saved_model.pb
  size: 200
  sha256: 00000000000000000000000000000000000000000000000000000000000000bb
- path: variables/variables.data-00000-of-00001
  size: 40
  sha256: 00000000000000000000000000000000000000000000000000000000000000cc
- path: variables/variables.index
  size: 10
  sha256: 00000000000000000000000000000000000000000000000000000000000000dd
"#;

    #[test]
    fn tensorflow_model_yaml_round_trips() {
        let info = ModelInfo::from_yaml(TENSORFLOW).unwrap();
        assert_eq!(info.module, MODULE_TENSORFLOW);
        assert_eq!(info.framework(), FRAMEWORK_TENSORFLOW);
        assert!(info.is_tensorflow());
        assert_eq!(info.context.framework_versions["tensorflow"], "2.21.0");
        let serving = &info.signatures["serving_default"];
        assert_eq!(serving.input_spec[0].name, "x");
        assert_eq!(serving.input_spec[0].shape, vec![-1, 4]);
        assert_eq!(serving.output_spec.len(), 2);
        assert_eq!(
            info.files[2].path,
            "variables/variables.data-00000-of-00001"
        );
        let text = info.to_yaml().unwrap();
        assert!(text.contains("framework_name: tensorflow"), "{text}");
        assert!(text.contains("module: gyrus.tensorflow"), "{text}");
        assert_eq!(ModelInfo::from_yaml(&text).unwrap(), info);
    }

    #[test]
    fn framework_of_older_and_partial_files() {
        // ONNX versions written before SavedModels were stored read as ONNX.
        let onnx = ModelInfo::from_yaml(PYYAML).unwrap();
        assert_eq!(onnx.framework(), FRAMEWORK_ONNX);
        assert!(!onnx.is_tensorflow());
        let bare = "name: a\nversion: b\ncreation_time: '2026-01-01T00:00:00+00:00'\nsize: 0\n";
        assert_eq!(
            ModelInfo::from_yaml(bare).unwrap().framework(),
            FRAMEWORK_ONNX
        );
        // `module` alone names the framework when `context` is missing.
        let module_only = format!("{bare}module: gyrus.tensorflow\n");
        assert!(ModelInfo::from_yaml(&module_only).unwrap().is_tensorflow());
    }

    #[test]
    fn no_model_file_mentions_saved_models() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("weights.bin"), b"x").unwrap();
        let err = model_file(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("TensorFlow SavedModel (saved_model.pb"),
            "{err}"
        );
        assert!(err.contains("found weights.bin"), "{err}");
    }

    #[test]
    fn model_file_rules() {
        let dir = tempfile::tempdir().unwrap();
        let err = model_file(dir.path()).unwrap_err().to_string();
        assert!(err.contains("found nothing"), "{err}");
        fs::write(dir.path().join("a.onnx"), b"x").unwrap();
        fs::write(dir.path().join("weights.bin"), b"x").unwrap();
        assert_eq!(model_file(dir.path()).unwrap(), dir.path().join("a.onnx"));
        fs::write(dir.path().join("b.ONNX"), b"x").unwrap();
        let err = model_file(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("a.onnx, b.ONNX, weights.bin"),
            "the error lists what is there: {err}"
        );
        fs::write(dir.path().join(SAVED_MODEL), b"x").unwrap();
        assert_eq!(
            model_file(dir.path()).unwrap(),
            dir.path().join(SAVED_MODEL)
        );
    }
}
