//! Export archives (gzip-compressed tar, `model.yaml` first), their import, and the unpacking
//! of uploads (uncompressed tar from the CLI). Import and upload read hostile input; the
//! extraction rules (paths, entry kinds, name clashes, the byte budget, what the stream may
//! hold past what its entry headers announce) are `gyrus-archive`'s, shared with the daemon's
//! project archives. What is the store's own: `model.yaml` first in an export archive, and
//! every file checked against it (listed, size, sha256) as it is extracted; no top-level
//! `model.yaml` in an upload. The archive crate's errors become [`StoreError::BadArchive`]
//! messages naming the entry ("archive entry …", "upload entry …").

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::Path;

use chrono::DateTime;
use flate2::write::GzEncoder;
use flate2::Compression;
use gyrus_archive::{ancestors, check_path, ArchiveError, Extractor, Kind, Limits};
use gyrus_spec::check_tag_part;
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

use crate::info::{FileEntry, ModelInfo, MODEL_YAML};
use crate::store::{hash_file, write_synced, Staging, StoredModel};
use crate::{StoreError, MAX_MODEL_BYTES};

/// The largest `model.yaml` an import reads.
const MAX_MODEL_YAML: u64 = 1 << 20;
/// The most entries an archive or upload may have.
const MAX_ENTRIES: usize = 100_000;

/// Collects the '/'-separated relative paths of the regular files under `dir`. Links and
/// special files are refused, as are names that are not UTF-8.
pub(crate) fn walk_files(dir: &Path, out: &mut Vec<String>) -> Result<(), StoreError> {
    walk(dir, "", out)
}

fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) -> Result<(), StoreError> {
    let entries = fs::read_dir(dir)
        .map_err(|e| StoreError::io(format!("cannot read {}", dir.display()), e))?;
    for entry in entries {
        let entry =
            entry.map_err(|e| StoreError::io(format!("cannot read {}", dir.display()), e))?;
        let name = entry.file_name().into_string().map_err(|name| {
            StoreError::BadArchive(format!(
                "{prefix}{}: file names must be UTF-8",
                name.to_string_lossy()
            ))
        })?;
        let rel = format!("{prefix}{name}");
        let kind = entry
            .file_type()
            .map_err(|e| StoreError::io(format!("cannot read {}", entry.path().display()), e))?;
        if kind.is_dir() {
            walk(&entry.path(), &format!("{rel}/"), out)?;
        } else if kind.is_file() {
            out.push(rel);
        } else {
            return Err(StoreError::BadArchive(format!(
                "{rel} is a link or special file; the store holds regular files and \
                 directories only"
            )));
        }
    }
    Ok(())
}

