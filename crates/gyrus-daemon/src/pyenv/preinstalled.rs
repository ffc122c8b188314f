//! Cortex's images came with packages that predictors import without listing them (the seeds'
//! "Pre-installed packages", per predictor type). At deploy gyrus reads what the project's
//! Python files import (`imports.py`: Python's own `ast`, run by the base interpreter) and adds
//! to the API's environment each of those packages that neither `requirements.txt` lists nor
//! the base interpreter can import, at its current version. `predictor.preinstalled_packages:
//! false` turns it off. The packages become part of the environment's cache key, so a second
//! deploy of the same project installs nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use gyrus_spec::PredictorType;
use serde::Deserialize;

use super::{BasePython, EnvError};

const SCANNER: &str = include_str!("imports.py");

/// Reading a project's imports takes well under a second; this bounds a pathological one.
const SCAN_TIMEOUT: Duration = Duration::from_secs(60);

/// Import name → package, of the packages Cortex's Python predictor images had (seeds 001, 002,
/// 003): what a predictor could import without a requirements.txt. Versions are not pinned:
/// Cortex's are years old and most have no wheels for today's Pythons.
const PYTHON: &[(&str, &str)] = &[
    ("boto3", "boto3"),
    ("cloudpickle", "cloudpickle"),
    ("Cython", "Cython"),
    ("cv2", "opencv-python-headless"),
    ("dill", "dill"),
    ("fastapi", "fastapi"),
    ("joblib", "joblib"),
    ("keras", "keras"),
    ("msgpack", "msgpack"),
    ("nltk", "nltk"),
    ("numpy", "numpy"),
    ("pandas", "pandas"),
    ("PIL", "Pillow"),
    ("requests", "requests"),
    ("scipy", "scipy"),
    ("six", "six"),
    ("skimage", "scikit-image"),
    ("sklearn", "scikit-learn"),
    ("statsmodels", "statsmodels"),
    ("sympy", "sympy"),
    ("tensorflow", "tensorflow-cpu"),
    ("tensorflow_hub", "tensorflow-hub"),
    ("torch", "torch"),
    ("torchvision", "torchvision"),
    ("xgboost", "xgboost"),
    ("yaml", "pyyaml"),
];

/// Cortex's ONNX predictor image (seeds 000, 002).
const ONNX: &[(&str, &str)] = &[
    ("boto3", "boto3"),
    ("dill", "dill"),
    ("fastapi", "fastapi"),
    ("msgpack", "msgpack"),
    ("numpy", "numpy"),
    ("onnxruntime", "onnxruntime"),
    ("requests", "requests"),
    ("yaml", "pyyaml"),
];

/// Cortex's TensorFlow predictor image (seed 002).
const TENSORFLOW: &[(&str, &str)] = &[
    ("boto3", "boto3"),
    ("cv2", "opencv-python-headless"),
    ("dill", "dill"),
    ("fastapi", "fastapi"),
    ("msgpack", "msgpack"),
    ("numpy", "numpy"),
    ("requests", "requests"),
    ("tensorflow", "tensorflow-cpu"),
    ("tensorflow_hub", "tensorflow-hub"),
    ("tensorflow_serving", "tensorflow-serving-api"),
    ("yaml", "pyyaml"),
];

fn table(kind: PredictorType) -> &'static [(&'static str, &'static str)] {
    match kind {
        PredictorType::Python => PYTHON,
        PredictorType::Onnx => ONNX,
        PredictorType::Tensorflow => TENSORFLOW,
    }
}

/// What `imports.py` found.
#[derive(Debug, Default, Deserialize)]
pub struct Scan {
    /// Module → the files importing it.
    pub imports: BTreeMap<String, Vec<String>>,
    /// Modules the base interpreter can import.
    pub available: BTreeSet<String>,
}

/// A package added to an API's environment, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Added {
    /// What is installed: a package name, or the runtime's pinned requirement.
    pub package: String,
    pub module: String,
    pub files: Vec<String>,
}

