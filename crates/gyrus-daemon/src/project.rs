//! Project snapshots: the daemon's side of `gyrus deploy`'s archive. The upload is spooled to
//! a temporary file (bounded, hashed as it arrives), extracted into a staging directory under
//! `GYRUS_HOME/projects/` with `gyrus-archive`'s rules (one budget of bytes actually written
//! among them), and published (content-addressed, renamed into place) only once the deploy
//! has validated it; a snapshot that is not published is removed. `.env` parsing lives here
//! too.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::body::Body;
use futures_util::StreamExt;
use gyrus_archive::{ArchiveError, Extractor, Kind};
use sha2::{Digest, Sha256};

use crate::error::DaemonError;
use crate::home::GyrusHome;

/// The largest archive the daemon accepts (bytes received, whatever Content-Length says).
pub const MAX_ARCHIVE_BYTES: usize = 1024 * 1024 * 1024;
/// The most a project may write once extracted (bytes actually written, PAX sizes included).
pub const MAX_EXTRACTED_BYTES: u64 = 4 * 1024 * 1024 * 1024;
/// Files and folders in one project (each costs an inode, whatever its size).
pub const MAX_ENTRIES: usize = 100_000;
/// The config file and `.env` are read into memory: bound them.
const MAX_TEXT_BYTES: u64 = 1024 * 1024;
/// An upload must move at least [`UPLOAD_MIN_PROGRESS`] bytes in every period this long, or
/// it is dropped: a client that stalls, or drips a byte now and then, cannot hold one of the
/// daemon's few upload slots.
pub const UPLOAD_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const UPLOAD_MIN_PROGRESS: u64 = 64 * 1024;

/// An upload on disk: an anonymous file (gone when dropped) and the sha256 of its bytes.
pub struct Upload {
    pub file: std::fs::File,
    pub sha256: String,
}

/// Streams a request body to an anonymous file in `dir`, refusing it as soon as more than
/// `limit` bytes have arrived, or when it moves less than [`UPLOAD_MIN_PROGRESS`] bytes in
/// [`UPLOAD_IDLE_TIMEOUT`].
pub async fn spool(body: Body, dir: &Path, limit: u64) -> Result<Upload, DaemonError> {
    let file = tempfile::tempfile_in(dir)
        .map_err(|e| DaemonError::io(format!("creating a file in {}", dir.display()), e))?;
    let mut out = std::io::BufWriter::with_capacity(
        256 * 1024,
        file.try_clone()
            .map_err(|e| DaemonError::io("duplicating a file handle", e))?,
    );
    let mut hasher = Sha256::new();
    let mut stream = body.into_data_stream();
    let mut total: u64 = 0;
    let mut period_start = total;
    let mut deadline = tokio::time::Instant::now() + UPLOAD_IDLE_TIMEOUT;
    loop {
        let chunk = match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => {
                return Err(DaemonError::Timeout(format!(
                    "the upload stalled: less than {} arrived in {}s",
                    human_bytes(UPLOAD_MIN_PROGRESS),
                    UPLOAD_IDLE_TIMEOUT.as_secs()
                )))
            }
            Ok(None) => break,
            Ok(Some(chunk)) => {
                chunk.map_err(|e| DaemonError::BadRequest(format!("reading the upload: {e}")))?
            }
        };
        total += chunk.len() as u64;
        if total - period_start >= UPLOAD_MIN_PROGRESS {
            period_start = total;
            deadline = tokio::time::Instant::now() + UPLOAD_IDLE_TIMEOUT;
        }
        if total > limit {
            return Err(DaemonError::TooLarge(format!(
                "the upload is larger than {} (the most the daemon accepts)",
                human_bytes(limit)
            )));
        }
        hasher.update(&chunk);
        // Small blocking writes to a local file: cheaper than a thread hop per chunk.
        out.write_all(&chunk)
            .map_err(|e| DaemonError::io("writing the upload", e))?;
    }
    let mut file = out
        .into_inner()
        .map_err(|e| DaemonError::io("writing the upload", e.into_error()))?;
    file.seek(SeekFrom::Start(0))
        .map_err(|e| DaemonError::io("rewinding the upload", e))?;
    Ok(Upload {
        file,
        sha256: hex::encode(hasher.finalize()),
    })
}

