//! The model runtimes gyrus finds or installs for APIs that load models: ONNX Runtime
//! (`libonnxruntime` from the `onnxruntime` wheel) and TensorFlow (`libtensorflow_cc.so.2`
//! from the `tensorflow-cpu` wheel). Each is looked up the same way (see
//! [`PythonEnvs::resolve_runtime`](super::PythonEnvs::resolve_runtime)): a path in an
//! environment variable, else the API's own environment when its requirements install the
//! wheel, else an environment gyrus manages under `GYRUS_HOME/runtime/`, installed on first
//! use with the wheel and numpy. That managed environment is also the interpreter of the
//! runtime's predictors without `requirements.txt`, as Cortex's images had the runtime and
//! numpy installed.

use std::path::{Path, PathBuf};

/// One runtime: the wheel that brings its library and how to find the library in it.
#[derive(Debug)]
pub struct Runtime {
    /// What users call it, for messages.
    pub name: &'static str,
    /// The PyPI package and the version gyrus installs.
    pub package: &'static str,
    pub version: &'static str,
    /// The environment variable naming a library to use instead.
    pub override_var: &'static str,
    /// The library's file, for messages.
    pub library_file: &'static str,
    find: fn(&Path) -> Option<PathBuf>,
}

/// ONNX Runtime. The engine needs at least [`gyrus_engine::MIN_LIBRARY_VERSION`].
pub const ONNX_RUNTIME: Runtime = Runtime {
    name: "ONNX Runtime",
    package: "onnxruntime",
    version: "1.31.1",
    override_var: "ORT_DYLIB_PATH",
    library_file: "libonnxruntime.so",
    find: onnx_library_in,
};

/// TensorFlow, CPU build (the `tensorflow-cpu` wheel has the same C API library as
/// `tensorflow`, without the CUDA dependencies).
pub const TENSORFLOW: Runtime = Runtime {
    name: "TensorFlow",
    package: "tensorflow-cpu",
    version: "2.21.0",
    override_var: "GYRUS_TF_LIBRARY",
    library_file: gyrus_tensorflow::LIBRARY_FILE,
    find: tensorflow_library_in,
};

impl Runtime {
    /// `package==version`, as pip takes it.
    pub fn requirement(&self) -> String {
        format!("{}=={}", self.package, self.version)
    }

    /// The runtime's library inside an environment (given as its directory or its
    /// `bin/python`), if the environment has a usable one.
    pub fn library_in_env(&self, python_or_env: &Path) -> Option<PathBuf> {
        let env = if python_or_env.ends_with("bin/python") {
            python_or_env.parent()?.parent()?
        } else {
            python_or_env
        };
        let lib = std::fs::read_dir(env.join("lib")).ok()?;
        lib.flatten()
            .find_map(|entry| (self.find)(&entry.path().join("site-packages")))
    }
}

/// `onnxruntime/capi/libonnxruntime.so.*`, if new enough for the engine.
fn onnx_library_in(site_packages: &Path) -> Option<PathBuf> {
    let files = std::fs::read_dir(site_packages.join("onnxruntime/capi")).ok()?;
    files.flatten().map(|f| f.path()).find(|path| {
        gyrus_engine::library_version(path)
            .is_some_and(|v| (v.0, v.1) >= gyrus_engine::MIN_LIBRARY_VERSION)
    })
}

/// `tensorflow/libtensorflow_cc.so.2`, beside the framework library it needs.
fn tensorflow_library_in(site_packages: &Path) -> Option<PathBuf> {
    let dir = site_packages.join("tensorflow");
    let library = dir.join(gyrus_tensorflow::LIBRARY_FILE);
    (library.is_file() && dir.join("libtensorflow_framework.so.2").is_file()).then_some(library)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libraries_are_found_in_an_environment_layout() {
        let env = tempfile::tempdir().unwrap();
        let site = env.path().join("lib/python3.11/site-packages");
        std::fs::create_dir_all(site.join("onnxruntime/capi")).unwrap();
        std::fs::create_dir_all(site.join("tensorflow")).unwrap();
        assert_eq!(TENSORFLOW.library_in_env(env.path()), None);
        assert_eq!(ONNX_RUNTIME.library_in_env(env.path()), None);
        std::fs::write(site.join("tensorflow/libtensorflow_cc.so.2"), b"").unwrap();
        // Without the framework library beside it, the C API library cannot load.
        assert_eq!(TENSORFLOW.library_in_env(env.path()), None);
        std::fs::write(site.join("tensorflow/libtensorflow_framework.so.2"), b"").unwrap();
        let python = env.path().join("bin/python");
        assert_eq!(
            TENSORFLOW.library_in_env(&python),
            Some(site.join("tensorflow/libtensorflow_cc.so.2"))
        );
        std::fs::write(site.join("onnxruntime/capi/libonnxruntime.so.1.10.0"), b"").unwrap();
        assert_eq!(ONNX_RUNTIME.library_in_env(env.path()), None, "too old");
        std::fs::write(site.join("onnxruntime/capi/libonnxruntime.so.1.31.1"), b"").unwrap();
        assert!(ONNX_RUNTIME.library_in_env(env.path()).is_some());
        assert_eq!(TENSORFLOW.requirement(), "tensorflow-cpu==2.21.0");
    }
}
