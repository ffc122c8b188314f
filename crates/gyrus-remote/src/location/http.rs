//! Plain HTTP(S) URLs, presigned ones included: no credentials, and the URL alone says where.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use object_store::http::HttpBuilder;
use url::Url;

use super::shared::{client_options, retry_config};
use super::{Location, Remote, Target};
use crate::error::FetchError;

pub(super) fn location() -> Location {
    Location {
        key: "http".to_string(),
        shown: "the URL's server".to_string(),
        certain: true,
    }
}

pub(super) fn connect(target: &Target) -> Result<Remote, FetchError> {
    let bad_config = |detail: String| FetchError::BadConfig {
        url: target.url.clone(),
        detail,
    };
    let url = Url::parse(&target.url).map_err(|e| bad_config(e.to_string()))?;
    let endpoint = url.origin().ascii_serialization();
    // The whole URL is the store's base and the object path is empty, so a query string (a
    // presigned URL's signature) survives.
    let store = HttpBuilder::new()
        .with_url(target.url.clone())
        .with_client_options(client_options().with_allow_http(url.scheme() == "http"))
        .with_retry(retry_config())
        .build()
        .map_err(|e| bad_config(format!("invalid HTTP configuration: {e}")))?;
    Ok(Remote {
        store: Arc::new(store),
        endpoint,
        access_key_id: None,
        anonymous: false,
        md5_etags: false,
        etag_not_md5: Arc::new(AtomicBool::new(false)),
    })
}
