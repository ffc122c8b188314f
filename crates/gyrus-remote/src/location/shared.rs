//! What every provider sets up the same way: the HTTP client's timeouts and retries, and the
//! reading of values from the deploying user's environment map.

use std::collections::BTreeMap;
use std::time::Duration;

use object_store::{BackoffConfig, ClientOptions, RetryConfig};
use url::Url;

/// Each connect attempt gives up after this; a laptop without the network fails fast.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) fn client_options() -> ClientOptions {
    // No total request timeout: it would cut off multi-gigabyte downloads. Stalls are caught by
    // the callers' per-step timeouts instead.
    let options = ClientOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_timeout_disabled();
    match object_store::HeaderValue::from_str(concat!("gyrus/", env!("CARGO_PKG_VERSION"))) {
        Ok(agent) => options.with_user_agent(agent),
        Err(_) => options,
    }
}

pub(super) fn retry_config() -> RetryConfig {
    // object_store's default (10 retries over up to 3 minutes) makes an unreachable endpoint
    // look like a hang; two quick retries ride out a blip and fail within seconds.
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(4),
            base: 2.0,
        },
        max_retries: 2,
        retry_timeout: Duration::from_secs(15),
    }
}

pub(super) fn non_empty<'a>(env: &'a BTreeMap<String, String>, key: &str) -> Option<&'a str> {
    env.get(key).map(|v| v.trim()).filter(|v| !v.is_empty())
}

pub(super) fn truthy(value: Option<&str>) -> bool {
    matches!(
        value.map(|v| v.to_ascii_lowercase()).as_deref(),
        Some("true" | "1" | "yes" | "on")
    )
}

/// An endpoint without the `user:password@` some people write into it.
pub(super) fn without_userinfo(endpoint: &str) -> String {
    match Url::parse(endpoint) {
        Ok(mut url) if !url.username().is_empty() || url.password().is_some() => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.to_string().trim_end_matches('/').to_string()
        }
        _ => endpoint.to_string(),
    }
}
