//! The failure classes of a fetch, and the reading of object_store's errors into them.
//!
//! object_store's own messages carry the whole request ("Error performing HEAD http://… in
//! 1.2ms - Server returned non-2xx status code: 403 Forbidden: <?xml…") and hide the reason a
//! user can act on; the classes here name the URL and say what to do.

use std::path::PathBuf;

use object_store::client::{HttpError, HttpErrorKind};

use crate::location::{Remote, Scheme, Target};

/// Why a fetch failed. Every message names the URL.
#[derive(thiserror::Error, Debug)]
pub enum FetchError {
    /// Not a URL this crate can fetch (bad syntax, unsupported scheme, no bucket).
    #[error("cannot fetch \"{url}\": {reason}")]
    BadUrl { url: String, reason: String },

    /// The user's configuration cannot be used: an unreadable AWS profile file, a bad endpoint,
    /// an option object_store rejects.
    #[error("cannot fetch {url}: {detail}")]
    BadConfig { url: String, detail: String },

    /// No way to authenticate was given, so no request was made.
    #[error("no credentials to fetch {url}: {hint}")]
    NoCredentials { url: String, hint: String },

    /// The server refused the credentials (401/403).
    #[error("access denied to {url} by {endpoint}: {detail}")]
    AccessDenied {
        url: String,
        endpoint: String,
        detail: String,
    },

    #[error("no such {} \"{bucket}\" at {endpoint} (fetching {url})", holder(.url))]
    NoSuchBucket {
        url: String,
        bucket: String,
        endpoint: String,
    },

