//! Table tests of `Autoscaler::tick` over synthetic histories and a fake clock.
//!
//! Each case is a list of ticks: (time, average in-flight or None, current replicas) with the
//! expected replicas and, for some, a substring of the reason. Expectations are computed by
//! hand from the algorithm; the arithmetic is in the comments.
//!
//! The `cortex_*` cases port the table in cortexlabs/cortex `pkg/autoscaler/autoscaler_test.go`
//! (`TestAutoscaler_AutoscaleFn`, and `TestAutoscaler_MinReplicas` / `_MaxReplicas`), whose
//! parameters are `window: 4 * 250ms`, tolerances 0.05, and a pre-seeded recommendation
//! timeline. Here the timeline is produced by earlier ticks instead, and "expectedRequest: nil"
//! (no scale call) is "replicas == current". `TestAutoscaler_Awake` has no counterpart: waking
//! a scaled-to-zero API is the daemon's business, not this crate's.

use std::time::Duration;

use gyrus_autoscaler::{Autoscaler, Decision, Params};

/// One tick of a case.
struct Step {
    at: Duration,
    avg: Option<f64>,
    current: u32,
    want: u32,
    reason: Option<&'static str>,
    /// New parameters from this tick on (a redeploy with other settings).
    params: Option<Params>,
}

fn step(secs: u64, avg: Option<f64>, current: u32, want: u32) -> Step {
    Step {
        at: Duration::from_secs(secs),
        avg,
        current,
        want,
        reason: None,
        params: None,
    }
}

/// A tick at a sub-second time (the Cortex tests run on 250 ms intervals).
fn step_ms(millis: u64, avg: Option<f64>, current: u32, want: u32) -> Step {
    Step {
        at: Duration::from_millis(millis),
        ..step(0, avg, current, want)
    }
}

impl Step {
    fn reason(mut self, reason: &'static str) -> Step {
        self.reason = Some(reason);
        self
    }

    fn redeploy(mut self, params: Params) -> Step {
        self.params = Some(params);
        self
    }
}

/// Ticks every 10 s from `from` to `to` inclusive, all with the same load, current count and
/// expectation (a steady stretch).
fn every10(from: u64, to: u64, avg: f64, current: u32, want: u32) -> Vec<Step> {
    (from..=to)
        .step_by(10)
        .map(|t| step(t, Some(avg), current, want))
        .collect()
}

/// Runs the ticks on a fresh autoscaler and checks each one; returns the decisions.
fn run(name: &str, params: Params, steps: Vec<Step>) -> Vec<Decision> {
    let mut params = params;
    let mut scaler = Autoscaler::new();
    let mut out = Vec::new();
    for (i, s) in steps.into_iter().enumerate() {
        if let Some(p) = s.params {
            params = p;
        }
        let d = scaler.tick(&params, s.at, s.avg, s.current);
        assert_eq!(
            d.replicas, s.want,
            "{name}: step {i} at {:?} (avg {:?}, current {}): {d:?}",
            s.at, s.avg, s.current
        );
        if let Some(r) = s.reason {
            assert!(
                d.reason.contains(r),
                "{name}: step {i} at {:?}: reason {:?} lacks {r:?}",
                s.at,
                d.reason
            );
        }
        out.push(d);
    }
    out
}

fn defaults() -> Params {
    Params::default()
}

/// The defaults without the 5m downscale stabilization, to see the other rules alone.
fn unstabilized() -> Params {
    Params {
        downscale_stabilization: Duration::ZERO,
        upscale_stabilization: Duration::ZERO,
        ..Params::default()
    }
}

/// The parameters of Cortex's `TestAutoscaler_AutoscaleFn` cases.
fn cortex(min: u32, stabilization: Duration, max_downscale_factor: f64) -> Params {
    Params {
        min_replicas: min,
        max_replicas: 5,
        target: 1.0,
        window: Duration::from_secs(1),
        downscale_stabilization: stabilization,
        upscale_stabilization: stabilization,
        max_downscale_factor,
        max_upscale_factor: 1.5,
        downscale_tolerance: 0.05,
        upscale_tolerance: 0.05,
    }
}

