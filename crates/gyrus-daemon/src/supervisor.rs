//! The replica supervisor: for each API it owns the replica processes, moves the API from one
//! generation (deployed version) to the next, publishes ready replicas to the gateway's route
//! table, and restarts replicas that die.
//!
//! The first deploy of an API starts `init_replicas` replicas and goes live when all are ready.
//! A redeploy rolls: new replicas start within `update_strategy.max_surge` above the desired
//! count, old ones drain and stop once enough new ones are ready, never leaving fewer than
//! desired − `max_unavailable` ready; a new version that fails halts the rollout and the old one
//! keeps serving. A newer deploy supersedes one still rolling. Each replica reports its
//! in-flight count every second; every autoscaling interval the autoscaler (gyrus-autoscaler)
//! turns those series into a desired replica count, which `Supervisor::reconcile` applies.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gyrus_gateway::{ApiRoute, ReplicaTarget, RouteTable};
use gyrus_spec::{ApiSpec, PredictorType};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::api::{
    ApiInfo, AutoscalingInfo, DownloadProgress, ReplicaCounts, ReplicaInfo, ScalingDecision,
};
use crate::home::GyrusHome;
use crate::model_source::{FetchContext, ModelSources, ResolvedModels};
use crate::pyenv::PythonEnvs;
use crate::rollout;
use crate::state::{StateStore, StoredApi};
use gyrus_autoscaler::{Autoscaler, MetricSeries, Params};
use gyrus_compute::{Compute, Limits};

/// How long a stopping replica may drain before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(35);
/// A stopping replica is signalled once the gateway has sent it nothing for this long after it
/// left the route table (at most `ROUTE_SETTLE_MAX`, for requests still being sent to it).
const ROUTE_SETTLE_MIN: Duration = Duration::from_millis(50);
const ROUTE_SETTLE_MAX: Duration = Duration::from_secs(2);
const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(30);
/// Up this long, a replica's next crash restarts it with the shortest backoff again.
const STABLE_AFTER: Duration = Duration::from_secs(60);
/// A ready replica reports every second; one silent this long is hung (stopped, deadlocked)
/// and is replaced.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReplicaState {
    Starting,
    Ready,
    Stopping,
    Failed,
    Exited,
}

impl ReplicaState {
    fn as_str(self) -> &'static str {
        match self {
            ReplicaState::Starting => "starting",
            ReplicaState::Ready => "ready",
            ReplicaState::Stopping => "stopping",
            ReplicaState::Failed => "failed",
            ReplicaState::Exited => "exited",
        }
    }
}

/// One replica process as the supervisor tracks it.
struct Replica {
    id: String,
    generation: u64,
    started_at: String,
    started: std::time::Instant,
    restarts: u32,
    inner: Mutex<ReplicaInner>,
    state_changed: tokio::sync::Notify,
}

struct ReplicaInner {
    state: ReplicaState,
    pid: Option<u32>,
    port: Option<u16>,
    target: Option<Arc<ReplicaTarget>>,
    error: Option<String>,
    /// Dropping it closes the replica's stdin, which the replica takes as "stop".
    stdin: Option<tokio::process::ChildStdin>,
    /// The replica died and waits out its backoff before a replacement starts; scaling down
    /// clears it to cancel the restart.
    pending_restart: bool,
    /// Its in-flight requests, as it last reported them.
    in_flight: u32,
    /// Why the replica it replaced exited (a crash, out of memory).
    last_exit: Option<String>,
    /// When it last reported (any event).
    last_seen: std::time::Instant,
    /// Stopped reporting while ready: out of routing, killed, and restarted as a crash.
    unresponsive: bool,
    /// Its Python workers keep dying soon after they start (it says so in its reports).
    workers_crash_looping: bool,
}

