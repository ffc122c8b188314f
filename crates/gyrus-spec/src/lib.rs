//! `gyrus-spec`: everything about the config file (`cortex.yaml` / `gyrus.yaml`) and nothing
//! else. It parses the file with positions (every error carries file:line:column, the API's
//! name and the dotted field path), accepts the three Cortex formats (the realtime format of
//! seeds 000/003, the batch-era `models` field of seed 002, and the older `kind: api` format of
//! seed 001), fills in the defaults, validates every field and cross-field rule, and produces
//! the resolved [`ApiSpec`] that the rest of gyrus works from. It is pure apart from checking
//! that the files a predictor names exist in the project directory.
//!
//! Modules: [`spec`] (the resolved types), [`units`] (CPU, memory, durations,
//! counts-or-percentages), [`diagnostic`] (diagnostics and [`SpecError`]), `yaml` (reading
//! marked-yaml nodes), `walker` (the mapping walker), `parse` (the formats) and `validate`
//! (names, endpoints, project paths). Printing specs as YAML is serde-saphyr's, on the
//! serialized types.

pub mod diagnostic;
mod parse;
pub mod spec;
pub mod suggest;
pub mod tag;
pub mod units;
mod validate;
mod walker;
mod yaml;

use std::path::Path;

pub use diagnostic::{Diagnostic, SpecError};
pub use spec::{
    ApiKind, ApiSpec, AutoscalingSpec, BatchingSpec, ComputeSpec, ConfigFormat, ExecutionMode,
    ExecutionProviderName, GraphOptimizationLevel, ModelType, ModelsSpec, NamedModel, OnnxOptions,
    PredictorSpec, PredictorType, S3Options, SplitTarget, SplitterKind, SplitterSpec, TrackerSpec,
    UpdateStrategySpec,
};
pub use tag::{
    check_tag_part, model_url_schemes_text, ModelRef, ModelTag, MODEL_URL_SCHEMES, TAG_RULE,
};
pub use units::{CountOrPercent, Cpu, DurationSpec, Memory, UnitError};

/// The rule for model names (they become part of URLs, `/v2/models/<name>`): letters, digits,
/// `.`, `_`, `-`, not starting with `.`. The error says so and quotes the name.
pub fn check_model_name(name: &str) -> Result<(), String> {
    validate::model_name(name)
}

/// The rule for API names (they become URLs, log and cgroup names): at most 63 lowercase
/// letters, digits and `-`, starting with a letter and not ending with `-`. The error says so
/// and quotes the name.
pub fn check_api_name(name: &str) -> Result<(), String> {
    validate::api_name(name)
}

/// Whether `endpoint` lies in the Open Inference Protocol paths of an API at `api_endpoint`
/// (`{api_endpoint}/v2` and below), which the gateway and the API's replicas route to that
/// API: a traffic splitter there could never be reached.
pub fn is_under_protocol_paths(api_endpoint: &str, endpoint: &str) -> bool {
    let api = api_endpoint.trim_end_matches('/');
    let endpoint = endpoint.trim_end_matches('/');
    endpoint
        .strip_prefix(api)
        .and_then(|rest| rest.strip_prefix("/v2"))
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The APIs of a config file, and the warnings found while reading it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ParsedConfig {
    pub apis: Vec<ApiSpec>,
    /// `kind: TrafficSplitter` items.
    pub splitters: Vec<SplitterSpec>,
    pub warnings: Vec<Diagnostic>,
}

/// Reads the config file `file_name` (used in diagnostics only) whose content is `text`.
///
/// With `project_dir`, the paths the predictors name are also checked against the project
/// directory (the predictor file and `python_path` must exist inside it; local model paths
/// must exist). Every error of the file is returned, sorted by position.
pub fn load(
    file_name: &str,
    text: &str,
    project_dir: Option<&Path>,
) -> Result<ParsedConfig, SpecError> {
    let mut ctx = walker::Ctx::new(file_name, project_dir);
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if is_blank(text) {
        ctx.error(
            yaml::Pos::START,
            "",
            "the file is empty: expected a list of APIs",
        );
        return Err(SpecError::new(ctx.errors));
    }
    let root = match yaml::parse(text) {
        Ok(root) => root,
        Err(e) if e.syntax => {
            ctx.error(e.pos, "", format!("invalid YAML: {}", e.message));
            return Err(SpecError::new(ctx.errors));
        }
        Err(e) => {
            ctx.error(e.pos, "", e.message);
            return Err(SpecError::new(ctx.errors));
        }
    };
    if let Some(pos) = yaml::second_document(text) {
        ctx.error(
            pos,
            "",
            "expected a single YAML document, found a second one (put every API in one list)",
        );
        return Err(SpecError::new(ctx.errors));
    }
    let (apis, splitters) = parse::apis(&mut ctx, &root);
    if !ctx.errors.is_empty() {
        return Err(SpecError::new(ctx.errors));
    }
    let mut warnings = ctx.warnings;
    warnings.sort_by_key(|d| (d.line, d.column));
    Ok(ParsedConfig {
        apis,
        splitters,
        warnings,
    })
}

/// Nothing but blank lines, comments and document markers.
fn is_blank(text: &str) -> bool {
    text.lines().all(|line| {
        let line = line.trim();
        line.is_empty() || line.starts_with('#') || line == "---" || line == "..."
    })
}
