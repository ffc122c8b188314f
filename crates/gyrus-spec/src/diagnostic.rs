//! Diagnostics: a message tied to a place in a config file (file, line, column, API, field),
//! and [`SpecError`], the error that carries every diagnostic found in one file.

use std::fmt;

use serde::Serialize;

/// One problem (or warning) found in a config file.
///
/// `line` and `column` are 1-based. `api` is the name of the API the problem belongs to, when
/// known; `field` is the dotted path of the field inside that API (e.g.
/// `autoscaling.min_replicas`, `predictor.env.FOO`, `predictor.models[1].name`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub api: Option<String>,
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    /// `{file}:{line}:{column}: api "{api}": {field}: {message}`, leaving out the api and field
    /// parts when they are unknown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if let Some(api) = &self.api {
            write!(f, "api \"{api}\": ")?;
        }
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Every error found in a config file, sorted by position. Its `Display` prints one diagnostic
/// per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", join_lines(.diagnostics))]
pub struct SpecError {
    pub diagnostics: Vec<Diagnostic>,
}

impl SpecError {
    /// An error made of the given diagnostics, sorted by line and column (stable, so that
    /// diagnostics at the same place keep the order in which they were found).
    pub fn new(mut diagnostics: Vec<Diagnostic>) -> Self {
        diagnostics.sort_by_key(|d| (d.line, d.column));
        SpecError { diagnostics }
    }
}

fn join_lines(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diag(api: Option<&str>, field: Option<&str>) -> Diagnostic {
        Diagnostic {
            file: "cortex.yaml".into(),
            line: 3,
            column: 5,
            api: api.map(Into::into),
            field: field.map(Into::into),
            message: "oops".into(),
        }
    }

    #[test]
    fn display_leaves_out_unknown_parts() {
        assert_eq!(
            diag(Some("a"), Some("compute.cpu")).to_string(),
            "cortex.yaml:3:5: api \"a\": compute.cpu: oops"
        );
        assert_eq!(
            diag(None, Some("name")).to_string(),
            "cortex.yaml:3:5: name: oops"
        );
        assert_eq!(
            diag(Some("a"), None).to_string(),
            "cortex.yaml:3:5: api \"a\": oops"
        );
        assert_eq!(diag(None, None).to_string(), "cortex.yaml:3:5: oops");
    }

    #[test]
    fn spec_error_sorts_and_joins() {
        let mut late = diag(None, None);
        late.line = 9;
        let err = SpecError::new(vec![late, diag(None, None)]);
        assert_eq!(
            err.to_string(),
            "cortex.yaml:3:5: oops\ncortex.yaml:9:5: oops"
        );
    }
}
