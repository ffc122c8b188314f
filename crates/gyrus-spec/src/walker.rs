//! The mapping walker: the diagnostic collector ([`Ctx`]) and [`Section`], a view of one YAML
//! mapping that reports unknown keys (with suggestions) when opened and hands out typed fields
//! (integers, numbers, strings, units, enumerations) that report wrong types and ranges with
//! their position, API and dotted field path.

use std::path::Path;
use std::str::FromStr;

use marked_yaml::types::MarkedMappingNode;
use marked_yaml::Node;

use crate::diagnostic::Diagnostic;
use crate::units::UnitError;
use crate::yaml::{classify, describe, node_pos, parse_int, span_pos, Pos, Scalar};

mod accepted;

pub(crate) use accepted::{FloatRange, IntRange, Names};

/// Collects the diagnostics of one file. `api` is the API being read, stamped on every
/// diagnostic reported while it is set.
pub(crate) struct Ctx<'a> {
    file: &'a str,
    pub api: Option<String>,
    pub project_dir: Option<&'a Path>,
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
}

impl<'a> Ctx<'a> {
    pub fn new(file: &'a str, project_dir: Option<&'a Path>) -> Self {
        Ctx {
            file,
            api: None,
            project_dir,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    fn diagnostic(&self, at: Pos, field: &str, message: String) -> Diagnostic {
        Diagnostic {
            file: self.file.to_string(),
            line: at.line,
            column: at.column,
            api: self.api.clone(),
            field: (!field.is_empty()).then(|| field.to_string()),
            message,
        }
    }

    /// Reports an error about `field` (a dotted path; empty for the API or file itself).
    pub fn error(&mut self, at: Pos, field: &str, message: impl Into<String>) {
        let d = self.diagnostic(at, field, message.into());
        self.errors.push(d);
    }

    pub fn warn(&mut self, at: Pos, field: &str, message: impl Into<String>) {
        let d = self.diagnostic(at, field, message.into());
        self.warnings.push(d);
    }
}

/// The keys of every section of one config format, for unknown-key suggestions.
pub(crate) struct Schema {
    /// Known keys by section name: `""` is the API mapping itself, `"predictor"`,
    /// `"predictor.models[]"` (an entry of the `models` list), ...
    pub sections: &'static [(&'static str, &'static [&'static str])],
    /// Advice for an unknown key, by `"section.key"` (`"key"` at the API level). The text is
    /// appended to `unknown field "key"`, so it starts with `, ` or `: `.
    pub hints: &'static [(&'static str, &'static str)],
}

impl Schema {
    fn keys(&self, section: &str) -> &'static [&'static str] {
        self.sections
            .iter()
            .find(|(name, _)| *name == section)
            .map_or(&[], |(_, keys)| keys)
    }

    /// The message for an unknown `key` of `section`: an explicit hint, else the same key in
    /// another section, else a similar key of this section, else a similar key elsewhere, else
    /// the list of valid keys.
    fn unknown_key_message(&self, section: &str, key: &str) -> String {
        let qualified = |s: &str, k: &str| {
            if s.is_empty() {
                k.to_string()
            } else {
                format!("{s}.{k}")
            }
        };
        let this = qualified(section, key);
        if let Some((_, hint)) = self.hints.iter().find(|(k, _)| *k == this) {
            return format!("unknown field \"{key}\"{hint}");
        }
        // Sections of list entries are left out: their paths cannot be written as a suggestion.
        let others = || {
            self.sections
                .iter()
                .filter(move |(s, _)| *s != section && !s.contains('['))
        };
        if let Some((s, _)) = others().find(|(_, keys)| keys.contains(&key)) {
            return format!(
                "unknown field \"{key}\", did you mean \"{}\"?",
                qualified(s, key)
            );
        }
        let best = |keys: &[&'static str], threshold: f64| {
            keys.iter()
                .map(|k| (strsim::jaro_winkler(key, k), *k))
                .filter(|(score, _)| *score >= threshold)
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, k)| k)
        };
        let keys = self.keys(section);
        if let Some(k) = best(keys, 0.8) {
            return format!("unknown field \"{key}\", did you mean \"{k}\"?");
        }
        let elsewhere = others()
            .filter_map(|(s, keys)| best(keys, 0.9).map(|k| qualified(s, k)))
            .next();
        if let Some(k) = elsewhere {
            return format!("unknown field \"{key}\", did you mean \"{k}\"?");
        }
        format!(
            "unknown field \"{key}\", expected one of: {}",
            keys.join(", ")
        )
    }
}

/// A value read from the file, with what is needed to report on it later.
#[derive(Debug, Clone)]
pub(crate) struct Spanned<T> {
    pub value: T,
    pub at: Pos,
    pub path: String,
    /// How the value was written, for `found ...` in messages.
    pub found: String,
}

