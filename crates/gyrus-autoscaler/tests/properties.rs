//! Properties of `Autoscaler::tick` and `MetricSeries` over random inputs.

use std::collections::BTreeMap;
use std::time::Duration;

use gyrus_autoscaler::{Autoscaler, MetricSeries, Params};
use proptest::prelude::*;

/// Parameters in the ranges gyrus-spec accepts.
fn valid_params() -> impl Strategy<Value = Params> {
    (
        (0u32..20, 0u32..200),
        0.1f64..16.0,
        (0u64..600, 0u64..600),
        (0.0f64..=1.0, 1.01f64..20.0),
        (0.0f64..0.5, 0.0f64..0.5),
    )
        .prop_map(
            |((min, extra), target, (down, up), (mdf, muf), (dt, ut))| Params {
                min_replicas: min,
                max_replicas: min + extra,
                target,
                window: Duration::from_secs(60),
                downscale_stabilization: Duration::from_secs(down),
                upscale_stabilization: Duration::from_secs(up),
                max_downscale_factor: mdf,
                max_upscale_factor: muf,
                downscale_tolerance: dt,
                upscale_tolerance: ut,
            },
        )
}

/// Ticks: (seconds since the previous tick, average or None, current replicas).
fn ticks() -> impl Strategy<Value = Vec<(u64, Option<f64>, u32)>> {
    proptest::collection::vec(
        (
            0u64..120,
            proptest::option::weighted(0.9, 0.0f64..500.0),
            0u32..300,
        ),
        1..40,
    )
}

proptest! {
    /// Stabilization only ever moves the request back towards the current count: the result
    /// lies between current and the recommendation, and the recommendation within
    /// [min, max].
    #[test]
    fn result_lies_between_current_and_recommendation(p in valid_params(), ts in ticks()) {
        let mut a = Autoscaler::new();
        let mut now = Duration::ZERO;
        for (dt, avg, cur) in ts {
            now += Duration::from_secs(dt);
            let d = a.tick(&p, now, avg, cur);
            match d.recommendation {
                None => prop_assert_eq!(d.replicas, cur),
                Some(rec) => {
                    prop_assert!(rec >= p.min_replicas && rec <= p.max_replicas, "{d:?}");
                    prop_assert!(d.replicas >= cur.min(rec) && d.replicas <= cur.max(rec), "{d:?}");
                }
            }
            prop_assert!(!d.reason.is_empty());
        }
    }

    /// With both stabilization periods zero, the result is the recommendation.
    #[test]
    fn without_stabilization_the_result_is_the_recommendation(
        p in valid_params(), ts in ticks()
    ) {
        let p = Params {
            downscale_stabilization: Duration::ZERO,
            upscale_stabilization: Duration::ZERO,
            ..p
        };
        let mut a = Autoscaler::new();
        let mut now = Duration::ZERO;
        for (dt, avg, cur) in ts {
            // Strictly increasing times, so only the current recommendation is "recent".
            now += Duration::from_secs(dt + 1);
            let d = a.tick(&p, now, avg, cur);
            if let Some(rec) = d.recommendation {
                prop_assert_eq!(d.replicas, rec, "{:?}", d);
            }
        }
    }

    /// Within the tolerance-free, limit-free, clamp-free case the recommendation is exactly
    /// ceil(avg / target) computed in exact arithmetic on integers.
    #[test]
    fn recommendation_is_the_ceiling_of_load_over_target(
        in_flight in 0u32..10_000, target in 1u32..64, cur in 1u32..1000
    ) {
        let p = Params {
            min_replicas: 0,
            max_replicas: u32::MAX,
            target: f64::from(target),
            downscale_stabilization: Duration::ZERO,
            upscale_stabilization: Duration::ZERO,
            max_downscale_factor: 0.0,
            max_upscale_factor: 1e9,
            downscale_tolerance: 0.0,
            upscale_tolerance: 0.0,
            ..Params::default()
        };
        let d = Autoscaler::new().tick(&p, Duration::ZERO, Some(f64::from(in_flight)), cur);
        prop_assert_eq!(d.recommendation, Some(in_flight.div_ceil(target)));
    }

    /// Any parameters at all, including NaN, infinities and crossed bounds: no panic, and the
    /// result is a count between 0 and max(current, max_replicas).
    #[test]
    fn never_panics(
        min in any::<u32>(), max in any::<u32>(),
        floats in proptest::array::uniform5(any::<f64>()),
        periods in (any::<u64>(), any::<u64>(), any::<u64>()),
        ts in proptest::collection::vec(
            (any::<u64>(), proptest::option::of(any::<f64>()), any::<u32>()), 1..10
        ),
    ) {
        let p = Params {
            min_replicas: min,
            max_replicas: max,
            target: floats[0],
            window: Duration::from_secs(periods.0),
            downscale_stabilization: Duration::from_secs(periods.1),
            upscale_stabilization: Duration::from_secs(periods.2),
            max_downscale_factor: floats[1],
            max_upscale_factor: floats[2],
            downscale_tolerance: floats[3],
            upscale_tolerance: floats[4],
        };
        let mut a = Autoscaler::new();
        for (t, avg, cur) in ts {
            // Times in any order, including backwards.
            let d = a.tick(&p, Duration::from_nanos(t), avg, cur);
            prop_assert!(d.replicas <= cur.max(max));
        }
    }

    /// The average is the mean of per-second totals (last sample per replica per second) over
    /// the seconds in (now - window, now], checked against a direct model.
    #[test]
    fn average_matches_a_model(
        samples in proptest::collection::vec((0u64..30_000, 0usize..4, 0u32..50), 0..200),
        now in 0u64..35_000,
        window in 0u64..40_000,
    ) {
        let mut m = MetricSeries::new();
        // second → replica → (at, value)
        let mut model: BTreeMap<u64, BTreeMap<usize, (u64, u32)>> = BTreeMap::new();
        for &(at, r, v) in &samples {
            m.record(Duration::from_millis(at), &format!("r{r}"), v);
            let slot = model.entry(at / 1000).or_default().entry(r).or_insert((at, v));
            if at >= slot.0 {
                *slot = (at, v);
            }
        }
        let totals: Vec<u64> = model
            .iter()
            .filter(|&(&s, _)| {
                let t = s * 1000;
                t <= now && (now < window || t > now - window)
            })
            .map(|(_, reps)| reps.values().map(|&(_, v)| u64::from(v)).sum())
            .collect();
        let want = (!totals.is_empty())
            .then(|| totals.iter().sum::<u64>() as f64 / totals.len() as f64);
        let got = m.average(Duration::from_millis(now), Duration::from_millis(window));
        prop_assert_eq!(got, want);

        // Pruning with the window keeps that average.
        m.prune(Duration::from_millis(now), Duration::from_millis(window));
        prop_assert_eq!(
            m.average(Duration::from_millis(now), Duration::from_millis(window)),
            want
        );
    }
}
