//! The crate's one error type and its [`OipErrorKind`]. Messages are written for the person who
//! sent the request: they name the input or output, what was expected and what was found, so
//! the HTTP layer can put them in `{"error": ...}` unchanged. The kind says what sort of
//! failure it is; which status code that is belongs to the server (the replica maps kinds to
//! HTTP statuses in one place), not to the codecs.

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

    /// `Content-Encoding` names a coding gyrus cannot decode.
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

    /// The (decompressed) body is larger than the server accepts.
    #[error("the request body is larger than the limit of {limit} bytes once decompressed")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },

    /// An output tensor handed to an encoder is inconsistent (its data does not match its
    /// shape or dtype). This is a bug on the server side.
    #[error("output {name:?}: {message}")]
    InvalidOutput {
        /// The output's name.
        name: String,
        /// What is wrong with it.
        message: String,
    },
}

/// What sort of failure an [`OipError`] is, for the server to pick its status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OipErrorKind {
    /// The request is malformed or breaks a rule of the protocol, or asks for a feature gyrus
    /// does not implement: [`OipError::Json`], [`OipError::Invalid`], [`OipError::Binary`],
    /// [`OipError::UnknownOutput`], [`OipError::Unsupported`], [`OipError::Decompress`].
    InvalidRequest,
    /// The body's content coding cannot be decoded: [`OipError::UnsupportedEncoding`].
    UnsupportedEncoding,
    /// The body is larger than the server accepts: [`OipError::TooLarge`].
    TooLarge,
    /// The server handed an encoder inconsistent outputs, a server bug:
    /// [`OipError::InvalidOutput`].
    Internal,
}

impl OipError {
    /// What sort of failure this is.
    pub fn kind(&self) -> OipErrorKind {
        match self {
            OipError::Json(_)
            | OipError::Invalid(_)
            | OipError::Binary(_)
            | OipError::UnknownOutput { .. }
            | OipError::Unsupported(_)
            | OipError::Decompress { .. } => OipErrorKind::InvalidRequest,
            OipError::UnsupportedEncoding(_) => OipErrorKind::UnsupportedEncoding,
            OipError::TooLarge { .. } => OipErrorKind::TooLarge,
            OipError::InvalidOutput { .. } => OipErrorKind::Internal,
        }
    }

    /// Whether the request caused it (every kind but [`OipErrorKind::Internal`]).
    pub fn is_client_error(&self) -> bool {
        self.kind() != OipErrorKind::Internal
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
    fn kinds() {
        use OipErrorKind::*;
        assert_eq!(OipError::Invalid("x".into()).kind(), InvalidRequest);
        assert_eq!(OipError::Json("x".into()).kind(), InvalidRequest);
        assert_eq!(OipError::Binary("x".into()).kind(), InvalidRequest);
        assert_eq!(OipError::Unsupported("x".into()).kind(), InvalidRequest);
        assert_eq!(
            OipError::UnknownOutput {
                name: "z".into(),
                available: vec![]
            }
            .kind(),
            InvalidRequest
        );
        assert_eq!(
            OipError::Decompress {
                encoding: "gzip".into(),
                message: "bad".into()
            }
            .kind(),
            InvalidRequest
        );
        assert_eq!(
            OipError::UnsupportedEncoding("br".into()).kind(),
            UnsupportedEncoding
        );
        assert_eq!(OipError::TooLarge { limit: 1 }.kind(), TooLarge);
        let bug = OipError::InvalidOutput {
            name: "y".into(),
            message: "m".into(),
        };
        assert_eq!(bug.kind(), Internal);
        assert!(!bug.is_client_error());
        assert!(OipError::TooLarge { limit: 1 }.is_client_error());
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
