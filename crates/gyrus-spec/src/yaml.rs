//! Reading marked-yaml nodes: parsing a file into a node tree (with YAML errors turned into
//! messages), positions, YAML 1.2 core-schema typing of scalars (quoted scalars are always
//! strings), describing a found value for error messages, and converting a node to JSON.

use marked_yaml::types::{MarkedScalarNode, Span};
use marked_yaml::{LoadError, LoaderOptions, Node};

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    pub const START: Pos = Pos { line: 1, column: 1 };
}

pub(crate) fn span_pos(span: &Span) -> Pos {
    span.start().map_or(Pos::START, |m| Pos {
        line: m.line(),
        column: m.column(),
    })
}

/// Where a node starts. marked-yaml places a block mapping just after its first key's first
/// character, so a mapping is placed at its first key when that comes earlier.
pub(crate) fn node_pos(node: &Node) -> Pos {
    let own = span_pos(node.span());
    match node {
        Node::Mapping(m) => m.keys().next().map_or(own, |k| own.min(span_pos(k.span()))),
        _ => own,
    }
}

/// A problem found while parsing: where, and what. `syntax` is false for a well-formed
/// document whose top level is a single value instead of a list of APIs.
#[derive(Debug)]
pub(crate) struct YamlError {
    pub pos: Pos,
    pub message: String,
    pub syntax: bool,
}

/// Parses the file's single document. The top level may be a sequence or a mapping; a scalar
/// at the top level is returned as an error.
pub(crate) fn parse(text: &str) -> Result<Node, YamlError> {
    let options = || {
        LoaderOptions::default()
            .prevent_coercion(true)
            .error_on_duplicate_keys(true)
    };
    match marked_yaml::parse_yaml_with_options(0, text, options().toplevel_sequence()) {
        Err(LoadError::TopLevelMustBeSequence(_)) => {
            marked_yaml::parse_yaml_with_options(0, text, options().toplevel_mapping())
                .map_err(load_error)
        }
        other => other.map_err(load_error),
    }
}

/// Where a second YAML document starts (a `---` line after content), if the text has one: only
/// the first document would be read, so the loader rejects the file instead.
pub(crate) fn second_document(text: &str) -> Option<Pos> {
    let mut seen_content = false;
    for (i, line) in text.lines().enumerate() {
        let is_marker = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        if is_marker && seen_content {
            return Some(Pos {
                line: i + 1,
                column: 1,
            });
        }
        let trimmed = line.trim();
        let is_directive = !seen_content && line.starts_with('%');
        if !is_marker && !is_directive && !trimmed.is_empty() && !trimmed.starts_with('#') {
            seen_content = true;
        }
    }
    None
}

fn marker_pos(m: &marked_yaml::Marker) -> Pos {
    Pos {
        line: m.line(),
        column: m.column(),
    }
}

fn load_error(e: LoadError) -> YamlError {
    let (pos, message) = match &e {
        LoadError::ScanError(m, scan) => (marker_pos(m), scan.info().to_string()),
        LoadError::TopLevelMustBeMapping(m) | LoadError::TopLevelMustBeSequence(m) => (
            marker_pos(m),
            "expected a list of APIs, found a single value".to_string(),
        ),
        LoadError::UnexpectedAnchor(m) => (
            marker_pos(m),
            "anchors and aliases (&name, *name) are not supported".to_string(),
        ),
        LoadError::MappingKeyMustBeScalar(m) => (
            marker_pos(m),
            "mapping keys must be plain values, not lists or mappings".to_string(),
        ),
        LoadError::UnexpectedTag(m) => (
            marker_pos(m),
            "tags (like !!str) are not supported".to_string(),
        ),
        LoadError::DuplicateKey(inner) => (
            span_pos(inner.key.span()),
            format!(
                "duplicate key \"{}\" (first defined at line {})",
                inner.key.as_str(),
                span_pos(inner.prev_key.span()).line
            ),
        ),
    };
    let syntax = !matches!(
        e,
        LoadError::TopLevelMustBeMapping(_) | LoadError::TopLevelMustBeSequence(_)
    );
    YamlError {
        pos,
        message,
        syntax,
    }
}