    #[error(
        "no such key \"{key}\" in {} \"{bucket}\": {url} is neither an object nor a prefix of one",
        holder(.url)
    )]
    NoSuchKey {
        url: String,
        bucket: String,
        key: String,
    },

    /// An HTTP(S) URL answered 404 (HTTP has no listing, so there is no bucket/key split).
    #[error("not found: {url} answered 404 Not Found")]
    NotFound { url: String },

    /// A key under a prefix that cannot become a path below the download directory.
    #[error("{url} holds an object whose key cannot be a local file path: {detail}")]
    UnsafeKey { url: String, detail: String },

    /// No connection could be made (refused, timed out, no such host, no answer).
    #[error("cannot reach {endpoint} to fetch {url}: {reason}")]
    Unreachable {
        url: String,
        endpoint: String,
        reason: String,
    },

    /// The server answered with an error this crate has no better class for (5xx, 400, …).
    #[error("{endpoint} failed to serve {url}: {detail}")]
    Remote {
        url: String,
        endpoint: String,
        detail: String,
    },

    /// The body ended (or broke off) before the announced size, or went past it.
    #[error(
        "incomplete download of {url}: got {got} of {expected} bytes ({reason}); nothing was cached, try again"
    )]
    Incomplete {
        url: String,
        got: u64,
        expected: u64,
        reason: String,
    },

    /// The object's ETag changed between looking it up and downloading it.
    #[error(
        "{url} changed on the server while it was being downloaded; nothing was cached, try again"
    )]
    Changed { url: String },

    #[error(
        "checksum mismatch for {url}: expected md5 {expected}, got {actual} (the download was corrupted; try again)"
    )]
    ChecksumMismatch {
        url: String,
        expected: String,
        actual: String,
    },

    /// An object read whole into memory (a job's JSON-lines file) is larger than allowed.
    #[error("{url} is {size} bytes, over the limit of {limit} bytes for one file")]
    TooLarge { url: String, size: u64, limit: u64 },

    /// The local side failed: creating, writing, syncing or renaming cache files.
    #[error("cannot store the download of {url} in {}: {source}", path.display())]
    Io {
        url: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl FetchError {
    /// True when retrying the same request cannot help: the URL, the configuration or the
    /// credentials must change (or the object must be created). Network, checksum and local
    /// I/O failures are not client errors.
    pub fn is_client_error(&self) -> bool {
        match self {
            FetchError::BadUrl { .. }
            | FetchError::BadConfig { .. }
            | FetchError::NoCredentials { .. }
            | FetchError::AccessDenied { .. }
            | FetchError::NoSuchBucket { .. }
            | FetchError::NoSuchKey { .. }
            | FetchError::NotFound { .. }
            | FetchError::UnsafeKey { .. }
            | FetchError::TooLarge { .. } => true,
            FetchError::Unreachable { .. }
            | FetchError::Remote { .. }
            | FetchError::Incomplete { .. }
            | FetchError::Changed { .. }
            | FetchError::ChecksumMismatch { .. }
            | FetchError::Io { .. } => false,
        }
    }
}

/// What an object_store error means, independent of the URL.
#[derive(Debug)]
pub(crate) enum Class {
    /// 404; `code` is the S3 error code from the body when there is one (`NoSuchBucket`).
    NotFound { code: Option<String> },
    /// 401/403 with the S3 error code and message when the body had them.
    Denied {
        code: Option<String>,
        message: Option<String>,
    },
    /// Could not connect (or the connection attempt timed out).
    Unreachable { reason: String },
    /// The connection broke while a body was being read.
    Interrupted { reason: String },
    /// A listing held a key that is not a valid path.
    InvalidPath { detail: String },
    /// Anything else, summarised.
    Other { detail: String },
}

impl Class {
    /// A few words for use inside another message.
    pub(crate) fn summary(&self) -> String {
        match self {
            Class::NotFound { code } => code.clone().unwrap_or_else(|| "HTTP 404".to_string()),
            Class::Denied { code, .. } => code.clone().unwrap_or_else(|| "HTTP 403".to_string()),
            Class::Unreachable { reason }
            | Class::Interrupted { reason }
            | Class::InvalidPath { detail: reason }
            | Class::Other { detail: reason } => reason.clone(),
        }
    }
}

/// Reads an object_store error. The variants carry the HTTP status for single-object requests,
/// but list requests come back as `Generic` with the status only in the text, and transport
/// failures only in the source chain, so all three are consulted.
pub(crate) fn classify(err: &object_store::Error) -> Class {
    let text = err.to_string();
    let code = xml_tag(&text, "Code");
    let message = xml_tag(&text, "Message");
    match err {
        object_store::Error::NotFound { .. } => return Class::NotFound { code },
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => return Class::Denied { code, message },
        object_store::Error::InvalidPath { source } => {
            return Class::InvalidPath {
                detail: source.to_string(),
            }
        }
        _ => {}
    }
    if let Some(http) = find_source::<HttpError>(err) {
        match http.kind() {
            HttpErrorKind::Connect | HttpErrorKind::Timeout => {
                return Class::Unreachable {
                    reason: transport_reason(err),
                }
            }
            HttpErrorKind::Interrupted | HttpErrorKind::Request | HttpErrorKind::Decode => {
                return Class::Interrupted {
                    reason: transport_reason(err),
                }
            }
            _ => {}
        }
    }
    match status_in(&text) {
        Some(404) => Class::NotFound { code },
        Some(401 | 403) => Class::Denied { code, message },
        Some(status) => Class::Other {
            detail: match (code, message) {
                (Some(code), Some(message)) => format!("HTTP {status}, {code}: {message}"),
                (Some(code), None) => format!("HTTP {status}, {code}"),
                _ => format!("HTTP {status}"),
            },
        },
        None => Class::Other {
            detail: innermost(err),
        },
    }
}

/// Which request failed: a 404 means a missing bucket only for a listing (listing a prefix
/// nothing is under answers an empty list, not 404).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    Lookup,
    List,
    Download,
}

/// The `FetchError` for an object_store error met while fetching `target` from `remote`.
/// What holds the objects at `url`: Azure calls it a container, S3 and GCS a bucket.
fn holder(url: &str) -> &'static str {
    let scheme = url.split("://").next().unwrap_or("").to_ascii_lowercase();
    match scheme.as_str() {
        "az" | "azure" | "abfs" | "abfss" => "container",
        _ => "bucket",
    }
}

