//! The store directory itself: opening it, staging and committing saves, listing, resolving
//! tags, deleting, and keeping `latest` right. Every change becomes visible through one
//! `rename(2)` (a staged directory into `<name>/<version>`, `latest.<random>` over `latest`),
//! so a crash leaves either no version or a complete one.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, SecondsFormat};
use gyrus_spec::{check_tag_part, ModelTag};
use sha2::{Digest, Sha256};

use crate::archive;
use crate::info::{self, Context, FileEntry, ModelInfo, Signature, MODEL_YAML};
use crate::version::{next_instant, random_name, version_at, version_millis};
use crate::StoreError;

/// Where saves and imports are assembled before they are renamed into place.
const STAGING: &str = ".staging";
/// The file naming the newest version of a model.
const LATEST: &str = "latest";

/// The local model store rooted at `GYRUS_HOME/models`.
#[derive(Debug, Clone)]
pub struct ModelStore {
    root: PathBuf,
}

/// What a save knows about a model; the store adds the version, time, size and files.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewModel {
    pub name: String,
    pub module: String,
    pub labels: BTreeMap<String, String>,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub options: serde_json::Map<String, serde_json::Value>,
    pub context: Context,
    pub signatures: BTreeMap<String, Signature>,
}

/// One stored version: its `model.yaml` and its directory.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredModel {
    pub info: ModelInfo,
    /// The version directory, `<root>/<name>/<version>`.
    pub path: PathBuf,
}

impl StoredModel {
    /// `name:version`.
    pub fn tag(&self) -> String {
        format!("{}:{}", self.info.name, self.info.version)
    }

    /// The model file of this version (see [`info::model_file`]); a version without one is a
    /// corrupt store entry, not the caller's fault.
    pub fn model_file(&self) -> Result<PathBuf, StoreError> {
        info::model_file(&self.path).map_err(|err| match err {
            StoreError::NoModelFile { .. } => StoreError::Corrupt {
                path: self.path.clone(),
                reason: err.to_string(),
            },
            other => other,
        })
    }
}

/// A save or import in progress: a fresh directory under `.staging/` (a `tempfile::TempDir`).
/// Dropping it without committing removes the directory and everything in it.
#[derive(Debug)]
pub struct Staging {
    root: PathBuf,
    dir: PathBuf,
    /// `None` once the directory was moved into the store.
    temp: Option<tempfile::TempDir>,
}