/// The parameters of Cortex's `TestAutoscaler_MinReplicas` / `_MaxReplicas` (Go zero values
/// for the fields they leave out: no stabilization, no tolerance).
fn cortex_bounds() -> Params {
    Params {
        min_replicas: 5,
        max_replicas: 10,
        target: 1.0,
        window: Duration::from_millis(500),
        downscale_stabilization: Duration::ZERO,
        upscale_stabilization: Duration::ZERO,
        max_downscale_factor: 0.75,
        max_upscale_factor: 1.5,
        downscale_tolerance: 0.0,
        upscale_tolerance: 0.0,
    }
}

// ---------------------------------------------------------------------------------------
// Steady load

#[test]
fn steady_load_at_target_keeps_the_count() {
    // raw 3 == cur 3: neither band (strict), ceil 3 → keep.
    run(
        "steady at target",
        defaults(),
        vec![
            step(0, Some(3.0), 3, 3)
                .reason("avg in-flight 3.00 over 60s at target 1 → 3; keeping 3"),
            step(10, Some(3.0), 3, 3),
            step(20, Some(3.0), 3, 3),
        ],
    );
}

#[test]
fn steady_high_load_scales_up_at_once() {
    // raw 5, up ceil max(2, ceil(1 * 10)) = 10, upscale stabilization 0 → 5 on the first tick.
    let d = run(
        "steady high",
        defaults(),
        vec![
            step(0, Some(5.0), 1, 5).reason("avg in-flight 5.00 over 60s at target 1 → 5"),
            step(10, Some(5.0), 5, 5).reason("keeping 5"),
        ],
    );
    assert_eq!(d[0].recommendation, Some(5));
    assert_eq!(d[0].avg_in_flight, Some(5.0));
}

#[test]
fn fractional_load_rounds_up() {
    // raw 2.5 > 2 * 1.1 = 2.2, so outside the band; ceil 2.5 = 3.
    run("fractional", defaults(), vec![step(0, Some(2.5), 2, 3)]);
}

#[test]
fn steady_low_load_scales_down_only_after_the_period() {
    // cur 4, raw 1: down floor min(3, ceil(2)) = 2, so rec 2 every tick. The first 5m after
    // start hold 4; at 300 s (not < 300 s) the highest recommendation is 2 → 2. Then rec 1
    // (floor min(1, 1) = 1), but the 2 recorded at 300 s stays in the (inclusive) 5m period
    // until 600 s; at 610 s all recent ones are 1 → 1.
    let mut steps = vec![step(0, Some(1.0), 4, 4)
        .reason("holding 4: downscale stabilization (started 0s ago, less than 5m)")];
    steps.extend(every10(10, 290, 1.0, 4, 4));
    steps.push(step(300, Some(1.0), 4, 2).reason(
        "avg in-flight 1.00 over 60s at target 1 → 1; limited to 2 by max_downscale_factor",
    ));
    steps.push(
        step(310, Some(1.0), 2, 2).reason(
            "holding 2: downscale stabilization (highest recommendation in the last 5m is 2)",
        ),
    );
    steps.extend(every10(320, 600, 1.0, 2, 2));
    steps.push(step(610, Some(1.0), 2, 1));
    steps.push(step(620, Some(1.0), 1, 1).reason("keeping 1"));
    run("steady low", defaults(), steps);
}

#[test]
fn idle_api_goes_to_min_replicas() {
    run(
        "idle",
        unstabilized(),
        vec![
            // cur 2: floor min(1, 1) = 1.
            step(0, Some(0.0), 2, 1).reason("→ 0; limited to 1 by max_downscale_factor"),
            // cur 1: floor min(0, ceil(0.5)) = 0, so rec 0, raised to min 1.
            step(10, Some(0.0), 1, 1).reason("→ 0; raised to 1 by min_replicas; keeping 1"),
        ],
    );
}

// ---------------------------------------------------------------------------------------
// Spikes

