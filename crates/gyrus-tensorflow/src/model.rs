//! One SavedModel loaded into a TensorFlow session, and inference on [`Tensor`]s through
//! `TF_SessionRun`.
//!
//! Inputs are copied into tensors TensorFlow allocates (`TF_AllocateTensor`) rather than lent
//! to it: an output may alias an input (an identity op), and TensorFlow keeps such a buffer
//! past the run. Outputs are copied out, then freed.

use std::ffi::{c_int, CString};
use std::path::{Path, PathBuf};

use gyrus_engine::{
    check_inputs, DataType, EngineError, ModelSignature, ShapePolicy, Tensor, TensorData,
};
use prost::Message;

use crate::capi::{self, Api, Status, TfGraph, TfOutput, TfSession, TfTString, TfTensor};
use crate::proto::ConfigProto;
use crate::saved_model::{self, data_type, tf_data_type, SERVE_TAG};

/// How a session runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// Threads one op may use (`intra_op_parallelism_threads`).
    pub intra_op_threads: i32,
    /// Ops run at once (`inter_op_parallelism_threads`).
    pub inter_op_threads: i32,
}

impl Default for SessionConfig {
    /// One thread each, as the ONNX engine's default: a replica serves many small requests, and
    /// more replicas (not more threads per run) use more cores.
    fn default() -> Self {
        SessionConfig {
            intra_op_threads: 1,
            inter_op_threads: 1,
        }
    }
}

/// A SavedModel loaded for serving.
pub struct Model {
    name: String,
    dir: PathBuf,
    version: Option<u64>,
    signature_key: String,
    signature: ModelSignature,
    feeds: Vec<TfOutput>,
    fetches: Vec<TfOutput>,
    api: &'static Api,
    graph: *mut TfGraph,
    session: *mut TfSession,
}

// SAFETY: TensorFlow's sessions may be run from several threads at once (`TF_SessionRun` is
// thread-safe, as `tf.Session.run` is), and the graph is never changed after the load; the
// raw pointers are only freed in `Drop`.
unsafe impl Send for Model {}
unsafe impl Sync for Model {}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.name)
            .field("dir", &self.dir)
            .field("version", &self.version)
            .field("signature_key", &self.signature_key)
            .finish()
    }
}

impl Model {
    /// Loads the SavedModel of `path` (a SavedModel directory, or one with integer version
    /// subdirectories: the highest is loaded) with `signature_key` (see
    /// [`saved_model::read_signature`]). [`crate::init_library`] must have succeeded first.
    pub fn load(
        name: &str,
        path: &Path,
        signature_key: Option<&str>,
        config: &SessionConfig,
    ) -> Result<Model, EngineError> {
        let load_error = |message: String| EngineError::Load {
            model: name.to_string(),
            path: path.to_path_buf(),
            message,
        };
        let located = saved_model::locate(path).map_err(|e| load_error(e.to_string()))?;
        let serving = saved_model::read_signature(&located.dir, signature_key)
            .map_err(|e| load_error(e.to_string()))?;
        let api = capi::api()?;
        let export_dir = CString::new(located.dir.as_os_str().as_encoded_bytes())
            .map_err(|_| load_error("the path holds a NUL byte".into()))?;
        let tag = CString::new(SERVE_TAG).unwrap_or_default();
        let tags = [tag.as_ptr()];
        let config_bytes = ConfigProto {
            intra_op_parallelism_threads: config.intra_op_threads,
            inter_op_parallelism_threads: config.inter_op_threads,
        }
        .encode_to_vec();
        let status = Status::new(api);
        // SAFETY: every pointer passed is live for the calls; the options are deleted here and
        // the graph and session are owned by the returned Model (or freed on failure).
        let (graph, session) = unsafe {
            let options = (api.new_session_options)();
            (api.set_config)(
                options,
                config_bytes.as_ptr().cast(),
                config_bytes.len(),
                status.raw(),
            );
            if let Err((_, m)) = status.check() {
                (api.delete_session_options)(options);
                return Err(load_error(format!("session options: {m}")));
            }
            let graph = (api.new_graph)();
            let session = (api.load_session_from_saved_model)(
                options,
                std::ptr::null(),
                export_dir.as_ptr(),
                tags.as_ptr(),
                1,
                graph,
                std::ptr::null_mut(),
                status.raw(),
            );
            (api.delete_session_options)(options);
            if let Err((_, m)) = status.check() {
                (api.delete_graph)(graph);
                return Err(load_error(m));
            }
            (graph, session)
        };
        let mut model = Model {
            name: name.to_string(),
            dir: located.dir,
            version: located.version,
            signature_key: serving.key,
            signature: serving.signature,
            feeds: Vec::new(),
            fetches: Vec::new(),
            api,
            graph,
            session,
        };
        model.feeds = serving
            .input_tensors
            .iter()
            .map(|t| model.graph_output(t))
            .collect::<Result<_, _>>()
            .map_err(load_error)?;
        model.fetches = serving
            .output_tensors
            .iter()
            .map(|t| model.graph_output(t))
            .collect::<Result<_, _>>()
            .map_err(load_error)?;
        Ok(model)
    }

