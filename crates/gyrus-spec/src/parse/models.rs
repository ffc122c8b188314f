//! Where a predictor's models are: `model`, or `models` as a list or as `paths` / `dir`, with
//! unique model names and locations that exist (or are URLs).

use std::collections::HashMap;

use marked_yaml::types::MarkedSequenceNode;
use marked_yaml::Node;

use crate::spec::{ModelsSpec, NamedModel};
use crate::validate::{self, Need};
use crate::walker::{later, Ctx, Got, Later, Schema, Section};
use crate::yaml::{span_pos, Pos};

use super::verdict;

pub(super) fn model_location(ctx: &mut Ctx<'_>, got: Got<String>, need: Need) -> Got<String> {
    let project_dir = ctx.project_dir;
    verdict(ctx, got, |m| validate::model_location(m, need, project_dir))
}

/// `model` and `models` (mutually exclusive).
pub(super) fn models(
    ctx: &mut Ctx<'_>,
    s: &Section<'_>,
    schema: &Schema,
) -> (Got<String>, Got<ModelsSpec>) {
    let model = s.string(ctx, "model");
    let model = model_location(ctx, model, Need::Model);
    let models = match s.get("models") {
        None => Got::Absent,
        Some(f) => match f.node {
            Node::Sequence(list) => {
                match model_entries(ctx, list, &f.path, "predictor.models[]", schema) {
                    Some(paths) => Got::Set(f.spanned(ModelsSpec {
                        paths,
                        dir: None,
                        signature_key: None,
                    })),
                    None => Got::Invalid,
                }
            }
            Node::Mapping(_) => {
                match Section::open(ctx, f.node, f.path.clone(), "predictor.models", schema) {
                    Some(sec) => match models_mapping(ctx, &sec, schema) {
                        Some(spec) => Got::Set(f.spanned(spec)),
                        None => Got::Invalid,
                    },
                    None => Got::Invalid,
                }
            }
            _ => f.wrong(
                ctx,
                "a list of {name, model} entries or a mapping with paths or dir",
            ),
        },
    };
    if let (Got::Set(_), Got::Set(_)) = (&model, &models) {
        let message = "model and models are mutually exclusive: set only one of them";
        match later(&model, &models) {
            Later::First(m) => ctx.error(m.at, &m.path, message),
            Later::Second(m) => ctx.error(m.at, &m.path, message),
            Later::Neither => {}
        }
        return (Got::Invalid, Got::Invalid);
    }
    (model, models)
}

/// `models: {paths: [...], dir: ...}`: exactly one of them.
fn models_mapping(ctx: &mut Ctx<'_>, sec: &Section<'_>, schema: &Schema) -> Option<ModelsSpec> {
    let paths = match sec.get("paths") {
        None => Got::Absent,
        Some(f) => match f.node {
            Node::Sequence(list) => {
                match model_entries(ctx, list, &f.path, "predictor.models.paths[]", schema) {
                    Some(paths) => Got::Set(f.spanned(paths)),
                    None => Got::Invalid,
                }
            }
            _ => f.wrong(ctx, "a list of {name, model_path} entries"),
        },
    };
    let dir = sec.string(ctx, "dir");
    let dir = model_location(ctx, dir, Need::Dir);
    let signature_key = signature_key(ctx, sec);
    match (&paths, &dir) {
        (Got::Absent, Got::Absent) => {
            ctx.error(sec.at, &sec.path, "expected paths or dir");
            None
        }
        (Got::Set(_), Got::Set(_)) => {
            let message = "paths and dir are mutually exclusive: set only one of them";
            match later(&paths, &dir) {
                Later::First(m) => ctx.error(m.at, &m.path, message),
                Later::Second(m) => ctx.error(m.at, &m.path, message),
                Later::Neither => {}
            }
            None
        }
        (Got::Invalid, _) | (_, Got::Invalid) => None,
        _ => Some(ModelsSpec {
            paths: paths.value().unwrap_or_default(),
            dir: dir.value(),
            signature_key: signature_key.value(),
        }),
    }
}

/// A list of `{name, model | model_path}` entries with unique names.
fn model_entries(
    ctx: &mut Ctx<'_>,
    list: &MarkedSequenceNode,
    path: &str,
    section: &str,
    schema: &Schema,
) -> Option<Vec<NamedModel>> {
    if list.is_empty() {
        ctx.error(span_pos(list.span()), path, "must list at least one model");
        return None;
    }
    let errors_before = ctx.errors.len();
    let mut seen: HashMap<String, Pos> = HashMap::new();
    let mut entries = Vec::new();
    for (i, node) in list.iter().enumerate() {
        let Some(sec) = Section::open(ctx, node, format!("{path}[{i}]"), section, schema) else {
            continue;
        };
        let name = match sec.string(ctx, "name") {
            Got::Absent => {
                sec.missing(ctx, "name", "required");
                None
            }
            Got::Invalid => None,
            Got::Set(n) => {
                if let Err(message) = validate::model_name(&n.value) {
                    ctx.error(n.at, &n.path, message);
                } else if let Some(first) = seen.get(&n.value) {
                    ctx.error(
                        n.at,
                        &n.path,
                        format!(
                            "duplicate model name {} (first defined at line {})",
                            n.found, first.line
                        ),
                    );
                } else {
                    seen.insert(n.value.clone(), n.at);
                }
                Some(n.value)
            }
        };
        let model = sec.string(ctx, "model");
        let alias = sec.string(ctx, "model_path");
        let model = match (model, alias) {
            (Got::Set(a), Got::Set(b)) => {
                let later = if a.at > b.at { a } else { b };
                ctx.error(
                    later.at,
                    &later.path,
                    "model and model_path are the same field: set only one of them",
                );
                Got::Invalid
            }
            (Got::Absent, Got::Absent) => {
                sec.missing(
                    ctx,
                    "model",
                    "required: the model's path or URL (model or model_path)",
                );
                Got::Invalid
            }
            (Got::Invalid, _) | (_, Got::Invalid) => Got::Invalid,
            (Got::Set(m), Got::Absent) | (Got::Absent, Got::Set(m)) => Got::Set(m),
        };
        let model = model_location(ctx, model, Need::Model);
        let signature_key = signature_key(ctx, &sec);
        let batching = super::batching::batching(ctx, &sec, &format!("{section}.batching"), schema);
        if let (Some(name), Some(model)) = (name, model.value()) {
            entries.push(NamedModel {
                name,
                model,
                signature_key: signature_key.value(),
                batching: batching.value(),
            });
        }
    }
    (ctx.errors.len() == errors_before).then_some(entries)
}

/// `signature_key`: a SavedModel signature's name (checked against the model at deploy).
pub(super) fn signature_key(ctx: &mut Ctx<'_>, s: &Section<'_>) -> Got<String> {
    let key = s.string(ctx, "signature_key");
    verdict(ctx, key, |k| {
        if k.trim().is_empty() {
            Err("must name a signature of the SavedModel, like serving_default".to_string())
        } else {
            Ok(())
        }
    })
}