impl std::fmt::Display for Added {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let files = match self.files.as_slice() {
            [one] => one.clone(),
            [first, rest @ ..] => format!("{first} and {} more", rest.len()),
            [] => "the project".into(),
        };
        write!(f, "{} (`import {}` in {files})", self.package, self.module)
    }
}

/// The packages to add: imported, in the type's table, not importable by the base
/// interpreter, not named in `requirements.txt`. The model runtime of an ONNX or TensorFlow
/// predictor (`runtime`: its module and pinned requirement) is added at the version gyrus
/// serves it with, not the newest.
pub fn select(
    kind: PredictorType,
    scan: &Scan,
    requirements: Option<&str>,
    runtime: Option<(&str, String)>,
) -> Vec<Added> {
    let listed = requirements.map(requirement_names).unwrap_or_default();
    table(kind)
        .iter()
        .filter_map(|&(module, package)| {
            let files = scan.imports.get(module)?;
            let provided = scan.available.contains(module)
                || providers(module, package)
                    .iter()
                    .any(|p| listed.contains(&normalize(p)));
            let package = match &runtime {
                Some((runtime_module, pinned)) if *runtime_module == module => pinned.clone(),
                _ => package.to_string(),
            };
            (!provided).then(|| Added {
                package,
                module: module.to_string(),
                files: files.clone(),
            })
        })
        .collect()
}

/// The packages that provide `module`: a requirements.txt naming any of them provides it, so
/// that gyrus never installs a second build beside the user's (onnxruntime beside
/// onnxruntime-gpu, tensorflow-cpu beside tensorflow, two opencv builds).
fn providers(module: &str, package: &'static str) -> Vec<&'static str> {
    let mut all = vec![package];
    all.extend_from_slice(match module {
        "tensorflow" => &[
            "tensorflow",
            "tensorflow-cpu",
            "tensorflow-gpu",
            "tensorflow-intel",
            "intel-tensorflow",
            "tf-nightly",
        ][..],
        "onnxruntime" => &[
            "onnxruntime",
            "onnxruntime-gpu",
            "onnxruntime-openvino",
            "onnxruntime-directml",
            "onnxruntime-silicon",
        ],
        "cv2" => &[
            "opencv-python",
            "opencv-python-headless",
            "opencv-contrib-python",
            "opencv-contrib-python-headless",
        ],
        "PIL" => &["Pillow", "pillow-simd"],
        "torch" => &["torch", "torch-cpu"],
        _ => &[],
    });
    all
}

/// PEP 503's normalized name: lower case, runs of `-`, `_` and `.` as one `-`.
fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !out.ends_with('-') {
                out.push('-');
            }
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// The project names a requirements file asks for (options, URLs and comments left out).
fn requirement_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .map(|line| line.split(" #").next().unwrap_or("").trim())
        .filter(|line| !line.is_empty() && !line.starts_with('#') && !line.starts_with('-'))
        .filter_map(|line| {
            // `name @ url` and `name[extra]>=1` alike: the name is the leading run of these.
            let end = line
                .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
                .unwrap_or(line.len());
            Some(normalize(&line[..end])).filter(|n| !n.is_empty())
        })
        .collect()
}

