//! `gyrus-autoscaler`: the decision of how many replicas an API should have, and nothing else.
//!
//! It is Cortex's realtime autoscaler: each replica samples its in-flight request count every
//! second, the daemon records the samples in a [`MetricSeries`], and every tick (10 s in the
//! daemon) it asks the API's [`Autoscaler`] for a [`Decision`] from the average over the
//! autoscaling `window`, the [`Params`] resolved from the API's
//! [`gyrus_spec::AutoscalingSpec`], and the current desired replica count.
//!
//! The crate is pure: no I/O, no clock of its own (time is a [`std::time::Duration`] since any
//! fixed origin, passed in by the caller; the daemon uses its start, tests a fake clock), no
//! threads, no logging. Applying a decision (changing the desired count, logging the reason)
//! is the daemon's job.
//!
//! Modules: `params` ([`Params`]), `metrics` ([`MetricSeries`]), `scaler` ([`Autoscaler`],
//! [`Decision`]) and `num` (the tolerant floating-point comparisons the algorithm needs).

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod metrics;
mod num;
mod params;
mod scaler;

pub use metrics::MetricSeries;
pub use params::Params;
pub use scaler::{Autoscaler, Decision};
