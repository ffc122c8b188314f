//! The supervisor: the daemon's API controllers (one [`ApiController`] per API), what happens
//! before a version can start (its Python environment, its models from the project, the store
//! or a URL, and the [`Generation`] its replicas are launched from), bringing APIs back after a
//! restart, and the clocks that drive the controllers: the autoscaler's interval and the
//! heartbeat watch.
//!
//! The per-API logic (generations, rollouts, restarts, scaling) is in `crate::controller`;
//! starting processes is the launcher's (`crate::launcher`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gyrus_launch::ModelFile;
use gyrus_spec::{ApiSpec, PredictorType};

use crate::api::{ApiInfo, DownloadProgress};
use crate::api_log;
use crate::controller::{
    ApiController, ControllerContext, FailedDeploy, Generation, GenerationRecorder,
};
use crate::home::GyrusHome;
use crate::model_source::{FetchContext, ModelSources, ResolvedModels};
use crate::pyenv::PythonEnvs;
use crate::state::{StateStore, StoredApi};

pub struct Supervisor {
    home: GyrusHome,
    envs: Arc<PythonEnvs>,
    sources: Arc<ModelSources>,
    ctx: Arc<ControllerContext>,
    apis: Mutex<HashMap<String, Arc<ApiController>>>,
}

impl GenerationRecorder for StateStore {
    fn serving(&self, stored: &StoredApi) {
        if let Err(e) = self.set_serving(stored) {
            tracing::error!(
                "api {}: recording generation {} as serving: {e}",
                stored.name,
                stored.generation
            );
        }
    }

    fn failed(&self, api: &str, generation: u64, error: &str) {
        if let Err(e) = self.set_error(api, generation, error) {
            tracing::error!("api {api}: recording the failure of generation {generation}: {e}");
        }
    }
}

impl Supervisor {
    /// `ctx` is what every controller shares: the launcher, the route table, the recorder of
    /// generations, the observer of their metrics.
    pub fn new(
        home: GyrusHome,
        envs: Arc<PythonEnvs>,
        sources: Arc<ModelSources>,
        ctx: ControllerContext,
    ) -> Arc<Self> {
        let ctx = Arc::new(ctx);
        Arc::new(Self {
            home,
            envs,
            sources,
            ctx,
            apis: Mutex::new(HashMap::new()),
        })
    }

