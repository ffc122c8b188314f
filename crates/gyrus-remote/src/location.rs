//! From a URL to a store and a path in it: scheme dispatch, credentials taken from the deploying
//! user's environment map (and AWS profile files), endpoints, timeouts and retries.
//!
//! Nothing here reads the daemon's own environment: the daemon runs as a service, and the
//! credentials that matter are those of the user who ran `gyrus deploy`.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpRequest, HttpResponse, HttpService, ReqwestConnector,
};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::http::HttpBuilder;
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};
use url::Url;

use crate::error::FetchError;
use crate::profile;
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
    let env_known = !opts.env.is_empty();
    let (key, shown, certain) = match target.scheme {
        Scheme::Http => ("http".to_string(), "the URL's server".to_string(), true),
        Scheme::S3 => {
            // An unreadable profile file is reported by `connect`; here it just adds nothing.
            let profile = profile::load(&opts.env).unwrap_or_default();
            let certain = env_known || s3_spec_endpoint(opts).is_some();
            match s3_endpoint(opts, &profile) {
                Some(endpoint) => {
                    let endpoint = without_userinfo(&endpoint);
                    (
                        format!("s3\t{endpoint}\t{}", target.bucket),
                        endpoint,
                        certain,
                    )
                }
                None => {
                    // Bucket names are unique within an AWS partition, so the region (which
                    // may come from the environment, absent after a restart) stays out.
                    let partition = aws_partition(&s3_region(opts, &profile));
                    (
                        format!("s3\t{partition}\t{}", target.bucket),
                        format!("AWS ({partition})"),
                        certain,
                    )
                }
            }
        }
        Scheme::Gcs => {
            let (builder, _) = gcs_config(opts);
            let base = builder
                .get_config_value(&GoogleConfigKey::BaseUrl)
                .map(|b| without_userinfo(b.trim().trim_end_matches('/')))
                .filter(|b| !b.is_empty());
            let shown = base.unwrap_or_else(|| GCS_ENDPOINT.to_string());
            (format!("gs\t{shown}\t{}", target.bucket), shown, env_known)
        }
        Scheme::Azure => {
            let (builder, _) = azure_config(opts);
            let account = azure_account(target, &builder).unwrap_or_default();
            let endpoint = azure_custom_endpoint(&builder).unwrap_or_default();
            let shown = match endpoint.as_str() {
                "" => format!("account {account}"),
                endpoint => format!("account {account} at {endpoint}"),
            };
            (
                format!("az\t{account}\t{endpoint}\t{}", target.bucket),
                shown,
                env_known,
            )
        }
    };
    Location {
        key,
        shown: shown
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect(),
        certain,
    }
}

/// An endpoint without the `user:password@` some people write into it.
fn without_userinfo(endpoint: &str) -> String {
    match Url::parse(endpoint) {
        Ok(mut url) if !url.username().is_empty() || url.password().is_some() => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.to_string().trim_end_matches('/').to_string()
        }
        _ => endpoint.to_string(),
    }
}

