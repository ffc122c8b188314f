//! Hostile archives, written header by header, against every rule: the helpers that build
//! them, the path and entry-kind rules (`paths.rs`), the budgets and the stream meter
//! (`limits.rs`), and the caller-facing API here.

use std::io::Write;

use flate2::write::GzEncoder;
use flate2::Compression;
use tar::Header;

use super::*;
use crate::meter::Fault;

/// A tar built from raw headers, so names like `../x` and `/etc/passwd` go in unchecked.
#[derive(Default, Clone)]
struct RawTar(Vec<u8>);

impl RawTar {
    fn header(name: &[u8], kind: EntryType, size: u64, link: &[u8]) -> Header {
        let mut header = Header::new_gnu();
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        header.set_entry_type(kind);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_size(size);
        header.set_cksum();
        header
    }

    fn file(self, name: &str, data: &[u8]) -> Self {
        self.raw(name.as_bytes(), EntryType::Regular, data, b"")
    }

    fn dir(self, name: &str) -> Self {
        self.raw(name.as_bytes(), EntryType::Directory, b"", b"")
    }

    fn link(self, name: &str, kind: EntryType, target: &str) -> Self {
        self.raw(name.as_bytes(), kind, b"", target.as_bytes())
    }

    fn raw(self, name: &[u8], kind: EntryType, data: &[u8], link: &[u8]) -> Self {
        let header = Self::header(name, kind, data.len() as u64, link);
        self.block(header.as_bytes()).block(data)
    }

    /// A pax extended header for the next entry.
    fn pax(self, records: &[(&str, &[u8])]) -> Self {
        let mut body = Vec::new();
        for (key, value) in records {
            let rest = format!(" {key}=").len() + value.len() + 1;
            // The length counts its own digits.
            let mut len = rest + 1;
            while (len.to_string().len() + rest) != len {
                len = len.to_string().len() + rest;
            }
            body.extend_from_slice(format!("{len} {key}=").as_bytes());
            body.extend_from_slice(value);
            body.push(b'\n');
        }
        let header = Self::header(
            b"././@PaxHeader",
            EntryType::XHeader,
            body.len() as u64,
            b"",
        );
        self.block(header.as_bytes()).block(&body)
    }

    /// Appends bytes and pads them to a whole block.
    fn block(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        self.0.resize(self.0.len().div_ceil(512) * 512, 0);
        self
    }

    fn tar(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0u8; 1024]);
        self.0
    }

    fn gz(self) -> Vec<u8> {
        gzip(&self.tar())
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

fn limits() -> Limits {
    Limits::new(1 << 20, 100)
}

/// Extracts every entry of an uncompressed tar into `dest`.
fn extract_all(
    tar: impl Read,
    dest: Option<&Path>,
    limits: Limits,
) -> Result<Summary, ArchiveError> {
    let mut x = Extractor::new(tar, dest, limits);
    {
        let mut entries = x.entries()?;
        while let Some(entry) = entries.next_entry()? {
            entry.extract()?;
        }
    }
    x.finish()
}

/// Extracts `tar` into a fresh directory, expecting a refusal; returns it and the directory.
fn refused(tar: &[u8]) -> (ArchiveError, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out");
    fs::create_dir(&dest).unwrap();
    let err = extract_all(tar, Some(&dest), limits()).unwrap_err();
    (err, dir)
}

/// Every file and directory under `dir`, '/'-separated and sorted, directories with a `/`.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
            if entry.file_type().unwrap().is_dir() {
                out.push(format!("{name}/"));
                walk(&entry.path(), &format!("{name}/"), out);
            } else {
                out.push(name);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, "", &mut out);
    out.sort();
    out
}

mod limits;
mod paths;

