//! The controller of one API: which replicas of which version should run, and getting there.
//! It owns the API's generations (the newest asked for, the one serving, one rolling out),
//! the first start of a version, rolling updates (`rollout.rs`, steps from `crate::rollout`),
//! restarts with backoff, crash-looping, replacing hung replicas, and reconciling to the
//! autoscaler's desired count. It publishes ready replicas to the gateway's route table and
//! records the serving generation through a [`GenerationRecorder`].
//!
//! It is driven by deploys, replica events and a clock (tokio's, so its tests run on a paused
//! clock), and starts replicas only through a [`ReplicaLauncher`]: it knows nothing of
//! processes, files or the operating system. Preparing a version (Python environments, model
//! downloads) happens before, in the supervisor, which hands it a ready [`Generation`].

mod info;
mod lifecycle;
pub(crate) mod replica;
mod rollout;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gyrus_autoscaler::{Autoscaler, MetricSeries, Params};
use gyrus_gateway::{ApiRoute, RouteTable};
use gyrus_launch::ModelFile;
use gyrus_spec::ApiSpec;
use tokio::time::Instant;

use crate::api::{DownloadProgress, ScalingDecision};
use crate::api_log;
use crate::launcher::ReplicaLauncher;
use crate::state::StoredApi;
use replica::{Replica, ReplicaState, STOP_GRACE};

const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(30);
/// Up this long, a replica's next crash restarts it with the shortest backoff again.
const STABLE_AFTER: Duration = Duration::from_secs(60);
/// A ready replica reports every second; one silent this long is hung (stopped, deadlocked)
/// and is replaced.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the controller records what survives a restart (the daemon's state database).
pub trait GenerationRecorder: Send + Sync {
    /// `stored` went live: it serves again after a restart, even if a newer deploy failed.
    fn serving(&self, stored: &StoredApi);
    /// `generation` failed with `error` (shown again after a restart).
    fn failed(&self, api: &str, generation: u64, error: &str);
}

/// What every API's controller shares.
pub struct ControllerContext {
    pub launcher: Arc<dyn ReplicaLauncher>,
    pub routes: Arc<RouteTable>,
    pub recorder: Arc<dyn GenerationRecorder>,
    /// Where replicas write the worker script (`ReplicaLaunch::lib_dir`).
    pub lib_dir: PathBuf,
    /// The gateway's base URL, for the `url` of `gyrus get`.
    pub gateway_url: String,
    /// The origin of the metrics' and autoscaler's clock.
    pub epoch: Instant,
    /// Told what replicas report and what the controller decides (metrics, the dashboard).
    pub observer: Arc<dyn ApiObserver>,
}

/// What a controller tells the daemon's telemetry. The controller knows nothing of metrics:
/// the daemon's `telemetry::Telemetry` implements this, the table tests use [`NoObserver`].
pub trait ApiObserver: Send + Sync {
    /// A replica's once-a-second report (cumulative since it started).
    fn replica_metrics(
        &self,
        api: &str,
        replica: &str,
        in_flight: usize,
        models: &[gyrus_launch::ModelStats],
        requests: &gyrus_launch::telemetry::RequestStats,
    );
    /// A replica's process ended (its last report came before).
    fn replica_exited(&self, api: &str, replica: &str);
    /// A replica that died was started again.
    fn replica_restarted(&self, api: &str);
    /// One tick of the autoscaler (`from == to` when it kept the count).
    fn scaling_decision(&self, api: &str, from: u32, to: u32, reason: &str);
}

/// An observer that ignores everything.
pub struct NoObserver;

impl ApiObserver for NoObserver {
    fn replica_metrics(
        &self,
        _: &str,
        _: &str,
        _: usize,
        _: &[gyrus_launch::ModelStats],
        _: &gyrus_launch::telemetry::RequestStats,
    ) {
    }
    fn replica_exited(&self, _: &str, _: &str) {}
    fn replica_restarted(&self, _: &str) {}
    fn scaling_decision(&self, _: &str, _: u32, _: u32, _: &str) {}
}

impl ControllerContext {
    fn clock(&self) -> Duration {
        self.epoch.elapsed()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Updating,
    Live,
    Error,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Updating => "updating",
            Status::Live => "live",
            Status::Error => "error",
        }
    }
}

