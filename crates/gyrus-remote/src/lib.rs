//! Models named by URL (`s3://`, `gs://`, `az://`, `azure://`, `http://`, `https://`): this crate
//! turns such a URL into a local path the daemon can hand to a replica. It also lists what a
//! URL names and reads one small object into memory, without the cache (a batch job's files:
//! `listing.rs`).
//!
//! It owns the remote cache under `GYRUS_HOME/cache/remote`:
//!
//! ```text
//! cache/remote/
//!   .tmp/dl-<random>/          downloads in progress (removed on failure; leftovers of killed
//!                              processes are removed by `clean_tmp`)
//!   <sha256(url + "\n" + location)[..32]>/
//!     current                  text file naming the last complete entry (for PreferCached)
//!     <sha256(validator)[..32]>/
//!       <name>                 the file, or the directory tree of a prefix
//! ```
//!
//! The location is where the URL is resolved, without credentials: for S3 the endpoint (or the
//! AWS partition) and the bucket, for Azure the account (and a custom endpoint), for GCS the
//! endpoint; the same `s3://bucket/key` at two endpoints is two objects with two caches.
//!
//! An entry directory only ever comes into being by one `rename(2)` of a finished, verified and
//! fsynced download, so whatever a reader finds there is complete; a download that fails, is
//! cancelled or is killed leaves at most a directory under `.tmp/`.

mod cache;
mod download;
mod error;
mod listing;
mod location;
mod profile;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

pub use error::FetchError;
pub use listing::{list, read, RemoteObject};

/// Where the fetch's credentials and endpoints come from.
#[derive(Clone, Default)]
pub struct FetchOptions {
    /// The environment of the user who ran `gyrus deploy` (the CLI forwards its `AWS_*`,
    /// `GOOGLE_*`, `AZURE_*` variables and `HOME`). Credentials, region, endpoint and profile
    /// file locations come from this map, never from the daemon's own environment.
    pub env: BTreeMap<String, String>,
    /// `predictor.s3.endpoint_url` from cortex.yaml; overrides the environment.
    pub s3_endpoint_url: Option<String>,
    /// `predictor.s3.region` from cortex.yaml; overrides the environment.
    pub s3_region: Option<String>,
}

/// The environment holds secrets (`AWS_SECRET_ACCESS_KEY`, `AZURE_STORAGE_ACCOUNT_KEY`, …): only
/// its names are shown.
impl std::fmt::Debug for FetchOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        struct Hidden<'a>(&'a BTreeMap<String, String>);
        impl std::fmt::Debug for Hidden<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_map()
                    .entries(self.0.keys().map(|k| (k, format_args!("…"))))
                    .finish()
            }
        }
        f.debug_struct("FetchOptions")
            .field("env", &Hidden(&self.env))
            .field("s3_endpoint_url", &self.s3_endpoint_url)
            .field("s3_region", &self.s3_region)
            .finish()
    }
}

/// How much the cache may be trusted without asking the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Ask the server for the current ETag/size (a deploy). Re-downloads only when it changed.
    CheckRemote,
    /// Use the last complete download of this URL from this location without any network call
    /// if there is one (daemon restart restoring APIs: the user's credentials are not available
    /// then); else behave as `CheckRemote`. With an empty environment the location may be
    /// unknown (the endpoint came from the deploy's environment): then the URL's only cached
    /// location is used, and several are an error rather than a guess.
    PreferCached,
}

/// Download progress, reported as bytes arrive (about ten times a second at most).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub url: String,
    pub done: u64,
    pub total: Option<u64>,
}

/// A complete local copy of a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The file, or the directory for a prefix.
    pub path: PathBuf,
    pub is_dir: bool,
    /// Bytes of the file, or of all files under the directory.
    pub bytes: u64,
    /// True when nothing was downloaded.
    pub from_cache: bool,
}

/// The remote-model cache rooted at `GYRUS_HOME/cache/remote`.
#[derive(Debug)]
pub struct RemoteCache {
    inner: cache::Cache,
}

impl RemoteCache {
    pub fn new(root: impl Into<PathBuf>) -> RemoteCache {
        RemoteCache {
            inner: cache::Cache::new(root.into()),
        }
    }

    /// The cache's root directory.
    pub fn root(&self) -> &std::path::Path {
        self.inner.root()
    }

    /// A complete local copy of `url`, downloaded unless the cache already holds the server's
    /// current version (or, with [`Freshness::PreferCached`], any complete version).
    pub async fn fetch(
        &self,
        url: &str,
        opts: &FetchOptions,
        freshness: Freshness,
        progress: &(dyn Fn(&Progress) + Send + Sync),
    ) -> Result<Fetched, FetchError> {
        self.inner.fetch(url, opts, freshness, progress).await
    }

    /// Removes tmp download dirs older than `age` (the daemon calls it at start with 1 hour).
    pub fn clean_tmp(&self, age: Duration) {
        self.inner.clean_tmp(age)
    }
}
