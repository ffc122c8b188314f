//! Where an API's models come from. A `model:` (or an entry of `models`) is a project path, a
//! model store tag or a URL (see [`gyrus_spec::ModelRef`]); this module turns each into a local
//! file or directory: store tags are pinned to a version when the deploy is accepted, URLs are
//! fetched into the shared download cache (gyrus-remote) while the deploy runs, and the ONNX
//! file of each model is picked out and named as the Open Inference Protocol addresses it.
//! A TensorFlow model is a SavedModel directory (or one with integer version directories);
//! its signature key is checked against `saved_model.pb` here, before any replica starts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gyrus_remote::{FetchOptions, Freshness, Progress, RemoteCache};
use gyrus_spec::{ApiSpec, ModelRef, ModelTag, PredictorType};
use gyrus_store::ModelStore;

/// What a deploy brings for fetching URLs: the deploying user's environment (credentials,
/// region, endpoint) and whether to ask the server for the current version.
#[derive(Clone)]
pub struct FetchContext {
    pub env: BTreeMap<String, String>,
    pub freshness: Freshness,
}

/// Names only: the values are credentials.
impl std::fmt::Debug for FetchContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchContext")
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("freshness", &self.freshness)
            .finish()
    }
}

impl FetchContext {
    /// A restart of the daemon or a refresh: the user's credentials are not at hand, so use
    /// the last complete download when there is one.
    pub fn cached() -> FetchContext {
        FetchContext {
            env: BTreeMap::new(),
            freshness: Freshness::PreferCached,
        }
    }
}

/// The local files of an API's models.
#[derive(Debug, Default)]
pub struct ResolvedModels {
    /// `predictor.model` as a local path, for Python predictors (Cortex's `model_path`).
    pub model_path: Option<PathBuf>,
    /// The engine's models: ONNX files, or SavedModel directories.
    pub models: Vec<ResolvedModel>,
}

/// One model for the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedModel {
    pub name: String,
    /// The `.onnx` file, or the SavedModel directory (holding `saved_model.pb` or integer
    /// version directories).
    pub path: PathBuf,
    /// The SavedModel signature to serve, as configured (`None`: the default).
    pub signature_key: Option<String>,
    /// The `batch_dim` of a store model whose signature says `batchable`.
    pub store_batch_dim: Option<i64>,
}

