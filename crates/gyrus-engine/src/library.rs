//! Loading `libonnxruntime` (a shared library found at run time, normally the one inside the
//! `onnxruntime` wheel), the process-wide ONNX Runtime environment, and execution providers.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::ep::{self, ExecutionProvider};
use ort::session::builder::SessionBuilder;

use crate::{EngineError, Provider, Providers};

/// The oldest ONNX Runtime this build can drive: `ort`'s `api-22` feature.
pub const MIN_LIBRARY_VERSION: (u32, u32) = (1, ort::MINOR_VERSION);

const RUNTIME: &str = "ONNX Runtime";

static ENVIRONMENT: OnceLock<Result<(PathBuf, Environment), String>> = OnceLock::new();

/// The version a library's file name carries (`libonnxruntime.so.1.31.1` → `1.31.1`).
pub fn library_version(path: &Path) -> Option<(u32, u32, u32)> {
    let name = path.file_name()?.to_str()?;
    let version = name.split(".so.").nth(1)?;
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    Some((
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
}

/// Loads the library at `path` and creates the process's ONNX Runtime environment. Only the
/// first call in a process loads anything; later calls return its outcome.
pub fn init_library(path: &Path) -> Result<(), EngineError> {
    let outcome = ENVIRONMENT.get_or_init(|| {
        if let Some((major, minor, patch)) = library_version(path) {
            if (major, minor) < MIN_LIBRARY_VERSION {
                return Err(format!(
                    "is ONNX Runtime {major}.{minor}.{patch}; gyrus needs {}.{} or newer \
                     (pip install 'onnxruntime>={}.{}', or unset ORT_DYLIB_PATH to let gyrus \
                     install its own)",
                    MIN_LIBRARY_VERSION.0,
                    MIN_LIBRARY_VERSION.1,
                    MIN_LIBRARY_VERSION.0,
                    MIN_LIBRARY_VERSION.1
                ));
            }
        }
        if !path.is_file() {
            return Err("no such file".to_string());
        }
        let builder = ort::init_from(path).map_err(|e| e.to_string())?;
        let env = builder
            .with_name("gyrus")
            .with_telemetry(false)
            .build()
            .map_err(|e| e.to_string())?;
        Ok((path.to_path_buf(), env))
    });
    match outcome {
        Ok(_) => Ok(()),
        Err(message) => Err(EngineError::Library {
            runtime: RUNTIME,
            path: path.to_path_buf(),
            message: message.clone(),
        }),
    }
}

pub(crate) fn environment() -> Result<Environment, EngineError> {
    match ENVIRONMENT.get() {
        Some(Ok((_, env))) => Ok(env.clone()),
        Some(Err(message)) => Err(EngineError::Library {
            runtime: RUNTIME,
            path: PathBuf::new(),
            message: message.clone(),
        }),
        None => Err(EngineError::NotInitialised(RUNTIME)),
    }
}

fn available(provider: Provider) -> bool {
    let result = match provider {
        Provider::TensorRt => ep::TensorRT::is_available(),
        Provider::Cuda => ep::CUDA::is_available(),
        Provider::Cpu => return true,
    };
    result.unwrap_or(false)
}

fn register(provider: Provider, builder: &mut SessionBuilder) -> ort::Result<()> {
    let dispatch = match provider {
        Provider::TensorRt => ep::TensorRT::default().build(),
        Provider::Cuda => ep::CUDA::default().build(),
        Provider::Cpu => ep::CPU::default().build(),
    };
    dispatch.register(builder)
}

/// Registers the providers a config asks for, warning about each one that cannot be used.
/// Returns the names of those registered, CPU last (ONNX Runtime always falls back to it).
pub(crate) fn apply_providers(
    mut builder: SessionBuilder,
    providers: &Providers,
    warn: &mut dyn FnMut(String),
) -> ort::Result<(SessionBuilder, Vec<&'static str>)> {
    let mut used = Vec::new();
    match providers {
        Providers::Auto => {
            // The GPU wheel (onnxruntime-gpu) has CUDA; without a usable GPU its registration
            // fails, and CPU serving is what the user expects then, so no warning.
            if available(Provider::Cuda) && register(Provider::Cuda, &mut builder).is_ok() {
                used.push(Provider::Cuda.ort_name());
            }
        }
        Providers::List(list) => {
            for &p in list {
                if p == Provider::Cpu || used.contains(&p.ort_name()) {
                    continue;
                }
                if !available(p) {
                    warn(format!(
                        "execution provider {} is not in this ONNX Runtime build (it comes with \
                         the onnxruntime-gpu wheel); falling back to the next provider",
                        p.ort_name()
                    ));
                    continue;
                }
                match register(p, &mut builder) {
                    Ok(()) => used.push(p.ort_name()),
                    Err(e) => warn(format!(
                        "execution provider {} could not be loaded: {e}; falling back to the \
                         next provider",
                        p.ort_name()
                    )),
                }
            }
        }
    }
    used.push(Provider::Cpu.ort_name());
    Ok((builder, used))
}
