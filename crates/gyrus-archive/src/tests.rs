//! Hostile archives, written header by header, against every rule.

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

#[test]
fn extracts_files_and_directories() {
    let dir = tempfile::tempdir().unwrap();
    let tar = RawTar::default()
        .dir("a/")
        .file("a/b.txt", b"bee")
        .file("c/d/e.bin", &[7u8; 1000])
        .dir("a/empty")
        .file(".hidden", b"")
        .tar();
    let summary = extract_all(&tar[..], Some(dir.path()), limits()).unwrap();
    assert_eq!(
        summary,
        Summary {
            entries: 5,
            written: 1003
        }
    );
    assert_eq!(
        tree(dir.path()),
        [
            ".hidden",
            "a/",
            "a/b.txt",
            "a/empty/",
            "c/",
            "c/d/",
            "c/d/e.bin"
        ]
    );
    assert_eq!(fs::read(dir.path().join("a/b.txt")).unwrap(), b"bee");

    // Gzipped, and exactly at the budget.
    let dir = tempfile::tempdir().unwrap();
    let tar = RawTar::default().file("x", &[1u8; 100]).gz();
    let mut x = Extractor::gzip(&tar[..], Some(dir.path()), Limits::new(100, 1));
    let mut entries = x.entries().unwrap();
    let entry = entries.next_entry().unwrap().unwrap();
    assert_eq!(
        (entry.name(), entry.path(), entry.kind(), entry.size()),
        ("x", "x", Kind::File, 100)
    );
    let mut hashed = 0;
    assert_eq!(
        entry.extract_with(|chunk| hashed += chunk.len()).unwrap(),
        100
    );
    assert_eq!(hashed, 100);
    assert!(entries.next_entry().unwrap().is_none());
    assert_eq!(x.finish().unwrap().written, 100);
}

#[test]
fn refuses_dot_dot_and_writes_nothing_outside() {
    for (name, kind) in [
        ("../evil.py", Kind::File),
        ("a/../../evil.py", Kind::File),
        ("..", Kind::File),
        ("a/../../", Kind::Dir),
    ] {
        let tar = if kind == Kind::Dir {
            RawTar::default().dir(name).tar()
        } else {
            RawTar::default().file(name, b"x").tar()
        };
        let (err, dir) = refused(&tar);
        match &err {
            ArchiveError::Path {
                entry,
                reason,
                kind: k,
            } => {
                assert_eq!(
                    (entry.as_str(), reason, *k),
                    (name, &PathError::ParentDir, kind)
                )
            }
            other => panic!("{name}: {other:?}"),
        }
        assert!(err.is_archive_fault());
        assert_eq!(
            err.to_string(),
            format!("entry {name:?}: '..' components are not allowed")
        );
        assert_eq!(tree(dir.path()), ["out/"]);
    }
}

#[test]
fn refuses_absolute_paths() {
    let (err, _dir) = refused(&RawTar::default().file("/etc/cron.d/evil", b"x").tar());
    assert_eq!(
        err.to_string(),
        "entry \"/etc/cron.d/evil\": absolute paths are not allowed"
    );
    assert!(matches!(&err, ArchiveError::Path { reason, .. } if reason.escapes()));
    let (err, _dir) = refused(&RawTar::default().dir("/etc/").tar());
    assert!(
        matches!(
            &err,
            ArchiveError::Path {
                reason: PathError::Absolute,
                kind: Kind::Dir,
                ..
            }
        ),
        "{err:?}"
    );
    // "/" is the empty path once its trailing slash is taken off.
    let (err, _dir) = refused(&RawTar::default().dir("/").tar());
    assert!(matches!(&err, ArchiveError::Path { .. }), "{err:?}");
}

