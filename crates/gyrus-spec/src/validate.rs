//! Validation rules that are not about YAML shapes: API and model names, endpoints (syntax and
//! reserved paths), environment variable names, and the project paths a predictor names
//! (relative, inside the project, existing when the project directory is known).

use std::path::{Component, Path};

use crate::yaml::quote;

/// At most 63 characters, `^[a-z]([-a-z0-9]*[a-z0-9])?$`.
pub(crate) fn api_name(name: &str) -> Result<(), String> {
    let bytes = name.as_bytes();
    let ok = matches!(bytes.first(), Some(b'a'..=b'z'))
        && bytes
            .iter()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'))
        && !name.ends_with('-');
    if !ok {
        return Err(format!(
            "must contain only lowercase letters, digits and '-', start with a letter and end \
             with a letter or digit, found {}",
            quote(name)
        ));
    }
    if name.len() > 63 {
        return Err(format!(
            "must be at most 63 characters, found {} ({} characters)",
            quote(name),
            name.len()
        ));
    }
    Ok(())
}

/// Model names become part of URLs (`/v2/models/<name>`): letters, digits, `.`, `_`, `-`, not
/// starting with `.`.
pub(crate) fn model_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "must contain only letters, digits, '.', '_' and '-', and not start with '.', found {}",
            quote(name)
        ))
    }
}

/// `^[A-Za-z_][A-Za-z0-9_]*$`
pub(crate) fn env_name(name: &str) -> Result<(), String> {
    let bytes = name.as_bytes();
    let ok = matches!(bytes.first(), Some(b'A'..=b'Z' | b'a'..=b'z' | b'_'))
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid environment variable name {}: it must start with a letter or '_' and \
             contain only letters, digits and '_'",
            quote(name)
        ))
    }
}

/// What the endpoint must not be, with the reason.
pub(crate) fn reserved_endpoint(endpoint: &str) -> Option<&'static str> {
    let under = |prefix: &str| {
        endpoint == prefix
            || endpoint
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('/'))
    };
    if under("/_gyrus") {
        Some("gyrus's control API")
    } else if under("/v2") {
        Some("the Open Inference Protocol")
    } else if endpoint == "/metrics" {
        Some("metrics")
    } else {
        None
    }
}

/// Syntax and reserved paths of an endpoint written in the file.
pub(crate) fn endpoint(endpoint: &str) -> Result<(), String> {
    if !endpoint.starts_with('/') {
        return Err(format!("must start with \"/\", found {}", quote(endpoint)));
    }
    if !endpoint
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'/' | b'-'))
    {
        return Err(format!(
            "may only contain letters, digits and . _ ~ / -, found {}",
            quote(endpoint)
        ));
    }
    if endpoint.contains("//") {
        return Err(format!(
            "must not contain \"//\", found {}",
            quote(endpoint)
        ));
    }
    if endpoint.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(format!(
            "must not contain \".\" or \"..\" segments, found {}",
            quote(endpoint)
        ));
    }
    if let Some(what) = reserved_endpoint(endpoint) {
        return Err(format!("{} is reserved for {what}", quote(endpoint)));
    }
    Ok(())
}

/// What a path must name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    File,
    Dir,
    /// A model: a file or a directory.
    Model,
}

impl Need {
    fn noun(self) -> &'static str {
        match self {
            Need::File => "file",
            Need::Dir => "directory",
            Need::Model => "model",
        }
    }

    fn matches(self, path: &Path) -> bool {
        match self {
            Need::File => path.is_file(),
            Need::Dir => path.is_dir(),
            Need::Model => path.exists(),
        }
    }
}

fn exists_as(need: Need, full: &Path, raw: &str, place: &str) -> Result<(), String> {
    if need.matches(full) {
        return Ok(());
    }
    if full.exists() {
        let is = if full.is_dir() {
            "a directory"
        } else {
            "not a directory"
        };
        return Err(format!(
            "{} is {is}, expected a {}",
            quote(raw),
            need.noun()
        ));
    }
    Err(format!(
        "{} {} does not exist{place}",
        need.noun(),
        quote(raw)
    ))
}

/// A path inside the project: relative, not escaping it with `..`, and (when the project
/// directory is known) existing as `need`, without a link leading outside the project.
pub(crate) fn project_path(
    raw: &str,
    need: Need,
    project_dir: Option<&Path>,
) -> Result<(), String> {
    if raw.is_empty() {
        return Err("must not be empty".to_string());
    }
    let mut depth = 0usize;
    for component in Path::new(raw).components() {
        match component {
            Component::Prefix(_) | Component::RootDir => {
                return Err(format!(
                    "must be a path relative to the project directory, found {}",
                    quote(raw)
                ));
            }
            Component::CurDir => {}
            Component::ParentDir => {
                depth = depth.checked_sub(1).ok_or_else(|| {
                    format!(
                        "must stay inside the project directory, found {}",
                        quote(raw)
                    )
                })?;
            }
            Component::Normal(_) => depth += 1,
        }
    }
    let Some(dir) = project_dir else {
        return Ok(());
    };
    let full = dir.join(raw);
    exists_as(need, &full, raw, " in the project directory")?;
    if let (Ok(real), Ok(root)) = (full.canonicalize(), dir.canonicalize()) {
        if !real.starts_with(&root) {
            return Err(format!(
                "{} leads outside the project directory (through a symbolic link)",
                quote(raw)
            ));
        }
    }
    Ok(())
}

