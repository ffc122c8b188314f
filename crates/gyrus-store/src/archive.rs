//! Export archives (gzip-compressed tar, `model.yaml` first), their import, and the unpacking
//! of uploads (uncompressed tar from the CLI). Import and upload read hostile input: paths must
//! be relative with normal components only, entries must be regular files (or directories),
//! and every byte read is accounted for. A tar stream's data is bounded by what its entry
//! headers announce, and those are checked before the data is read; what the headers cannot
//! bound (GNU long names and pax records, which the `tar` crate reads into memory, and data
//! after the end of the archive) is capped by a [`Budget`] on the decompressed stream, so a
//! gzip bomb is refused after reading at most a few headers.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;
use std::rc::Rc;

use chrono::DateTime;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use gyrus_spec::check_tag_part;
use sha2::{Digest, Sha256};
use tar::{Archive, EntryType, Header};

use crate::info::{FileEntry, ModelInfo, MODEL_YAML};
use crate::store::{hash_file, write_synced, Staging, StoredModel};
use crate::{StoreError, MAX_MODEL_BYTES};

/// The largest `model.yaml` an import reads.
const MAX_MODEL_YAML: u64 = 1 << 20;
/// The most entries an archive or upload may have.
const MAX_ENTRIES: usize = 100_000;
/// Bytes allowed past the end of an accepted entry's data: the next entry's header blocks
/// (with long names and pax records) or the end-of-archive blocks and record padding.
const HEADER_ALLOWANCE: u64 = 64 * 1024;
const BLOCK: u64 = 512;
/// The longest path component an entry may have, in bytes (`NAME_MAX` on Linux).
const MAX_COMPONENT_BYTES: usize = 255;
/// The longest relative path an entry may have, in bytes (`PATH_MAX` on Linux).
const MAX_PATH_BYTES: usize = 4096;

/// Checks a path from an archive entry, an upload or `model.yaml`'s `files`: UTF-8, relative,
/// '/'-separated normal components (no empty, `.` or `..` component, no backslash or NUL), at
/// most 255 bytes a component and 4096 in all, so that no file system refuses the name.
/// Returns it as a string, or why it is refused.
pub(crate) fn check_rel_path(raw: &[u8]) -> Result<String, String> {
    let path = std::str::from_utf8(raw).map_err(|_| "the path is not UTF-8".to_string())?;
    if path.is_empty() {
        return Err("the path is empty".into());
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(format!(
            "the path is {} bytes long; at most {MAX_PATH_BYTES} are allowed",
            path.len()
        ));
    }
    if path.starts_with('/') {
        return Err("absolute paths are not allowed".into());
    }
    if path.contains('\0') {
        return Err("the path contains a NUL byte".into());
    }
    if path.contains('\\') {
        // A separator on Windows, so the Python module could write outside the directory.
        return Err("backslashes are not allowed in paths".into());
    }
    for part in path.split('/') {
        match part {
            ".." => return Err("'..' components are not allowed".into()),
            "." | "" => return Err("'.' and empty components are not allowed".into()),
            long if long.len() > MAX_COMPONENT_BYTES => {
                return Err(format!(
                    "a path component is {} bytes long; at most {MAX_COMPONENT_BYTES} are allowed",
                    long.len()
                ))
            }
            _ => {}
        }
    }
    Ok(path.to_string())
}

/// The '/'-separated ancestors of a relative path: `a/b/c` gives `a`, `a/b`.
fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').map(move |(i, _)| &path[..i])
}

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

/// Counts the bytes read from a (decompressed) tar stream and refuses to read past `allowed`,
/// which grows as entries are accepted. Reading past it is an error, never an early EOF, which
/// the tar reader would take for the end of the archive.
#[derive(Clone, Copy, Default)]
struct Budget {
    read: u64,
    allowed: u64,
    exceeded: bool,
}

struct Limited<R> {
    inner: R,
    budget: Rc<Cell<Budget>>,
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut budget = self.budget.get();
        let left = budget.allowed.saturating_sub(budget.read);
        if left == 0 && !buf.is_empty() {
            budget.exceeded = true;
            self.budget.set(budget);
            return Err(io::Error::other(
                "more data than the archive's entries announce",
            ));
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let got = self.inner.read(&mut buf[..want])?;
        budget.read += got as u64;
        self.budget.set(budget);
        Ok(got)
    }
}

/// Allows reading the data of an entry starting at `data_at` of `size` bytes, and the headers
/// after it.
fn allow(budget: &Cell<Budget>, data_at: u64, size: u64) {
    let mut b = budget.get();
    let end = data_at
        .saturating_add(size.div_ceil(BLOCK).saturating_mul(BLOCK))
        .saturating_add(HEADER_ALLOWANCE);
    b.allowed = b.allowed.max(end);
    budget.set(b);
}