/// Why an API's models cannot be found, with the field of the spec that names them.
#[derive(Debug, thiserror::Error)]
pub enum ModelSourceError {
    #[error("{context}: {source}")]
    Store {
        context: String,
        source: gyrus_store::StoreError,
    },
    #[error("{context}: {source}")]
    Remote {
        context: String,
        source: gyrus_remote::FetchError,
    },
    /// The spec names something that is not a usable model (bad reference, names, contents).
    #[error("{0}")]
    Invalid(String),
    /// Reading a local model directory failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

impl ModelSourceError {
    /// The deploy's mistake (its config, its models), as opposed to this machine's fault.
    pub fn is_client_error(&self) -> bool {
        match self {
            Self::Store { source, .. } => source.is_client_error(),
            Self::Remote { source, .. } => source.is_client_error(),
            Self::Invalid(_) => true,
            Self::Io { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
        }
    }

    /// The same error, said about `field` of the spec.
    fn at(self, field: &str) -> Self {
        match self {
            Self::Store { context, source } => Self::Store {
                context: format!("{field}: {context}"),
                source,
            },
            Self::Remote { context, source } => Self::Remote {
                context: format!("{field}: {context}"),
                source,
            },
            Self::Invalid(m) => Self::Invalid(format!("{field}: {m}")),
            Self::Io { context, source } => Self::Io {
                context: format!("{field}: {context}"),
                source,
            },
        }
    }
}

pub struct ModelSources {
    pub store: Arc<ModelStore>,
    pub remote: RemoteCache,
    /// Where model archives (`.tar.gz` SavedModels) are unpacked (see `model_archive`).
    pub unpacked: PathBuf,
}

/// Every model reference an API spec holds, with the field it came from (for messages).
fn references(spec: &ApiSpec) -> Vec<(String, &String)> {
    let p = &spec.predictor;
    let mut out: Vec<(String, &String)> = Vec::new();
    if let Some(m) = &p.model {
        out.push(("predictor.model".into(), m));
    }
    if let Some(models) = &p.models {
        for (i, m) in models.paths.iter().enumerate() {
            out.push((format!("predictor.models[{i}].model"), &m.model));
        }
    }
    out
}

impl ModelSources {
    /// Rewrites every store tag of `spec` to the exact version it names now (`iris:latest`
    /// becomes `iris:c5r2…`), so that a later save does not change a deployed API until it is
    /// deployed again, and `gyrus models delete` knows what is in use.
    pub fn pin(&self, spec: &mut ApiSpec) -> Result<(), ModelSourceError> {
        let name = spec.name.clone();
        let p = &mut spec.predictor;
        let kind = p.kind;
        let slots = p
            .model
            .iter_mut()
            .map(|m| ("predictor.model".to_string(), m))
            .chain(p.models.iter_mut().flat_map(|ms| {
                ms.paths
                    .iter_mut()
                    .enumerate()
                    .map(|(i, m)| (format!("predictor.models[{i}].model"), &mut m.model))
            }));
        for (field, slot) in slots {
            if let Ok(ModelRef::Tag(tag)) = ModelRef::parse(slot) {
                let found = self
                    .store
                    .resolve(&tag)
                    .map_err(|source| ModelSourceError::Store {
                        context: format!("api {name:?}: {field}"),
                        source,
                    })?;
                Self::check_framework(kind, &found.info).map_err(|m| {
                    ModelSourceError::Invalid(format!(
                        "api {name:?}: {field}: {}: {m}",
                        found.tag()
                    ))
                })?;
                *slot = found.tag();
            }
        }
        Ok(())
    }

    /// The store version `info` must suit the predictor: an ONNX predictor serves ONNX models, a
    /// TensorFlow one SavedModels (a Python predictor gets the directory, whatever it holds).
    fn check_framework(kind: PredictorType, info: &gyrus_store::ModelInfo) -> Result<(), String> {
        let framework = info.framework();
        match kind {
            PredictorType::Onnx if info.is_tensorflow() => Err(
                "it is a TensorFlow SavedModel, which predictor.type onnx cannot serve; use \
             predictor.type: tensorflow"
                    .into(),
            ),
            PredictorType::Tensorflow if !info.is_tensorflow() => Err(format!(
            "it is {} model, which predictor.type tensorflow cannot serve; use predictor.type: \
             {framework}, or save a TensorFlow SavedModel",
            if framework == "onnx" { "an ONNX".to_string() } else { format!("a {framework}") },
        )),
            _ => Ok(()),
        }
    }

    /// The store versions (`name:version`) that `spec` uses, once pinned.
    pub fn store_tags(spec: &ApiSpec) -> Vec<String> {
        references(spec)
            .into_iter()
            .filter_map(|(_, r)| match ModelRef::parse(r) {
                Ok(ModelRef::Tag(t)) => t.version.as_ref().map(|v| format!("{}:{v}", t.name)),
                _ => None,
            })
            .collect()
    }