    fn apis(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<ApiController>>> {
        self.apis.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn controller(&self, name: &str) -> Option<Arc<ApiController>> {
        self.apis().get(name).cloned()
    }

    /// Whether the API is live (or on its way) with exactly this deployment.
    pub fn is_up_to_date(&self, name: &str, deploy_hash: &str) -> bool {
        self.controller(name)
            .is_some_and(|c| c.is_up_to_date(deploy_hash))
    }

    /// Starts (or moves to) the deployment in `stored`. Returns at once; progress shows in
    /// [`Supervisor::info`].
    pub fn apply(self: &Arc<Self>, stored: StoredApi, spec: ApiSpec, fetch: FetchContext) {
        self.apply_restoring(stored, spec, fetch, None);
    }

    fn apply_restoring(
        self: &Arc<Self>,
        stored: StoredApi,
        spec: ApiSpec,
        fetch: FetchContext,
        failed: Option<FailedDeploy>,
    ) {
        let spec = Arc::new(spec);
        let controller = self
            .apis()
            .entry(stored.name.clone())
            .or_insert_with(|| ApiController::new(self.ctx.clone(), stored.clone(), spec.clone()))
            .clone();
        controller.begin(stored.clone(), spec.clone(), failed);
        let me = self.clone();
        tokio::spawn(async move {
            if let Some(plan) = me.prepare(&controller, stored, spec, fetch).await {
                controller.deploy(plan).await;
            }
        });
    }

    /// The packages Cortex had pre-installed that the predictor's code imports and nothing
    /// provides: added to its environment, and said (in the log and in `gyrus deploy`). A
    /// project whose imports cannot be read deploys without them, with a warning in its log.
    async fn preinstalled(
        &self,
        controller: &Arc<ApiController>,
        generation: u64,
        spec: &ApiSpec,
        project_dir: &std::path::Path,
    ) -> Vec<crate::pyenv::preinstalled::Added> {
        if spec.predictor.path.is_none() || !spec.predictor.preinstalled_packages {
            return Vec::new();
        }
        controller.set_message(generation, "reading the predictor's imports");
        match self
            .envs
            .preinstalled(spec.predictor.kind, project_dir)
            .await
        {
            Ok(added) if added.is_empty() => added,
            Ok(added) => {
                let list: Vec<String> = added.iter().map(|a| a.to_string()).collect();
                let (them, provides) = match added.len() {
                    1 => ("it", "provides it"),
                    _ => ("them", "provides them"),
                };
                let note = format!(
                    "adding {}: Cortex's {} predictors had {them} pre-installed, and neither \
                     requirements.txt nor the base Python {provides} \
                     (predictor.preinstalled_packages: false turns this off)",
                    list.join(", "),
                    spec.predictor.kind
                );
                api_log!(controller.name, "{note}");
                controller.add_note(generation, note);
                added
            }
            Err(e) => {
                api_log!(
                    controller.name,
                    "warning: the predictor's imports could not be read, so no pre-installed \
                     package is added: {e}"
                );
                Vec::new()
            }
        }
    }

    /// Everything a version needs before its replicas can start: the Python environment, the
    /// models, the launch plan. `None` when it failed (the API shows the error) or a newer
    /// deploy superseded it.
    async fn prepare(
        &self,
        controller: &Arc<ApiController>,
        stored: StoredApi,
        spec: Arc<ApiSpec>,
        fetch: FetchContext,
    ) -> Option<Generation> {
        let generation = stored.generation;
        let log = self.home.api_log(&controller.name);
        api_log!(controller.name, "deploying generation {generation}");
        let fail = |error: String| {
            if !controller.is_superseded(generation) {
                api_log!(controller.name, "error: {error}");
                controller.fail(generation, error);
            }
        };

        let project_dir = PathBuf::from(&stored.project_dir);
        let runtime = match spec.predictor.kind {
            PredictorType::Onnx => Some(&crate::pyenv::ONNX_RUNTIME),
            PredictorType::Tensorflow => Some(&crate::pyenv::TENSORFLOW),
            PredictorType::Python => None,
        };
        let added = self
            .preinstalled(controller, generation, &spec, &project_dir)
            .await;
        // The installer's steps, live in `gyrus deploy`'s spinner, named for what is installed:
        // an API without Python code only ever installs its model runtime.
        let installing = match (runtime, &spec.predictor.path) {
            (Some(r), None) => format!("installing {}", r.name),
            _ => "python environment".to_string(),
        };
        let steps = |step: &str| {
            controller.set_message(generation, &format!("{installing}: {step}"));
        };
        let resolved = match runtime {
            Some(runtime) => {
                let message = match spec.predictor.path {
                    Some(_) => format!("preparing {} and the python environment", runtime.name),
                    None => format!("preparing {}", runtime.name),
                };
                controller.set_message(generation, &message);
                self.envs
                    .resolve_runtime(
                        runtime,
                        &project_dir,
                        spec.predictor.path.is_some(),
                        &added,
                        &log,
                        &steps,
                    )
                    .await
                    .map(|s| (s.python, Some(s.library)))
            }
            None => {
                controller.set_message(generation, "preparing the python environment");
                self.envs
                    .resolve(&project_dir, &added, &log, &steps)
                    .await
                    .map(|p| (p, None))
            }
        };
        let (python, library) = match resolved {
            Ok(p) => p,
            Err(e) => {
                fail(e.to_string());
                return None;
            }
        };
        if controller.is_superseded(generation) {
            return None;
        }
        controller.set_message(generation, "locating models");
        let progress = |p: &gyrus_remote::Progress| {
            controller.set_progress(
                generation,
                Some(DownloadProgress {
                    url: p.url.clone(),
                    done: p.done,
                    total: p.total,
                }),
            );
        };
        let resolved = self
            .sources
            .resolve(&spec, &project_dir, &fetch, &progress)
            .await;
        controller.set_progress(generation, None);
        let resolved = match resolved {
            Ok(r) => r,
            Err(e) => {
                fail(e.to_string());
                return None;
            }
        };
        if controller.is_superseded(generation) {
            return None;
        }
        let (onnx_library, tensorflow_library) = match spec.predictor.kind {
            PredictorType::Tensorflow => (None, library),
            _ => (library, None),
        };
        let libraries = Libraries {
            onnx: onnx_library,
            tensorflow: tensorflow_library,
        };
        match launch_plan(&stored, spec, python, libraries, &project_dir, resolved) {
            Ok(plan) => Some(plan),
            Err(e) => {
                fail(e);
                None
            }
        }
    }

    /// Brings an API back after a restart as it was: `serving` (the last generation that went
    /// live) serves again; then the API shows `desired` failed with `error` exactly as before,
    /// or, when `desired` never finished deploying (the daemon stopped during its rollout),
    /// rolls on to it.
    pub fn restore(
        self: &Arc<Self>,
        serving: (StoredApi, ApiSpec),
        desired: (StoredApi, ApiSpec),
        error: Option<String>,
    ) {
        let (stored, spec) = desired;
        let Some(error) = error else {
            self.restore_interrupted(serving, (stored, spec));
            return;
        };
        let failed = FailedDeploy {
            stored,
            spec: Arc::new(spec),
            error,
        };
        self.apply_restoring(serving.0, serving.1, FetchContext::cached(), Some(failed));
    }

    /// The daemon stopped during a rollout: the last good generation serves again, then the
    /// rollout to `desired` starts over.
    fn restore_interrupted(
        self: &Arc<Self>,
        serving: (StoredApi, ApiSpec),
        desired: (StoredApi, ApiSpec),
    ) {
        let name = serving.0.name.clone();
        let serving_generation = serving.0.generation;
        self.apply(serving.0, serving.1, FetchContext::cached());
        let Some(controller) = self.controller(&name) else {
            return;
        };
        let me = self.clone();
        tokio::spawn(async move {
            // Until the serving generation is up (or failed), unless a deploy came meanwhile.
            loop {
                if controller.is_superseded(serving_generation) {
                    return;
                }
                if !controller.status_is_updating() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            me.apply(desired.0, desired.1, FetchContext::cached());
        });
    }

    /// Stops and forgets an API. Waits (bounded) for its replicas to exit.
    pub async fn remove(&self, name: &str) -> bool {
        let Some(controller) = self.apis().remove(name) else {
            return false;
        };
        controller.remove().await;
        api_log!(name, "deleted");
        true
    }

    /// Stops every replica (daemon shutdown). APIs stay in the state database.
    pub async fn shutdown(&self) {
        let all: Vec<Arc<ApiController>> = self.apis().values().cloned().collect();
        futures_util::future::join_all(all.iter().map(|c| c.remove())).await;
    }

    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.apis().keys().cloned().collect();
        v.sort();
        v
    }

    /// Each API's specs in use: the one being deployed and the serving generation's (which
    /// differ while a new version starts, or after it failed and the old one keeps serving).
    pub fn specs_in_use(&self) -> Vec<(String, ApiSpec)> {
        let apis: Vec<Arc<ApiController>> = self.apis().values().cloned().collect();
        apis.iter()
            .flat_map(|c| c.specs().into_iter().map(|s| (c.name.clone(), s)))
            .collect()
    }

    /// The serving version of `name`, ready to launch processes from.
    pub fn serving_plan(&self, name: &str) -> Option<crate::controller::Generation> {
        self.apis().get(name).and_then(|c| c.serving_plan())
    }

    /// The launcher every process of the daemon is started with.
    pub fn launcher(&self) -> Arc<dyn crate::launcher::ReplicaLauncher> {
        self.ctx.launcher.clone()
    }

    pub fn lib_dir(&self) -> std::path::PathBuf {
        self.ctx.lib_dir.clone()
    }

    pub fn info(&self, name: &str) -> Option<ApiInfo> {
        self.controller(name).map(|c| c.info())
    }

    /// Runs the autoscaler of every live API each `interval` (Cortex: 10 s).
    pub fn start_autoscaler(self: &Arc<Self>, interval: Duration) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let Some(me) = me.upgrade() else { return };
                let apis: Vec<Arc<ApiController>> = me.apis().values().cloned().collect();
                for c in apis {
                    c.autoscale();
                }
            }
        });
    }

    /// Every second, replaces the replicas that stopped reporting
    /// ([`ApiController::replace_hung`]).
    pub fn start_heartbeat_watch(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_secs(1));
            loop {
                ticker.tick().await;
                let Some(me) = me.upgrade() else { return };
                let apis: Vec<Arc<ApiController>> = me.apis().values().cloned().collect();
                for c in apis {
                    c.replace_hung();
                }
            }
        });
    }
}

