//! Reading a parsed config file into [`ApiSpec`]s: the three formats (current realtime/batch
//! APIs of seeds 000/002/003, and the legacy `kind: api` / `kind: deployment` items of seed 001),
//! their defaults, per-field validation, cross-field rules, and the file-wide checks (duplicate
//! API names and endpoints).
//!
//! This module owns the file and its items: which format each item is, its name and endpoint,
//! the small `tracker` section, and the checks across items. The other sections of an item are
//! read in the submodules: `schema` (the keys each format allows), `predictor`, `onnx` (the
//! ONNX Runtime options), `models` and `replicas` (compute, autoscaling, update_strategy).

mod batching;
mod models;
mod onnx;
mod predictor;
mod replicas;
mod schema;
mod splitter;

use std::collections::HashMap;

use marked_yaml::Node;

use crate::spec::{
    ApiKind, ApiSpec, AutoscalingSpec, ComputeSpec, ConfigFormat, ModelType, SplitterSpec,
    TrackerSpec, UpdateStrategySpec,
};
use crate::validate;
use crate::walker::{Ctx, Got, Section, Spanned};
use crate::yaml::{classify, describe, node_pos, quote, Pos, Scalar};

use self::predictor::{predictor_current, predictor_legacy};
use self::replicas::{compute, current_autoscaling, legacy_compute, update_strategy};
use self::schema::{BATCH, DEPLOYMENT, LEGACY, REALTIME};

/// What a top-level item of the file is, from its `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ItemKind {
    Current(ApiKind),
    Legacy,
    Deployment,
    /// Cortex's `kind: TrafficSplitter`.
    Splitter,
}

/// What one API item yielded: its spec when it had no errors, and what the file-wide checks
/// need.
struct ApiItem {
    spec: Option<ApiSpec>,
    name: Option<Spanned<String>>,
    /// The endpoint, where it is written (the name's position for a default), and whether it
    /// was written.
    endpoint: Option<(String, Pos, bool)>,
    /// A BatchAPI (which a splitter cannot name).
    batch: bool,
    /// A traffic splitter: its spec when valid, and the APIs it names.
    splitter: bool,
    split: Option<SplitterSpec>,
    targets: Vec<Spanned<String>>,
}

impl ApiItem {
    fn empty() -> Self {
        ApiItem {
            spec: None,
            name: None,
            endpoint: None,
            batch: false,
            splitter: false,
            split: None,
            targets: Vec::new(),
        }
    }
}

/// Reads every API and traffic splitter of the file. Errors and warnings go to `ctx`; the
/// returned specs are meaningful only when no error was reported.
pub(crate) fn apis(ctx: &mut Ctx<'_>, root: &Node) -> (Vec<ApiSpec>, Vec<SplitterSpec>) {
    let items: Vec<&Node> = match root {
        Node::Sequence(list) => list
            .iter()
            .filter(|item| {
                let is_mapping = matches!(item, Node::Mapping(_));
                if !is_mapping {
                    ctx.error(
                        node_pos(item),
                        "",
                        format!(
                            "expected an API (a mapping with name, predictor, ...), found {}",
                            describe(item)
                        ),
                    );
                }
                is_mapping
            })
            .collect(),
        Node::Mapping(_) => vec![root],
        Node::Scalar(_) => {
            ctx.error(
                node_pos(root),
                "",
                format!("expected a list of APIs, found {}", describe(root)),
            );
            return (Vec::new(), Vec::new());
        }
    };
    let kinds: Vec<(Option<ItemKind>, &Node)> = items
        .into_iter()
        .map(|item| (item_kind(ctx, item), item))
        .collect();

    let mut deployment: Option<Spanned<String>> = None;
    for (_, item) in kinds
        .iter()
        .filter(|(k, _)| *k == Some(ItemKind::Deployment))
    {
        ctx.api = None;
        let name = deployment_item(ctx, item);
        match (&deployment, name) {
            (Some(first), _) => ctx.error(
                node_pos(item),
                "kind",
                format!(
                    "only one kind: deployment item is allowed (the first is at line {})",
                    first.at.line
                ),
            ),
            (None, name) => deployment = name,
        }
    }
    let deployment_name = deployment.map(|d| d.value);

    let mut parsed = Vec::new();
    for (kind, item) in &kinds {
        let kind = match kind {
            Some(ItemKind::Deployment) | None => continue,
            Some(kind) => *kind,
        };
        ctx.api = api_name_of(item);
        parsed.push(match kind {
            ItemKind::Splitter => splitter::splitter_item(ctx, item),
            kind => api_item(ctx, item, kind, deployment_name.as_deref()),
        });
    }
    ctx.api = None;
    if parsed.is_empty() && ctx.errors.is_empty() {
        ctx.error(
            node_pos(root),
            "",
            "no APIs defined: expected a list of APIs",
        );
    }
    duplicates(ctx, &parsed);
    split_targets(ctx, &parsed);
    splitters_under_protocol_paths(ctx, &parsed);
    let mut apis = Vec::new();
    let mut splitters = Vec::new();
    for item in parsed {
        apis.extend(item.spec);
        splitters.extend(item.split);
    }
    (apis, splitters)
}

