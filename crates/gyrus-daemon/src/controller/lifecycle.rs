//! A replica's life as the controller sees it: starting it through the launcher, following
//! its events (listening, ready, metrics, out of memory), restarting it with backoff when it
//! dies, and replacing it when it stops reporting.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use gyrus_compute::Limits;
use gyrus_gateway::ReplicaTarget;
use gyrus_launch::{ReplicaEvent, ReplicaLaunch};
use tokio::time::Instant;

use super::replica::{Replica, ReplicaState};
use super::{ApiController, Generation, HEARTBEAT_TIMEOUT, MAX_RESTART_BACKOFF, STABLE_AFTER};
use crate::api_log;
use crate::launcher::{LaunchError, LaunchRequest, LauncherEvent};

impl ApiController {
    /// Replaces ready replicas that stopped reporting: out of the route table at once (their
    /// in-flight requests end with 503 when they die), then killed; their exit restarts them
    /// like any crash.
    pub fn replace_hung(&self) {
        let replicas: Vec<Arc<Replica>> = self.lock().replicas.clone();
        let mut changed = false;
        for r in replicas {
            {
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
            }
            changed = true;
            api_log!(
                self.name,
                "replica {} stopped answering (no report for {}s): killing and replacing it",
                r.id,
                HEARTBEAT_TIMEOUT.as_secs()
            );
            r.handle.kill();
        }
        if changed {
            self.publish_routes();
        }
    }

    /// Starts one replica of `plan` and the task that follows its events.
    pub(super) fn spawn_replica(
        self: &Arc<Self>,
        plan: &Generation,
        restarts: u32,
    ) -> Result<Arc<Replica>, LaunchError> {
        let seq = self.replica_seq.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-g{}-r{}", self.name, plan.generation, seq);
        let request = LaunchRequest {
            api: self.name.clone(),
            launch: ReplicaLaunch {
                id: id.clone(),
                spec: (*plan.spec).clone(),
                project_dir: plan.project_dir.clone(),
                python: plan.python.clone(),
                lib_dir: self.ctx.lib_dir.clone(),
                model_path: plan.model_path.clone(),
                models: plan.models.clone(),
                onnx_library: plan.onnx_library.clone(),
                tensorflow_library: plan.tensorflow_library.clone(),
                job: None,
                handoff: None,
            },
            env: plan.env.clone(),
            limits: Limits::from_spec(&plan.spec.compute),
            slot: seq,
        };
        let launched = self.ctx.launcher.launch(request)?;
        let replica = Replica::new(id, plan.generation, restarts, launched.handle);
        replica.lock().handoff = launched.handoff;
        let me = self.clone();
        let plan = plan.clone();
        let r = replica.clone();
        let mut events = launched.events;
        tokio::spawn(async move {
            let mut exit = "exited".to_owned();
            while let Some(event) = events.recv().await {
                match event {
                    LauncherEvent::Replica(e) => me.on_replica_event(&r, e),
                    LauncherEvent::OutOfMemory(why) => r.lock().error = Some(why),
                    LauncherEvent::Exited(detail) => {
                        exit = detail;
                        break;
                    }
                }
            }
            me.on_replica_exit(&r, &plan, exit).await;
        });
        Ok(replica)
    }

    fn on_replica_event(&self, r: &Arc<Replica>, event: ReplicaEvent) {
        r.lock().last_seen = Instant::now();
        match event {
            ReplicaEvent::Listening { port } => {
                let mut g = r.lock();
                g.port = Some(port);
                g.target = Some(ReplicaTarget::with_handoff(
                    r.id.clone(),
                    std::net::SocketAddr::new(r.handle.host(), port),
                    g.handoff.clone(),
                ));
            }
            ReplicaEvent::Ready => {
                {
                    let mut g = r.lock();
                    if g.state == ReplicaState::Starting {
                        g.state = ReplicaState::Ready;
                    }
                }
                r.state_changed.notify_waiters();
                self.publish_routes();
            }
            ReplicaEvent::Metrics {
                in_flight,
                workers_crash_looping,
                models,
                requests,
            } => {
                self.ctx
                    .observer
                    .replica_metrics(&self.name, &r.id, in_flight, &models, &requests);
                let n = u32::try_from(in_flight).unwrap_or(u32::MAX);
                {
                    let mut g = r.lock();
                    g.in_flight = n;
                    g.workers_crash_looping = workers_crash_looping;
                    g.models = models;
                }
                let now = self.ctx.clock();
                self.lock().metrics.record(now, &r.id, n);
            }
            ReplicaEvent::Failed { error } => r.lock().error = Some(error),
        }
    }

    async fn on_replica_exit(
        self: &Arc<Self>,
        r: &Arc<Replica>,
        plan: &Generation,
        detail: String,
    ) {
        self.ctx.observer.replica_exited(&self.name, &r.id);
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
            // Counted as "waiting to restart" from the moment it died, so a reconcile in
            // between does not start a second replacement; cleared below when no restart
            // follows.
            g.pending_restart = prev != ReplicaState::Stopping;
            prev
        };
        r.state_changed.notify_waiters();
        self.publish_routes();
        // Stopped on purpose: nothing to heal. A replica of a generation still starting is the
        // deploy's business (it reports the failure). Otherwise the replica belonged to the
        // serving generation (it died, or its replacement failed to start): restart it.
        if previous == ReplicaState::Stopping {
            return;
        }
        let serving_gen = self.lock().serving.as_ref().map(|p| p.generation);
        if self.lock().deleted || serving_gen != Some(plan.generation) {
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
        let why = r.lock().error.clone().unwrap_or_else(|| detail.clone());
        api_log!(
            self.name,
            "replica {} exited unexpectedly ({why}); restarting in {}s",
            r.id,
            backoff.as_secs()
        );
        tokio::time::sleep(backoff).await;
        let still_serving = {
            let g = self.lock();
            !g.deleted && g.serving.as_ref().map(|p| p.generation) == Some(plan.generation)
        };
        // Scaling down (or a finished rollout) may have cancelled the restart meanwhile.
        if !still_serving || !r.lock().pending_restart {
            r.cancel_restart();
            return;
        }
        match self.spawn_replica(plan, restarts) {
            Ok(new) => {
                self.ctx.observer.replica_restarted(&self.name);
                new.lock().last_exit = Some(
                    r.lock()
                        .error
                        .clone()
                        .unwrap_or_else(|| format!("exited unexpectedly ({detail})")),
                );
                let mut g = self.lock();
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
                api_log!(self.name, "error: restarting replica: {e}");
            }
        }
    }
}