impl ModelStore {
    /// Opens (creating if needed) the store at `root` and its `.staging` directory.
    pub fn open(root: impl Into<PathBuf>) -> Result<ModelStore, StoreError> {
        let root = root.into();
        let staging = root.join(STAGING);
        fs::create_dir_all(&staging)
            .map_err(|e| StoreError::io(format!("cannot create {}", staging.display()), e))?;
        Ok(ModelStore { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A fresh staging directory under `.staging/`; removed on drop unless committed.
    pub fn begin(&self) -> Result<Staging, StoreError> {
        let parent = self.root.join(STAGING);
        let temp = tempfile::Builder::new()
            .prefix("save-")
            .tempdir_in(&parent)
            .map_err(|e| {
                StoreError::io(
                    format!("cannot create a directory in {}", parent.display()),
                    e,
                )
            })?;
        // tempfile makes it 0700; a version directory is readable like the rest of the store.
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(temp.path(), fs::Permissions::from_mode(0o755)).map_err(|e| {
                StoreError::io(
                    format!("cannot set the mode of {}", temp.path().display()),
                    e,
                )
            })?;
        }
        Ok(Staging {
            root: self.root.clone(),
            dir: temp.path().to_path_buf(),
            temp: Some(temp),
        })
    }

    /// Stored versions, newest first (by `creation_time`, then version). With a name, that
    /// model's versions only (none if the name is unknown). Directories without a readable
    /// `model.yaml` are skipped: they are not models (or are corrupt, which `resolve` of that
    /// exact version reports).
    pub fn list(&self, name: Option<&str>) -> Result<Vec<StoredModel>, StoreError> {
        let mut models = Vec::new();
        match name {
            Some(name) => {
                check_tag_part("name", name).map_err(StoreError::InvalidTag)?;
                models = self.versions_of(name)?;
            }
            None => {
                for name in self.names()? {
                    models.extend(self.versions_of(&name)?);
                }
                sort_newest_first(&mut models);
            }
        }
        Ok(models)
    }

    /// `name` / `name:latest`: the version `latest` names (or, if it is missing or dangling,
    /// the newest by `creation_time`); `name:version`: that version, else the only version
    /// starting with it.
    pub fn resolve(&self, tag: &ModelTag) -> Result<StoredModel, StoreError> {
        // The fields are public, so a tag may not have come through ModelTag::parse; checking
        // again also keeps `..` and `/` out of the paths built below.
        check_tag_part("name", &tag.name).map_err(StoreError::InvalidTag)?;
        let name = tag.name.as_str();
        let Some(version) = tag.version.as_deref().filter(|v| *v != LATEST) else {
            return self.latest(name)?.ok_or_else(|| self.not_found(tag));
        };
        check_tag_part("version", version).map_err(StoreError::InvalidTag)?;
        if self.is_version_dir(name, version) {
            return self.load(name, version);
        }
        let mut matches: Vec<String> = self
            .version_dirs(name)?
            .into_iter()
            .filter(|v| v.starts_with(version))
            .collect();
        match matches.len() {
            0 => Err(self.not_found(tag)),
            1 => self.load(name, &matches[0]),
            _ => {
                // Versions carry their creation time, so this is newest first without reading
                // every model.yaml.
                matches.sort_by(|a, b| {
                    (version_millis(b), b.as_str()).cmp(&(version_millis(a), a.as_str()))
                });
                Err(StoreError::Ambiguous {
                    tag: tag.to_string(),
                    candidates: matches,
                })
            }
        }
    }

    /// Removes one version: its directory is renamed into `.staging/` (one atomic step) and
    /// then removed. If it was `latest`, `latest` moves to the newest remaining version; the
    /// last version takes `<name>/` with it. Only `latest` itself is touched: the
    /// `latest.<random>` files of concurrent saves are theirs.
    pub fn delete(&self, tag: &ModelTag) -> Result<StoredModel, StoreError> {
        let model = self.resolve(tag)?;
        let name = model.info.name.clone();
        let trash = self.root.join(STAGING).join(random_name());
        fs::rename(&model.path, &trash)
            .map_err(|e| StoreError::io(format!("cannot remove {}", model.path.display()), e))?;
        // The version is gone from the store already; a leftover in .staging is removed by the
        // next clean_staging.
        let _ = fs::remove_dir_all(&trash);

        let remaining = self.versions_of(&name)?;
        let name_dir = self.root.join(&name);
        // Read now, not before the rename: a concurrent save may have moved `latest` since.
        // After the rename, a `latest` naming the deleted version names no version at all.
        let stale = self.read_latest(&name).is_none();
        match remaining.first() {
            None => {
                if stale {
                    let _ = fs::remove_file(name_dir.join(LATEST));
                }
                // Fails, harmlessly, if something is left in it (a concurrent save's version
                // or `latest.<random>`, or what is not a model).
                let _ = fs::remove_dir(&name_dir);
            }
            Some(newest) => {
                if stale {
                    write_latest(&name_dir, &newest.info.version)?;
                }
            }
        }
        Ok(model)
    }

    /// Writes the export archive of `tag` to `out`: gzip-compressed tar, `model.yaml` first,
    /// then the files sorted by path. If a stored file no longer matches its digest the error
    /// comes after part of the archive was written; the caller discards the output.
    pub fn export(&self, tag: &ModelTag, out: impl Write) -> Result<StoredModel, StoreError> {
        let model = self.resolve(tag)?;
        archive::export(&model, out)?;
        Ok(model)
    }

    /// Imports an export archive; every refusal of the contract is a
    /// [`StoreError::BadArchive`], and nothing is left in the store on any error.
    pub fn import(&self, input: impl Read) -> Result<StoredModel, StoreError> {
        let staging = self.begin()?;
        let info = archive::import(&staging, input, |name, version| {
            self.root
                .join(name)
                .join(version)
                .symlink_metadata()
                .is_ok()
        })?;
        let path = staging.install(&info.name, &info.version)?;
        self.advance_latest(&info)?;
        Ok(StoredModel { info, path })
    }

    /// Removes `.staging` entries in which nothing was modified for more than `age`: what
    /// crashed saves and imports left. An entry's age is that of the newest thing in it (found
    /// without following links), so a long save still writing a big file is kept. Best
    /// effort; errors are ignored.
    pub fn clean_staging(&self, age: Duration) {
        let Ok(entries) = fs::read_dir(self.root.join(STAGING)) else {
            return;
        };
        let now = SystemTime::now();
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = path.symlink_metadata() else {
                continue;
            };
            let old = newest_mtime(&path, &meta)
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|elapsed| elapsed > age);
            if old {
                let _ = if meta.is_dir() {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
            }
        }
    }

    /// Model names: directories following the tag rule (which also leaves out `.staging`).
    fn names(&self) -> Result<Vec<String>, StoreError> {
        let mut names: Vec<String> = read_dir_names(&self.root)?
            .into_iter()
            .filter(|n| check_tag_part("name", n).is_ok() && self.root.join(n).is_dir())
            .collect();
        names.sort();
        Ok(names)
    }

    /// The version directories of `name` that hold a `model.yaml` (unread).
    fn version_dirs(&self, name: &str) -> Result<Vec<String>, StoreError> {
        let dir = self.root.join(name);
        if !dir.is_dir() {
            return Ok(Vec::new());
        }
        Ok(read_dir_names(&dir)?
            .into_iter()
            .filter(|v| v != LATEST && check_tag_part("version", v).is_ok())
            .filter(|v| self.is_version_dir(name, v))
            .collect())
    }

    fn is_version_dir(&self, name: &str, version: &str) -> bool {
        self.root
            .join(name)
            .join(version)
            .join(MODEL_YAML)
            .symlink_metadata()
            .is_ok_and(|m| m.is_file())
    }

    /// The readable versions of `name`, newest first.
    fn versions_of(&self, name: &str) -> Result<Vec<StoredModel>, StoreError> {
        let mut models: Vec<StoredModel> = self
            .version_dirs(name)?
            .iter()
            .filter_map(|v| self.load(name, v).ok())
            .collect();
        sort_newest_first(&mut models);
        Ok(models)
    }

    /// Reads `<name>/<version>/model.yaml`, which must describe that name and version.
    fn load(&self, name: &str, version: &str) -> Result<StoredModel, StoreError> {
        let path = self.root.join(name).join(version);
        let yaml = path.join(MODEL_YAML);
        let info = ModelInfo::read(&yaml)?;
        if info.name != name || info.version != version {
            return Err(StoreError::Corrupt {
                path: yaml,
                reason: format!(
                    "it describes {}:{} but lies in {name}/{version}",
                    info.name, info.version
                ),
            });
        }
        Ok(StoredModel { info, path })
    }

    /// The version `latest` names, if it is a valid, present version.
    fn read_latest(&self, name: &str) -> Option<String> {
        let text = fs::read_to_string(self.root.join(name).join(LATEST)).ok()?;
        // The contract says no newline; a hand-edited file may have one.
        let version = text.trim();
        (check_tag_part("version", version).is_ok()
            && version != LATEST
            && self.is_version_dir(name, version))
        .then(|| version.to_string())
    }

    /// Points `latest` of `info.name` at `info.version` (just stored) unless it names a version
    /// at least as new, by `creation_time` and then version: a concurrent save or import that
    /// published a newer one keeps it. A missing, dangling or unreadable `latest` counts as
    /// older.
    fn advance_latest(&self, info: &ModelInfo) -> Result<(), StoreError> {
        let current = self
            .read_latest(&info.name)
            .and_then(|version| self.load(&info.name, &version).ok());
        let newer = current.is_none_or(|c| newness(info) > newness(&c.info));
        if newer {
            write_latest(&self.root.join(&info.name), &info.version)?;
        }
        Ok(())
    }

    /// The version `latest` names, else the newest by `creation_time`, else none.
    fn latest(&self, name: &str) -> Result<Option<StoredModel>, StoreError> {
        match self.read_latest(name) {
            Some(version) => self.load(name, &version).map(Some),
            None => Ok(self.versions_of(name)?.into_iter().next()),
        }
    }

    /// The NotFound error for `tag`, listing the versions of its name, or the model names.
    fn not_found(&self, tag: &ModelTag) -> StoreError {
        let versions = self.versions_of(&tag.name).unwrap_or_default();
        let available = if versions.is_empty() {
            self.names()
                .unwrap_or_default()
                .into_iter()
                .filter(|n| !self.version_dirs(n).unwrap_or_default().is_empty())
                .collect()
        } else {
            versions.iter().map(StoredModel::tag).collect()
        };
        StoreError::NotFound {
            tag: tag.to_string(),
            available,
        }
    }
}

impl Staging {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Unpacks an uploaded uncompressed tar into the staging directory with the same path
    /// rules as import: relative paths of normal components, regular files and directories
    /// only, at most `max_bytes` of file data, no top-level `model.yaml` (the store writes
    /// it). On error, what was unpacked stays until the staging is dropped.
    pub fn unpack_upload(&self, input: impl Read, max_bytes: u64) -> Result<(), StoreError> {
        archive::unpack_upload(&self.dir, input, max_bytes)
    }

