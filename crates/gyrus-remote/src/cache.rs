//! The cache directory: finding out what a URL names (one object or a prefix), naming entries by
//! the URL and the server's validator, downloading into `.tmp/`, and publishing a finished
//! download with one `rename(2)`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, GetResult, ObjectMeta, ObjectStore, ObjectStoreExt};
use sha2::{Digest, Sha256};
use tracing::debug;

use crate::download::{self, Expected, Reporter, STALL};
use crate::error::{self, Class, FetchError, Step};
use crate::location::{self, Remote, Scheme, Target};
use crate::{FetchOptions, Fetched, Freshness, Progress};

const TMP: &str = ".tmp";
const CURRENT: &str = "current";

#[derive(Debug)]
pub(crate) struct Cache {
    root: PathBuf,
    /// One fetch per URL at a time in this process, so parallel deploys of one model download
    /// it once. Other processes are handled by the rename (the loser drops its copy).
    locks: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
}

/// What a URL turned out to name.
pub(crate) enum Plan {
    File(ObjectMeta),
    Dir(Vec<DirFile>),
}

pub(crate) struct DirFile {
    /// Path components below the prefix, each checked to be a plain name.
    pub(crate) rel: Vec<String>,
    pub(crate) meta: ObjectMeta,
}

impl Plan {
    fn total(&self) -> u64 {
        match self {
            Plan::File(meta) => meta.size,
            Plan::Dir(files) => files.iter().map(|f| f.meta.size).sum(),
        }
    }

    /// What identifies this version of the content on the server. `None` when the server
    /// gives nothing to tell versions apart (an HTTP server without ETag or Last-Modified):
    /// then the entry is named after the downloaded bytes' SHA-256.
    fn validator(&self) -> Option<String> {
        match self {
            Plan::File(meta) => file_validator(meta),
            Plan::Dir(files) => {
                let mut text = String::from("dir\n");
                for f in files {
                    let v = file_validator(&f.meta).unwrap_or_else(|| "-".to_string());
                    text.push_str(&format!("{}\t{v}\n", f.rel.join("/")));
                }
                Some(text)
            }
        }
    }
}

fn file_validator(meta: &ObjectMeta) -> Option<String> {
    let size = meta.size;
    if let Some(e_tag) = &meta.e_tag {
        // Bare, so a file and a listing of its prefix (quoted, unquoted on Azure) agree.
        let e_tag = crate::download::bare_etag(e_tag);
        Some(format!("etag\t{e_tag}\t{size}"))
    } else if let Some(version) = &meta.version {
        Some(format!("version\t{version}\t{size}"))
    } else if meta.last_modified.timestamp() != 0 {
        // object_store reports a missing Last-Modified as the epoch.
        Some(format!(
            "modified\t{}\t{size}",
            meta.last_modified.to_rfc3339()
        ))
    } else {
        None
    }
}

/// 32 hex digits of SHA-256: short enough for paths, far from colliding.
fn short_hash(data: &str) -> String {
    let mut hex = hex::encode(Sha256::digest(data.as_bytes()));
    hex.truncate(32);
    hex
}

/// A name no other process or task picks at the same time.
fn unique() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{}.{nanos}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

