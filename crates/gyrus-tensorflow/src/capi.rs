//! TensorFlow's C API (`tensorflow/c/c_api.h`, `tf_tensor.h`, `tf_tstring.h`), loaded at run
//! time with `dlopen` from `libtensorflow_cc.so.2` (inside the `tensorflow-cpu` wheel), so
//! that building gyrus never needs TensorFlow. Only the functions gyrus calls are declared;
//! `dlsym` on the library also finds those that live in `libtensorflow_framework.so.2`
//! (status, tensors), which the library loads beside it.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use gyrus_engine::EngineError;

pub(crate) const RUNTIME: &str = "TensorFlow";

#[repr(C)]
pub(crate) struct TfStatus {
    _private: [u8; 0],
}
#[repr(C)]
pub(crate) struct TfGraph {
    _private: [u8; 0],
}
#[repr(C)]
pub(crate) struct TfSessionOptions {
    _private: [u8; 0],
}
#[repr(C)]
pub(crate) struct TfSession {
    _private: [u8; 0],
}
#[repr(C)]
pub(crate) struct TfOperation {
    _private: [u8; 0],
}
#[repr(C)]
pub(crate) struct TfTensor {
    _private: [u8; 0],
}
#[repr(C)]
pub(crate) struct TfBuffer {
    _private: [u8; 0],
}

/// `TF_Output`: one output of an operation, by index.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct TfOutput {
    pub oper: *mut TfOperation,
    pub index: c_int,
}

/// `TF_TString`: 24 bytes, handled only through the `TF_String*` functions.
#[repr(C)]
pub(crate) struct TfTString {
    _raw: [u8; 24],
}

/// `TF_Code` values gyrus tells apart.
pub(crate) const TF_OK: c_int = 0;
pub(crate) const TF_INVALID_ARGUMENT: c_int = 3;
pub(crate) const TF_OUT_OF_RANGE: c_int = 11;

/// The functions, resolved once.
pub(crate) struct Api {
    pub version: unsafe extern "C" fn() -> *const c_char,
    pub new_status: unsafe extern "C" fn() -> *mut TfStatus,
    pub delete_status: unsafe extern "C" fn(*mut TfStatus),
    pub get_code: unsafe extern "C" fn(*const TfStatus) -> c_int,
    pub message: unsafe extern "C" fn(*const TfStatus) -> *const c_char,
    pub new_graph: unsafe extern "C" fn() -> *mut TfGraph,
    pub delete_graph: unsafe extern "C" fn(*mut TfGraph),
    pub new_session_options: unsafe extern "C" fn() -> *mut TfSessionOptions,
    pub delete_session_options: unsafe extern "C" fn(*mut TfSessionOptions),
    pub set_config:
        unsafe extern "C" fn(*mut TfSessionOptions, *const c_void, usize, *mut TfStatus),
    #[allow(clippy::type_complexity)]
    pub load_session_from_saved_model: unsafe extern "C" fn(
        *const TfSessionOptions,
        *const TfBuffer,
        *const c_char,
        *const *const c_char,
        c_int,
        *mut TfGraph,
        *mut TfBuffer,
        *mut TfStatus,
    ) -> *mut TfSession,
    pub close_session: unsafe extern "C" fn(*mut TfSession, *mut TfStatus),
    pub delete_session: unsafe extern "C" fn(*mut TfSession, *mut TfStatus),
    pub graph_operation_by_name:
        unsafe extern "C" fn(*mut TfGraph, *const c_char) -> *mut TfOperation,
    pub operation_num_outputs: unsafe extern "C" fn(*mut TfOperation) -> c_int,
    #[allow(clippy::type_complexity)]
    pub session_run: unsafe extern "C" fn(
        *mut TfSession,
        *const TfBuffer,
        *const TfOutput,
        *const *mut TfTensor,
        c_int,
        *const TfOutput,
        *mut *mut TfTensor,
        c_int,
        *const *const TfOperation,
        c_int,
        *mut TfBuffer,
        *mut TfStatus,
    ),
    pub allocate_tensor: unsafe extern "C" fn(c_int, *const i64, c_int, usize) -> *mut TfTensor,
    pub delete_tensor: unsafe extern "C" fn(*mut TfTensor),
    pub tensor_type: unsafe extern "C" fn(*const TfTensor) -> c_int,
    pub num_dims: unsafe extern "C" fn(*const TfTensor) -> c_int,
    pub dim: unsafe extern "C" fn(*const TfTensor, c_int) -> i64,
    pub tensor_byte_size: unsafe extern "C" fn(*const TfTensor) -> usize,
    pub tensor_data: unsafe extern "C" fn(*const TfTensor) -> *mut c_void,
    pub string_init: unsafe extern "C" fn(*mut TfTString),
    pub string_copy: unsafe extern "C" fn(*mut TfTString, *const c_char, usize),
    pub string_get_data_pointer: unsafe extern "C" fn(*const TfTString) -> *const c_char,
    pub string_get_size: unsafe extern "C" fn(*const TfTString) -> usize,
    pub string_dealloc: unsafe extern "C" fn(*mut TfTString),
    /// Kept loaded for the life of the process: the function pointers point into it.
    _library: libloading::Library,
}