#[test]
fn spike_is_limited_going_up_and_held_coming_down() {
    // 10 s: raw 20, up ceil max(2, 10) = 10. 20 s: up ceil max(11, 100) → 20. 30 s: load
    // gone, raw 2, down floor min(19, 10) = 10, held by the start period until 300 s; from
    // 300 s the 20 recorded at 20 s is within 5m until 320 s; at 330 s the highest is 10.
    let mut steps = vec![
        step(0, Some(1.0), 1, 1),
        step(10, Some(20.0), 1, 10).reason("→ 20; limited to 10 by max_upscale_factor"),
        step(20, Some(20.0), 10, 20),
        step(30, Some(2.0), 20, 20).reason("holding 20: downscale stabilization (started 30s ago"),
    ];
    steps.extend(every10(40, 290, 2.0, 20, 20));
    steps.push(step(300, Some(2.0), 20, 20).reason(
        "holding 20: downscale stabilization (highest recommendation in the last 5m is 20)",
    ));
    steps.extend(every10(310, 320, 2.0, 20, 20));
    steps.push(step(330, Some(2.0), 20, 10).reason("limited to 10 by max_downscale_factor"));
    steps.push(step(340, Some(2.0), 10, 10).reason(
        "holding 10: downscale stabilization (highest recommendation in the last 5m is 10)",
    ));
    run("spike", defaults(), steps);
}

#[test]
fn short_spike_within_upscale_stabilization_is_ignored() {
    // Upscale stabilization 30s: at 30 s the spike recommends 20 (up ceil max(3, 20)), but the
    // lowest recommendation in [0 s, 30 s] is 2 → hold; the spike is gone by 40 s.
    let p = Params {
        upscale_stabilization: Duration::from_secs(30),
        downscale_stabilization: Duration::ZERO,
        ..Params::default()
    };
    let d = run(
        "short spike",
        p,
        vec![
            step(0, Some(2.0), 2, 2),
            step(10, Some(2.0), 2, 2),
            step(20, Some(2.0), 2, 2),
            step(30, Some(40.0), 2, 2).reason(
                "holding 2: upscale stabilization (lowest recommendation in the last 30s is 2)",
            ),
            step(40, Some(2.0), 2, 2),
            step(50, Some(2.0), 2, 2),
        ],
    );
    assert_eq!(d[3].recommendation, Some(20));
}

#[test]
fn sustained_spike_passes_upscale_stabilization() {
    // The 2s recorded at 0..20 s leave the 30s period one by one; at 60 s only 8s remain.
    let p = Params {
        upscale_stabilization: Duration::from_secs(30),
        downscale_stabilization: Duration::ZERO,
        ..Params::default()
    };
    run(
        "sustained spike",
        p,
        vec![
            step(0, Some(2.0), 2, 2),
            step(10, Some(2.0), 2, 2),
            step(20, Some(2.0), 2, 2),
            step(30, Some(8.0), 2, 2),
            step(40, Some(8.0), 2, 2),
            step(50, Some(8.0), 2, 2),
            step(60, Some(8.0), 2, 8),
        ],
    );
}

#[test]
fn upscale_stabilization_allows_up_to_the_lowest_recent() {
    // Held by the start period at 0..20 s (rec 4); at 30 s rec 8 but the lowest in the period
    // is 4 → scale to 4, not 8.
    let p = Params {
        upscale_stabilization: Duration::from_secs(30),
        downscale_stabilization: Duration::ZERO,
        ..Params::default()
    };
    run(
        "partial upscale",
        p,
        vec![
            step(0, Some(4.0), 2, 2)
                .reason("holding 2: upscale stabilization (started 0s ago, less than 30s)"),
            step(10, Some(4.0), 2, 2),
            step(20, Some(4.0), 2, 2),
            step(30, Some(8.0), 2, 4).reason(
                "scaling up to 4, not 8: upscale stabilization (lowest recommendation in the last 30s is 4)",
            ),
        ],
    );
}

// ---------------------------------------------------------------------------------------
// Tolerance bands