impl Cache {
    pub(crate) fn new(root: PathBuf) -> Cache {
        Cache {
            root,
            locks: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    fn lock_for(&self, key: &Path) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(key.to_path_buf()).or_default().clone()
    }

    pub(crate) async fn fetch(
        &self,
        url: &str,
        opts: &FetchOptions,
        freshness: Freshness,
        progress: &(dyn Fn(&Progress) + Send + Sync),
    ) -> Result<Fetched, FetchError> {
        let target = location::parse(url)?;
        let place = location::location(&target, opts);
        let url_key = short_hash(&target.url);
        let url_dir = self
            .root
            .join(short_hash(&format!("{}\n{}", target.url, place.key)));
        if freshness == Freshness::PreferCached {
            if let Some(fetched) = read_current(&url_dir) {
                debug!(url = %target.url, path = %fetched.path.display(), "using the cached copy without asking the server");
                return Ok(fetched);
            }
            if !place.certain {
                if let Some(fetched) = self.only_location(&target, &url_key)? {
                    debug!(url = %target.url, path = %fetched.path.display(), "using the only cached location without asking the server");
                    return Ok(fetched);
                }
            }
        }
        let remote = location::connect(&target, opts)?;
        let (plan, body) = resolve(&target, &remote).await?;
        let is_dir = matches!(plan, Plan::Dir(_));
        let total = plan.total();

        let lock = self.lock_for(&url_dir);
        let _guard = lock.lock().await;
        let io_err = |path: &Path, source: std::io::Error| FetchError::Io {
            url: target.url.clone(),
            path: path.to_path_buf(),
            source,
        };

        let record = |entry: &str| Record {
            entry: entry.to_string(),
            url_key: url_key.clone(),
            location: place.shown.clone(),
        };
        let validator = plan.validator();
        if let Some(validator) = &validator {
            let entry_name = short_hash(validator);
            let payload = url_dir.join(&entry_name).join(&target.name);
            if payload.exists() {
                debug!(url = %target.url, path = %payload.display(), "the cached copy is current");
                write_current(&url_dir, &record(&entry_name), &target.name, is_dir, total)
                    .map_err(|e| io_err(&url_dir, e))?;
                return Ok(Fetched {
                    path: payload,
                    is_dir,
                    bytes: total,
                    from_cache: true,
                });
            }
        }

        let tmp_root = self.root.join(TMP);
        std::fs::create_dir_all(&tmp_root).map_err(|e| io_err(&tmp_root, e))?;
        // Dropped (and removed) on every early return, including cancellation of this future.
        let tmp = tempfile::Builder::new()
            .prefix("dl-")
            .tempdir_in(&tmp_root)
            .map_err(|e| io_err(&tmp_root, e))?;
        let local = tmp.path().join(&target.name);
        let mut reporter = Reporter::new(&target.url, progress, Some(total));
        reporter.report();
        debug!(url = %target.url, bytes = total, is_dir, "downloading");
        let sha256 = match &plan {
            Plan::File(meta) => {
                let expected = Expected {
                    location: &meta.location,
                    meta,
                    sha256: validator.is_none(),
                };
                download::object(&target, &remote, expected, body, &local, &mut reporter).await?
            }
            Plan::Dir(files) => {
                std::fs::create_dir(&local).map_err(|e| io_err(&local, e))?;
                for file in files {
                    let mut dest = local.clone();
                    dest.extend(&file.rel);
                    if let Some(parent) = dest.parent() {
                        std::fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
                    }
                    let expected = Expected {
                        location: &file.meta.location,
                        meta: &file.meta,
                        sha256: false,
                    };
                    download::object(&target, &remote, expected, None, &dest, &mut reporter)
                        .await?;
                }
                None
            }
        };
        reporter.report();

        let entry_name = match (&validator, sha256) {
            (Some(validator), _) => short_hash(validator),
            (None, Some(sha256)) => short_hash(&format!("sha256\t{sha256}")),
            (None, None) => short_hash(&format!("download\t{}", unique())),
        };
        let entry = url_dir.join(&entry_name);
        std::fs::create_dir_all(&url_dir).map_err(|e| io_err(&url_dir, e))?;
        // tempfile makes its directory private (0700); once published it is an ordinary cache
        // directory that replicas read, like the files in it.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))
                .map_err(|e| io_err(tmp.path(), e))?;
        }
        sync_dirs(tmp.path()).map_err(|e| io_err(tmp.path(), e))?;
        match std::fs::rename(tmp.path(), &entry) {
            Ok(()) => {
                // Renamed away: nothing left for the guard to remove.
                let _ = tmp.keep();
                sync_dir(&url_dir).map_err(|e| io_err(&url_dir, e))?;
                debug!(url = %target.url, path = %entry.display(), "cached");
            }
            Err(e) if entry.join(&target.name).exists() => {
                // Another process finished the same version first; theirs is as good.
                debug!(url = %target.url, error = %e, "another fetch cached it first");
            }
            Err(e) => return Err(io_err(&entry, e)),
        }
        write_current(&url_dir, &record(&entry_name), &target.name, is_dir, total)
            .map_err(|e| io_err(&url_dir, e))?;
        Ok(Fetched {
            path: entry.join(&target.name),
            is_dir,
            bytes: total,
            from_cache: false,
        })
    }