/// The outcome of reading an optional field.
#[derive(Debug, Clone)]
pub(crate) enum Got<T> {
    /// Not in the file (or null).
    Absent,
    /// In the file but wrong; already reported.
    Invalid,
    Set(Spanned<T>),
}

impl<T> Got<T> {
    pub fn set(&self) -> Option<&Spanned<T>> {
        match self {
            Got::Set(s) => Some(s),
            _ => None,
        }
    }

    pub fn is_invalid(&self) -> bool {
        matches!(self, Got::Invalid)
    }

    /// Keeps the value if `ok`, else reports `{message}, found {found}` and makes it invalid.
    pub fn check(self, ctx: &mut Ctx<'_>, ok: impl FnOnce(&T) -> bool, message: &str) -> Self {
        match self {
            Got::Set(s) if !ok(&s.value) => {
                ctx.error(s.at, &s.path, format!("{message}, found {}", s.found));
                Got::Invalid
            }
            other => other,
        }
    }
}

impl<T: Clone> Got<T> {
    /// The value, or `default` when absent or invalid.
    pub fn or(&self, default: T) -> T {
        match self {
            Got::Set(s) => s.value.clone(),
            _ => default,
        }
    }

    pub fn value(&self) -> Option<T> {
        self.set().map(|s| s.value.clone())
    }
}

/// One field of a mapping, present and not null.
pub(crate) struct Field<'n> {
    pub path: String,
    pub node: &'n Node,
}

impl<'n> Field<'n> {
    pub fn at(&self) -> Pos {
        node_pos(self.node)
    }

    /// The field `key` of this mapping, without checking the mapping's keys (for messages
    /// about a field that was read already).
    pub fn field(&self, key: &str) -> Option<Field<'n>> {
        let Node::Mapping(map) = self.node else {
            return None;
        };
        Some(Field {
            path: format!("{}.{key}", self.path),
            node: map.get_node(key)?,
        })
    }

    pub fn spanned<T>(&self, value: T) -> Spanned<T> {
        Spanned {
            value,
            at: self.at(),
            path: self.path.clone(),
            found: describe(self.node),
        }
    }

    /// Reports `expected {what}, found {value}` and returns [`Got::Invalid`].
    pub fn wrong<T>(&self, ctx: &mut Ctx<'_>, what: &str) -> Got<T> {
        ctx.error(
            self.at(),
            &self.path,
            format!("expected {what}, found {}", describe(self.node)),
        );
        Got::Invalid
    }

    /// One of `names`, written as a string.
    pub fn named<T: Copy>(&self, ctx: &mut Ctx<'_>, names: &Names<T>) -> Got<T> {
        let Got::Set(s) = self.string(ctx) else {
            return Got::Invalid;
        };
        match names.find(&s.value) {
            Some(v) => Got::Set(self.spanned(v)),
            None => {
                ctx.error(s.at, &s.path, names.unknown_message(&s.value, &s.found));
                Got::Invalid
            }
        }
    }

    /// The field as a string (quoted or plain, but not a number, boolean or collection).
    pub fn string(&self, ctx: &mut Ctx<'_>) -> Got<String> {
        match self.node {
            Node::Scalar(s) => match classify(s) {
                Scalar::Str(text) => Got::Set(self.spanned(text.to_string())),
                _ => self.wrong(ctx, "a string"),
            },
            _ => self.wrong(ctx, "a string"),
        }
    }
}

/// A view of one mapping of the file: its unknown keys were reported when it was opened.
/// A section that is absent from the file is represented by [`Section::absent`]; all its
/// fields are absent, so readers fall back to defaults.
pub(crate) struct Section<'n> {
    /// Dotted path of the mapping (empty for the API mapping).
    pub path: String,
    /// Where to report missing required fields: the mapping itself, or where it should be.
    pub at: Pos,
    map: Option<&'n MarkedMappingNode>,
}

