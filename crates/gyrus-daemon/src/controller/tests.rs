//! Table cases of the controller on tokio's paused clock, with a fake launcher whose replicas
//! do what each case scripts (become ready, fail to start, or wait for the test), and which
//! checks the rollout's bounds on every start and stop.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gyrus_gateway::RouteTable;
use gyrus_launch::ReplicaEvent;
use tokio::sync::mpsc;

use super::*;
use crate::launcher::{LaunchError, LaunchRequest, Launched, LauncherEvent, ReplicaHandle};

/// What the replicas of one generation do when launched.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Script {
    /// Listening and ready at once.
    Healthy,
    /// Reports a failure and exits.
    FailsToStart,
    /// Listening, then nothing until the test says so.
    Manual,
}

struct FakeReplica {
    generation: u64,
    events: mpsc::UnboundedSender<LauncherEvent>,
    ready: AtomicBool,
    gone: AtomicBool,
    launcher: std::sync::Weak<FakeLauncher>,
}

impl FakeReplica {
    fn send(&self, e: ReplicaEvent) {
        if e == ReplicaEvent::Ready {
            self.ready.store(true, Ordering::SeqCst);
        }
        let _ = self.events.send(LauncherEvent::Replica(e));
    }

    fn exit(&self, how: &str) {
        if !self.gone.swap(true, Ordering::SeqCst) {
            self.ready.store(false, Ordering::SeqCst);
            let _ = self.events.send(LauncherEvent::Exited(how.into()));
        }
    }
}

impl ReplicaHandle for FakeReplica {
    fn pid(&self) -> Option<u32> {
        None
    }
    fn host(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    }
    fn stop(&self, _grace: Duration) {
        // Drains at once, then exits; the rollout's floor is checked the moment it goes.
        self.ready.store(false, Ordering::SeqCst);
        if let Some(l) = self.launcher.upgrade() {
            l.check_floor();
        }
        self.exit("exit status: 0");
    }
    fn kill(&self) {
        self.exit("signal: 9 (SIGKILL)");
    }
}

#[derive(Default)]
struct FakeLauncher {
    scripts: Mutex<HashMap<u64, Script>>,
    replicas: Mutex<Vec<Arc<FakeReplica>>>,
    /// (ceiling of replicas alive, floor of replicas ready) to hold during a rollout.
    bounds: Mutex<Option<(usize, usize)>>,
    violations: Mutex<Vec<String>>,
    me: Mutex<std::sync::Weak<FakeLauncher>>,
}

impl FakeLauncher {
    fn new() -> Arc<Self> {
        let l = Arc::new(FakeLauncher::default());
        *l.me.lock().unwrap() = Arc::downgrade(&l);
        l
    }

    fn script(&self, generation: u64, script: Script) {
        self.scripts.lock().unwrap().insert(generation, script);
    }

    fn alive(&self) -> Vec<Arc<FakeReplica>> {
        let all = self.replicas.lock().unwrap();
        all.iter()
            .filter(|r| !r.gone.load(Ordering::SeqCst))
            .cloned()
            .collect()
    }

    fn alive_of(&self, generation: u64) -> usize {
        self.alive()
            .iter()
            .filter(|r| r.generation == generation)
            .count()
    }

    fn launched_of(&self, generation: u64) -> usize {
        let all = self.replicas.lock().unwrap();
        all.iter().filter(|r| r.generation == generation).count()
    }

    fn check_floor(&self) {
        if let Some((_, floor)) = *self.bounds.lock().unwrap() {
            let ready = self
                .alive()
                .iter()
                .filter(|r| r.ready.load(Ordering::SeqCst))
                .count();
            if ready < floor {
                self.violations
                    .lock()
                    .unwrap()
                    .push(format!("{ready} ready, below {floor}"));
            }
        }
    }
}