/// A splitter's endpoint must not be in an API's `{endpoint}/v2` paths.
fn splitters_under_protocol_paths(ctx: &mut Ctx<'_>, items: &[ApiItem]) {
    for split in items.iter().filter(|i| i.splitter) {
        let Some((endpoint, at, _)) = &split.endpoint else {
            continue;
        };
        let owner = items.iter().filter(|i| !i.splitter).find_map(|api| {
            let (api_endpoint, _, _) = api.endpoint.as_ref()?;
            crate::is_under_protocol_paths(api_endpoint, endpoint)
                .then(|| (api.name.as_ref().map(|n| n.value.clone()), api_endpoint))
        });
        if let Some((name, api_endpoint)) = owner {
            ctx.api = split.name.as_ref().map(|n| n.value.clone());
            ctx.error(
                *at,
                "endpoint",
                format!(
                    "endpoint {} is under {}'s Open Inference Protocol paths ({api_endpoint}/v2/...), which go to that API; choose another endpoint",
                    quote(endpoint),
                    name.map(|n| format!("api {}", quote(&n))).unwrap_or_else(|| "an API".into())
                ),
            );
        }
    }
    ctx.api = None;
}

/// A splitter's APIs that are in the same file must be realtime APIs (those that are not are
/// checked against the deployed ones by the daemon).
fn split_targets(ctx: &mut Ctx<'_>, items: &[ApiItem]) {
    let kinds: HashMap<&str, &ApiItem> = items
        .iter()
        .filter_map(|i| i.name.as_ref().map(|n| (n.value.as_str(), i)))
        .collect();
    for item in items.iter().filter(|i| i.splitter) {
        ctx.api = item.name.as_ref().map(|n| n.value.clone());
        for target in &item.targets {
            let what = match kinds.get(target.value.as_str()) {
                Some(other) if other.splitter => "a TrafficSplitter",
                Some(other) if other.batch => "a BatchAPI",
                _ => continue,
            };
            if item.name.as_ref().is_some_and(|n| n.value == target.value) {
                continue;
            }
            ctx.error(
                target.at,
                &target.path,
                format!(
                    "api {} is {what}: a traffic splitter shares requests among realtime APIs",
                    quote(&target.value)
                ),
            );
        }
    }
    ctx.api = None;
}

/// The item's name when it is a string, to label its diagnostics.
fn api_name_of(item: &Node) -> Option<String> {
    let name = item.as_mapping()?.get_scalar("name")?;
    match classify(name) {
        Scalar::Str(s) => Some(s.to_string()),
        _ => None,
    }
}

fn item_kind(ctx: &mut Ctx<'_>, item: &Node) -> Option<ItemKind> {
    let Some(node) = item.as_mapping().and_then(|m| m.get_node("kind")) else {
        return Some(ItemKind::Current(ApiKind::RealtimeAPI));
    };
    let text = match node {
        Node::Scalar(s) => match classify(s) {
            Scalar::Null => return Some(ItemKind::Current(ApiKind::RealtimeAPI)),
            Scalar::Str(text) => Some(text),
            _ => None,
        },
        _ => None,
    };
    ctx.api = api_name_of(item);
    let kind = match text {
        Some("RealtimeAPI" | "SyncAPI") => Some(ItemKind::Current(ApiKind::RealtimeAPI)),
        Some("BatchAPI") => Some(ItemKind::Current(ApiKind::BatchAPI)),
        Some("TrafficSplitter") => Some(ItemKind::Splitter),
        Some("api") => Some(ItemKind::Legacy),
        Some("deployment") => Some(ItemKind::Deployment),
        Some(other) => {
            ctx.error(
                node_pos(node),
                "kind",
                format!(
                    "unknown kind {}: expected one of RealtimeAPI, BatchAPI, TrafficSplitter",
                    quote(other)
                ),
            );
            None
        }
        None => {
            ctx.error(
                node_pos(node),
                "kind",
                format!("expected a string, found {}", describe(node)),
            );
            None
        }
    };
    ctx.api = None;
    kind
}