pub(crate) fn from_store(
    target: &Target,
    remote: &Remote,
    step: Step,
    err: &object_store::Error,
) -> FetchError {
    tracing::debug!(url = %target.url, ?step, error = %err, "object store error");
    let url = target.url.clone();
    match classify(err) {
        Class::NotFound { .. } if target.scheme == Scheme::Http => FetchError::NotFound { url },
        Class::NotFound { code } => {
            let missing_bucket = step == Step::List
                || matches!(code.as_deref(), Some("NoSuchBucket" | "ContainerNotFound"));
            if missing_bucket {
                FetchError::NoSuchBucket {
                    url,
                    bucket: target.bucket.clone(),
                    endpoint: remote.endpoint.clone(),
                }
            } else {
                FetchError::NoSuchKey {
                    url,
                    bucket: target.bucket.clone(),
                    key: target.key.clone(),
                }
            }
        }
        Class::Denied { code, message } => FetchError::AccessDenied {
            url,
            endpoint: remote.endpoint.clone(),
            detail: denied_detail(target, remote, code.as_deref(), message.as_deref()),
        },
        Class::Unreachable { reason } | Class::Interrupted { reason } => FetchError::Unreachable {
            url,
            endpoint: remote.endpoint.clone(),
            reason,
        },
        Class::InvalidPath { detail } => FetchError::UnsafeKey { url, detail },
        Class::Other { detail } if detail.contains("URL scheme is not allowed") => {
            FetchError::BadConfig {
                url,
                detail: format!(
                    "the endpoint (set in a credentials file) is plain http://, which is refused \
                     unless allowed: set {}_ALLOW_HTTP=true",
                    match target.scheme {
                        Scheme::Gcs => "GOOGLE",
                        Scheme::Azure => "AZURE",
                        _ => "AWS",
                    }
                ),
            }
        }
        Class::Other { detail } => FetchError::Remote {
            url,
            endpoint: remote.endpoint.clone(),
            detail,
        },
    }
}

/// What a 401/403 most likely means, with what to change. The S3 error code is the useful part:
/// a wrong secret key and an unknown key ID read the same as a missing permission otherwise.
fn denied_detail(
    target: &Target,
    remote: &Remote,
    code: Option<&str>,
    message: Option<&str>,
) -> String {
    let key_id = remote.access_key_id.as_deref().unwrap_or("?");
    let with_message = |code: &str| match message {
        Some(message) => format!("{code}: {message}"),
        None => code.to_string(),
    };
    if target.scheme != Scheme::S3 {
        return match code {
            Some(code) => format!("the credentials were refused ({})", with_message(code)),
            None => "the credentials were refused (HTTP 401/403)".to_string(),
        };
    }
    match code {
        Some("SignatureDoesNotMatch") => format!(
            "the secret key does not match the access key ID \"{key_id}\" \
             (SignatureDoesNotMatch); check AWS_SECRET_ACCESS_KEY or the profile's \
             aws_secret_access_key"
        ),
        // s3s and some other S3-compatible servers answer an unknown key ID with NotSignedUp.
        Some(code @ ("InvalidAccessKeyId" | "NotSignedUp")) => format!(
            "the server does not know the access key ID \"{key_id}\" ({}); check \
             AWS_ACCESS_KEY_ID or the profile's aws_access_key_id, and the endpoint",
            with_message(code)
        ),
        Some(code @ ("ExpiredToken" | "TokenRefreshRequired" | "InvalidToken")) => format!(
            "the session token of access key ID \"{key_id}\" is expired or invalid ({code}); \
             get fresh credentials"
        ),
        Some("AccessDenied") | None if remote.anonymous => {
            "the bucket does not allow anonymous reads (AWS_SKIP_SIGNATURE is set); give \
             credentials instead"
                .to_string()
        }
        Some("AccessDenied") | None => format!(
            "access key ID \"{key_id}\" may not read it ({}); reading needs s3:GetObject, and \
             s3:ListBucket for a prefix (without s3:ListBucket, S3 also answers 403 for a key \
             that does not exist)",
            code.map(with_message)
                .unwrap_or_else(|| "HTTP 403".to_string())
        ),
        Some(code) => format!(
            "access key ID \"{key_id}\" was refused ({})",
            with_message(code)
        ),
    }
}

