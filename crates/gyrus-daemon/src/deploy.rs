//! The deploy service: from an uploaded project to deployed APIs, independent of HTTP. It
//! extracts the snapshot (staged, published only once valid), validates the config against it
//! (the daemon is the authority), checks what the machine and the other APIs allow (GPUs,
//! endpoints), pins model store tags to exact versions, records each API's new generation in
//! the state database and hands it to the supervisor. Refresh and delete are here too: every
//! change of what is deployed goes through one lock, so generations and endpoint checks never
//! race.

use std::sync::Arc;

use gyrus_spec::ApiKind;
use sha2::{Digest, Sha256};

use crate::api::{DeployResponse, DeployedApi};
use crate::error::DaemonError;
use crate::home::GyrusHome;
use crate::model_source::{FetchContext, ModelSources};
use crate::now;
use crate::project::{self, Upload};
use crate::state::{StateStore, StoredApi};
use crate::supervisor::Supervisor;

pub struct DeployService {
    pub home: GyrusHome,
    pub state: Arc<StateStore>,
    pub supervisor: Arc<Supervisor>,
    pub sources: Arc<ModelSources>,
    pub compute: Arc<gyrus_compute::Compute>,
    pub splitters: Arc<crate::splitters::Splitters>,
    /// Serialises deploy, refresh and delete (and model deletes, which must not race a pin).
    ops: Arc<tokio::sync::Mutex<()>>,
}