/// A tar header for an exported regular file: mode 0644, owned by 0:0.
fn export_header(size: u64, mtime: u64) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(EntryType::Regular);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(mtime);
    header.set_size(size);
    header
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Writes the export archive of `model`: `model.yaml` (its exact bytes), then every listed
/// file in path order, checked against its size and sha256 as it is written.
pub(crate) fn export(model: &StoredModel, out: impl Write) -> Result<(), StoreError> {
    let yaml_path = model.path.join(MODEL_YAML);
    let yaml = fs::read(&yaml_path)
        .map_err(|e| StoreError::io(format!("cannot read {}", yaml_path.display()), e))?;
    let corrupt = |reason: String| StoreError::Corrupt {
        path: model.path.clone(),
        reason,
    };
    let write_err = |e| StoreError::io("cannot write the export archive", e);
    // The creation time as mtime keeps the archive the same however often it is exported.
    let mtime = DateTime::parse_from_rfc3339(&model.info.creation_time)
        .map(|t| u64::try_from(t.timestamp()).unwrap_or(0))
        .unwrap_or(0);

    let mut builder = tar::Builder::new(GzEncoder::new(out, Compression::default()));
    let mut header = export_header(yaml.len() as u64, mtime);
    builder
        .append_data(&mut header, MODEL_YAML, yaml.as_slice())
        .map_err(write_err)?;

    let mut files: Vec<&FileEntry> = model.info.files.iter().collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    for file in files {
        check_path(file.path.as_bytes())
            .map_err(|reason| corrupt(format!("model.yaml lists {:?}: {reason}", file.path)))?;
        let path = model.path.join(&file.path);
        let meta = path
            .symlink_metadata()
            .map_err(|e| corrupt(format!("{}: {e}", file.path)))?;
        if !meta.is_file() || meta.len() != file.size {
            return Err(corrupt(format!(
                "{} is not a regular file of {} bytes as model.yaml says",
                file.path, file.size
            )));
        }
        let opened = File::open(&path)
            .map_err(|e| StoreError::io(format!("cannot read {}", path.display()), e))?;
        let mut reader = Hashing {
            inner: opened.take(file.size),
            hasher: Sha256::new(),
        };
        let mut header = export_header(file.size, mtime);
        builder
            .append_data(&mut header, &file.path, &mut reader)
            .map_err(|e| StoreError::io(format!("cannot add {} to the archive", file.path), e))?;
        let digest = hex::encode(reader.hasher.finalize());
        if digest != file.sha256 {
            return Err(corrupt(format!(
                "the sha256 of {} is {digest}, model.yaml says {}",
                file.path, file.sha256
            )));
        }
    }
    builder
        .into_inner()
        .and_then(|gz| gz.finish())
        .and_then(|mut out| out.flush())
        .map_err(write_err)?;
    Ok(())
}

/// Checks an archive's `model.yaml` before any file is read: the tag rule for name and version,
/// an RFC 3339 creation time, a `size` of at most [`MAX_MODEL_BYTES`], safe unique paths that do not clash (`a` and `a/b`), digests of
/// 64 lowercase hex digits, and `size` equal to the sum of the files' sizes.
fn check_manifest(info: &ModelInfo) -> Result<(), String> {
    let in_yaml = |m: String| format!("model.yaml in the archive: {m}");
    check_tag_part("name", &info.name).map_err(in_yaml)?;
    check_tag_part("version", &info.version).map_err(in_yaml)?;
    if info.version == "latest" {
        return Err(in_yaml("the version \"latest\" is reserved".into()));
    }
    DateTime::parse_from_rfc3339(&info.creation_time).map_err(|e| {
        in_yaml(format!(
            "creation_time {:?} is not an RFC 3339 time: {e}",
            info.creation_time
        ))
    })?;
    if info.size > MAX_MODEL_BYTES {
        return Err(in_yaml(format!(
            "size is {} bytes; models of at most {} GiB ({MAX_MODEL_BYTES} bytes) are accepted",
            info.size,
            MAX_MODEL_BYTES >> 30
        )));
    }
    if info.files.len() > MAX_ENTRIES {
        return Err(in_yaml(format!("more than {MAX_ENTRIES} files")));
    }
    let mut paths = BTreeSet::new();
    let mut total = 0u64;
    for file in &info.files {
        let path = check_path(file.path.as_bytes())
            .map_err(|reason| in_yaml(format!("files lists {:?}: {reason}", file.path)))?;
        if path == MODEL_YAML {
            return Err(in_yaml(format!("files lists {MODEL_YAML} itself")));
        }
        if !paths.insert(path) {
            return Err(in_yaml(format!("files lists {:?} twice", file.path)));
        }
        let hex_ok = file.sha256.len() == 64
            && file
                .sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex_ok {
            return Err(in_yaml(format!(
                "the sha256 of {:?} is not 64 lowercase hex digits",
                file.path
            )));
        }
        total = total
            .checked_add(file.size)
            .ok_or_else(|| in_yaml("the files' sizes overflow".into()))?;
    }
    for path in &paths {
        if let Some(parent) = ancestors(path).find(|a| paths.contains(*a)) {
            return Err(in_yaml(format!(
                "files lists both {parent:?} and {path:?} inside it"
            )));
        }
    }
    if total != info.size {
        return Err(in_yaml(format!(
            "size is {} but the files listed add up to {total} bytes",
            info.size
        )));
    }
    Ok(())
}