    /// Describes the staged files (paths, sizes, sha256), gives the model a version and a
    /// creation time, writes `model.yaml`, renames the directory into `<name>/<version>` and
    /// points `latest` at it unless `latest` already names a newer version (a concurrent save's).
    pub fn commit(self, new: NewModel) -> Result<StoredModel, StoreError> {
        check_tag_part("name", &new.name).map_err(StoreError::InvalidTag)?;
        let yaml_path = self.dir.join(MODEL_YAML);
        if yaml_path.symlink_metadata().is_ok() {
            return Err(StoreError::BadArchive(format!(
                "{MODEL_YAML} is written by the store; rename the top-level {MODEL_YAML} of \
                 the model"
            )));
        }
        let files = describe_files(&self.dir)?;
        let size = files.iter().map(|f| f.size).sum();
        // One instant for both, so the version's timestamp is the creation time's.
        let now = next_instant();
        let info = ModelInfo {
            name: new.name,
            version: version_at(now),
            module: new.module,
            labels: new.labels,
            options: new.options,
            metadata: new.metadata,
            context: new.context,
            signatures: new.signatures,
            creation_time: now.to_rfc3339_opts(SecondsFormat::Micros, false),
            size,
            files,
        };
        let text = info.to_yaml().map_err(|e| {
            StoreError::io(
                format!("cannot write {}", yaml_path.display()),
                std::io::Error::other(e),
            )
        })?;
        write_synced(&yaml_path, text.as_bytes())?;
        let store = ModelStore {
            root: self.root.clone(),
        };
        let path = self.install(&info.name, &info.version)?;
        // If this fails the version is stored but `latest` is stale; the error says so.
        store.advance_latest(&info)?;
        Ok(StoredModel { info, path })
    }