#[test]
fn within_upscale_tolerance_keeps() {
    // 3 < 3.2 < 3.3.
    run(
        "up band",
        defaults(),
        vec![step(0, Some(3.2), 3, 3)
            .reason("within the upscale tolerance (raw 3.20 of 3); keeping 3")],
    );
}

#[test]
fn upscale_tolerance_boundary_is_outside_the_band() {
    // raw 3.3 == 3 * 1.1 exactly, so not strictly inside: ceil 3.3 = 4. (In f64, 3.0 * 1.1 is
    // 3.3000000000000003 and a literal comparison would keep 3.)
    run("up boundary", defaults(), vec![step(0, Some(3.3), 3, 4)]);
}

#[test]
fn just_above_upscale_tolerance_scales_up() {
    run(
        "above up band",
        defaults(),
        vec![step(0, Some(11.01), 10, 12)],
    );
}

#[test]
fn within_downscale_tolerance_keeps() {
    // 9 < 9.5 < 10: keep, without any stabilization involved (rec == cur).
    run(
        "down band",
        defaults(),
        vec![step(0, Some(9.5), 10, 10)
            .reason("within the downscale tolerance (raw 9.50 of 10); keeping 10")],
    );
}

#[test]
fn downscale_tolerance_boundary_is_outside_the_band() {
    // 23 * (1 - 0.05) = 21.85 exactly, not strictly inside: ceil 21.85 = 22. (In f64 the
    // product is 21.849999999999998 and a literal comparison would keep 23.)
    let p = Params {
        downscale_tolerance: 0.05,
        ..unstabilized()
    };
    run("down boundary", p, vec![step(0, Some(21.85), 23, 22)]);
    // And 10 * 0.9 = 9: raw 9 scales down to 9.
    run(
        "down boundary 2",
        unstabilized(),
        vec![step(0, Some(9.0), 10, 9)],
    );
}

#[test]
fn zero_tolerance_scales_on_any_difference() {
    let p = Params {
        downscale_tolerance: 0.0,
        upscale_tolerance: 0.0,
        ..unstabilized()
    };
    run(
        "zero tolerance",
        p,
        vec![
            step(0, Some(3.01), 3, 4),
            step(10, Some(2.99), 3, 3), // ceil 2.99 = 3
            step(20, Some(1.99), 3, 2),
        ],
    );
}

#[test]
fn tolerance_is_relative_to_the_target() {
    // target 4 (2 workers x 2 threads): 12.8 in flight is raw 3.2 of 3 → keep; 13.2 is raw
    // 3.3, the boundary → ceil 3.3 = 4.
    let p = Params {
        target: 4.0,
        ..defaults()
    };
    run(
        "target 4",
        p.clone(),
        vec![step(0, Some(12.8), 3, 3).reason("raw 3.20 of 3")],
    );
    run("target 4 boundary", p, vec![step(0, Some(13.2), 3, 4)]);
}

// ---------------------------------------------------------------------------------------
// Factor limits

#[test]
fn max_upscale_factor_limits_one_step() {
    // up ceil max(4, ceil(3 * 2)) = 6.
    let p = Params {
        max_upscale_factor: 2.0,
        ..defaults()
    };
    run(
        "up factor",
        p,
        vec![
            step(0, Some(50.0), 3, 6).reason("→ 50; limited to 6 by max_upscale_factor"),
            step(10, Some(50.0), 6, 12),
            step(20, Some(50.0), 12, 24),
            step(30, Some(50.0), 24, 48),
            // 48 < 50 < 52.8: within the upscale tolerance.
            step(40, Some(50.0), 48, 48).reason("within the upscale tolerance (raw 50.00 of 48)"),
        ],
    );
}

#[test]
fn scale_from_zero_is_one_step() {
    // cur 0: up ceil max(0 + 1, ceil(0 * 10)) = 1; the step of 1 is what allows it.
    let p = Params {
        min_replicas: 0,
        ..defaults()
    };
    run(
        "from zero",
        p,
        vec![
            step(0, Some(5.0), 0, 1)
                .reason("limited to 1 by max_upscale_factor (a step of 1 is always allowed)"),
            step(10, Some(5.0), 1, 5),
        ],
    );
}

