//! Floating-point helpers for the algorithm, and duration formatting for reasons.
//!
//! The algorithm compares products like `current * (1 + upscale_tolerance)` with
//! `avg / target` and takes `ceil` of products like `current * max_downscale_factor`. In
//! binary floating point those products carry rounding error of a few units in the last place:
//! `3.0 * 1.1` is `3.3000000000000003`, `100.0 * 0.55` is `55.00000000000001` and `2.1 / 0.3`
//! is `7.000000000000001`. Taken literally (as Cortex's Go code does) a load exactly on a
//! tolerance boundary would count as inside the band, and a ceiling that should be 55 would be
//! 56. The helpers here treat values within a relative [`EPS`] of each other as equal, which
//! absorbs that error while leaving every value a user can meaningfully configure alone.

use std::time::Duration;

/// Relative difference below which two values are the same number. f64 rounding error is
/// ~1e-16 relative per operation and the algorithm does at most two; 1e-12 leaves a wide
/// margin and is far below any difference that matters for replica counts.
pub(crate) const EPS: f64 = 1e-12;

/// Whether `a` and `b` are equal up to rounding error. An infinity equals only itself (the
/// relative test would call every finite value "close" to it).
pub(crate) fn approx_eq(a: f64, b: f64) -> bool {
    a == b || (a.is_finite() && b.is_finite() && (a - b).abs() <= EPS * a.abs().max(b.abs()))
}

/// `a < b`, strictly, and not merely by rounding error.
pub(crate) fn definitely_lt(a: f64, b: f64) -> bool {
    a < b && !approx_eq(a, b)
}

/// `ceil(x)` as a count, where an `x` a rounding error above an integer counts as that
/// integer. Saturates at the `i64` range; NaN is 0 (Rust's `as` semantics), which only an
/// invalid target can produce.
pub(crate) fn ceil_count(x: f64) -> i64 {
    let rounded = x.round();
    if approx_eq(x, rounded) {
        rounded as i64
    } else {
        x.ceil() as i64
    }
}

/// A count back to `u32`, saturating (the algorithm works in `i64` so that `current - 1` at
/// `current == 0` is -1 rather than an underflow).
pub(crate) fn to_u32(x: i64) -> u32 {
    // The clamp bounds are constants in order, so it cannot panic.
    x.clamp(0, i64::from(u32::MAX)) as u32
}

/// A duration in one unit, as a config file would write it: the largest of `h`, `m`, `s`
/// that divides it into at least 2 (so the default window reads `60s` and the default
/// downscale stabilization period `5m`); sub-second parts in `Duration`'s own notation
/// (`1.5s`, `250ms`).
pub(crate) fn fmt_duration(d: Duration) -> String {
    if d.subsec_nanos() != 0 {
        return format!("{d:?}");
    }
    let secs = d.as_secs();
    for (unit, name) in [(3600, "h"), (60, "m")] {
        if secs.is_multiple_of(unit) && secs / unit >= 2 {
            return format!("{}{name}", secs / unit);
        }
    }
    format!("{secs}s")
}

/// An in-flight average or raw recommendation for a reason: two decimals, or scientific
/// notation for absurd values (which only a broken metric source or target produces) so the
/// line stays one line.
pub(crate) fn fmt_load(x: f64) -> String {
    if x.abs() < 1e9 {
        format!("{x:.2}")
    } else {
        format!("{x:.2e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceil_absorbs_rounding_error() {
        assert_eq!(100.0 * 0.55, 55.00000000000001);
        assert_eq!(ceil_count(100.0 * 0.55), 55);
        assert_eq!(2.1 / 0.3, 7.000000000000001);
        assert_eq!(ceil_count(2.1 / 0.3), 7);
        assert_eq!(ceil_count(7.01), 8);
        assert_eq!(ceil_count(6.999), 7);
        assert_eq!(ceil_count(0.0), 0);
        assert_eq!(ceil_count(-0.0), 0);
        assert_eq!(ceil_count(0.5), 1);
        assert_eq!(ceil_count(f64::INFINITY), i64::MAX);
        assert_eq!(ceil_count(f64::NAN), 0);
    }

    #[test]
    fn strict_comparison_ignores_rounding_error() {
        assert_eq!(3.0 * 1.1, 3.3000000000000003);
        assert!(!definitely_lt(3.3, 3.0 * 1.1));
        assert!(definitely_lt(3.29, 3.0 * 1.1));
        assert!(!definitely_lt(3.0, 3.0));
        assert!(!definitely_lt(0.0, 0.0));
        assert!(definitely_lt(0.0, 1e-300));
        assert!(definitely_lt(2.0, f64::INFINITY));
        assert!(!definitely_lt(f64::INFINITY, f64::INFINITY));
        assert!(!definitely_lt(f64::NAN, 1.0));
    }

    #[test]
    fn counts_saturate() {
        assert_eq!(to_u32(-1), 0);
        assert_eq!(to_u32(i64::MAX), u32::MAX);
        assert_eq!(to_u32(7), 7);
    }

    #[test]
    fn loads_stay_short() {
        assert_eq!(fmt_load(7.899), "7.90");
        assert_eq!(fmt_load(0.0), "0.00");
        assert_eq!(fmt_load(1e300), "1.00e300");
        assert_eq!(fmt_load(f64::INFINITY), "inf");
    }

    #[test]
    fn durations_read_like_the_config() {
        assert_eq!(fmt_duration(Duration::ZERO), "0s");
        assert_eq!(fmt_duration(Duration::from_secs(60)), "60s");
        assert_eq!(fmt_duration(Duration::from_secs(45)), "45s");
        assert_eq!(fmt_duration(Duration::from_secs(300)), "5m");
        assert_eq!(fmt_duration(Duration::from_secs(90)), "90s");
        assert_eq!(fmt_duration(Duration::from_secs(3600)), "60m");
        assert_eq!(fmt_duration(Duration::from_secs(7200)), "2h");
        assert_eq!(fmt_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1.5s");
    }
}