impl ReplicaLauncher for FakeLauncher {
    fn launch(&self, request: LaunchRequest) -> Result<Launched, LaunchError> {
        let id = request.launch.id.clone();
        let generation: u64 = id
            .rsplit_once("-g")
            .and_then(|(_, rest)| rest.split('-').next())
            .and_then(|g| g.parse().ok())
            .expect("ids are <api>-g<generation>-r<n>");
        let script = self
            .scripts
            .lock()
            .unwrap()
            .get(&generation)
            .copied()
            .unwrap_or(Script::Healthy);
        let (tx, events) = mpsc::unbounded_channel();
        let replica = Arc::new(FakeReplica {
            generation,
            events: tx,
            ready: AtomicBool::new(false),
            gone: AtomicBool::new(false),
            launcher: self.me.lock().unwrap().clone(),
        });
        self.replicas.lock().unwrap().push(replica.clone());
        if let Some((ceiling, _)) = *self.bounds.lock().unwrap() {
            let alive = self.alive().len();
            if alive > ceiling {
                self.violations
                    .lock()
                    .unwrap()
                    .push(format!("{alive} alive, above {ceiling}"));
            }
        }
        replica.send(ReplicaEvent::Listening { port: 9 });
        match script {
            Script::Healthy => replica.send(ReplicaEvent::Ready),
            Script::FailsToStart => {
                replica.send(ReplicaEvent::Failed {
                    error: "sentinel: constructor raised".into(),
                });
                replica.exit("exit status: 1");
            }
            Script::Manual => {}
        }
        Ok(Launched {
            handoff: None,
            handle: replica,
            events,
        })
    }
}

#[derive(Default)]
struct Recorder {
    serving: Mutex<Vec<u64>>,
    failed: Mutex<Vec<(u64, String)>>,
}

impl GenerationRecorder for Recorder {
    fn serving(&self, stored: &StoredApi) {
        self.serving.lock().unwrap().push(stored.generation);
    }
    fn failed(&self, _api: &str, generation: u64, error: &str) {
        self.failed
            .lock()
            .unwrap()
            .push((generation, error.to_owned()));
    }
}

struct Harness {
    api: Arc<ApiController>,
    launcher: Arc<FakeLauncher>,
    routes: Arc<RouteTable>,
    recorder: Arc<Recorder>,
}

fn spec(yaml_extra: &str) -> Arc<ApiSpec> {
    let text = format!(
        "- name: iris\n  predictor:\n    type: python\n    path: predictor.py\n{yaml_extra}"
    );
    let parsed = gyrus_spec::load("cortex.yaml", &text, None).expect("a valid spec");
    Arc::new(parsed.apis.into_iter().next().expect("one api"))
}

fn stored(generation: u64) -> StoredApi {
    StoredApi {
        name: "iris".into(),
        spec_json: "{}".into(),
        project_dir: "/p".into(),
        dotenv_json: "[]".into(),
        deploy_hash: format!("h{generation}"),
        generation,
        created_at: "t".into(),
        updated_at: "t".into(),
    }
}

fn plan(generation: u64, spec: Arc<ApiSpec>) -> Generation {
    Generation {
        generation,
        stored: stored(generation),
        spec,
        project_dir: PathBuf::from("/p"),
        python: PathBuf::from("python3"),
        env: Vec::new(),
        model_path: None,
        models: Vec::new(),
        v2_models: Vec::new(),
        onnx_library: None,
        tensorflow_library: None,
    }
}

fn harness() -> Harness {
    let launcher = FakeLauncher::new();
    let routes = RouteTable::new();
    let recorder = Arc::new(Recorder::default());
    let ctx = Arc::new(ControllerContext {
        launcher: launcher.clone(),
        routes: routes.clone(),
        recorder: recorder.clone(),
        lib_dir: PathBuf::from("/lib"),
        gateway_url: "http://127.0.0.1:8888".into(),
        epoch: Instant::now(),
        observer: Arc::new(super::NoObserver),
    });
    let api = ApiController::new(ctx, stored(0), spec(""));
    Harness {
        api,
        launcher,
        routes,
        recorder,
    }
}

impl Harness {
    /// Begins and deploys `generation` to the end (live, failed or superseded).
    async fn deploy(&self, generation: u64, spec: Arc<ApiSpec>) {
        self.api.begin(stored(generation), spec.clone(), None);
        self.api.deploy(plan(generation, spec)).await;
    }

    /// Deploys in the background (for cases that act while it runs).
    fn deploy_in_background(&self, generation: u64, spec: Arc<ApiSpec>) {
        self.api.begin(stored(generation), spec.clone(), None);
        let api = self.api.clone();
        tokio::spawn(async move { api.deploy(plan(generation, spec)).await });
    }

    fn routed(&self) -> usize {
        self.routes.replicas_of("iris")
    }

    fn status(&self) -> String {
        self.api.info().status
    }
}

/// Lets spawned tasks run and the paused clock move on by `d`.
async fn wait(d: Duration) {
    tokio::time::sleep(d).await;
}

