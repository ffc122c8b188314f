//! Reading a parsed config file into [`ApiSpec`]s: the three formats (current realtime/batch
//! APIs of seeds 000/002/003, and the legacy `kind: api` / `kind: deployment` items of seed 001),
//! their defaults, per-field validation, cross-field rules, and the file-wide checks (duplicate
//! API names and endpoints).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use marked_yaml::types::MarkedSequenceNode;
use marked_yaml::Node;

use crate::spec::{
    ApiKind, ApiSpec, AutoscalingSpec, ComputeSpec, ConfigFormat, ExecutionMode,
    ExecutionProviderName, GraphOptimizationLevel, ModelType, ModelsSpec, NamedModel, OnnxOptions,
    PredictorSpec, PredictorType, S3Options, TrackerSpec, UpdateStrategySpec,
};
use crate::units::{CountOrPercent, Cpu, DurationSpec, Memory};
use crate::validate::{self, Need};
use crate::walker::{
    later, Ctx, Field, FloatRange, Got, IntRange, Later, Names, Schema, Section, Spanned,
};
use crate::yaml::{classify, describe, node_pos, quote, span_pos, to_json, Pos, Scalar};

const AUTOSCALING_KEYS: &[&str] = &[
    "min_replicas",
    "max_replicas",
    "init_replicas",
    "workers_per_replica",
    "threads_per_worker",
    "target_replica_concurrency",
    "max_replica_concurrency",
    "window",
    "downscale_stabilization_period",
    "upscale_stabilization_period",
    "max_downscale_factor",
    "max_upscale_factor",
    "downscale_tolerance",
    "upscale_tolerance",
];

const PREDICTOR_KEYS: &[&str] = &[
    "type",
    "path",
    "model",
    "models",
    "config",
    "python_path",
    "env",
    "session_options",
    "execution_providers",
    "s3",
];

const S3_SECTION: (&str, &[&str]) = ("predictor.s3", &["endpoint_url", "region"]);

const SESSION_OPTIONS: (&str, &[&str]) = (
    "predictor.session_options",
    &[
        "intra_op_num_threads",
        "inter_op_num_threads",
        "graph_optimization_level",
        "execution_mode",
    ],
);

/// ONNX Runtime's thread counts: 0 lets it decide.
const THREADS: IntRange = IntRange::between(0, 1024);

const LEVELS: Names<GraphOptimizationLevel> = Names {
    what: "graph optimization level",
    canonical: &[
        ("disable_all", GraphOptimizationLevel::DisableAll),
        ("enable_basic", GraphOptimizationLevel::EnableBasic),
        ("enable_extended", GraphOptimizationLevel::EnableExtended),
        ("enable_all", GraphOptimizationLevel::EnableAll),
    ],
    aliases: &[
        ("ORT_DISABLE_ALL", GraphOptimizationLevel::DisableAll),
        ("ORT_ENABLE_BASIC", GraphOptimizationLevel::EnableBasic),
        (
            "ORT_ENABLE_EXTENDED",
            GraphOptimizationLevel::EnableExtended,
        ),
        ("ORT_ENABLE_ALL", GraphOptimizationLevel::EnableAll),
    ],
    ignore_case: false,
    hints: &[
        ("all", "enable_all"),
        ("none", "disable_all"),
        ("basic", "enable_basic"),
        ("extended", "enable_extended"),
    ],
};

const MODES: Names<ExecutionMode> = Names {
    what: "execution mode",
    canonical: &[
        ("sequential", ExecutionMode::Sequential),
        ("parallel", ExecutionMode::Parallel),
    ],
    aliases: &[
        ("ORT_SEQUENTIAL", ExecutionMode::Sequential),
        ("ORT_PARALLEL", ExecutionMode::Parallel),
    ],
    ignore_case: false,
    hints: &[],
};

const PROVIDERS: Names<ExecutionProviderName> = Names {
    what: "execution provider",
    canonical: &[
        ("tensorrt", ExecutionProviderName::Tensorrt),
        ("cuda", ExecutionProviderName::Cuda),
        ("cpu", ExecutionProviderName::Cpu),
    ],
    aliases: &[
        ("TensorrtExecutionProvider", ExecutionProviderName::Tensorrt),
        ("CUDAExecutionProvider", ExecutionProviderName::Cuda),
        ("CPUExecutionProvider", ExecutionProviderName::Cpu),
    ],
    ignore_case: true,
    hints: &[("gpu", "cuda"), ("trt", "tensorrt")],
};

const MODELS_SECTIONS: [(&str, &[&str]); 3] = [
    ("predictor.models", &["paths", "dir"]),
    ("predictor.models[]", &["name", "model", "model_path"]),
    ("predictor.models.paths[]", &["name", "model_path", "model"]),
];

