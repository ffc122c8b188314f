//! The dashboard's per-API series: one point per second for the last ten minutes, in memory
//! (`GET /_gyrus/v1/apis/<name>/series`). Counts reported during a second are added to its
//! accumulator; the daemon's one-second tick closes it into a point with the API's replicas and
//! in-flight requests at that moment.

use std::collections::{BTreeMap, VecDeque};

use gyrus_launch::telemetry::{HistogramSnapshot, Route, LATENCY_BOUNDS};
use gyrus_spec::ModelType;
use serde::Serialize;
use serde_json::json;

use super::delta::Delta;
use super::ApiView;

/// How much history the daemon keeps per API, and the most a request may ask for.
pub const MAX_SERIES_SECONDS: usize = 600;

/// The autoscaler's changes kept per API.
const MAX_DECISIONS: usize = 20;

#[derive(Default)]
pub(super) struct ApiSeries {
    points: VecDeque<Point>,
    now: Accumulator,
    decisions: VecDeque<Decision>,
    tracker: Option<TrackerState>,
}

#[derive(Default)]
struct Accumulator {
    requests: u64,
    errors: u64,
    rejected: u64,
    latency: HistogramSnapshot,
    classes: BTreeMap<String, u64>,
    values: (u64, f64),
    invalid: u64,
}

#[derive(Serialize)]
struct Point {
    t: u64,
    requests: u64,
    errors: u64,
    rejected: u64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    in_flight: usize,
    replicas_requested: u32,
    replicas_ready: u32,
    #[serde(skip)]
    classes: BTreeMap<String, u64>,
    #[serde(skip)]
    values: (u64, f64),
}

#[derive(Serialize)]
struct Decision {
    at: String,
    t: u64,
    from: u32,
    to: u32,
    reason: String,
}

/// The tracker's totals since the daemon started.
struct TrackerState {
    key: Option<String>,
    model_type: ModelType,
    totals: BTreeMap<String, u64>,
    values: (u64, f64),
    invalid: u64,
}

impl ApiSeries {
    pub(super) fn add(&mut self, d: &Delta) {
        let (requests, errors, latency) = d.model_traffic();
        let acc = &mut self.now;
        acc.requests += requests;
        acc.errors += errors;
        acc.rejected += d.rejected.values().sum::<u64>();
        acc.latency.add(&latency);
        for (class, n) in &d.classes {
            *acc.classes.entry(class.clone()).or_default() += n;
        }
        for &(_, count, sum) in &d.values {
            acc.values.0 += count;
            acc.values.1 += sum;
        }
        acc.invalid += d.invalid;
    }

    /// A 503 the gateway answered itself.
    pub(super) fn add_refused(&mut self, route: Route, n: u64) {
        if matches!(route, Route::Predict | Route::Infer) {
            self.now.requests += n;
            self.now.errors += n;
        }
        self.now.rejected += n;
    }

    pub(super) fn decision(&mut self, from: u32, to: u32, reason: &str) {
        let now = std::time::SystemTime::now();
        self.decisions.push_back(Decision {
            at: humantime::format_rfc3339_seconds(now).to_string(),
            t: now
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            from,
            to,
            reason: reason.to_string(),
        });
        while self.decisions.len() > MAX_DECISIONS {
            self.decisions.pop_front();
        }
    }

    pub(super) fn close_second(&mut self, t: u64, view: &ApiView, in_flight: usize) {
        let acc = std::mem::take(&mut self.now);
        let ms = |q| acc.latency.quantile(&LATENCY_BOUNDS, q).map(|s| s * 1000.0);
        match (&mut self.tracker, &view.tracker) {
            (Some(state), Some(spec)) if state.model_type == spec.model_type => {
                state.key = spec.key.clone();
            }
            (state, spec) => {
                *state = spec.as_ref().map(|spec| TrackerState {
                    key: spec.key.clone(),
                    model_type: spec.model_type,
                    totals: BTreeMap::new(),
                    values: (0, 0.0),
                    invalid: 0,
                })
            }
        }
        if let Some(state) = &mut self.tracker {
            for (class, n) in &acc.classes {
                *state.totals.entry(class.clone()).or_default() += n;
            }
            state.values.0 += acc.values.0;
            state.values.1 += acc.values.1;
            state.invalid += acc.invalid;
        }
        self.points.push_back(Point {
            t,
            requests: acc.requests,
            errors: acc.errors,
            rejected: acc.rejected,
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
            in_flight,
            replicas_requested: view.info.replicas.requested,
            replicas_ready: view.info.replicas.ready,
            classes: acc.classes,
            values: acc.values,
        });
        while self.points.len() > MAX_SERIES_SECONDS {
            self.points.pop_front();
        }
    }

    pub(super) fn to_json(&self, api: &str, seconds: usize) -> serde_json::Value {
        let skip = self.points.len().saturating_sub(seconds);
        let points: Vec<&Point> = self.points.iter().skip(skip).collect();
        let tracker = self.tracker.as_ref().map(|state| match state.model_type {
            ModelType::Classification => json!({
                "key": state.key,
                "model_type": "classification",
                "invalid": state.invalid,
                "totals": state.totals,
                "points": points.iter().map(|p| json!({"t": p.t, "counts": p.classes})).collect::<Vec<_>>(),
            }),
            ModelType::Regression => json!({
                "key": state.key,
                "model_type": "regression",
                "invalid": state.invalid,
                "count": state.values.0,
                "sum": state.values.1,
                "points": points.iter().map(|p| json!({
                    "t": p.t,
                    "count": p.values.0,
                    "mean": (p.values.0 > 0).then(|| p.values.1 / p.values.0 as f64),
                })).collect::<Vec<_>>(),
            }),
        });
        json!({
            "api": api,
            "interval_seconds": 1,
            "points": points,
            "decisions": self.decisions.iter().rev().collect::<Vec<_>>(),
            "tracker": tracker,
        })
    }
}