#[tokio::test(start_paused = true)]
async fn first_deploy_starts_init_replicas_and_goes_live() {
    let h = harness();
    h.deploy(
        1,
        spec("  autoscaling:\n    init_replicas: 2\n    max_replicas: 4\n"),
    )
    .await;
    assert_eq!(h.status(), "live");
    assert_eq!(h.launcher.alive_of(1), 2);
    assert_eq!(h.routed(), 2);
    assert_eq!(*h.recorder.serving.lock().unwrap(), vec![1]);
    let info = h.api.info();
    assert_eq!(info.replicas.ready, 2);
    assert_eq!(info.generation, 1);
}

#[tokio::test(start_paused = true)]
async fn rolls_within_surge_and_unavailable() {
    // (desired, max_surge, max_unavailable) → ceiling desired + surge, floor desired - unavailable
    for (desired, surge, unavailable) in [
        (3, "1", "0"),
        (3, "0", "1"),
        (4, "50%", "25%"),
        (1, "1", "0"),
    ] {
        let h = harness();
        let extra = format!(
            "  autoscaling:\n    init_replicas: {desired}\n    min_replicas: {desired}\n    max_replicas: {desired}\n  update_strategy:\n    max_surge: \"{surge}\"\n    max_unavailable: \"{unavailable}\"\n"
        );
        let s = spec(&extra);
        h.deploy(1, s.clone()).await;
        let (surge_n, unavailable_n) = s.update_strategy.resolve(desired);
        *h.launcher.bounds.lock().unwrap() = Some((
            (desired + surge_n) as usize,
            desired.saturating_sub(unavailable_n) as usize,
        ));
        h.deploy(2, s).await;
        assert_eq!(h.status(), "live", "case {desired} {surge} {unavailable}");
        wait(Duration::from_secs(5)).await;
        assert_eq!(h.launcher.alive_of(2), desired as usize);
        assert_eq!(h.launcher.alive_of(1), 0);
        assert!(
            h.launcher.violations.lock().unwrap().is_empty(),
            "case {desired} {surge} {unavailable}: {:?}",
            h.launcher.violations.lock().unwrap()
        );
        assert_eq!(*h.recorder.serving.lock().unwrap(), vec![1, 2]);
    }
}

#[tokio::test(start_paused = true)]
async fn a_failing_new_version_halts_the_roll_and_the_old_keeps_serving() {
    let h = harness();
    let s = spec("  autoscaling:\n    init_replicas: 2\n    min_replicas: 2\n");
    h.deploy(1, s.clone()).await;
    h.launcher.script(2, Script::FailsToStart);
    h.deploy(2, s).await;
    let info = h.api.info();
    assert_eq!(info.status, "error");
    assert!(info.error.unwrap().contains("sentinel"));
    assert_eq!(info.generation, 2);
    wait(Duration::from_secs(5)).await;
    assert_eq!(h.launcher.alive_of(1), 2);
    assert_eq!(h.launcher.alive_of(2), 0);
    assert_eq!(h.routed(), 2);
    assert_eq!(*h.recorder.serving.lock().unwrap(), vec![1]);
    assert_eq!(h.recorder.failed.lock().unwrap()[0].0, 2);
}

#[tokio::test(start_paused = true)]
async fn a_crash_restarts_with_backoff_and_repeated_crashes_are_crash_looping() {
    let h = harness();
    h.deploy(1, spec("")).await;
    let mut expected_backoff = 1;
    for crash in 1..=3 {
        let victim = h.launcher.alive()[0].clone();
        victim.exit("signal: 9 (SIGKILL)");
        wait(Duration::from_millis(100)).await;
        assert_eq!(
            h.routed(),
            0,
            "crash {crash}: the dead replica leaves the routes"
        );
        assert_eq!(h.api.info().replicas.failed, 1);
        // Not before its backoff (1 s, 2 s, 4 s) ...
        wait(Duration::from_millis(expected_backoff * 1000 - 200)).await;
        assert_eq!(
            h.launcher.launched_of(1),
            crash,
            "crash {crash}: restarted early"
        );
        // ... then at once.
        wait(Duration::from_millis(200)).await;
        assert_eq!(
            h.launcher.launched_of(1),
            crash + 1,
            "crash {crash}: not restarted"
        );
        assert_eq!(h.routed(), 1);
        expected_backoff *= 2;
    }
    assert_eq!(h.status(), "crash-looping");
    // A minute up, and it is live again.
    wait(Duration::from_secs(61)).await;
    assert_eq!(h.status(), "live");
}