    /// The graph's output for a signature's tensor name (`op:index`, or `op` for index 0).
    fn graph_output(&self, tensor: &str) -> Result<TfOutput, String> {
        let (op, index) = match tensor.rsplit_once(':') {
            Some((op, i)) => (
                op,
                i.parse::<c_int>()
                    .ok()
                    .filter(|i| *i >= 0)
                    .ok_or_else(|| format!("bad tensor name {tensor:?} in the signature"))?,
            ),
            None => (tensor, 0),
        };
        let c_op = CString::new(op).map_err(|_| format!("bad tensor name {tensor:?}"))?;
        // SAFETY: the graph is live; the name is NUL-terminated.
        let oper = unsafe { (self.api.graph_operation_by_name)(self.graph, c_op.as_ptr()) };
        // SAFETY: `oper` is checked non-null first.
        if oper.is_null() || index >= unsafe { (self.api.operation_num_outputs)(oper) } {
            return Err(format!(
                "the signature names tensor {tensor:?}, which is not in the loaded graph"
            ));
        }
        Ok(TfOutput { oper, index })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The SavedModel directory loaded.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The version subdirectory loaded, when the model has versions.
    pub fn version(&self) -> Option<u64> {
        self.version
    }

    pub fn signature_key(&self) -> &str {
        &self.signature_key
    }

    pub fn signature(&self) -> &ModelSignature {
        &self.signature
    }

    /// Checks `inputs` against the signature and runs the model. Returns every output, in the
    /// signature's order (by key).
    pub fn infer(
        &self,
        mut inputs: Vec<Tensor>,
        policy: ShapePolicy,
    ) -> Result<Vec<Tensor>, EngineError> {
        check_inputs(&self.signature, &mut inputs, policy)?;
        let api = self.api;
        let mut fed = Tensors {
            api,
            list: Vec::with_capacity(inputs.len()),
            strings: Vec::new(),
        };
        for t in &inputs {
            fed.push(t)?;
        }
        let mut fetched = Tensors {
            api,
            list: vec![std::ptr::null_mut(); self.fetches.len()],
            strings: Vec::new(),
        };
        let status = Status::new(api);
        // SAFETY: feeds and their values have the same length, as do fetches and the output
        // slots; every tensor is live; TensorFlow fills the output slots on success.
        unsafe {
            (api.session_run)(
                self.session,
                std::ptr::null(),
                self.feeds.as_ptr(),
                fed.list.as_ptr(),
                self.feeds.len() as c_int,
                self.fetches.as_ptr(),
                fetched.list.as_mut_ptr(),
                self.fetches.len() as c_int,
                std::ptr::null(),
                0,
                std::ptr::null_mut(),
                status.raw(),
            );
        }
        if let Err((code, message)) = status.check() {
            // The signature matched: what TensorFlow refuses now is in the values (dimensions
            // that disagree, indices out of range).
            return Err(match code {
                capi::TF_INVALID_ARGUMENT | capi::TF_OUT_OF_RANGE => {
                    EngineError::Rejected(first_line(&message))
                }
                _ => EngineError::Run(message),
            });
        }
        let outputs = self
            .signature
            .outputs
            .iter()
            .zip(&fetched.list)
            .map(|(info, &raw)| read_tensor(api, &info.name, raw))
            .collect();
        // Only now: an output may share an input's buffer (a fed tensor fetched, an identity
        // of strings), and freeing the inputs' strings would empty it.
        drop(fetched);
        drop(fed);
        outputs
    }
}

/// TensorFlow's messages carry a multi-line traceback of the graph; the first line says what
/// went wrong.
fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or(message).trim().to_string()
}

impl Drop for Model {
    fn drop(&mut self) {
        let status = Status::new(self.api);
        // SAFETY: made at load, freed once, after every run (runs borrow the model).
        unsafe {
            (self.api.close_session)(self.session, status.raw());
            (self.api.delete_session)(self.session, status.raw());
            (self.api.delete_graph)(self.graph);
        }
    }
}

