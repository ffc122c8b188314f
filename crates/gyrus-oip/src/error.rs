//! The crate's one error type and the HTTP status each variant maps to. Messages are written
//! for the person who sent the request: they name the input or output, what was expected and
//! what was found, so the HTTP layer can put them in `{"error": ...}` unchanged.

use std::fmt::Write as _;

/// Everything that can go wrong while decoding a request or encoding a response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OipError {
    /// The body (or the JSON header of a binary request) is not well-formed JSON, or not JSON
    /// of the expected structure; the message carries serde_json's line and column.
    #[error("{0}")]
    Json(String),

    /// The request is well-formed JSON but breaks a rule: an unknown datatype, a shape that
    /// disagrees with the data, a value out of range, an unknown or missing input, ...
    #[error("{0}")]
    Invalid(String),

    /// The binary tensor extension's framing is wrong: `Inference-Header-Content-Length`
    /// beyond the body, a `binary_data_size` that disagrees with the shape, missing or
    /// leftover bytes, a truncated BYTES element.
    #[error("{0}")]
    Binary(String),

    /// The request asked for an output the model does not give.
    #[error("unknown output {name:?}; the model gives {}", name_list(available))]
    UnknownOutput {
        /// The name the request asked for.
        name: String,
        /// Every output the model gives, in the model's order.
        available: Vec<String>,
    },

    /// The request uses a feature of the protocol that gyrus does not implement (for example
    /// the classification extension).
    #[error("{0} is not supported")]
    Unsupported(String),

    /// `Content-Encoding` names a coding gyrus cannot decode; HTTP 415 Unsupported Media Type.
    #[error("unsupported Content-Encoding \"{0}\"; gyrus accepts gzip, deflate and identity")]
    UnsupportedEncoding(String),

    /// The body claims a supported `Content-Encoding` but is not a valid stream of it.
    #[error("the request body is not valid {encoding} data: {message}")]
    Decompress {
        /// The coding that failed (`gzip`, `deflate`).
        encoding: String,
        /// What the decompressor reported.
        message: String,
    },

    /// The (decompressed) body is larger than the server accepts; HTTP 413 Payload Too Large.
    #[error("the request body is larger than the limit of {limit} bytes once decompressed")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },

    /// An output tensor handed to an encoder is inconsistent (its data does not match its
    /// shape or dtype). This is a bug on the server side, hence HTTP 500.
    #[error("output {name:?}: {message}")]
    InvalidOutput {
        /// The output's name.
        name: String,
        /// What is wrong with it.
        message: String,
    },
}

impl OipError {
    /// The HTTP status code for this error: 415 for [`OipError::UnsupportedEncoding`], 413 for
    /// [`OipError::TooLarge`], 500 for [`OipError::InvalidOutput`] and 400 for everything else.
    pub fn status(&self) -> u16 {
        match self {
            OipError::UnsupportedEncoding(_) => 415,
            OipError::TooLarge { .. } => 413,
            OipError::InvalidOutput { .. } => 500,
            _ => 400,
        }
    }
}

/// `"a", "b"` (Debug-quoted, so odd names stay readable), or `nothing` for an empty list, so messages read well in both cases.
pub(crate) fn name_list<S: AsRef<str>>(names: &[S]) -> String {
    if names.is_empty() {
        return "nothing".to_owned();
    }
    let mut out = String::new();
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{:?}", name.as_ref());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes() {
        assert_eq!(OipError::Invalid("x".into()).status(), 400);
        assert_eq!(OipError::Json("x".into()).status(), 400);
        assert_eq!(OipError::Binary("x".into()).status(), 400);
        assert_eq!(OipError::Unsupported("x".into()).status(), 400);
        assert_eq!(
            OipError::UnknownOutput {
                name: "z".into(),
                available: vec![]
            }
            .status(),
            400
        );
        assert_eq!(
            OipError::Decompress {
                encoding: "gzip".into(),
                message: "bad".into()
            }
            .status(),
            400
        );
        assert_eq!(OipError::UnsupportedEncoding("br".into()).status(), 415);
        assert_eq!(OipError::TooLarge { limit: 1 }.status(), 413);
        assert_eq!(
            OipError::InvalidOutput {
                name: "y".into(),
                message: "m".into()
            }
            .status(),
            500
        );
    }

    #[test]
    fn unknown_output_lists_the_available_ones() {
        let e = OipError::UnknownOutput {
            name: "z".into(),
            available: vec!["a".into(), "b".into()],
        };
        assert_eq!(
            e.to_string(),
            "unknown output \"z\"; the model gives \"a\", \"b\""
        );
        let none = OipError::UnknownOutput {
            name: "z".into(),
            available: vec![],
        };
        assert_eq!(
            none.to_string(),
            "unknown output \"z\"; the model gives nothing"
        );
    }
}