#[test]
fn max_downscale_factor_limits_one_step() {
    // down floor min(9, ceil(10 * 0.5)) = 5, then min(4, 3) = 3, then min(2, 2) = 2.
    run(
        "down factor",
        unstabilized(),
        vec![
            step(0, Some(1.0), 10, 5).reason("→ 1; limited to 5 by max_downscale_factor"),
            step(10, Some(1.0), 5, 3),
            step(20, Some(1.0), 3, 2),
            step(30, Some(1.0), 2, 1),
        ],
    );
}

#[test]
fn downscale_step_of_one_is_always_allowed() {
    // factor 0.9: ceil(5 * 0.9) = 5 would forbid any downscale; min(4, 5) = 4.
    let p = Params {
        max_downscale_factor: 0.9,
        ..unstabilized()
    };
    run(
        "down step 1",
        p,
        vec![step(0, Some(0.0), 5, 4)
            .reason("limited to 4 by max_downscale_factor (a step of 1 is always allowed)")],
    );
    // factor 1 (the most conservative the spec accepts): ceil(3) = 3 → min(2, 3) = 2.
    let p = Params {
        max_downscale_factor: 1.0,
        ..unstabilized()
    };
    run("down factor 1", p, vec![step(0, Some(0.0), 3, 2)]);
}

#[test]
fn downscale_factor_ceiling_ignores_rounding_error() {
    // 100 * 0.55 = 55 (55.00000000000001 in f64, whose literal ceiling is 56).
    let p = Params {
        max_downscale_factor: 0.55,
        ..unstabilized()
    };
    run("factor rounding", p, vec![step(0, Some(0.0), 100, 55)]);
}

#[test]
fn zero_downscale_factor_drops_to_min_replicas() {
    // down floor min(9, 0) = 0: rec 0, raised to min 1.
    let p = Params {
        max_downscale_factor: 0.0,
        ..unstabilized()
    };
    run(
        "factor 0",
        p,
        vec![step(0, Some(0.0), 10, 1).reason("raised to 1 by min_replicas")],
    );
}

// ---------------------------------------------------------------------------------------
// min/max clamps

#[test]
fn cortex_min_replicas_is_a_floor() {
    // Cortex TestAutoscaler_MinReplicas: current 6, no load; never below 5. cur 6: rec 0,
    // floor min(5, ceil(4.5)) = 5 → 5. cur 5: floor min(4, ceil(3.75)) = 4 → raised to 5.
    run(
        "cortex min",
        cortex_bounds(),
        vec![
            step_ms(0, Some(0.0), 6, 5),
            step_ms(250, Some(0.0), 5, 5).reason("raised to 5 by min_replicas; keeping 5"),
            step_ms(500, Some(0.0), 5, 5),
            step_ms(3000, Some(0.0), 5, 5),
        ],
    );
}

#[test]
fn cortex_max_replicas_is_a_ceiling() {
    // Cortex TestAutoscaler_MaxReplicas: 20 in flight from 5 replicas; never above 10.
    // cur 5: up ceil max(6, ceil(7.5)) = 8. cur 8: max(9, 12) = 12 → capped at 10.
    run(
        "cortex max",
        cortex_bounds(),
        vec![
            step_ms(0, Some(20.0), 5, 8),
            step_ms(250, Some(20.0), 8, 10).reason("capped at 10 by max_replicas"),
            step_ms(500, Some(20.0), 10, 10),
            step_ms(3000, Some(20.0), 10, 10),
        ],
    );
}

#[test]
fn below_min_after_a_redeploy_scales_up_to_min() {
    // min 3, cur 1: rec 0 → floor min(0, 1) = 0 → raised to 3; upscale stabilization 0.
    let p = Params {
        min_replicas: 3,
        ..defaults()
    };
    run("below min", p, vec![step(0, Some(0.0), 1, 3)]);
}