/// A model location: a URL, a model store tag (`iris:latest`; whether the store has it is
/// checked at deploy), or a local path (relative to the project, or absolute) that must exist as
/// `need` when the project directory is known.
pub(crate) fn model_location(
    raw: &str,
    need: Need,
    project_dir: Option<&Path>,
) -> Result<(), String> {
    if raw.is_empty() {
        return Err("must not be empty".to_string());
    }
    match crate::tag::ModelRef::parse(raw)? {
        crate::tag::ModelRef::Url(url) => url_syntax(&url),
        crate::tag::ModelRef::Tag(_) if need == Need::Dir => Err(format!(
            "a model store tag can't be a directory of models, found {}; list store models \
             under models.paths",
            quote(raw)
        )),
        crate::tag::ModelRef::Tag(_) => Ok(()),
        crate::tag::ModelRef::Path(_) => {
            let Some(dir) = project_dir else {
                return Ok(());
            };
            let path = Path::new(raw);
            let found = if path.is_absolute() {
                exists_as(need, path, raw, "")
            } else {
                exists_as(need, &dir.join(path), raw, " in the project directory")
            };
            // `model: iris` may mean the store's iris; say how to write that.
            found.map_err(|e| match crate::tag::ModelTag::parse(raw) {
                Ok(_) if need == Need::Model => {
                    format!("{e}; for a model in the store, write {raw}:latest")
                }
                _ => e,
            })
        }
    }
}

fn url_syntax(raw: &str) -> Result<(), String> {
    let Some((scheme, rest)) = raw.split_once("://") else {
        return Ok(());
    };
    let scheme_ok = scheme
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'.' | b'-'));
    if !scheme_ok || rest.is_empty() {
        return Err(format!(
            "expected a URL like s3://bucket/path or a local path, found {}",
            quote(raw)
        ));
    }
    if !crate::tag::MODEL_URL_SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()) {
        return Err(format!(
            "unsupported URL scheme {}: models can come from {} URLs",
            quote(scheme),
            crate::tag::model_url_schemes_text()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_names() {
        for ok in ["a", "iris-classifier", "a1", "x-2-y"] {
            assert!(api_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1a", "A", "a_b", "a-", "-a", "a.b", "über"] {
            assert!(api_name(bad).is_err(), "{bad}");
        }
        assert!(api_name(&"a".repeat(63)).is_ok());
        assert!(api_name(&"a".repeat(64)).is_err());
    }

    #[test]
    fn endpoints() {
        for ok in [
            "/",
            "/a",
            "/a/b",
            "/v1/predict",
            "/A.b_c~d-e",
            "/v20",
            "/_gyrusx",
        ] {
            assert!(endpoint(ok).is_ok(), "{ok}");
        }
        for bad in [
            "a",
            "/a b",
            "/a//b",
            "/_gyrus",
            "/_gyrus/v1",
            "/v2",
            "/v2/models",
            "/metrics",
            "/a/../b",
            "/a?x",
        ] {
            assert!(endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn env_names() {
        assert!(env_name("FOO_1").is_ok());
        assert!(env_name("_x").is_ok());
        assert!(env_name("1FOO").is_err());
        assert!(env_name("FOO-BAR").is_err());
        assert!(env_name("").is_err());
    }

    #[test]
    fn project_paths_stay_inside() {
        assert!(project_path("a/../b.py", Need::File, None).is_ok());
        assert!(project_path("../b.py", Need::File, None).is_err());
        assert!(project_path("a/../../b.py", Need::File, None).is_err());
        assert!(project_path("/etc/passwd", Need::File, None).is_err());
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        assert!(project_path("Cargo.toml", Need::File, Some(dir)).is_ok());
        assert!(project_path("src", Need::Dir, Some(dir)).is_ok());
        assert_eq!(
            project_path("src", Need::File, Some(dir)).unwrap_err(),
            "\"src\" is a directory, expected a file"
        );
        assert_eq!(
            project_path("nope.py", Need::File, Some(dir)).unwrap_err(),
            "file \"nope.py\" does not exist in the project directory"
        );
    }

    #[test]
    fn model_locations() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        assert!(model_location("s3://bucket/model.onnx", Need::Model, Some(dir)).is_ok());
        assert!(model_location("https://x.y/m.onnx", Need::Model, Some(dir)).is_ok());
        assert!(model_location("://x", Need::Model, Some(dir)).is_err());
        let ftp = model_location("ftp://x/m.onnx", Need::Model, Some(dir)).unwrap_err();
        assert_eq!(
            ftp,
            "unsupported URL scheme \"ftp\": models can come from s3://, s3a://, gs://, az://, \
             azure://, abfs://, abfss://, http:// and https:// URLs"
        );
        // Every scheme gyrus-remote fetches passes, in any case.
        for scheme in crate::tag::MODEL_URL_SCHEMES {
            let url = format!("{}://container/m.onnx", scheme.to_ascii_uppercase());
            assert!(
                model_location(&url, Need::Model, Some(dir)).is_ok(),
                "{url}"
            );
        }
        assert!(model_location("iris:latest", Need::Model, Some(dir)).is_ok());
        assert!(model_location("iris:latest", Need::Dir, Some(dir)).is_err());
        assert!(model_location("Iris:latest", Need::Model, Some(dir)).is_err());
        assert!(model_location("iris", Need::Model, Some(dir))
            .unwrap_err()
            .ends_with("; for a model in the store, write iris:latest"));
        assert!(model_location("Cargo.toml", Need::Model, Some(dir)).is_ok());
        assert!(model_location("missing.onnx", Need::Model, Some(dir)).is_err());
        assert!(model_location("missing.onnx", Need::Model, None).is_ok());
        let abs = dir.join("Cargo.toml");
        assert!(model_location(&abs.to_string_lossy(), Need::Model, Some(dir)).is_ok());
    }
}
