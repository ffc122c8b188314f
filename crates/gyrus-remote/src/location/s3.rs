//! S3 and S3-compatible servers: where the keys come from (the deploying user's environment,
//! then their AWS profile files), the endpoint and region, the AWS partition that scopes bucket
//! names in the cache key, and the probe that tells when an ETag is not the object's MD5.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpRequest, HttpResponse, HttpService, ReqwestConnector,
};
use object_store::ClientOptions;
use url::Url;

use super::shared::{client_options, non_empty, retry_config, truthy, without_userinfo};
use super::{Location, Remote, Target};
use crate::error::FetchError;
use crate::profile;
use crate::FetchOptions;

pub(super) fn location(target: &Target, opts: &FetchOptions) -> Location {
    // An unreadable profile file is reported by `connect`; here it just adds nothing.
    let profile = profile::load(&opts.env).unwrap_or_default();
    let certain = !opts.env.is_empty() || s3_spec_endpoint(opts).is_some();
    match s3_endpoint(opts, &profile) {
        Some(endpoint) => {
            let endpoint = without_userinfo(&endpoint);
            Location {
                key: format!("s3\t{endpoint}\t{}", target.bucket),
                shown: endpoint,
                certain,
            }
        }
        None => {
            // Bucket names are unique within an AWS partition, so the region (which may come
            // from the environment, absent after a restart) stays out.
            let partition = aws_partition(&s3_region(opts, &profile));
            Location {
                key: format!("s3\t{partition}\t{}", target.bucket),
                shown: format!("AWS ({partition})"),
                certain,
            }
        }
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

pub(super) fn connect(target: &Target, opts: &FetchOptions) -> Result<Remote, FetchError> {
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
