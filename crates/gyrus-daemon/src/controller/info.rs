//! What `gyrus get` and `gyrus describe` show of an API: its status (with `crash-looping`
//! worked out from the replicas), replica counts and details, and the autoscaler's view.

use std::sync::Arc;
use std::time::Duration;

use super::replica::{Replica, ReplicaState};
use super::{complete_seconds, ApiController, Status, STABLE_AFTER};
use crate::api::{ApiInfo, AutoscalingInfo, ReplicaCounts, ReplicaInfo};

impl ApiController {
    pub fn info(&self) -> ApiInfo {
        let now = self.ctx.clock();
        let g = self.lock();
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
            let i = r.lock();
            (r.restarts >= 3 && (i.pending_restart || r.started.elapsed() < STABLE_AFTER))
                || (i.state == ReplicaState::Ready && i.workers_crash_looping)
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
        let requested = if g.spec.kind == gyrus_spec::ApiKind::BatchAPI {
            // A batch API's processes are its jobs' workers (`jobs` in the info).
            0
        } else if g.desired > 0 {
            g.desired
        } else {
            g.spec.autoscaling.init_replicas.max(1)
        };
        ApiInfo {
            name: g.spec.name.clone(),
            kind: g.spec.kind.to_string(),
            predictor_type: g.spec.predictor.kind.to_string(),
            endpoint: g.spec.endpoint.clone(),
            url: format!("{}{}", self.ctx.gateway_url, g.spec.endpoint),
            status: status.to_owned(),
            message: g.message.clone(),
            notes: g.notes.clone(),
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
            models: sum_models(current.iter().map(|r| r.lock().models.clone())),
            jobs: None,
            splits: Vec::new(),
        }
    }
}

/// The per-model counters of several replicas, summed by model (in the first replica's order).
fn sum_models(
    replicas: impl Iterator<Item = Vec<gyrus_launch::ModelStats>>,
) -> Vec<gyrus_launch::ModelStats> {
    let mut sum: Vec<gyrus_launch::ModelStats> = Vec::new();
    for models in replicas {
        for m in models {
            let Some(into) = sum.iter_mut().find(|s| s.model == m.model) else {
                sum.push(m);
                continue;
            };
            into.batching |= m.batching;
            into.requests += m.requests;
            into.runs += m.runs;
            if into.batch_sizes.len() < m.batch_sizes.len() {
                into.batch_sizes.resize(m.batch_sizes.len(), 0);
            }
            for (a, b) in into.batch_sizes.iter_mut().zip(&m.batch_sizes) {
                *a += b;
            }
            into.queued += m.queued;
            into.shed_queue_full += m.shed_queue_full;
            into.shed_deadline += m.shed_deadline;
            into.queue_us += m.queue_us;
            into.engine_us += m.engine_us;
        }
    }
    sum
}
