//! Streaming one object into a new local file: progress, stall detection, the size and MD5
//! checks, and fsync. The caller owns the directory and decides what becomes of the file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use md5::{Digest, Md5};
use object_store::path::Path as ObjectPath;
use object_store::{GetResult, ObjectMeta, ObjectStoreExt};
use sha2::Sha256;

use crate::error::{self, FetchError, Step};
use crate::location::{Remote, Target};
use crate::Progress;

/// A request or a body that shows no progress for this long is given up. There is no total
/// timeout (a multi-gigabyte model takes what it takes), so this is what ends a hung server.
pub(crate) const STALL: Duration = Duration::from_secs(60);

/// Reports progress to the caller's callback at most every 100 ms, and once at the end.
pub(crate) struct Reporter<'a> {
    url: &'a str,
    callback: &'a (dyn Fn(&Progress) + Send + Sync),
    done: u64,
    total: Option<u64>,
    last: Option<Instant>,
}

impl<'a> Reporter<'a> {
    pub(crate) fn new(
        url: &'a str,
        callback: &'a (dyn Fn(&Progress) + Send + Sync),
        total: Option<u64>,
    ) -> Self {
        Reporter {
            url,
            callback,
            done: 0,
            total,
            last: None,
        }
    }

    fn add(&mut self, n: u64) {
        self.done += n;
        if self
            .last
            .is_none_or(|last| last.elapsed() >= Duration::from_millis(100))
        {
            self.report();
        }
    }

    pub(crate) fn report(&mut self) {
        self.last = Some(Instant::now());
        (self.callback)(&Progress {
            url: self.url.to_string(),
            done: self.done,
            total: self.total,
        });
    }
}

/// What one object must turn out to be.
pub(crate) struct Expected<'a> {
    pub location: &'a ObjectPath,
    pub meta: &'a ObjectMeta,
    /// Also compute the SHA-256 of the bytes (to name a cache entry when the server gives no
    /// validator).
    pub sha256: bool,
}

/// The MD5 an ETag stands for: S3's ETag of an object uploaded in one part (and not encrypted
/// with KMS or a customer key) is the hex MD5 of its bytes; multipart ETags end in "-N".
pub(crate) fn etag_md5(e_tag: Option<&str>) -> Option<String> {
    let tag = e_tag?.trim().trim_start_matches("W/").trim_matches('"');
    (tag.len() == 32 && tag.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| tag.to_ascii_lowercase())
}

/// Whether two ETags name the same version. Stores quote them in headers but not always in
/// listings (Azure lists `0x8D...` and answers a GET with `"0x8D..."`), so quotes and a weak
/// marker are not part of the comparison.
fn same_etag(a: &str, b: &str) -> bool {
    bare_etag(a) == bare_etag(b)
}

/// An ETag without quotes or weak marker (see [`same_etag`]).
pub(crate) fn bare_etag(tag: &str) -> &str {
    tag.trim().trim_start_matches("W/").trim_matches('"')
}