/// The type of a scalar under the YAML 1.2 core schema.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Scalar<'a> {
    Null,
    Bool(bool),
    /// An integer, as written (decimal, `0x…`, `0o…`), not yet range-checked.
    Int(&'a str),
    Float(f64),
    Str(&'a str),
}

pub(crate) fn classify(s: &MarkedScalarNode) -> Scalar<'_> {
    let text = s.as_str();
    if !s.may_coerce() {
        return Scalar::Str(text);
    }
    classify_plain(text)
}

/// Types the text of a plain (unquoted) scalar.
pub(crate) fn classify_plain(text: &str) -> Scalar<'_> {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Scalar::Null,
        "true" | "True" | "TRUE" => return Scalar::Bool(true),
        "false" | "False" | "FALSE" => return Scalar::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Scalar::Float(f64::INFINITY)
        }
        "-.inf" | "-.Inf" | "-.INF" => return Scalar::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Scalar::Float(f64::NAN),
        _ => {}
    }
    if parse_int(text).is_some() || is_int_syntax(text) {
        return Scalar::Int(text);
    }
    if is_float_syntax(text) {
        if let Ok(f) = text.parse::<f64>() {
            return Scalar::Float(f);
        }
    }
    Scalar::Str(text)
}

fn is_int_syntax(text: &str) -> bool {
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// `[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`
fn is_float_syntax(text: &str) -> bool {
    let body = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (mantissa, exp) = match body.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e)),
        None => (body, None),
    };
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        Some((int, frac)) => digits(int) && digits(frac) && (!int.is_empty() || !frac.is_empty()),
        None => !mantissa.is_empty() && digits(mantissa),
    };
    let exp_ok = exp.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && digits(e)
    });
    mantissa_ok && exp_ok
}

/// The value of an integer scalar (`12`, `-3`, `0x1F`, `0o17`), if it fits in an i128.
pub(crate) fn parse_int(text: &str) -> Option<i128> {
    if let Some(hex) = text.strip_prefix("0x") {
        return i128::from_str_radix(hex, 16)
            .ok()
            .filter(|_| !hex.starts_with(['+', '-']));
    }
    if let Some(oct) = text.strip_prefix("0o") {
        return i128::from_str_radix(oct, 8)
            .ok()
            .filter(|_| !oct.starts_with(['+', '-']));
    }
    if is_int_syntax(text) {
        return text.parse().ok();
    }
    None
}

/// How a found value is shown in messages: strings quoted, other scalars as written,
/// `a mapping` / `a list` for collections.
pub(crate) fn describe(node: &Node) -> String {
    match node {
        Node::Mapping(_) => "a mapping".to_string(),
        Node::Sequence(_) => "a list".to_string(),
        Node::Scalar(s) => match classify(s) {
            Scalar::Null => "null".to_string(),
            Scalar::Str(text) => quote(text),
            _ => s.as_str().to_string(),
        },
    }
}

/// A string in double quotes with JSON escapes, shortened when very long.
pub(crate) fn quote(text: &str) -> String {
    const MAX: usize = 80;
    if text.chars().count() > MAX {
        let short: String = text.chars().take(MAX).collect();
        let quoted = serde_json::Value::String(short).to_string();
        format!("{}...\"", &quoted[..quoted.len() - 1])
    } else {
        serde_json::Value::String(text.to_string()).to_string()
    }
}