/// The AWS partition of a region: bucket names are unique within one.
fn aws_partition(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else if region.starts_with("us-isob-") {
        "aws-iso-b"
    } else if region.starts_with("us-iso-") {
        "aws-iso"
    } else if region.starts_with("eu-isoe-") {
        "aws-iso-e"
    } else if region.starts_with("us-isof-") {
        "aws-iso-f"
    } else {
        "aws"
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

/// Each connect attempt gives up after this; a laptop without the network fails fast.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn client_options() -> ClientOptions {
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

fn retry_config() -> RetryConfig {
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

pub(crate) fn connect(target: &Target, opts: &FetchOptions) -> Result<Remote, FetchError> {
    match target.scheme {
        Scheme::S3 => s3(target, opts),
        Scheme::Gcs => gcs(target, opts),
        Scheme::Azure => azure(target, opts),
        Scheme::Http => http(target),
    }
}

fn non_empty<'a>(env: &'a BTreeMap<String, String>, key: &str) -> Option<&'a str> {
    env.get(key).map(|v| v.trim()).filter(|v| !v.is_empty())
}

fn truthy(value: Option<&str>) -> bool {
    matches!(
        value.map(|v| v.to_ascii_lowercase()).as_deref(),
        Some("true" | "1" | "yes" | "on")
    )
}

fn s3(target: &Target, opts: &FetchOptions) -> Result<Remote, FetchError> {
    let env = &opts.env;
    let url = &target.url;
    let no_credentials = |hint: String| FetchError::NoCredentials {
        url: url.clone(),
        hint,
    };
    let bad_config = |detail: String| FetchError::BadConfig {
        url: url.clone(),
        detail,
    };
    let profile = profile::load(env).map_err(bad_config)?;

    // Where the keys come from. Deciding this before building is what keeps object_store from
    // falling back to the EC2 instance metadata endpoint, which hangs off EC2.
    let env_key = non_empty(env, "AWS_ACCESS_KEY_ID");
    let env_secret = non_empty(env, "AWS_SECRET_ACCESS_KEY");
    let anonymous = truthy(non_empty(env, "AWS_SKIP_SIGNATURE"));
    let web_identity = non_empty(env, "AWS_WEB_IDENTITY_TOKEN_FILE").is_some()
        && non_empty(env, "AWS_ROLE_ARN").is_some();
    let container = non_empty(env, "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").is_some()
        || (non_empty(env, "AWS_CONTAINER_CREDENTIALS_FULL_URI").is_some()
            && non_empty(env, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE").is_some());
    let keys: Option<(String, String, Option<String>)> = match (env_key, env_secret) {
        (Some(key), Some(secret)) => Some((
            key.to_string(),
            secret.to_string(),
            non_empty(env, "AWS_SESSION_TOKEN").map(str::to_string),
        )),
        (Some(_), None) => {
            return Err(no_credentials(
                "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not".to_string(),
            ))
        }
        (None, Some(_)) => {
            return Err(no_credentials(
                "AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not".to_string(),
            ))
        }
        (None, None) if anonymous || web_identity || container => None,
        (None, None) => match (&profile.access_key_id, &profile.secret_access_key) {
            (Some(key), Some(secret)) => {
                Some((key.clone(), secret.clone(), profile.session_token.clone()))
            }
            (Some(_), None) => {
                return Err(no_credentials(format!(
                    "profile \"{}\" has aws_access_key_id but no aws_secret_access_key",
                    profile.name
                )))
            }
            _ => return Err(no_credentials(missing_aws_hint(&profile))),
        },
    };
    let access_key_id = keys.as_ref().map(|(key, _, _)| key.clone());

    let mut builder = AmazonS3Builder::new()
        .with_client_options(client_options())
        .with_retry(retry_config());
    // Every AWS_* variable object_store knows, as AmazonS3Builder::from_env would apply them
    // from the process environment. Keys are applied below from the chosen source, and the
    // bucket comes from the URL.
    for (name, value) in env {
        if !name.starts_with("AWS_") || value.trim().is_empty() {
            continue;
        }
        if let Ok(key) = name.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
            match key {
                AmazonS3ConfigKey::AccessKeyId
                | AmazonS3ConfigKey::SecretAccessKey
                | AmazonS3ConfigKey::Token
                | AmazonS3ConfigKey::Bucket => {}
                key => builder = builder.with_config(key, value.trim()),
            }
        }
    }
    builder = builder.with_bucket_name(&target.bucket);
    if let Some((key, secret, token)) = keys {
        builder = builder
            .with_access_key_id(key)
            .with_secret_access_key(secret);
        if let Some(token) = token {
            builder = builder.with_token(token);
        }
    }

    let region = s3_region(opts, &profile);
    builder = builder.with_region(&region);

    let endpoint = s3_endpoint(opts, &profile);
    let endpoint_shown = match &endpoint {
        Some(endpoint) => {
            let parsed = Url::parse(endpoint).map_err(|e| {
                bad_config(format!("the S3 endpoint \"{endpoint}\" is not a URL ({e})"))
            })?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
                return Err(bad_config(format!(
                    "the S3 endpoint \"{endpoint}\" is not an http:// or https:// URL"
                )));
            }
            // S3-compatible servers rarely have wildcard DNS for bucket subdomains: address
            // buckets by path. The S3-specific key wins over AWS_ENDPOINT_URL inside
            // object_store, so setting it makes this choice final.
            builder = builder
                .with_config(AmazonS3ConfigKey::S3Endpoint, endpoint.clone())
                .with_virtual_hosted_style_request(false);
            if parsed.scheme() == "http" {
                builder = builder.with_allow_http(true);
            }
            endpoint.clone()
        }
        None => format!("https://s3.{region}.amazonaws.com"),
    };

    let etag_not_md5 = Arc::new(AtomicBool::new(false));
    let store = builder
        .with_http_connector(ProbeConnector(etag_not_md5.clone()))
        .build()
        .map_err(|e| bad_config(format!("invalid S3 configuration: {e}")))?;
    Ok(Remote {
        store: Arc::new(store),
        endpoint: endpoint_shown,
        access_key_id,
        anonymous,
        md5_etags: true,
        etag_not_md5,
    })
}

/// `predictor.s3.endpoint_url`, when the config gives one.
fn s3_spec_endpoint(opts: &FetchOptions) -> Option<&str> {
    opts.s3_endpoint_url
        .as_deref()
        .map(str::trim)
        .filter(|e| !e.is_empty())
}

/// The S3 endpoint: the config's, else the environment's, else the profile's; `None` for AWS.
fn s3_endpoint(opts: &FetchOptions, profile: &profile::AwsProfile) -> Option<String> {
    let env = &opts.env;
    s3_spec_endpoint(opts)
        .or_else(|| non_empty(env, "AWS_ENDPOINT_URL_S3"))
        .or_else(|| non_empty(env, "AWS_ENDPOINT_URL"))
        .or_else(|| non_empty(env, "AWS_ENDPOINT"))
        .or(profile.endpoint_url.as_deref())
        .map(|e| e.trim().trim_end_matches('/').to_string())
}

fn s3_region(opts: &FetchOptions, profile: &profile::AwsProfile) -> String {
    let env = &opts.env;
    opts.s3_region
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .or_else(|| non_empty(env, "AWS_REGION"))
        .or_else(|| non_empty(env, "AWS_DEFAULT_REGION"))
        .or(profile.region.as_deref())
        .unwrap_or("us-east-1")
        .to_string()
}

fn missing_aws_hint(profile: &profile::AwsProfile) -> String {
    let ways = "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, add the keys to a profile in \
                ~/.aws/credentials (AWS_PROFILE picks one), or set AWS_SKIP_SIGNATURE=true if \
                the bucket is public";
    let shown = |p: &Option<std::path::PathBuf>| {
        p.as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "(no HOME)".to_string())
    };
    if profile.explicit && !profile.found {
        format!(
            "profile \"{}\" (AWS_PROFILE) is in neither {} nor {}; {ways}",
            profile.name,
            shown(&profile.credentials_file),
            shown(&profile.config_file)
        )
    } else if profile.found {
        format!(
            "profile \"{}\" has no aws_access_key_id (SSO, assume-role and credential_process \
             profiles are not supported: `aws configure export-credentials --profile {} \
             --format env` prints keys to use); {ways}",
            profile.name, profile.name
        )
    } else {
        ways.to_string()
    }
}

