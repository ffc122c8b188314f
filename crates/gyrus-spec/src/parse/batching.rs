//! `batching`, of a predictor and of each entry of `models`: adaptive batching of a model
//! engine's requests (ONNX and TensorFlow models with a dynamic batch axis).

use crate::spec::BatchingSpec;
use crate::units::DurationSpec;
use crate::walker::{Ctx, Got, IntRange, Schema, Section};

/// The `batching` mapping of `s`, whose keys are those of `section` (`predictor.batching`,
/// `predictor.models[].batching`, ...). Omitted keys take [`BatchingSpec::default`]'s values.
pub(super) fn batching(
    ctx: &mut Ctx<'_>,
    s: &Section<'_>,
    section: &str,
    schema: &Schema,
) -> Got<BatchingSpec> {
    let Some(f) = s.get("batching") else {
        return Got::Absent;
    };
    let Some(sec) = Section::open(ctx, f.node, f.path.clone(), section, schema) else {
        return Got::Invalid;
    };
    let errors_before = ctx.errors.len();
    let d = BatchingSpec::default();
    let enabled = sec.boolean(ctx, "enabled");
    let max_batch_size = sec.int(ctx, "max_batch_size", IntRange::between(1, 65536));
    let max_latency = sec.unit::<DurationSpec>(ctx, "max_latency").check(
        ctx,
        |d| !d.as_duration().is_zero(),
        "must be longer than 0, like 100ms (leave it out for no deadline)",
    );
    let max_queue_delay = sec.unit::<DurationSpec>(ctx, "max_queue_delay");
    let max_queue_size = sec.int(ctx, "max_queue_size", IntRange::between(1, 1_000_000));
    if let (Some(delay), Some(latency)) = (max_queue_delay.set(), max_latency.set()) {
        if delay.value >= latency.value {
            ctx.error(
                delay.at,
                &delay.path,
                format!(
                    "must be shorter than max_latency ({}): a request waiting that long for company would always miss its deadline",
                    latency.value
                ),
            );
        }
    }
    if ctx.errors.len() > errors_before {
        return Got::Invalid;
    }
    Got::Set(f.spanned(BatchingSpec {
        enabled: enabled.or(d.enabled),
        max_batch_size: max_batch_size.or(d.max_batch_size),
        max_latency: max_latency.value(),
        max_queue_delay: max_queue_delay.or(d.max_queue_delay),
        max_queue_size: max_queue_size.or(d.max_queue_size),
    }))
}