#[test]
fn special_entries_are_read_into_memory() {
    let tar = RawTar::default()
        .file("config.yaml", b"name: x\n")
        .file("data.bin", b"12345")
        .file(".env", &[b'a'; 100])
        .tar();
    let dir = tempfile::tempdir().unwrap();
    let mut x = Extractor::new(&tar[..], Some(dir.path()), Limits::new(5, 10));
    let mut entries = x.entries().unwrap();
    let config = entries.next_entry().unwrap().unwrap();
    assert_eq!(config.path(), "config.yaml");
    assert_eq!(config.read_to_end(1024).unwrap(), b"name: x\n");
    // Read entries do not count against the budget of bytes written.
    entries.next_entry().unwrap().unwrap().extract().unwrap();
    assert_eq!(entries.written(), 5);
    let err = entries
        .next_entry()
        .unwrap()
        .unwrap()
        .read_to_end(99)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "entry \".env\" is 100 bytes; at most 99 are read"
    );
    assert_eq!(tree(dir.path()), ["data.bin"]);

    // They are recorded: a second one is a duplicate, and nothing may go inside one.
    let tar = RawTar::default()
        .file(".env", b"A=1")
        .file(".env", b"A=2")
        .tar();
    let mut x = Extractor::new(&tar[..], None, limits());
    let mut entries = x.entries().unwrap();
    entries
        .next_entry()
        .unwrap()
        .unwrap()
        .read_to_end(10)
        .unwrap();
    let err = entries
        .next_entry()
        .unwrap()
        .unwrap()
        .read_to_end(10)
        .unwrap_err();
    assert!(matches!(err, ArchiveError::Duplicate { .. }), "{err:?}");
    // A pax size lie on a read entry is refused on the announced size.
    let tar = limits::pax_size_tar(1 << 40, b"");
    let mut x = Extractor::new(&tar[..], None, limits());
    let mut entries = x.entries().unwrap();
    let err = entries
        .next_entry()
        .unwrap()
        .unwrap()
        .read_to_end(1 << 20)
        .unwrap_err();
    assert!(
        matches!(
            err,
            ArchiveError::TooLong {
                size: 1_099_511_627_776,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn admit_checks_before_the_callers_own_checks() {
    let tar = RawTar::default().file("a", b"1").file("a", b"2").tar();
    let mut x = Extractor::new(&tar[..], None, limits());
    let mut entries = x.entries().unwrap();
    let mut first = entries.next_entry().unwrap().unwrap();
    first.admit().unwrap();
    first.admit().unwrap(); // idempotent
    first.extract().unwrap();
    let mut second = entries.next_entry().unwrap().unwrap();
    assert!(matches!(
        second.admit(),
        Err(ArchiveError::Duplicate { .. })
    ));
    let tar = RawTar::default().file("big", &[0u8; 20]).tar();
    let mut x = Extractor::new(&tar[..], None, limits());
    let mut entries = x.entries().unwrap();
    entries.restrict_bytes(10);
    let err = entries.next_entry().unwrap().unwrap().admit().unwrap_err();
    assert!(
        matches!(err, ArchiveError::TooLarge { limit: 10, .. }),
        "{err:?}"
    );
}

#[test]
fn destination_errors_are_not_the_archives_fault() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a"), b"in the way").unwrap();
    for tar in [
        RawTar::default().file("a", b"1").tar(),
        RawTar::default().file("a/b", b"1").tar(),
        RawTar::default().dir("a/").tar(),
    ] {
        let err = extract_all(&tar[..], Some(dir.path()), limits()).unwrap_err();
        assert!(matches!(err, ArchiveError::Write { .. }), "{err:?}");
        assert!(!err.is_archive_fault());
        let message = err.to_string();
        assert!(message.contains(" cannot be written: "), "{message}");
        assert!(!message.contains(dir.path().to_str().unwrap()), "{message}");
    }
    let err = extract_all(
        &RawTar::default().dir("a/").tar()[..],
        Some(dir.path()),
        limits(),
    )
    .unwrap_err();
    // The checked path, without the trailing slash.
    assert_eq!(err.entry(), Some("a"));
}

#[cfg(unix)]
#[test]
fn header_modes() {
    use std::os::unix::fs::PermissionsExt;
    let mut header = RawTar::header(b"run.sh", EntryType::Regular, 2, b"");
    header.set_mode(0o4777);
    header.set_cksum();
    let tar = RawTar::default()
        .block(header.as_bytes())
        .block(b"hi")
        .tar();
    let dir = tempfile::tempdir().unwrap();
    let mut x = Extractor::new(&tar[..], Some(dir.path()), limits())
        .header_modes(true)
        .sync_files(true);
    let mut entries = x.entries().unwrap();
    entries.next_entry().unwrap().unwrap().extract().unwrap();
    let mode = fs::metadata(dir.path().join("run.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755);
}

#[test]
fn the_meter_errors_instead_of_ending_early() {
    let meter = Rc::new(Cell::new(Meter {
        read: 0,
        allowed: 4,
        limit: 100,
        fault: None,
    }));
    let mut r = Metered {
        inner: &[1u8; 10][..],
        meter: Rc::clone(&meter),
    };
    let mut buf = [0u8; 8];
    assert_eq!(r.read(&mut buf).unwrap(), 4);
    assert!(r.read(&mut buf).is_err());
    assert_eq!(meter.get().fault, Some(Fault::Unannounced));
    assert!(r.read(&mut buf).is_err());
    // The end of the stream right at the bound is an end, not an error.
    let meter = Rc::new(Cell::new(Meter {
        read: 0,
        allowed: 100,
        limit: 4,
        fault: None,
    }));
    let mut r = Metered {
        inner: &[1u8; 4][..],
        meter: Rc::clone(&meter),
    };
    assert_eq!(r.read(&mut buf).unwrap(), 4);
    assert_eq!(r.read(&mut buf).unwrap(), 0);
    assert_eq!(meter.get().fault, None);
}
