//! What an API's replicas are given and how many there are: `compute`, `autoscaling` and
//! `update_strategy` of the current format, and the legacy `compute` section that holds both
//! resources and replica counts.

use std::time::Duration;

use crate::spec::{AutoscalingSpec, ComputeSpec, UpdateStrategySpec};
use crate::units::{CountOrPercent, Cpu, DurationSpec, Memory};
use crate::walker::{later, Ctx, FloatRange, IntRange, Later, Section};

pub(super) fn compute(ctx: &mut Ctx<'_>, s: &Section<'_>) -> ComputeSpec {
    let cpu = s
        .unit::<Cpu>(ctx, "cpu")
        .check(ctx, |c| c.millis() > 0, "must be greater than 0");
    let gpu = s.int(ctx, "gpu", IntRange::at_least(0));
    let mem = s
        .unit::<Memory>(ctx, "mem")
        .check(ctx, |m| m.bytes() > 0, "must be greater than 0");
    ComputeSpec {
        cpu: cpu.or(Cpu::default()),
        gpu: gpu.or(0),
        mem: mem.value(),
    }
}

/// `min_replicas <= max_replicas` and `min_replicas <= init_replicas <= max_replicas`
/// (`init_replicas` defaults to `min_replicas`). Returns (min, max, init).
fn replica_counts(ctx: &mut Ctx<'_>, s: &Section<'_>) -> (u32, u32, u32) {
    let defaults = AutoscalingSpec::default();
    let min = s.int(ctx, "min_replicas", IntRange::at_least(1));
    let max = s.int(ctx, "max_replicas", IntRange::at_least(1));
    let init = s.int(ctx, "init_replicas", IntRange::at_least(0));
    let (lo, hi) = (min.or(defaults.min_replicas), max.or(defaults.max_replicas));
    if min.is_invalid() || max.is_invalid() {
        return (lo, hi, init.or(lo));
    }
    if lo > hi {
        match later(&min, &max) {
            Later::First(m) => ctx.error(
                m.at,
                &m.path,
                format!("must be at most max_replicas ({hi}), found {}", m.found),
            ),
            Later::Second(m) => ctx.error(
                m.at,
                &m.path,
                format!("must be at least min_replicas ({lo}), found {}", m.found),
            ),
            Later::Neither => {}
        }
    } else if let Some(i) = init.set() {
        if i.value < lo || i.value > hi {
            ctx.error(
                i.at,
                &i.path,
                format!(
                    "must be between min_replicas ({lo}) and max_replicas ({hi}), found {}",
                    i.found
                ),
            );
        }
    }
    (lo, hi, init.or(lo))
}

