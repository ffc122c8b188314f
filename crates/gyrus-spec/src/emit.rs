//! A small YAML emitter for JSON values, used by `gyrus validate` to print resolved specs:
//! block style, maps in key order, `{}` and `[]` for empty collections, and strings quoted
//! (JSON-style, which YAML accepts) whenever a plain scalar could be read back as something
//! else.

use serde_json::Value;

use crate::yaml::{classify_plain, Scalar};

/// Renders `value` as a YAML document (ending with a newline) that parses back to the same
/// value.
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(map) if !map.is_empty() => write_map(&mut out, map, 0),
        Value::Array(items) if !items.is_empty() => write_seq(&mut out, items, 0),
        other => {
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
    out
}

fn pad(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

fn write_map(out: &mut String, map: &serde_json::Map<String, Value>, indent: usize) {
    for (key, value) in map {
        pad(out, indent);
        out.push_str(&string(key));
        out.push(':');
        write_after_key(out, value, indent);
    }
}

/// A value after `key:` at `indent`: nested collections on the following lines, scalars on the
/// same line.
fn write_after_key(out: &mut String, value: &Value, indent: usize) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            out.push('\n');
            write_map(out, map, indent + 2);
        }
        Value::Array(items) if !items.is_empty() => {
            out.push('\n');
            write_seq(out, items, indent + 2);
        }
        other => {
            out.push(' ');
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
}

fn write_seq(out: &mut String, items: &[Value], indent: usize) {
    for item in items {
        match item {
            Value::Object(_) | Value::Array(_) if !is_empty_collection(item) => {
                // Render the item as a block two columns in, then put "- " over the first
                // line's indentation.
                let mut block = String::new();
                match item {
                    Value::Object(map) => write_map(&mut block, map, indent + 2),
                    Value::Array(inner) => write_seq(&mut block, inner, indent + 2),
                    _ => {}
                }
                pad(out, indent);
                out.push_str("- ");
                out.push_str(&block[indent + 2..]);
            }
            other => {
                pad(out, indent);
                out.push_str("- ");
                out.push_str(&scalar(other));
                out.push('\n');
            }
        }
    }
}

fn is_empty_collection(value: &Value) -> bool {
    match value {
        Value::Object(map) => map.is_empty(),
        Value::Array(items) => items.is_empty(),
        _ => false,
    }
}

fn scalar(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => string(s),
        Value::Object(_) => "{}".to_string(),
        Value::Array(_) => "[]".to_string(),
    }
}

/// A string, plain when that is unambiguous, else double-quoted.
fn string(s: &str) -> String {
    if is_plain_safe(s) {
        s.to_string()
    } else {
        Value::String(s.to_string()).to_string()
    }
}

/// Plain only for a conservative character set, and only when the text would not be read back
/// as null, a boolean or a number (by YAML 1.2, or by YAML 1.1 readers: yes/no/on/off).
fn is_plain_safe(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    let first_ok = first.is_ascii_alphanumeric() || matches!(first, '_' | '/' | '.');
    let rest_ok = s.chars().all(|c| {
        c.is_ascii_alphanumeric() || matches!(c, '_' | '/' | '.' | '-' | '%' | '@' | '+' | '~')
    });
    if !first_ok || !rest_ok {
        return false;
    }
    let yaml11 = matches!(
        s.to_ascii_lowercase().as_str(),
        "y" | "n" | "yes" | "no" | "on" | "off" | "true" | "false" | "null"
    );
    let number_like = s.parse::<f64>().is_ok()
        || s.starts_with("0x")
        || s.starts_with("0o")
        || s.starts_with('.') && s.len() > 1 && s[1..].to_ascii_lowercase().starts_with(['i', 'n']);
    !yaml11 && !number_like && matches!(classify_plain(s), Scalar::Str(_))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::{parse, to_json};
    use serde_json::json;

    fn round_trip(value: Value) {
        let text = to_yaml(&value);
        let node = parse(&text).unwrap_or_else(|e| panic!("{text}\n{}", e.message));
        assert_eq!(to_json(&node), value, "{text}");
    }

    #[test]
    fn emits_block_yaml() {
        let value = json!([{
            "name": "a",
            "config": {},
            "env": {"A": "1"},
            "list": [],
            "models": [{"name": "m", "model": "s3://b/m"}, {"name": "n", "model": "x.onnx"}],
            "nested": [[1, 2], []],
            "tracker": null,
        }]);
        // The workspace enables serde_json's preserve_order, so maps keep insertion order and
        // `gyrus validate` prints fields in the order the spec declares them.
        assert_eq!(
            to_yaml(&value),
            "- name: a\n  config: {}\n  env:\n    A: \"1\"\n  list: []\n  models:\n    - name: m\n      \
             model: \"s3://b/m\"\n    - name: \"n\"\n      model: x.onnx\n  nested:\n    - - 1\n      \
             - 2\n    - []\n  tracker: null\n"
        );
        round_trip(value);
    }

    #[test]
    fn quotes_ambiguous_strings() {
        for s in [
            "",
            "true",
            "no",
            "null",
            "~",
            "1",
            "1.5",
            "1e3",
            "0x1F",
            ".inf",
            "-1",
            "a: b",
            "a #b",
            "- x",
            "[x]",
            "{x}",
            "\"q\"",
            "'q'",
            " lead",
            "trail ",
            "multi\nline",
            "tab\t",
            "é",
            "*alias",
            "&anchor",
            "!tag",
            "%d",
            "@at",
            "`tick`",
            "?",
            ":",
            "NaN",
            "inf",
        ] {
            round_trip(json!({ s: s }));
            round_trip(json!([s]));
        }
        assert_eq!(string("200m"), "200m");
        assert_eq!(string("25%"), "25%");
        assert_eq!(string("predictor.py"), "predictor.py");
        assert_eq!(string("/iris"), "/iris");
        assert_eq!(string("1"), "\"1\"");
    }

    #[test]
    fn scalars_and_empties() {
        assert_eq!(to_yaml(&json!({})), "{}\n");
        assert_eq!(to_yaml(&json!([])), "[]\n");
        assert_eq!(to_yaml(&json!(3)), "3\n");
        round_trip(json!({"a": {"b": {"c": [1, 2.5, true, null, "x"]}}, "f": 10.0}));
    }
}