    /// The local files of the API's models, fetching URLs as needed. `progress` sees the bytes
    /// of each download as they arrive.
    pub async fn resolve(
        &self,
        spec: &ApiSpec,
        project_dir: &Path,
        fetch: &FetchContext,
        progress: &(dyn Fn(&Progress) + Send + Sync),
    ) -> Result<ResolvedModels, ModelSourceError> {
        let options = FetchOptions {
            env: fetch.env.clone(),
            s3_endpoint_url: spec
                .predictor
                .s3
                .as_ref()
                .and_then(|s| s.endpoint_url.clone()),
            s3_region: spec.predictor.s3.as_ref().and_then(|s| s.region.clone()),
        };
        let locate = |raw: String, field: String| {
            let options = &options;
            async move {
                self.locate(&raw, project_dir, options, fetch.freshness, progress)
                    .await
                    .map_err(|e| e.at(&field))
            }
        };
        let p = &spec.predictor;
        if p.kind == PredictorType::Python {
            let model_path = match &p.model {
                Some(m) => Some(locate(m.clone(), "predictor.model".into()).await?),
                None => None,
            };
            return Ok(ResolvedModels {
                model_path,
                models: Vec::new(),
            });
        }
        let tensorflow = p.kind == PredictorType::Tensorflow;
        let model_of = |name: String, path: &Path, key: Option<&String>| {
            if tensorflow {
                let key = key.or(p.signature_key.as_ref()).cloned();
                let path = if crate::model_archive::is_archive(path) {
                    blocking(|| crate::model_archive::unpack(path, &self.unpacked))?
                } else {
                    path.to_path_buf()
                };
                saved_model(name, &path, key)
            } else {
                Ok(ResolvedModel {
                    name,
                    path: onnx_file(path)?,
                    signature_key: None,
                    store_batch_dim: None,
                })
            }
        };
        let mut models = Vec::new();
        if let Some(m) = &p.model {
            let field = "predictor.model";
            let path = locate(m.clone(), field.into()).await?;
            let mut model = model_of(spec.name.clone(), &path, None).map_err(|e| e.at(field))?;
            model.store_batch_dim = self.store_batch_dim(m);
            models.push(model);
        }
        if let Some(ms) = &p.models {
            for (i, m) in ms.paths.iter().enumerate() {
                let field = format!("predictor.models[{i}].model");
                let path = locate(m.model.clone(), field.clone()).await?;
                let key = m.signature_key.as_ref().or(ms.signature_key.as_ref());
                let mut model = model_of(m.name.clone(), &path, key).map_err(|e| e.at(&field))?;
                model.store_batch_dim = self.store_batch_dim(&m.model);
                models.push(model);
            }
            if let Some(dir) = &ms.dir {
                let root = locate(dir.clone(), "predictor.models.dir".into()).await?;
                if tensorflow {
                    for (name, path) in saved_models_in_dir(&root, dir)? {
                        let field = format!("predictor.models.dir {dir}/{name}");
                        let key = ms.signature_key.as_ref();
                        models.push(model_of(name, &path, key).map_err(|e| e.at(&field))?);
                    }
                } else {
                    for (name, path) in models_in_dir(&root, dir)? {
                        models.push(ResolvedModel {
                            name,
                            path,
                            signature_key: None,
                            store_batch_dim: None,
                        });
                    }
                }
            }
        }
        check_names(&models)?;
        Ok(ResolvedModels {
            model_path: None,
            models,
        })
    }

    async fn locate(
        &self,
        raw: &str,
        project_dir: &Path,
        options: &FetchOptions,
        freshness: Freshness,
        progress: &(dyn Fn(&Progress) + Send + Sync),
    ) -> Result<PathBuf, ModelSourceError> {
        match ModelRef::parse(raw).map_err(ModelSourceError::Invalid)? {
            ModelRef::Path(p) => Ok(project_dir.join(p)),
            ModelRef::Tag(tag) => self.store_path(&tag),
            ModelRef::Url(url) => self
                .remote
                .fetch(&url, options, freshness, progress)
                .await
                .map(|f| f.path)
                .map_err(|source| ModelSourceError::Remote {
                    context: url.to_string(),
                    source,
                }),
        }
    }

    /// The `batch_dim` of a store model (`raw` a tag) whose signature says `batchable`, as
    /// BentoML records it for models saved with a dynamic batch axis.
    fn store_batch_dim(&self, raw: &str) -> Option<i64> {
        let Ok(ModelRef::Tag(tag)) = ModelRef::parse(raw) else {
            return None;
        };
        let stored = self.store.resolve(&tag).ok()?;
        stored
            .info
            .signatures
            .values()
            .find(|s| s.batchable)
            .map(|s| s.batch_dim)
    }

