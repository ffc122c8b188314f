//! The model store's part of the control API (`/_gyrus/v1/models`): save (an uploaded file or
//! directory, validated by loading it in ONNX Runtime in a child process, so a model that
//! crashes the runtime cannot take the daemon down), list, get, delete (refused while a deployed
//! API uses the version, unless forced), export and import. The store itself is gyrus-store;
//! this module adds what needs the daemon: uploads, validation and knowing what is in use.

use std::collections::BTreeMap;
use std::io::{Seek, SeekFrom};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use gyrus_spec::ModelTag;
// MAX_MODEL_BYTES bounds uploads and imports (bodies stream to disk, not to memory).
use gyrus_store::info::{self, TF_SAVED_MODEL_PB};
use gyrus_store::{Context, NewModel, Signature, StoredModel, TensorSpec, MAX_MODEL_BYTES};
use serde::Deserialize;

use crate::api::{ModelEntry, SaveRequest, SAVE_HEADER};
use crate::error::DaemonError;
use crate::model_source::ModelSources;
use crate::server::AppState;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/models", get(list).post(save))
        .route("/models/import", post(import))
        .route("/models/{tag}", get(get_model).delete(delete_model))
        .route("/models/{tag}/export", get(export))
}

fn parse_tag(raw: &str) -> Result<ModelTag, DaemonError> {
    ModelTag::parse(raw).map_err(DaemonError::BadRequest)
}

/// Which deployed APIs use each store version (`name:version` → API names): their stored
/// specs, and what the supervisor runs (an older generation still serving after a failed
/// deploy needs its version to restart replicas).
fn usage(app: &AppState) -> Result<BTreeMap<String, Vec<String>>, DaemonError> {
    let mut specs: Vec<(String, gyrus_spec::ApiSpec)> = app.supervisor.specs_in_use();
    for api in app.state.list()? {
        if let Ok(spec) = serde_json::from_str::<gyrus_spec::ApiSpec>(&api.spec_json) {
            specs.push((api.name, spec));
        }
    }
    let mut used: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, spec) in specs {
        for tag in ModelSources::store_tags(&spec) {
            let apis = used.entry(tag).or_default();
            if !apis.contains(&name) {
                apis.push(name.clone());
            }
        }
    }
    Ok(used)
}

fn entry(model: StoredModel, used: &BTreeMap<String, Vec<String>>) -> ModelEntry {
    let tag = model.tag();
    ModelEntry {
        used_by: used.get(&tag).cloned().unwrap_or_default(),
        tag,
        path: model.path.display().to_string(),
        info: model.info,
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, DaemonError> + Send + 'static,
) -> Result<T, DaemonError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| DaemonError::Internal(format!("model store task: {e}")))?
}

#[derive(Deserialize)]
struct ListQuery {
    name: Option<String>,
}

