//! Models fetched as archives (`.tar.gz`, `.tgz`, `.tar`, `.zip`): Cortex took a TensorFlow
//! SavedModel as an archive at a URL as well as a directory prefix. The archive is unpacked
//! once, with gyrus-archive's rules for hostile input (relative paths only, regular files and
//! directories only, bytes and entries bounded as they are written; zip entries are held to
//! the same path rule, `gyrus_archive::check_path`), into
//! `GYRUS_HOME/cache/unpacked/<key>/`, where the key hashes the archive's path, size,
//! modification time and inode: the remote cache never changes a complete download in place (a
//! new version of a URL is a new entry, at a new path), and a local archive replaced by another
//! gets a new key, so one unpacking serves every later deploy of the same archive. It is staged
//! in a sibling directory and renamed into place, so a reader never sees half of it.

use std::path::{Path, PathBuf};

use gyrus_archive::{Extractor, Limits};
use sha2::{Digest, Sha256};

use crate::model_source::ModelSourceError;

/// The most entries (files and directories) an unpacked model may have.
const MAX_ENTRIES: usize = 100_000;

/// Whether `path` is a file gyrus unpacks as a model archive.
pub fn is_archive(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let name = name.to_ascii_lowercase();
    path.is_file()
        && [".tar.gz", ".tgz", ".tar", ".zip"]
            .iter()
            .any(|s| name.ends_with(s))
}

/// Unpacks `archive` under `root` (once) and returns the directory holding the model: the
/// unpacked tree, or its only top-level directory when the archive wraps the model in one
/// (`tar czf model.tar.gz model/`).
pub fn unpack(archive: &Path, root: &Path) -> Result<PathBuf, ModelSourceError> {
    let key = {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(archive).map_err(|source| ModelSourceError::Io {
            context: format!("reading {}", archive.display()),
            source,
        })?;
        let mut h = Sha256::new();
        h.update(archive.as_os_str().as_encoded_bytes());
        for n in [meta.len(), meta.ino(), meta.dev()] {
            h.update(n.to_le_bytes());
        }
        h.update(meta.mtime().to_le_bytes());
        h.update(meta.mtime_nsec().to_le_bytes());
        hex::encode(&h.finalize()[..16])
    };
    let dest = root.join(&key);
    if !dest.is_dir() {
        let io = |context: String| move |source| ModelSourceError::Io { context, source };
        std::fs::create_dir_all(root).map_err(io(format!("creating {}", root.display())))?;
        let staging = tempfile::Builder::new()
            .prefix(&format!(".{key}-"))
            .tempdir_in(root)
            .map_err(io(format!("creating a directory in {}", root.display())))?;
        let file =
            std::fs::File::open(archive).map_err(io(format!("opening {}", archive.display())))?;
        let reader = std::io::BufReader::new(file);
        let limits = Limits::new(gyrus_store::MAX_MODEL_BYTES, MAX_ENTRIES);
        let name = archive.to_string_lossy().to_ascii_lowercase();
        let refused = |e: gyrus_archive::ArchiveError| {
            ModelSourceError::Invalid(format!(
                "the archive {} cannot be unpacked: {e}",
                archive.display()
            ))
        };
        if name.ends_with(".zip") {
            unzip(reader, staging.path()).map_err(|m| {
                ModelSourceError::Invalid(format!(
                    "the archive {} cannot be unpacked: {m}",
                    archive.display()
                ))
            })?;
        } else if name.ends_with(".tar") {
            let mut tar = Extractor::new(reader, Some(staging.path()), limits);
            unpack_all(&mut tar).map_err(refused)?;
            tar.finish().map_err(refused)?;
        } else {
            let mut tar = Extractor::gzip(reader, Some(staging.path()), limits);
            unpack_all(&mut tar).map_err(refused)?;
            tar.finish().map_err(refused)?;
        }
        let staged = staging.keep();
        if let Err(e) = std::fs::rename(&staged, &dest) {
            let _ = std::fs::remove_dir_all(&staged);
            // Another deploy unpacked the same archive meanwhile: its copy is as good.
            if !dest.is_dir() {
                return Err(ModelSourceError::Io {
                    context: format!("moving the unpacked model to {}", dest.display()),
                    source: e,
                });
            }
        }
    }
    Ok(model_root(&dest))
}

fn unpack_all<R: std::io::Read>(tar: &mut Extractor<R>) -> Result<(), gyrus_archive::ArchiveError> {
    let mut entries = tar.entries()?;
    while let Some(entry) = entries.next_entry()? {
        entry.extract()?;
    }
    Ok(())
}

