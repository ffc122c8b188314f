//! What a replica measures about the requests it serves, and how it reports it: lock-free
//! recorders on the request path ([`AtomicHistogram`], [`Tally`]) and the cumulative snapshots
//! ([`RequestStats`]) its once-a-second metrics event carries to the daemon.
//!
//! Everything is cumulative since the replica started, so that the daemon can take differences
//! between two reports of one replica and add them to per-API totals that outlive replicas.
//! Histograms keep, per bucket, the count and the sum of what fell in it: the daemon replays
//! each bucket as `count` observations of their mean, which lands every one of them in the same
//! bucket of its exporter (the bounds are the same) and keeps `_sum` exact.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Upper bounds, in seconds, of the latency buckets of every `_seconds` histogram: 100 us to a
/// minute, dense where model APIs answer (sub-millisecond) and where Python predictors do.
pub const LATENCY_BOUNDS: [f64; 18] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// Upper bounds of the batch-size buckets (rows per engine run).
pub const BATCH_BOUNDS: [f64; 8] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

/// The routes requests are counted by (a bounded label: never the raw path).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Route {
    /// `POST` to the endpoint (the predictor, or the simple JSON model API).
    Predict,
    /// The Open Inference Protocol's `.../infer`.
    Infer,
    /// The protocol's other routes (server and model metadata, live, ready).
    Metadata,
    /// `GET` on the endpoint.
    Health,
}

impl Route {
    pub const ALL: [Route; 4] = [Route::Predict, Route::Infer, Route::Metadata, Route::Health];

    pub fn as_str(self) -> &'static str {
        match self {
            Route::Predict => "predict",
            Route::Infer => "infer",
            Route::Metadata => "metadata",
            Route::Health => "health",
        }
    }
}

/// Why a request was refused with 503 (a bounded label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// The replica was at `max_replica_concurrency`.
    ConcurrencyLimit,
    /// A model's queue was at its `max_queue_size`.
    QueueFull,
    /// A request waited in a model's queue past its `max_latency`.
    Deadline,
    /// No replica of the API was ready (answered by the gateway).
    NoReadyReplica,
    /// The replica died or stopped before answering (answered by the gateway).
    ReplicaStopped,
    /// Every Python worker of the replica was down.
    WorkerUnavailable,
    /// No worker thread came free in time.
    WorkerTimeout,
}

impl RejectReason {
    pub const ALL: [RejectReason; 7] = [
        RejectReason::ConcurrencyLimit,
        RejectReason::QueueFull,
        RejectReason::Deadline,
        RejectReason::NoReadyReplica,
        RejectReason::ReplicaStopped,
        RejectReason::WorkerUnavailable,
        RejectReason::WorkerTimeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::ConcurrencyLimit => "concurrency_limit",
            RejectReason::QueueFull => "queue_full",
            RejectReason::Deadline => "deadline",
            RejectReason::NoReadyReplica => "no_ready_replica",
            RejectReason::ReplicaStopped => "replica_stopped",
            RejectReason::WorkerUnavailable => "worker_unavailable",
            RejectReason::WorkerTimeout => "worker_timeout",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

/// A histogram's buckets as reported: for each bucket of its bounds (then one for larger
/// values), how many observations fell in it and their sum.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HistogramSnapshot {
    pub counts: Vec<u64>,
    pub sums: Vec<f64>,
}

impl HistogramSnapshot {
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn sum(&self) -> f64 {
        self.sums.iter().sum()
    }

    pub fn is_empty(&self) -> bool {
        self.count() == 0
    }