const CURRENT_HINTS: &[(&str, &str)] = &[
    ("predictor.models[].path", ", did you mean \"model\"?"),
    (
        "predictor.models.paths[].path",
        ", did you mean \"model_path\"?",
    ),
    (
        "predictor.metadata",
        ", did you mean \"config\"? (metadata is its name in the older kind: api format)",
    ),
    (
        "predictor.providers",
        ", did you mean \"execution_providers\"?",
    ),
    (
        "predictor.session_options.providers",
        ", did you mean \"predictor.execution_providers\"?",
    ),
    (
        "compute.target_cpu_utilization",
        ": gyrus scales on in-flight requests, see autoscaling.target_replica_concurrency",
    ),
];

/// Seeds 000/003: realtime APIs.
const REALTIME: Schema = Schema {
    sections: &[
        (
            "",
            &[
                "name",
                "kind",
                "endpoint",
                "predictor",
                "tracker",
                "compute",
                "autoscaling",
                "update_strategy",
            ],
        ),
        ("predictor", PREDICTOR_KEYS),
        SESSION_OPTIONS,
        S3_SECTION,
        MODELS_SECTIONS[0],
        MODELS_SECTIONS[1],
        MODELS_SECTIONS[2],
        ("tracker", &["key", "model_type"]),
        ("compute", &["cpu", "gpu", "mem"]),
        ("autoscaling", AUTOSCALING_KEYS),
        ("update_strategy", &["max_surge", "max_unavailable"]),
    ],
    hints: CURRENT_HINTS,
};

/// Batch APIs: no replicas to scale or update, no tracker.
const BATCH: Schema = Schema {
    sections: &[
        ("", &["name", "kind", "endpoint", "predictor", "compute"]),
        ("predictor", PREDICTOR_KEYS),
        SESSION_OPTIONS,
        S3_SECTION,
        MODELS_SECTIONS[0],
        MODELS_SECTIONS[1],
        MODELS_SECTIONS[2],
        ("compute", &["cpu", "gpu", "mem"]),
    ],
    hints: &[
        (
            "autoscaling",
            ": a BatchAPI does not autoscale (the number of workers is set per job)",
        ),
        ("tracker", ": a BatchAPI has no tracker"),
        (
            "update_strategy",
            ": a BatchAPI has no replicas to update (each job starts its own workers)",
        ),
        CURRENT_HINTS[0],
        CURRENT_HINTS[1],
        CURRENT_HINTS[2],
        CURRENT_HINTS[3],
        CURRENT_HINTS[4],
        CURRENT_HINTS[5],
    ],
};

/// Seed 001: `kind: api`.
const LEGACY: Schema = Schema {
    sections: &[
        (
            "",
            &[
                "kind",
                "name",
                "endpoint",
                "predictor",
                "tracker",
                "compute",
            ],
        ),
        ("predictor", &["path", "model", "python_path", "metadata"]),
        ("tracker", &["key", "model_type"]),
        (
            "compute",
            &[
                "min_replicas",
                "max_replicas",
                "init_replicas",
                "target_cpu_utilization",
                "cpu",
                "gpu",
                "mem",
            ],
        ),
    ],
    hints: &[
        (
            "predictor.config",
            ", did you mean \"metadata\"? (this API uses the older kind: api format)",
        ),
        (
            "predictor.type",
            ": a kind: api predictor has no type (it is always python); remove kind: api to use \
             the current format",
        ),
        (
            "predictor.env",
            ": the kind: api format has no predictor.env; use a .env file, or remove kind: api \
             to use the current format",
        ),
        (
            "autoscaling",
            ": in the kind: api format, min_replicas, max_replicas and init_replicas go under \
             compute; remove kind: api to use the current format",
        ),
        (
            "update_strategy",
            ": the kind: api format has no update_strategy; remove kind: api to use the current \
             format",
        ),
    ],
};

/// Seed 001: `kind: deployment`.
const DEPLOYMENT: Schema = Schema {
    sections: &[("", &["kind", "name"])],
    hints: &[],
};

/// What a top-level item of the file is, from its `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ItemKind {
    Current(ApiKind),
    Legacy,
    Deployment,
}

/// What one API item yielded: its spec when it had no errors, and what the file-wide checks
/// need.
struct ApiItem {
    spec: Option<ApiSpec>,
    name: Option<Spanned<String>>,
    /// The endpoint, where it is written (the name's position for a default), and whether it
    /// was written.
    endpoint: Option<(String, Pos, bool)>,
}