#[test]
fn above_max_after_a_redeploy_scales_down_to_max() {
    let p = Params {
        max_replicas: 4,
        ..unstabilized()
    };
    run(
        "above max",
        p,
        vec![step(0, Some(8.0), 8, 4).reason("→ 8; capped at 4 by max_replicas")],
    );
    // With the default 5m downscale stabilization the start period holds it, exactly as in
    // Cortex (the daemon is expected to clamp the desired count itself on a redeploy).
    let p = Params {
        max_replicas: 4,
        ..defaults()
    };
    run("above max held", p, vec![step(0, Some(8.0), 8, 8)]);
}

#[test]
fn crossed_min_and_max_let_max_win() {
    let p = Params {
        min_replicas: 5,
        max_replicas: 3,
        ..unstabilized()
    };
    run(
        "crossed",
        p,
        vec![
            step(0, Some(10.0), 3, 3),
            step(10, Some(0.0), 3, 3)
                .reason("raised to 5 by min_replicas; capped at 3 by max_replicas"),
        ],
    );
}

// ---------------------------------------------------------------------------------------
// Stabilization periods

#[test]
fn downscale_stabilization_uses_the_highest_recent_recommendation() {
    // Period 60s. rec: 6 at 0 s, 4 at 10 s, 3 from 20 s. Start period holds until 60 s; at
    // 60 s the 6 from 0 s is in [0, 60] → hold; at 70 s the highest in [10, 70] is 4 → 4, not
    // 3; at 80 s all recent are 3 → 3.
    let p = Params {
        downscale_stabilization: Duration::from_secs(60),
        ..defaults()
    };
    let mut steps = vec![step(0, Some(6.0), 6, 6), step(10, Some(4.0), 6, 6)];
    steps.extend(every10(20, 50, 3.0, 6, 6));
    steps.push(step(60, Some(3.0), 6, 6).reason(
        "holding 6: downscale stabilization (highest recommendation in the last 60s is 6)",
    ));
    steps.push(step(70, Some(3.0), 6, 4).reason(
        "scaling down to 4, not 3: downscale stabilization (highest recommendation in the last 60s is 4)",
    ));
    steps.push(step(80, Some(3.0), 4, 3));
    run("highest recent", p, steps);
}

#[test]
fn downscale_stabilization_never_scales_up() {
    // The highest recent recommendation (8) is above the current count (4, after an outside
    // change): the floor is min(8, 4) = 4, so the downscale is held at 4, not raised to 8.
    let p = Params {
        downscale_stabilization: Duration::from_secs(60),
        ..defaults()
    };
    run(
        "floor capped",
        p,
        vec![
            step(0, Some(8.0), 8, 8),
            step(60, Some(1.0), 4, 4).reason("highest recommendation in the last 60s is 8"),
        ],
    );
}

#[test]
fn cortex_downscale_no_stabilization() {
    // Cortex: current 5, 2 in flight, periods 0 → 3 (down floor min(4, ceil(2.5)) = 3); the
    // pre-seeded 5 in the timeline is outside a zero period.
    run(
        "cortex downscale no stabilization",
        cortex(1, Duration::ZERO, 0.5),
        vec![step_ms(0, Some(5.0), 5, 5), step_ms(250, Some(2.0), 5, 3)],
    );
}

#[test]
fn cortex_downscale_with_stabilization() {
    // Cortex: current 1, 5 in flight, periods 1s: rec min(5, max(2, ceil(1.5))) = 2 is an
    // upscale, held because the autoscaler started less than 1s ago.
    run(
        "cortex downscale with stabilization",
        cortex(1, Duration::from_secs(1), 0.5),
        vec![step_ms(0, Some(5.0), 1, 1)
            .reason("holding 1: upscale stabilization (started 0s ago, less than 1s)")],
    );
}

#[test]
fn cortex_upscale_no_stabilization() {
    // Cortex: current 1, 3 in flight → up ceil max(2, ceil(1.5)) = 2.
    run(
        "cortex upscale no stabilization",
        cortex(1, Duration::ZERO, 0.5),
        vec![step_ms(0, Some(3.0), 1, 2).reason("→ 3; limited to 2 by max_upscale_factor")],
    );
}

