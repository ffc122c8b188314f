//! `MetricSeries`: bucketing by second, replacement within a second, summing replicas, window
//! boundaries, pruning and the no-data cases.

use std::time::Duration;

use gyrus_autoscaler::MetricSeries;

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// One replica reporting `total(s)` in each second `range`, at s + 0.25.
fn series(range: std::ops::RangeInclusive<u64>, total: impl Fn(u64) -> u32) -> MetricSeries {
    let mut m = MetricSeries::new();
    for s in range {
        m.record(ms(s * 1000 + 250), "a", total(s));
    }
    m
}

#[test]
fn empty_series_has_no_data() {
    let m = MetricSeries::new();
    assert!(m.is_empty());
    assert_eq!(m.average(secs(100), secs(60)), None);
    assert_eq!(m.current(secs(100)), None);
}

#[test]
fn samples_in_one_second_share_a_bucket() {
    let mut m = MetricSeries::new();
    m.record(ms(10_000), "a", 2);
    m.record(ms(10_999), "b", 3);
    m.record(ms(11_000), "a", 7);
    // Seconds 10 (2 + 3) and 11 (7).
    assert_eq!(m.average(ms(10_500), secs(1)), Some(5.0));
    assert_eq!(m.average(ms(11_500), secs(1)), Some(7.0));
    assert_eq!(m.average(ms(11_500), secs(2)), Some(6.0));
}

#[test]
fn a_later_sample_replaces_the_earlier_one_in_the_same_second() {
    let mut m = MetricSeries::new();
    m.record(ms(10_200), "a", 3);
    m.record(ms(10_700), "a", 5);
    assert_eq!(m.average(ms(10_900), secs(60)), Some(5.0));
    assert_eq!(m.current(ms(10_900)), Some(5));
}

#[test]
fn a_late_delivered_older_sample_does_not_replace_a_newer_one() {
    let mut m = MetricSeries::new();
    m.record(ms(10_700), "a", 5);
    m.record(ms(10_200), "a", 3);
    assert_eq!(m.current(ms(10_900)), Some(5));
    // Same instant: the last call wins.
    m.record(ms(10_700), "a", 4);
    assert_eq!(m.current(ms(10_900)), Some(4));
}

#[test]
fn replicas_are_summed_per_second() {
    let mut m = MetricSeries::new();
    for (r, n) in [("a", 2), ("b", 3), ("c", 4)] {
        m.record(ms(20_100), r, n);
    }
    // Second 21: only two replicas reported; its total is theirs.
    m.record(ms(21_100), "a", 1);
    m.record(ms(21_900), "c", 1);
    assert_eq!(m.current(ms(20_500)), Some(9));
    assert_eq!(m.current(ms(21_950)), Some(2));
    assert_eq!(m.average(ms(21_950), secs(60)), Some(5.5));
}

#[test]
fn the_average_is_over_seconds_with_samples() {
    let mut m = MetricSeries::new();
    m.record(ms(1_500), "a", 4);
    m.record(ms(3_500), "a", 6);
    // Seconds 0, 2, 4 and 5 have no samples: missing, not zero.
    assert_eq!(m.average(secs(5), secs(60)), Some(5.0));
}

#[test]
fn window_is_half_open_at_the_old_end() {
    // Totals 0..=120, total(s) = s.
    let m = series(0..=120, |s| s as u32);
    // now 60 s, window 60s: (0, 60] holds seconds 1..=60 → mean 30.5.
    assert_eq!(m.average(secs(60), secs(60)), Some(30.5));
    // Anywhere within second 60 the same seconds (the bucket of 60 counts from its start).
    assert_eq!(m.average(ms(60_999), secs(60)), Some(30.5));
    // At 61 s second 1 leaves and 61 enters.
    assert_eq!(m.average(secs(61), secs(60)), Some(31.5));
    // A window of 1s is just the current second.
    assert_eq!(m.average(ms(42_300), secs(1)), Some(42.0));
    // A sub-second offset: (59.5, 60.5] starts after second 59 → seconds 60 only.
    assert_eq!(m.average(ms(60_500), secs(1)), Some(60.0));
}

#[test]
fn window_reaching_before_the_origin_takes_everything_so_far() {
    let m = series(0..=9, |_| 3);
    assert_eq!(m.average(ms(9_500), secs(60)), Some(3.0));
}

#[test]
fn samples_after_now_are_not_averaged() {
    let mut m = series(0..=10, |_| 1);
    m.record(ms(11_500), "a", 100);
    assert_eq!(m.average(secs(10), secs(60)), Some(1.0));
    assert_eq!(m.current(secs(10)), Some(1));
}

#[test]
fn no_sample_in_the_window_is_no_data() {
    let m = series(0..=10, |_| 5);
    assert_eq!(m.average(secs(100), secs(60)), None);
}

#[test]
fn the_oldest_second_leaves_exactly_when_the_window_passes_it() {
    let m = series(0..=10, |_| 5);
    // (10, 70] excludes second 10; (9, 69] includes it.
    assert_eq!(m.average(secs(70), secs(60)), None);
    assert_eq!(m.average(ms(69_999), secs(60)), Some(5.0));
}

#[test]
fn zero_window_is_no_data() {
    let m = series(0..=10, |_| 5);
    assert_eq!(m.average(secs(5), Duration::ZERO), None);
}

#[test]
fn prune_drops_exactly_what_the_window_leaves_out() {
    let mut m = series(0..=120, |s| s as u32);
    let before = m.average(secs(100), secs(60));
    m.prune(secs(100), secs(60));
    // Same average over the kept window; nothing older survives (a longer window sees only
    // seconds 41..=100); seconds after now are kept.
    assert_eq!(m.average(secs(100), secs(60)), before);
    assert_eq!(m.average(secs(100), secs(1000)), Some(70.5));
    assert_eq!(m.current(ms(120_500)), Some(120));
}

#[test]
fn prune_with_keep_longer_than_the_history_drops_nothing() {
    let mut m = series(0..=10, |_| 2);
    m.prune(secs(10), secs(60));
    assert_eq!(m.average(secs(10), secs(60)), Some(2.0));
    m.prune(secs(1000), secs(60));
    assert!(m.is_empty());
    assert_eq!(m.average(secs(1000), secs(60)), None);
}

#[test]
fn current_is_the_latest_second_if_fresh() {
    let mut m = MetricSeries::new();
    m.record(ms(10_300), "a", 2);
    m.record(ms(10_400), "b", 5);
    assert_eq!(m.current(ms(10_500)), Some(7));
    // Freshness is from the newest sample: 12.4 s is exactly 2 s after it.
    assert_eq!(m.current(ms(12_400)), Some(7));
    assert_eq!(m.current(ms(12_401)), None);
    // A newer second replaces it, even with fewer replicas reported so far.
    m.record(ms(11_100), "a", 1);
    assert_eq!(m.current(ms(11_200)), Some(1));
    // Before any sample: nothing.
    assert_eq!(m.current(ms(9_000)), None);
}

#[test]
fn large_totals_do_not_overflow() {
    let mut m = MetricSeries::new();
    for r in ["a", "b", "c"] {
        m.record(ms(500), r, u32::MAX);
    }
    assert_eq!(m.current(ms(600)), Some(u32::MAX));
    assert_eq!(
        m.average(ms(600), secs(60)),
        Some(3.0 * f64::from(u32::MAX))
    );
}