    /// The last complete download of `target` from whichever location it was fetched, when it
    /// was fetched from one location only; an error when from several (which one the caller
    /// means cannot be told without the deploy's environment).
    fn only_location(&self, target: &Target, url_key: &str) -> Result<Option<Fetched>, FetchError> {
        let Ok(dirs) = std::fs::read_dir(&self.root) else {
            return Ok(None);
        };
        let mut found: Vec<(String, Fetched)> = Vec::new();
        for dir in dirs.flatten() {
            if dir.file_name() == TMP {
                continue;
            }
            let dir = dir.path();
            let Some(fields) = read_record(&dir) else {
                continue;
            };
            if fields.get("url").map(String::as_str) != Some(url_key) {
                continue;
            }
            if let Some(fetched) = read_current(&dir) {
                found.push((fields.get("location").cloned().unwrap_or_default(), fetched));
            }
        }
        match found.len() {
            0 => Ok(None),
            1 => Ok(found.pop().map(|(_, fetched)| fetched)),
            _ => {
                let mut places: Vec<String> = found.into_iter().map(|(place, _)| place).collect();
                places.sort();
                Err(FetchError::BadConfig {
                    url: target.url.clone(),
                    detail: format!(
                        "it was downloaded from {} places ({}), and without the environment of \
                         the deploy (after a restart of the daemon) which one is meant cannot \
                         be told; deploy the API again",
                        places.len(),
                        places.join("; ")
                    ),
                })
            }
        }
    }

    pub(crate) fn clean_tmp(&self, age: Duration) {
        let dir = self.root.join(TMP);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        let now = SystemTime::now();
        for entry in entries.flatten() {
            let path = entry.path();
            // The newest modification anywhere inside: a download still being written keeps
            // its directory young even when the directory itself was created long ago.
            let newest = newest_mtime(&path);
            let old = newest
                .and_then(|t| now.duration_since(t).ok())
                .is_none_or(|elapsed| elapsed >= age);
            if !old {
                continue;
            }
            let removed = match entry.file_type() {
                Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
                _ => std::fs::remove_file(&path),
            };
            match removed {
                Ok(()) => debug!(path = %path.display(), "removed a stale download"),
                Err(e) => {
                    debug!(path = %path.display(), error = %e, "cannot remove a stale download")
                }
            }
        }
    }
}

