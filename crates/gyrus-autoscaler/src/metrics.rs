//! Per-second in-flight samples of one API's replicas, and their average over a window.

use std::collections::BTreeMap;
use std::time::Duration;

/// Per-second in-flight samples of an API's replicas. Time is a [`Duration`] since any fixed
/// origin (the daemon uses its start; tests a fake clock).
///
/// Samples are bucketed by whole second (`at.as_secs()`): bucket `s` holds the samples taken
/// in `[s, s + 1)` and stands at time `s` for window arithmetic. Within a bucket each replica
/// has at most one sample, and the bucket's total is the sum over the replicas that reported
/// in it. A second in which no replica reported has no bucket: it is missing data, not zero
/// load, because an idle replica still reports 0 every second.
#[derive(Debug, Clone, Default)]
pub struct MetricSeries {
    seconds: BTreeMap<u64, Bucket>,
}

/// One second's samples: replica name → (when it was taken, in-flight count).
#[derive(Debug, Clone, Default)]
struct Bucket {
    samples: BTreeMap<String, (Duration, u32)>,
}

impl Bucket {
    /// The sum over replicas, in u64 so that many large counts cannot overflow.
    fn total(&self) -> u64 {
        self.samples.values().map(|&(_, n)| u64::from(n)).sum()
    }

    /// When the latest sample in this second was taken.
    fn latest(&self) -> Option<Duration> {
        self.samples.values().map(|&(at, _)| at).max()
    }
}

/// How long ago the latest sample may have been taken for [`MetricSeries::current`] to show
/// it: replicas sample every second, so two seconds allows for one late or lost report.
const CURRENT_FRESHNESS: Duration = Duration::from_secs(2);

impl MetricSeries {
    /// An empty series.
    pub fn new() -> Self {
        Self::default()
    }

    /// One replica's sample at `at`. Samples are bucketed by whole second; a replica's later
    /// sample in the same second replaces its earlier one; the total for a second is the sum
    /// over replicas that reported in it.
    ///
    /// "Later" is by `at`, not by call order, so that a report delivered late cannot
    /// overwrite a newer one; with equal `at` the last call wins.
    pub fn record(&mut self, at: Duration, replica: &str, in_flight: u32) {
        let bucket = self.seconds.entry(at.as_secs()).or_default();
        match bucket.samples.get_mut(replica) {
            Some(slot) => {
                if at >= slot.0 {
                    *slot = (at, in_flight);
                }
            }
            None => {
                bucket.samples.insert(replica.to_owned(), (at, in_flight));
            }
        }
    }

    /// The mean of the per-second totals over (now - window, now]; None when no second in the
    /// window has samples.
    ///
    /// A bucket is in the window when its second `s` satisfies `now - window < s <= now`, so
    /// at `now = 60s` a 60s window covers seconds 1 to 60 (the bucket of second 60, which may
    /// still be filling, included). The mean is over the seconds that have samples, as
    /// Cortex's averaged the data points CloudWatch returned: a gap in reporting does not
    /// drag the average towards zero.
    pub fn average(&self, now: Duration, window: Duration) -> Option<f64> {
        let (sum, count) = self
            .in_window(now, window)
            .fold((0u128, 0u64), |(sum, count), bucket| {
                (sum + u128::from(bucket.total()), count + 1)
            });
        // Totals are integers, so the sum is exact and the mean is one correctly rounded
        // division.
        (count > 0).then(|| sum as f64 / count as f64)
    }

    /// Drops data older than `keep` before `now` (the daemon calls it each tick with the
    /// window): exactly the buckets that [`MetricSeries::average`] with `window = keep` would
    /// leave out as too old. Buckets ahead of `now` are kept.
    pub fn prune(&mut self, now: Duration, keep: Duration) {
        if let Some(oldest_out) = now.checked_sub(keep).map(|lo| lo.as_secs()) {
            self.seconds.retain(|&s, _| s > oldest_out);
        }
    }

    /// The latest second's total (for display), if any sample is within the last 2 s.
    ///
    /// The latest second is the newest bucket at or before `now`; "within the last 2 s" is
    /// judged by the time of its newest sample.
    pub fn current(&self, now: Duration) -> Option<u32> {
        let (_, bucket) = self.seconds.range(..=now.as_secs()).next_back()?;
        let latest = bucket.latest()?;
        (now.saturating_sub(latest) <= CURRENT_FRESHNESS)
            .then(|| u32::try_from(bucket.total()).unwrap_or(u32::MAX))
    }

    /// Whether the series holds no samples at all.
    pub fn is_empty(&self) -> bool {
        self.seconds.is_empty()
    }

    /// The buckets of seconds `s` with `now - window < s <= now`.
    fn in_window(&self, now: Duration, window: Duration) -> impl Iterator<Item = &Bucket> {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        // Bucket second `s` is after `now - window` iff `s > floor(now - window)`; when the
        // window reaches back before the origin, every second from 0 is in it.
        let lower = match now.checked_sub(window) {
            Some(lo) => Excluded(lo.as_secs()),
            None => Unbounded,
        };
        // `lower` never exceeds `upper` (now - window <= now) and they are not both
        // Excluded, so `range` cannot panic; equal bounds give an empty range.
        let upper = Included(now.as_secs());
        self.seconds.range((lower, upper)).map(|(_, b)| b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_window_is_empty_not_a_panic() {
        let mut m = MetricSeries::new();
        m.record(Duration::from_millis(5_500), "a", 3);
        assert_eq!(
            m.average(Duration::from_millis(5_700), Duration::ZERO),
            None
        );
        assert_eq!(
            m.average(Duration::from_millis(5_700), Duration::from_millis(100)),
            None
        );
        assert_eq!(
            m.average(Duration::from_millis(5_700), Duration::from_millis(800)),
            Some(3.0)
        );
    }
}