pub fn human_bytes(n: u64) -> String {
    if n >= 1 << 30 && n.is_multiple_of(1 << 30) {
        format!("{} GiB", n >> 30)
    } else if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else {
        format!("{n} bytes")
    }
}

/// A project extracted but not yet published: its files are in a staging directory that is
/// removed when this is dropped, unless [`StagedProject::publish`] moved it into place.
#[derive(Debug)]
pub struct StagedProject {
    staging: Option<tempfile::TempDir>,
    final_dir: PathBuf,
    pub hash: String,
    pub config_text: String,
    pub dotenv_text: Option<String>,
}

impl StagedProject {
    /// Where the files are now (to validate paths the config names).
    pub fn dir(&self) -> &Path {
        match &self.staging {
            Some(t) => t.path(),
            None => &self.final_dir,
        }
    }

    /// Where the snapshot will be once published.
    pub fn final_dir(&self) -> &Path {
        &self.final_dir
    }

    /// Moves the snapshot into `GYRUS_HOME/projects/<hash>` (a no-op when it is there already).
    pub fn publish(mut self) -> Result<PathBuf, DaemonError> {
        if let Some(staging) = self.staging.take() {
            let tmp = staging.keep();
            if let Err(e) = std::fs::rename(&tmp, &self.final_dir) {
                let _ = std::fs::remove_dir_all(&tmp);
                // Another deploy of the same archive won the race: its copy is identical.
                if !self.final_dir.is_dir() {
                    return Err(DaemonError::io("saving the project snapshot", e));
                }
            }
        }
        Ok(self.final_dir.clone())
    }
}

/// Unpacks a gzipped tar made by `gyrus deploy` into a staging directory. `config_name` is the
/// config file's name inside the archive; it and `.env` are returned, not written into the
/// snapshot. Nothing is left on disk if this fails.
pub fn extract(
    home: &GyrusHome,
    upload: Upload,
    config_name: &str,
) -> Result<StagedProject, DaemonError> {
    let hash = upload.sha256[..24].to_owned();
    let final_dir = home.projects().join(&hash);
    let staging = if final_dir.is_dir() {
        None
    } else {
        Some(
            tempfile::Builder::new()
                .prefix(".tmp-")
                .tempdir_in(home.projects())
                .map_err(|e| {
                    DaemonError::io(
                        format!("creating a directory in {}", home.projects().display()),
                        e,
                    )
                })?,
        )
    };
    // Even when the snapshot exists, the archive is read for its config and `.env`.
    let (config_text, dotenv_text) = unpack(
        upload.file,
        config_name,
        staging.as_ref().map(|t| t.path()),
        &Limits::default(),
    )?;
    let config_text = config_text.ok_or_else(|| {
        DaemonError::BadRequest(format!(
            "the project archive does not contain the config file {config_name:?}"
        ))
    })?;
    Ok(StagedProject {
        staging,
        final_dir,
        hash,
        config_text,
        dotenv_text,
    })
}

type Unpacked = (Option<String>, Option<String>);

/// What one project may cost on disk.
#[derive(Debug, Clone, Copy)]
struct Limits {
    bytes: u64,
    entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            bytes: MAX_EXTRACTED_BYTES,
            entries: MAX_ENTRIES,
        }
    }
}