#[test]
fn cortex_upscale_with_stabilization() {
    // Cortex: current 2, 5 in flight, periods 1s → rec 3, held by the start period.
    run(
        "cortex upscale with stabilization",
        cortex(1, Duration::from_secs(1), 0.5),
        vec![step_ms(0, Some(5.0), 2, 2)],
    );
}

#[test]
fn cortex_no_upscale_below_current_replicas() {
    // Cortex: min 0, current 2, 3 in flight, recent recommendations 0..3 → held (start).
    run(
        "cortex no upscale below current",
        cortex(0, Duration::from_secs(1), 0.75),
        vec![step_ms(0, Some(3.0), 2, 2)],
    );
}

#[test]
fn cortex_no_scale_below_zero_within_stabilization_period() {
    // Cortex: min 0, current 1, no load, periods 1s: rec 0 (floor min(0, ceil(0.75)) = 0),
    // held at 1 by the start period. Continued here: at 1 s the period has passed and every
    // recent recommendation is 0 → scale to zero; at 3 s load arrives, rec 1 (a step of 1 from
    // zero), but the 0 recorded at 2 s is the lowest in the upscale period → stay at 0; at 4 s
    // the recent ones are all 1 → 1.
    run(
        "cortex no scale below zero",
        cortex(0, Duration::from_secs(1), 0.75),
        vec![
            step_ms(0, Some(0.0), 1, 1),
            step_ms(1000, Some(0.0), 1, 0),
            step_ms(2000, Some(0.0), 0, 0).reason("keeping 0"),
            step_ms(3000, Some(2.0), 0, 0).reason(
                "holding 0: upscale stabilization (lowest recommendation in the last 1s is 0)",
            ),
            step_ms(4000, Some(2.0), 0, 1),
        ],
    );
}

// ---------------------------------------------------------------------------------------
// No data

#[test]
fn no_data_keeps_the_current_count() {
    let d = run(
        "no data",
        defaults(),
        vec![
            step(0, None, 3, 3).reason("no metrics in the last 60s; keeping 3"),
            step(10, None, 3, 3),
        ],
    );
    assert_eq!(d[0].recommendation, None);
    assert_eq!(d[0].avg_in_flight, None);
}

#[test]
fn first_tick_without_data_starts_the_clock() {
    // start is 0 s even though that tick had no data, so at 300 s the start period is over;
    // the only recommendation recorded is 300 s's 2.
    run(
        "clock starts",
        defaults(),
        vec![step(0, None, 4, 4), step(300, Some(1.0), 4, 2)],
    );
}

#[test]
fn ticks_without_data_record_nothing() {
    // Period 60s. 0 s records 10; 10..50 s record nothing; at 60 s the 10 is still within
    // [0, 60] → hold; at 70 s only 60 s's and 70 s's 5s are recent → 5.
    let p = Params {
        downscale_stabilization: Duration::from_secs(60),
        ..defaults()
    };
    let mut steps = vec![step(0, Some(10.0), 10, 10)];
    steps.extend((10..=50).step_by(10).map(|t| step(t, None, 10, 10)));
    steps.push(step(60, Some(1.0), 10, 10).reason("highest recommendation in the last 60s is 10"));
    steps.push(step(70, Some(1.0), 10, 5));
    run("no data records nothing", p, steps);
}

#[test]
fn unusable_average_counts_as_no_data() {
    run(
        "nan",
        defaults(),
        vec![
            step(0, Some(f64::NAN), 3, 3).reason("unusable in-flight average NaN; keeping 3"),
            step(10, Some(f64::INFINITY), 3, 3).reason("keeping 3"),
        ],
    );
}

// ---------------------------------------------------------------------------------------
// Parameters changing between ticks