    /// What was observed between `earlier` and `self` (two snapshots of one recorder). A
    /// bucket that went down means the recorder started over: all of it is new.
    pub fn since(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        let restarted = self.counts.len() != earlier.counts.len()
            || self.sums.len() != self.counts.len()
            || earlier.sums.len() != earlier.counts.len()
            || self
                .counts
                .iter()
                .zip(&earlier.counts)
                .any(|(now, before)| now < before);
        if restarted {
            return self.clone();
        }
        let mut out = self.clone();
        for (i, (count, sum)) in out.counts.iter_mut().zip(out.sums.iter_mut()).enumerate() {
            *count -= earlier.counts[i];
            // Float sums may come out a hair under zero; an empty bucket sums to nothing.
            *sum = if *count == 0 {
                0.0
            } else {
                (*sum - earlier.sums[i]).max(0.0)
            };
        }
        out
    }

    /// Adds another snapshot of the same bounds, bucket by bucket.
    pub fn add(&mut self, other: &HistogramSnapshot) {
        let n = self.counts.len().max(other.counts.len());
        self.counts.resize(n, 0);
        self.sums.resize(n, 0.0);
        for (i, (c, s)) in other.counts.iter().zip(&other.sums).enumerate() {
            self.counts[i] += c;
            self.sums[i] += s;
        }
    }

    /// The `q` quantile (0..=1) estimated from the buckets of `bounds`: the bucket holding it,
    /// then linear interpolation inside it. `None` without observations.
    pub fn quantile(&self, bounds: &[f64], q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * total as f64).max(1.0);
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            if c == 0 {
                continue;
            }
            if (seen + c) as f64 >= rank {
                let lower = i
                    .checked_sub(1)
                    .and_then(|j| bounds.get(j))
                    .copied()
                    .unwrap_or(0.0);
                let Some(&upper) = bounds.get(i) else {
                    // Past the last bound: the bucket's mean is the best there is.
                    return Some(self.sums.get(i).copied().unwrap_or(lower) / c as f64);
                };
                let within = (rank - seen as f64) / c as f64;
                return Some(lower + (upper - lower) * within);
            }
            seen += c;
        }
        None
    }
}

/// A lock-free histogram over fixed bounds, recorded on the request path: two relaxed atomic
/// additions per observation. Sums are kept in integer units (nanoseconds for durations, rows
/// for batch sizes) so that they add exactly.
#[derive(Debug)]
pub struct AtomicHistogram {
    bounds: &'static [f64],
    /// Units per value: 1e9 for seconds kept in nanoseconds.
    scale: f64,
    counts: Box<[AtomicU64]>,
    sums: Box<[AtomicU64]>,
}

impl AtomicHistogram {
    /// Durations, over [`LATENCY_BOUNDS`].
    pub fn latency() -> Self {
        Self::new(&LATENCY_BOUNDS, 1e9)
    }

    /// Rows per run, over [`BATCH_BOUNDS`].
    pub fn rows() -> Self {
        Self::new(&BATCH_BOUNDS, 1.0)
    }

    fn new(bounds: &'static [f64], scale: f64) -> Self {
        let zeros = || (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        AtomicHistogram {
            bounds,
            scale,
            counts: zeros(),
            sums: zeros(),
        }
    }

    pub fn record_duration(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.record_units(nanos as f64 / self.scale, nanos);
    }

    pub fn record_rows(&self, rows: u64) {
        self.record_units(rows as f64, rows);
    }

    fn record_units(&self, value: f64, units: u64) {
        let i = self.bounds.partition_point(|&b| b < value);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sums[i].fetch_add(units, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            sums: self
                .sums
                .iter()
                .map(|s| s.load(Ordering::Relaxed) as f64 / self.scale)
                .collect(),
        }
    }
}

/// Counts by status class and the latency of one route.
#[derive(Debug)]
pub struct RouteRecorder {
    /// 1xx-2xx-3xx (answered), 4xx, 5xx.
    by_class: [AtomicU64; 3],
    latency: AtomicHistogram,
}

impl Default for RouteRecorder {
    fn default() -> Self {
        RouteRecorder {
            by_class: Default::default(),
            latency: AtomicHistogram::latency(),
        }
    }
}

/// Everything a replica records on its request path.
#[derive(Debug, Default)]
pub struct Tally {
    routes: [RouteRecorder; 4],
    rejected: [AtomicU64; 7],
    /// Time in Python workers (predictors only).
    worker: Option<AtomicHistogram>,
}

impl Tally {
    /// A tally for a replica whose requests go to Python workers.
    pub fn with_workers() -> Self {
        Tally {
            worker: Some(AtomicHistogram::latency()),
            ..Tally::default()
        }
    }