#[test]
fn refuses_dot_and_empty_components() {
    for name in ["./a", "a//b", "a/./b"] {
        let (err, _dir) = refused(&RawTar::default().file(name, b"x").tar());
        assert!(
            matches!(
                err,
                ArchiveError::Path {
                    reason: PathError::CurDirOrEmpty,
                    ..
                }
            ),
            "{name}: {err:?}"
        );
    }
    for name in ["./", "."] {
        let (err, _dir) = refused(&RawTar::default().dir(name).tar());
        assert!(matches!(err, ArchiveError::Path { .. }), "{name}: {err:?}");
    }
}

#[test]
fn refuses_links_devices_and_fifos() {
    for (tar, name, kind) in [
        (
            RawTar::default().link("l", EntryType::Symlink, "/etc/passwd"),
            "l",
            "symbolic link",
        ),
        (
            // Even one pointing inside the tree.
            RawTar::default()
                .file("a", b"x")
                .link("l", EntryType::Symlink, "a"),
            "l",
            "symbolic link",
        ),
        (
            RawTar::default()
                .file("a", b"x")
                .link("h", EntryType::Link, "a"),
            "h",
            "hard link",
        ),
        (
            RawTar::default().raw(b"null", EntryType::Char, b"", b""),
            "null",
            "character device",
        ),
        (
            RawTar::default().raw(b"sda", EntryType::Block, b"", b""),
            "sda",
            "block device",
        ),
        (
            RawTar::default().raw(b"pipe", EntryType::Fifo, b"", b""),
            "pipe",
            "FIFO",
        ),
        (
            RawTar::default().raw(b"c", EntryType::Continuous, b"x", b""),
            "c",
            "contiguous file",
        ),
        (
            RawTar::default().raw(b"g", EntryType::XGlobalHeader, b"9 a=bcd\n", b""),
            "g",
            "pax global header",
        ),
    ] {
        let (err, dir) = refused(&tar.tar());
        assert_eq!(
            err.to_string(),
            format!("entry {name:?} is a {kind}; only regular files and directories are allowed")
        );
        assert_eq!(err.entry(), Some(name));
        assert!(!dir.path().join("out").join(name).exists());
    }
}

