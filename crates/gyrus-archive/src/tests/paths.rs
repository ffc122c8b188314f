//! Path rules and entry kinds: what may be named, and what may be extracted.

use super::*;

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