/// Tensors handed to or received from TensorFlow, deleted on drop (string elements of the
/// inputs first: TensorFlow frees a tensor's buffer, not what its strings allocated).
struct Tensors {
    api: &'static Api,
    list: Vec<*mut TfTensor>,
    /// Input tensors holding strings: (tensor, element count).
    strings: Vec<(*mut TfTensor, usize)>,
}

impl Tensors {
    fn push(&mut self, t: &Tensor) -> Result<(), EngineError> {
        let api = self.api;
        let dims = t.shape.as_slice();
        let count = Tensor::element_count(dims).unwrap_or(0);
        let bytes = match &t.data {
            TensorData::Raw(bytes) => bytes.len(),
            TensorData::Strings(_) => count * std::mem::size_of::<TfTString>(),
        };
        // SAFETY: dims and sizes describe the buffer TensorFlow allocates; it is filled
        // completely before use.
        unsafe {
            let raw = (api.allocate_tensor)(
                tf_data_type(t.dtype),
                dims.as_ptr(),
                dims.len() as c_int,
                bytes,
            );
            if raw.is_null() {
                return Err(EngineError::Run(format!(
                    "TensorFlow could not allocate input \"{}\"",
                    t.name
                )));
            }
            self.list.push(raw);
            let data = (api.tensor_data)(raw);
            match &t.data {
                TensorData::Raw(src) if src.is_empty() => {}
                TensorData::Raw(src) => {
                    std::ptr::copy_nonoverlapping(src.as_ptr(), data.cast::<u8>(), src.len())
                }
                TensorData::Strings(items) => {
                    // `check_inputs` made the shape's count and the items agree; the buffer
                    // was sized from the count.
                    assert_eq!(items.len(), count, "string input checked against its shape");
                    let elements = data.cast::<TfTString>();
                    for (i, item) in items.iter().enumerate() {
                        let e = elements.add(i);
                        (api.string_init)(e);
                        (api.string_copy)(e, item.as_ptr().cast(), item.len());
                    }
                    self.strings.push((raw, items.len()));
                }
            }
        }
        Ok(())
    }
}

impl Drop for Tensors {
    fn drop(&mut self) {
        // SAFETY: each tensor was made by TF_AllocateTensor or returned by TF_SessionRun and is
        // deleted once; string elements were initialised by us.
        unsafe {
            for &(raw, count) in &self.strings {
                let elements = (self.api.tensor_data)(raw).cast::<TfTString>();
                for i in 0..count {
                    (self.api.string_dealloc)(elements.add(i));
                }
            }
            for &raw in &self.list {
                if !raw.is_null() {
                    (self.api.delete_tensor)(raw);
                }
            }
        }
    }
}

/// Copies an output tensor out of TensorFlow.
fn read_tensor(api: &Api, name: &str, raw: *mut TfTensor) -> Result<Tensor, EngineError> {
    if raw.is_null() {
        return Err(EngineError::Run(format!(
            "TensorFlow returned no output \"{name}\""
        )));
    }
    // SAFETY: `raw` is a live tensor returned by TF_SessionRun; its data holds byte_size bytes
    // (TF_TString elements for strings).
    unsafe {
        let code = (api.tensor_type)(raw);
        let dtype = data_type(code).ok_or_else(|| {
            EngineError::Run(format!(
                "output \"{name}\" has element type {}, which gyrus cannot serve",
                crate::proto::dtype::name(code)
            ))
        })?;
        let rank = (api.num_dims)(raw);
        let shape: Vec<i64> = (0..rank).map(|i| (api.dim)(raw, i)).collect();
        let size = (api.tensor_byte_size)(raw);
        let data = (api.tensor_data)(raw);
        let data = if dtype == DataType::String {
            let count = Tensor::element_count(&shape).unwrap_or(0);
            let elements = data.cast::<TfTString>().cast_const();
            TensorData::Strings(
                (0..count)
                    .map(|i| {
                        let e = elements.add(i);
                        let p = (api.string_get_data_pointer)(e).cast::<u8>();
                        let n = (api.string_get_size)(e);
                        if n == 0 || p.is_null() {
                            Vec::new()
                        } else {
                            std::slice::from_raw_parts(p, n).to_vec()
                        }
                    })
                    .collect(),
            )
        } else if size == 0 {
            TensorData::Raw(Vec::new())
        } else {
            TensorData::Raw(std::slice::from_raw_parts(data.cast::<u8>(), size).to_vec())
        };
        Ok(Tensor {
            name: name.to_string(),
            dtype,
            shape,
            data,
        })
    }
}