    fn store_path(&self, tag: &ModelTag) -> Result<PathBuf, ModelSourceError> {
        self.store
            .resolve(tag)
            .map(|m| m.path)
            .map_err(|source| ModelSourceError::Store {
                context: tag.to_string(),
                source,
            })
    }
}

/// Runs file-system work that can take a while (unpacking an archive) without holding up the
/// daemon's other tasks: the daemon's runtime has several threads, and this one is handed
/// over while `f` runs.
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// A model given as a directory (a store version, a downloaded prefix) is its one ONNX file.
fn onnx_file(path: &Path) -> Result<PathBuf, ModelSourceError> {
    if path.is_dir() {
        gyrus_store::model_file(path).map_err(|source| ModelSourceError::Store {
            context: path.display().to_string(),
            source,
        })
    } else {
        Ok(path.to_path_buf())
    }
}

/// `models.dir`: each `*.onnx` file is named by its stem and each subdirectory holding a model
/// (by the store's rule: `saved_model.onnx`, else its one `.onnx` file) by the subdirectory's
/// name.
fn models_in_dir(root: &Path, dir: &str) -> Result<Vec<(String, PathBuf)>, ModelSourceError> {
    let entries = std::fs::read_dir(root).map_err(|source| ModelSourceError::Io {
        context: format!("models.dir {dir}"),
        source,
    })?;
    let is_onnx = |p: &Path| {
        p.is_file()
            && p.extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_onnx(&path) {
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or(name);
            found.push((stem, path));
        } else if path.is_dir() {
            match gyrus_store::model_file(&path) {
                Ok(file) => found.push((name, file)),
                // A subdirectory without any .onnx file is not a model; one with several
                // (and no saved_model.onnx) is a mistake worth stopping for.
                Err(gyrus_store::StoreError::NoModelFile { found: files, .. })
                    if !files.iter().any(|f| is_onnx(&path.join(f))) => {}
                Err(source) => {
                    return Err(ModelSourceError::Store {
                        context: format!("models.dir {dir}/{name}"),
                        source,
                    })
                }
            }
        }
    }
    if found.is_empty() {
        return Err(ModelSourceError::Invalid(format!(
            "models.dir {dir} holds no models (*.onnx files, or directories with one .onnx file)"
        )));
    }
    found.sort();
    Ok(found)
}

/// Checks the SavedModels of a TensorFlow API that are in the project (not URLs or store
/// tags, which are only at hand once fetched), so that a deploy with a wrong `signature_key`
/// or a directory that is not a SavedModel is refused at once.
pub fn check_project_saved_models(
    spec: &ApiSpec,
    project_dir: &Path,
) -> Result<(), ModelSourceError> {
    let p = &spec.predictor;
    if p.kind != PredictorType::Tensorflow {
        return Ok(());
    }
    // Archives are unpacked, and checked, while the deploy runs.
    let local = |raw: &str| match ModelRef::parse(raw) {
        Ok(ModelRef::Path(path)) => {
            Some(project_dir.join(path)).filter(|p| !crate::model_archive::is_archive(p))
        }
        _ => None,
    };
    if let Some(path) = p.model.as_deref().and_then(local) {
        saved_model(spec.name.clone(), &path, p.signature_key.clone())
            .map_err(|e| e.at("predictor.model"))?;
    }
    if let Some(ms) = &p.models {
        for (i, m) in ms.paths.iter().enumerate() {
            if let Some(path) = local(&m.model) {
                let key = m
                    .signature_key
                    .as_ref()
                    .or(ms.signature_key.as_ref())
                    .or(p.signature_key.as_ref());
                saved_model(m.name.clone(), &path, key.cloned())
                    .map_err(|e| e.at(&format!("predictor.models[{i}].model")))?;
            }
        }
        if let Some(dir) = &ms.dir {
            if let Some(root) = local(dir) {
                let key = ms.signature_key.as_ref().or(p.signature_key.as_ref());
                for (name, path) in saved_models_in_dir(&root, dir)? {
                    let field = format!("predictor.models.dir {dir}/{name}");
                    saved_model(name, &path, key.cloned()).map_err(|e| e.at(&field))?;
                }
            }
        }
    }
    Ok(())
}

/// A TensorFlow model: its directory must hold a SavedModel (or integer version directories
/// with one), and the signature to serve must be in it: checked here, with TensorFlow's own
/// file format and without TensorFlow, so a wrong `signature_key` fails the deploy with the
/// signatures the model has.
pub fn saved_model(
    name: String,
    path: &Path,
    signature_key: Option<String>,
) -> Result<ResolvedModel, ModelSourceError> {
    use gyrus_tensorflow::saved_model;
    let invalid = |e: gyrus_tensorflow::SavedModelError| ModelSourceError::Invalid(e.to_string());
    let located = saved_model::locate(path).map_err(invalid)?;
    saved_model::read_signature(&located.dir, signature_key.as_deref()).map_err(invalid)?;
    Ok(ResolvedModel {
        name,
        path: path.to_path_buf(),
        signature_key,
        store_batch_dim: None,
    })
}

/// `models.dir` of a TensorFlow predictor: each subdirectory holding a SavedModel (or version
/// directories with one) is a model named by the subdirectory.
fn saved_models_in_dir(root: &Path, dir: &str) -> Result<Vec<(String, PathBuf)>, ModelSourceError> {
    let entries = std::fs::read_dir(root).map_err(|source| ModelSourceError::Io {
        context: format!("models.dir {dir}"),
        source,
    })?;
    let mut found: Vec<(String, PathBuf)> = entries
        .flatten()
        .filter(|e| gyrus_tensorflow::saved_model::is_model_dir(&e.path()))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    if found.is_empty() {
        return Err(ModelSourceError::Invalid(format!(
            "models.dir {dir} holds no TensorFlow models (directories with saved_model.pb, or with integer version directories holding one)"
        )));
    }
    found.sort();
    Ok(found)
}

/// Names from file names reach URLs and the replica's `--model NAME=PATH` argument.
fn check_names(models: &[ResolvedModel]) -> Result<(), ModelSourceError> {
    let mut seen = std::collections::HashSet::new();
    for ResolvedModel { name, path, .. } in models {
        if let Err(rule) = gyrus_spec::check_model_name(name) {
            return Err(ModelSourceError::Invalid(format!(
                "model name (from {}) {rule}; rename the file",
                path.display()
            )));
        }
        if !seen.insert(name.as_str()) {
            return Err(ModelSourceError::Invalid(format!(
                "two models are named {name:?}; model names must be unique within an API"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(extra: &str) -> gyrus_store::ModelInfo {
        gyrus_store::ModelInfo::from_yaml(&format!(
            "name: m\nversion: v\ncreation_time: '2026-01-01T00:00:00+00:00'\nsize: 0\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn store_versions_must_suit_the_predictor() {
        let tf = info("module: gyrus.tensorflow\ncontext:\n  framework_name: tensorflow\n");
        let onnx = info("module: gyrus.onnx\ncontext:\n  framework_name: onnx\n");
        let old = info("");
        let check = ModelSources::check_framework;
        assert!(check(PredictorType::Tensorflow, &tf).is_ok());
        assert!(check(PredictorType::Onnx, &onnx).is_ok());
        assert!(check(PredictorType::Onnx, &old).is_ok());
        for m in [&tf, &onnx, &old] {
            assert!(check(PredictorType::Python, m).is_ok());
        }
        let err = check(PredictorType::Onnx, &tf).unwrap_err();
        assert!(
            err.contains("TensorFlow SavedModel") && err.contains("type: tensorflow"),
            "{err}"
        );
        let err = check(PredictorType::Tensorflow, &onnx).unwrap_err();
        assert!(
            err.contains("an ONNX model") && err.contains("type: onnx"),
            "{err}"
        );
        assert!(check(PredictorType::Tensorflow, &old).is_err());
    }
}