impl<'n> Section<'n> {
    /// Opens `node` as the mapping at `path`, whose keys are those of `section` in `schema`.
    /// Reports (and returns `None` for) a node that is not a mapping.
    pub fn open(
        ctx: &mut Ctx<'_>,
        node: &'n Node,
        path: String,
        section: &str,
        schema: &Schema,
    ) -> Option<Section<'n>> {
        let Node::Mapping(map) = node else {
            let field = if path.is_empty() { "" } else { path.as_str() };
            ctx.error(
                node_pos(node),
                field,
                format!("expected a mapping, found {}", describe(node)),
            );
            return None;
        };
        let known = schema.keys(section);
        let sec = Section {
            path,
            at: node_pos(node),
            map: Some(map),
        };
        for key in map.keys() {
            if !known.contains(&key.as_str()) {
                ctx.error(
                    span_pos(key.span()),
                    &sec.field_path(key.as_str()),
                    schema.unknown_key_message(section, key.as_str()),
                );
            }
        }
        Some(sec)
    }

    pub fn absent(path: String, at: Pos) -> Section<'static> {
        Section {
            path,
            at,
            map: None,
        }
    }

    pub fn field_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// The field `key`, unless it is absent or null.
    pub fn get(&self, key: &str) -> Option<Field<'n>> {
        let map = self.map?;
        let node = map.get_node(key)?;
        if let Node::Scalar(s) = node {
            if classify(s) == Scalar::Null {
                return None;
            }
        }
        Some(Field {
            path: self.field_path(key),
            node,
        })
    }

    /// Where the key `key` is written, when the mapping has it (even with a null value).
    pub fn key_pos(&self, key: &str) -> Option<Pos> {
        self.map?
            .keys()
            .find(|k| k.as_str() == key)
            .map(|k| span_pos(k.span()))
    }

    /// Reports that `key` is required (at this mapping's position).
    pub fn missing(&self, ctx: &mut Ctx<'_>, key: &str, message: &str) {
        ctx.error(self.at, &self.field_path(key), message);
    }

    /// The sub-mapping `key` (section `section` of the schema), or an absent section placed at
    /// this mapping when it is not in the file. `None` when it is not a mapping.
    pub fn child(
        &self,
        ctx: &mut Ctx<'_>,
        key: &str,
        section: &str,
        schema: &Schema,
    ) -> Option<Section<'n>> {
        match self.get(key) {
            Some(f) => Section::open(ctx, f.node, f.path, section, schema),
            None => Some(Section::absent(self.field_path(key), self.at)),
        }
    }

    pub fn string(&self, ctx: &mut Ctx<'_>, key: &str) -> Got<String> {
        match self.get(key) {
            Some(f) => f.string(ctx),
            None => Got::Absent,
        }
    }

    /// `true` or `false`.
    pub fn boolean(&self, ctx: &mut Ctx<'_>, key: &str) -> Got<bool> {
        let Some(f) = self.get(key) else {
            return Got::Absent;
        };
        match f.node {
            Node::Scalar(s) => match classify(s) {
                Scalar::Bool(b) => Got::Set(f.spanned(b)),
                _ => f.wrong(ctx, "true or false"),
            },
            _ => f.wrong(ctx, "true or false"),
        }
    }

    /// An integer within `range`, as u32 (every range here fits).
    pub fn int(&self, ctx: &mut Ctx<'_>, key: &str, range: IntRange) -> Got<u32> {
        let Some(f) = self.get(key) else {
            return Got::Absent;
        };
        let value = match f.node {
            Node::Scalar(s) => match classify(s) {
                Scalar::Int(text) => parse_int(text),
                _ => return f.wrong(ctx, "an integer"),
            },
            _ => return f.wrong(ctx, "an integer"),
        };
        match value {
            Some(v) if v >= range.min && v <= range.max => match u32::try_from(v) {
                Ok(v) => Got::Set(f.spanned(v)),
                Err(_) => f.wrong(ctx, "an integer"),
            },
            _ => {
                ctx.error(
                    f.at(),
                    &f.path,
                    format!("{}, found {}", range.message(value), describe(f.node)),
                );
                Got::Invalid
            }
        }
    }

    /// A number (integer or decimal) within `range`.
    pub fn number(&self, ctx: &mut Ctx<'_>, key: &str, range: FloatRange) -> Got<f64> {
        let Some(f) = self.get(key) else {
            return Got::Absent;
        };
        let value = match f.node {
            Node::Scalar(s) => match classify(s) {
                Scalar::Int(text) => parse_int(text).map(|i| i as f64),
                Scalar::Float(v) if v.is_finite() => Some(v),
                _ => None,
            },
            _ => None,
        };
        let Some(value) = value else {
            return f.wrong(ctx, "a number");
        };
        if !range.contains(value) {
            ctx.error(
                f.at(),
                &f.path,
                format!("{}, found {}", range.message(), describe(f.node)),
            );
            return Got::Invalid;
        }
        Got::Set(f.spanned(value))
    }

    /// A unit value (CPU, memory, duration, count-or-percent), written as a string or a number.
    pub fn unit<T: FromStr<Err = UnitError>>(&self, ctx: &mut Ctx<'_>, key: &str) -> Got<T> {
        let Some(f) = self.get(key) else {
            return Got::Absent;
        };
        let text = match f.node {
            Node::Scalar(s) => match classify(s) {
                Scalar::Str(t) | Scalar::Int(t) => Some(t),
                Scalar::Float(_) => Some(s.as_str()),
                _ => None,
            },
            _ => None,
        };
        let parsed = match text {
            Some(t) => t.parse::<T>(),
            None => "".parse::<T>(),
        };
        match parsed {
            Ok(v) => Got::Set(f.spanned(v)),
            Err(e) => {
                ctx.error(f.at(), &f.path, format!("{e}, found {}", describe(f.node)));
                Got::Invalid
            }
        }
    }

    /// One of `options`, named `what` in messages (`unknown {what} "x": expected one of ...`).
    pub fn choice<T: Clone>(
        &self,
        ctx: &mut Ctx<'_>,
        key: &str,
        what: &str,
        options: &[(&str, T)],
    ) -> Got<T> {
        let Some(f) = self.get(key) else {
            return Got::Absent;
        };
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        let expected = format!("one of {}", names.join(", "));
        let Got::Set(s) = f.string(ctx) else {
            return Got::Invalid;
        };
        match options.iter().find(|(n, _)| *n == s.value) {
            Some((_, v)) => Got::Set(f.spanned(v.clone())),
            None => {
                ctx.error(
                    s.at,
                    &s.path,
                    format!("unknown {what} {}: expected {expected}", s.found),
                );
                Got::Invalid
            }
        }
    }
}

