//! The daemon's loop on a fake clock: replicas report every second into a `MetricSeries`, and
//! every 10 s the daemon prunes it, averages over the window and ticks the `Autoscaler`,
//! applying the decision. Default parameters; the expected counts are worked out in the
//! comments.

use std::time::Duration;

use gyrus_autoscaler::{Autoscaler, MetricSeries, Params};

/// Total in-flight requests in second `s`: 6 until 120 s, then 1.
fn load(s: u64) -> u32 {
    if s < 120 {
        6
    } else {
        1
    }
}

/// Runs the loop for `0..=until` seconds from 1 replica; returns (tick second, replicas after
/// the tick).
fn simulate(until: u64) -> Vec<(u64, u32)> {
    let params = Params::default();
    let mut metrics = MetricSeries::new();
    let mut scaler = Autoscaler::new();
    let mut replicas = 1u32;
    let mut out = Vec::new();
    for s in 0..=until {
        // Each replica samples at s + 0.25 s; the load is split among them (the total is what
        // matters).
        let total = load(s);
        for i in 0..replicas {
            let share = total / replicas + u32::from(i < total % replicas);
            metrics.record(
                Duration::from_millis(s * 1000 + 250),
                &format!("r{i}"),
                share,
            );
        }
        // Ticks at s + 0.5 s every 10 s, from 10 s.
        if s % 10 == 0 && s > 0 {
            let now = Duration::from_millis(s * 1000 + 500);
            metrics.prune(now, params.window);
            let avg = metrics.average(now, params.window);
            let d = scaler.tick(&params, now, avg, replicas);
            replicas = d.replicas;
            out.push((s, replicas));
        }
    }
    out
}

#[test]
fn load_rise_and_fall_through_the_daemon_loop() {
    let ticks = simulate(1200);
    let at = |s: u64| {
        ticks
            .iter()
            .find(|&&(t, _)| t == s)
            .map(|&(_, r)| r)
            .unwrap_or_else(|| panic!("no tick at {s}"))
    };
    // 10 s (the start): average 6 → 6 at once (up ceil max(2, 10)).
    assert_eq!(at(10), 6);
    // The averages after the drop at 120 s are 5.92 (in the downscale tolerance), 5.08, 4.25,
    // 3.42, 2.58, 1.75 and then 1, giving recommendations 6 (at 130 s), 5, 4, then 3 (the
    // max_downscale_factor floor of 6). The start period holds until 310 s; then the 6 made
    // at 130 s holds until 430 s (inclusive period).
    for s in (10..=430).step_by(10) {
        assert_eq!(at(s), 6, "at {s}");
    }
    // 440 s: highest of [140, 440] is 5. 450 s: highest of [150, 450] is 4. 460 s: 3.
    assert_eq!(at(440), 5);
    assert_eq!(at(450), 4);
    assert_eq!(at(460), 3);
    // From 3 the recommendation is 2, but the 3s made up to 450 s hold until 750 s.
    for s in (470..=750).step_by(10) {
        assert_eq!(at(s), 3, "at {s}");
    }
    assert_eq!(at(760), 2);
    // From 2 the recommendation is 1; the 2 made at 760 s holds until 1060 s.
    for s in (770..=1060).step_by(10) {
        assert_eq!(at(s), 2, "at {s}");
    }
    assert_eq!(at(1070), 1);
    assert_eq!(at(1200), 1);
}