/// "the archive's first entry is … (a …), not model.yaml".
fn not_model_yaml(entry: &str, kind: &dyn std::fmt::Display) -> StoreError {
    StoreError::BadArchive(format!(
        "the archive's first entry is {entry:?} (a {kind}), not model.yaml; export archives \
         start with model.yaml"
    ))
}

/// An extraction error of an import as the store words it. `claimed` is `model.yaml`'s
/// `size` once it is read: data past what the entries announce, or past the budget, is then
/// "more than model.yaml claims"; before, it can only be the first entry's headers.
fn import_error(e: ArchiveError, claimed: Option<u64>) -> StoreError {
    StoreError::BadArchive(match (e, claimed) {
        (
            ArchiveError::Unannounced
            | ArchiveError::StreamTooLong { .. }
            | ArchiveError::TooLarge { .. },
            Some(size),
        ) => format!("the archive holds more data than model.yaml claims ({size} bytes)"),
        (ArchiveError::Unannounced, None) => {
            "the archive's first entry has more than 64 KiB of headers".into()
        }
        (ArchiveError::Malformed { source, .. }, _) => {
            format!("the archive is not a valid gzip-compressed tar: {source}")
        }
        (ArchiveError::TooManyEntries { .. }, _) => {
            format!("the archive has more than {MAX_ENTRIES} entries")
        }
        (ArchiveError::Kind { entry, kind }, _) => format!(
            "archive entry {entry:?} is a {kind}; archives hold regular files only (and \
             directories for their paths)"
        ),
        (
            ArchiveError::Truncated {
                entry,
                copied,
                size,
            },
            _,
        ) => format!("{entry} is truncated: {copied} of its {size} bytes are in the archive"),
        // Paths, clashes, directories with data, write errors: "archive entry …".
        (other, _) => format!("archive {other}"),
    })
}