impl Replica {
    fn state(&self) -> ReplicaState {
        self.lock().state
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, ReplicaInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks the replica to drain and exit (SIGTERM and closing stdin); kills it if it has not
    /// exited after the grace period. The caller takes it out of the route table (a stopping
    /// replica is not ready); the signal waits until the gateway has no request on its way to
    /// it, so that none lands on a closed listener or a keep-alive connection being shut.
    fn stop(self: &Arc<Self>) {
        let (pid, target, stdin) = {
            let mut g = self.lock();
            if matches!(g.state, ReplicaState::Exited | ReplicaState::Failed) {
                return;
            }
            if g.state == ReplicaState::Stopping {
                return;
            }
            g.state = ReplicaState::Stopping;
            (g.pid, g.target.clone(), g.stdin.take())
        };
        self.state_changed.notify_waiters();
        let Some(pid) = pid else {
            drop(stdin);
            return;
        };
        let me = self.clone();
        tokio::spawn(async move {
            // Requests the gateway routed here before the route table changed.
            let settle = tokio::time::Instant::now() + ROUTE_SETTLE_MAX;
            tokio::time::sleep(ROUTE_SETTLE_MIN).await;
            while target.as_ref().is_some_and(|t| t.in_flight() > 0)
                && tokio::time::Instant::now() < settle
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Exited meanwhile: the pid may belong to another process by now.
            if me.state() != ReplicaState::Stopping {
                return;
            }
            signal(pid, libc::SIGTERM);
            drop(stdin);
            let deadline = tokio::time::Instant::now() + STOP_GRACE;
            while me.state() == ReplicaState::Stopping {
                if tokio::time::Instant::now() >= deadline {
                    // The whole group: the replica, its Python workers and anything the
                    // user's code started.
                    signal_group(pid, libc::SIGKILL);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }

    async fn wait_exited(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.state_changed.notified();
            if matches!(self.state(), ReplicaState::Exited | ReplicaState::Failed) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }

    fn info(&self) -> ReplicaInfo {
        let g = self.lock();
        let state = if g.pending_restart {
            "restarting"
        } else {
            g.state.as_str()
        };
        ReplicaInfo {
            id: self.id.clone(),
            generation: self.generation,
            pid: g.pid,
            port: g.port,
            state: state.to_owned(),
            in_flight: g.target.as_ref().map(|t| t.in_flight()).unwrap_or(0),
            started_at: self.started_at.clone(),
            restarts: self.restarts,
            error: g.error.clone(),
            last_exit: g.last_exit.clone(),
        }
    }

    /// Scaling down or replacing a dead replica: do not bring it back.
    fn cancel_restart(&self) {
        self.lock().pending_restart = false;
    }

    /// Serving or about to: starting, ready, or dead and waiting to be restarted.
    fn counts_toward_desired(&self) -> bool {
        let g = self.lock();
        matches!(g.state, ReplicaState::Starting | ReplicaState::Ready) || g.pending_restart
    }

    fn is_ready(&self) -> bool {
        self.state() == ReplicaState::Ready
    }
}

fn signal_group(pid: u32, sig: libc::c_int) {
    // SAFETY: as for `signal`; replicas lead their own process group (setpgid at spawn).
    unsafe {
        libc::kill(-(pid as libc::pid_t), sig);
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is one of our children.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// The first error among replicas that failed to start, if any.
fn first_failure(replicas: &[Arc<Replica>]) -> Option<String> {
    replicas.iter().find_map(|r| {
        let i = r.lock();
        matches!(
            i.state,
            ReplicaState::Failed | ReplicaState::Exited | ReplicaState::Stopping
        )
        .then(|| {
            i.error
                .clone()
                .unwrap_or_else(|| "replica exited before it was ready".into())
        })
    })
}

/// Until one of `replicas` changes state, or 200 ms.
async fn wait_any(replicas: &[Arc<Replica>]) {
    if replicas.is_empty() {
        tokio::time::sleep(Duration::from_millis(200)).await;
        return;
    }
    let waits: Vec<_> = replicas
        .iter()
        .map(|r| r.state_changed.notified())
        .collect();
    let any = futures_util::future::select_all(waits.into_iter().map(Box::pin));
    let _ = tokio::time::timeout(Duration::from_millis(200), any).await;
}

/// Everything needed to start replicas of one generation.
#[derive(Clone)]
struct LaunchPlan {
    generation: u64,
    /// The deployment as stored, recorded as the serving one when it goes live.
    stored: StoredApi,
    spec: Arc<ApiSpec>,
    spec_json: Arc<String>,
    project_dir: PathBuf,
    python: PathBuf,
    env: Vec<(String, String)>,
    model_path: Option<PathBuf>,
    /// The engine's models (ONNX APIs): name and file.
    models: Vec<(String, PathBuf)>,
    /// Model names the gateway routes Open Inference Protocol requests for: a model API's
    /// models (an ONNXPredictor's models are reached through its predictor only).
    v2_models: Vec<String>,
    onnx_library: Option<PathBuf>,
}

struct ApiRuntime {
    name: String,
    /// The newest generation asked for; a deploy that is no longer the newest gives up.
    latest_generation: AtomicU64,
    replica_seq: AtomicU32,
    inner: Mutex<ApiInner>,
}

struct ApiInner {
    stored: StoredApi,
    spec: Arc<ApiSpec>,
    status: Status,
    message: Option<String>,
    /// The download under way while the deploy fetches a model URL.
    progress: Option<DownloadProgress>,
    error: Option<String>,
    serving: Option<LaunchPlan>,
    /// A new generation replacing `serving`, while its rollout runs.
    rollout: Option<LaunchPlan>,
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

/// A deployment that failed while an older one kept serving.
struct FailedDeploy {
    stored: StoredApi,
    spec: Arc<ApiSpec>,
    error: String,
}

impl ApiRuntime {
    fn lock(&self) -> std::sync::MutexGuard<'_, ApiInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct Supervisor {
    home: GyrusHome,
    /// Where the generation that goes live, and a failed one's error, are recorded.
    state: Arc<StateStore>,
    routes: Arc<RouteTable>,
    envs: Arc<PythonEnvs>,
    sources: Arc<ModelSources>,
    compute: Arc<Compute>,
    gateway_url: String,
    apis: Mutex<HashMap<String, Arc<ApiRuntime>>>,
    self_exe: PathBuf,
    /// The origin of the metrics' and autoscaler's clock.
    epoch: std::time::Instant,
}

impl Supervisor {
    pub fn new(
        home: GyrusHome,
        state: Arc<StateStore>,
        routes: Arc<RouteTable>,
        envs: Arc<PythonEnvs>,
        sources: Arc<ModelSources>,
        compute: Arc<Compute>,
        gateway_url: String,
    ) -> Arc<Self> {
        let self_exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("gyrus"));
        Arc::new(Self {
            home,
            state,
            routes,
            envs,
            sources,
            compute,
            gateway_url,
            apis: Mutex::new(HashMap::new()),
            self_exe,
            epoch: std::time::Instant::now(),
        })
    }

    fn clock(&self) -> Duration {
        self.epoch.elapsed()
    }

    fn apis(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<ApiRuntime>>> {
        self.apis.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the API is live with exactly this deployment.
    pub fn is_up_to_date(&self, name: &str, deploy_hash: &str) -> bool {
        let Some(rt) = self.apis().get(name).cloned() else {
            return false;
        };
        let g = rt.lock();
        // Live, or on its way with exactly this deployment (e.g. restored after a restart).
        g.status != Status::Error && g.stored.deploy_hash == deploy_hash
    }

    /// Starts (or moves to) the deployment in `stored`. Returns at once; progress shows in
    /// [`Supervisor::info`].
    pub fn apply(self: &Arc<Self>, stored: StoredApi, spec: ApiSpec, fetch: FetchContext) {
        self.apply_restoring(stored, spec, fetch, None);
    }

    /// [`Supervisor::apply`]; with `failed`, the API shows that newer deployment as failed the
    /// moment this one goes live (a restart restoring the last good version).
    fn apply_restoring(
        self: &Arc<Self>,
        stored: StoredApi,
        spec: ApiSpec,
        fetch: FetchContext,
        failed: Option<FailedDeploy>,
    ) {
        let spec = Arc::new(spec);
        let rt = {
            let mut apis = self.apis();
            apis.entry(stored.name.clone())
                .or_insert_with(|| {
                    Arc::new(ApiRuntime {
                        name: stored.name.clone(),
                        latest_generation: AtomicU64::new(0),
                        replica_seq: AtomicU32::new(0),
                        inner: Mutex::new(ApiInner {
                            stored: stored.clone(),
                            spec: spec.clone(),
                            status: Status::Updating,
                            message: None,
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
                })
                .clone()
        };
        rt.latest_generation
            .fetch_max(stored.generation, Ordering::SeqCst);
        {
            let mut g = rt.lock();
            g.stored = stored.clone();
            g.spec = spec.clone();
            g.status = Status::Updating;
            g.message = Some("preparing".into());
            g.error = None;
            g.restored_failure = failed;
        }
        self.publish_routes(&rt);
        let me = self.clone();
        tokio::spawn(async move {
            me.run_deploy(rt, stored, spec, fetch).await;
        });
    }

    async fn run_deploy(
        self: Arc<Self>,
        rt: Arc<ApiRuntime>,
        stored: StoredApi,
        spec: Arc<ApiSpec>,
        fetch: FetchContext,
    ) {
        let generation = stored.generation;
        let log = self.home.api_log(&rt.name);
        api_log(&log, &format!("deploying generation {generation}"));
        let superseded = || rt.latest_generation.load(Ordering::SeqCst) != generation;

        let project_dir = PathBuf::from(&stored.project_dir);
        set_message(&rt, generation, "preparing the python environment");
        let resolved = if spec.predictor.kind == PredictorType::Onnx {
            self.envs
                .resolve_onnx(&project_dir, spec.predictor.path.is_some(), &log)
                .await
                .map(|s| (s.python, Some(s.library)))
        } else {
            self.envs
                .resolve(&project_dir, &log)
                .await
                .map(|p| (p, None))
        };
        let (python, onnx_library) = match resolved {
            Ok(p) => p,
            Err(e) => {
                if !superseded() {
                    api_log(&log, &format!("error: {e}"));
                    self.fail(&rt, generation, e.to_string());
                }
                return;
            }
        };
        if superseded() {
            return;
        }
        set_message(&rt, generation, "locating models");
        let progress = |p: &gyrus_remote::Progress| {
            if rt.latest_generation.load(Ordering::SeqCst) == generation {
                let mut g = rt.lock();
                g.message = Some(format!("downloading {}", p.url));
                g.progress = Some(DownloadProgress {
                    url: p.url.clone(),
                    done: p.done,
                    total: p.total,
                });
            }
        };
        let resolved = self
            .sources
            .resolve(&spec, &project_dir, &fetch, &progress)
            .await;
        rt.lock().progress = None;
        let resolved = match resolved {
            Ok(r) => r,
            Err(e) => {
                if !superseded() {
                    api_log(&log, &format!("error: {e}"));
                    self.fail(&rt, generation, e);
                }
                return;
            }
        };
        if superseded() {
            return;
        }
        let plan = match launch_plan(
            &stored,
            spec.clone(),
            python,
            onnx_library,
            &project_dir,
            resolved,
        ) {
            Ok(p) => p,
            Err(e) => {
                self.fail(&rt, generation, e);
                return;
            }
        };

        if rt.lock().serving.is_some() {
            self.roll(&rt, plan, &log).await;
        } else {
            self.start_first(&rt, plan, &log).await;
        }
    }

    /// The first generation of an API (or the first since one went live): start
    /// `init_replicas` and go live when all are ready.
    async fn start_first(self: &Arc<Self>, rt: &Arc<ApiRuntime>, plan: LaunchPlan, log: &Path) {
        let generation = plan.generation;
        let a = &plan.spec.autoscaling;
        let count = a.init_replicas.clamp(a.min_replicas, a.max_replicas).max(1);
        set_message(rt, generation, &format!("starting {count} replica(s)"));
        let mut new = Vec::new();
        for _ in 0..count {
            match self.spawn_replica(rt, &plan, 0) {
                Ok(r) => new.push(r),
                Err(e) => {
                    for r in &new {
                        r.stop();
                    }
                    self.fail(rt, generation, e);
                    return;
                }
            }
        }
        rt.lock().replicas.extend(new.iter().cloned());

        // Wait until all are ready, one fails, or a newer deploy supersedes this one.
        let outcome = loop {
            if rt.latest_generation.load(Ordering::SeqCst) != generation || rt.lock().deleted {
                break Err(None);
            }
            if let Some(err) = first_failure(&new) {
                break Err(Some(err));
            }
            if new.iter().all(|r| r.is_ready()) {
                break Ok(());
            }
            wait_any(&new).await;
        };
        match outcome {
            Ok(()) => {
                let plan_stored = plan.stored.clone();
                {
                    let mut g = rt.lock();
                    g.serving = Some(plan);
                    g.desired = count;
                    g.status = Status::Live;
                    g.message = None;
                    g.error = None;
                    if let Some(failed) = g.restored_failure.take() {
                        rt.latest_generation
                            .fetch_max(failed.stored.generation, Ordering::SeqCst);
                        g.stored = failed.stored;
                        g.spec = failed.spec;
                        g.status = Status::Error;
                        g.error = Some(failed.error);
                    }
                }
                self.publish_routes(rt);
                self.record_serving(rt, &plan_stored);
                api_log(
                    log,
                    &format!("generation {generation} is live ({count} replica(s))"),
                );
                self.forget_exited(rt);
            }
            Err(err) => {
                for r in &new {
                    r.stop();
                }
                if let Some(err) = err {
                    api_log(log, &format!("error: {err}"));
                    self.fail(rt, generation, err);
                }
            }
        }
    }

    /// A rolling update from the serving generation to `plan`, within `max_surge` and
    /// `max_unavailable` of the desired count (Kubernetes' rules). Old replicas stop (and
    /// drain) only once enough new ones are ready. A new replica that fails halts the rollout:
    /// the new ones stop and the old generation is brought back to the desired count.
    async fn roll(self: &Arc<Self>, rt: &Arc<ApiRuntime>, plan: LaunchPlan, log: &Path) {
        let generation = plan.generation;
        {
            let mut g = rt.lock();
            let a = &plan.spec.autoscaling;
            g.desired = g.desired.clamp(a.min_replicas, a.max_replicas).max(1);
            g.rollout = Some(plan.clone());
        }
        api_log(
            log,
            &format!(
                "rolling update to generation {generation} (max_surge {}, max_unavailable {})",
                plan.spec.update_strategy.max_surge, plan.spec.update_strategy.max_unavailable
            ),
        );
        let outcome: Result<(), Option<String>> = loop {
            if rt.latest_generation.load(Ordering::SeqCst) != generation || rt.lock().deleted {
                break Err(None);
            }
            // "Old" is every other version: the serving one, and a rollout this one superseded
            // (whose ready replicas kept serving).
            let (desired, old, new): (u32, Vec<Arc<Replica>>, Vec<Arc<Replica>>) = {
                let g = rt.lock();
                let (new, old) = g
                    .replicas
                    .iter()
                    .cloned()
                    .partition(|r| r.generation == generation);
                (g.desired, old, new)
            };
            let new_failed = new.iter().find_map(|r| {
                let i = r.lock();
                match i.state {
                    ReplicaState::Failed | ReplicaState::Exited => Some(
                        i.error
                            .clone()
                            .unwrap_or_else(|| "a new replica exited".to_string()),
                    ),
                    _ => None,
                }
            });
            if let Some(err) = new_failed {
                break Err(Some(err));
            }
            let count = |v: &[Arc<Replica>], f: fn(&Replica) -> bool| -> u32 {
                v.iter().filter(|r| f(r)).count() as u32
            };
            let new_alive = count(&new, Replica::counts_toward_desired);
            let new_ready = count(&new, Replica::is_ready);
            let old_alive = count(&old, Replica::counts_toward_desired);
            let old_ready = count(&old, Replica::is_ready);
            if new_ready >= desired {
                break Ok(());
            }
            let (surge, unavailable) = plan.spec.update_strategy.resolve(desired);
            set_message(
                rt,
                generation,
                &format!(
                    "rolling update: {new_ready}/{desired} new replicas ready, {old_ready} old serving"
                ),
            );
            let step = rollout::step(rollout::Counts {
                desired,
                surge,
                unavailable,
                old_alive,
                old_ready,
                new_alive,
                new_ready,
            });
            for _ in 0..step.start {
                match self.spawn_replica(rt, &plan, 0) {
                    Ok(r) => self.adopt(rt, r),
                    Err(e) => {
                        api_log(log, &format!("error: starting a replica: {e}"));
                        break;
                    }
                }
            }
            // Old replicas not serving go first, then the least busy of the ready ones.
            let mut may_stop = step.stop_ready;
            let mut candidates: Vec<&Arc<Replica>> =
                old.iter().filter(|r| r.counts_toward_desired()).collect();
            candidates.sort_by_key(|r| (r.is_ready(), r.lock().in_flight));
            for r in candidates {
                if r.is_ready() {
                    if may_stop == 0 {
                        break;
                    }
                    may_stop -= 1;
                }
                r.cancel_restart();
                r.stop();
            }
            self.publish_routes(rt);
            wait_any(&new).await;
        };
        match outcome {
            Ok(()) => {
                let old: Vec<Arc<Replica>> = {
                    let mut g = rt.lock();
                    // A newer deploy may have started its rollout since the loop looked.
                    if rt.latest_generation.load(Ordering::SeqCst) != generation
                        || g.rollout.as_ref().map(|p| p.generation) != Some(generation)
                    {
                        return;
                    }
                    g.serving = g.rollout.take();
                    g.status = Status::Live;
                    g.message = None;
                    g.error = None;
                    g.replicas
                        .iter()
                        .filter(|r| r.generation != generation)
                        .cloned()
                        .collect()
                };
                for r in &old {
                    r.cancel_restart();
                    r.stop();
                }
                self.publish_routes(rt);
                self.record_serving(rt, &plan.stored);
                api_log(log, &format!("generation {generation} is live"));
                self.forget_exited(rt);
                self.reconcile(rt);
            }
            // Superseded: the newer deploy's rollout takes these replicas as old ones and
            // replaces them within its own limits, so the ready ones keep serving meanwhile.
            Err(None) => {
                let mut g = rt.lock();
                if g.rollout.as_ref().map(|p| p.generation) == Some(generation) {
                    g.rollout = None;
                }
            }
            Err(err) => {
                let new: Vec<Arc<Replica>> = {
                    let mut g = rt.lock();
                    if g.rollout.as_ref().map(|p| p.generation) == Some(generation) {
                        g.rollout = None;
                    }
                    g.replicas
                        .iter()
                        .filter(|r| r.generation == generation)
                        .cloned()
                        .collect()
                };
                for r in &new {
                    r.stop();
                }
                self.publish_routes(rt);
                self.forget_exited(rt);
                if let Some(err) = err {
                    api_log(
                        log,
                        &format!(
                            "error: rolling update to generation {generation} halted: {err}; the previous version keeps serving"
                        ),
                    );
                    self.fail(rt, generation, err);
                    self.reconcile(rt);
                }
            }
        }
    }

    /// Brings the serving generation to the desired replica count: starts missing replicas,
    /// or stops the extra ones (those not serving first, then the least busy), which drain
    /// before they exit. A rollout does this itself while it runs.
    fn reconcile(self: &Arc<Self>, rt: &Arc<ApiRuntime>) {
        let (plan, alive, desired) = {
            let g = rt.lock();
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
                match self.spawn_replica(rt, &plan, 0) {
                    Ok(r) => self.adopt(rt, r),
                    Err(e) => {
                        api_log(
                            &self.home.api_log(&rt.name),
                            &format!("error: starting a replica: {e}"),
                        );
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
            self.publish_routes(rt);
            self.forget_exited(rt);
        }
        // Replicas of a superseded rollout whose successor never started (it failed while
        // preparing): they served meanwhile; once the serving version is whole, they go.
        let leftovers: Vec<Arc<Replica>> = {
            let g = rt.lock();
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
            self.publish_routes(rt);
            self.forget_exited(rt);
        }
    }

    /// Adds a replica just started to the API's list, unless the API was deleted meanwhile
    /// (then nothing else would stop it).
    fn adopt(&self, rt: &Arc<ApiRuntime>, r: Arc<Replica>) {
        let mut g = rt.lock();
        let deleted = g.deleted;
        g.replicas.push(r.clone());
        drop(g);
        if deleted {
            r.stop();
        }
    }

    fn fail(&self, rt: &Arc<ApiRuntime>, generation: u64, error: String) {
        {
            let mut g = rt.lock();
            if rt.latest_generation.load(Ordering::SeqCst) != generation || g.deleted {
                return;
            }
            g.status = Status::Error;
            g.message = None;
            g.error = Some(error.clone());
        }
        // Kept so that a restart shows the same error while the last good version serves.
        if let Err(e) = self.state.set_error(&rt.name, generation, &error) {
            tracing::error!(
                "api {}: recording the failure of generation {generation}: {e}",
                rt.name
            );
        }
        self.publish_routes(rt);
    }

    /// Records the generation that just went live: after a restart it serves again, even if
    /// a newer deploy failed.
    fn record_serving(&self, rt: &ApiRuntime, stored: &StoredApi) {
        if rt.lock().deleted {
            return;
        }
        if let Err(e) = self.state.set_serving(stored) {
            tracing::error!(
                "api {}: recording generation {} as serving: {e}",
                rt.name,
                stored.generation
            );
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
        let Some(rt) = self.apis().get(&name).cloned() else {
            return;
        };
        let me = self.clone();
        tokio::spawn(async move {
            // Until the serving generation is up (or failed), unless a deploy came meanwhile.
            loop {
                if rt.latest_generation.load(Ordering::SeqCst) != serving_generation
                    || rt.lock().deleted
                {
                    return;
                }
                if rt.lock().status != Status::Updating {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            me.apply(desired.0, desired.1, FetchContext::cached());
        });
    }

    /// Replaces ready replicas that stopped reporting: out of the route table at once (their
    /// in-flight requests end with 503 when the process dies), then killed; their exit restarts
    /// them like any crash.
    pub fn start_heartbeat_watch(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_secs(1));
            loop {
                ticker.tick().await;
                let Some(me) = me.upgrade() else { return };
                let apis: Vec<Arc<ApiRuntime>> = me.apis().values().cloned().collect();
                for rt in apis {
                    let replicas: Vec<Arc<Replica>> = rt.lock().replicas.clone();
                    let mut changed = false;
                    for r in replicas {
                        let pid = {
                            let mut g = r.lock();
                            if g.state != ReplicaState::Ready
                                || g.unresponsive
                                || g.last_seen.elapsed() < HEARTBEAT_TIMEOUT
                            {
                                continue;
                            }
                            g.unresponsive = true;
                            g.error = Some(format!(
                                "stopped answering (no report for {}s); replaced",
                                HEARTBEAT_TIMEOUT.as_secs()
                            ));
                            g.pid
                        };
                        changed = true;
                        api_log(
                            &me.home.api_log(&rt.name),
                            &format!(
                                "replica {} stopped answering (no report for {}s): killing and replacing it",
                                r.id,
                                HEARTBEAT_TIMEOUT.as_secs()
                            ),
                        );
                        if let Some(pid) = pid {
                            signal_group(pid, libc::SIGKILL);
                        }
                    }
                    if changed {
                        me.publish_routes(&rt);
                    }
                }
            }
        });
    }

    /// Starts one replica process and the task that watches it.
    fn spawn_replica(
        self: &Arc<Self>,
        rt: &Arc<ApiRuntime>,
        plan: &LaunchPlan,
        restarts: u32,
    ) -> Result<Arc<Replica>, String> {
        let seq = rt.replica_seq.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-g{}-r{}", rt.name, plan.generation, seq);
        let slot = seq;
        let log_path = self.home.api_log(&rt.name);
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("opening {}: {e}", log_path.display()))?;

        let mut cmd = tokio::process::Command::new(&self.self_exe);
        cmd.arg("replica")
            .arg("--id")
            .arg(&id)
            .arg("--project")
            .arg(&plan.project_dir)
            .arg("--python")
            .arg(&plan.python)
            .arg("--lib-dir")
            .arg(self.home.lib());
        if let Some(m) = &plan.model_path {
            cmd.arg("--model-path").arg(m);
        }
        for (name, path) in &plan.models {
            let mut arg = std::ffi::OsString::from(format!("{name}="));
            arg.push(path);
            cmd.arg("--model").arg(arg);
        }
        if let Some(lib) = &plan.onnx_library {
            cmd.arg("--onnx-library").arg(lib);
        }
        let limits = Limits::from_spec(&plan.spec.compute);
        if let Some(devices) = self.compute.gpu_devices(slot, limits.gpus) {
            // nvidia-smi's numbering, which the assignment follows.
            cmd.env("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
                .env("CUDA_VISIBLE_DEVICES", devices);
        }
        cmd.current_dir(&plan.project_dir)
            .envs(plan.env.iter().map(|(k, v)| (k, v)))
            .env("GYRUS_HOME", self.home.root())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(false);
        // SAFETY: only async-signal-safe calls (setpgid, prctl) between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // Own process group: a Ctrl-C on a foreground daemon reaches the daemon only,
                // which then stops replicas gracefully.
                libc::setpgid(0, 0);
                #[cfg(target_os = "linux")]
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.self_exe.display()))?;
        let pid = child.id();
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        // Limits go on before the replica forks its workers, which then inherit them.
        let limit = match pid.map(|p| self.compute.attach(&id, p, &limits)) {
            Some(Ok(l)) => Some(l),
            Some(Err(e)) => {
                api_log(
                    &log_path,
                    &format!("warning: replica {id} runs without compute limits: {e}"),
                );
                None
            }
            None => None,
        };

        let replica = Arc::new(Replica {
            id: id.clone(),
            generation: plan.generation,
            started_at: now(),
            started: std::time::Instant::now(),
            restarts,
            inner: Mutex::new(ReplicaInner {
                state: ReplicaState::Starting,
                pid,
                port: None,
                target: None,
                error: None,
                stdin: None,
                pending_restart: false,
                in_flight: 0,
                last_exit: None,
                last_seen: std::time::Instant::now(),
                unresponsive: false,
                workers_crash_looping: false,
            }),
            state_changed: tokio::sync::Notify::new(),
        });

        // Kept for the replica's whole life (its cgroup can only go once it is empty).
        if let Some(mut limit) = limit {
            let r = replica.clone();
            let log = log_path.clone();
            let watch_memory = limits.memory_bytes.is_some();
            tokio::spawn(async move {
                let mut every_second = tokio::time::interval(Duration::from_secs(1));
                loop {
                    every_second.tick().await;
                    // Checked before the state: with cgroup v2 the kernel kills the replica and
                    // the exit is seen first; memory.events still tells why.
                    if let Some(oom) = watch_memory.then(|| limit.check()).flatten() {
                        // check() has killed the replica's process group; its exit is handled
                        // as a crash, with this as the reason.
                        api_log(&log, &format!("replica {}: {oom}", r.id));
                        r.lock().error = Some(oom.to_string());
                        break;
                    }
                    if matches!(r.state(), ReplicaState::Exited | ReplicaState::Failed) {
                        break;
                    }
                }
                // Dropped once the replica is gone, so its cgroup can be removed.
                while !matches!(r.state(), ReplicaState::Exited | ReplicaState::Failed) {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                drop(limit);
            });
        }

        let me = self.clone();
        let rt = rt.clone();
        let plan = plan.clone();
        let r = replica.clone();
        let spec_line = format!("{}\n", plan.spec_json);
        tokio::spawn(async move {
            // The spec travels on stdin so it is not inherited by the predictor's environment.
            if let Some(mut stdin) = stdin {
                if stdin.write_all(spec_line.as_bytes()).await.is_ok() {
                    r.lock().stdin = Some(stdin);
                }
            }
            if let Some(stdout) = stdout {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    me.on_replica_event(&rt, &r, &line);
                }
            }
            let status = child.wait().await;
            let detail = match &status {
                Ok(s) => s.to_string(),
                Err(e) => e.to_string(),
            };
            me.on_replica_exit(&rt, &r, &plan, detail).await;
        });
        Ok(replica)
    }

    fn on_replica_event(&self, rt: &Arc<ApiRuntime>, r: &Arc<Replica>, line: &str) {
        let Ok(ev) = serde_json::from_str::<serde_json::Value>(line) else {
            return;
        };
        r.lock().last_seen = std::time::Instant::now();
        match ev.get("event").and_then(|e| e.as_str()) {
            Some("listening") => {
                let port = ev.get("port").and_then(|p| p.as_u64()).unwrap_or(0) as u16;
                let mut g = r.lock();
                g.port = Some(port);
                g.target = Some(ReplicaTarget::new(
                    r.id.clone(),
                    SocketAddr::from(([127, 0, 0, 1], port)),
                ));
            }
            Some("ready") => {
                {
                    let mut g = r.lock();
                    if g.state == ReplicaState::Starting {
                        g.state = ReplicaState::Ready;
                    }
                }
                r.state_changed.notify_waiters();
                self.publish_routes(rt);
            }
            Some("metrics") => {
                let n = ev.get("in_flight").and_then(|n| n.as_u64()).unwrap_or(0);
                let n = u32::try_from(n).unwrap_or(u32::MAX);
                let crash_looping = ev
                    .get("workers_crash_looping")
                    .and_then(|c| c.as_bool())
                    .unwrap_or(false);
                {
                    let mut g = r.lock();
                    g.in_flight = n;
                    g.workers_crash_looping = crash_looping;
                }
                let now = self.clock();
                rt.lock().metrics.record(now, &r.id, n);
            }
            Some("failed") => {
                let err = ev
                    .get("error")
                    .and_then(|e| e.as_str())
                    .unwrap_or("replica failed")
                    .to_owned();
                r.lock().error = Some(err);
            }
            _ => {}
        }
    }

    async fn on_replica_exit(
        self: &Arc<Self>,
        rt: &Arc<ApiRuntime>,
        r: &Arc<Replica>,
        plan: &LaunchPlan,
        detail: String,
    ) {
        let previous = {
            let mut g = r.lock();
            let prev = g.state;
            g.state = if prev == ReplicaState::Starting {
                if g.error.is_none() {
                    g.error = Some(format!("replica exited before it was ready ({detail})"));
                }
                ReplicaState::Failed
            } else {
                ReplicaState::Exited
            };
            g.stdin = None;
            // Counted as "waiting to restart" from the moment it died, so a reconcile in
            // between does not start a second replacement; cleared below when no restart
            // follows.
            g.pending_restart = prev != ReplicaState::Stopping;
            prev
        };
        r.state_changed.notify_waiters();
        self.publish_routes(rt);
        // Stopped on purpose: nothing to heal. A replica of a generation still starting is the
        // deploy's business (it reports the failure). Otherwise the replica belonged to the
        // serving generation (it died, or its replacement failed to start): restart it.
        if previous == ReplicaState::Stopping {
            return;
        }
        let log = self.home.api_log(&rt.name);
        let serving_gen = rt.lock().serving.as_ref().map(|p| p.generation);
        if rt.lock().deleted || serving_gen != Some(plan.generation) {
            r.cancel_restart();
            return;
        }
        // A replica that stayed up a while earned a quick restart again.
        let restarts = if r.started.elapsed() > STABLE_AFTER {
            1
        } else {
            r.restarts + 1
        };
        // 1 s, 2 s, 4 s ... for the 1st, 2nd, 3rd quick crash in a row.
        let backoff =
            Duration::from_secs(1u64 << restarts.saturating_sub(1).min(5)).min(MAX_RESTART_BACKOFF);
        api_log(
            &log,
            &format!(
                "replica {} exited unexpectedly ({}); restarting in {}s",
                r.id,
                r.lock().error.clone().unwrap_or_else(|| detail.clone()),
                backoff.as_secs()
            ),
        );
        tokio::time::sleep(backoff).await;
        let still_serving = {
            let g = rt.lock();
            !g.deleted && g.serving.as_ref().map(|p| p.generation) == Some(plan.generation)
        };
        // Scaling down (or a finished rollout) may have cancelled the restart meanwhile.
        if !still_serving || !r.lock().pending_restart {
            r.cancel_restart();
            return;
        }
        match self.spawn_replica(rt, plan, restarts) {
            Ok(new) => {
                new.lock().last_exit = Some(
                    r.lock()
                        .error
                        .clone()
                        .unwrap_or_else(|| format!("exited unexpectedly ({detail})")),
                );
                let mut g = rt.lock();
                // Cancelled during the spawn (scaled down, deleted): the new one goes too.
                let cancelled = g.deleted || !r.lock().pending_restart;
                r.cancel_restart();
                g.replicas.retain(|x| !Arc::ptr_eq(x, r));
                g.replicas.push(new.clone());
                drop(g);
                if cancelled {
                    new.stop();
                }
            }
            Err(e) => {
                r.cancel_restart();
                api_log(&log, &format!("error: restarting replica: {e}"));
            }
        }
    }

    fn forget_exited(&self, rt: &Arc<ApiRuntime>) {
        let rt = rt.clone();
        tokio::spawn(async move {
            tokio::time::sleep(STOP_GRACE + Duration::from_secs(1)).await;
            rt.lock()
                .replicas
                .retain(|r| !matches!(r.state(), ReplicaState::Exited | ReplicaState::Failed));
        });
    }

    /// Tells the gateway which replicas of the serving generation are ready.
    fn publish_routes(&self, rt: &Arc<ApiRuntime>) {
        let g = rt.lock();
        if g.deleted {
            return;
        }
        // Every ready replica serves: during a rollout, both versions (and those of a rollout it
        // superseded); a replica leaves the table when it stops being ready (stopping, exited).
        let replicas = g
            .replicas
            .iter()
            .filter_map(|r| {
                let i = r.lock();
                (i.state == ReplicaState::Ready && !i.unresponsive)
                    .then(|| i.target.clone())
                    .flatten()
            })
            .collect();
        self.routes.set_api(ApiRoute {
            api: rt.name.clone(),
            endpoint: g.spec.endpoint.clone(),
            status: g.status.as_str().to_owned(),
            replicas,
            models: g
                .serving
                .as_ref()
                .map(|p| p.v2_models.clone())
                .unwrap_or_default(),
        });
    }

    /// Stops and forgets an API. Waits (bounded) for its replicas to exit.
    pub async fn remove(&self, name: &str) -> bool {
        let Some(rt) = self.apis().remove(name) else {
            return false;
        };
        rt.latest_generation.store(u64::MAX, Ordering::SeqCst);
        let replicas = {
            let mut g = rt.lock();
            g.deleted = true;
            g.replicas.clone()
        };
        self.routes.remove_api(name);
        for r in &replicas {
            r.stop();
        }
        for r in &replicas {
            r.wait_exited(STOP_GRACE + Duration::from_secs(2)).await;
        }
        api_log(&self.home.api_log(name), "deleted");
        true
    }

    /// Stops every replica (daemon shutdown). APIs stay in the state database.
    pub async fn shutdown(&self) {
        let all: Vec<Arc<ApiRuntime>> = self.apis().values().cloned().collect();
        let mut replicas = Vec::new();
        for rt in &all {
            rt.latest_generation.store(u64::MAX, Ordering::SeqCst);
            let mut g = rt.lock();
            g.deleted = true;
            replicas.extend(g.replicas.iter().cloned());
        }
        for r in &replicas {
            r.stop();
        }
        for r in &replicas {
            r.wait_exited(STOP_GRACE + Duration::from_secs(2)).await;
        }
    }

    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.apis().keys().cloned().collect();
        v.sort();
        v
    }

    /// Each API's specs in use: the one being deployed and the serving generation's (which
    /// differ while a new version starts, or after it failed and the old one keeps serving).
    pub fn specs_in_use(&self) -> Vec<(String, ApiSpec)> {
        let apis: Vec<Arc<ApiRuntime>> = self.apis().values().cloned().collect();
        let mut out = Vec::new();
        for rt in apis {
            let g = rt.lock();
            out.push((rt.name.clone(), (*g.spec).clone()));
            if let Some(plan) = &g.serving {
                if let Ok(spec) = serde_json::from_str::<ApiSpec>(&plan.spec_json) {
                    out.push((rt.name.clone(), spec));
                }
            }
        }
        out
    }

    pub fn info(&self, name: &str) -> Option<ApiInfo> {
        let rt = self.apis().get(name).cloned()?;
        let now = self.clock();
        let g = rt.lock();
        let serving = g.serving.as_ref().map(|p| p.generation);
        let rolling = g.rollout.as_ref().map(|p| p.generation);
        let details: Vec<ReplicaInfo> = g.replicas.iter().map(|r| r.info()).collect();
        let current: Vec<&Arc<Replica>> = g
            .replicas
            .iter()
            .filter(|r| Some(r.generation) == serving || Some(r.generation) == rolling)
            .collect();
        let count = |f: &dyn Fn(&Replica) -> bool| current.iter().filter(|r| f(r)).count() as u32;
        let ready = count(&|r| r.state() == ReplicaState::Ready);
        let starting = count(&|r| r.state() == ReplicaState::Starting);
        let failed = count(&|r| {
            let i = r.lock();
            i.pending_restart || i.state == ReplicaState::Failed
        });
        // Crashing again soon after each restart (replicas, or the Python workers inside a
        // ready replica, which then answers 503 at once): say so rather than "live".
        let crash_looping = current.iter().any(|r| {
            let g = r.lock();
            (r.restarts >= 3 && (g.pending_restart || r.started.elapsed() < STABLE_AFTER))
                || (g.state == ReplicaState::Ready && g.workers_crash_looping)
        });
        let status = if g.status == Status::Live && crash_looping {
            "crash-looping"
        } else {
            g.status.as_str()
        };
        let window = g
            .serving
            .as_ref()
            .map(|p| p.spec.autoscaling.window.as_duration())
            .unwrap_or(Duration::from_secs(60));
        let requested = if g.desired > 0 {
            g.desired
        } else {
            g.spec.autoscaling.init_replicas.max(1)
        };
        Some(ApiInfo {
            name: g.spec.name.clone(),
            kind: g.spec.kind.to_string(),
            predictor_type: g.spec.predictor.kind.to_string(),
            endpoint: g.spec.endpoint.clone(),
            url: format!("{}{}", self.gateway_url, g.spec.endpoint),
            status: status.to_owned(),
            message: g.message.clone(),
            progress: g.progress.clone(),
            error: g.error.clone(),
            replicas: ReplicaCounts {
                requested,
                ready,
                starting,
                failed,
            },
            autoscaling: g.serving.as_ref().map(|_| AutoscalingInfo {
                in_flight_avg: g.metrics.average(complete_seconds(now), window),
                // What each live replica said last (the current second's bucket is still
                // filling).
                in_flight_now: Some(
                    current
                        .iter()
                        .filter(|r| r.counts_toward_desired())
                        .map(|r| r.lock().in_flight)
                        .sum(),
                ),
                window_secs: window.as_secs(),
                last_decision: g.last_decision.clone(),
                last_change: g.last_change.clone(),
            }),
            generation: g.stored.generation,
            created_at: g.stored.created_at.clone(),
            updated_at: g.stored.updated_at.clone(),
            replica_details: details,
        })
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
                let apis: Vec<Arc<ApiRuntime>> = me.apis().values().cloned().collect();
                for rt in apis {
                    me.autoscale(&rt);
                }
            }
        });
    }

    fn autoscale(self: &Arc<Self>, rt: &Arc<ApiRuntime>) {
        let now = self.clock();
        let change = {
            let mut g = rt.lock();
            // A rollout manages replicas itself; scaling resumes when it is done.
            if g.deleted || g.rollout.is_some() {
                return;
            }
            let Some(spec) = g.serving.as_ref().map(|p| p.spec.clone()) else {
                return;
            };
            let params = Params::from_spec(&spec.autoscaling);
            let keep = params.window.max(Duration::from_secs(1));
            g.metrics.prune(now, keep);
            let avg = g.metrics.average(complete_seconds(now), params.window);
            let current = g.desired;
            let d = g.autoscaler.tick(&params, now, avg, current);
            let decision = ScalingDecision {
                at: self::now(),
                from: current,
                to: d.replicas,
                avg_in_flight: d.avg_in_flight,
                reason: d.reason,
            };
            g.last_decision = Some(decision.clone());
            if d.replicas == current {
                None
            } else {
                g.desired = d.replicas;
                g.last_change = Some(decision.clone());
                Some(decision)
            }
        };
        if let Some(d) = change {
            api_log(
                &self.home.api_log(&rt.name),
                &format!("autoscaler: {} → {} replicas ({})", d.from, d.to, d.reason),
            );
        }
        // Every tick, not only on a change: it also replaces replicas that could not start.
        self.reconcile(rt);
    }
}

/// The metrics clock up to the last whole second: the current second's bucket holds only the
/// replicas that have reported in it so far.
fn complete_seconds(now: Duration) -> Duration {
    Duration::from_secs(now.as_secs().saturating_sub(1))
}

fn set_message(rt: &ApiRuntime, generation: u64, msg: &str) {
    if rt.latest_generation.load(Ordering::SeqCst) == generation {
        rt.lock().message = Some(msg.to_owned());
    }
}

fn launch_plan(
    stored: &StoredApi,
    spec: Arc<ApiSpec>,
    python: PathBuf,
    onnx_library: Option<PathBuf>,
    project_dir: &Path,
    resolved: ResolvedModels,
) -> Result<LaunchPlan, String> {
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
    let spec_json = serde_json::to_string(&*spec).map_err(|e| e.to_string())?;
    Ok(LaunchPlan {
        generation: stored.generation,
        stored: stored.clone(),
        spec: spec.clone(),
        spec_json: Arc::new(spec_json),
        project_dir: project_dir.to_path_buf(),
        python,
        env,
        model_path,
        v2_models: if spec.predictor.path.is_none() {
            models.iter().map(|(name, _)| name.clone()).collect()
        } else {
            Vec::new()
        },
        models,
        onnx_library,
    })
}

/// Appends a line from the daemon to an API's log, where the user reads it with `gyrus logs`.
pub fn api_log(path: &Path, msg: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "[gyrus {}] {msg}", now());
    }
}

pub fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}