/// What kind of entry a tar header announces, in words, for refusals.
fn kind_name(kind: EntryType) -> String {
    match kind {
        EntryType::Regular => "regular file".into(),
        EntryType::Link => "hard link".into(),
        EntryType::Symlink => "symbolic link".into(),
        EntryType::Char => "character device".into(),
        EntryType::Block => "block device".into(),
        EntryType::Directory => "directory".into(),
        EntryType::Fifo => "FIFO".into(),
        EntryType::Continuous => "contiguous file".into(),
        EntryType::XGlobalHeader => "pax global header".into(),
        EntryType::GNUSparse => "sparse file".into(),
        other => format!("entry of type {:?}", char::from(other.as_byte())),
    }
}

/// A file-system error creating or writing the entry `rel` (`what` is "archive entry" or
/// "upload entry") under a staging directory. The paths were checked, so what is left is the
/// input's doing (a name the file system refuses, say); the message names the entry, never
/// the staging directory.
fn unwritable(what: &str, rel: &str, e: &io::Error) -> StoreError {
    StoreError::BadArchive(format!("{what} {rel:?} cannot be written: {e}"))
}

/// Creates the directory `rel` (and its parents) under `dir` for the entry `entry`.
fn create_dirs(dir: &Path, rel: &str, what: &str, entry: &str) -> Result<(), StoreError> {
    fs::create_dir_all(dir.join(rel)).map_err(|e| unwritable(what, entry, &e))
}

/// Copies an entry's `size` bytes into a new file at `dir/rel`, creating its parent
/// directories, and returns the lowercase hex sha256. Read errors are the archive's; write
/// errors are refusals naming the entry (see [`unwritable`]).
fn copy_entry(
    entry: &mut impl Read,
    dir: &Path,
    rel: &str,
    size: u64,
    what: &str,
    read_error: &dyn Fn(io::Error) -> StoreError,
) -> Result<String, StoreError> {
    let write_err = |e: io::Error| unwritable(what, rel, &e);
    if let Some((parent, _)) = rel.rsplit_once('/') {
        create_dirs(dir, parent, what, rel)?;
    }
    let dest = dir.join(rel);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&dest)
        .map_err(write_err)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut copied = 0u64;
    loop {
        let n = match entry.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_error(e)),
        };
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).map_err(write_err)?;
        copied += n as u64;
    }
    if copied != size {
        return Err(StoreError::BadArchive(format!(
            "{rel} is truncated: {copied} of its {size} bytes are in the archive"
        )));
    }
    file.sync_all().map_err(write_err)?;
    Ok(hex::encode(hasher.finalize()))
}