/// Imports an export archive into `staging`: reads and checks `model.yaml`, refuses a tag
/// already stored (`exists(name, version)`), extracts exactly the listed files checking size
/// and sha256 of each, and writes `model.yaml` with its archive bytes. Returns the description;
/// the caller renames the staging directory into place.
pub(crate) fn import(
    staging: &Staging,
    input: impl Read,
    exists: impl Fn(&str, &str) -> bool,
) -> Result<ModelInfo, StoreError> {
    let dir = staging.dir();
    let mut archive = Extractor::gzip(input, Some(dir), Limits::new(MAX_MODEL_BYTES, MAX_ENTRIES))
        .sync_files(true);
    let first_error = |e: ArchiveError| match e {
        ArchiveError::Kind { entry, kind } => not_model_yaml(&entry, &kind),
        ArchiveError::Path { entry, kind, .. } => not_model_yaml(&entry, &kind),
        other => import_error(other, None),
    };
    let mut entries = archive.entries().map_err(first_error)?;

    // model.yaml, first.
    let Some(first) = entries.next_entry().map_err(first_error)? else {
        return Err(StoreError::BadArchive(
            "the archive is empty; its first entry must be model.yaml".into(),
        ));
    };
    if first.kind() != Kind::File || first.path() != MODEL_YAML {
        return Err(not_model_yaml(first.name(), &first.kind()));
    }
    let yaml_size = first.size();
    if yaml_size > MAX_MODEL_YAML {
        return Err(StoreError::BadArchive(format!(
            "model.yaml in the archive is {yaml_size} bytes; at most {MAX_MODEL_YAML} are accepted"
        )));
    }
    let yaml = first.read_to_end(MAX_MODEL_YAML).map_err(|e| match e {
        ArchiveError::Truncated { .. } => {
            StoreError::BadArchive("model.yaml is truncated in the archive".into())
        }
        other => first_error(other),
    })?;
    let text = std::str::from_utf8(&yaml)
        .map_err(|_| StoreError::BadArchive("model.yaml in the archive is not UTF-8".into()))?;
    let info = ModelInfo::from_yaml(text)
        .map_err(|e| StoreError::BadArchive(format!("model.yaml in the archive: {e}")))?;
    check_manifest(&info).map_err(StoreError::BadArchive)?;
    if exists(&info.name, &info.version) {
        return Err(StoreError::Exists(format!(
            "{}:{}",
            info.name, info.version
        )));
    }

    // The files, each as model.yaml lists it.
    entries.restrict_bytes(info.size);
    let error = |e: ArchiveError| import_error(e, Some(info.size));
    let listed: BTreeMap<&str, &FileEntry> =
        info.files.iter().map(|f| (f.path.as_str(), f)).collect();
    let parents: BTreeSet<&str> = listed.keys().flat_map(|p| ancestors(p)).collect();
    let mut seen = BTreeSet::new();
    while let Some(mut entry) = entries.next_entry().map_err(error)? {
        if entry.kind() == Kind::Dir {
            if !parents.contains(entry.path()) {
                return Err(StoreError::BadArchive(format!(
                    "archive entry {:?} is a directory that holds no file listed in model.yaml",
                    entry.name()
                )));
            }
            entry.extract().map_err(error)?;
            continue;
        }
        let path = entry.path().to_owned();
        let Some(file) = listed.get(path.as_str()) else {
            return Err(StoreError::BadArchive(if path == MODEL_YAML {
                "model.yaml appears twice in the archive".to_string()
            } else {
                format!("{path} is in the archive but not listed in model.yaml")
            }));
        };
        if !seen.insert(path.clone()) {
            return Err(StoreError::BadArchive(format!(
                "{path} appears twice in the archive"
            )));
        }
        // Clashes and the budget (model.yaml's size) first, on the header alone, before a
        // byte of the data is inflated.
        entry.admit().map_err(error)?;
        let size = entry.size();
        if size != file.size {
            return Err(StoreError::BadArchive(format!(
                "{path} is {size} bytes in the archive but {} bytes in model.yaml",
                file.size
            )));
        }
        let mut hasher = Sha256::new();
        entry
            .extract_with(|chunk| hasher.update(chunk))
            .map_err(error)?;
        let digest = hex::encode(hasher.finalize());
        if digest != file.sha256 {
            return Err(StoreError::BadArchive(format!(
                "the sha256 of {path} in the archive is {digest}, model.yaml says {}",
                file.sha256
            )));
        }
    }
    let missing: Vec<&str> = listed
        .keys()
        .filter(|p| !seen.contains(**p))
        .copied()
        .collect();
    if let Some(first) = missing.first() {
        let others = match missing.len() - 1 {
            0 => String::new(),
            n => format!(" (and {n} more)"),
        };
        return Err(StoreError::BadArchive(format!(
            "{first}{others} is listed in model.yaml but missing from the archive"
        )));
    }
    archive.finish().map_err(error)?;

    write_synced(&dir.join(MODEL_YAML), &yaml)?;
    verify_tree(dir, &info)?;
    Ok(info)
}

/// After extraction, the staging directory must hold exactly `model.yaml` and the listed
/// files with their sizes and digests. The extraction above already ensures it; this is the
/// last word before the directory becomes a stored model.
fn verify_tree(dir: &Path, info: &ModelInfo) -> Result<(), StoreError> {
    let mut found = Vec::new();
    walk_files(dir, &mut found)?;
    found.retain(|p| p != MODEL_YAML);
    found.sort();
    let mut listed: Vec<&FileEntry> = info.files.iter().collect();
    listed.sort_by(|a, b| a.path.cmp(&b.path));
    let expected: Vec<&str> = listed.iter().map(|f| f.path.as_str()).collect();
    if found != expected {
        return Err(StoreError::BadArchive(format!(
            "the extracted files {found:?} differ from those listed in model.yaml {expected:?}"
        )));
    }
    for file in listed {
        let (size, sha256) = hash_file(&dir.join(&file.path))?;
        if size != file.size || sha256 != file.sha256 {
            return Err(StoreError::BadArchive(format!(
                "{} does not match model.yaml after extraction",
                file.path
            )));
        }
    }
    Ok(())
}