const GCS_ENDPOINT: &str = "https://storage.googleapis.com";

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

fn gcs(target: &Target, opts: &FetchOptions) -> Result<Remote, FetchError> {
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

/// A builder with every `AZURE_*` setting of the environment, and whether one of them is a way
/// to authenticate.
fn azure_config(opts: &FetchOptions) -> (MicrosoftAzureBuilder, bool) {
    let env = &opts.env;
    let mut builder = MicrosoftAzureBuilder::new()
        .with_client_options(client_options())
        .with_retry(retry_config());
    let mut has_credentials = false;
    for (name, value) in env {
        if !name.starts_with("AZURE_") || value.trim().is_empty() {
            continue;
        }
        if let Ok(key) = name.to_ascii_lowercase().parse::<AzureConfigKey>() {
            match key {
                AzureConfigKey::ContainerName => continue,
                AzureConfigKey::AccessKey
                | AzureConfigKey::SasKey
                | AzureConfigKey::Token
                | AzureConfigKey::ClientSecret
                | AzureConfigKey::FederatedTokenFile => has_credentials = true,
                AzureConfigKey::SkipSignature
                | AzureConfigKey::UseEmulator
                | AzureConfigKey::UseAzureCli => has_credentials |= truthy(Some(value.trim())),
                _ => {}
            }
            builder = builder.with_config(key, value.trim());
        }
    }
    (builder, has_credentials)
}

/// The storage account: the one the URL names (az://container@account.dfs.core.windows.net/…),
/// else `AZURE_STORAGE_ACCOUNT_NAME`. object_store applies the URL only when building, so the
/// URL's account is read here.
fn azure_account(target: &Target, builder: &MicrosoftAzureBuilder) -> Option<String> {
    let url_account = Url::parse(&target.url).ok().and_then(|u| {
        let host = u.host_str()?.to_string();
        (!u.username().is_empty()).then(|| host.split('.').next().unwrap_or("").to_string())
    });
    url_account
        .or_else(|| builder.get_config_value(&AzureConfigKey::AccountName))
        .filter(|a| !a.is_empty())
}

/// The endpoint when it is not the account's default: `AZURE_STORAGE_ENDPOINT`, or the local
/// emulator.
fn azure_custom_endpoint(builder: &MicrosoftAzureBuilder) -> Option<String> {
    builder
        .get_config_value(&AzureConfigKey::Endpoint)
        .map(|e| without_userinfo(e.trim().trim_end_matches('/')))
        .filter(|e| !e.is_empty())
        .or_else(|| {
            truthy(
                builder
                    .get_config_value(&AzureConfigKey::UseEmulator)
                    .as_deref(),
            )
            .then(|| "the storage emulator".to_string())
        })
}

fn azure(target: &Target, opts: &FetchOptions) -> Result<Remote, FetchError> {
    let (mut builder, has_credentials) = azure_config(opts);
    if !has_credentials {
        return Err(FetchError::NoCredentials {
            url: target.url.clone(),
            hint: "set AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY (or \
                   AZURE_STORAGE_SAS_TOKEN, or a service principal's AZURE_CLIENT_ID, \
                   AZURE_CLIENT_SECRET and AZURE_TENANT_ID), or set AZURE_SKIP_SIGNATURE=true \
                   if the container is public"
                .to_string(),
        });
    }
    // The URL may name the account (az://container@account.dfs.core.windows.net/…).
    builder = builder.with_url(&target.url);
    builder = builder.with_container_name(&target.bucket);
    let Some(account) = azure_account(target, &builder) else {
        return Err(FetchError::BadConfig {
            url: target.url.clone(),
            detail: "no storage account: set AZURE_STORAGE_ACCOUNT_NAME, or name it in the URL \
                     (az://CONTAINER@ACCOUNT.blob.core.windows.net/KEY)"
                .to_string(),
        });
    };
    let endpoint = builder
        .get_config_value(&AzureConfigKey::Endpoint)
        .unwrap_or_else(|| format!("https://{account}.blob.core.windows.net"));
    let store = builder.build().map_err(|e| FetchError::BadConfig {
        url: target.url.clone(),
        detail: format!("invalid Azure configuration: {e}"),
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

fn http(target: &Target) -> Result<Remote, FetchError> {
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

/// Wraps object_store's reqwest client to look at response headers object_store drops: with
/// SSE-KMS or SSE-C, S3's ETag is not the MD5 of the object, and comparing would report every
/// download as corrupted.
#[derive(Debug)]
struct ProbeConnector(Arc<AtomicBool>);

impl HttpConnector for ProbeConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        Ok(HttpClient::new(ProbeService {
            inner,
            etag_not_md5: self.0.clone(),
        }))
    }
}

#[derive(Debug)]
struct ProbeService {
    inner: HttpClient,
    etag_not_md5: Arc<AtomicBool>,
}

impl HttpService for ProbeService {
    // The signature async_trait expands to (object_store declares the trait with it).
    fn call<'life0, 'async_trait>(
        &'life0 self,
        req: HttpRequest,
    ) -> Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            let response = self.inner.execute(req).await?;
            let headers = response.headers();
            let kms = headers
                .get("x-amz-server-side-encryption")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("aws:kms"));
            let customer_key =
                headers.contains_key("x-amz-server-side-encryption-customer-algorithm");
            if kms || customer_key {
                self.etag_not_md5.store(true, Ordering::SeqCst);
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests;