impl DeployService {
    pub fn new(
        home: GyrusHome,
        state: Arc<StateStore>,
        supervisor: Arc<Supervisor>,
        sources: Arc<ModelSources>,
        compute: Arc<gyrus_compute::Compute>,
        splitters: Arc<crate::splitters::Splitters>,
    ) -> Self {
        Self {
            home,
            state,
            supervisor,
            sources,
            compute,
            splitters,
            ops: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Holds off deploys while the caller changes something they depend on.
    pub async fn exclusive(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.ops.lock().await
    }

    /// Deploys every API of the uploaded project (`config_name` is its config file), or none
    /// if any is invalid. `fetch` carries the deploying user's credentials for model URLs.
    /// `upload_slot` is held until the extraction ends.
    pub async fn deploy(
        &self,
        upload: Upload,
        upload_slot: tokio::sync::OwnedSemaphorePermit,
        config_name: String,
        fetch: FetchContext,
    ) -> Result<DeployResponse, DaemonError> {
        let op = self.ops.clone().lock_owned().await;
        let home = self.home.clone();
        let name_for_task = config_name.clone();
        // The extraction runs to its end even if the client goes away (and this future is
        // dropped): it holds the lock and the upload slot until then, so disconnecting cannot
        // start more extractions than there are slots.
        let (staged, _op) = tokio::task::spawn_blocking(move || {
            let staged = project::extract(&home, upload, &name_for_task);
            drop(upload_slot);
            (staged, op)
        })
        .await
        .map_err(|e| DaemonError::Internal(format!("extracting the project: {e}")))?;
        // Dropped on any error below: the snapshot is removed unless it was published.
        let staged = staged?;

        let parsed = gyrus_spec::load(&config_name, &staged.config_text, Some(staged.dir()))
            .map_err(|e| DaemonError::BadRequest(e.to_string()))?;
        let dotenv = match &staged.dotenv_text {
            Some(text) => project::parse_dotenv(text).map_err(DaemonError::BadRequest)?,
            None => Vec::new(),
        };
        let dotenv_json =
            serde_json::to_string(&dotenv).map_err(|e| DaemonError::Internal(e.to_string()))?;

        // Check everything before deploying anything: a file deploys whole or not at all.
        let deployed_specs: Vec<(String, gyrus_spec::ApiSpec)> = self
            .state
            .list()?
            .into_iter()
            .filter_map(|a| {
                let spec = serde_json::from_str::<gyrus_spec::ApiSpec>(&a.spec_json).ok()?;
                Some((a.name, spec))
            })
            .collect();
        self.splitters.check_deploy(&parsed, &deployed_specs)?;
        let deployed_endpoints: Vec<(String, String)> = deployed_specs
            .iter()
            .map(|(name, spec)| (name.clone(), spec.endpoint.clone()))
            .collect();
        for api in &parsed.apis {
            if api.kind == ApiKind::BatchAPI && api.predictor.path.is_none() {
                return Err(DaemonError::BadRequest(format!(
                    "api {:?}: a BatchAPI needs predictor.path: its predictor's predict(payload, batch_id) is called once per batch",
                    api.name
                )));
            }
            // Reads and decodes each saved_model.pb: file work, off the async threads.
            crate::model_source::blocking(|| {
                crate::model_source::check_project_saved_models(api, staged.dir())
            })
            .map_err(|e| DaemonError::BadRequest(format!("api {:?}: {e}", api.name)))?;
            let limits = gyrus_compute::Limits::from_spec(&api.compute);
            self.compute
                .check_gpus(limits.gpus)
                .map_err(|e| DaemonError::BadRequest(format!("api {:?}: {e}", api.name)))?;
            if let Some((other, _)) = deployed_endpoints
                .iter()
                .find(|(name, endpoint)| *name != api.name && *endpoint == api.endpoint)
            {
                return Err(DaemonError::BadRequest(format!(
                    "api {:?}: endpoint {} is already used by api {:?}; choose another endpoint or delete that api",
                    api.name, api.endpoint, other
                )));
            }
        }

        // Store tags become exact versions now: a deploy names what it serves, and a missing model
        // fails the deploy before anything changes.
        let mut apis = parsed.apis;
        for api in &mut apis {
            self.sources.pin(api)?;
        }

        // Valid: the snapshot goes into place before anything refers to it.
        let project_hash = staged.hash.clone();
        let project_dir = tokio::task::spawn_blocking(move || staged.publish())
            .await
            .map_err(|e| DaemonError::Internal(format!("publishing the project: {e}")))??;

        let deployed_specs = apis.clone();
        let mut deployed = Vec::new();
        for api in apis {
            let spec_json =
                serde_json::to_string(&api).map_err(|e| DaemonError::Internal(e.to_string()))?;
            let mut h = Sha256::new();
            h.update(spec_json.as_bytes());
            h.update(project_hash.as_bytes());
            h.update(dotenv_json.as_bytes());
            let deploy_hash = hex::encode(h.finalize());
            let previous = self.state.get(&api.name)?;
            if previous
                .as_ref()
                .is_some_and(|p| p.deploy_hash == deploy_hash)
                && self.supervisor.is_up_to_date(&api.name, &deploy_hash)
            {
                deployed.push(DeployedApi {
                    name: api.name.clone(),
                    endpoint: api.endpoint.clone(),
                    result: "up to date".into(),
                });
                continue;
            }
            let ts = now();
            let stored = StoredApi {
                name: api.name.clone(),
                spec_json,
                project_dir: project_dir.display().to_string(),
                dotenv_json: dotenv_json.clone(),
                deploy_hash,
                generation: previous.as_ref().map(|p| p.generation + 1).unwrap_or(1),
                created_at: previous
                    .as_ref()
                    .map(|p| p.created_at.clone())
                    .unwrap_or_else(|| ts.clone()),
                updated_at: ts,
            };
            self.state.upsert(&stored)?;
            deployed.push(DeployedApi {
                name: api.name.clone(),
                endpoint: api.endpoint.clone(),
                result: if previous.is_some() {
                    "updated"
                } else {
                    "created"
                }
                .into(),
            });
            self.supervisor.apply(stored, api, fetch.clone());
        }
        // After their APIs, so that a new API is in place (if not yet live) when its share of
        // the requests starts.
        for split in parsed.splitters {
            let result = self.splitters.apply(split.clone())?;
            deployed.push(DeployedApi {
                name: split.name,
                endpoint: split.endpoint,
                result: result.into(),
            });
        }
        let mut warnings: Vec<String> = parsed.warnings.iter().map(|w| w.to_string()).collect();
        for api in &deployed_specs {
            let mut limits = gyrus_compute::Limits::from_spec(&api.compute);
            // Every API has the default 200m; warning about it on every deploy would be noise, so
            // only a CPU written in the config (another value) is reported as not enforced.
            if api.compute.cpu == gyrus_spec::ComputeSpec::default().cpu {
                limits.cpu_millis = 0;
            }
            warnings.extend(
                self.compute
                    .deploy_warnings(&limits)
                    .into_iter()
                    .map(|w| format!("api {:?}: {w}", api.name)),
            );
        }
        Ok(DeployResponse {
            apis: deployed,
            warnings,
        })
    }

    /// Restarts an API's replicas as a new generation (rolling, like a deploy).
    pub async fn refresh(&self, name: &str, fetch: FetchContext) -> Result<u64, DaemonError> {
        let _op = self.ops.lock().await;
        if self.splitters.contains(name) {
            return Err(DaemonError::BadRequest(format!(
                "{name:?} is a traffic splitter: it has no replicas to restart (refresh the APIs it names)"
            )));
        }
        let mut stored = self
            .state
            .get(name)?
            .ok_or_else(|| DaemonError::no_api(name, &self.known_names()))?;
        let spec: gyrus_spec::ApiSpec = serde_json::from_str(&stored.spec_json)
            .map_err(|e| DaemonError::Internal(format!("stored spec of {name}: {e}")))?;
        stored.generation += 1;
        stored.updated_at = now();
        self.state.upsert(&stored)?;
        let generation = stored.generation;
        self.supervisor.apply(stored, spec, fetch);
        Ok(generation)
    }

    /// Stops an API's replicas and forgets it, or removes a traffic splitter. An API that a
    /// splitter sends requests to stays until the splitter is changed or deleted.
    pub async fn delete(&self, name: &str) -> Result<(), DaemonError> {
        let _op = self.ops.lock().await;
        if self.splitters.remove(name)? {
            return Ok(());
        }
        let users = self.splitters.using(name);
        if !users.is_empty() {
            return Err(DaemonError::Conflict(format!(
                "api {name:?} is used by traffic splitter {}: delete the splitter first (gyrus delete {}), or deploy it without {name}",
                users.join(", "),
                users.join(" ")
            )));
        }
        let existed = self.state.delete(name)?;
        let running = self.supervisor.remove(name).await;
        if !existed && !running {
            return Err(DaemonError::no_api(name, &self.known_names()));
        }
        Ok(())
    }

    /// Every deployed API and traffic splitter, for a did-you-mean.
    pub fn known_names(&self) -> Vec<String> {
        let mut names = self.supervisor.names();
        names.extend(self.splitters.names());
        names
    }
}
