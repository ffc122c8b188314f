//! Azure Blob Storage and ADLS: the `AZURE_*` settings of the deploying user's environment, the
//! storage account (from the URL or the environment) and the endpoint, which together with the
//! container scope the cache key.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::ClientConfigKey;
use url::Url;

use super::shared::{client_options, retry_config, truthy, without_userinfo};
use super::{Location, Remote, Target};
use crate::error::FetchError;
use crate::FetchOptions;

pub(super) fn location(target: &Target, opts: &FetchOptions) -> Location {
    let (builder, _) = azure_config(opts);
    let account = azure_account(target, &builder).unwrap_or_default();
    let endpoint = azure_custom_endpoint(&builder).unwrap_or_default();
    let shown = match endpoint.as_str() {
        "" => format!("account {account}"),
        endpoint => format!("account {account} at {endpoint}"),
    };
    Location {
        key: format!("az\t{account}\t{endpoint}\t{}", target.bucket),
        shown,
        certain: !opts.env.is_empty(),
    }
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

pub(super) fn connect(target: &Target, opts: &FetchOptions) -> Result<Remote, FetchError> {
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
    // An endpoint the user wrote as http:// (Azurite) is allowed as written, as for S3.
    if endpoint.to_ascii_lowercase().starts_with("http://") {
        builder = builder.with_config(AzureConfigKey::Client(ClientConfigKey::AllowHttp), "true");
    }
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