    /// Renames the staging directory to `<name>/<version>`; refuses an existing version.
    pub(crate) fn install(mut self, name: &str, version: &str) -> Result<PathBuf, StoreError> {
        let name_dir = self.root.join(name);
        let target = name_dir.join(version);
        let tag = format!("{name}:{version}");
        // A concurrent delete of the last version may remove <name>/ between creating it and
        // the rename; trying again once more is enough for that.
        let mut attempts = 0;
        loop {
            attempts += 1;
            fs::create_dir_all(&name_dir)
                .map_err(|e| StoreError::io(format!("cannot create {}", name_dir.display()), e))?;
            if target.symlink_metadata().is_ok() {
                return Err(StoreError::Exists(tag));
            }
            match fs::rename(&self.dir, &target) {
                Ok(()) => {
                    // Moved: nothing is left for the TempDir to remove.
                    if let Some(temp) = self.temp.take() {
                        let _moved = temp.keep();
                    }
                    return Ok(target);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempts < 3 => continue,
                Err(_) if target.symlink_metadata().is_ok() => return Err(StoreError::Exists(tag)),
                Err(e) => {
                    return Err(StoreError::io(
                        format!("cannot move {} to {}", self.dir.display(), target.display()),
                        e,
                    ))
                }
            }
        }
    }
}

/// Newest first: `creation_time` descending, then version descending.
fn sort_newest_first(models: &mut [StoredModel]) {
    models.sort_by_cached_key(|m| std::cmp::Reverse((time_key(&m.info), m.info.version.clone())));
}

/// What `latest` compares: `creation_time`, then the version (base32hex, so it sorts by time
/// as a string too).
fn newness(info: &ModelInfo) -> (i64, &str) {
    (time_key(info), info.version.as_str())
}

/// Microseconds since the epoch of `creation_time`; an unreadable time sorts oldest.
pub(crate) fn time_key(info: &ModelInfo) -> i64 {
    DateTime::parse_from_rfc3339(&info.creation_time)
        .map(|t| t.timestamp_micros())
        .unwrap_or(i64::MIN)
}

fn read_dir_names(dir: &Path) -> Result<Vec<String>, StoreError> {
    let entries = fs::read_dir(dir)
        .map_err(|e| StoreError::io(format!("cannot read {}", dir.display()), e))?;
    Ok(entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect())
}

/// Replaces `<name_dir>/latest` atomically: write `latest.<random>`, rename it over.
fn write_latest(name_dir: &Path, version: &str) -> Result<(), StoreError> {
    let tmp = name_dir.join(format!("{LATEST}.{}", random_name()));
    let result = write_synced(&tmp, version.as_bytes()).and_then(|()| {
        fs::rename(&tmp, name_dir.join(LATEST)).map_err(|e| {
            StoreError::io(
                format!("cannot update {}", name_dir.join(LATEST).display()),
                e,
            )
        })
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The newest modification time of `path` (whose metadata is `meta`) and, for a directory,
/// of everything under it, without following links. What cannot be read is skipped.
fn newest_mtime(path: &Path, meta: &fs::Metadata) -> Option<SystemTime> {
    let mut newest = meta.modified().ok();
    // A stack, not recursion: an upload may nest directories some thousands deep.
    let mut dirs = if meta.is_dir() {
        vec![path.to_path_buf()]
    } else {
        Vec::new()
    };
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if let Ok(modified) = meta.modified() {
                newest = newest.max(Some(modified));
            }
            if meta.is_dir() {
                dirs.push(entry.path());
            }
        }
    }
    newest
}

/// Writes a file and flushes it to disk, so the rename that publishes it publishes data.
pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let write = || -> std::io::Result<()> {
        let mut file = File::create(path)?;
        file.write_all(bytes)?;
        file.sync_all()
    };
    write().map_err(|e| StoreError::io(format!("cannot write {}", path.display()), e))
}

/// `files` of a staged directory: every regular file, sorted by '/'-separated path, with size
/// and sha256. Links and special files are refused: the store holds regular files only.
fn describe_files(dir: &Path) -> Result<Vec<FileEntry>, StoreError> {
    let mut found = Vec::new();
    archive::walk_files(dir, &mut found)?;
    found.sort();
    let mut files = Vec::with_capacity(found.len());
    for rel in found {
        gyrus_archive::check_path(rel.as_bytes())
            .map_err(|reason| StoreError::BadArchive(format!("{rel:?}: {reason}")))?;
        let path = dir.join(&rel);
        let (size, sha256) = hash_file(&path)?;
        files.push(FileEntry {
            path: rel,
            size,
            sha256,
        });
    }
    Ok(files)
}

/// Size and lowercase hex sha256 of a file.
pub(crate) fn hash_file(path: &Path) -> Result<(u64, String), StoreError> {
    let err = |e| StoreError::io(format!("cannot read {}", path.display()), e);
    let mut file = File::open(path).map_err(err)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex::encode(hasher.finalize())))
}