/// Runs `imports.py` over the project with the base interpreter.
pub async fn scan(base: &BasePython, project_dir: &Path) -> Result<Scan, EnvError> {
    let run = tokio::process::Command::new(&base.executable)
        // -I: no user site-packages, no PYTHON* variables; -c: nothing written to disk.
        .arg("-I")
        .arg("-c")
        .arg(SCANNER)
        .arg(project_dir)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(SCAN_TIMEOUT, run)
        .await
        .map_err(|_| {
            EnvError::Io(format!(
                "reading the project's imports took over {}s",
                SCAN_TIMEOUT.as_secs()
            ))
        })?
        .map_err(|e| EnvError::Io(format!("reading the project's imports: {e}")))?;
    if !out.status.success() {
        return Err(EnvError::Io(format!(
            "reading the project's imports failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| EnvError::Io(format!("reading the project's imports: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(imports: &[(&str, &str)], available: &[&str]) -> Scan {
        let mut s = Scan::default();
        for (module, file) in imports {
            s.imports
                .entry(module.to_string())
                .or_default()
                .push(file.to_string());
        }
        s.available = available.iter().map(|m| m.to_string()).collect();
        s
    }

    fn packages(added: &[Added]) -> Vec<&str> {
        added.iter().map(|a| a.package.as_str()).collect()
    }

    #[test]
    fn imports_become_the_seeds_packages() {
        let s = scan(
            &[
                ("numpy", "predictor.py"),
                ("pandas", "predictor.py"),
                ("sklearn", "model/train.py"),
                ("yaml", "predictor.py"),
                ("cv2", "predictor.py"),
                ("PIL", "predictor.py"),
                ("requests", "predictor.py"),
                ("leftpad", "predictor.py"),
            ],
            &["requests"],
        );
        let added = select(PredictorType::Python, &s, None, None);
        assert_eq!(
            packages(&added),
            [
                "opencv-python-headless",
                "numpy",
                "pandas",
                "Pillow",
                "scikit-learn",
                "pyyaml"
            ]
        );
        assert_eq!(
            added[4].to_string(),
            "scikit-learn (`import sklearn` in model/train.py)"
        );
    }

    #[test]
    fn each_type_has_its_own_list() {
        let s = scan(
            &[
                ("pandas", "p.py"),
                ("numpy", "p.py"),
                ("onnxruntime", "p.py"),
            ],
            &[],
        );
        assert_eq!(
            packages(&select(PredictorType::Onnx, &s, None, None)),
            ["numpy", "onnxruntime"]
        );
        assert_eq!(
            packages(&select(PredictorType::Tensorflow, &s, None, None)),
            ["numpy"]
        );
        assert_eq!(
            packages(&select(PredictorType::Python, &s, None, None)),
            ["numpy", "pandas"]
        );
        // The runtime at the version gyrus serves it with.
        let pinned = Some(("onnxruntime", "onnxruntime==1.31.1".to_string()));
        assert_eq!(
            packages(&select(PredictorType::Onnx, &s, None, pinned)),
            ["numpy", "onnxruntime==1.31.1"]
        );
    }

    #[test]
    fn requirements_win() {
        let s = scan(
            &[("numpy", "p.py"), ("sklearn", "p.py"), ("yaml", "p.py")],
            &[],
        );
        let requirements = "# pinned\nNumPy==1.26.4\nscikit_learn>=1.3 ; python_version > '3'\n-r other.txt\nPyYAML @ https://example.invalid/x.whl\n";
        assert!(select(PredictorType::Python, &s, Some(requirements), None).is_empty());
        assert_eq!(
            requirement_names(requirements),
            ["numpy", "pyyaml", "scikit-learn"]
                .into_iter()
                .map(String::from)
                .collect()
        );
        assert_eq!(normalize("Foo__Bar.baz"), "foo-bar-baz");
    }

    #[test]
    fn another_build_of_a_package_provides_it() {
        let s = scan(
            &[
                ("tensorflow", "p.py"),
                ("cv2", "p.py"),
                ("onnxruntime", "p.py"),
            ],
            &[],
        );
        let pinned = |m: &'static str| Some((m, format!("{m}==1")));
        let req = "tensorflow==2.15.0\nopencv-contrib-python\n";
        assert!(select(
            PredictorType::Tensorflow,
            &s,
            Some(req),
            pinned("tensorflow")
        )
        .is_empty());
        let req = "onnxruntime-gpu==1.20\n";
        assert!(select(PredictorType::Onnx, &s, Some(req), pinned("onnxruntime")).is_empty());
    }

    #[test]
    fn added_says_where_it_is_imported() {
        let a = Added {
            package: "pandas".into(),
            module: "pandas".into(),
            files: vec!["a.py".into(), "b.py".into(), "c.py".into()],
        };
        assert_eq!(a.to_string(), "pandas (`import pandas` in a.py and 2 more)");
    }
}