#[tokio::test(start_paused = true)]
async fn a_deploy_supersedes_one_still_rolling() {
    let h = harness();
    let s = spec("  autoscaling:\n    init_replicas: 2\n    min_replicas: 2\n");
    h.deploy(1, s.clone()).await;
    h.launcher.script(2, Script::Manual); // never becomes ready
    h.deploy_in_background(2, s.clone());
    wait(Duration::from_secs(2)).await;
    assert_eq!(h.status(), "updating");
    assert!(h.launcher.alive_of(2) >= 1);
    assert_eq!(h.routed(), 2, "the old version serves during the roll");
    h.deploy(3, s).await;
    assert_eq!(h.status(), "live");
    assert_eq!(h.api.info().generation, 3);
    wait(Duration::from_secs(5)).await;
    assert_eq!(h.launcher.alive_of(3), 2);
    assert_eq!(h.launcher.alive_of(2), 0);
    assert_eq!(h.launcher.alive_of(1), 0);
    assert_eq!(*h.recorder.serving.lock().unwrap(), vec![1, 3]);
}

#[tokio::test(start_paused = true)]
async fn reconcile_scales_up_and_down() {
    let h = harness();
    h.deploy(1, spec("  autoscaling:\n    max_replicas: 5\n"))
        .await;
    assert_eq!(h.launcher.alive_of(1), 1);
    h.api.lock().desired = 3;
    h.api.reconcile();
    wait(Duration::from_millis(10)).await;
    assert_eq!(h.launcher.alive_of(1), 3);
    assert_eq!(h.routed(), 3);
    h.api.lock().desired = 1;
    h.api.reconcile();
    wait(Duration::from_secs(3)).await;
    assert_eq!(h.launcher.alive_of(1), 1);
    assert_eq!(h.routed(), 1);
    assert_eq!(h.api.info().replicas.requested, 1);
}

#[tokio::test(start_paused = true)]
async fn a_silent_replica_is_taken_out_of_routing_and_replaced() {
    let h = harness();
    h.deploy(
        1,
        spec("  autoscaling:\n    init_replicas: 2\n    min_replicas: 2\n"),
    )
    .await;
    let (quiet, talking) = {
        let alive = h.launcher.alive();
        (alive[0].clone(), alive[1].clone())
    };
    for _ in 0..6 {
        wait(Duration::from_secs(1)).await;
        talking.send(ReplicaEvent::Metrics {
            in_flight: 0,
            workers_crash_looping: false,
            models: Vec::new(),
            requests: Default::default(),
        });
        h.api.replace_hung();
    }
    assert!(
        quiet.gone.load(Ordering::SeqCst),
        "the silent replica is killed"
    );
    assert!(!talking.gone.load(Ordering::SeqCst));
    wait(Duration::from_millis(1100)).await;
    assert_eq!(h.launcher.alive_of(1), 2, "and replaced");
    let replaced = h
        .api
        .info()
        .replica_details
        .into_iter()
        .find(|r| r.last_exit.is_some())
        .expect("the replacement says why");
    assert!(replaced.last_exit.unwrap().contains("stopped answering"));
}

#[tokio::test(start_paused = true)]
async fn workers_crash_looping_shows_in_the_status() {
    let h = harness();
    h.deploy(1, spec("")).await;
    h.launcher.alive()[0].send(ReplicaEvent::Metrics {
        in_flight: 0,
        workers_crash_looping: true,
        models: Vec::new(),
        requests: Default::default(),
    });
    wait(Duration::from_millis(10)).await;
    assert_eq!(h.status(), "crash-looping");
}

#[tokio::test(start_paused = true)]
async fn a_restored_failure_shows_the_moment_the_last_good_version_is_live() {
    let h = harness();
    let s = spec("");
    h.api.begin(
        stored(1),
        s.clone(),
        Some(FailedDeploy {
            stored: stored(2),
            spec: s.clone(),
            error: "sentinel: v2 failed before the restart".into(),
        }),
    );
    h.api.deploy(plan(1, s)).await;
    let info = h.api.info();
    assert_eq!(info.status, "error");
    assert_eq!(info.generation, 2);
    assert!(info.error.unwrap().contains("before the restart"));
    assert_eq!(h.routed(), 1, "generation 1 serves");
    assert!(h.api.is_superseded(1), "a deploy of generation 2 is newer");
}
