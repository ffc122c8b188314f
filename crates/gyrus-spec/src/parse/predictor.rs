//! The `predictor` section of both formats: its type, the Python file and path, the free-form
//! `config` / `metadata`, `env`, the `s3` options, `signature_key` and Cortex's
//! `server_side_batching`; models and ONNX options are read by their own modules.

use std::collections::BTreeMap;

use marked_yaml::Node;

use crate::spec::{PredictorSpec, PredictorType, S3Options, ServerSideBatching};
use crate::units::DurationSpec;
use crate::validate::{self, Need};
use crate::walker::{Ctx, Got, IntRange, Schema, Section};
use crate::yaml::{classify, describe, node_pos, quote, span_pos, to_json, Scalar};

use super::models::{model_location, models, signature_key};
use super::onnx::{onnx_options, OnnxDraft};
use super::schema::{S3_SECTION, SERVER_SIDE_BATCHING};
use super::verdict;

/// A current-format predictor, and its ONNX options for an ONNX predictor (resolved once
/// `compute.cpu` is known).
pub(super) fn predictor_current(
    ctx: &mut Ctx<'_>,
    s: &Section<'_>,
    schema: &Schema,
) -> Option<(PredictorSpec, Option<OnnxDraft>)> {
    let kind = s.choice(
        ctx,
        "type",
        "predictor type",
        &[
            ("python", PredictorType::Python),
            ("onnx", PredictorType::Onnx),
            ("tensorflow", PredictorType::Tensorflow),
        ],
    );
    if matches!(kind, Got::Absent) {
        s.missing(ctx, "type", "required: one of python, onnx, tensorflow");
    }
    let path = predictor_path(ctx, s);
    let (model, models) = models(ctx, s, schema);
    let config = config(ctx, s, "config");
    let python_path = python_path(ctx, s);
    let env = env(ctx, s);
    let onnx = onnx_options(ctx, s, schema, kind.value());
    let s3 = s3_options(ctx, s, schema);
    let signature = signature_key(ctx, s);
    let batching = server_side_batching(ctx, s, schema);
    let engine_batching = super::batching::batching(ctx, s, "predictor.batching", schema);
    let preinstalled = s.boolean(ctx, "preinstalled_packages");
    let kind = kind.value()?;
    match kind {
        PredictorType::Python if matches!(path, Got::Absent) => {
            s.missing(ctx, "path", "required when predictor.type is python");
        }
        PredictorType::Onnx | PredictorType::Tensorflow
            if matches!((&model, &models), (Got::Absent, Got::Absent)) =>
        {
            s.missing(
                ctx,
                "model",
                &format!("required when predictor.type is {kind} (set model or models)"),
            );
        }
        _ => {}
    }
    if kind != PredictorType::Tensorflow {
        let in_models = models.set().filter(|m| {
            m.value.signature_key.is_some()
                || m.value.paths.iter().any(|p| p.signature_key.is_some())
        });
        if let Some(k) = signature.set() {
            ctx.error(
                k.at,
                &k.path,
                format!("applies to tensorflow predictors only; this predictor is {kind}"),
            );
        } else if let Some(m) = in_models {
            ctx.error(
                m.at,
                &m.path,
                format!(
                    "signature_key applies to tensorflow predictors only; this predictor is {kind}"
                ),
            );
        }
    }
    let entry_batching = models
        .set()
        .filter(|m| m.value.paths.iter().any(|p| p.batching.is_some()));
    if kind == PredictorType::Python {
        if let Some(b) = engine_batching.set() {
            ctx.error(
                b.at,
                &b.path,
                "applies to onnx and tensorflow models; a python predictor batches with server_side_batching",
            );
        } else if let Some(m) = entry_batching {
            ctx.error(
                m.at,
                &m.path,
                "batching applies to onnx and tensorflow models; a python predictor batches with server_side_batching",
            );
        }
    }
    if let Some(b) = batching.set() {
        if kind == PredictorType::Onnx {
            ctx.error(
                b.at,
                &b.path,
                "applies to python and tensorflow predictors, as in Cortex",
            );
        }
    }
    let spec = PredictorSpec {
        kind,
        path: path.value(),
        model: model.value(),
        models: models.value(),
        config,
        python_path: python_path.value(),
        env,
        onnx: None,
        s3,
        signature_key: signature.value(),
        server_side_batching: batching.value(),
        batching: engine_batching.value(),
        preinstalled_packages: preinstalled.value().unwrap_or(true),
    };
    Some((spec, onnx))
}