static API: OnceLock<Result<(PathBuf, Api), String>> = OnceLock::new();

/// Loads TensorFlow's library at `path` (normally `site-packages/tensorflow/libtensorflow_cc.so.2`).
/// Only the first call in a process loads anything; later calls return its outcome.
pub fn init_library(path: &Path) -> Result<(), EngineError> {
    match API.get_or_init(|| load(path).map(|api| (path.to_path_buf(), api))) {
        Ok(_) => Ok(()),
        Err(message) => Err(EngineError::Library {
            runtime: RUNTIME,
            path: path.to_path_buf(),
            message: message.clone(),
        }),
    }
}

/// The version of the loaded library (`TF_Version`), once [`init_library`] succeeded.
pub fn library_version() -> Option<String> {
    let api = api().ok()?;
    // SAFETY: TF_Version returns a static NUL-terminated string.
    let version = unsafe { CStr::from_ptr((api.version)()) };
    Some(version.to_string_lossy().into_owned())
}

pub(crate) fn api() -> Result<&'static Api, EngineError> {
    match API.get() {
        Some(Ok((_, api))) => Ok(api),
        Some(Err(message)) => Err(EngineError::Library {
            runtime: RUNTIME,
            path: PathBuf::new(),
            message: message.clone(),
        }),
        None => Err(EngineError::NotInitialised(RUNTIME)),
    }
}

fn load(path: &Path) -> Result<Api, String> {
    if !path.is_file() {
        return Err("no such file".to_string());
    }
    // SAFETY: loading TensorFlow runs its static initialisers, which is what the library is
    // built for; nothing else in the process defines its symbols.
    let library = unsafe { libloading::Library::new(path) }.map_err(|e| e.to_string())?;
    macro_rules! sym {
        ($name:literal) => {
            // SAFETY: the declared type is the C API's signature for this symbol.
            *unsafe { library.get(concat!($name, "\0").as_bytes()) }
                .map_err(|e| format!("is not TensorFlow's C API library: {e}"))?
        };
    }
    Ok(Api {
        version: sym!("TF_Version"),
        new_status: sym!("TF_NewStatus"),
        delete_status: sym!("TF_DeleteStatus"),
        get_code: sym!("TF_GetCode"),
        message: sym!("TF_Message"),
        new_graph: sym!("TF_NewGraph"),
        delete_graph: sym!("TF_DeleteGraph"),
        new_session_options: sym!("TF_NewSessionOptions"),
        delete_session_options: sym!("TF_DeleteSessionOptions"),
        set_config: sym!("TF_SetConfig"),
        load_session_from_saved_model: sym!("TF_LoadSessionFromSavedModel"),
        close_session: sym!("TF_CloseSession"),
        delete_session: sym!("TF_DeleteSession"),
        graph_operation_by_name: sym!("TF_GraphOperationByName"),
        operation_num_outputs: sym!("TF_OperationNumOutputs"),
        session_run: sym!("TF_SessionRun"),
        allocate_tensor: sym!("TF_AllocateTensor"),
        delete_tensor: sym!("TF_DeleteTensor"),
        tensor_type: sym!("TF_TensorType"),
        num_dims: sym!("TF_NumDims"),
        dim: sym!("TF_Dim"),
        tensor_byte_size: sym!("TF_TensorByteSize"),
        tensor_data: sym!("TF_TensorData"),
        string_init: sym!("TF_StringInit"),
        string_copy: sym!("TF_StringCopy"),
        string_get_data_pointer: sym!("TF_StringGetDataPointer"),
        string_get_size: sym!("TF_StringGetSize"),
        string_dealloc: sym!("TF_StringDealloc"),
        _library: library,
    })
}

/// A `TF_Status`, deleted on drop.
pub(crate) struct Status<'a> {
    api: &'a Api,
    raw: *mut TfStatus,
}

impl<'a> Status<'a> {
    pub fn new(api: &'a Api) -> Self {
        // SAFETY: TF_NewStatus has no preconditions.
        Status {
            api,
            raw: unsafe { (api.new_status)() },
        }
    }

    pub fn raw(&self) -> *mut TfStatus {
        self.raw
    }

    /// `Err((code, message))` unless the last call succeeded.
    pub fn check(&self) -> Result<(), (c_int, String)> {
        // SAFETY: `raw` is a live status; TF_Message's string lives as long as it.
        unsafe {
            let code = (self.api.get_code)(self.raw);
            if code == TF_OK {
                return Ok(());
            }
            let message = CStr::from_ptr((self.api.message)(self.raw))
                .to_string_lossy()
                .into_owned();
            Err((code, message))
        }
    }
}

impl Drop for Status<'_> {
    fn drop(&mut self) {
        // SAFETY: made by TF_NewStatus, deleted once.
        unsafe { (self.api.delete_status)(self.raw) }
    }
}
