//! From a URL to a store and a path in it: what a URL names ([`Target`]), where it resolves
//! ([`Location`], part of the cache key) and a store ready to fetch from ([`Remote`]). Each
//! provider's credentials, endpoints and cache-key rules live in its own module (`s3`, `gcs`,
//! `azure`, `http`); `shared` holds the client settings and environment reading they all use.
//!
//! Nothing here reads the daemon's own environment: the daemon runs as a service, and the
//! credentials that matter are those of the user who ran `gyrus deploy`.

mod azure;
mod gcs;
mod http;
mod s3;
mod shared;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;
use url::Url;

use crate::error::FetchError;
use crate::FetchOptions;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    S3,
    Gcs,
    Azure,
    Http,
}

/// A parsed URL: what to fetch, before any credentials are looked at.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The URL as normalised by `url` (no fragment): the cache key.
    pub url: String,
    pub scheme: Scheme,
    /// Bucket or container; the host for HTTP(S).
    pub bucket: String,
    /// The object key, percent-decoded, without leading or trailing '/'. Empty for a whole
    /// bucket. Unused for HTTP(S).
    pub key: String,
    /// The key as an object_store path (empty for HTTP(S): the store's base URL is the URL).
    pub path: ObjectPath,
    /// The URL ends with '/' (or names a whole bucket): a prefix, never a single object.
    pub prefix_only: bool,
    /// The local file or directory name: the key's last segment.
    pub name: String,
}

pub(crate) fn parse(raw: &str) -> Result<Target, FetchError> {
    let bad = |reason: String| FetchError::BadUrl {
        url: raw.to_string(),
        reason,
    };
    let mut url = Url::parse(raw.trim()).map_err(|e| bad(format!("not a URL ({e})")))?;
    url.set_fragment(None);
    // The list is gyrus-spec's, so a config that validates is one this crate can fetch.
    let scheme = match url.scheme() {
        s if !gyrus_spec::MODEL_URL_SCHEMES.contains(&s) => None,
        "s3" | "s3a" => Some(Scheme::S3),
        "gs" => Some(Scheme::Gcs),
        "az" | "azure" | "abfs" | "abfss" => Some(Scheme::Azure),
        "http" | "https" => Some(Scheme::Http),
        _ => None,
    };
    let Some(scheme) = scheme else {
        return Err(bad(format!(
            "unsupported scheme \"{}\"; supported are {}",
            url.scheme(),
            gyrus_spec::model_url_schemes_text()
        )));
    };
    let host = url.host_str().unwrap_or("").to_string();
    if host.is_empty() {
        return Err(bad(match scheme {
            Scheme::Http => "no host in the URL".to_string(),
            _ => "no bucket in the URL (expected SCHEME://BUCKET/KEY)".to_string(),
        }));
    }
    if scheme == Scheme::Http {
        let name = url
            .path_segments()
            .and_then(|mut segments| segments.rfind(|s| !s.is_empty()))
            .map(percent_decode)
            .unwrap_or_default();
        return Ok(Target {
            url: url.to_string(),
            scheme,
            name: file_name(&name, &host),
            bucket: host,
            key: String::new(),
            path: ObjectPath::default(),
            prefix_only: false,
        });
    }
    // The hadoop form abfs://container@account.dfs.core.windows.net/path names the container
    // in the user part.
    let bucket = match (scheme, url.username()) {
        (Scheme::Azure, user) if !user.is_empty() => user.to_string(),
        _ => host,
    };
    let path = ObjectPath::from_url_path(url.path())
        .map_err(|e| bad(format!("the key is not a valid object path ({e})")))?;
    let key = path.as_ref().to_string();
    let prefix_only = key.is_empty() || url.path().ends_with('/');
    let name = file_name(path.filename().unwrap_or(""), &bucket);
    Ok(Target {
        url: url.to_string(),
        scheme,
        bucket,
        key,
        path,
        prefix_only,
        name,
    })
}

/// A local name for the download: the last segment, unless it could not be one.
fn file_name(segment: &str, fallback: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| match c {
                '/' | '\\' => '_',
                c if c.is_control() => '_',
                c => c,
            })
            .collect()
    };
    match segment {
        "" | "." | ".." => match fallback {
            "" | "." | ".." => "download".to_string(),
            f => clean(f),
        },
        s => clean(s),
    }
}

fn percent_decode(s: &str) -> String {
    // Url leaves percent-encoding in path segments; decode for a readable file name.
    ObjectPath::from_url_path(s)
        .map(|p| p.as_ref().to_string())
        .unwrap_or_else(|_| s.to_string())
}

/// Where a URL is resolved, as far as the options tell without any credentials: the same URL at
/// two endpoints (or in two Azure accounts) names two different objects, and their downloads
/// must not share cache entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Location {
    /// Part of the cache key: the endpoint (or provider), account and bucket. Never a
    /// credential.
    pub key: String,
    /// The place in words, recorded with a download (for messages).
    pub shown: String,
    /// False when the key rests on defaults only because the options carry no environment at
    /// all (a daemon restart): the deploy's environment may have named another endpoint or
    /// account.
    pub certain: bool,
}

pub(crate) fn location(target: &Target, opts: &FetchOptions) -> Location {
    let place = match target.scheme {
        Scheme::Http => http::location(),
        Scheme::S3 => s3::location(target, opts),
        Scheme::Gcs => gcs::location(target, opts),
        Scheme::Azure => azure::location(target, opts),
    };
    Location {
        shown: place
            .shown
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect(),
        ..place
    }
}

/// A store ready to use, with what error messages need to know about it.
#[derive(Debug)]
pub(crate) struct Remote {
    pub store: Arc<dyn ObjectStore>,
    /// The server, for messages: the custom endpoint, or the provider's default.
    pub endpoint: String,
    /// The access key ID in use (S3), for messages; never the secret.
    pub access_key_id: Option<String>,
    /// S3 requests made without a signature (`AWS_SKIP_SIGNATURE`).
    pub anonymous: bool,
    /// A plain 32-hex-digit ETag is the MD5 of the bytes (S3 only; GCS and Azure ETags are
    /// opaque, and so are HTTP servers').
    pub md5_etags: bool,
    /// Set when a response said the object is encrypted in a way that makes its ETag something
    /// other than the MD5 of its bytes (SSE-KMS, SSE-C).
    pub etag_not_md5: Arc<AtomicBool>,
}

pub(crate) fn connect(target: &Target, opts: &FetchOptions) -> Result<Remote, FetchError> {
    match target.scheme {
        Scheme::S3 => s3::connect(target, opts),
        Scheme::Gcs => gcs::connect(target, opts),
        Scheme::Azure => azure::connect(target, opts),
        Scheme::Http => http::connect(target),
    }
}

#[cfg(test)]
mod tests;