/// Unpacks an uploaded uncompressed tar into `dir` (see [`Staging::unpack_upload`]).
pub(crate) fn unpack_upload(
    dir: &Path,
    input: impl Read,
    max_bytes: u64,
) -> Result<(), StoreError> {
    let error = |e: ArchiveError| {
        StoreError::BadArchive(match e {
            ArchiveError::Unannounced => "the upload holds more than its entries announce (over \
                 64 KiB of headers for one entry, or data after the end of the tar)"
                .into(),
            ArchiveError::TooLarge { .. } => {
                format!("the upload is larger than the limit of {max_bytes} bytes")
            }
            ArchiveError::StreamTooLong { limit } => format!(
                "the upload is larger than the limit of {max_bytes} bytes ({limit} bytes with \
                 its headers)"
            ),
            ArchiveError::Malformed { source, .. } => {
                format!("the upload is not a valid tar: {source}")
            }
            ArchiveError::TooManyEntries { .. } => {
                format!("the upload has more than {MAX_ENTRIES} entries")
            }
            ArchiveError::Kind { entry, kind } => format!(
                "upload entry {entry:?} is a {kind}; uploads hold regular files and directories \
                 only"
            ),
            ArchiveError::Truncated {
                entry,
                copied,
                size,
            } => format!("{entry} is truncated: {copied} of its {size} bytes are in the archive"),
            // Paths, clashes, directories with data, write errors: "upload entry …".
            other => format!("upload {other}"),
        })
    };
    let mut archive =
        Extractor::new(input, Some(dir), Limits::new(max_bytes, MAX_ENTRIES)).sync_files(true);
    let mut entries = archive.entries().map_err(error)?;
    while let Some(entry) = entries.next_entry().map_err(error)? {
        if entry.kind() == Kind::File && entry.path() == MODEL_YAML {
            return Err(StoreError::BadArchive(
                "the upload has a top-level model.yaml, which the store writes; rename that file"
                    .into(),
            ));
        }
        entry.extract().map_err(error)?;
    }
    archive.finish().map_err(error).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_write_errors_name_the_entry_not_the_staging_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let store = crate::ModelStore::open(tmp.path().join("models")).unwrap();
        let staging = store.begin().unwrap();
        // A file where the entry needs a directory: what the path rules cannot foresee of a
        // file system (a case-insensitive one, say) comes out the same way.
        fs::write(staging.dir().join("data"), b"in the way").unwrap();
        let yaml = format!(
            "name: m\nversion: 0vd8k1s2m4q6r8tu\ncreation_time: '2026-01-01T00:00:00+00:00'\n\
             size: 1\nfiles:\n- path: data/w.bin\n  size: 1\n  sha256: {}\n",
            hex::encode(Sha256::digest(b"w"))
        );
        let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
        for (path, data) in [("model.yaml", yaml.as_bytes()), ("data/w.bin", b"w")] {
            let mut header = export_header(data.len() as u64, 0);
            builder.append_data(&mut header, path, data).unwrap();
        }
        let archive = builder.into_inner().unwrap().finish().unwrap();
        let err = import(&staging, &archive[..], |_, _| false).unwrap_err();
        assert!(matches!(err, StoreError::BadArchive(_)), "{err:?}");
        let message = err.to_string();
        assert!(
            message.starts_with("archive entry \"data/w.bin\" cannot be written: "),
            "{message}"
        );
        assert!(!message.contains(tmp.path().to_str().unwrap()), "{message}");
    }
}
