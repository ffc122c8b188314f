//! The daemon's view of what its APIs are doing, built from what replicas report once a second
//! (`ReplicaEvent::Metrics`), what the gateway refused itself, and the controllers' state.
//!
//! Replicas report cumulative counts; [`Telemetry`] keeps each replica's last report, takes
//! the difference, and adds it to per-API metrics (`prometheus`: the `metrics` crate and its
//! Prometheus exporter, served at `GET /metrics`) and to per-API one-second series kept in
//! memory for the dashboard (`series`). Totals therefore outlive the replicas that counted
//! them, and no metric carries a replica's label except the in-flight gauge.

mod delta;
mod prometheus;
mod series;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use gyrus_launch::telemetry::{RejectReason, RequestStats, Route};
use gyrus_launch::ModelStats;
use gyrus_spec::TrackerSpec;

use crate::api::ApiInfo;
use crate::controller::ApiObserver;

pub use series::MAX_SERIES_SECONDS;

/// A replica is forgotten when its process ends (`replica_exited`); one silent this long is
/// forgotten anyway, should an exit never be seen. Forgetting a live replica would count its
/// whole life again at its next report, so this is far past the heartbeat watch's 5 s.
const REPLICA_FORGOTTEN_AFTER: Duration = Duration::from_secs(600);

pub struct Telemetry {
    exporter: prometheus::Exporter,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Each live replica's last report.
    replicas: HashMap<String, LastReport>,
    /// The gateway's own 503s as last seen (cumulative).
    refusals: HashMap<(String, Route, RejectReason), u64>,
    /// The splitters' counts as last seen: the route they come from and its total.
    splits: HashMap<(String, String, gyrus_gateway::SplitRole), (u64, u64)>,
    series: HashMap<String, series::ApiSeries>,
    /// Tracker classes seen per API (the label set is capped per API too).
    classes: HashMap<String, std::collections::BTreeSet<String>>,
    last_upkeep: Option<Instant>,
}

struct LastReport {
    api: String,
    at: Instant,
    in_flight: usize,
    models: Vec<ModelStats>,
    requests: RequestStats,
}

/// What one API's controller and spec say, for the gauges and the series.
pub struct ApiView {
    pub info: ApiInfo,
    pub tracker: Option<TrackerSpec>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

impl Telemetry {
    pub fn new() -> Self {
        Telemetry {
            exporter: prometheus::Exporter::new(),
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Once a second: closes each API's current second of series, counts the gateway's new
    /// refusals, forgets replicas that stopped reporting, and lets the exporter fold its
    /// histograms (so that memory stays bounded however rarely `/metrics` is read).
    pub fn tick(
        &self,
        apis: &[ApiView],
        refusals: Vec<(String, Route, RejectReason, u64)>,
        splits: Vec<gyrus_gateway::SplitCount>,
    ) {
        let now_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut inner = self.lock();
        let inner = &mut *inner;
        for (api, route, reason, total) in refusals {
            let key = (api.clone(), route, reason);
            let before = inner.refusals.insert(key, total).unwrap_or(0);
            let new = total.saturating_sub(before);
            if new > 0 {
                self.exporter.refused(&api, route, reason, new);
                inner.series.entry(api).or_default().add_refused(route, new);
            }
        }
        let mut seen = HashMap::new();
        for c in splits {
            let key = (c.splitter.clone(), c.api.clone(), c.role);
            // Another route (the splitter deployed again) counts from zero.
            let new = match inner.splits.get(&key) {
                Some((route, before)) if *route == c.route => c.total.saturating_sub(*before),
                _ => c.total,
            };
            if new > 0 {
                self.exporter.split(&c.splitter, &c.api, c.role, new);
            }
            seen.insert(key, (c.route, c.total));
        }
        inner.splits = seen;
        let now = Instant::now();
        inner
            .replicas
            .retain(|_, r| now.duration_since(r.at) < REPLICA_FORGOTTEN_AFTER);
        // A deleted API's state goes; one deployed again under its name starts afresh.
        let known = |name: &str| apis.iter().any(|a| a.info.name == name);
        inner.series.retain(|name, _| known(name));
        inner.classes.retain(|name, _| known(name));
        for view in apis {
            let in_flight = inner
                .replicas
                .values()
                .filter(|r| r.api == view.info.name)
                .map(|r| r.in_flight)
                .sum();
            inner
                .series
                .entry(view.info.name.clone())
                .or_default()
                .close_second(now_unix, view, in_flight);
        }
        if inner
            .last_upkeep
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(5))
        {
            inner.last_upkeep = Some(now);
            self.exporter.upkeep();
        }
    }

    /// The Prometheus text of every metric, after setting the gauges that describe the APIs
    /// as they are now.
    pub fn render(&self, apis: &[ApiView]) -> String {
        self.exporter.set_state(apis);
        self.exporter.render()
    }

    /// The dashboard's series of one API (its last `seconds`), `None` for an API it does not
    /// know.
    pub fn series_json(&self, api: &str, seconds: usize) -> Option<serde_json::Value> {
        let inner = self.lock();
        inner.series.get(api).map(|s| s.to_json(api, seconds))
    }
}

impl ApiObserver for Telemetry {
    fn replica_metrics(
        &self,
        api: &str,
        replica: &str,
        in_flight: usize,
        models: &[ModelStats],
        requests: &RequestStats,
    ) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let previous = inner.replicas.insert(
            replica.to_string(),
            LastReport {
                api: api.to_string(),
                at: Instant::now(),
                in_flight,
                models: models.to_vec(),
                requests: requests.clone(),
            },
        );
        let (before_models, before_requests) = match &previous {
            Some(p) if p.api == api => (p.models.as_slice(), Some(&p.requests)),
            _ => (&[][..], None),
        };
        let mut d = delta::Delta::between(before_models, before_requests, models, requests);
        let known = inner.classes.entry(api.to_string()).or_default();
        d.cap_classes(known);
        // Queue depth is a level, summed over the API's live replicas.
        let mut queued = std::collections::BTreeMap::<String, u64>::new();
        for r in inner.replicas.values().filter(|r| r.api == api) {
            for m in &r.models {
                *queued.entry(m.model.clone()).or_default() += m.queued;
            }
        }
        self.exporter.replica(api, replica, in_flight, &queued, &d);
        inner.series.entry(api.to_string()).or_default().add(&d);
    }

    fn replica_exited(&self, _api: &str, replica: &str) {
        self.lock().replicas.remove(replica);
    }

    fn replica_restarted(&self, api: &str) {
        self.exporter.restarted(api);
    }

    fn scaling_decision(&self, api: &str, from: u32, to: u32, reason: &str) {
        self.exporter.decision(api, from, to);
        if from != to {
            self.lock()
                .series
                .entry(api.to_string())
                .or_default()
                .decision(from, to, reason);
        }
    }
}
