//! The autoscaling parameters of one API, in the units the algorithm works in.

use std::time::Duration;

use gyrus_spec::AutoscalingSpec;

/// What [`crate::Autoscaler::tick`] scales by. Built from the API's spec with
/// [`Params::from_spec`]; the fields are public so that tests (and a redeploy with other
/// settings) can change them between ticks.
///
/// gyrus-spec validates these (target > 0, factors and tolerances in range, min ≤ max), but
/// the algorithm does not rely on it to stay panic-free: out-of-range values give a
/// well-defined, if not useful, answer (see [`crate::Autoscaler::tick`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// The lower bound on the recommendation.
    pub min_replicas: u32,
    /// The upper bound on the recommendation; wins over `min_replicas` if they cross.
    pub max_replicas: u32,
    /// In-flight requests per replica to aim for (`target_replica_concurrency`).
    pub target: f64,
    /// How far back the in-flight average looks. Used for the reason text here; the caller
    /// averages with it ([`crate::MetricSeries::average`]).
    pub window: Duration,
    /// Never scale below the highest recommendation made during this period.
    pub downscale_stabilization: Duration,
    /// Never scale above the lowest recommendation made during this period.
    pub upscale_stabilization: Duration,
    /// One tick may not go below `ceil(current * max_downscale_factor)` (but may always go
    /// down by one).
    pub max_downscale_factor: f64,
    /// One tick may not go above `ceil(current * max_upscale_factor)` (but may always go up by
    /// one).
    pub max_upscale_factor: f64,
    /// Keep the current count while the raw recommendation is above
    /// `current * (1 - downscale_tolerance)` and below `current`.
    pub downscale_tolerance: f64,
    /// Keep the current count while the raw recommendation is above `current` and below
    /// `current * (1 + upscale_tolerance)`.
    pub upscale_tolerance: f64,
}

impl Params {
    /// The parameters of an API's `autoscaling` section. `target_replica_concurrency` is
    /// already resolved by gyrus-spec (it defaults to `workers_per_replica *
    /// threads_per_worker`), so it is taken as is.
    pub fn from_spec(a: &AutoscalingSpec) -> Params {
        Params {
            min_replicas: a.min_replicas,
            max_replicas: a.max_replicas,
            target: a.target_replica_concurrency,
            window: a.window.as_duration(),
            downscale_stabilization: a.downscale_stabilization_period.as_duration(),
            upscale_stabilization: a.upscale_stabilization_period.as_duration(),
            max_downscale_factor: a.max_downscale_factor,
            max_upscale_factor: a.max_upscale_factor,
            downscale_tolerance: a.downscale_tolerance,
            upscale_tolerance: a.upscale_tolerance,
        }
    }
}

impl Default for Params {
    /// The parameters of the default `autoscaling` section (seed 000): target 1, window 60s,
    /// downscale stabilization 5m, upscale stabilization 0s, factors 0.5 and 10, tolerances
    /// 0.1, replicas 1 to 100.
    fn default() -> Self {
        Params::from_spec(&AutoscalingSpec::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_spec() {
        let p = Params::default();
        assert_eq!(p.min_replicas, 1);
        assert_eq!(p.max_replicas, 100);
        assert_eq!(p.target, 1.0);
        assert_eq!(p.window, Duration::from_secs(60));
        assert_eq!(p.downscale_stabilization, Duration::from_secs(300));
        assert_eq!(p.upscale_stabilization, Duration::ZERO);
        assert_eq!(p.max_downscale_factor, 0.5);
        assert_eq!(p.max_upscale_factor, 10.0);
        assert_eq!(p.downscale_tolerance, 0.1);
        assert_eq!(p.upscale_tolerance, 0.1);
    }

    #[test]
    fn from_spec_takes_the_resolved_target() {
        let spec = AutoscalingSpec {
            workers_per_replica: 2,
            threads_per_worker: 3,
            target_replica_concurrency: 6.0,
            min_replicas: 2,
            max_replicas: 7,
            ..AutoscalingSpec::default()
        };
        let p = Params::from_spec(&spec);
        assert_eq!(p.target, 6.0);
        assert_eq!((p.min_replicas, p.max_replicas), (2, 7));
    }
}