/// Reads the rest of a stream (bounded by its budget) so that a gzip stream's checksum is
/// verified and trailing garbage is noticed.
fn drain(
    mut rest: impl Read,
    read_error: &dyn Fn(io::Error) -> StoreError,
) -> Result<(), StoreError> {
    io::copy(&mut rest, &mut io::sink())
        .map(|_| ())
        .map_err(read_error)
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
        check_rel_path(file.path.as_bytes())
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
        let path = check_rel_path(file.path.as_bytes())
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
    let budget = Rc::new(Cell::new(Budget {
        allowed: HEADER_ALLOWANCE,
        ..Budget::default()
    }));
    let mut archive = Archive::new(Limited {
        inner: GzDecoder::new(input),
        budget: Rc::clone(&budget),
    });
    let not_tar = |e: io::Error| {
        if budget.get().exceeded {
            StoreError::BadArchive(
                "the archive's first entry has more than 64 KiB of headers".into(),
            )
        } else {
            StoreError::BadArchive(format!(
                "the archive is not a valid gzip-compressed tar: {e}"
            ))
        }
    };
    let mut entries = archive.entries().map_err(not_tar)?;

    // model.yaml, first.
    let mut first = match entries.next() {
        None => {
            return Err(StoreError::BadArchive(
                "the archive is empty; its first entry must be model.yaml".into(),
            ))
        }
        Some(entry) => entry.map_err(not_tar)?,
    };
    let kind = first.header().entry_type();
    let first_path = String::from_utf8_lossy(&first.path_bytes()).into_owned();
    if kind != EntryType::Regular || first_path != MODEL_YAML {
        return Err(StoreError::BadArchive(format!(
            "the archive's first entry is {first_path:?} (a {}), not model.yaml; export \
             archives start with model.yaml",
            kind_name(kind)
        )));
    }
    let yaml_size = first.size();
    if yaml_size > MAX_MODEL_YAML {
        return Err(StoreError::BadArchive(format!(
            "model.yaml in the archive is {yaml_size} bytes; at most {MAX_MODEL_YAML} are accepted"
        )));
    }
    allow(&budget, first.raw_file_position(), yaml_size);
    let mut yaml = Vec::new();
    first.read_to_end(&mut yaml).map_err(not_tar)?;
    if yaml.len() as u64 != yaml_size {
        return Err(StoreError::BadArchive(
            "model.yaml is truncated in the archive".into(),
        ));
    }
    drop(first);
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

    let too_much = || {
        StoreError::BadArchive(format!(
            "the archive holds more data than model.yaml claims ({} bytes)",
            info.size
        ))
    };
    let read_error = |e: io::Error| {
        if budget.get().exceeded {
            too_much()
        } else {
            StoreError::BadArchive(format!(
                "the archive is not a valid gzip-compressed tar: {e}"
            ))
        }
    };
    let listed: BTreeMap<&str, &FileEntry> =
        info.files.iter().map(|f| (f.path.as_str(), f)).collect();
    let parents: BTreeSet<&str> = listed.keys().flat_map(|p| ancestors(p)).collect();
    let mut seen = BTreeSet::new();
    // The directories the entries so far make: those announced and the files' parents.
    let mut dirs: BTreeSet<String> = BTreeSet::new();
    let mut total = 0u64;
    let mut count = 1usize;
    for entry in entries {
        let mut entry = entry.map_err(read_error)?;
        count += 1;
        if count > MAX_ENTRIES {
            return Err(StoreError::BadArchive(format!(
                "the archive has more than {MAX_ENTRIES} entries"
            )));
        }
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let kind = entry.header().entry_type();
        let size = entry.size();
        match kind {
            EntryType::Directory => {
                let trimmed = raw.strip_suffix(b"/").unwrap_or(&raw);
                let path = check_rel_path(trimmed).map_err(|reason| {
                    StoreError::BadArchive(format!("archive entry {shown:?}: {reason}"))
                })?;
                if !parents.contains(path.as_str()) {
                    return Err(StoreError::BadArchive(format!(
                        "archive entry {shown:?} is a directory that holds no file listed in \
                         model.yaml"
                    )));
                }
                if size != 0 {
                    return Err(StoreError::BadArchive(format!(
                        "archive entry {shown:?} is a directory with {size} bytes of data"
                    )));
                }
                allow(&budget, entry.raw_file_position(), 0);
                dirs.extend(ancestors(&path).map(str::to_string));
                dirs.insert(path);
            }
            EntryType::Regular => {
                let path = check_rel_path(&raw).map_err(|reason| {
                    StoreError::BadArchive(format!("archive entry {shown:?}: {reason}"))
                })?;
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
                // model.yaml's paths do not clash, so neither of these passes a listed file;
                // they keep the file system from ever being asked to.
                if dirs.contains(&path) {
                    return Err(StoreError::BadArchive(format!(
                        "archive entry {shown:?} is a file, but an earlier entry made it a \
                         directory"
                    )));
                }
                if let Some(file) = ancestors(&path).find(|a| seen.contains(*a)) {
                    return Err(StoreError::BadArchive(format!(
                        "archive entry {shown:?} lies inside {file:?}, which is a file"
                    )));
                }
                // Refused on the header alone, before a byte of the data is inflated.
                if total.saturating_add(size) > info.size {
                    return Err(too_much());
                }
                if size != file.size {
                    return Err(StoreError::BadArchive(format!(
                        "{path} is {size} bytes in the archive but {} bytes in model.yaml",
                        file.size
                    )));
                }
                total += size;
                allow(&budget, entry.raw_file_position(), size);
                dirs.extend(ancestors(&path).map(str::to_string));
                let digest =
                    copy_entry(&mut entry, dir, &path, size, "archive entry", &read_error)?;
                if digest != file.sha256 {
                    return Err(StoreError::BadArchive(format!(
                        "the sha256 of {path} in the archive is {digest}, model.yaml says {}",
                        file.sha256
                    )));
                }
            }
            other => {
                return Err(StoreError::BadArchive(format!(
                    "archive entry {shown:?} is a {}; archives hold regular files only (and \
                     directories for their paths)",
                    kind_name(other)
                )));
            }
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
    drain(archive.into_inner(), &read_error)?;

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
    let budget = Rc::new(Cell::new(Budget {
        allowed: HEADER_ALLOWANCE,
        ..Budget::default()
    }));
    let mut archive = Archive::new(Limited {
        inner: input,
        budget: Rc::clone(&budget),
    });
    let read_error = |e: io::Error| {
        if budget.get().exceeded {
            StoreError::BadArchive(
                "the upload holds more than its entries announce (over 64 KiB of headers \
                 for one entry, or data after the end of the tar)"
                    .into(),
            )
        } else {
            StoreError::BadArchive(format!("the upload is not a valid tar: {e}"))
        }
    };
    let mut files = BTreeSet::new();
    let mut dirs = BTreeSet::new();
    let mut total = 0u64;
    let mut count = 0usize;
    for entry in archive.entries().map_err(read_error)? {
        let mut entry = entry.map_err(read_error)?;
        count += 1;
        if count > MAX_ENTRIES {
            return Err(StoreError::BadArchive(format!(
                "the upload has more than {MAX_ENTRIES} entries"
            )));
        }
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let kind = entry.header().entry_type();
        let size = entry.size();
        let is_dir = kind == EntryType::Directory;
        if !is_dir && kind != EntryType::Regular {
            return Err(StoreError::BadArchive(format!(
                "upload entry {shown:?} is a {}; uploads hold regular files and directories \
                 only",
                kind_name(kind)
            )));
        }
        let trimmed = if is_dir {
            raw.strip_suffix(b"/").unwrap_or(&raw)
        } else {
            &raw[..]
        };
        let path = check_rel_path(trimmed).map_err(|reason| {
            StoreError::BadArchive(format!("upload entry {shown:?}: {reason}"))
        })?;
        if let Some(file) = ancestors(&path).find(|a| files.contains(*a)) {
            return Err(StoreError::BadArchive(format!(
                "upload entry {shown:?} lies inside {file:?}, which is a file"
            )));
        }
        if is_dir {
            if files.contains(&path) {
                return Err(StoreError::BadArchive(format!(
                    "upload entry {shown:?} is a directory but also a file"
                )));
            }
            if size != 0 {
                return Err(StoreError::BadArchive(format!(
                    "upload entry {shown:?} is a directory with {size} bytes of data"
                )));
            }
            allow(&budget, entry.raw_file_position(), 0);
            create_dirs(dir, &path, "upload entry", &path)?;
            dirs.extend(ancestors(&path).map(str::to_string));
            dirs.insert(path);
            continue;
        }
        if path == MODEL_YAML {
            return Err(StoreError::BadArchive(
                "the upload has a top-level model.yaml, which the store writes; rename that file"
                    .into(),
            ));
        }
        if files.contains(&path) {
            return Err(StoreError::BadArchive(format!(
                "upload entry {shown:?} appears twice"
            )));
        }
        if dirs.contains(&path) {
            return Err(StoreError::BadArchive(format!(
                "upload entry {shown:?} is a file, but an earlier entry made it a directory"
            )));
        }
        total = total.saturating_add(size);
        if total > max_bytes {
            return Err(StoreError::BadArchive(format!(
                "the upload is larger than the limit of {max_bytes} bytes"
            )));
        }
        allow(&budget, entry.raw_file_position(), size);
        dirs.extend(ancestors(&path).map(str::to_string));
        copy_entry(&mut entry, dir, &path, size, "upload entry", &read_error)?;
        files.insert(path);
    }
    drain(archive.into_inner(), &read_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_rules() {
        for ok in ["a", "a/b.onnx", "x..y", ".hidden/f", "a b/c"] {
            assert_eq!(check_rel_path(ok.as_bytes()).unwrap(), ok);
        }
        for (bad, why) in [
            ("", "empty"),
            ("/etc/passwd", "absolute"),
            ("../x", "'..'"),
            ("a/../../x", "'..'"),
            ("a//b", "empty components"),
            ("./a", "'.'"),
            ("a/", "empty components"),
            ("a\\..\\b", "backslash"),
        ] {
            let err = check_rel_path(bad.as_bytes()).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
        assert!(check_rel_path(b"\xff").unwrap_err().contains("not UTF-8"));
        assert_eq!(ancestors("a/b/c").collect::<Vec<_>>(), ["a", "a/b"]);
    }

    #[test]
    fn path_lengths() {
        let part = "a".repeat(255);
        assert!(check_rel_path(part.as_bytes()).is_ok());
        let err = check_rel_path(format!("x/{part}a/y").as_bytes()).unwrap_err();
        assert_eq!(
            err,
            "a path component is 256 bytes long; at most 255 are allowed"
        );
        let path = format!("{}/{}", vec!["b".repeat(200); 20].join("/"), "c".repeat(76));
        assert_eq!(path.len(), 4096);
        assert!(check_rel_path(path.as_bytes()).is_ok());
        let err = check_rel_path(format!("{path}d").as_bytes()).unwrap_err();
        assert_eq!(err, "the path is 4097 bytes long; at most 4096 are allowed");
    }

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

    #[test]
    fn budget_errors_instead_of_eof() {
        let budget = Rc::new(Cell::new(Budget {
            allowed: 4,
            ..Budget::default()
        }));
        let mut r = Limited {
            inner: &[1u8; 10][..],
            budget: Rc::clone(&budget),
        };
        let mut buf = [0u8; 8];
        assert_eq!(r.read(&mut buf).unwrap(), 4);
        assert!(r.read(&mut buf).is_err());
        assert!(budget.get().exceeded);
    }
}