/// Decides between one object and a prefix, and lists the prefix. For an HTTP(S) server that
/// refuses HEAD and ignores ranges, also the GET whose body is the download.
pub(crate) async fn resolve(
    target: &Target,
    remote: &Remote,
) -> Result<(Plan, Option<GetResult>), FetchError> {
    let store = &remote.store;
    // A HEAD error that is kept in case the listing finds nothing either.
    let mut head_error = None;
    if !target.prefix_only {
        match tokio::time::timeout(STALL, store.head(&target.path)).await {
            Err(_) => return Err(download::stalled(target, remote)),
            Ok(Ok(meta)) => return Ok((Plan::File(meta), None)),
            Ok(Err(e)) if target.scheme == Scheme::Http && head_refused(&e) => {
                debug!(url = %target.url, error = %e, "HEAD refused; asking with a GET");
                return head_by_get(target, remote).await;
            }
            Ok(Err(e)) => match error::classify(&e) {
                Class::NotFound { .. } if target.scheme != Scheme::Http => {}
                Class::Denied { .. } if target.scheme == Scheme::S3 => {
                    return Err(explain_denied(target, remote, e).await)
                }
                // File-system-backed S3 servers (s3s-fs among them) fail a HEAD of a name that
                // is a directory on their disk with a 500 instead of a 404; the listing below
                // still tells a prefix from a missing object.
                Class::Other { .. } if target.scheme != Scheme::Http => {
                    head_error = Some(error::from_store(target, remote, Step::Lookup, &e));
                }
                _ => return Err(error::from_store(target, remote, Step::Lookup, &e)),
            },
        }
    }
    // Not an object: maybe a prefix ("directory") with objects under it.
    let prefix = (!target.key.is_empty()).then_some(&target.path);
    let mut listing = store.list(prefix);
    let mut found = Vec::new();
    loop {
        match tokio::time::timeout(STALL, listing.next()).await {
            Err(_) => return Err(download::stalled(target, remote)),
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(
                    head_error.unwrap_or_else(|| error::from_store(target, remote, Step::List, &e))
                )
            }
            Ok(Some(Ok(meta))) => found.push(meta),
        }
    }
    if found.is_empty() {
        return Err(head_error.unwrap_or_else(|| FetchError::NoSuchKey {
            url: target.url.clone(),
            bucket: target.bucket.clone(),
            key: target.key.clone(),
        }));
    }
    let mut files = Vec::with_capacity(found.len());
    for meta in found {
        let rel = relative(prefix, &meta.location).map_err(|detail| FetchError::UnsafeKey {
            url: target.url.clone(),
            detail,
        })?;
        files.push(DirFile { rel, meta });
    }
    Ok((Plan::Dir(drop_markers(target, files)?), None))
}

/// An HTTP(S) HEAD refused with a client error other than 404: a presigned GET URL answers 403
/// (its signature covers GET only), some servers 405 (which object_store reads as "not
/// found"). A GET may still work.
fn head_refused(err: &object_store::Error) -> bool {
    error::status_of(err).is_some_and(|status| (400..500).contains(&status) && status != 404)
}

/// The object's size and validators from a GET instead of a HEAD: a one-byte range when the
/// server honours ranges, else the whole body, which is then kept as the download itself.
async fn head_by_get(
    target: &Target,
    remote: &Remote,
) -> Result<(Plan, Option<GetResult>), FetchError> {
    let ranged = GetOptions {
        range: Some(GetRange::Bounded(0..1)),
        ..GetOptions::default()
    };
    match tokio::time::timeout(STALL, remote.store.get_opts(&target.path, ranged)).await {
        Err(_) => return Err(download::stalled(target, remote)),
        // The meta of a 206 has the whole size (from Content-Range); the one byte is dropped.
        Ok(Ok(result)) => return Ok((Plan::File(result.meta), None)),
        Ok(Err(e)) => {
            // A 200 to a range request (object_store refuses it as "not supported") or a 416
            // (an empty object has no byte 0) calls for the plain GET; anything else is the
            // answer.
            let unranged = matches!(e, object_store::Error::NotSupported { .. })
                || error::status_of(&e) == Some(416);
            if !unranged {
                return Err(error::from_store(target, remote, Step::Lookup, &e));
            }
            debug!(url = %target.url, error = %e, "no range support; the GET is the download");
        }
    }
    match tokio::time::timeout(STALL, remote.store.get(&target.path)).await {
        Err(_) => Err(download::stalled(target, remote)),
        Ok(Ok(result)) => Ok((Plan::File(result.meta.clone()), Some(result))),
        Ok(Err(e)) => Err(error::from_store(target, remote, Step::Lookup, &e)),
    }
}

