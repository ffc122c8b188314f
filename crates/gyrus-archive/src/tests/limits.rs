//! The byte budget, the entry limit, name clashes, truncation and the stream meter.

use super::*;

/// A pax `size` is what the tar reader yields, whatever the ustar header says.
pub(super) fn pax_size_tar(claimed: u64, follows: &[u8]) -> Vec<u8> {
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