/// Downloads `expected` into `dest`, which must not exist, and returns the SHA-256 of the bytes
/// when `expected.sha256` asked for it. `body` is a GET already under way for it (made while
/// looking the object up), read instead of making another. On error `dest` may hold a partial
/// file: the caller's temporary directory is what keeps it from ever being read.
pub(crate) async fn object(
    target: &Target,
    remote: &Remote,
    expected: Expected<'_>,
    body: Option<GetResult>,
    dest: &Path,
    reporter: &mut Reporter<'_>,
) -> Result<Option<String>, FetchError> {
    let url = &target.url;
    let size = expected.meta.size;
    let want_md5 = match remote.md5_etags {
        true => etag_md5(expected.meta.e_tag.as_deref()),
        false => None,
    };

    remote.etag_not_md5.store(false, Ordering::SeqCst);
    let result = match body {
        Some(result) => result,
        None => match tokio::time::timeout(STALL, remote.store.get(expected.location)).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => return Err(error::from_store(target, remote, Step::Download, &e)),
            Err(_) => return Err(stalled(target, remote)),
        },
    };
    // The listing or HEAD said one thing, the GET says another: the object was replaced in
    // between. Caching it under the old validator would be wrong.
    let etag_changed = matches!(
        (&result.meta.e_tag, &expected.meta.e_tag),
        (Some(now), Some(before)) if !same_etag(now, before)
    );
    if etag_changed || result.meta.size != size {
        return Err(FetchError::Changed { url: url.clone() });
    }
    let check_md5 = want_md5.filter(|_| !remote.etag_not_md5.load(Ordering::SeqCst));

    // Disk writes and hashing run on a blocking thread, so a fast network does not stall the
    // runtime; a small channel keeps memory bounded when the disk is the slower side.
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let writer = {
        let dest = dest.to_path_buf();
        let md5 = check_md5.is_some();
        let sha256 = expected.sha256;
        tokio::task::spawn_blocking(move || write_file(dest, rx, md5, sha256))
    };

    let mut stream = result.into_stream();
    let mut got: u64 = 0;
    let streamed: Result<(), FetchError> = async {
        loop {
            let chunk = match tokio::time::timeout(STALL, stream.next()).await {
                Err(_) => {
                    return Err(incomplete(
                        url,
                        got,
                        size,
                        format!("no data for {} s", STALL.as_secs()),
                    ))
                }
                Ok(None) => return Ok(()),
                Ok(Some(Err(e))) => {
                    let reason = error::classify(&e).summary();
                    return Err(incomplete(url, got, size, reason));
                }
                Ok(Some(Ok(chunk))) => chunk,
            };
            got += chunk.len() as u64;
            if got > size {
                return Err(incomplete(
                    url,
                    got,
                    size,
                    "the server sent more bytes than it announced".to_string(),
                ));
            }
            reporter.add(chunk.len() as u64);
            if tx.send(chunk).await.is_err() {
                // The writer stopped: its error is reported below.
                return Ok(());
            }
        }
    }
    .await;
    drop(tx);
    let written = writer.await.map_err(|e| FetchError::Io {
        url: url.clone(),
        path: dest.to_path_buf(),
        source: std::io::Error::other(e),
    });
    streamed?;
    let (bytes, md5, sha256) = written?.map_err(|source| FetchError::Io {
        url: url.clone(),
        path: dest.to_path_buf(),
        source,
    })?;
    if bytes != size {
        return Err(incomplete(
            url,
            bytes,
            size,
            "the server closed the connection early".to_string(),
        ));
    }
    if let (Some(want), Some(got)) = (check_md5, md5) {
        if want != got {
            return Err(FetchError::ChecksumMismatch {
                url: url.clone(),
                expected: want,
                actual: got,
            });
        }
    }
    Ok(sha256)
}

fn incomplete(url: &str, got: u64, expected: u64, reason: String) -> FetchError {
    FetchError::Incomplete {
        url: url.to_string(),
        got,
        expected,
        reason,
    }
}

pub(crate) fn stalled(target: &Target, remote: &Remote) -> FetchError {
    FetchError::Unreachable {
        url: target.url.clone(),
        endpoint: remote.endpoint.clone(),
        reason: format!("no answer within {} s", STALL.as_secs()),
    }
}

type WriteResult = std::io::Result<(u64, Option<String>, Option<String>)>;

fn write_file(
    dest: PathBuf,
    mut rx: tokio::sync::mpsc::Receiver<Bytes>,
    md5: bool,
    sha256: bool,
) -> WriteResult {
    let file = std::fs::File::create_new(&dest)?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut md5 = md5.then(Md5::new);
    let mut sha256 = sha256.then(Sha256::new);
    let mut bytes = 0u64;
    while let Some(chunk) = rx.blocking_recv() {
        out.write_all(&chunk)?;
        if let Some(h) = md5.as_mut() {
            h.update(&chunk);
        }
        if let Some(h) = sha256.as_mut() {
            h.update(&chunk);
        }
        bytes += chunk.len() as u64;
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    // Data on disk before the rename that publishes it, so a crash cannot leave a complete-
    // looking entry with missing bytes.
    file.sync_all()?;
    Ok((
        bytes,
        md5.map(|h| hex::encode(h.finalize())),
        sha256.map(|h| hex::encode(h.finalize())),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_single_part_etags_are_md5s() {
        assert_eq!(
            etag_md5(Some("\"9B2CF535F27731C974343645A3985328\"")).as_deref(),
            Some("9b2cf535f27731c974343645a3985328")
        );
        assert_eq!(
            etag_md5(Some("\"9b2cf535f27731c974343645a3985328-3\"")),
            None
        );
        assert_eq!(etag_md5(Some("W/\"abc\"")), None);
        assert_eq!(etag_md5(None), None);
    }

    #[test]
    fn etags_compare_without_quotes() {
        assert!(same_etag("0x8DE1A2B3C4D5E6F", "\"0x8DE1A2B3C4D5E6F\""));
        assert!(same_etag("W/\"abc\"", "abc"));
        assert!(!same_etag("\"abc\"", "\"abd\""));
    }
}
