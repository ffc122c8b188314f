//! The metrics themselves: names, labels and units (`docs/observability.md` lists them), kept
//! by the `metrics` crate in a Prometheus exporter's recorder owned by the daemon (not the
//! process-wide one, so that tests can run daemons side by side), rendered as Prometheus text.
//!
//! A replica's histogram buckets are replayed as `count` observations of the bucket's mean:
//! every one lands in the same bucket here (the bounds are the same), and `_sum` stays exact.

use gyrus_launch::telemetry::{
    HistogramSnapshot, RejectReason, Route, BATCH_BOUNDS, LATENCY_BOUNDS,
};
use metrics::{counter, gauge, histogram, with_local_recorder, Histogram};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use metrics_util::MetricKindMask;

use super::delta::Delta;
use super::ApiView;

/// Gauges not set for this long are dropped: replicas that are gone, APIs deleted, jobs
/// finished. The state gauges are set at every scrape, and in-flight gauges every second.
const GAUGE_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

const STATES: [&str; 5] = ["starting", "ready", "stopping", "failed", "restarting"];
const STATUSES: [&str; 4] = ["live", "updating", "error", "crash-looping"];

pub(super) struct Exporter {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

impl Exporter {
    pub(super) fn new() -> Self {
        let builder = PrometheusBuilder::new()
            .idle_timeout(MetricKindMask::GAUGE, Some(GAUGE_IDLE))
            .set_quantiles(&[0.0, 0.5, 0.9, 0.99, 1.0])
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BOUNDS)
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("gyrus_model_batch_size".into()),
                    &BATCH_BOUNDS,
                )
            });
        // The builder refuses only empty lists of quantiles or buckets, and these are fixed.
        let recorder = match builder {
            Ok(b) => b.build_recorder(),
            Err(_) => PrometheusBuilder::new().build_recorder(),
        };
        let handle = recorder.handle();
        let exporter = Exporter { recorder, handle };
        exporter.describe();
        exporter
    }

    fn with<T>(&self, f: impl FnOnce() -> T) -> T {
        with_local_recorder(&self.recorder, f)
    }

    fn describe(&self) {
        use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
        self.with(|| {
            describe_counter!(
                "gyrus_requests_total",
                "Requests answered, by API, route and status class."
            );
            describe_histogram!(
                "gyrus_request_duration_seconds",
                Unit::Seconds,
                "Time from a request's head to its response, where it is served."
            );
            describe_counter!(
                "gyrus_rejected_requests_total",
                "Requests refused with 503, by reason."
            );
            describe_gauge!(
                "gyrus_in_flight_requests",
                "Requests being served by each live replica."
            );
            describe_histogram!(
                "gyrus_worker_duration_seconds",
                Unit::Seconds,
                "Time requests spend in a Python worker."
            );
            describe_histogram!(
                "gyrus_model_run_duration_seconds",
                Unit::Seconds,
                "Time of one engine run of a model (a whole batch when batched)."
            );
            describe_histogram!(
                "gyrus_model_queue_duration_seconds",
                Unit::Seconds,
                "Time a request waited in its model's queue."
            );
            describe_histogram!("gyrus_model_batch_size", "Rows per engine run.");
            describe_counter!(
                "gyrus_model_requests_total",
                "Requests a model's inference service ran."
            );
            describe_gauge!(
                "gyrus_model_queue_depth",
                "Requests waiting in a model's queue."
            );
            describe_gauge!("gyrus_replicas", "Replicas by state.");
            describe_gauge!("gyrus_replicas_requested", "The desired replica count.");
            describe_counter!(
                "gyrus_replica_restarts_total",
                "Replicas restarted after a crash, hang or out-of-memory."
            );
            describe_gauge!(
                "gyrus_autoscaler_in_flight_average",
                "The in-flight average the autoscaler acts on."
            );
            describe_counter!(
                "gyrus_autoscaler_decisions_total",
                "Autoscaler ticks by outcome."
            );
            describe_gauge!(
                "gyrus_autoscaler_last_decision_timestamp_seconds",
                "Unix time of the autoscaler's last change of the replica count."
            );
            describe_gauge!("gyrus_api_status", "1 for the API's current status.");
            describe_gauge!("gyrus_job_batches", "Batches of each running job by state.");
            describe_counter!(
                "gyrus_tracker_predictions_total",
                "Tracker (classification): predictions per class."
            );
            describe_histogram!(
                "gyrus_tracker_value",
                "Tracker (regression): the predicted values."
            );
            describe_counter!(
                "gyrus_tracker_invalid_total",
                "Responses the tracker could not read."
            );
            describe_counter!(
                "gyrus_splitter_requests_total",
                "Traffic splitters: requests sent to each API, copies sent to the shadow, copies not sent."
            );
            describe_gauge!("gyrus_build_info", "The daemon's version.");
        });
    }

    pub(super) fn replica(
        &self,
        api: &str,
        replica: &str,
        in_flight: usize,
        queued: &std::collections::BTreeMap<String, u64>,
        d: &Delta,
    ) {
        let api = api.to_string();
        self.with(|| {
            gauge!("gyrus_in_flight_requests", "api" => api.clone(), "replica" => replica.to_string())
                .set(in_flight as f64);
            for r in &d.routes {
                for (status, n) in [("2xx", r.answered), ("4xx", r.client_errors), ("5xx", r.server_errors)] {
                    if n > 0 {
                        counter!("gyrus_requests_total", "api" => api.clone(), "route" => r.route.as_str(), "status" => status)
                            .increment(n);
                    }
                }
                replay(
                    &histogram!("gyrus_request_duration_seconds", "api" => api.clone(), "route" => r.route.as_str()),
                    &LATENCY_BOUNDS,
                    &r.latency,
                );
            }
            for (reason, n) in &d.rejected {
                counter!("gyrus_rejected_requests_total", "api" => api.clone(), "reason" => reason.as_str())
                    .increment(*n);
            }
            if !d.worker.is_empty() {
                replay(&histogram!("gyrus_worker_duration_seconds", "api" => api.clone()), &LATENCY_BOUNDS, &d.worker);
            }
            for m in &d.models {
                let labels = [("api", api.clone()), ("model", m.model.clone())];
                counter!("gyrus_model_requests_total", &labels).increment(m.requests);
                replay(&histogram!("gyrus_model_run_duration_seconds", &labels), &LATENCY_BOUNDS, &m.run_seconds);
                replay(&histogram!("gyrus_model_queue_duration_seconds", &labels), &LATENCY_BOUNDS, &m.queue_seconds);
                replay(&histogram!("gyrus_model_batch_size", &labels), &BATCH_BOUNDS, &m.batch_rows);
            }
            for (model, n) in queued {
                gauge!("gyrus_model_queue_depth", "api" => api.clone(), "model" => model.clone())
                    .set(*n as f64);
            }
            for (class, n) in &d.classes {
                counter!("gyrus_tracker_predictions_total", "api" => api.clone(), "class" => class.clone())
                    .increment(*n);
            }
            if d.invalid > 0 {
                counter!("gyrus_tracker_invalid_total", "api" => api.clone()).increment(d.invalid);
            }
            if d.values.is_empty() {
                return;
            }
            let values = histogram!("gyrus_tracker_value", "api" => api.clone());
            // A summary: each bucket's values as their mean, within 19% of each of them.
            for &(_, count, sum) in &d.values {
                values.record_many(sum / count as f64, usize::try_from(count).unwrap_or(usize::MAX));
            }
        });
    }

    pub(super) fn refused(&self, api: &str, route: Route, reason: RejectReason, n: u64) {
        self.with(|| {
            counter!("gyrus_rejected_requests_total", "api" => api.to_string(), "reason" => reason.as_str())
                .increment(n);
            counter!("gyrus_requests_total", "api" => api.to_string(), "route" => route.as_str(), "status" => "5xx")
                .increment(n);
        });
    }

    pub(super) fn split(&self, splitter: &str, api: &str, role: gyrus_gateway::SplitRole, n: u64) {
        self.with(|| {
            counter!("gyrus_splitter_requests_total", "splitter" => splitter.to_string(), "api" => api.to_string(), "role" => role.as_str())
                .increment(n)
        });
    }

    pub(super) fn restarted(&self, api: &str) {
        self.with(|| {
            counter!("gyrus_replica_restarts_total", "api" => api.to_string()).increment(1)
        });
    }

    pub(super) fn decision(&self, api: &str, from: u32, to: u32) {
        let direction = match to.cmp(&from) {
            std::cmp::Ordering::Greater => "up",
            std::cmp::Ordering::Less => "down",
            std::cmp::Ordering::Equal => "none",
        };
        self.with(|| {
            counter!("gyrus_autoscaler_decisions_total", "api" => api.to_string(), "direction" => direction)
                .increment(1)
        });
    }

    /// The gauges that describe the APIs as they are now.
    pub(super) fn set_state(&self, apis: &[ApiView]) {
        self.with(|| {
            gauge!("gyrus_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            for view in apis {
                let info = &view.info;
                let api = info.name.clone();
                for status in STATUSES {
                    gauge!("gyrus_api_status", "api" => api.clone(), "status" => status)
                        .set(if info.status == status { 1.0 } else { 0.0 });
                }
                if let Some(jobs) = &info.jobs {
                    for job in jobs.recent.iter().filter(|j| matches!(j.status.as_str(), "running" | "enqueuing")) {
                        let done = job.succeeded + job.failed;
                        for (state, n) in [
                            ("queued", job.total_batch_count.saturating_sub(done)),
                            ("succeeded", job.succeeded),
                            ("failed", job.failed),
                        ] {
                            gauge!("gyrus_job_batches", "api" => api.clone(), "job_id" => job.job_id.clone(), "state" => state)
                                .set(n as f64);
                        }
                    }
                    continue;
                }
                for state in STATES {
                    let n = info.replica_details.iter().filter(|r| r.state == state).count();
                    gauge!("gyrus_replicas", "api" => api.clone(), "state" => state).set(n as f64);
                }
                gauge!("gyrus_replicas_requested", "api" => api.clone()).set(f64::from(info.replicas.requested));
                if let Some(a) = &info.autoscaling {
                    if let Some(avg) = a.in_flight_avg {
                        gauge!("gyrus_autoscaler_in_flight_average", "api" => api.clone()).set(avg);
                    }
                    let changed = a.last_change.as_ref().and_then(|c| humantime::parse_rfc3339_weak(&c.at).ok());
                    if let Some(at) = changed.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()) {
                        gauge!("gyrus_autoscaler_last_decision_timestamp_seconds", "api" => api.clone())
                            .set(at.as_secs_f64());
                    }
                }
            }
        });
    }

    pub(super) fn render(&self) -> String {
        self.handle.render()
    }

    pub(super) fn upkeep(&self) {
        self.handle.run_upkeep();
    }
}