/// The JSON value of a node: scalars typed by the core schema (quoted scalars stay strings;
/// infinities and NaN, which JSON cannot hold, stay as written), mappings keyed by their keys'
/// text.
pub(crate) fn to_json(node: &Node) -> serde_json::Value {
    use serde_json::Value;
    match node {
        Node::Mapping(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.as_str().to_string(), to_json(v)))
                .collect(),
        ),
        Node::Sequence(s) => Value::Array(s.iter().map(to_json).collect()),
        Node::Scalar(s) => match classify(s) {
            Scalar::Null => Value::Null,
            Scalar::Bool(b) => Value::Bool(b),
            Scalar::Int(text) => match parse_int(text) {
                Some(i) => i64::try_from(i)
                    .map(Value::from)
                    .or_else(|_| u64::try_from(i).map(Value::from))
                    .unwrap_or_else(|_| float_or_text(i as f64, text)),
                None => Value::String(text.to_string()),
            },
            Scalar::Float(f) => float_or_text(f, s.as_str()),
            Scalar::Str(text) => Value::String(text.to_string()),
        },
    }
}

fn float_or_text(f: f64, text: &str) -> serde_json::Value {
    serde_json::Number::from_f64(f)
        .map(serde_json::Value::Number)
        .unwrap_or_else(|| serde_json::Value::String(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_scalars_are_typed() {
        assert_eq!(classify_plain(""), Scalar::Null);
        assert_eq!(classify_plain("~"), Scalar::Null);
        assert_eq!(classify_plain("True"), Scalar::Bool(true));
        assert_eq!(classify_plain("yes"), Scalar::Str("yes"));
        assert_eq!(classify_plain("12"), Scalar::Int("12"));
        assert_eq!(classify_plain("-12"), Scalar::Int("-12"));
        assert_eq!(classify_plain("0x1F"), Scalar::Int("0x1F"));
        assert_eq!(classify_plain("1.5"), Scalar::Float(1.5));
        assert_eq!(classify_plain("1e3"), Scalar::Float(1000.0));
        assert_eq!(classify_plain(".5"), Scalar::Float(0.5));
        assert_eq!(classify_plain("200m"), Scalar::Str("200m"));
        assert_eq!(classify_plain("1.2.3"), Scalar::Str("1.2.3"));
        assert_eq!(classify_plain("."), Scalar::Str("."));
        assert_eq!(classify_plain("25%"), Scalar::Str("25%"));
    }

    #[test]
    fn quoted_scalars_are_strings() {
        let node = parse("- a: \"5\"\n  b: 5\n").unwrap();
        let item = node.as_sequence().unwrap().first().unwrap();
        let map = item.as_mapping().unwrap();
        assert_eq!(describe(map.get_node("a").unwrap()), "\"5\"");
        assert_eq!(describe(map.get_node("b").unwrap()), "5");
        assert_eq!(to_json(item), serde_json::json!({"a": "5", "b": 5}));
    }

    #[test]
    fn positions_are_one_based() {
        let node = parse("- name: a\n  predictor:\n    type: python\n").unwrap();
        let item = node.as_sequence().unwrap().first().unwrap();
        assert_eq!(node_pos(item), Pos { line: 1, column: 3 });
        let predictor = item.as_mapping().unwrap().get_node("predictor").unwrap();
        assert_eq!(node_pos(predictor), Pos { line: 3, column: 5 });
    }

    #[test]
    fn yaml_errors_have_positions() {
        let err = parse("- name: a\n  b: [1, 2\n").unwrap_err();
        assert_eq!(err.pos.line, 3);
        let err = parse("- a: 1\n  a: 2\n").unwrap_err();
        assert_eq!(err.pos, Pos { line: 2, column: 3 });
        assert_eq!(err.message, "duplicate key \"a\" (first defined at line 1)");
        assert!(parse("name: a\n").unwrap().as_mapping().is_some());
    }

    #[test]
    fn second_documents_are_found() {
        assert_eq!(second_document("---\n- a: 1\n"), None);
        assert_eq!(second_document("# c\n---\n- a: 1\n"), None);
        assert_eq!(
            second_document("- a: 1\n---\n- b: 2\n"),
            Some(Pos { line: 2, column: 1 })
        );
        assert_eq!(second_document("- a: |\n    ---\n"), None);
        assert_eq!(second_document("%YAML 1.2\n---\n- a: 1\n"), None);
    }
}
