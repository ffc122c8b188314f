//! The per-API autoscaler: one recommendation per tick, stabilized against the recent ones.
//!
//! This is Cortex's realtime autoscaler (`pkg/autoscaler/autoscaler.go`, `autoscaleFn`, in
//! cortexlabs/cortex; earlier `pkg/operator/resources/realtimeapi/autoscaler.go`), step for
//! step:
//!
//! ```text
//! raw = avg / target;  rec = ceil(raw)
//! cur*(1 - downscale_tolerance) < raw < cur  =>  rec = cur
//! cur < raw < cur*(1 + upscale_tolerance)    =>  rec = cur
//! rec = max(rec, min(cur - 1, ceil(cur * max_downscale_factor)))
//! rec = min(rec, max(cur + 1, ceil(cur * max_upscale_factor)))
//! rec = clamp(rec, min_replicas, max_replicas)          (max wins if they cross)
//! history += (now, rec); forget entries older than the longer stabilization period
//! req < cur: req = cur during the first downscale period after start,
//!            else max(req, min(max(rec in downscale period), cur))
//! req > cur: req = cur during the first upscale period after start,
//!            else min(req, max(min(rec in upscale period), cur))
//! ```
//!
//! Differences from the Go code, none of which changes a decision on exact arithmetic:
//! counts are `i64` internally, so `cur - 1` at `cur == 0` is -1 (no floor) instead of an
//! underflow; comparisons and ceilings ignore floating-point rounding error (see the `num`
//! module), so a load exactly on a tolerance boundary is outside the band as the strict
//! inequalities say; time comes from the caller; and a non-finite average counts as no data.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::time::Duration;

use crate::num::{ceil_count, definitely_lt, fmt_duration, fmt_load, to_u32};
use crate::params::Params;

/// The autoscaler of one API: when it first ticked, and its recent recommendations.
///
/// Create one per API when the daemon starts autoscaling it and call [`Autoscaler::tick`]
/// every tick. Keep it across redeploys with other settings: the history is only
/// `(time, recommendation)` pairs, so new [`Params`] apply from the next tick.
#[derive(Debug, Clone, Default)]
pub struct Autoscaler {
    /// The first tick's `now`, with or without data (as in Cortex, where `startTime` is set
    /// before the metrics are fetched).
    start: Option<Duration>,
    /// `(tick time, recommendation after clamps)`, oldest first. Ticks without data add
    /// nothing.
    history: VecDeque<(Duration, u32)>,
}

/// The outcome of one [`Autoscaler::tick`].
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The new desired count (== current when unchanged).
    pub replicas: u32,
    /// The in-flight average the tick was given.
    pub avg_in_flight: Option<f64>,
    /// The recommendation after tolerances, factor limits and min/max clamps, before
    /// stabilization; None when the tick had no data.
    pub recommendation: Option<u32>,
    /// One line for `gyrus get` saying which rule decided, e.g. "avg in-flight 7.90 over 60s
    /// at target 1 → 8", "no metrics in the last 60s; keeping 3", "within the upscale
    /// tolerance (raw 3.20 of 3); keeping 3", "holding 4: downscale stabilization (highest
    /// recommendation in the last 5m is 4); …".
    pub reason: String,
}

/// What the stabilization step did to the request, for the reason.
enum Stabilized {
    /// Held at the current count because the autoscaler started less than a period ago.
    Startup {
        up: bool,
        elapsed: Duration,
        period: Duration,
    },
    /// Limited by the highest (downscale) or lowest (upscale) recent recommendation.
    History {
        up: bool,
        bound: u32,
        period: Duration,
    },
}

impl Autoscaler {
    /// An autoscaler that has not ticked yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The `now` of the first tick, if there has been one.
    pub fn start(&self) -> Option<Duration> {
        self.start
    }