/// Of two fields, the one written later in the file (an absent one counts as earliest).
pub(crate) fn later<'a, A, B>(a: &'a Got<A>, b: &'a Got<B>) -> Later<'a, A, B> {
    match (a.set(), b.set()) {
        (Some(x), Some(y)) if x.at > y.at => Later::First(x),
        (_, Some(y)) => Later::Second(y),
        (Some(x), None) => Later::First(x),
        (None, None) => Later::Neither,
    }
}

pub(crate) enum Later<'a, A, B> {
    First(&'a Spanned<A>),
    Second(&'a Spanned<B>),
    Neither,
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: Schema = Schema {
        sections: &[
            ("", &["name", "predictor", "compute", "autoscaling"]),
            ("predictor", &["type", "path"]),
            ("compute", &["cpu", "gpu"]),
            ("autoscaling", &["min_replicas", "max_replicas"]),
        ],
        hints: &[("predictor.metadata", ", did you mean \"config\"?")],
    };

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Ep {
        Cuda,
        Cpu,
    }

    const EPS: Names<Ep> = Names {
        what: "execution provider",
        canonical: &[("cuda", Ep::Cuda), ("cpu", Ep::Cpu)],
        aliases: &[
            ("CUDAExecutionProvider", Ep::Cuda),
            ("CPUExecutionProvider", Ep::Cpu),
        ],
        ignore_case: true,
        hints: &[("gpu", "cuda")],
    };

    #[test]
    fn names_match_and_suggest() {
        assert_eq!(EPS.find("cuda"), Some(Ep::Cuda));
        assert_eq!(EPS.find("CUDA"), Some(Ep::Cuda));
        assert_eq!(EPS.find("cpuexecutionprovider"), Some(Ep::Cpu));
        assert_eq!(EPS.find("rocm"), None);
        let exact = Names {
            ignore_case: false,
            ..EPS
        };
        assert_eq!(exact.find("CUDA"), None);
        assert_eq!(exact.find("CUDAExecutionProvider"), Some(Ep::Cuda));
        assert_eq!(
            EPS.unknown_message("cudaa", "\"cudaa\""),
            "unknown execution provider \"cudaa\": expected one of cuda, cpu \
             (did you mean \"cuda\"?)"
        );
        assert_eq!(
            EPS.unknown_message("CPUExecutionProvide", "\"CPUExecutionProvide\""),
            "unknown execution provider \"CPUExecutionProvide\": expected one of cuda, cpu \
             (did you mean \"CPUExecutionProvider\"?)"
        );
        assert_eq!(
            EPS.unknown_message("GPU", "\"GPU\""),
            "unknown execution provider \"GPU\": expected one of cuda, cpu \
             (did you mean \"cuda\"?)"
        );
        assert_eq!(
            EPS.unknown_message("rocm", "\"rocm\""),
            "unknown execution provider \"rocm\": expected one of cuda, cpu"
        );
    }

    #[test]
    fn unknown_key_suggestions() {
        assert_eq!(
            SCHEMA.unknown_key_message("", "predicter"),
            "unknown field \"predicter\", did you mean \"predictor\"?"
        );
        assert_eq!(
            SCHEMA.unknown_key_message("compute", "min_replicas"),
            "unknown field \"min_replicas\", did you mean \"autoscaling.min_replicas\"?"
        );
        assert_eq!(
            SCHEMA.unknown_key_message("compute", "min_replica"),
            "unknown field \"min_replica\", did you mean \"autoscaling.min_replicas\"?"
        );
        assert_eq!(
            SCHEMA.unknown_key_message("predictor", "metadata"),
            "unknown field \"metadata\", did you mean \"config\"?"
        );
        assert_eq!(
            SCHEMA.unknown_key_message("compute", "zzz"),
            "unknown field \"zzz\", expected one of: cpu, gpu"
        );
    }
}