/// A HEAD answer has no body, so a 403 to it does not say whether the secret key is wrong, the
/// key ID unknown or a permission missing. A one-byte GET of the same object gets the S3 error
/// document that does.
async fn explain_denied(
    target: &Target,
    remote: &Remote,
    head_err: object_store::Error,
) -> FetchError {
    let options = GetOptions {
        range: Some(GetRange::Bounded(0..1)),
        ..GetOptions::default()
    };
    match tokio::time::timeout(STALL, remote.store.get_opts(&target.path, options)).await {
        Ok(Err(e)) if matches!(error::classify(&e), Class::Denied { .. }) => {
            error::from_store(target, remote, Step::Lookup, &e)
        }
        _ => error::from_store(target, remote, Step::Lookup, &head_err),
    }
}

/// The components of `location` below `prefix`, refusing anything that is not a plain name.
fn relative(prefix: Option<&ObjectPath>, location: &ObjectPath) -> Result<Vec<String>, String> {
    let parts: Vec<String> = match prefix {
        Some(prefix) => location
            .prefix_match(prefix)
            .ok_or_else(|| format!("\"{location}\" is not under \"{prefix}/\""))?
            .map(|p| p.as_ref().to_string())
            .collect(),
        None => location.parts().map(|p| p.as_ref().to_string()).collect(),
    };
    for part in &parts {
        let bad = match part.as_str() {
            "" => Some("an empty component"),
            "." | ".." => Some("a \".\" or \"..\" component"),
            p if p.contains(['/', '\0']) => Some("a '/' or NUL inside a component"),
            _ => None,
        };
        if let Some(why) = bad {
            return Err(format!("\"{location}\" has {why}"));
        }
    }
    Ok(parts)
}

/// Consoles create empty "folder/" objects; object_store reports them without the slash, as
/// empty objects named like the folder. Those are dropped; a non-empty object that is also a
/// folder cannot be laid out as files.
fn drop_markers(target: &Target, files: Vec<DirFile>) -> Result<Vec<DirFile>, FetchError> {
    let folders: std::collections::HashSet<Vec<String>> = files
        .iter()
        .flat_map(|f| (0..f.rel.len()).map(|n| f.rel[..n].to_vec()))
        .collect();
    let mut kept = Vec::with_capacity(files.len());
    for file in files {
        let is_folder = file.rel.is_empty() || folders.contains(&file.rel);
        match (is_folder, file.meta.size) {
            (false, _) => kept.push(file),
            (true, 0) => {}
            (true, _) => {
                return Err(FetchError::UnsafeKey {
                    url: target.url.clone(),
                    detail: format!(
                        "\"{}\" is both an object and a folder of other objects",
                        file.meta.location
                    ),
                })
            }
        }
    }
    kept.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(kept)
}

/// What `current` says besides the file: the entry, and the URL (as its hash: a presigned URL's
/// signature stays off the disk) and location the download came from.
struct Record {
    entry: String,
    url_key: String,
    location: String,
}