/// A `kind: deployment` item: its name, which prefixes the legacy APIs' default endpoints.
fn deployment_item(ctx: &mut Ctx<'_>, item: &Node) -> Option<Spanned<String>> {
    let sec = Section::open(ctx, item, String::new(), "", &DEPLOYMENT)?;
    required_name(ctx, &sec, "required (the deployment's name)")
}

fn api_item(ctx: &mut Ctx<'_>, item: &Node, kind: ItemKind, deployment: Option<&str>) -> ApiItem {
    let errors_before = ctx.errors.len();
    let (schema, api_kind, format) = match kind {
        ItemKind::Current(ApiKind::BatchAPI) => (&BATCH, ApiKind::BatchAPI, ConfigFormat::Current),
        ItemKind::Legacy => (&LEGACY, ApiKind::RealtimeAPI, ConfigFormat::Legacy),
        _ => (&REALTIME, ApiKind::RealtimeAPI, ConfigFormat::Current),
    };
    let mut out = ApiItem::empty();
    out.batch = api_kind == ApiKind::BatchAPI;
    let Some(top) = Section::open(ctx, item, String::new(), "", schema) else {
        return out;
    };

    out.name = item_name(ctx, &top);
    let written = top.string(ctx, "endpoint");
    out.endpoint = endpoint(ctx, written, out.name.as_ref(), deployment);

    let predictor = match top.get("predictor") {
        None => {
            top.missing(ctx, "predictor", "required");
            None
        }
        Some(f) => {
            Section::open(ctx, f.node, f.path, "predictor", schema).and_then(|sec| match format {
                ConfigFormat::Current => predictor_current(ctx, &sec, schema),
                ConfigFormat::Legacy => predictor_legacy(ctx, &sec).map(|p| (p, None)),
            })
        }
    };
    let tracker = match top.get("tracker") {
        Some(f) if api_kind == ApiKind::RealtimeAPI => {
            Section::open(ctx, f.node, f.path, "tracker", schema).and_then(|s| tracker(ctx, &s))
        }
        _ => None,
    };
    let compute_sec = top.child(ctx, "compute", "compute", schema);
    let (compute, autoscaling) = match (format, &compute_sec) {
        (ConfigFormat::Legacy, Some(sec)) => legacy_compute(ctx, sec),
        (ConfigFormat::Current, Some(sec)) => (compute(ctx, sec), AutoscalingSpec::default()),
        (_, None) => (ComputeSpec::default(), AutoscalingSpec::default()),
    };
    let (autoscaling, update_strategy) =
        if format == ConfigFormat::Current && api_kind == ApiKind::RealtimeAPI {
            let autoscaling = top
                .child(ctx, "autoscaling", "autoscaling", schema)
                .map(|s| current_autoscaling(ctx, &s))
                .unwrap_or_default();
            let update = top
                .child(ctx, "update_strategy", "update_strategy", schema)
                .map(|s| update_strategy(ctx, &s))
                .unwrap_or_default();
            (autoscaling, update)
        } else {
            (autoscaling, UpdateStrategySpec::default())
        };

    // Cortex's rule: a Python predictor's batch is the requests its worker's threads hold.
    if let Some((p, _)) = &predictor {
        if let (crate::spec::PredictorType::Python, Some(b)) = (p.kind, p.server_side_batching) {
            let threads = autoscaling.threads_per_worker;
            if b.max_batch_size > threads {
                let field = top
                    .get("predictor")
                    .and_then(|f| f.field("server_side_batching"))
                    .and_then(|f| f.field("max_batch_size"));
                if let Some(f) = field {
                    ctx.error(
                        f.at(),
                        &f.path,
                        format!(
                            "is {}, more than autoscaling.threads_per_worker ({threads}): a batch is the requests one worker's threads hold at once, so set threads_per_worker to at least {}",
                            b.max_batch_size, b.max_batch_size
                        ),
                    );
                }
            }
        }
    }

    if ctx.errors.len() == errors_before {
        if let (Some(name), Some((endpoint, _, _)), Some((mut predictor, onnx))) =
            (&out.name, &out.endpoint, predictor)
        {
            predictor.onnx = onnx.map(|draft| draft.resolve(compute.cpu));
            out.spec = Some(ApiSpec {
                name: name.value.clone(),
                kind: api_kind,
                endpoint: endpoint.clone(),
                predictor,
                tracker,
                compute,
                autoscaling,
                update_strategy,
                format,
            });
        }
    }
    out
}