/// A version ready to start: everything its replicas need.
#[derive(Clone)]
pub struct Generation {
    pub generation: u64,
    /// The deployment as stored, recorded as the serving one when it goes live.
    pub stored: StoredApi,
    pub spec: Arc<ApiSpec>,
    pub project_dir: PathBuf,
    pub python: PathBuf,
    /// The predictor's environment.
    pub env: Vec<(String, String)>,
    pub model_path: Option<PathBuf>,
    /// The engine's models (ONNX and TensorFlow APIs).
    pub models: Vec<ModelFile>,
    /// Model names the gateway routes Open Inference Protocol requests for: a model API's
    /// models (an ONNXPredictor's models are reached through its predictor only).
    pub v2_models: Vec<String>,
    pub onnx_library: Option<PathBuf>,
    /// `libtensorflow_cc.so.2`, for TensorFlow APIs.
    pub tensorflow_library: Option<PathBuf>,
}

/// A deployment that failed while an older one kept serving.
pub struct FailedDeploy {
    pub stored: StoredApi,
    pub spec: Arc<ApiSpec>,
    pub error: String,
}

/// One API's controller. See the module documentation.
pub struct ApiController {
    pub name: String,
    ctx: Arc<ControllerContext>,
    /// The newest generation asked for; work for an older one gives up.
    latest_generation: AtomicU64,
    replica_seq: AtomicU32,
    inner: Mutex<ApiInner>,
}

pub(crate) struct ApiInner {
    stored: StoredApi,
    spec: Arc<ApiSpec>,
    status: Status,
    message: Option<String>,
    /// What the latest deploy did that its user should know (packages added).
    notes: Vec<String>,
    /// The download under way while the deploy fetches a model URL.
    progress: Option<DownloadProgress>,
    error: Option<String>,
    serving: Option<Generation>,
    /// A new generation replacing `serving`, while its rollout runs.
    rollout: Option<Generation>,
    replicas: Vec<Arc<Replica>>,
    deleted: bool,
    /// How many replicas of the serving generation should run (autoscaled).
    desired: u32,
    metrics: MetricSeries,
    autoscaler: Autoscaler,
    last_decision: Option<ScalingDecision>,
    last_change: Option<ScalingDecision>,
    /// Restoring after a restart: the newer deployment that had failed, shown as failed again
    /// once the last good one is live.
    restored_failure: Option<FailedDeploy>,
}