/// Reads every API of the file. Errors and warnings go to `ctx`; the returned specs are
/// meaningful only when no error was reported.
pub(crate) fn apis(ctx: &mut Ctx<'_>, root: &Node) -> Vec<ApiSpec> {
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
            return Vec::new();
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
        parsed.push(api_item(ctx, item, kind, deployment_name.as_deref()));
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
    parsed.into_iter().filter_map(|p| p.spec).collect()
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
        Some("api") => Some(ItemKind::Legacy),
        Some("deployment") => Some(ItemKind::Deployment),
        Some(other) => {
            ctx.error(
                node_pos(node),
                "kind",
                format!(
                    "unknown kind {}: expected one of RealtimeAPI, BatchAPI",
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
    match sec.string(ctx, "name") {
        Got::Absent => {
            sec.missing(ctx, "name", "required (the deployment's name)");
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

fn api_item(ctx: &mut Ctx<'_>, item: &Node, kind: ItemKind, deployment: Option<&str>) -> ApiItem {
    let errors_before = ctx.errors.len();
    let (schema, api_kind, format) = match kind {
        ItemKind::Current(ApiKind::BatchAPI) => (&BATCH, ApiKind::BatchAPI, ConfigFormat::Current),
        ItemKind::Legacy => (&LEGACY, ApiKind::RealtimeAPI, ConfigFormat::Legacy),
        _ => (&REALTIME, ApiKind::RealtimeAPI, ConfigFormat::Current),
    };
    let mut out = ApiItem {
        spec: None,
        name: None,
        endpoint: None,
    };
    let Some(top) = Section::open(ctx, item, String::new(), "", schema) else {
        return out;
    };

    out.name = match top.string(ctx, "name") {
        Got::Absent => {
            top.missing(ctx, "name", "required");
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
    };
    out.endpoint = endpoint(ctx, &top, out.name.as_ref(), deployment);

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

/// The endpoint as written (validated), or the default `/<name>` (`/<deployment>/<name>` for
/// legacy APIs of a deployment) when the name is valid (`name` is given only when it is).
fn endpoint(
    ctx: &mut Ctx<'_>,
    top: &Section<'_>,
    name: Option<&Spanned<String>>,
    deployment: Option<&str>,
) -> Option<(String, Pos, bool)> {
    match top.string(ctx, "endpoint") {
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

/// A current-format predictor, and its ONNX options for an ONNX predictor (resolved once
/// `compute.cpu` is known).
fn predictor_current(
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
    let kind = kind.value()?;
    match kind {
        PredictorType::Python if matches!(path, Got::Absent) => {
            s.missing(ctx, "path", "required when predictor.type is python");
        }
        PredictorType::Onnx if matches!((&model, &models), (Got::Absent, Got::Absent)) => {
            s.missing(
                ctx,
                "model",
                "required when predictor.type is onnx (set model or models)",
            );
        }
        _ => {}
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
    };
    Some((spec, onnx))
}

/// The ONNX options as written, before `compute.cpu` gives the default
/// `intra_op_num_threads`.
struct OnnxDraft {
    intra_op_num_threads: Option<u32>,
    options: OnnxOptions,
}

impl OnnxDraft {
    fn resolve(self, cpu: Cpu) -> OnnxOptions {
        OnnxOptions {
            intra_op_num_threads: self
                .intra_op_num_threads
                .unwrap_or_else(|| OnnxOptions::default_intra_op_num_threads(cpu)),
            ..self.options
        }
    }
}

/// `session_options` and `execution_providers`. For a predictor of another type than onnx
/// their presence is the error; when the type is unknown they are still checked.
fn onnx_options(
    ctx: &mut Ctx<'_>,
    s: &Section<'_>,
    schema: &Schema,
    kind: Option<PredictorType>,
) -> Option<OnnxDraft> {
    if let Some(kind) = kind.filter(|k| *k != PredictorType::Onnx) {
        for key in ["session_options", "execution_providers"] {
            if let (Some(f), Some(at)) = (s.get(key), s.key_pos(key)) {
                ctx.error(
                    at,
                    &f.path,
                    format!("only allowed when predictor.type is onnx, not {kind}"),
                );
            }
        }
        return None;
    }
    let section = s.child(ctx, "session_options", SESSION_OPTIONS.0, schema);
    let written = section.map(|sec| {
        let intra = sec.int(ctx, "intra_op_num_threads", THREADS);
        let inter = sec.int(ctx, "inter_op_num_threads", THREADS);
        let level = match sec.get("graph_optimization_level") {
            Some(f) => f.named(ctx, &LEVELS),
            None => Got::Absent,
        };
        let mode = match sec.get("execution_mode") {
            Some(f) => f.named(ctx, &MODES),
            None => Got::Absent,
        };
        let sequential =
            matches!(&mode, Got::Absent) || mode.value() == Some(ExecutionMode::Sequential);
        if let Some(i) = inter.set().filter(|i| sequential && i.value > 1) {
            ctx.warn(
                i.at,
                &i.path,
                "has no effect while execution_mode is sequential (the default); set \
                 execution_mode: parallel to run independent operators at once",
            );
        }
        OnnxDraft {
            intra_op_num_threads: intra.value(),
            options: OnnxOptions {
                intra_op_num_threads: 0,
                inter_op_num_threads: inter.or(1),
                graph_optimization_level: level.or(GraphOptimizationLevel::EnableAll),
                execution_mode: mode.or(ExecutionMode::Sequential),
                execution_providers: None,
            },
        }
    });
    let providers = execution_providers(ctx, s);
    let mut draft = written?;
    draft.options.execution_providers = providers?;
    Some(draft)
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

/// `execution_providers`: `Some(None)` for `auto` (the default), `Some(Some(list))` for a
/// non-empty list of distinct known providers, `None` when invalid (reported).
fn execution_providers(
    ctx: &mut Ctx<'_>,
    s: &Section<'_>,
) -> Option<Option<Vec<ExecutionProviderName>>> {
    let Some(f) = s.get("execution_providers") else {
        return Some(None);
    };
    let is_auto = |text: &str| text.eq_ignore_ascii_case("auto");
    let list = match f.node {
        Node::Sequence(list) => list,
        Node::Scalar(v) if matches!(classify(v), Scalar::Str(t) if is_auto(t)) => {
            return Some(None)
        }
        _ => {
            f.wrong::<()>(
                ctx,
                "auto or a list of execution providers (like [cuda, cpu])",
            );
            return None;
        }
    };
    if list.is_empty() {
        ctx.error(
            span_pos(list.span()),
            &f.path,
            "must list at least one execution provider (or be auto)",
        );
        return None;
    }
    let errors_before = ctx.errors.len();
    let mut seen: Vec<(ExecutionProviderName, String)> = Vec::new();
    for (i, node) in list.iter().enumerate() {
        let item = Field {
            path: format!("{}[{i}]", f.path),
            node,
        };
        let Got::Set(p) = item.named(ctx, &PROVIDERS) else {
            continue;
        };
        match seen.iter().find(|(v, _)| *v == p.value) {
            Some((_, first)) => {
                let same = if p.found == quote(p.value.as_str()) {
                    String::new()
                } else {
                    format!("{}, ", p.value)
                };
                ctx.error(
                    p.at,
                    &p.path,
                    format!(
                        "duplicate execution provider {} ({same}already listed as {first})",
                        p.found
                    ),
                );
            }
            None => seen.push((p.value, p.path)),
        }
    }
    (ctx.errors.len() == errors_before).then(|| Some(seen.into_iter().map(|(v, _)| v).collect()))
}

fn predictor_legacy(ctx: &mut Ctx<'_>, s: &Section<'_>) -> Option<PredictorSpec> {
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

fn model_location(ctx: &mut Ctx<'_>, got: Got<String>, need: Need) -> Got<String> {
    let project_dir = ctx.project_dir;
    verdict(ctx, got, |m| validate::model_location(m, need, project_dir))
}

/// `model` and `models` (mutually exclusive).
fn models(ctx: &mut Ctx<'_>, s: &Section<'_>, schema: &Schema) -> (Got<String>, Got<ModelsSpec>) {
    let model = s.string(ctx, "model");
    let model = model_location(ctx, model, Need::Model);
    let models = match s.get("models") {
        None => Got::Absent,
        Some(f) => match f.node {
            Node::Sequence(list) => {
                match model_entries(ctx, list, &f.path, "predictor.models[]", schema) {
                    Some(paths) => Got::Set(f.spanned(ModelsSpec { paths, dir: None })),
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
        if let (Some(name), Some(model)) = (name, model.value()) {
            entries.push(NamedModel { name, model });
        }
    }
    (ctx.errors.len() == errors_before).then_some(entries)
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

fn compute(ctx: &mut Ctx<'_>, s: &Section<'_>) -> ComputeSpec {
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

fn current_autoscaling(ctx: &mut Ctx<'_>, s: &Section<'_>) -> AutoscalingSpec {
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
fn legacy_compute(ctx: &mut Ctx<'_>, s: &Section<'_>) -> (ComputeSpec, AutoscalingSpec) {
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

fn update_strategy(ctx: &mut Ctx<'_>, s: &Section<'_>) -> UpdateStrategySpec {
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