/// The first error of type `T` in the source chain of `err` (itself included).
fn find_source<'a, T: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// The reason a connection failed, in a few words: the OS error for the common cases, else the
/// innermost message of the chain (hyper's and reqwest's outer ones only say "error sending
/// request").
pub(crate) fn transport_reason(err: &(dyn std::error::Error + 'static)) -> String {
    let mut io_kind = None;
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            io_kind = Some(io.kind());
        }
        current = e.source();
    }
    use std::io::ErrorKind as K;
    match io_kind {
        Some(K::ConnectionRefused) => "connection refused".to_string(),
        Some(K::TimedOut) => "connection timed out".to_string(),
        Some(K::ConnectionReset) => "connection reset by the server".to_string(),
        Some(K::ConnectionAborted) => "connection aborted".to_string(),
        Some(K::HostUnreachable) => "host unreachable".to_string(),
        Some(K::NetworkUnreachable) => "network unreachable".to_string(),
        Some(K::UnexpectedEof) => "the server closed the connection early".to_string(),
        _ => {
            if find_source::<HttpError>(err).map(|h| h.kind()) == Some(HttpErrorKind::Timeout) {
                return "connection timed out".to_string();
            }
            innermost(err)
        }
    }
}

/// The innermost message of the chain: the specific cause.
fn innermost(err: &(dyn std::error::Error + 'static)) -> String {
    let mut last = err;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

/// The HTTP status an object_store error reports, when it has one.
pub(crate) fn status_of(err: &object_store::Error) -> Option<u16> {
    status_in(&err.to_string())
}

/// The HTTP status in object_store's "Server returned non-2xx status code: 404 Not Found: …".
fn status_in(text: &str) -> Option<u16> {
    let rest = text.split("status code: ").nth(1)?;
    rest.get(..3)?.parse().ok()
}

/// The text of the first `<tag>…</tag>` in an S3-style XML error body.
fn xml_tag(text: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = text.find(&open)? + open.len();
    let end = text[start..].find(&close)? + start;
    let value = text[start..end].trim();
    (!value.is_empty()).then(|| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_status_and_s3_codes_from_text() {
        let text = "Generic S3 error: Error performing list request: Error performing GET \
                    http://x/b?list-type=2 in 1ms - Server returned non-2xx status code: 404 Not \
                    Found: <?xml version=\"1.0\"?><Error><Code>NoSuchBucket</Code><Message>The \
                    specified bucket does not exist.</Message></Error>";
        assert_eq!(status_in(text), Some(404));
        assert_eq!(xml_tag(text, "Code").as_deref(), Some("NoSuchBucket"));
        assert_eq!(
            xml_tag(text, "Message").as_deref(),
            Some("The specified bucket does not exist.")
        );
        assert_eq!(status_in("no status here"), None);
        assert_eq!(xml_tag("<Code></Code>", "Code"), None);
    }

    #[test]
    fn azure_says_container() {
        let key = |url: &str| {
            FetchError::NoSuchKey {
                url: url.into(),
                bucket: "models".into(),
                key: "k".into(),
            }
            .to_string()
        };
        assert!(key("az://models/k").contains("in container \"models\""));
        assert!(key("s3://models/k").contains("in bucket \"models\""));
    }

    #[test]
    fn client_errors_are_the_ones_a_retry_cannot_fix() {
        let url = "s3://b/k".to_string();
        assert!(FetchError::NoSuchKey {
            url: url.clone(),
            bucket: "b".into(),
            key: "k".into()
        }
        .is_client_error());
        assert!(!FetchError::Unreachable {
            url: url.clone(),
            endpoint: "http://x".into(),
            reason: "connection refused".into()
        }
        .is_client_error());
        assert!(!FetchError::ChecksumMismatch {
            url,
            expected: "a".into(),
            actual: "b".into()
        }
        .is_client_error());
    }
}