/// Extracts a project archive with `gyrus-archive`'s rules (relative paths of normal
/// components, regular files and directories only, no name clashes, one budget of bytes
/// written) into `dest`, or, with `None`, checks it without writing. The config file and
/// `.env` are read into memory instead of being written. Faults of the archive are 400s;
/// a write error on our disk is not the client's fault.
fn unpack(
    archive: impl Read,
    config_name: &str,
    dest: Option<&Path>,
    limits: &Limits,
) -> Result<Unpacked, DaemonError> {
    let bad = |m: String| DaemonError::BadRequest(format!("invalid project archive: {m}"));
    let error = |e: ArchiveError| match e {
        ArchiveError::Write { entry, source } => DaemonError::io(
            format!("extracting {entry:?} from the project archive"),
            source,
        ),
        ArchiveError::TooLarge { entry, limit } => bad(format!(
            "the project is larger than {} once extracted (at {entry})",
            human_bytes(limit)
        )),
        ArchiveError::TooManyEntries { limit } => {
            bad(format!("more than {limit} files and folders"))
        }
        ArchiveError::StreamTooLong { limit } => bad(format!(
            "the archive expands to more than {}",
            human_bytes(limit)
        )),
        ArchiveError::Path { entry, reason, .. } if reason.escapes() => bad(format!(
            "entry {entry:?} is absolute or leaves the project ({reason})"
        )),
        ArchiveError::Kind { entry, kind } => bad(format!(
            "entry {entry:?} is not a regular file or directory: it is a {kind}"
        )),
        ArchiveError::TooLong { entry, .. } => bad(format!(
            "{entry} is larger than {}",
            human_bytes(MAX_TEXT_BYTES)
        )),
        other => bad(other.to_string()),
    };
    let mut tar = Extractor::gzip(
        archive,
        dest,
        gyrus_archive::Limits {
            bytes: limits.bytes,
            entries: limits.entries,
            // Headers and padding on top of the files themselves, and the config and `.env`.
            stream: limits.bytes + 64 * 1024 * 1024,
        },
    )
    .header_modes(true);
    let mut config_text = None;
    let mut dotenv_text = None;
    let mut entries = tar.entries().map_err(error)?;
    while let Some(entry) = entries.next_entry().map_err(error)? {
        let is_config = entry.path() == config_name;
        let is_dotenv = entry.path() == ".env";
        if entry.kind() == Kind::File && (is_config || is_dotenv) {
            let rel = entry.path().to_owned();
            let raw = entry.read_to_end(MAX_TEXT_BYTES).map_err(error)?;
            let text =
                String::from_utf8(raw).map_err(|e| bad(format!("{rel} is not UTF-8 text: {e}")))?;
            if is_dotenv {
                dotenv_text = Some(text);
            } else {
                config_text = Some(text);
            }
            continue;
        }
        entry.extract().map_err(error)?;
    }
    tar.finish().map_err(error)?;
    Ok((config_text, dotenv_text))
}

/// `.env` as `dotenvy` reads it, the format of the `dotenv` libraries: `KEY=value` lines,
/// `export KEY=value`, `#` comments (whole lines, and after a value), single-quoted values
/// taken literally, double-quoted ones with escapes (`\n`, `\"`) and `${VAR}` expanded,
/// unquoted ones with `${VAR}` expanded (from the lines above, then the daemon's environment).
/// Errors name the line.
pub fn parse_dotenv(text: &str) -> Result<Vec<(String, String)>, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    dotenvy::from_read_iter(text.as_bytes())
        .map(|item| item.map_err(|e| dotenv_error(text, e)))
        .collect()
}