/// `server_side_batching: {max_batch_size, batch_interval}`, both required.
fn server_side_batching(
    ctx: &mut Ctx<'_>,
    s: &Section<'_>,
    schema: &Schema,
) -> Got<ServerSideBatching> {
    let Some(f) = s.get("server_side_batching") else {
        return Got::Absent;
    };
    let Some(sec) = s.child(ctx, "server_side_batching", SERVER_SIDE_BATCHING.0, schema) else {
        return Got::Invalid;
    };
    let max = sec.int(ctx, "max_batch_size", IntRange::between(1, 65536));
    let interval = sec.unit::<DurationSpec>(ctx, "batch_interval");
    let interval = interval.check(
        ctx,
        |d| !d.as_duration().is_zero(),
        "must be longer than 0, like 100ms",
    );
    if matches!(max, Got::Absent) {
        sec.missing(
            ctx,
            "max_batch_size",
            "required: the most requests in one batch",
        );
    }
    if matches!(interval, Got::Absent) {
        sec.missing(
            ctx,
            "batch_interval",
            "required: how long a batch waits to fill, like 100ms",
        );
    }
    match (max.value(), interval.value()) {
        (Some(max_batch_size), Some(batch_interval)) => Got::Set(f.spanned(ServerSideBatching {
            max_batch_size,
            batch_interval,
        })),
        _ => Got::Invalid,
    }
}

/// `s3: {endpoint_url, region}` for `s3://` models on S3-compatible servers.
fn s3_options(ctx: &mut Ctx<'_>, s: &Section<'_>, schema: &Schema) -> Option<S3Options> {
    s.get("s3")?;
    let sec = s.child(ctx, "s3", S3_SECTION.0, schema)?;
    let endpoint = sec.string(ctx, "endpoint_url");
    let endpoint = verdict(ctx, endpoint, |u| {
        let rest = u
            .strip_prefix("http://")
            .or_else(|| u.strip_prefix("https://"));
        match rest {
            Some(host) if !host.is_empty() && !host.starts_with('/') => Ok(()),
            _ => Err(format!(
                "expected an http:// or https:// URL like http://127.0.0.1:9000, found {}",
                quote(u)
            )),
        }
    });
    let region = sec.string(ctx, "region");
    let region = verdict(ctx, region, |r| {
        if r.is_empty() || r.chars().any(|c| c.is_whitespace()) {
            Err(format!(
                "expected a region like us-east-1, found {}",
                quote(r)
            ))
        } else {
            Ok(())
        }
    });
    Some(S3Options {
        endpoint_url: endpoint.value(),
        region: region.value(),
    })
}

pub(super) fn predictor_legacy(ctx: &mut Ctx<'_>, s: &Section<'_>) -> Option<PredictorSpec> {
    let path = predictor_path(ctx, s);
    if matches!(path, Got::Absent) {
        s.missing(ctx, "path", "required");
    }
    let model = s.string(ctx, "model");
    let model = model_location(ctx, model, Need::Model);
    let python_path = python_path(ctx, s);
    let config = config(ctx, s, "metadata");
    Some(PredictorSpec {
        kind: PredictorType::Python,
        path: path.value(),
        model: model.value(),
        models: None,
        config,
        python_path: python_path.value(),
        env: BTreeMap::new(),
        onnx: None,
        s3: None,
        signature_key: None,
        server_side_batching: None,
        batching: None,
        preinstalled_packages: true,
    })
}

fn predictor_path(ctx: &mut Ctx<'_>, s: &Section<'_>) -> Got<String> {
    let project_dir = ctx.project_dir;
    let path = s.string(ctx, "path");
    verdict(ctx, path, |p| {
        if !p.ends_with(".py") {
            return Err(format!(
                "must be a Python file ending in .py, found {}",
                quote(p)
            ));
        }
        validate::project_path(p, Need::File, project_dir)
    })
}

fn python_path(ctx: &mut Ctx<'_>, s: &Section<'_>) -> Got<String> {
    let project_dir = ctx.project_dir;
    let path = s.string(ctx, "python_path");
    verdict(ctx, path, |p| {
        validate::project_path(p, Need::Dir, project_dir)
    })
}

/// A free-form mapping passed to the predictor (`config`, or `metadata` in the legacy format).
fn config(
    ctx: &mut Ctx<'_>,
    s: &Section<'_>,
    key: &str,
) -> serde_json::Map<String, serde_json::Value> {
    let Some(f) = s.get(key) else {
        return serde_json::Map::new();
    };
    match (f.node, to_json(f.node)) {
        (Node::Mapping(_), serde_json::Value::Object(map)) => map,
        _ => {
            f.wrong::<()>(ctx, "a mapping");
            serde_json::Map::new()
        }
    }
}

/// `env`: variable names to values; numbers and booleans become strings.
fn env(ctx: &mut Ctx<'_>, s: &Section<'_>) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let Some(f) = s.get("env") else {
        return env;
    };
    let Node::Mapping(map) = f.node else {
        f.wrong::<()>(ctx, "a mapping of variable names to values");
        return env;
    };
    for (key, value) in map.iter() {
        let path = format!("{}.{}", f.path, key.as_str());
        if let Err(message) = validate::env_name(key.as_str()) {
            ctx.error(span_pos(key.span()), &path, message);
            continue;
        }
        match value {
            Node::Scalar(v) if classify(v) == Scalar::Null => {
                ctx.error(span_pos(key.span()), &path, "expected a string, found null")
            }
            Node::Scalar(v) => {
                env.insert(key.as_str().to_string(), v.as_str().to_string());
            }
            _ => ctx.error(
                node_pos(value),
                &path,
                format!("expected a string, found {}", describe(value)),
            ),
        }
    }
    env
}