/// Replays a replica's buckets: each as `count` observations of its mean, held inside the
/// bucket (so that a float sum a hair off its bound does not move it to the next one).
fn replay(h: &Histogram, bounds: &[f64], d: &HistogramSnapshot) {
    for (i, (&count, &sum)) in d.counts.iter().zip(&d.sums).enumerate() {
        if count == 0 {
            continue;
        }
        let mean = sum / count as f64;
        // A report with more buckets than bounds (a replica of another version) is held to the
        // last one rather than trusted.
        let lower = match i.checked_sub(1) {
            None => f64::MIN,
            Some(j) => bounds.get(j).or(bounds.last()).copied().unwrap_or(f64::MIN),
        };
        let value = match bounds.get(i) {
            Some(&upper) if mean > upper || mean <= lower => upper,
            None if mean <= lower => lower * 1.000_001 + f64::EPSILON,
            _ => mean,
        };
        h.record_many(value, usize::try_from(count).unwrap_or(usize::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gyrus_launch::telemetry::AtomicHistogram;
    use std::time::Duration;

    #[test]
    fn replayed_buckets_render_as_recorded() {
        let e = Exporter::new();
        let h = AtomicHistogram::latency();
        for micros in [50, 100, 101, 700, 700, 2_000_000] {
            h.record_duration(Duration::from_micros(micros));
        }
        e.with(|| {
            replay(
                &histogram!("gyrus_request_duration_seconds", "api" => "a", "route" => "predict"),
                &LATENCY_BOUNDS,
                &h.snapshot(),
            )
        });
        let text = e.render();
        let line = |le: &str| {
            let prefix = format!(
                "gyrus_request_duration_seconds_bucket{{api=\"a\",route=\"predict\",le=\"{le}\"}} "
            );
            text.lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .unwrap_or_else(|| panic!("no bucket {le} in\n{text}"))
                .to_string()
        };
        assert_eq!(line("0.0001"), "2");
        assert_eq!(line("0.00025"), "3");
        assert_eq!(line("0.001"), "5");
        assert_eq!(line("2.5"), "6");
        assert!(
            text.contains("gyrus_request_duration_seconds_count{api=\"a\",route=\"predict\"} 6"),
            "{text}"
        );
        let sum: f64 = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("gyrus_request_duration_seconds_sum{api=\"a\",route=\"predict\"} ")
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or_default();
        assert!((sum - 2.001651).abs() < 1e-9, "{sum}");
    }
}
