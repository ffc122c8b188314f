//! What the inference service did, per model, since it started: cumulative counters (lock-free,
//! updated by the engine thread and by callers), read as [`ModelStats`] snapshots. The replica
//! sends them to the daemon with its once-a-second metrics event; `gyrus describe` shows them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use gyrus_launch::telemetry::AtomicHistogram;
pub use gyrus_launch::ModelStats;

/// The upper bounds of the batch-size buckets of [`ModelStats::batch_sizes`]: runs of 1 row,
/// 2, 3-4, 5-8, ... 65-128, and more.
pub const BATCH_BUCKETS: [u64; 8] = [1, 2, 4, 8, 16, 32, 64, 128];

pub(super) struct Counters {
    requests: AtomicU64,
    runs: AtomicU64,
    /// Runs by rows: one per bucket of [`BATCH_BUCKETS`], then one for larger.
    buckets: [AtomicU64; 9],
    shed_queue_full: AtomicU64,
    shed_deadline: AtomicU64,
    queue_us: AtomicU64,
    engine_us: AtomicU64,
    run_seconds: AtomicHistogram,
    queue_seconds: AtomicHistogram,
    batch_rows: AtomicHistogram,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            requests: AtomicU64::new(0),
            runs: AtomicU64::new(0),
            buckets: Default::default(),
            shed_queue_full: AtomicU64::new(0),
            shed_deadline: AtomicU64::new(0),
            queue_us: AtomicU64::new(0),
            engine_us: AtomicU64::new(0),
            run_seconds: AtomicHistogram::latency(),
            queue_seconds: AtomicHistogram::latency(),
            batch_rows: AtomicHistogram::rows(),
        }
    }
}

impl Counters {
    /// One engine run of `requests` requests holding `rows` rows in all.
    pub(super) fn run(&self, requests: usize, rows: usize, took: Duration) {
        self.runs.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(requests as u64, Ordering::Relaxed);
        let rows = rows.max(1) as u64;
        let bucket = BATCH_BUCKETS
            .iter()
            .position(|&b| rows <= b)
            .unwrap_or(BATCH_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.engine_us.fetch_add(micros(took), Ordering::Relaxed);
        self.run_seconds.record_duration(took);
        self.batch_rows.record_rows(rows);
    }

    /// A request left the queue after `waited`.
    pub(super) fn dequeued(&self, waited: Duration) {
        self.queue_us.fetch_add(micros(waited), Ordering::Relaxed);
        self.queue_seconds.record_duration(waited);
    }

    pub(super) fn queue_full(&self) {
        self.shed_queue_full.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn deadline(&self) {
        self.shed_deadline.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn snapshot(&self, model: &str, batching: bool, queued: usize) -> ModelStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ModelStats {
            model: model.to_string(),
            batching,
            requests: get(&self.requests),
            runs: get(&self.runs),
            batch_sizes: self.buckets.iter().map(get).collect(),
            queued: queued as u64,
            shed_queue_full: get(&self.shed_queue_full),
            shed_deadline: get(&self.shed_deadline),
            queue_us: get(&self.queue_us),
            engine_us: get(&self.engine_us),
            run_seconds: self.run_seconds.snapshot(),
            queue_seconds: self.queue_seconds.snapshot(),
            batch_rows: self.batch_rows.snapshot(),
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