impl ApiController {
    pub fn new(ctx: Arc<ControllerContext>, stored: StoredApi, spec: Arc<ApiSpec>) -> Arc<Self> {
        Arc::new(ApiController {
            name: stored.name.clone(),
            ctx,
            latest_generation: AtomicU64::new(0),
            replica_seq: AtomicU32::new(0),
            inner: Mutex::new(ApiInner {
                stored,
                spec,
                status: Status::Updating,
                message: None,
                notes: Vec::new(),
                progress: None,
                error: None,
                serving: None,
                rollout: None,
                replicas: Vec::new(),
                deleted: false,
                desired: 0,
                metrics: MetricSeries::new(),
                autoscaler: Autoscaler::new(),
                last_decision: None,
                last_change: None,
                restored_failure: None,
            }),
        })
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, ApiInner> {
        // A panic while holding the lock leaves plain fields; serving on beats failing every call.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new deployment is asked for: it becomes the newest generation and the API shows
    /// `updating` while the supervisor prepares it. With `failed`, the API shows that newer
    /// deployment as failed the moment this one goes live (a restart restoring the last good
    /// version).
    pub fn begin(&self, stored: StoredApi, spec: Arc<ApiSpec>, failed: Option<FailedDeploy>) {
        self.latest_generation
            .fetch_max(stored.generation, Ordering::SeqCst);
        {
            let mut g = self.lock();
            g.stored = stored;
            g.spec = spec;
            g.status = Status::Updating;
            g.message = Some("preparing".into());
            g.notes.clear();
            g.error = None;
            g.restored_failure = failed;
        }
        self.publish_routes();
    }

    /// A newer deployment was asked for (or the API deleted) since `generation`.
    pub fn is_superseded(&self, generation: u64) -> bool {
        self.latest_generation.load(Ordering::SeqCst) != generation
    }

    /// A note for whoever deploys (shown once by `gyrus deploy`, kept in `gyrus describe`).
    pub fn add_note(&self, generation: u64, note: String) {
        if !self.is_superseded(generation) {
            self.lock().notes.push(note);
        }
    }

    pub fn set_message(&self, generation: u64, msg: &str) {
        if !self.is_superseded(generation) {
            self.lock().message = Some(msg.to_owned());
        }
    }

    pub fn set_progress(&self, generation: u64, progress: Option<DownloadProgress>) {
        if !self.is_superseded(generation) {
            let mut g = self.lock();
            if let Some(p) = &progress {
                g.message = Some(format!("downloading {}", p.url));
            }
            g.progress = progress;
        }
    }

    /// Whether the API is live, or on its way with exactly this deployment (e.g. restored after
    /// a restart): a redeploy of it changes nothing.
    pub fn is_up_to_date(&self, deploy_hash: &str) -> bool {
        let g = self.lock();
        g.status != Status::Error && g.stored.deploy_hash == deploy_hash
    }

    /// Whether the deploy in progress has not been prepared yet and nothing serves.
    pub fn status_is_updating(&self) -> bool {
        self.lock().status == Status::Updating
    }

    /// Starts a prepared version: the first one (all replicas, live when all are ready) or a
    /// rolling update from the serving one. Returns when it is live, failed, or superseded.
    pub async fn deploy(self: &Arc<Self>, plan: Generation) {
        if self.is_superseded(plan.generation) {
            return;
        }
        if plan.spec.kind == gyrus_spec::ApiKind::BatchAPI {
            // A batch API holds no replicas: each job starts its own workers from the serving
            // version (`jobs`), and a job already running keeps the version it started with.
            let stored = {
                let mut g = self.lock();
                self.become_serving(&mut g, plan, Some(0))
            };
            self.went_live(&stored);
            return;
        }
        if self.lock().serving.is_some() {
            self.roll(plan).await;
        } else {
            self.start_first(plan).await;
        }
    }

    /// The API shows `error` for `generation` (if it is still the newest); whatever serves
    /// keeps serving.
    pub fn fail(&self, generation: u64, error: String) {
        {
            let mut g = self.lock();
            if self.is_superseded(generation) || g.deleted {
                return;
            }
            g.status = Status::Error;
            g.message = None;
            g.error = Some(error.clone());
        }
        self.ctx.recorder.failed(&self.name, generation, &error);
        self.publish_routes();
    }

    /// Makes `plan` the serving generation (with `desired` replicas, if given) while the caller
    /// holds the lock; then call [`ApiController::went_live`] with what this returns.
    fn become_serving(
        &self,
        g: &mut ApiInner,
        plan: Generation,
        desired: Option<u32>,
    ) -> StoredApi {
        let stored = plan.stored.clone();
        g.serving = Some(plan);
        if let Some(d) = desired {
            g.desired = d;
        }
        g.status = Status::Live;
        g.message = None;
        g.error = None;
        if let Some(failed) = g.restored_failure.take() {
            self.latest_generation
                .fetch_max(failed.stored.generation, Ordering::SeqCst);
            g.stored = failed.stored;
            g.spec = failed.spec;
            g.status = Status::Error;
            g.error = Some(failed.error);
        }
        stored
    }

    /// After [`ApiController::become_serving`]: routes and the record of what serves.
    fn went_live(&self, stored: &StoredApi) {
        self.publish_routes();
        if !self.lock().deleted {
            self.ctx.recorder.serving(stored);
        }
    }

    /// Brings the serving generation to the desired replica count: starts missing replicas,
    /// or stops the extra ones (those not serving first, then the least busy), which drain
    /// before they exit. A rollout does this itself while it runs.
    pub fn reconcile(self: &Arc<Self>) {
        let (plan, alive, desired) = {
            let g = self.lock();
            if g.deleted || g.rollout.is_some() {
                return;
            }
            let Some(plan) = g.serving.clone() else {
                return;
            };
            let alive: Vec<Arc<Replica>> = g
                .replicas
                .iter()
                .filter(|r| r.generation == plan.generation && r.counts_toward_desired())
                .cloned()
                .collect();
            (plan, alive, g.desired)
        };
        let have = alive.len() as u32;
        if have < desired {
            for _ in have..desired {
                match self.spawn_replica(&plan, 0) {
                    Ok(r) => self.adopt(r),
                    Err(e) => {
                        api_log!(self.name, "error: starting a replica: {e}");
                        break;
                    }
                }
            }
        } else if have > desired {
            let mut victims = alive;
            victims.sort_by_key(|r| (r.is_ready(), r.lock().in_flight));
            for r in victims.into_iter().take((have - desired) as usize) {
                r.cancel_restart();
                r.stop();
            }
            self.publish_routes();
            self.forget_exited();
        }
        // Replicas of a superseded rollout whose successor never started (it failed while
        // preparing): they served meanwhile; once the serving version is whole, they go.
        let leftovers: Vec<Arc<Replica>> = {
            let g = self.lock();
            let ready = g
                .replicas
                .iter()
                .filter(|r| r.generation == plan.generation && r.is_ready())
                .count() as u32;
            if ready < desired {
                Vec::new()
            } else {
                g.replicas
                    .iter()
                    .filter(|r| r.generation != plan.generation && r.counts_toward_desired())
                    .cloned()
                    .collect()
            }
        };
        if !leftovers.is_empty() {
            for r in &leftovers {
                r.cancel_restart();
                r.stop();
            }
            self.publish_routes();
            self.forget_exited();
        }
    }

    /// One tick of the autoscaler: the desired count from the in-flight history, then
    /// [`ApiController::reconcile`] (every tick, not only on a change: it also replaces
    /// replicas that could not start).
    pub fn autoscale(self: &Arc<Self>) {
        let now = self.ctx.clock();
        let change = {
            let mut g = self.lock();
            // A rollout manages replicas itself; scaling resumes when it is done.
            if g.deleted || g.rollout.is_some() {
                return;
            }
            let Some(spec) = g.serving.as_ref().map(|p| p.spec.clone()) else {
                return;
            };
            if spec.kind == gyrus_spec::ApiKind::BatchAPI {
                return;
            }
            let params = Params::from_spec(&spec.autoscaling);
            let keep = params.window.max(Duration::from_secs(1));
            g.metrics.prune(now, keep);
            let avg = g.metrics.average(complete_seconds(now), params.window);
            let current = g.desired;
            let d = g.autoscaler.tick(&params, now, avg, current);
            let decision = ScalingDecision {
                at: crate::now(),
                from: current,
                to: d.replicas,
                avg_in_flight: d.avg_in_flight,
                reason: d.reason,
            };
            g.last_decision = Some(decision.clone());
            self.ctx
                .observer
                .scaling_decision(&self.name, current, d.replicas, &decision.reason);
            if d.replicas == current {
                None
            } else {
                g.desired = d.replicas;
                g.last_change = Some(decision.clone());
                Some(decision)
            }
        };
        if let Some(d) = change {
            api_log!(
                self.name,
                "autoscaler: {} → {} replicas ({})",
                d.from,
                d.to,
                d.reason
            );
        }
        self.reconcile();
    }

    /// Stops every replica and forgets the API: it leaves the route table at once; returns once
    /// its replicas have exited (bounded by their grace period).
    pub async fn remove(&self) {
        self.latest_generation.store(u64::MAX, Ordering::SeqCst);
        let replicas = {
            let mut g = self.lock();
            g.deleted = true;
            g.replicas.clone()
        };
        self.ctx.routes.remove_api(&self.name);
        for r in &replicas {
            r.stop();
        }
        for r in &replicas {
            r.wait_exited(STOP_GRACE + Duration::from_secs(2)).await;
        }
    }

    /// The specs this API runs: the one being deployed, and the serving one when it differs.
    /// The version serving now, with everything its processes need (a batch API's job
    /// workers start from it).
    pub fn serving_plan(&self) -> Option<Generation> {
        self.lock().serving.clone()
    }

    pub fn specs(&self) -> Vec<ApiSpec> {
        let g = self.lock();
        let mut out = vec![(*g.spec).clone()];
        if let Some(plan) = &g.serving {
            if *plan.spec != *g.spec {
                out.push((*plan.spec).clone());
            }
        }
        out
    }

    /// Adds a replica just started to the API's list, unless the API was deleted meanwhile
    /// (then nothing else would stop it).
    fn adopt(&self, r: Arc<Replica>) {
        let mut g = self.lock();
        let deleted = g.deleted;
        g.replicas.push(r.clone());
        drop(g);
        if deleted {
            r.stop();
        }
    }

    /// Drops exited replicas from the list once they can no longer matter.
    fn forget_exited(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(STOP_GRACE + Duration::from_secs(1)).await;
            me.lock()
                .replicas
                .retain(|r| !matches!(r.state(), ReplicaState::Exited | ReplicaState::Failed));
        });
    }

    /// Tells the gateway which replicas are ready (every version's: during a rollout both
    /// serve); a replica leaves the table when it stops being ready or stops answering.
    fn publish_routes(&self) {
        let g = self.lock();
        if g.deleted {
            return;
        }
        let replicas = g
            .replicas
            .iter()
            .filter_map(|r| r.routable_target())
            .collect();
        self.ctx.routes.set_api(ApiRoute {
            api: self.name.clone(),
            endpoint: g.spec.endpoint.clone(),
            status: g.status.as_str().to_owned(),
            replicas,
            models: g
                .serving
                .as_ref()
                .map(|p| p.v2_models.clone())
                .unwrap_or_default(),
            batch: g.spec.kind == gyrus_spec::ApiKind::BatchAPI,
        });
    }
}

/// The metrics clock up to the last whole second: the current second's bucket holds only the
/// replicas that have reported in it so far.
fn complete_seconds(now: Duration) -> Duration {
    Duration::from_secs(now.as_secs().saturating_sub(1))
}