#[test]
fn refuses_nul_and_backslash_names() {
    // A NUL cannot be in a header's name field (it ends it), but a pax path can hold one.
    let tar = RawTar::default()
        .pax(&[("path", b"a\0b")])
        .file("placeholder", b"x")
        .tar();
    let (err, dir) = refused(&tar);
    assert!(
        matches!(&err, ArchiveError::Path { entry, reason: PathError::Nul, .. } if entry == "a\0b"),
        "{err:?}"
    );
    assert_eq!(tree(dir.path()), ["out/"]);
    let (err, _dir) = refused(&RawTar::default().file("a\\..\\..\\b", b"x").tar());
    assert_eq!(
        err.to_string(),
        "entry \"a\\\\..\\\\..\\\\b\": backslashes are not allowed in paths"
    );
    let (err, _dir) = refused(
        &RawTar::default()
            .raw(b"\xff\xfe", EntryType::Regular, b"", b"")
            .tar(),
    );
    assert!(
        matches!(
            err,
            ArchiveError::Path {
                reason: PathError::NotUtf8,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn refuses_over_long_names() {
    let long = "a".repeat(256);
    let tar = RawTar::default()
        .pax(&[("path", long.as_bytes())])
        .file("x", b"x")
        .tar();
    let (err, _dir) = refused(&tar);
    assert_eq!(
        err.to_string(),
        format!("entry {long:?}: a path component is 256 bytes long; at most 255 are allowed")
    );
    let deep = format!("{}f", format!("{}/", "d".repeat(200)).repeat(21));
    // The tar crate's builder writes a GNU long-name entry for this one.
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = Header::new_gnu();
    header.set_size(1);
    header.set_entry_type(EntryType::Regular);
    builder.append_data(&mut header, &deep, &b"x"[..]).unwrap();
    let (err, _dir) = refused(&builder.into_inner().unwrap());
    assert_eq!(
        err.to_string(),
        format!("entry {deep:?}: the path is 4222 bytes long; at most 4096 are allowed")
    );

    // At the limits is fine.
    let name = format!("{}/{}", "b".repeat(255), "c".repeat(255));
    let dir = tempfile::tempdir().unwrap();
    let tar = RawTar::default()
        .pax(&[("path", name.as_bytes())])
        .file("x", b"x")
        .tar();
    extract_all(&tar[..], Some(dir.path()), limits()).unwrap();
    assert_eq!(fs::read(dir.path().join(&name)).unwrap(), b"x");
}

/// A pax `size` is what the tar reader yields, whatever the ustar header says.
fn pax_size_tar(claimed: u64, follows: &[u8]) -> Vec<u8> {
    let mut tar = RawTar::default()
        .pax(&[("size", claimed.to_string().as_bytes())])
        .file("big.bin", b"")
        .0;
    tar.extend_from_slice(follows);
    tar
}

#[test]
fn pax_sizes_count_against_the_budget_before_anything_is_read() {
    let tar = gzip(&pax_size_tar(4_800_000_000, &vec![0u8; 1 << 20]));
    let dir = tempfile::tempdir().unwrap();
    let mut x = Extractor::gzip(&tar[..], Some(dir.path()), Limits::new(4 << 30, 10));
    let mut entries = x.entries().unwrap();
    let entry = entries.next_entry().unwrap().unwrap();
    assert_eq!(entry.size(), 4_800_000_000);
    let err = entry.extract().unwrap_err();
    assert_eq!(
        err.to_string(),
        "entry \"big.bin\" takes the bytes written past the limit of 4294967296"
    );
    assert!(matches!(err, ArchiveError::TooLarge { .. }));
    assert_eq!(tree(dir.path()), Vec::<String>::new());

    // A pax size that lies the other way round: the reader yields 3 bytes, and what the
    // ustar header announced is read as the next header, which is garbage.
    let mut tar = RawTar::default().pax(&[("size", b"3")]);
    let header = RawTar::header(b"small.bin", EntryType::Regular, 600, b"");
    tar = tar.block(header.as_bytes()).block(&[b'z'; 600]);
    let (err, _dir) = refused(&tar.tar());
    assert!(matches!(err, ArchiveError::Malformed { .. }), "{err:?}");
}

#[test]
fn the_budget_counts_bytes_written() {
    let tar = RawTar::default()
        .file("a.bin", &[1u8; 600])
        .file("b.bin", &[2u8; 600])
        .tar();
    let dir = tempfile::tempdir().unwrap();
    let err = extract_all(&tar[..], Some(dir.path()), Limits::new(1000, 10)).unwrap_err();
    assert!(
        matches!(&err, ArchiveError::TooLarge { entry, limit: 1000 } if entry == "b.bin"),
        "{err:?}"
    );
    // The first is written whole; the second is not even created.
    assert_eq!(tree(dir.path()), ["a.bin"]);
    // Exactly at the budget is fine; without a destination the same is counted.
    let summary = extract_all(&tar[..], None, Limits::new(1200, 10)).unwrap();
    assert_eq!(summary.written, 1200);
    let err = extract_all(&tar[..], None, Limits::new(1199, 10)).unwrap_err();
    assert!(matches!(err, ArchiveError::TooLarge { .. }), "{err:?}");
}

#[test]
fn the_budget_stops_mid_file() {
    // The tar reader yields no more than an entry announces, which is checked first; the copy
    // still counts every chunk, so a reader that yields more stops at the budget.
    let mut written = 3;
    let mut out = Vec::new();
    let data = [9u8; 10];
    assert!(matches!(
        copy(&mut &data[..], &mut out, &mut written, 12, &mut |_| {}),
        Err(CopyError::OverBudget)
    ));
    assert_eq!(written, 3);
    assert!(out.is_empty());
    let mut written = 2;
    assert_eq!(
        copy(&mut &data[..], &mut out, &mut written, 12, &mut |_| {}).ok(),
        Some(10)
    );
    assert_eq!(written, 12);
}

#[test]
fn refuses_too_many_entries() {
    let tar = RawTar::default()
        .dir("a/")
        .file("a/1", b"1")
        .file("a/2", b"2")
        .tar();
    extract_all(&tar[..], None, Limits::new(100, 3)).unwrap();
    let err = extract_all(&tar[..], None, Limits::new(100, 2)).unwrap_err();
    assert_eq!(err.to_string(), "the archive has more than 2 entries");
}

#[test]
fn refuses_name_clashes() {
    for (tar, name, clash) in [
        (
            RawTar::default().file("a", b"1").file("a/b", b"2"),
            "a/b",
            Clash::InsideFile("a".into()),
        ),
        (
            RawTar::default().file("a", b"1").dir("a/b/"),
            "a/b/",
            Clash::InsideFile("a".into()),
        ),
        (
            RawTar::default().dir("a/b/").file("a", b"1"),
            "a",
            Clash::FileOverDir,
        ),
        (
            RawTar::default().file("a/b", b"1").file("a", b"1"),
            "a",
            Clash::FileOverDir,
        ),
        (
            RawTar::default().file("a", b"1").dir("a/"),
            "a/",
            Clash::DirOverFile,
        ),
    ] {
        let (err, _dir) = refused(&tar.clone().tar());
        match &err {
            ArchiveError::Clash { entry, clash: c } => {
                assert_eq!((entry.as_str(), c), (name, &clash))
            }
            other => panic!("{name}: {other:?}"),
        }
        assert!(err.is_archive_fault());
        // The same without a destination: the names are checked, not the disk.
        let err = extract_all(&tar.tar()[..], None, limits()).unwrap_err();
        assert!(matches!(err, ArchiveError::Clash { .. }), "{err:?}");
    }
    let (err, _dir) = refused(
        &RawTar::default()
            .file("a/b", b"1")
            .file("a/c", b"2")
            .dir("x/")
            .file("a/b", b"3")
            .tar(),
    );
    assert_eq!(err.to_string(), "entry \"a/b\" appears twice");
    let (err, _dir) = refused(&RawTar::default().file("a", b"1").file("a/b", b"2").tar());
    assert_eq!(
        err.to_string(),
        "entry \"a/b\" lies inside \"a\", which is a file"
    );
    // A directory repeated is fine.
    extract_all(
        &RawTar::default()
            .dir("a/")
            .dir("a")
            .file("a/b", b"")
            .dir("a/")
            .tar()[..],
        None,
        limits(),
    )
    .unwrap();
}

#[test]
fn refuses_directories_with_data() {
    let tar = RawTar::default()
        .raw(b"d/", EntryType::Directory, b"data", b"")
        .tar();
    let (err, _dir) = refused(&tar);
    assert_eq!(
        err.to_string(),
        "entry \"d/\" is a directory with 4 bytes of data"
    );
}

#[test]
fn refuses_truncated_archives() {
    let mut tar = RawTar::default().file("a", &[5u8; 2000]).0;
    tar.truncate(512 + 1000);
    let (err, _dir) = refused(&tar);
    assert_eq!(
        err.to_string(),
        "entry \"a\" is truncated: 1000 of its 2000 bytes are in the archive"
    );
    let gz = RawTar::default().file("a", &[5u8; 2000]).gz();
    let (err, _dir) = refused_gz(&gz[..gz.len() - 4]);
    assert!(matches!(err, ArchiveError::Malformed { .. }), "{err:?}");
    let (err, _dir) = refused_gz(b"not a gzip stream");
    assert!(
        matches!(err, ArchiveError::Malformed { entry: None, .. }),
        "{err:?}"
    );
}

fn refused_gz(gz: &[u8]) -> (ArchiveError, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let run = || -> Result<Summary, ArchiveError> {
        let mut x = Extractor::gzip(gz, Some(dir.path()), limits());
        {
            let mut entries = x.entries()?;
            while let Some(entry) = entries.next_entry()? {
                entry.extract()?;
            }
        }
        x.finish()
    };
    let err = run().unwrap_err();
    (err, dir)
}

#[test]
fn refuses_what_the_entries_do_not_announce() {
    // A GNU long name is read into memory by the tar reader; an oversized one is refused
    // before it is.
    let mut tar = RawTar::default().file("a", b"1").0;
    let long = RawTar::header(b"././@LongLink", EntryType::GNULongName, 10 << 20, b"");
    tar.extend_from_slice(long.as_bytes());
    tar.resize(tar.len() + (10 << 20), b'a');
    tar.extend_from_slice(&[0u8; 1024]);
    let (err, _dir) = refused(&tar);
    assert!(matches!(err, ArchiveError::Unannounced), "{err:?}");
    // Data after the end of the archive.
    let mut tar = RawTar::default().file("a", b"1").tar();
    tar.extend_from_slice(&[0u8; 10240]);
    extract_all(&tar[..], None, limits()).unwrap();
    tar.resize(tar.len() + (1 << 20), 1);
    let err = extract_all(&tar[..], None, limits()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the archive holds more than its entries announce (over 64 KiB of headers for one \
         entry, or data after the end of the tar)"
    );
}

/// Counts how much of a generated stream was pulled.
struct Counting<R> {
    inner: R,
    read: Rc<Cell<u64>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

#[test]
fn a_gzip_bomb_is_refused_without_inflating_it() {
    // The entry announces 5 GB of zeros; the archive is compressed as it is read, so only
    // what the extractor asks for is produced.
    const BOMB: u64 = 5_000_000_000;
    let header = RawTar::header(b"zeros", EntryType::Regular, BOMB, b"");
    let pulled = Rc::new(Cell::new(0));
    let source = Counting {
        inner: header.as_bytes().chain(io::repeat(0).take(BOMB + 1024)),
        read: Rc::clone(&pulled),
    };
    let gz = flate2::read::GzEncoder::new(source, Compression::fast());
    let mut x = Extractor::gzip(gz, None, Limits::new(1 << 20, 10));
    let mut entries = x.entries().unwrap();
    let err = entries
        .next_entry()
        .unwrap()
        .unwrap()
        .extract()
        .unwrap_err();
    assert!(matches!(err, ArchiveError::TooLarge { .. }), "{err:?}");
    assert!(pulled.get() < 64 << 20, "read {} bytes", pulled.get());
}

#[test]
fn the_stream_limit_counts_skipped_and_read_entries() {
    let tar = RawTar::default()
        .file("skipped", &[0u8; 5000])
        .file("kept", b"k")
        .tar();
    let limits = Limits {
        bytes: 100,
        entries: 10,
        stream: 4096,
    };
    let mut x = Extractor::new(&tar[..], None, limits);
    let mut entries = x.entries().unwrap();
    drop(entries.next_entry().unwrap().unwrap());
    let err = match entries.next_entry() {
        Err(e) => e,
        Ok(_) => panic!("the skipped entry's data is past the stream limit"),
    };
    assert_eq!(
        err.to_string(),
        "the archive expands to more than 4096 bytes"
    );

    // Skipped within the limit: nothing written, nothing recorded.
    let dir = tempfile::tempdir().unwrap();
    let mut x = Extractor::new(&tar[..], Some(dir.path()), Limits::new(100, 10));
    let mut entries = x.entries().unwrap();
    drop(entries.next_entry().unwrap().unwrap());
    entries.next_entry().unwrap().unwrap().extract().unwrap();
    assert!(entries.next_entry().unwrap().is_none());
    assert_eq!(
        x.finish().unwrap(),
        Summary {
            entries: 2,
            written: 1
        }
    );
    assert_eq!(tree(dir.path()), ["kept"]);
}

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
    let tar = pax_size_tar(1 << 40, b"");
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
