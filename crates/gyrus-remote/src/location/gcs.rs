//! Google Cloud Storage: the `GOOGLE_*` settings of the deploying user's environment, gcloud's
//! application default credentials from their HOME, and the endpoint that scopes the cache key.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::ClientConfigKey;

use super::shared::{client_options, non_empty, retry_config, truthy, without_userinfo};
use super::{Location, Remote, Target};
use crate::error::FetchError;
use crate::FetchOptions;

const GCS_ENDPOINT: &str = "https://storage.googleapis.com";

pub(super) fn location(target: &Target, opts: &FetchOptions) -> Location {
    let (builder, _) = gcs_config(opts);
    let base = builder
        .get_config_value(&GoogleConfigKey::BaseUrl)
        .map(|b| without_userinfo(b.trim().trim_end_matches('/')))
        .filter(|b| !b.is_empty());
    let shown = base.unwrap_or_else(|| GCS_ENDPOINT.to_string());
    Location {
        key: format!("gs\t{shown}\t{}", target.bucket),
        shown,
        certain: !opts.env.is_empty(),
    }
}

/// A builder with every `GOOGLE_*` setting of the environment, and whether one of them is a way
/// to authenticate.
fn gcs_config(opts: &FetchOptions) -> (GoogleCloudStorageBuilder, bool) {
    let env = &opts.env;
    let mut builder = GoogleCloudStorageBuilder::new()
        .with_client_options(client_options())
        .with_retry(retry_config());
    let mut has_credentials = false;
    for (name, value) in env {
        if !name.starts_with("GOOGLE_") || value.trim().is_empty() {
            continue;
        }
        if let Ok(key) = name.to_ascii_lowercase().parse::<GoogleConfigKey>() {
            match key {
                GoogleConfigKey::Bucket => continue,
                GoogleConfigKey::ServiceAccount
                | GoogleConfigKey::ServiceAccountKey
                | GoogleConfigKey::ApplicationCredentials => has_credentials = true,
                GoogleConfigKey::SkipSignature => has_credentials |= truthy(Some(value.trim())),
                _ => {}
            }
            builder = builder.with_config(key, value.trim());
        }
    }
    (builder, has_credentials)
}

pub(super) fn connect(target: &Target, opts: &FetchOptions) -> Result<Remote, FetchError> {
    let env = &opts.env;
    let (mut builder, mut has_credentials) = gcs_config(opts);
    let endpoint = builder
        .get_config_value(&GoogleConfigKey::BaseUrl)
        .map(|b| b.trim().trim_end_matches('/').to_string())
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| GCS_ENDPOINT.to_string());
    // gcloud's application default credentials, from the user's HOME: object_store would read
    // the daemon's.
    if !has_credentials {
        if let Some(home) = non_empty(env, "HOME") {
            let adc = std::path::Path::new(home)
                .join(".config/gcloud/application_default_credentials.json");
            if adc.is_file() {
                builder = builder.with_application_credentials(adc.to_string_lossy());
                has_credentials = true;
            }
        }
    }
    if !has_credentials {
        return Err(FetchError::NoCredentials {
            url: target.url.clone(),
            hint: "set GOOGLE_APPLICATION_CREDENTIALS or GOOGLE_SERVICE_ACCOUNT to a service \
                   account key file, run `gcloud auth application-default login`, or set \
                   GOOGLE_SKIP_SIGNATURE=true if the bucket is public"
                .to_string(),
        });
    }
    // An endpoint the user wrote as http:// (an emulator) is allowed as written, as for S3.
    if endpoint.to_ascii_lowercase().starts_with("http://") {
        builder = builder.with_config(GoogleConfigKey::Client(ClientConfigKey::AllowHttp), "true");
    }
    let store = builder
        .with_bucket_name(&target.bucket)
        .build()
        .map_err(|e| FetchError::BadConfig {
            url: target.url.clone(),
            detail: format!("invalid Google Cloud Storage configuration: {e}"),
        })?;
    Ok(Remote {
        store: Arc::new(store),
        endpoint,
        access_key_id: None,
        anonymous: false,
        md5_etags: false,
        etag_not_md5: Arc::new(AtomicBool::new(false)),
    })
}
