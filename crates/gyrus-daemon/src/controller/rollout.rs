//! Moving an API to a new version: the first start (all replicas, live when all are ready) and
//! the rolling update (Kubernetes' rules, one step at a time from `crate::rollout::step`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::replica::{first_failure, wait_any, Replica, ReplicaState};
use super::{ApiController, Generation};
use crate::api_log;
use crate::rollout;

impl ApiController {
    /// The first generation of an API (or the first since one went live): start
    /// `init_replicas` and go live when all are ready.
    pub(super) async fn start_first(self: &Arc<Self>, plan: Generation) {
        let generation = plan.generation;
        let a = &plan.spec.autoscaling;
        let count = a.init_replicas.clamp(a.min_replicas, a.max_replicas).max(1);
        self.set_message(generation, &format!("starting {count} replica(s)"));
        let mut new = Vec::new();
        for _ in 0..count {
            match self.spawn_replica(&plan, 0) {
                Ok(r) => new.push(r),
                Err(e) => {
                    for r in &new {
                        r.stop();
                    }
                    self.fail(generation, e.to_string());
                    return;
                }
            }
        }
        self.lock().replicas.extend(new.iter().cloned());

        // Wait until all are ready, one fails, or a newer deploy supersedes this one.
        let outcome = loop {
            if self.is_superseded(generation) || self.lock().deleted {
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
                let stored = {
                    let mut g = self.lock();
                    self.become_serving(&mut g, plan, Some(count))
                };
                self.went_live(&stored);
                api_log!(
                    self.name,
                    "generation {generation} is live ({count} replica(s))"
                );
                self.forget_exited();
            }
            Err(err) => {
                for r in &new {
                    r.stop();
                }
                if let Some(err) = err {
                    api_log!(self.name, "error: {err}");
                    self.fail(generation, err);
                }
            }
        }
    }

    /// A rolling update from the serving generation to `plan`, within `max_surge` and
    /// `max_unavailable` of the desired count (Kubernetes' rules). Old replicas stop (and
    /// drain) only once enough new ones are ready. A new replica that fails halts the rollout:
    /// the new ones stop and the old generation is brought back to the desired count.
    pub(super) async fn roll(self: &Arc<Self>, plan: Generation) {
        let generation = plan.generation;
        {
            let mut g = self.lock();
            let a = &plan.spec.autoscaling;
            g.desired = g.desired.clamp(a.min_replicas, a.max_replicas).max(1);
            g.rollout = Some(plan.clone());
        }
        api_log!(
            self.name,
            "rolling update to generation {generation} (max_surge {}, max_unavailable {})",
            plan.spec.update_strategy.max_surge,
            plan.spec.update_strategy.max_unavailable
        );
        let outcome: Result<(), Option<String>> = loop {
            if self.is_superseded(generation) || self.lock().deleted {
                break Err(None);
            }
            // "Old" is every other version: the serving one, and a rollout this one superseded
            // (whose ready replicas kept serving).
            let (desired, old, new): (u32, Vec<Arc<Replica>>, Vec<Arc<Replica>>) = {
                let g = self.lock();
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
            self.set_message(
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
                match self.spawn_replica(&plan, 0) {
                    Ok(r) => self.adopt(r),
                    Err(e) => {
                        api_log!(self.name, "error: starting a replica: {e}");
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
            self.publish_routes();
            wait_any(&new).await;
        };
        match outcome {
            Ok(()) => {
                let (old, stored): (Vec<Arc<Replica>>, _) = {
                    let mut g = self.lock();
                    // A newer deploy may have started its rollout since the loop looked.
                    if self.latest_generation.load(Ordering::SeqCst) != generation
                        || g.rollout.as_ref().map(|p| p.generation) != Some(generation)
                    {
                        return;
                    }
                    g.rollout = None;
                    let stored = self.become_serving(&mut g, plan, None);
                    let old = g
                        .replicas
                        .iter()
                        .filter(|r| r.generation != generation)
                        .cloned()
                        .collect();
                    (old, stored)
                };
                for r in &old {
                    r.cancel_restart();
                    r.stop();
                }
                self.went_live(&stored);
                api_log!(self.name, "generation {generation} is live");
                self.forget_exited();
                self.reconcile();
            }
            // Superseded: the newer deploy's rollout takes these replicas as old ones and
            // replaces them within its own limits, so the ready ones keep serving meanwhile.
            Err(None) => {
                let mut g = self.lock();
                if g.rollout.as_ref().map(|p| p.generation) == Some(generation) {
                    g.rollout = None;
                }
            }
            Err(Some(err)) => {
                let new: Vec<Arc<Replica>> = {
                    let mut g = self.lock();
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
                self.publish_routes();
                self.forget_exited();
                api_log!(
                    self.name,
                    "error: rolling update to generation {generation} halted: {err}; the previous version keeps serving"
                );
                self.fail(generation, err);
                self.reconcile();
            }
        }
    }
}