fn dotenv_error(text: &str, e: dotenvy::Error) -> String {
    match e {
        dotenvy::Error::LineParse(line, at) => {
            let number = text
                .lines()
                .position(|l| l.trim() == line.trim())
                .map_or(String::new(), |i| format!("{}", i + 1));
            format!(
                ".env:{number}: expected VARIABLE=value (a name of letters, digits and _), \
                 found {line:?} (at character {at})"
            )
        }
        other => format!(".env: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            // set_path refuses `..`; write the raw name so hostile archives can be built.
            let gnu = h.as_gnu_mut().unwrap();
            gnu.name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            builder.append(&h, *data).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap()
    }

    fn upload(bytes: &[u8]) -> Upload {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(bytes).unwrap();
        file.seek(SeekFrom::Start(0)).unwrap();
        Upload {
            file,
            sha256: hex::encode(Sha256::digest(bytes)),
        }
    }

    fn home() -> (tempfile::TempDir, GyrusHome) {
        let dir = tempfile::tempdir().unwrap();
        let home = GyrusHome::new(dir.path());
        home.create_dirs().unwrap();
        (dir, home)
    }

    fn snapshots(home: &GyrusHome) -> usize {
        std::fs::read_dir(home.projects()).unwrap().count()
    }

    #[test]
    fn extracts_and_separates_config_and_env() {
        let (_dir, home) = home();
        let a = archive(&[
            ("cortex.yaml", b"- name: x\n"),
            (".env", b"A=1\n"),
            ("predictor.py", b"print(1)\n"),
            ("sub/values.json", b"{}"),
        ]);
        let p = extract(&home, upload(&a), "cortex.yaml").unwrap();
        assert_eq!(p.config_text, "- name: x\n");
        assert_eq!(p.dotenv_text.as_deref(), Some("A=1\n"));
        assert!(p.dir().join("predictor.py").is_file());
        assert!(p.dir().join("sub/values.json").is_file());
        assert!(!p.dir().join("cortex.yaml").exists());
        assert!(!p.dir().join(".env").exists());
        let published = p.publish().unwrap();
        assert!(published.join("predictor.py").is_file());
        assert_eq!(snapshots(&home), 1);
        // Same archive again: same snapshot, nothing rewritten.
        let again = extract(&home, upload(&a), "cortex.yaml").unwrap();
        assert_eq!(again.dir(), published);
        assert_eq!(again.publish().unwrap(), published);
        assert_eq!(snapshots(&home), 1);
    }

    #[test]
    fn an_unpublished_snapshot_leaves_nothing() {
        let (_dir, home) = home();
        let a = archive(&[("cortex.yaml", b"x"), ("predictor.py", b"x")]);
        let p = extract(&home, upload(&a), "cortex.yaml").unwrap();
        assert!(p.dir().join("predictor.py").is_file());
        drop(p); // the deploy found the config invalid
        assert_eq!(snapshots(&home), 0);
    }

    #[test]
    fn refuses_escaping_paths_and_leaves_nothing() {
        let (dir, home) = home();
        let a = archive(&[("cortex.yaml", b"x"), ("../evil.py", b"x")]);
        let err = extract(&home, upload(&a), "cortex.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("leaves the project"), "{err}");
        assert!(!dir.path().join("evil.py").exists());
        assert_eq!(snapshots(&home), 0);
    }

    /// A PAX header's `size` is what the tar reader yields; the ustar size field may be 0.
    fn pax_archive(claimed: u64, data: &[u8]) -> Vec<u8> {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        builder
            .append_pax_extensions([("size", claimed.to_string().as_bytes())])
            .unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_path("big.bin").unwrap();
        h.set_size(0);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        builder.append(&h, std::io::empty()).unwrap();
        let mut gz = builder.into_inner().unwrap();
        gz.write_all(data).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn pax_sizes_count_against_the_budget_before_anything_is_written() {
        let (_dir, home) = home();
        let a = pax_archive(4_800_000_000, &vec![0u8; 1 << 20]);
        let err = extract(&home, upload(&a), "cortex.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("larger than 4 GiB once extracted"), "{err}");
        assert_eq!(snapshots(&home), 0);
    }

    #[test]
    fn bytes_written_count_against_the_budget() {
        let dest = tempfile::tempdir().unwrap();
        let a = archive(&[("a.bin", &[1u8; 600]), ("b.bin", &[2u8; 600])]);
        let limits = Limits {
            bytes: 1000,
            entries: 10,
        };
        let err = unpack(&a[..], "cortex.yaml", Some(dest.path()), &limits)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("larger than 1000 bytes once extracted (at b.bin)"),
            "{err}"
        );
        let limits = Limits {
            bytes: 10_000,
            entries: 1,
        };
        let err = unpack(&a[..], "cortex.yaml", None, &limits)
            .unwrap_err()
            .to_string();
        assert!(err.contains("more than 1 files"), "{err}");
    }

    #[test]
    fn refuses_links_and_clashes_as_the_clients_fault() {
        let dest = tempfile::tempdir().unwrap();
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        builder
            .append_link(&mut h, "link.py", "/etc/passwd")
            .unwrap();
        let a = builder.into_inner().unwrap().finish().unwrap();
        let err = unpack(&a[..], "cortex.yaml", Some(dest.path()), &Limits::default()).unwrap_err();
        assert!(matches!(err, DaemonError::BadRequest(_)), "{err:?}");
        assert!(
            err.to_string()
                .contains("entry \"link.py\" is not a regular file or directory"),
            "{err}"
        );

        let a = archive(&[("sub", b"x"), ("sub/x.py", b"x")]);
        let err = unpack(&a[..], "cortex.yaml", Some(dest.path()), &Limits::default()).unwrap_err();
        assert!(matches!(err, DaemonError::BadRequest(_)), "{err:?}");
        assert!(
            err.to_string()
                .contains("lies inside \"sub\", which is a file"),
            "{err}"
        );
        // Checked the same when the snapshot exists and nothing is written.
        let err = unpack(&a[..], "cortex.yaml", None, &Limits::default()).unwrap_err();
        assert!(matches!(err, DaemonError::BadRequest(_)), "{err:?}");
        for (name, why) in [("a\\b.py", "backslashes"), ("./a.py", "'.'")] {
            let a = archive(&[(name, b"x")]);
            let err = unpack(&a[..], "cortex.yaml", None, &Limits::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{name}: {err}");
        }
    }

    #[test]
    fn a_write_error_on_our_disk_is_not_the_clients_fault() {
        let dest = tempfile::tempdir().unwrap();
        std::fs::write(dest.path().join("sub"), b"in the way").unwrap();
        let a = archive(&[("sub/x.py", b"x")]);
        let err = unpack(&a[..], "cortex.yaml", Some(dest.path()), &Limits::default()).unwrap_err();
        assert!(matches!(err, DaemonError::Io { .. }), "{err:?}");
        assert_eq!(err.status(), axum::http::StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn config_and_env_are_bounded_and_never_written() {
        let dest = tempfile::tempdir().unwrap();
        let big = vec![b'#'; (1 << 20) + 1];
        let a = archive(&[("cortex.yaml", &big)]);
        let err = unpack(&a[..], "cortex.yaml", Some(dest.path()), &Limits::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("cortex.yaml is larger than 1 MiB"), "{err}");
        let a = archive(&[(".env", b"A=1"), ("cortex.yaml", b"\xff")]);
        let err = unpack(&a[..], "cortex.yaml", Some(dest.path()), &Limits::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("cortex.yaml is not UTF-8 text"), "{err}");
        assert_eq!(std::fs::read_dir(dest.path()).unwrap().count(), 0);
    }

    #[test]
    fn dotenv_lines() {
        let env = parse_dotenv(
            "# c\n\nA=1\nexport B=\"two words\"\nC='x=y'\nD=v # a comment\nE=\"a\\nb\"\nF='${A}'\nG=${A}2\n",
        )
        .unwrap();
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            env,
            pairs(&[
                ("A", "1"),
                ("B", "two words"),
                ("C", "x=y"),
                ("D", "v"),
                ("E", "a\nb"),
                ("F", "${A}"),
                ("G", "12"),
            ])
        );
        let err = parse_dotenv("A=1\nnot a pair\n").unwrap_err();
        assert!(err.starts_with(".env:2: expected VARIABLE=value"), "{err}");
        assert!(err.contains("not a pair"), "{err}");
        assert!(parse_dotenv("1A=2").is_err());
    }
}