/// The item's `name`, when it is there and valid (errors are reported).
fn item_name(ctx: &mut Ctx<'_>, top: &Section<'_>) -> Option<Spanned<String>> {
    required_name(ctx, top, "required")
}

/// The section's `name`, an API name (names become URLs), when it is there and valid; `missing`
/// says what it is for when it is not there.
fn required_name(ctx: &mut Ctx<'_>, sec: &Section<'_>, missing: &str) -> Option<Spanned<String>> {
    match sec.string(ctx, "name") {
        Got::Absent => {
            sec.missing(ctx, "name", missing);
            None
        }
        Got::Invalid => None,
        Got::Set(name) => match validate::api_name(&name.value) {
            Ok(()) => Some(name),
            Err(message) => {
                ctx.error(name.at, &name.path, message);
                None
            }
        },
    }
}

/// The endpoint as written (validated), or the default `/<name>` (`/<deployment>/<name>` for
/// legacy APIs of a deployment) when the name is valid (`name` is given only when it is).
fn endpoint(
    ctx: &mut Ctx<'_>,
    written: Got<String>,
    name: Option<&Spanned<String>>,
    deployment: Option<&str>,
) -> Option<(String, Pos, bool)> {
    match written {
        Got::Set(e) => match validate::endpoint(&e.value) {
            Ok(()) => Some((e.value, e.at, true)),
            Err(message) => {
                ctx.error(e.at, &e.path, message);
                None
            }
        },
        Got::Invalid => None,
        Got::Absent => {
            let name = name?;
            let default = match deployment {
                Some(d) => format!("/{d}/{}", name.value),
                None => format!("/{}", name.value),
            };
            if let Some(what) = validate::reserved_endpoint(&default) {
                ctx.error(
                    name.at,
                    "endpoint",
                    format!(
                        "the default endpoint {} (from the name) is reserved for {what}; set \
                         endpoint to another path",
                        quote(&default)
                    ),
                );
                return None;
            }
            Some((default, name.at, false))
        }
    }
}

/// Duplicate API names and endpoints, reported at the second occurrence.
fn duplicates(ctx: &mut Ctx<'_>, items: &[ApiItem]) {
    let mut names: HashMap<&str, Pos> = HashMap::new();
    let mut endpoints: HashMap<&str, (Pos, Option<&str>)> = HashMap::new();
    for item in items {
        let name = item.name.as_ref();
        ctx.api = name.map(|n| n.value.clone());
        let mut duplicate_name = false;
        if let Some(n) = name {
            if let Some(first) = names.get(n.value.as_str()) {
                duplicate_name = true;
                ctx.error(
                    n.at,
                    "name",
                    format!(
                        "duplicate API name {} (first defined at line {})",
                        quote(&n.value),
                        first.line
                    ),
                );
            } else {
                names.insert(&n.value, n.at);
            }
        }
        let Some((endpoint, at, written)) = &item.endpoint else {
            continue;
        };
        match endpoints.get(endpoint.as_str()) {
            // A default endpoint of a duplicate name repeats the name's error.
            Some(_) if duplicate_name && !written => {}
            Some((first, owner)) => {
                let owner = owner
                    .map(|o| format!(" by api {}", quote(o)))
                    .unwrap_or_default();
                ctx.error(
                    *at,
                    "endpoint",
                    format!(
                        "endpoint {} is already used{owner} (line {})",
                        quote(endpoint),
                        first.line
                    ),
                );
            }
            None => {
                endpoints.insert(endpoint, (*at, name.map(|n| n.value.as_str())));
            }
        }
    }
    ctx.api = None;
}

fn tracker(ctx: &mut Ctx<'_>, s: &Section<'_>) -> Option<TrackerSpec> {
    let key = s.string(ctx, "key");
    let model_type = s.choice(
        ctx,
        "model_type",
        "model_type",
        &[
            ("classification", ModelType::Classification),
            ("regression", ModelType::Regression),
        ],
    );
    if matches!(model_type, Got::Absent) {
        s.missing(
            ctx,
            "model_type",
            "required: one of classification, regression",
        );
    }
    Some(TrackerSpec {
        key: key.value(),
        model_type: model_type.value()?,
    })
}

/// Reports `message` at the value and makes it invalid when `result` is an error.
fn verdict<T>(
    ctx: &mut Ctx<'_>,
    got: Got<T>,
    result: impl FnOnce(&T) -> Result<(), String>,
) -> Got<T> {
    match got {
        Got::Set(s) => match result(&s.value) {
            Ok(()) => Got::Set(s),
            Err(message) => {
                ctx.error(s.at, &s.path, message);
                Got::Invalid
            }
        },
        other => other,
    }
}