    /// One tick. `current` is the API's current desired replica count.
    ///
    /// `avg_in_flight` is the average total in-flight count over `params.window`
    /// ([`crate::MetricSeries::average`]); None (or a non-finite value) skips the tick, as
    /// Cortex does when metrics are not available: the count is kept and nothing is recorded.
    /// A negative average counts as 0.
    ///
    /// `now` should not go backwards; if it does, recommendations "from the future" count as
    /// made now, and the time since start as zero.
    pub fn tick(
        &mut self,
        params: &Params,
        now: Duration,
        avg_in_flight: Option<f64>,
        current: u32,
    ) -> Decision {
        let start = *self.start.get_or_insert(now);
        let window = fmt_duration(params.window);

        let avg = match avg_in_flight {
            Some(avg) if avg.is_finite() => avg.max(0.0),
            Some(avg) => {
                return Decision {
                    replicas: current,
                    avg_in_flight,
                    recommendation: None,
                    reason: format!("unusable in-flight average {avg}; keeping {current}"),
                }
            }
            None => {
                return Decision {
                    replicas: current,
                    avg_in_flight,
                    recommendation: None,
                    reason: format!("no metrics in the last {window}; keeping {current}"),
                }
            }
        };

        // Signed so that `cur - 1` at `cur == 0` is simply -1: no downscale floor, since
        // there is nothing to scale down. (0 is transient: scaled to zero with min_replicas 0,
        // or before the first replica is counted.)
        let cur = i64::from(current);
        let curf = current as f64;

        // An invalid target (0, negative, NaN; gyrus-spec rejects them) must not panic:
        // 0/0 and x/NaN are NaN, read as no load; x/0 is +inf, which saturates and is then
        // held back by the upscale factor and max_replicas.
        // `f64::max` returns the non-NaN operand, so this also maps NaN to 0.
        let raw = (avg / params.target).max(0.0);

        let ceil = ceil_count(raw);
        let mut rec = ceil;
        let mut trail = String::new();
        let in_down_band = definitely_lt(curf * (1.0 - params.downscale_tolerance), raw)
            && definitely_lt(raw, curf);
        let in_up_band =
            definitely_lt(curf, raw) && definitely_lt(raw, curf * (1.0 + params.upscale_tolerance));
        if in_down_band || in_up_band {
            rec = cur;
            let which = if in_down_band { "downscale" } else { "upscale" };
            let _ = write!(
                trail,
                "within the {which} tolerance (raw {} of {cur})",
                fmt_load(raw)
            );
        } else {
            let _ = write!(
                trail,
                "avg in-flight {} over {window} at target {} → {ceil}",
                fmt_load(avg),
                params.target
            );
        }

        // A step of 1 is always allowed, whatever the factor says.
        let factor_floor = ceil_count(curf * params.max_downscale_factor);
        let down_floor = (cur - 1).min(factor_floor);
        if rec < down_floor {
            rec = down_floor;
            let _ = write!(trail, "; limited to {rec} by max_downscale_factor");
            if factor_floor > down_floor {
                trail.push_str(" (a step of 1 is always allowed)");
            }
        }
        let factor_ceil = ceil_count(curf * params.max_upscale_factor);
        let up_ceil = (cur + 1).max(factor_ceil);
        if rec > up_ceil {
            rec = up_ceil;
            let _ = write!(trail, "; limited to {rec} by max_upscale_factor");
            if factor_ceil < up_ceil {
                trail.push_str(" (a step of 1 is always allowed)");
            }
        }
        // min first, then max, as Cortex does: if they cross, max_replicas wins.
        if rec < i64::from(params.min_replicas) {
            rec = i64::from(params.min_replicas);
            let _ = write!(trail, "; raised to {rec} by min_replicas");
        }
        if rec > i64::from(params.max_replicas) {
            rec = i64::from(params.max_replicas);
            let _ = write!(trail, "; capped at {rec} by max_replicas");
        }
        // rec is now in [0, max_replicas], so this conversion is exact.
        let rec = to_u32(rec);

        // Anything not looking at history happens before recording the recommendation,
        // anything looking at it after (Cortex's rule of thumb), so the current
        // recommendation is always part of both periods.
        self.history.push_back((now, rec));
        let keep = params
            .downscale_stabilization
            .max(params.upscale_stabilization);
        self.history.retain(|&(t, _)| now.saturating_sub(t) <= keep);

        let elapsed = now.saturating_sub(start);
        let mut req = rec;
        let mut stabilized = None;
        if req < current {
            let period = params.downscale_stabilization;
            if elapsed < period {
                req = current;
                stabilized = Some(Stabilized::Startup {
                    up: false,
                    elapsed,
                    period,
                });
            } else if let Some(highest) = self.recent(now, period).max() {
                // Capped at the current count: a high recommendation in the past is a reason
                // not to go down, never a reason to go up.
                let floor = highest.min(current);
                if req < floor {
                    req = floor;
                    stabilized = Some(Stabilized::History {
                        up: false,
                        bound: highest,
                        period,
                    });
                }
            }
        }
        // The downscale step never raises req above current, so at most one of the two
        // applies; kept as two ifs to mirror the algorithm.
        if req > current {
            let period = params.upscale_stabilization;
            if elapsed < period {
                req = current;
                stabilized = Some(Stabilized::Startup {
                    up: true,
                    elapsed,
                    period,
                });
            } else if let Some(lowest) = self.recent(now, period).min() {
                let ceiling = lowest.max(current);
                if req > ceiling {
                    req = ceiling;
                    stabilized = Some(Stabilized::History {
                        up: true,
                        bound: lowest,
                        period,
                    });
                }
            }
        }

        let reason = match stabilized {
            None if req == current => format!("{trail}; keeping {current}"),
            None => trail,
            Some(s) => {
                let head = if req == current {
                    format!("holding {current}")
                } else {
                    let dir = if req > current { "up" } else { "down" };
                    format!("scaling {dir} to {req}, not {rec}")
                };
                let why = match s {
                    Stabilized::Startup {
                        up,
                        elapsed,
                        period,
                    } => format!(
                        "{} stabilization (started {} ago, less than {})",
                        if up { "upscale" } else { "downscale" },
                        fmt_duration(Duration::from_secs(elapsed.as_secs())),
                        fmt_duration(period)
                    ),
                    Stabilized::History { up, bound, period } => format!(
                        "{} stabilization ({} recommendation in the last {} is {bound})",
                        if up { "upscale" } else { "downscale" },
                        if up { "lowest" } else { "highest" },
                        fmt_duration(period)
                    ),
                };
                format!("{head}: {why}; {trail}")
            }
        };

        Decision {
            replicas: req,
            avg_in_flight,
            recommendation: Some(rec),
            reason,
        }
    }

    /// The recommendations made within `period` before `now`, inclusive at both ends (Cortex:
    /// `time.Since(t) <= period`), so they include the one just recorded.
    fn recent(&self, now: Duration, period: Duration) -> impl Iterator<Item = u32> + '_ {
        self.history
            .iter()
            .filter(move |&&(t, _)| now.saturating_sub(t) <= period)
            .map(|&(_, rec)| rec)
    }
}