/// The runtime libraries a version loads its models with.
struct Libraries {
    onnx: Option<PathBuf>,
    tensorflow: Option<PathBuf>,
}

/// The launch plan of a prepared version: its environment (`.env`, `predictor.env`,
/// `PYTHONPATH` with `python_path`) and its models.
fn launch_plan(
    stored: &StoredApi,
    spec: Arc<ApiSpec>,
    python: PathBuf,
    libraries: Libraries,
    project_dir: &Path,
    resolved: ResolvedModels,
) -> Result<Generation, String> {
    let ResolvedModels { model_path, models } = resolved;
    let dotenv: Vec<(String, String)> =
        serde_json::from_str(&stored.dotenv_json).map_err(|e| format!("stored .env: {e}"))?;
    let mut env = dotenv;
    env.extend(
        spec.predictor
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    // python_path is appended to PYTHONPATH; the project dir is always importable (it is the
    // worker's working directory and first on sys.path).
    let python_path = spec
        .predictor
        .python_path
        .as_deref()
        .map(|p| project_dir.join(p))
        .unwrap_or_else(|| project_dir.to_path_buf());
    let mut pythonpath = std::env::var("PYTHONPATH").unwrap_or_default();
    if let Some((_, v)) = env.iter().find(|(k, _)| k == "PYTHONPATH") {
        pythonpath = v.clone();
    }
    let pythonpath = if pythonpath.is_empty() {
        python_path.display().to_string()
    } else {
        format!("{pythonpath}:{}", python_path.display())
    };
    env.retain(|(k, _)| k != "PYTHONPATH");
    env.push(("PYTHONPATH".into(), pythonpath));
    // TensorFlow logs every model load and its CPU features at INFO on stderr; warnings and
    // errors are what belongs in the API's log. The user's own setting wins.
    if spec.predictor.kind == PredictorType::Tensorflow
        && !env.iter().any(|(k, _)| k == "TF_CPP_MIN_LOG_LEVEL")
    {
        env.push(("TF_CPP_MIN_LOG_LEVEL".into(), "1".into()));
    }
    Ok(Generation {
        generation: stored.generation,
        stored: stored.clone(),
        v2_models: if spec.predictor.path.is_none() {
            models.iter().map(|m| m.name.clone()).collect()
        } else {
            Vec::new()
        },
        models: models
            .into_iter()
            .map(|m| ModelFile {
                name: m.name,
                path: m.path,
                signature_key: m.signature_key,
                store_batch_dim: m.store_batch_dim,
            })
            .collect(),
        spec,
        project_dir: project_dir.to_path_buf(),
        python,
        env,
        model_path,
        onnx_library: libraries.onnx,
        tensorflow_library: libraries.tensorflow,
    })
}
