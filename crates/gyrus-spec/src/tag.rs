//! Model store tags (`name[:version]`, BentoML's rules) and the three kinds of model reference a
//! config may give: a store tag, a URL, or a local path. Shared by the spec (validation), the
//! store (resolution) and the CLI, so the rule is written once.

use std::fmt;

/// The rule each part of a tag must follow, quoted in errors.
pub const TAG_RULE: &str = "lowercase letters, digits, '.', '_' and '-', starting and ending with \
                            a letter or digit, at most 63 characters \
                            (^[a-z0-9]([-._a-z0-9]*[a-z0-9])?$)";

/// The URL schemes a model can be fetched from: every one of them is fetched by gyrus-remote,
/// and validation accepts exactly these (compared in lowercase).
pub const MODEL_URL_SCHEMES: &[&str] = &[
    "s3", "s3a", "gs", "az", "azure", "abfs", "abfss", "http", "https",
];

/// [`MODEL_URL_SCHEMES`] for messages: `s3://, s3a://, …, http:// and https://`.
pub fn model_url_schemes_text() -> String {
    let all: Vec<String> = MODEL_URL_SCHEMES
        .iter()
        .map(|s| format!("{s}://"))
        .collect();
    match all.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// The version that means "the newest saved".
pub const LATEST: &str = "latest";

/// `name` or `name:version`, both parts checked against [`TAG_RULE`]. `version` is `None` for
/// `name` and `name:latest` alike.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelTag {
    pub name: String,
    /// A full version or a unique prefix of one; `None` means the newest.
    pub version: Option<String>,
}

impl ModelTag {
    pub fn parse(raw: &str) -> Result<ModelTag, String> {
        let (name, version) = match raw.split_once(':') {
            Some((n, v)) => (n, Some(v)),
            None => (raw, None),
        };
        check_part("name", name, raw)?;
        let version = match version {
            None => None,
            Some(v) if v == LATEST => None,
            Some(v) => {
                check_part("version", v, raw)?;
                Some(v.to_string())
            }
        };
        Ok(ModelTag {
            name: name.to_string(),
            version,
        })
    }
}

impl fmt::Display for ModelTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}",
            self.name,
            self.version.as_deref().unwrap_or(LATEST)
        )
    }
}

/// Checks one part of a tag (a model name or a version) against [`TAG_RULE`].
pub fn check_tag_part(what: &str, part: &str) -> Result<(), String> {
    check_part(what, part, part)
}

fn check_part(what: &str, part: &str, whole: &str) -> Result<(), String> {
    let bytes = part.as_bytes();
    let edge = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let ok = !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.first().is_some_and(edge)
        && bytes.last().is_some_and(edge)
        && bytes
            .iter()
            .all(|b| edge(b) || matches!(b, b'-' | b'.' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid model tag {whole:?}: the {what} {part:?} must be {TAG_RULE}"
        ))
    }
}

/// What a `model:` value (or an entry of `models`) points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelRef {
    /// `scheme://...`: fetched from object storage or HTTP.
    Url(String),
    /// `name:version` or `name:latest`: a model in the local store.
    Tag(ModelTag),
    /// Anything else: a path, relative to the project directory or absolute.
    Path(String),
}

impl ModelRef {
    /// Classifies a reference. A value with a `:` and no `/` (like `iris:latest` or
    /// `iris:1a2b`) is a store tag and must follow the tag rule; write `./name:x` for a local
    /// file whose name has a colon. A bare name (`iris`) stays a path, as Cortex read it.
    pub fn parse(raw: &str) -> Result<ModelRef, String> {
        if raw.contains("://") {
            return Ok(ModelRef::Url(raw.to_string()));
        }
        if raw.contains(':') && !raw.contains('/') && !raw.contains('\\') && !raw.starts_with('.') {
            return ModelTag::parse(raw).map(ModelRef::Tag);
        }
        Ok(ModelRef::Path(raw.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags() {
        let t = ModelTag::parse("iris").unwrap();
        assert_eq!((t.name.as_str(), t.version), ("iris", None));
        assert_eq!(ModelTag::parse("iris:latest").unwrap().version, None);
        assert_eq!(
            ModelTag::parse("iris:1a2b").unwrap().version.as_deref(),
            Some("1a2b")
        );
        assert_eq!(
            ModelTag::parse("iris:1a2b").unwrap().to_string(),
            "iris:1a2b"
        );
        assert_eq!(ModelTag::parse("iris").unwrap().to_string(), "iris:latest");
        for ok in ["a", "a.b_c-d", "0", "resnet50", &"a".repeat(63)] {
            assert!(ModelTag::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Iris",
            "-a",
            "a-",
            "a b",
            "a:",
            ":v",
            "a:B",
            "a:v:w",
            "é",
            &"a".repeat(64),
        ] {
            let err = ModelTag::parse(bad).unwrap_err();
            assert!(
                err.contains("^[a-z0-9]([-._a-z0-9]*[a-z0-9])?$"),
                "{bad}: {err}"
            );
        }
        assert_eq!(
            ModelTag::parse("Iris:latest").unwrap_err(),
            format!("invalid model tag \"Iris:latest\": the name \"Iris\" must be {TAG_RULE}")
        );
    }

    #[test]
    fn references() {
        assert_eq!(
            ModelRef::parse("s3://b/k.onnx").unwrap(),
            ModelRef::Url("s3://b/k.onnx".into())
        );
        assert!(matches!(
            ModelRef::parse("iris:latest").unwrap(),
            ModelRef::Tag(_)
        ));
        assert!(ModelRef::parse("Iris:latest").is_err());
        for path in [
            "iris",
            "model.onnx",
            "./a:b.onnx",
            "models/a:b",
            "/abs/m.onnx",
        ] {
            assert_eq!(ModelRef::parse(path).unwrap(), ModelRef::Path(path.into()));
        }
    }
}