fn write_current(
    url_dir: &Path,
    record: &Record,
    name: &str,
    is_dir: bool,
    bytes: u64,
) -> std::io::Result<()> {
    let kind = if is_dir { "dir" } else { "file" };
    let Record {
        entry,
        url_key,
        location,
    } = record;
    let text = format!(
        "entry={entry}\nname={name}\nkind={kind}\nbytes={bytes}\nurl={url_key}\n\
         location={location}\n"
    );
    let path = url_dir.join(CURRENT);
    if std::fs::read_to_string(&path).ok().as_deref() == Some(text.as_str()) {
        return Ok(());
    }
    // Written aside and renamed, so a reader sees the old or the new record, never half.
    let tmp = url_dir.join(format!("{CURRENT}.{}", unique()));
    let written = (|| {
        let mut file = std::fs::File::create_new(&tmp)?;
        std::io::Write::write_all(&mut file, text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// The fields of a `current` record.
fn read_record(url_dir: &Path) -> Option<HashMap<String, String>> {
    let text = std::fs::read_to_string(url_dir.join(CURRENT)).ok()?;
    let mut fields = HashMap::new();
    for line in text.lines() {
        let (k, v) = line.split_once('=')?;
        fields.insert(k.to_string(), v.to_string());
    }
    Some(fields)
}

/// The last complete download recorded for a URL and location, if it is still there.
fn read_current(url_dir: &Path) -> Option<Fetched> {
    let fields = read_record(url_dir)?;
    let entry = fields.get("entry")?.as_str();
    let name = fields.get("name")?.as_str();
    let is_dir = match fields.get("kind")?.as_str() {
        "dir" => true,
        "file" => false,
        _ => return None,
    };
    let bytes = fields.get("bytes")?.parse().ok()?;
    let plain = |s: &str| !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '\0']);
    if !plain(entry) || !plain(name) {
        return None;
    }
    let path = url_dir.join(entry).join(name);
    let meta = std::fs::metadata(&path).ok()?;
    (meta.is_dir() == is_dir).then_some(Fetched {
        path,
        is_dir,
        bytes,
        from_cache: true,
    })
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// fsyncs every directory of a tree, so the names of the fsynced files survive a crash too.
fn sync_dirs(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            sync_dirs(&entry.path())?;
        }
    }
    sync_dir(dir)
}

fn newest_mtime(path: &Path) -> Option<SystemTime> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    let mut newest = meta.modified().ok();
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).ok()?.flatten() {
            if let Some(t) = newest_mtime(&entry.path()) {
                newest = Some(newest.map_or(t, |n| n.max(t)));
            }
        }
    }
    newest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_plain_names() {
        let prefix = ObjectPath::from("models/m");
        assert_eq!(
            relative(Some(&prefix), &ObjectPath::from("models/m/sub/a.bin")).unwrap(),
            vec!["sub", "a.bin"]
        );
        assert!(relative(Some(&prefix), &ObjectPath::from("models/other/a")).is_err());
        assert_eq!(
            relative(None, &ObjectPath::from("a/b")).unwrap(),
            vec!["a", "b"]
        );
    }

    #[test]
    fn current_records_round_trip_and_need_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let url_dir = dir.path();
        let record = Record {
            entry: "abc".to_string(),
            url_key: "k".to_string(),
            location: "http://x".to_string(),
        };
        write_current(url_dir, &record, "m.onnx", false, 5).unwrap();
        assert!(read_current(url_dir).is_none(), "no entry on disk yet");
        std::fs::create_dir_all(url_dir.join("abc")).unwrap();
        std::fs::write(url_dir.join("abc/m.onnx"), "12345").unwrap();
        let fetched = read_current(url_dir).unwrap();
        assert_eq!(fetched.path, url_dir.join("abc/m.onnx"));
        assert_eq!(
            (fetched.is_dir, fetched.bytes, fetched.from_cache),
            (false, 5, true)
        );
        std::fs::write(
            url_dir.join(CURRENT),
            "entry=../x\nname=m\nkind=file\nbytes=1\n",
        )
        .unwrap();
        assert!(read_current(url_dir).is_none());
    }

    #[test]
    fn clean_tmp_removes_only_old_downloads() {
        let root = tempfile::tempdir().unwrap();
        let cache = Cache::new(root.path().to_path_buf());
        std::fs::create_dir_all(root.path().join(".tmp/dl-a/x")).unwrap();
        std::fs::write(root.path().join(".tmp/dl-a/x/f"), "1").unwrap();
        cache.clean_tmp(Duration::from_secs(3600));
        assert!(root.path().join(".tmp/dl-a").exists());
        cache.clean_tmp(Duration::ZERO);
        assert!(!root.path().join(".tmp/dl-a").exists());
    }
}