pub(super) fn current_autoscaling(ctx: &mut Ctx<'_>, s: &Section<'_>) -> AutoscalingSpec {
    let d = AutoscalingSpec::default();
    let (min_replicas, max_replicas, init_replicas) = replica_counts(ctx, s);
    let workers = s.int(ctx, "workers_per_replica", IntRange::between(1, 64));
    let threads = s.int(ctx, "threads_per_worker", IntRange::between(1, 1024));
    let target = s.number(ctx, "target_replica_concurrency", FloatRange::Above(0.0));
    let max_concurrency = s.int(
        ctx,
        "max_replica_concurrency",
        IntRange::between(1, 100_000),
    );
    let window = s.unit::<DurationSpec>(ctx, "window").check(
        ctx,
        |w| w.as_duration() >= Duration::from_secs(1),
        "must be at least 1s",
    );
    let downscale_period = s.unit::<DurationSpec>(ctx, "downscale_stabilization_period");
    let upscale_period = s.unit::<DurationSpec>(ctx, "upscale_stabilization_period");
    let max_downscale = s.number(ctx, "max_downscale_factor", FloatRange::From(0.0, 1.0));
    let max_upscale = s.number(ctx, "max_upscale_factor", FloatRange::Above(1.0));
    let downscale_tolerance = s.number(ctx, "downscale_tolerance", FloatRange::AtLeast(0.0));
    let upscale_tolerance = s.number(ctx, "upscale_tolerance", FloatRange::AtLeast(0.0));

    let workers_per_replica = workers.or(d.workers_per_replica);
    let threads_per_worker = threads.or(d.threads_per_worker);
    let per_replica = f64::from(workers_per_replica) * f64::from(threads_per_worker);
    let target_replica_concurrency = target.or(per_replica);
    let max_replica_concurrency = max_concurrency.or(d.max_replica_concurrency);
    let comparable = !target.is_invalid()
        && !max_concurrency.is_invalid()
        && (target.set().is_some() || !(workers.is_invalid() || threads.is_invalid()));
    if comparable && target_replica_concurrency > f64::from(max_replica_concurrency) {
        match later(&target, &max_concurrency) {
            Later::First(t) => ctx.error(
                t.at,
                &t.path,
                format!(
                    "must be at most max_replica_concurrency ({max_replica_concurrency}), found {}",
                    t.found
                ),
            ),
            Later::Second(m) => {
                let target = match target.set() {
                    Some(t) => t.found.clone(),
                    None => format!("{per_replica}, workers_per_replica * threads_per_worker"),
                };
                ctx.error(
                    m.at,
                    &m.path,
                    format!(
                        "must be at least target_replica_concurrency ({target}), found {}",
                        m.found
                    ),
                );
            }
            Later::Neither => {
                if let Later::First(f) | Later::Second(f) = later(&workers, &threads) {
                    ctx.error(
                        f.at,
                        &f.path,
                        format!(
                            "workers_per_replica * threads_per_worker ({per_replica}) is the \
                             default target_replica_concurrency and must be at most \
                             max_replica_concurrency ({max_replica_concurrency})"
                        ),
                    );
                }
            }
        }
    }
    AutoscalingSpec {
        min_replicas,
        max_replicas,
        init_replicas,
        workers_per_replica,
        threads_per_worker,
        target_replica_concurrency,
        max_replica_concurrency,
        window: window.or(d.window),
        downscale_stabilization_period: downscale_period.or(d.downscale_stabilization_period),
        upscale_stabilization_period: upscale_period.or(d.upscale_stabilization_period),
        max_downscale_factor: max_downscale.or(d.max_downscale_factor),
        max_upscale_factor: max_upscale.or(d.max_upscale_factor),
        downscale_tolerance: downscale_tolerance.or(d.downscale_tolerance),
        upscale_tolerance: upscale_tolerance.or(d.upscale_tolerance),
        target_cpu_utilization: None,
    }
}

/// The legacy `compute` section: resources, replica counts and `target_cpu_utilization`.
pub(super) fn legacy_compute(ctx: &mut Ctx<'_>, s: &Section<'_>) -> (ComputeSpec, AutoscalingSpec) {
    let compute = compute(ctx, s);
    let (min_replicas, max_replicas, init_replicas) = replica_counts(ctx, s);
    let utilization = s.int(ctx, "target_cpu_utilization", IntRange::between(1, 100));
    if let Some(u) = utilization.set() {
        ctx.warn(
            u.at,
            &u.path,
            "kept but has no effect: gyrus scales on in-flight requests, not on CPU utilization",
        );
    }
    let autoscaling = AutoscalingSpec {
        min_replicas,
        max_replicas,
        init_replicas,
        target_cpu_utilization: Some(utilization.or(80)),
        ..AutoscalingSpec::default()
    };
    (compute, autoscaling)
}

pub(super) fn update_strategy(ctx: &mut Ctx<'_>, s: &Section<'_>) -> UpdateStrategySpec {
    let d = UpdateStrategySpec::default();
    let surge = s.unit::<CountOrPercent>(ctx, "max_surge");
    let unavailable = s.unit::<CountOrPercent>(ctx, "max_unavailable");
    let spec = UpdateStrategySpec {
        max_surge: surge.or(d.max_surge),
        max_unavailable: unavailable.or(d.max_unavailable),
    };
    if spec.max_surge.is_zero() && spec.max_unavailable.is_zero() {
        let message =
            "max_surge and max_unavailable must not both be 0 (no replica could be replaced)";
        match later(&surge, &unavailable) {
            Later::First(f) => ctx.error(f.at, &f.path, message),
            Later::Second(f) => ctx.error(f.at, &f.path, message),
            Later::Neither => {}
        }
    }
    spec
}
