//! One replica as the controller tracks it: its state, what it last reported, and how to stop
//! it without losing a request. The process itself is behind a [`ReplicaHandle`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use gyrus_gateway::ReplicaTarget;
use tokio::time::Instant;

use crate::api::ReplicaInfo;
use crate::launcher::ReplicaHandle;

/// How long a stopping replica may drain before it is killed.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(35);
/// A stopping replica is signalled once the gateway has sent it nothing for this long after it
/// left the route table (at most `ROUTE_SETTLE_MAX`, for requests still being sent to it).
const ROUTE_SETTLE_MIN: Duration = Duration::from_millis(50);
const ROUTE_SETTLE_MAX: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReplicaState {
    Starting,
    Ready,
    Stopping,
    Failed,
    Exited,
}

impl ReplicaState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ReplicaState::Starting => "starting",
            ReplicaState::Ready => "ready",
            ReplicaState::Stopping => "stopping",
            ReplicaState::Failed => "failed",
            ReplicaState::Exited => "exited",
        }
    }
}

pub(crate) struct Replica {
    pub(crate) id: String,
    pub(crate) generation: u64,
    pub(crate) started_at: String,
    pub(crate) started: Instant,
    pub(crate) restarts: u32,
    pub(crate) handle: Arc<dyn ReplicaHandle>,
    inner: Mutex<ReplicaInner>,
    pub(crate) state_changed: tokio::sync::Notify,
}

pub(crate) struct ReplicaInner {
    pub(crate) state: ReplicaState,
    pub(crate) port: Option<u16>,
    pub(crate) target: Option<Arc<ReplicaTarget>>,
    /// Where the gateway hands it connections (from its launch), for its route target.
    pub(crate) handoff: Option<Arc<gyrus_gateway::handoff::link::HandoffLink>>,
    pub(crate) error: Option<String>,
    /// The replica died and waits out its backoff before a replacement starts; scaling down
    /// clears it to cancel the restart.
    pub(crate) pending_restart: bool,
    /// Its in-flight requests, as it last reported them.
    pub(crate) in_flight: u32,
    /// Why the replica it replaced exited (a crash, out of memory, hung).
    pub(crate) last_exit: Option<String>,
    /// When it last reported (any event).
    pub(crate) last_seen: Instant,
    /// Stopped reporting while ready: out of routing, killed, and restarted as a crash.
    pub(crate) unresponsive: bool,
    /// Its Python workers keep dying soon after they start (it says so in its reports).
    pub(crate) workers_crash_looping: bool,
    /// What its inference service did per model, as it last reported (cumulative).
    pub(crate) models: Vec<gyrus_launch::ModelStats>,
}

impl Replica {
    pub(crate) fn new(
        id: String,
        generation: u64,
        restarts: u32,
        handle: Arc<dyn ReplicaHandle>,
    ) -> Arc<Self> {
        let now = Instant::now();
        Arc::new(Replica {
            id,
            generation,
            started_at: crate::now(),
            started: now,
            restarts,
            handle,
            inner: Mutex::new(ReplicaInner {
                state: ReplicaState::Starting,
                port: None,
                target: None,
                handoff: None,
                error: None,
                pending_restart: false,
                in_flight: 0,
                last_exit: None,
                last_seen: now,
                unresponsive: false,
                workers_crash_looping: false,
                models: Vec::new(),
            }),
            state_changed: tokio::sync::Notify::new(),
        })
    }

    pub(crate) fn state(&self) -> ReplicaState {
        self.lock().state
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, ReplicaInner> {
        // Plain fields: a panic while holding the lock leaves nothing half-updated that matters.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks the replica to drain and exit; the launcher kills it if it has not exited after the
    /// grace period. The caller takes it out of the route table (a stopping replica is not
    /// ready); the request to stop waits until the gateway has no request on its way to it, so
    /// that none lands on a closed listener or a keep-alive connection being shut.
    pub(crate) fn stop(self: &Arc<Self>) {
        let target = {
            let mut g = self.lock();
            if matches!(
                g.state,
                ReplicaState::Exited | ReplicaState::Failed | ReplicaState::Stopping
            ) {
                return;
            }
            g.state = ReplicaState::Stopping;
            g.target.clone()
        };
        self.state_changed.notify_waiters();
        let me = self.clone();
        tokio::spawn(async move {
            // Requests the gateway routed here before the route table changed.
            let settle = Instant::now() + ROUTE_SETTLE_MAX;
            tokio::time::sleep(ROUTE_SETTLE_MIN).await;
            while target.as_ref().is_some_and(|t| t.in_flight() > 0) && Instant::now() < settle {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Exited meanwhile: nothing to stop.
            if me.state() == ReplicaState::Stopping {
                me.handle.stop(STOP_GRACE);
            }
        });
    }

    pub(crate) async fn wait_exited(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
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

    pub(crate) fn info(&self) -> ReplicaInfo {
        let g = self.lock();
        let state = if g.pending_restart {
            "restarting"
        } else {
            g.state.as_str()
        };
        ReplicaInfo {
            id: self.id.clone(),
            generation: self.generation,
            pid: self.handle.pid(),
            port: g.port,
            state: state.to_owned(),
            // Requests on connections handed to it never pass the gateway: what it reported.
            in_flight: g
                .target
                .as_ref()
                .map(|t| t.in_flight())
                .unwrap_or(0)
                .max(g.in_flight as usize),
            started_at: self.started_at.clone(),
            restarts: self.restarts,
            error: g.error.clone(),
            last_exit: g.last_exit.clone(),
        }
    }

    /// Scaling down or replacing a dead replica: do not bring it back.
    pub(crate) fn cancel_restart(&self) {
        self.lock().pending_restart = false;
    }

    /// Serving or about to: starting, ready, or dead and waiting to be restarted.
    pub(crate) fn counts_toward_desired(&self) -> bool {
        let g = self.lock();
        matches!(g.state, ReplicaState::Starting | ReplicaState::Ready) || g.pending_restart
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.state() == ReplicaState::Ready
    }

    /// Ready and answering: what the gateway may send requests to.
    pub(crate) fn routable_target(&self) -> Option<Arc<ReplicaTarget>> {
        let g = self.lock();
        (g.state == ReplicaState::Ready && !g.unresponsive)
            .then(|| g.target.clone())
            .flatten()
    }
}

/// The first error among replicas that failed to start, if any.
pub(crate) fn first_failure(replicas: &[Arc<Replica>]) -> Option<String> {
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
pub(crate) async fn wait_any(replicas: &[Arc<Replica>]) {
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