#[test]
fn redeploy_with_a_shorter_downscale_period() {
    // Held by the 5m start period until a redeploy at 100 s shortens it to 60s: the start
    // period is over and [40, 100] holds only 2s → 2.
    let mut steps = every10(0, 90, 1.0, 4, 4);
    steps.push(step(100, Some(1.0), 4, 2).redeploy(Params {
        downscale_stabilization: Duration::from_secs(60),
        ..defaults()
    }));
    run("shorter period", defaults(), steps);
}

#[test]
fn redeploy_with_a_longer_downscale_period() {
    // Period 30s: the 8 from 0 s is forgotten by 40 s → 4. A redeploy at 50 s to 5m puts the
    // autoscaler back inside its start period (start is still 0 s) → hold.
    let p = Params {
        downscale_stabilization: Duration::from_secs(30),
        ..defaults()
    };
    run(
        "longer period",
        p,
        vec![
            step(0, Some(8.0), 8, 8),
            step(40, Some(2.0), 8, 4),
            step(50, Some(2.0), 4, 4)
                .redeploy(defaults())
                .reason("less than 5m"),
        ],
    );
}

#[test]
fn redeploy_raising_max_replicas() {
    let p = Params {
        max_replicas: 5,
        ..defaults()
    };
    run(
        "raise max",
        p,
        vec![
            step(0, Some(20.0), 5, 5).reason("capped at 5 by max_replicas"),
            step(10, Some(20.0), 5, 20).redeploy(defaults()),
        ],
    );
}

#[test]
fn redeploy_changing_the_target() {
    // 8 in flight: target 1 → 8; redeploy to target 4 → raw 2, down floor min(7, 4) = 4
    // (downscale stabilization off in both).
    let p = unstabilized();
    run(
        "target change",
        p.clone(),
        vec![
            step(0, Some(8.0), 8, 8),
            step(10, Some(8.0), 8, 4).redeploy(Params { target: 4.0, ..p }),
        ],
    );
}

// ---------------------------------------------------------------------------------------
// Numeric edge cases

#[test]
fn zero_current_does_not_underflow() {
    // cur 0: down floor min(-1, 0) = -1 (no floor); rec 0 == cur.
    let p = Params {
        min_replicas: 0,
        ..defaults()
    };
    run(
        "zero",
        p,
        vec![step(0, Some(0.0), 0, 0).reason("→ 0; keeping 0")],
    );
}

#[test]
fn target_division_ignores_rounding_error() {
    // 2.1 / 0.3 = 7 (7.000000000000001 in f64, whose literal ceiling is 8).
    let p = Params {
        target: 0.3,
        ..defaults()
    };
    run("division", p, vec![step(0, Some(2.1), 5, 7)]);
}

#[test]
fn huge_load_saturates_without_panicking() {
    run(
        "huge",
        unstabilized(),
        vec![
            step(0, Some(1e300), 1, 10),
            // up ceil max(11, 100) = 100, which is also max_replicas.
            step(10, Some(1e300), 10, 100).reason("limited to 100 by max_upscale_factor"),
            step(20, Some(1e300), u32::MAX, 100),
        ],
    );
    let p = Params {
        max_replicas: u32::MAX,
        max_upscale_factor: 1e300,
        ..defaults()
    };
    run("huge max", p, vec![step(0, Some(1e300), 2, u32::MAX)]);
}

#[test]
fn invalid_target_does_not_panic() {
    // x / 0 = +inf: limited by the upscale factor. 0 / 0 = NaN: read as no load.
    let p = Params {
        target: 0.0,
        ..unstabilized()
    };
    run(
        "target 0",
        p,
        vec![step(0, Some(5.0), 2, 20), step(10, Some(0.0), 2, 1)],
    );
}

#[test]
fn negative_average_counts_as_zero() {
    run("negative", unstabilized(), vec![step(0, Some(-3.0), 2, 1)]);
}

#[test]
fn start_is_the_first_tick() {
    let mut a = Autoscaler::new();
    assert_eq!(a.start(), None);
    a.tick(&defaults(), Duration::from_secs(42), None, 1);
    a.tick(&defaults(), Duration::from_secs(52), Some(1.0), 1);
    assert_eq!(a.start(), Some(Duration::from_secs(42)));
}