    /// One answered request.
    pub fn request(&self, route: Route, status: u16, took: Duration) {
        let r = &self.routes[Route::ALL.iter().position(|x| *x == route).unwrap_or(0)];
        let class = match status {
            500.. => 2,
            400..=499 => 1,
            _ => 0,
        };
        r.by_class[class].fetch_add(1, Ordering::Relaxed);
        r.latency.record_duration(took);
    }

    pub fn rejected(&self, reason: RejectReason) {
        self.rejected[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn worker_time(&self, took: Duration) {
        if let Some(h) = &self.worker {
            h.record_duration(took);
        }
    }

    pub fn snapshot(&self) -> RequestStats {
        RequestStats {
            routes: Route::ALL
                .iter()
                .zip(&self.routes)
                .filter(|(_, r)| r.by_class.iter().any(|c| c.load(Ordering::Relaxed) > 0))
                .map(|(route, r)| RouteStats {
                    route: *route,
                    answered: r.by_class[0].load(Ordering::Relaxed),
                    client_errors: r.by_class[1].load(Ordering::Relaxed),
                    server_errors: r.by_class[2].load(Ordering::Relaxed),
                    latency: r.latency.snapshot(),
                })
                .collect(),
            rejected: RejectReason::ALL
                .iter()
                .zip(&self.rejected)
                .map(|(reason, n)| (*reason, n.load(Ordering::Relaxed)))
                .filter(|(_, n)| *n > 0)
                .collect(),
            worker: self
                .worker
                .as_ref()
                .map(AtomicHistogram::snapshot)
                .filter(|h| !h.is_empty()),
            tracker: None,
        }
    }
}

/// The longest client-sent request id kept; longer (or non-printable) ones are replaced.
pub const MAX_REQUEST_ID: usize = 128;

/// Whether a client's `X-Request-ID` is kept: 1 to 128 visible ASCII characters (what log lines
/// and headers carry as they are).
pub fn valid_request_id(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= MAX_REQUEST_ID && id.iter().all(|c| (0x21..=0x7e).contains(c))
}

/// Request ids made by one process: 8 hex digits chosen at random when it starts, then 8 of a
/// counter, so that ids are unique across replicas, the daemon and restarts without a system
/// call per request.
#[derive(Debug)]
pub struct RequestIds {
    prefix: u32,
    next: AtomicU64,
}

impl RequestIds {
    /// `seed`: random bits from the caller (this crate has no source of randomness).
    pub fn new(seed: u32) -> Self {
        RequestIds {
            prefix: seed,
            next: AtomicU64::new(0),
        }
    }

    /// The next id: 16 lower-case hex digits. Written by hand rather than with `format!`: this
    /// runs on every request without an id of its own.
    pub fn make(&self) -> [u8; 16] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let n = self.next.fetch_add(1, Ordering::Relaxed) as u32;
        let both = (u64::from(self.prefix) << 32) | u64::from(n);
        let mut out = [0u8; 16];
        for (i, digit) in out.iter_mut().enumerate() {
            *digit = HEX[((both >> (60 - 4 * i)) & 0xf) as usize];
        }
        out
    }
}

/// A replica's requests since it started, in its metrics event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestStats {
    /// Routes that answered at least one request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteStats>,
    /// 503s by reason (only those that happened).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rejected: BTreeMap<RejectReason, u64>,
    /// Time requests spent in Python workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<HistogramSnapshot>,
    /// What the API's `tracker` saw in its responses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracker: Option<TrackerStats>,
}

impl RequestStats {
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
            && self.rejected.is_empty()
            && self.worker.is_none()
            && self.tracker.is_none()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteStats {
    pub route: Route,
    /// Answered with a status below 400.
    pub answered: u64,
    pub client_errors: u64,
    pub server_errors: u64,
    pub latency: HistogramSnapshot,
}

/// The tracker's counts since the replica started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrackerStats {
    /// Classification: predictions per class.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub classes: BTreeMap<String, u64>,
    /// Regression: the predicted values on a log scale, as (bucket of [`value_bucket`], count,
    /// sum), by bucket. (A list, not a map: JSON keys are strings, and this travels inside a
    /// tagged enum, which cannot read numbers back from them.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<(i32, u64, f64)>,
    /// Responses it could not read.
    #[serde(default)]
    pub invalid: u64,
}

/// The most classes a tracker keeps per replica (and the daemon per API); further ones are
/// counted under [`OTHER_CLASS`], so that a model answering free text cannot grow the label set
/// without bound.
pub const MAX_TRACKED_CLASSES: usize = 64;
pub const OTHER_CLASS: &str = "__other__";

/// The bucket of a regression value: four per doubling of its magnitude (each within 19% of
/// its neighbours), the sign kept, zero and tiny values together. Cumulative reports stay small
/// (a few hundred buckets at most) however many values there were.
pub fn value_bucket(v: f64) -> i32 {
    const TINY: f64 = 1e-9;
    if v.abs() < TINY {
        return 0;
    }
    // log2 of a finite f64 is within ±1075; four steps per doubling fit an i32 easily.
    let step = ((v.abs().log2() - TINY.log2()) * 4.0).floor() as i32 + 1;
    if v < 0.0 {
        -step
    } else {
        step
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_counts_and_exact_sums() {
        let h = AtomicHistogram::latency();
        h.record_duration(Duration::from_micros(100)); // on the first bound: first bucket
        h.record_duration(Duration::from_micros(101));
        h.record_duration(Duration::from_micros(300));
        h.record_duration(Duration::from_secs(90)); // past the last bound
        let s = h.snapshot();
        assert_eq!(s.counts.len(), LATENCY_BOUNDS.len() + 1);
        assert_eq!(s.counts[0], 1);
        assert_eq!(s.counts[1], 1);
        assert_eq!(s.counts[2], 1);
        assert_eq!(s.counts[LATENCY_BOUNDS.len()], 1);
        assert!((s.sums[1] - 0.000101).abs() < 1e-12);
        assert_eq!(s.count(), 4);
        // The mean of each bucket falls in that bucket.
        for (i, (&c, &sum)) in s.counts.iter().zip(&s.sums).enumerate() {
            if c > 0 {
                let mean = sum / c as f64;
                assert_eq!(LATENCY_BOUNDS.partition_point(|&b| b < mean), i);
            }
        }
        let rows = AtomicHistogram::rows();
        rows.record_rows(3);
        rows.record_rows(4);
        rows.record_rows(200);
        let r = rows.snapshot();
        assert_eq!(r.counts[2], 2);
        assert_eq!(r.sums[2], 7.0);
        assert_eq!(r.counts[8], 1);
    }

    #[test]
    fn differences_and_restarts() {
        let h = AtomicHistogram::latency();
        h.record_duration(Duration::from_millis(2));
        let first = h.snapshot();
        h.record_duration(Duration::from_millis(2));
        h.record_duration(Duration::from_millis(20));
        let d = h.snapshot().since(&first);
        assert_eq!(d.count(), 2);
        assert!((d.sum() - 0.022).abs() < 1e-9);
        // A recorder that started over reports less than before: all of it is new.
        let fresh = AtomicHistogram::latency();
        fresh.record_duration(Duration::from_millis(2));
        assert_eq!(fresh.snapshot().since(&h.snapshot()).count(), 1);
    }

    #[test]
    fn quantiles_interpolate_within_a_bucket() {
        let h = AtomicHistogram::latency();
        for _ in 0..99 {
            h.record_duration(Duration::from_micros(700)); // (0.5 ms, 1 ms]
        }
        h.record_duration(Duration::from_millis(40)); // (25 ms, 50 ms]
        let s = h.snapshot();
        let p50 = s.quantile(&LATENCY_BOUNDS, 0.5).unwrap_or_default();
        assert!((0.0005..=0.001).contains(&p50), "{p50}");
        let p100 = s.quantile(&LATENCY_BOUNDS, 1.0).unwrap_or_default();
        assert!((0.025..=0.05).contains(&p100), "{p100}");
        assert_eq!(
            HistogramSnapshot::default().quantile(&LATENCY_BOUNDS, 0.5),
            None
        );
    }

    #[test]
    fn tally_reports_only_what_happened() {
        let t = Tally::with_workers();
        assert!(t.snapshot().is_empty());
        t.request(Route::Predict, 200, Duration::from_micros(300));
        t.request(Route::Predict, 400, Duration::from_micros(30));
        t.request(Route::Predict, 503, Duration::from_micros(30));
        t.rejected(RejectReason::ConcurrencyLimit);
        t.worker_time(Duration::from_micros(250));
        let s = t.snapshot();
        assert_eq!(s.routes.len(), 1);
        assert_eq!(
            (
                s.routes[0].answered,
                s.routes[0].client_errors,
                s.routes[0].server_errors
            ),
            (1, 1, 1)
        );
        assert_eq!(s.rejected.get(&RejectReason::ConcurrencyLimit), Some(&1));
        assert_eq!(s.worker.map(|w| w.count()), Some(1));
        let line = serde_json::to_string(&t.snapshot()).unwrap_or_default();
        assert!(line.contains(r#""route":"predict""#), "{line}");
        assert!(line.contains(r#""concurrency_limit":1"#), "{line}");
    }

    #[test]
    fn value_buckets_are_monotonic_and_signed() {
        let values = [
            -1e6, -3.0, -1.0, -1e-12, 0.0, 1e-12, 0.5, 1.0, 1.1, 2.0, 1e9,
        ];
        let buckets: Vec<i32> = values.iter().map(|&v| value_bucket(v)).collect();
        assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
        assert_eq!(value_bucket(0.0), 0);
        assert_eq!(value_bucket(-2.0), -value_bucket(2.0));
        assert_ne!(value_bucket(1.0), value_bucket(2.0));
    }

    #[test]
    fn request_ids_are_hex_and_unique() {
        let ids = RequestIds::new(0xdead_beef);
        assert_eq!(&ids.make(), b"deadbeef00000000");
        assert_eq!(&ids.make(), b"deadbeef00000001");
        let later = RequestIds::new(1);
        later.next.store(0xffff_fffe, Ordering::Relaxed);
        assert_eq!(&later.make(), b"00000001fffffffe");
        assert!(valid_request_id(&later.make()));
        assert!(!valid_request_id(b""));
        assert!(!valid_request_id(b"has space"));
        assert!(!valid_request_id(&[b'x'; 129]));
        assert!(valid_request_id(&[b'x'; 128]));
    }

    #[test]
    fn reports_survive_the_event_line() {
        let t = Tally::with_workers();
        t.request(Route::Infer, 200, Duration::from_micros(90));
        t.rejected(RejectReason::QueueFull);
        t.worker_time(Duration::from_millis(3));
        let mut requests = t.snapshot();
        requests.tracker = Some(TrackerStats {
            classes: [("setosa".to_string(), 3)].into_iter().collect(),
            values: vec![(-3, 1, -0.5), (value_bucket(2.5), 2, 5.0)],
            invalid: 1,
        });
        let event = crate::ReplicaEvent::Metrics {
            in_flight: 1,
            workers_crash_looping: false,
            models: Vec::new(),
            requests,
        };
        assert_eq!(
            crate::ReplicaEvent::from_line(&event.to_line()),
            Some(event)
        );
    }
}