/// Unpacks a zip archive into `dest` (empty), bounding entries and the bytes actually written.
fn unzip<R: std::io::Read + std::io::Seek>(reader: R, dest: &Path) -> Result<(), String> {
    use std::io::{Read, Write};
    let mut zip = zip::ZipArchive::new(reader).map_err(|e| e.to_string())?;
    if zip.len() > MAX_ENTRIES {
        return Err(format!(
            "it has {} entries; at most {MAX_ENTRIES} are allowed",
            zip.len()
        ));
    }
    let mut budget = gyrus_store::MAX_MODEL_BYTES;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| e.to_string())?;
        let raw = entry.name_raw().to_vec();
        let trimmed = raw.strip_suffix(b"/").unwrap_or(&raw);
        let path = gyrus_archive::check_path(trimmed)
            .map_err(|e| format!("{}: {e}", String::from_utf8_lossy(&raw)))?
            .to_string();
        // S_IFLNK in the Unix mode: a link could point anywhere.
        if entry.unix_mode().is_some_and(|m| m & 0o170000 == 0o120000) {
            return Err(format!("{path}: links are not allowed"));
        }
        let target = dest.join(&path);
        if entry.is_dir() {
            std::fs::create_dir_all(&target).map_err(|e| format!("{path}: {e}"))?;
            continue;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{path}: {e}"))?;
        }
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&target)
            .map_err(|e| format!("{path}: {e} (an entry appears twice, or inside a file)"))?;
        // Counted as written, whatever the entry claims its size is.
        let copied = std::io::copy(&mut entry.by_ref().take(budget + 1), &mut out)
            .map_err(|e| format!("{path}: {e}"))?;
        if copied > budget {
            return Err(format!(
                "it unpacks to more than {} bytes",
                gyrus_store::MAX_MODEL_BYTES
            ));
        }
        budget -= copied;
        out.flush().map_err(|e| format!("{path}: {e}"))?;
    }
    Ok(())
}

/// The unpacked tree, or its only entry when that is a directory and the tree holds nothing
/// else (no `saved_model.pb` of its own); not when that directory is named by an integer, which
/// is a version of the model (`tar czf m.tgz 1/`).
fn model_root(dir: &Path) -> PathBuf {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return dir.to_path_buf();
    };
    let entries: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    let is_version = |p: &Path| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.parse::<u64>().is_ok())
    };
    match entries.as_slice() {
        [only] if only.is_dir() && !is_version(only) => only.clone(),
        _ => dir.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_gz(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            Default::default(),
        ));
        for (name, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            tar.append_data(&mut header, name, *data).unwrap();
        }
        tar.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn unpacks_once_into_the_model_directory() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("model.tar.gz");
        std::fs::write(
            &archive,
            tar_gz(&[
                ("model/1/saved_model.pb", b"pb"),
                ("model/1/variables/v", b"v"),
            ]),
        )
        .unwrap();
        assert!(is_archive(&archive));
        let root = dir.path().join("unpacked");
        let model = unpack(&archive, &root).unwrap();
        assert!(model.ends_with("model"), "{}", model.display());
        assert_eq!(
            std::fs::read(model.join("1/saved_model.pb")).unwrap(),
            b"pb"
        );
        // A second deploy finds it unpacked: the archive is not read again.
        assert_eq!(unpack(&archive, &root).unwrap(), model);
        assert_eq!(
            std::fs::read_dir(&root).unwrap().count(),
            1,
            "nothing staged is left"
        );
        // Replaced by another archive at the same path: unpacked anew.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&archive, tar_gz(&[("7/saved_model.pb", b"v7")])).unwrap();
        let replaced = unpack(&archive, &root).unwrap();
        assert_ne!(replaced, model);
        // Its only directory is a version: the model is the tree above it.
        assert_eq!(
            std::fs::read(replaced.join("7/saved_model.pb")).unwrap(),
            b"v7"
        );
    }

    #[test]
    fn zip_archives_unpack_and_hostile_ones_are_refused() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let zip_of = |name: &str, entries: &[(&str, &[u8])]| {
            let path = dir.path().join(name);
            let mut w = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
            for (entry, data) in entries {
                w.start_file(*entry, zip::write::SimpleFileOptions::default())
                    .unwrap();
                w.write_all(data).unwrap();
            }
            w.finish().unwrap();
            path
        };
        let good = zip_of(
            "model.zip",
            &[("saved_model.pb", b"pb"), ("variables/v", b"v")],
        );
        assert!(is_archive(&good));
        let root = dir.path().join("unpacked");
        let model = unpack(&good, &root).unwrap();
        assert_eq!(std::fs::read(model.join("variables/v")).unwrap(), b"v");
        for (name, entry) in [
            ("up.zip", "../x"),
            ("abs.zip", "/etc/x"),
            ("back.zip", "a\\b"),
        ] {
            let bad = zip_of(name, &[(entry, b"x")]);
            let err = unpack(&bad, &root).unwrap_err().to_string();
            assert!(err.contains("cannot be unpacked"), "{name}: {err}");
        }
        let twice = zip_of("twice.zip", &[("a", b"1"), ("a/b", b"2")]);
        assert!(unpack(&twice, &root).is_err());
        assert!(!dir.path().join("x").exists());
        // Only the good archive's directory is left.
        assert_eq!(std::fs::read_dir(&root).unwrap().count(), 1);
    }

    #[test]
    fn hostile_archives_are_refused_and_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("evil.tgz");
        let mut raw = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            Default::default(),
        ));
        let mut header = tar::Header::new_gnu();
        header.set_size(1);
        header.set_mode(0o644);
        // `append_data` refuses `..` itself; write the name into the header by hand.
        header.as_gnu_mut().unwrap().name[..9].copy_from_slice(b"../escape");
        header.set_cksum();
        raw.append(&header, &b"x"[..]).unwrap();
        std::fs::write(&archive, raw.into_inner().unwrap().finish().unwrap()).unwrap();
        let root = dir.path().join("unpacked");
        let err = unpack(&archive, &root).unwrap_err().to_string();
        assert!(err.contains("cannot be unpacked"), "{err}");
        assert!(!dir.path().join("escape").exists());
        assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
        assert!(!is_archive(&dir.path().join("model.onnx")));
    }
}
