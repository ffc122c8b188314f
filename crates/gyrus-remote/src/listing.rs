//! Listing what a URL names and reading one small object into memory, without the cache: a
//! batch job's `file_path_lister` hands the URLs themselves to the predictor, and its
//! `delimited_files` are read once, line by line, when the job is enqueued.

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use object_store::ObjectStoreExt;

use crate::cache::{resolve, Plan};
use crate::download::{stalled, STALL};
use crate::error::{self, FetchError, Step};
use crate::location::{self, Target};
use crate::FetchOptions;

/// One object found under a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteObject {
    /// The object's own URL, in the scheme and form of the URL that was listed.
    pub url: String,
    pub size: u64,
}

/// The objects `url` names: itself when it is one object, else every object under it as a
/// prefix (sorted by key; empty "folder" markers left out).
pub async fn list(url: &str, opts: &FetchOptions) -> Result<Vec<RemoteObject>, FetchError> {
    let target = location::parse(url)?;
    let remote = location::connect(&target, opts)?;
    let (plan, _) = resolve(&target, &remote).await?;
    Ok(match plan {
        Plan::File(meta) => vec![RemoteObject {
            url: target.url.clone(),
            size: meta.size,
        }],
        Plan::Dir(files) => files
            .into_iter()
            .map(|f| RemoteObject {
                url: object_url(&target, f.meta.location.as_ref()),
                size: f.meta.size,
            })
            .collect(),
    })
}

/// The whole of the single object at `url`, refused before reading when it is larger than
/// `limit` bytes (and cut off if the server sends more than it announced).
pub async fn read(url: &str, opts: &FetchOptions, limit: u64) -> Result<Bytes, FetchError> {
    let target = location::parse(url)?;
    let remote = location::connect(&target, opts)?;
    let (plan, body) = resolve(&target, &remote).await?;
    let meta = match plan {
        Plan::File(meta) => meta,
        Plan::Dir(_) => {
            return Err(FetchError::BadUrl {
                url: target.url.clone(),
                reason: "it names a prefix, not one object".into(),
            })
        }
    };
    let too_large = |size: u64| FetchError::TooLarge {
        url: target.url.clone(),
        size,
        limit,
    };
    if meta.size > limit {
        return Err(too_large(meta.size));
    }
    let result = match body {
        Some(result) => result,
        None => match tokio::time::timeout(STALL, remote.store.get(&meta.location)).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => return Err(error::from_store(&target, &remote, Step::Download, &e)),
            Err(_) => return Err(stalled(&target, &remote)),
        },
    };
    let mut stream = result.into_stream();
    let mut data = BytesMut::with_capacity(usize::try_from(meta.size).unwrap_or(0));
    loop {
        match tokio::time::timeout(STALL, stream.next()).await {
            Err(_) => return Err(stalled(&target, &remote)),
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(error::from_store(&target, &remote, Step::Download, &e))
            }
            Ok(Some(Ok(chunk))) => {
                let got = (data.len() + chunk.len()) as u64;
                if got > limit {
                    return Err(too_large(got));
                }
                data.extend_from_slice(&chunk);
            }
        }
    }
    Ok(data.freeze())
}

/// The URL of the object at `key` in the bucket (or container) `target` names, keeping the
/// scheme and host form the user wrote (`s3://b/k`, `abfs://c@account.../k`). The key is
/// written as it is, not percent-encoded, as Cortex's S3 paths were.
fn object_url(target: &Target, key: &str) -> String {
    match url::Url::parse(&target.url) {
        Ok(url) => format!("{}/{key}", &url[..url::Position::BeforePath]),
        Err(_) => format!("{}/{key}", target.url.trim_end_matches('/')),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_urls_keep_the_listed_form() {
        let t = location::parse("s3://bucket/data/").unwrap();
        assert_eq!(object_url(&t, "data/a b.json"), "s3://bucket/data/a b.json");
        let t = location::parse("abfs://box@acct.dfs.core.windows.net/in").unwrap();
        assert_eq!(
            object_url(&t, "in/x.jsonl"),
            "abfs://box@acct.dfs.core.windows.net/in/x.jsonl"
        );
    }
}