async fn list(
    State(app): State<Arc<AppState>>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<ModelEntry>>, DaemonError> {
    if let Some(name) = &q.name {
        gyrus_spec::check_tag_part("name", name).map_err(DaemonError::BadRequest)?;
    }
    let used = usage(&app)?;
    let store = app.sources.store.clone();
    let models = blocking(move || Ok(store.list(q.name.as_deref())?)).await?;
    Ok(Json(models.into_iter().map(|m| entry(m, &used)).collect()))
}

async fn get_model(
    State(app): State<Arc<AppState>>,
    Path(raw): Path<String>,
) -> Result<Json<ModelEntry>, DaemonError> {
    let tag = parse_tag(&raw)?;
    let used = usage(&app)?;
    let store = app.sources.store.clone();
    let model = blocking(move || Ok(store.resolve(&tag)?)).await?;
    Ok(Json(entry(model, &used)))
}

#[derive(Deserialize)]
struct DeleteQuery {
    #[serde(default)]
    force: bool,
}

async fn delete_model(
    State(app): State<Arc<AppState>>,
    Path(raw): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> Result<Json<ModelEntry>, DaemonError> {
    let tag = parse_tag(&raw)?;
    // Deploys pin versions under this lock; holding it keeps a deploy from pinning the version
    // being deleted.
    let _op = app.deploys.exclusive().await;
    let used = usage(&app)?;
    let store = app.sources.store.clone();
    let model = blocking(move || {
        let model = store.resolve(&tag)?;
        let full = model.tag();
        if let Some(apis) = used.get(&full).filter(|_| !q.force) {
            return Err(DaemonError::Conflict(format!(
                "{full} is used by {} {}; delete {} first, or pass --force (its replicas keep \
                 running, but cannot restart)",
                if apis.len() == 1 { "API" } else { "APIs" },
                apis.join(", "),
                if apis.len() == 1 { "it" } else { "them" },
            )));
        }
        let exact = ModelTag {
            name: model.info.name.clone(),
            version: Some(model.info.version.clone()),
        };
        let deleted = store.delete(&exact)?;
        Ok(entry(deleted, &used))
    })
    .await?;
    Ok(Json(model))
}

/// Streams a model upload to an anonymous file in the store's staging directory, in one of
/// the daemon's few upload slots (bounded in size and time). The slot is returned with the
/// file: whoever unpacks the upload holds it until done, even if the client goes away.
async fn spool(
    app: &AppState,
    body: Body,
) -> Result<(std::fs::File, tokio::sync::OwnedSemaphorePermit), DaemonError> {
    let permit = app.upload_permit()?;
    let upload = crate::project::spool(body, &staging_dir(app), MAX_MODEL_BYTES).await?;
    Ok((upload.file, permit))
}

fn staging_dir(app: &AppState) -> std::path::PathBuf {
    app.sources.store.root().join(".staging")
}

/// What `gyrus inspect-model` prints.
#[derive(Deserialize)]
struct Inspection {
    onnxruntime: String,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
}

async fn save(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<ModelEntry>, DaemonError> {
    let request: SaveRequest = crate::server::json_header(&headers, SAVE_HEADER)?
        .ok_or_else(|| DaemonError::BadRequest(format!("missing the {SAVE_HEADER} header")))?;
    gyrus_spec::check_tag_part("name", &request.name)
        .map_err(|e| DaemonError::BadRequest(format!("--name: {e}")))?;
    let (upload, slot) = spool(&app, body).await?;
    let store = app.sources.store.clone();
    let staging = blocking(move || {
        let _slot = slot;
        let staging = store.begin()?;
        staging.unpack_upload(upload, MAX_MODEL_BYTES)?;
        Ok(staging)
    })
    .await?;
    let new = if staging.dir().join(TF_SAVED_MODEL_PB).is_file() {
        let dir = staging.dir().to_path_buf();
        blocking(move || saved_model_info(&dir, request)).await?
    } else {
        refuse_versioned_saved_model(staging.dir())?;
        onnx_info(&app, staging.dir(), request).await?
    };
    let used = usage(&app)?;
    let model = blocking(move || Ok(staging.commit(new)?)).await?;
    tracing::info!("saved model {}", model.tag());
    Ok(Json(entry(model, &used)))
}

/// The signatures of a new version: the options the request gives (`{run: {batchable: false}}`
/// when none), with `key`'s inputs and outputs.
fn signatures(
    request: &SaveRequest,
    key: &str,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
) -> BTreeMap<String, Signature> {
    let mut signatures: BTreeMap<String, Signature> = request
        .signatures
        .iter()
        .map(|(method, s)| {
            (
                method.clone(),
                Signature {
                    batchable: s.batchable,
                    batch_dim: s.batch_dim,
                    input_spec: Vec::new(),
                    output_spec: Vec::new(),
                },
            )
        })
        .collect();
    let main = signatures.entry(key.into()).or_default();
    main.input_spec = inputs;
    main.output_spec = outputs;
    signatures
}

/// An ONNX upload: its model file is loaded by `gyrus inspect-model` in ONNX Runtime (a child
/// process, so a model that crashes the runtime cannot take the daemon down).
async fn onnx_info(
    app: &AppState,
    dir: &std::path::Path,
    request: SaveRequest,
) -> Result<NewModel, DaemonError> {
    let file = gyrus_store::model_file(dir).map_err(|e| {
        // Name what was uploaded, not the staging directory it sits in.
        let found = match &e {
            gyrus_store::StoreError::NoModelFile { found, .. } if found.is_empty() => {
                "nothing".to_string()
            }
            gyrus_store::StoreError::NoModelFile { found, .. } => found.join(", "),
            other => other.to_string(),
        };
        DaemonError::BadRequest(format!(
            "gyrus models save takes an ONNX model (a .onnx file, or a directory with \
             saved_model.onnx or exactly one top-level .onnx file, and its external data) or a \
             TensorFlow SavedModel (a directory with saved_model.pb and its variables/); \
             found: {found}"
        ))
    })?;

    let log = app.home.logs().join("models.log");
    let library = app
        .envs
        .runtime_library(&crate::pyenv::ONNX_RUNTIME, &log)
        .await
        .map_err(|e| DaemonError::Internal(format!("preparing ONNX Runtime: {e}")))?;
    let output = tokio::process::Command::new(&app.self_exe)
        .arg("inspect-model")
        .arg("--onnx-library")
        .arg(&library)
        .arg(&file)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| DaemonError::io("running gyrus inspect-model", e))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let reason = stderr.trim().trim_start_matches("error: ");
        return Err(DaemonError::BadRequest(if reason.is_empty() {
            format!("ONNX Runtime crashed loading the model ({})", output.status)
        } else {
            format!("the model does not load in ONNX Runtime: {reason}")
        }));
    }
    let inspection: Inspection = serde_json::from_slice(&output.stdout)
        .map_err(|e| DaemonError::Internal(format!("reading gyrus inspect-model: {e}")))?;
    Ok(NewModel {
        signatures: signatures(&request, "run", inspection.inputs, inspection.outputs),
        name: request.name,
        module: info::MODULE_ONNX.into(),
        labels: request.labels,
        metadata: request.metadata,
        options: serde_json::Map::new(),
        context: Context {
            framework_name: info::FRAMEWORK_ONNX.into(),
            framework_versions: [("onnxruntime".to_string(), inspection.onnxruntime)]
                .into_iter()
                .collect(),
            gyrus_version: env!("CARGO_PKG_VERSION").into(),
        },
    })
}

/// A TensorFlow SavedModel upload, stored as the directory it is. Its serving signature
/// (`serving_default`, else the only one) is read from `saved_model.pb` with TensorFlow's own
/// file format, without TensorFlow: a SavedModel gyrus cannot serve is refused here.
fn saved_model_info(dir: &std::path::Path, request: SaveRequest) -> Result<NewModel, DaemonError> {
    use gyrus_tensorflow::saved_model;
    let served = saved_model::read_signature(dir, None).map_err(|e| {
        DaemonError::BadRequest(format!(
            "the TensorFlow SavedModel cannot be served: {}",
            strip_staging(&e.to_string(), dir)
        ))
    })?;
    let spec = |infos: &[gyrus_engine::TensorInfo]| -> Vec<TensorSpec> {
        infos
            .iter()
            .map(|t| TensorSpec {
                name: t.name.clone(),
                datatype: t.dtype.oip_name().to_string(),
                shape: t.shape.clone(),
            })
            .collect()
    };
    let inputs = spec(&served.signature.inputs);
    let outputs = spec(&served.signature.outputs);
    let mut framework_versions = BTreeMap::new();
    if let Some(version) = saved_model::writer_version(dir) {
        framework_versions.insert("tensorflow".to_string(), version);
    }
    Ok(NewModel {
        signatures: signatures(&request, &served.key, inputs, outputs),
        name: request.name,
        module: info::MODULE_TENSORFLOW.into(),
        labels: request.labels,
        metadata: request.metadata,
        options: serde_json::Map::new(),
        context: Context {
            framework_name: info::FRAMEWORK_TENSORFLOW.into(),
            framework_versions,
            gyrus_version: env!("CARGO_PKG_VERSION").into(),
        },
    })
}

/// A directory of TensorFlow Serving version directories (`1/saved_model.pb`, ...) is one
/// model with several versions, which a store version cannot hold: `gyrus models save` uploads
/// the highest one; anything else uploading such a tree is told what to do.
fn refuse_versioned_saved_model(dir: &std::path::Path) -> Result<(), DaemonError> {
    match gyrus_tensorflow::saved_model::locate(dir) {
        Ok(found) => Err(DaemonError::BadRequest(format!(
            "the upload holds TensorFlow SavedModel version directories (the highest is {}); \
             a store version is one SavedModel: upload the contents of one version directory \
             (gyrus models save DIR takes the highest by itself)",
            found.version.unwrap_or_default()
        ))),
        Err(_) => Ok(()),
    }
}

/// Error texts name the uploaded directory, not the staging directory it sits in.
fn strip_staging(message: &str, dir: &std::path::Path) -> String {
    message
        .replace(&format!("{}/", dir.display()), "")
        .replace(&dir.display().to_string(), "the upload")
}

async fn export(
    State(app): State<Arc<AppState>>,
    Path(raw): Path<String>,
) -> Result<Response, DaemonError> {
    let tag = parse_tag(&raw)?;
    let store = app.sources.store.clone();
    let dir = staging_dir(&app);
    let (model, file) = blocking(move || {
        let mut file = tempfile::tempfile_in(&dir)
            .map_err(|e| DaemonError::io(format!("creating a file in {}", dir.display()), e))?;
        let model = store.export(&tag, &mut file)?;
        file.seek(SeekFrom::Start(0))
            .map_err(|e| DaemonError::io("rewinding the export", e))?;
        Ok((model, file))
    })
    .await?;
    let length = file.metadata().map(|m| m.len()).ok();
    let stream = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file));
    let mut response = Body::from_stream(stream).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/gzip"),
    );
    if let Some(length) = length {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"{}-{}.tar.gz\"",
        model.info.name, model.info.version
    )) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&model.tag()) {
        h.insert("x-gyrus-model-tag", v);
    }
    Ok(response)
}

async fn import(
    State(app): State<Arc<AppState>>,
    body: Body,
) -> Result<Json<ModelEntry>, DaemonError> {
    let (upload, slot) = spool(&app, body).await?;
    let used = usage(&app)?;
    let store = app.sources.store.clone();
    let model = blocking(move || {
        let _slot = slot;
        Ok(store.import(upload)?)
    })
    .await?;
    tracing::info!("imported model {}", model.tag());
    Ok(Json(entry(model, &used)))
}
