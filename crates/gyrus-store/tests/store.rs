//! The store end to end on real files in temporary directories: saves, listing, resolution,
//! deletion, export and import, and every hostile archive and upload the contract refuses.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use flate2::write::GzEncoder;
use flate2::Compression;
use gyrus_spec::ModelTag;
use gyrus_store::{
    FileEntry, ModelInfo, ModelStore, NewModel, Signature, StoreError, StoredModel, TensorSpec,
};
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

fn tag(s: &str) -> ModelTag {
    ModelTag::parse(s).unwrap()
}

fn store() -> (tempfile::TempDir, ModelStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = ModelStore::open(dir.path().join("models")).unwrap();
    (dir, store)
}

fn new_model(name: &str) -> NewModel {
    let mut model = NewModel {
        name: name.into(),
        module: "gyrus.onnx".into(),
        ..NewModel::default()
    };
    model.labels.insert("team".into(), "ml".into());
    model
        .metadata
        .insert("accuracy".into(), serde_json::json!("0.97"));
    model.context.framework_name = "onnx".into();
    model.signatures.insert(
        "run".into(),
        Signature {
            input_spec: vec![TensorSpec {
                name: "input".into(),
                datatype: "FP32".into(),
                shape: vec![-1, 4],
            }],
            ..Signature::default()
        },
    );
    model
}

/// Saves `files` as a new version of `name`. Saves in one process get increasing times, so
/// versions of one test differ in time without sleeping.
fn save(store: &ModelStore, name: &str, files: &[(&str, &[u8])]) -> StoredModel {
    let staging = store.begin().unwrap();
    for (path, data) in files {
        let dest = staging.dir().join(path);
        fs::create_dir_all(dest.parent().unwrap()).unwrap();
        fs::write(dest, data).unwrap();
    }
    staging.commit(new_model(name)).unwrap()
}

fn onnx(store: &ModelStore, name: &str) -> StoredModel {
    save(store, name, &[("saved_model.onnx", b"onnx bytes")])
}

/// Every path under `root`, relative.
fn snapshot(root: &Path) -> BTreeSet<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<PathBuf>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            out.insert(path.strip_prefix(root).unwrap().to_path_buf());
            if path.symlink_metadata().unwrap().is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

fn staging_is_empty(store: &ModelStore) -> bool {
    fs::read_dir(store.root().join(".staging"))
        .unwrap()
        .next()
        .is_none()
}

fn latest(store: &ModelStore, name: &str) -> String {
    fs::read_to_string(store.root().join(name).join("latest")).unwrap()
}

fn versions(models: &[StoredModel]) -> Vec<&str> {
    models.iter().map(|m| m.info.version.as_str()).collect()
}

#[test]
fn save_list_resolve() {
    let (_tmp, store) = store();
    let err = store.resolve(&tag("iris")).unwrap_err();
    assert!(matches!(&err, StoreError::NotFound { available, .. } if available.is_empty()));
    assert_eq!(
        err.to_string(),
        "model \"iris:latest\" is not in the store; the store is empty; save one with `gyrus \
         models save`"
    );
    assert!(store.list(None).unwrap().is_empty());

    let v1 = onnx(&store, "iris");
    let v2 = onnx(&store, "iris");
    let other = onnx(&store, "resnet");

    // The saved description.
    assert_eq!(v1.path, store.root().join("iris").join(&v1.info.version));
    assert_eq!(v1.tag(), format!("iris:{}", v1.info.version));
    assert_eq!(v1.info.module, "gyrus.onnx");
    assert_eq!(v1.info.size, 10);
    assert_eq!(
        v1.info.files,
        vec![FileEntry {
            path: "saved_model.onnx".into(),
            size: 10,
            sha256: hex::encode(Sha256::digest(b"onnx bytes")),
        }]
    );
    assert_eq!(v1.model_file().unwrap(), v1.path.join("saved_model.onnx"));
    let on_disk =
        ModelInfo::from_yaml(&fs::read_to_string(v1.path.join("model.yaml")).unwrap()).unwrap();
    assert_eq!(on_disk, v1.info);

    // Listing: newest first.
    assert_eq!(
        versions(&store.list(Some("iris")).unwrap()),
        [&v2.info.version, &v1.info.version]
    );
    assert_eq!(
        versions(&store.list(None).unwrap()),
        [&other.info.version, &v2.info.version, &v1.info.version]
    );
    assert!(store.list(Some("nothing")).unwrap().is_empty());
    assert!(matches!(
        store.list(Some("Bad Name")),
        Err(StoreError::InvalidTag(_))
    ));

    // Resolution.
    assert_eq!(latest(&store, "iris"), v2.info.version);
    assert_eq!(store.resolve(&tag("iris")).unwrap(), v2);
    assert_eq!(store.resolve(&tag("iris:latest")).unwrap(), v2);
    assert_eq!(store.resolve(&tag(&v1.tag())).unwrap(), v1);
    let prefix = &v1.info.version[..15];
    assert_eq!(store.resolve(&tag(&format!("iris:{prefix}"))).unwrap(), v1);

    let common: String = v1
        .info
        .version
        .chars()
        .zip(v2.info.version.chars())
        .take_while(|(a, b)| a == b)
        .map(|(a, _)| a)
        .collect();
    if !common.is_empty() {
        let err = store.resolve(&tag(&format!("iris:{common}"))).unwrap_err();
        match &err {
            StoreError::Ambiguous { candidates, .. } => {
                assert_eq!(
                    candidates,
                    &[v2.info.version.clone(), v1.info.version.clone()]
                )
            }
            other => panic!("{other}"),
        }
        assert_eq!(
            err.to_string(),
            format!(
                "version prefix \"{common}\" of iris matches {}, {}; give more characters",
                v2.info.version, v1.info.version
            )
        );
        assert!(err.is_client_error());
    }

    let err = store.resolve(&tag("iris:zzzz")).unwrap_err();
    match &err {
        StoreError::NotFound { tag, available } => {
            assert_eq!(tag, "iris:zzzz");
            assert_eq!(available, &[v2.tag(), v1.tag()]);
        }
        other => panic!("{other}"),
    }
    assert_eq!(
        err.to_string(),
        format!(
            "model \"iris:zzzz\" is not in the store; versions of iris, newest first: {}, {}",
            v2.tag(),
            v1.tag()
        )
    );
    let err = store.resolve(&tag("irsi")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "model \"irsi:latest\" is not in the store; models in the store: iris, resnet; did you \
         mean \"iris\"?"
    );

    // A tag built by hand is checked too; it cannot name a path outside the store.
    let sneaky = ModelTag {
        name: "..".into(),
        version: None,
    };
    assert!(matches!(
        store.resolve(&sneaky),
        Err(StoreError::InvalidTag(_))
    ));
}

#[test]
fn versions_have_the_format_and_carry_the_time() {
    let (_tmp, store) = store();
    let mut saved = Vec::new();
    for _ in 0..4 {
        saved.push(onnx(&store, "m"));
    }
    let mut last = 0;
    let mut last_version = String::new();
    for model in &saved {
        let v = &model.info.version;
        assert_eq!(v.len(), 16, "{v}");
        assert!(v
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'v').contains(&b)));
        let bytes = data_encoding::BASE32HEX_NOPAD
            .decode(v.to_ascii_uppercase().as_bytes())
            .unwrap();
        assert_eq!(bytes.len(), 10);
        let mut wide = [0u8; 8];
        wide[2..].copy_from_slice(&bytes[..6]);
        let millis = u64::from_be_bytes(wide);
        let time = chrono::DateTime::parse_from_rfc3339(&model.info.creation_time).unwrap();
        assert_eq!(millis as i64, time.timestamp_millis());
        assert!(millis > last);
        last = millis;
        // Versions sort by creation time as plain strings.
        assert!(*v > last_version, "{v} > {last_version}");
        last_version = v.clone();
        // RFC 3339 with microseconds and +00:00.
        assert_eq!(model.info.creation_time.len(), 32);
        assert!(model.info.creation_time.ends_with("+00:00"));
    }
    let listed: Vec<String> = store
        .list(Some("m"))
        .unwrap()
        .into_iter()
        .map(|m| m.info.version)
        .collect();
    let mut newest_first: Vec<String> = saved.iter().map(|m| m.info.version.clone()).collect();
    newest_first.reverse();
    assert_eq!(listed, newest_first);
    assert_eq!(latest(&store, "m"), newest_first[0]);
}

#[test]
fn delete_moves_latest_and_removes_the_last() {
    let (_tmp, store) = store();
    let v1 = onnx(&store, "iris");
    let v2 = onnx(&store, "iris");
    let v3 = onnx(&store, "iris");

    // Not latest: latest stays.
    assert_eq!(store.delete(&tag(&v2.tag())).unwrap(), v2);
    assert!(!v2.path.exists());
    assert_eq!(latest(&store, "iris"), v3.info.version);

    // Latest: it moves to the newest remaining.
    assert_eq!(store.delete(&tag("iris")).unwrap(), v3);
    assert_eq!(latest(&store, "iris"), v1.info.version);
    assert_eq!(store.resolve(&tag("iris")).unwrap(), v1);

    // The last one takes the name with it.
    store.delete(&tag("iris:latest")).unwrap();
    assert!(!store.root().join("iris").exists());
    assert!(staging_is_empty(&store));
    assert!(matches!(
        store.delete(&tag("iris")),
        Err(StoreError::NotFound { .. })
    ));
}

#[test]
fn delete_touches_only_latest() {
    let (_tmp, store) = store();
    let v1 = onnx(&store, "iris");
    let v2 = onnx(&store, "iris");
    // A concurrent save's pointer, not yet renamed over `latest`: not delete's to remove.
    let theirs = store.root().join("iris/latest.0123456789abcdef");
    fs::write(&theirs, &v2.info.version).unwrap();

    store.delete(&tag(&v2.tag())).unwrap();
    assert_eq!(latest(&store, "iris"), v1.info.version);
    assert!(theirs.exists());

    // A missing `latest` is pointed at the newest remaining version.
    let v3 = onnx(&store, "iris");
    fs::remove_file(store.root().join("iris/latest")).unwrap();
    store.delete(&tag(&v1.tag())).unwrap();
    assert_eq!(latest(&store, "iris"), v3.info.version);

    // The last version: `latest` goes, the other writer's file stays, and so does the name
    // directory holding it; the name has no versions left.
    store.delete(&tag("iris")).unwrap();
    assert!(!store.root().join("iris/latest").exists());
    assert!(theirs.exists());
    assert!(store.list(Some("iris")).unwrap().is_empty());
    assert!(matches!(
        store.resolve(&tag("iris")),
        Err(StoreError::NotFound { .. })
    ));
    assert!(staging_is_empty(&store));
}

#[test]
fn dangling_or_missing_latest_falls_back_to_the_newest() {
    let (_tmp, store) = store();
    onnx(&store, "iris");
    let v2 = onnx(&store, "iris");
    let latest_file = store.root().join("iris/latest");
    fs::write(&latest_file, "gone0000000000aa").unwrap();
    assert_eq!(store.resolve(&tag("iris")).unwrap(), v2);
    fs::remove_file(&latest_file).unwrap();
    assert_eq!(store.resolve(&tag("iris")).unwrap(), v2);
    // With a trailing newline (a hand edit) it still reads.
    fs::write(&latest_file, format!("{}\n", v2.info.version)).unwrap();
    assert_eq!(store.resolve(&tag("iris")).unwrap(), v2);
}

#[test]
fn list_skips_what_is_not_a_model_and_resolve_reports_corruption() {
    let (_tmp, store) = store();
    let good = onnx(&store, "iris");
    // A directory without model.yaml is not a model.
    fs::create_dir_all(store.root().join("iris/half0000000000a")).unwrap();
    // Stray files and dot-entries.
    fs::write(store.root().join("README"), "x").unwrap();
    fs::create_dir_all(store.root().join(".trash/v")).unwrap();
    // A version whose model.yaml is unreadable.
    let broken = store.root().join("iris/broken000000000");
    fs::create_dir_all(&broken).unwrap();
    fs::write(broken.join("model.yaml"), "name: [iris\n").unwrap();

    assert_eq!(versions(&store.list(None).unwrap()), [&good.info.version]);
    assert_eq!(
        versions(&store.list(Some("iris")).unwrap()),
        [&good.info.version]
    );
    match store.resolve(&tag("iris:broken000000000")).unwrap_err() {
        StoreError::Corrupt { path, reason } => {
            assert_eq!(path, broken.join("model.yaml"));
            assert!(reason.contains("line 1"), "{reason}");
        }
        other => panic!("{other}"),
    }
    assert!(!StoreError::Corrupt {
        path: broken,
        reason: String::new()
    }
    .is_client_error());
}

#[test]
fn dropped_staging_and_bad_names_leave_nothing() {
    let (_tmp, store) = store();
    let before = snapshot(store.root());
    {
        let staging = store.begin().unwrap();
        fs::write(staging.dir().join("saved_model.onnx"), b"x").unwrap();
        assert!(staging.dir().starts_with(store.root().join(".staging")));
    }
    assert_eq!(snapshot(store.root()), before);

    let staging = store.begin().unwrap();
    fs::write(staging.dir().join("saved_model.onnx"), b"x").unwrap();
    let err = staging.commit(new_model("Iris")).unwrap_err();
    assert!(matches!(err, StoreError::InvalidTag(_)));
    assert!(
        err.to_string()
            .contains("^[a-z0-9]([-._a-z0-9]*[a-z0-9])?$"),
        "{err}"
    );
    assert_eq!(snapshot(store.root()), before);

    // A model.yaml of the user's is refused: the store writes that file.
    let staging = store.begin().unwrap();
    fs::write(staging.dir().join("model.yaml"), b"x").unwrap();
    assert!(matches!(
        staging.commit(new_model("iris")),
        Err(StoreError::BadArchive(_))
    ));
    assert_eq!(snapshot(store.root()), before);
}

#[cfg(unix)]
#[test]
fn commit_refuses_links() {
    let (_tmp, store) = store();
    let staging = store.begin().unwrap();
    fs::write(staging.dir().join("a.onnx"), b"x").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", staging.dir().join("b.onnx")).unwrap();
    let err = staging.commit(new_model("iris")).unwrap_err();
    assert!(err.to_string().contains("b.onnx is a link"), "{err}");
    assert!(staging_is_empty(&store));
}

fn set_mtime(path: &Path, time: std::time::SystemTime) {
    fs::File::open(path).unwrap().set_modified(time).unwrap();
}

#[test]
fn clean_staging_removes_only_old_entries() {
    let (_tmp, store) = store();
    let staging = store.root().join(".staging");
    let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
    // Nothing in it is recent: removed.
    let old = staging.join("old");
    fs::create_dir_all(old.join("sub")).unwrap();
    fs::write(old.join("sub/w.bin"), b"w").unwrap();
    for p in ["sub/w.bin", "sub", ""] {
        set_mtime(&old.join(p), two_hours_ago);
    }
    // A long save still writing a file deep inside: its directories' own times are old (they
    // change only when entries are added), the file's is not. Kept.
    let writing = staging.join("writing");
    fs::create_dir_all(writing.join("a/b")).unwrap();
    fs::write(writing.join("a/b/big.bin"), b"still growing").unwrap();
    for p in ["a/b", "a", ""] {
        set_mtime(&writing.join(p), two_hours_ago);
    }
    // An old directory with a fresh empty directory inside: kept.
    let fresh_dir = staging.join("fresh-dir");
    fs::create_dir_all(fresh_dir.join("new")).unwrap();
    set_mtime(&fresh_dir, two_hours_ago);
    // A fresh one, and an old stray file.
    let fresh = staging.join("fresh");
    fs::create_dir_all(&fresh).unwrap();
    let stray = staging.join("latest.0123");
    fs::write(&stray, b"x").unwrap();
    set_mtime(&stray, two_hours_ago);

    store.clean_staging(Duration::from_secs(3600));
    assert!(!old.exists());
    assert!(!stray.exists());
    assert!(writing.join("a/b/big.bin").exists());
    assert!(fresh_dir.exists());
    assert!(fresh.exists());
}

fn export_bytes(store: &ModelStore, t: &str) -> Vec<u8> {
    let mut out = Vec::new();
    store.export(&tag(t), &mut out).unwrap();
    out
}

const LONG: &str = "external/data/of/a/rather/deeply/nested/model/that/has/a/path/longer/than/one/hundred/bytes/weights.bin";

#[test]
fn export_then_import_is_exact() {
    let (_tmp, a) = store();
    let saved = save(
        &a,
        "bert",
        &[
            ("model.onnx", b"graph"),
            ("weights/b.bin", b"bbbb"),
            ("weights/a.bin", b"aaaaaaaa"),
            ("empty.txt", b""),
            // Longer than a tar header's 100-byte name field.
            (LONG, b"long"),
        ],
    );
    assert_eq!(saved.info.size, 21);
    assert_eq!(
        saved
            .info
            .files
            .iter()
            .map(|f| f.path.as_str())
            .collect::<Vec<_>>(),
        [
            "empty.txt",
            LONG,
            "model.onnx",
            "weights/a.bin",
            "weights/b.bin"
        ]
    );
    assert_eq!(saved.model_file().unwrap(), saved.path.join("model.onnx"));
    let archive = export_bytes(&a, "bert");

    // The archive: model.yaml first, then the files by path, regular files 0644, no dirs.
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&archive[..]));
    let mut names = Vec::new();
    for entry in tar.entries().unwrap() {
        let entry = entry.unwrap();
        assert_eq!(entry.header().entry_type(), EntryType::Regular);
        assert_eq!(entry.header().mode().unwrap(), 0o644);
        names.push(entry.path().unwrap().to_string_lossy().into_owned());
    }
    assert_eq!(
        names,
        [
            "model.yaml",
            "empty.txt",
            LONG,
            "model.onnx",
            "weights/a.bin",
            "weights/b.bin"
        ]
    );
    // Exporting twice gives the same bytes.
    assert_eq!(export_bytes(&a, &saved.tag()), archive);

    let (_tmp2, b) = store();
    let imported = b.import(&archive[..]).unwrap();
    assert_eq!(imported.info, saved.info);
    assert_eq!(
        imported.path,
        b.root().join("bert").join(&saved.info.version)
    );
    for rel in [
        "model.yaml",
        "empty.txt",
        LONG,
        "model.onnx",
        "weights/a.bin",
        "weights/b.bin",
    ] {
        assert_eq!(
            fs::read(saved.path.join(rel)).unwrap(),
            fs::read(imported.path.join(rel)).unwrap(),
            "{rel}"
        );
    }
    assert_eq!(latest(&b, "bert"), saved.info.version);
    assert!(staging_is_empty(&b));

    // Again: the tag exists.
    let before = snapshot(b.root());
    let err = b.import(&archive[..]).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{} is already in the store; delete it first to import again",
            saved.tag()
        )
    );
    assert!(matches!(err, StoreError::Exists(_)));
    assert_eq!(snapshot(b.root()), before);
}

#[test]
fn import_moves_latest_only_forward() {
    let (_tmp, a) = store();
    let old = onnx(&a, "iris");
    let new = onnx(&a, "iris");
    let old_archive = export_bytes(&a, &old.tag());
    let new_archive = export_bytes(&a, &new.tag());

    let (_tmp2, b) = store();
    b.import(&new_archive[..]).unwrap();
    b.import(&old_archive[..]).unwrap();
    assert_eq!(latest(&b, "iris"), new.info.version);

    let (_tmp3, c) = store();
    c.import(&old_archive[..]).unwrap();
    assert_eq!(latest(&c, "iris"), old.info.version);
    c.import(&new_archive[..]).unwrap();
    assert_eq!(latest(&c, "iris"), new.info.version);
    assert_eq!(
        versions(&c.list(Some("iris")).unwrap()),
        [&new.info.version, &old.info.version]
    );
}

/// An archive of `manifest(&[("saved_model.onnx", MODEL)])` with `creation_time` and
/// `version` replaced.
fn archive_at(creation_time: &str, version: &str) -> Vec<u8> {
    let text = manifest(&[("saved_model.onnx", MODEL)])
        .replace("2026-11-21T22:53:53.123456+00:00", creation_time)
        .replace("0vd8k1s2m4q6r8tu", version);
    assert!(
        text.contains(creation_time) && text.contains(version),
        "{text}"
    );
    RawTar::default()
        .file("model.yaml", text.as_bytes())
        .file("saved_model.onnx", MODEL)
        .gz()
}

#[test]
fn import_breaks_creation_time_ties_by_version() {
    let (_tmp, store) = store();
    let time = "2026-11-21T22:53:53.123456+00:00";
    store
        .import(&archive_at(time, "0vd8k1s2m4q6r8tv")[..])
        .unwrap();
    store
        .import(&archive_at(time, "0vd8k1s2m4q6r8tu")[..])
        .unwrap();
    assert_eq!(latest(&store, "evil"), "0vd8k1s2m4q6r8tv");
    store
        .import(&archive_at(time, "0vd8k1s2m4q6r8u0")[..])
        .unwrap();
    assert_eq!(latest(&store, "evil"), "0vd8k1s2m4q6r8u0");
}

#[test]
fn commit_moves_latest_only_forward() {
    let (_tmp, store) = store();
    // A version created later than any save below stands for a concurrent save that started
    // after this one and published first: a slower, older save must not take `latest` back.
    let newest = store
        .import(&archive_at("2999-01-01T00:00:00+00:00", "0vd8k1s2m4q6r8tu")[..])
        .unwrap();
    let slower = onnx(&store, "evil");
    assert_eq!(latest(&store, "evil"), newest.info.version);
    assert_eq!(store.resolve(&tag("evil")).unwrap(), newest);
    assert_eq!(store.resolve(&tag(&slower.tag())).unwrap(), slower);
    let name_dir = store.root().join("evil");
    let no_temp_files = || {
        fs::read_dir(&name_dir)
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().starts_with("latest."))
    };
    assert!(no_temp_files());

    // A dangling `latest` counts as older.
    fs::write(name_dir.join("latest"), "gone0000000000aa").unwrap();
    let a = onnx(&store, "evil");
    assert_eq!(latest(&store, "evil"), a.info.version);
    // So does a missing one.
    fs::remove_file(name_dir.join("latest")).unwrap();
    let b = onnx(&store, "evil");
    assert_eq!(latest(&store, "evil"), b.info.version);
    // And one naming a version whose model.yaml cannot be read.
    let broken = name_dir.join("broken000000000");
    fs::create_dir_all(&broken).unwrap();
    fs::write(broken.join("model.yaml"), "name: [evil\n").unwrap();
    fs::write(name_dir.join("latest"), "broken000000000").unwrap();
    let c = onnx(&store, "evil");
    assert_eq!(latest(&store, "evil"), c.info.version);
    // A newer save still moves it.
    let d = onnx(&store, "evil");
    assert_eq!(latest(&store, "evil"), d.info.version);
    assert!(no_temp_files());
}

// ---- Hostile archives, written header by header. ----

/// An uncompressed tar built from raw headers, so names like `../x` and `/etc/passwd` go in
/// unchecked.
#[derive(Default)]
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

    fn raw(mut self, name: &[u8], kind: EntryType, data: &[u8], link: &[u8]) -> Self {
        let header = Self::header(name, kind, data.len() as u64, link);
        self.0.extend_from_slice(header.as_bytes());
        self.0.extend_from_slice(data);
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
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// A model.yaml text describing `files` (path, claimed contents).
fn manifest(files: &[(&str, &[u8])]) -> String {
    let info = ModelInfo {
        name: "evil".into(),
        version: "0vd8k1s2m4q6r8tu".into(),
        module: "gyrus.onnx".into(),
        labels: Default::default(),
        options: Default::default(),
        metadata: Default::default(),
        context: Default::default(),
        signatures: Default::default(),
        creation_time: "2026-11-21T22:53:53.123456+00:00".into(),
        size: files.iter().map(|(_, d)| d.len() as u64).sum(),
        files: files
            .iter()
            .map(|(p, d)| FileEntry {
                path: p.to_string(),
                size: d.len() as u64,
                sha256: hex::encode(Sha256::digest(d)),
            })
            .collect(),
    };
    info.to_yaml().unwrap()
}

const MODEL: &[u8] = b"onnx bytes";

/// A well-formed archive's start: model.yaml listing saved_model.onnx.
fn with_manifest() -> RawTar {
    RawTar::default().file(
        "model.yaml",
        manifest(&[("saved_model.onnx", MODEL)]).as_bytes(),
    )
}

/// Imports `archive` into a store holding one model, expects a BadArchive whose message
/// contains `expected`, and checks the store is unchanged and `.staging` empty.
fn refused(archive: impl Read, expected: &str) {
    let (_tmp, store) = store();
    onnx(&store, "iris");
    let before = snapshot(store.root());
    let err = store.import(archive).unwrap_err();
    assert!(
        matches!(err, StoreError::BadArchive(_)),
        "expected BadArchive, got {err:?}"
    );
    assert!(err.is_client_error());
    let message = err.to_string();
    assert!(
        message.contains(expected),
        "{message:?} should contain {expected:?}"
    );
    assert_eq!(snapshot(store.root()), before);
    assert!(staging_is_empty(&store));
}

#[test]
fn the_well_formed_raw_archive_imports() {
    // The baseline the hostile variants below depart from, and directory entries for the
    // files' paths, as tar tools write them.
    let (_tmp, store) = store();
    let archive = RawTar::default()
        .file(
            "model.yaml",
            manifest(&[("saved_model.onnx", MODEL), ("data/w.bin", b"w")]).as_bytes(),
        )
        .dir("data/")
        .file("data/w.bin", b"w")
        .file("saved_model.onnx", MODEL)
        .gz();
    let model = store.import(&archive[..]).unwrap();
    assert_eq!(model.tag(), "evil:0vd8k1s2m4q6r8tu");
    assert_eq!(fs::read(model.path.join("data/w.bin")).unwrap(), b"w");
    assert_eq!(latest(&store, "evil"), "0vd8k1s2m4q6r8tu");
}

#[test]
fn refuses_absolute_paths() {
    let archive = with_manifest()
        .file("/etc/cron.d/evil", b"x")
        .file("saved_model.onnx", MODEL)
        .gz();
    refused(
        &archive[..],
        "archive entry \"/etc/cron.d/evil\": absolute paths are not allowed",
    );
    let archive = RawTar::default()
        .file("model.yaml", manifest(&[("/abs.onnx", MODEL)]).as_bytes())
        .file("/abs.onnx", MODEL)
        .gz();
    refused(
        &archive[..],
        "files lists \"/abs.onnx\": absolute paths are not allowed",
    );
}

#[test]
fn refuses_dot_dot() {
    let archive = with_manifest()
        .file("saved_model.onnx", MODEL)
        .file("../../evil.sh", b"x")
        .gz();
    refused(
        &archive[..],
        "archive entry \"../../evil.sh\": '..' components are not allowed",
    );
    let archive = with_manifest().dir("a/../../").gz();
    refused(&archive[..], "'..' components are not allowed");
}

#[test]
fn refuses_links() {
    let archive = with_manifest()
        .link("saved_model.onnx", EntryType::Symlink, "/etc/passwd")
        .gz();
    refused(
        &archive[..],
        "archive entry \"saved_model.onnx\" is a symbolic link; archives hold regular files only",
    );
    // Even one pointing inside the model.
    let archive = with_manifest()
        .file("saved_model.onnx", MODEL)
        .link("copy.onnx", EntryType::Symlink, "saved_model.onnx")
        .gz();
    refused(
        &archive[..],
        "archive entry \"copy.onnx\" is a symbolic link",
    );
    let archive = with_manifest()
        .file("saved_model.onnx", MODEL)
        .link("copy.onnx", EntryType::Link, "saved_model.onnx")
        .gz();
    refused(&archive[..], "archive entry \"copy.onnx\" is a hard link");
}

#[test]
fn refuses_devices_and_fifos() {
    let archive = with_manifest().raw(b"null", EntryType::Char, b"", b"").gz();
    refused(&archive[..], "archive entry \"null\" is a character device");
    let archive = with_manifest().raw(b"sda", EntryType::Block, b"", b"").gz();
    refused(&archive[..], "archive entry \"sda\" is a block device");
    let archive = with_manifest().raw(b"pipe", EntryType::Fifo, b"", b"").gz();
    refused(&archive[..], "archive entry \"pipe\" is a FIFO");
}

#[test]
fn refuses_model_yaml_not_first() {
    let archive = RawTar::default()
        .file("saved_model.onnx", MODEL)
        .file(
            "model.yaml",
            manifest(&[("saved_model.onnx", MODEL)]).as_bytes(),
        )
        .gz();
    refused(
        &archive[..],
        "the archive's first entry is \"saved_model.onnx\" (a regular file), not model.yaml",
    );
    refused(&RawTar::default().gz()[..], "the archive is empty");
    let archive = with_manifest()
        .file("saved_model.onnx", MODEL)
        .file("model.yaml", b"again")
        .gz();
    refused(&archive[..], "model.yaml appears twice in the archive");
}

#[test]
fn refuses_unlisted_and_missing_files() {
    let archive = with_manifest()
        .file("saved_model.onnx", MODEL)
        .file("extra.txt", b"")
        .gz();
    refused(
        &archive[..],
        "extra.txt is in the archive but not listed in model.yaml",
    );
    let archive = with_manifest().gz();
    refused(
        &archive[..],
        "saved_model.onnx is listed in model.yaml but missing from the archive",
    );
    let archive = with_manifest()
        .file("saved_model.onnx", MODEL)
        .dir("stray/")
        .gz();
    refused(
        &archive[..],
        "archive entry \"stray/\" is a directory that holds no file",
    );
    let archive = with_manifest()
        .file("saved_model.onnx", MODEL)
        .file("saved_model.onnx", MODEL)
        .gz();
    refused(
        &archive[..],
        "saved_model.onnx appears twice in the archive",
    );
}

#[test]
fn refuses_size_and_digest_mismatches() {
    let archive = with_manifest().file("saved_model.onnx", b"onnx").gz();
    refused(
        &archive[..],
        "saved_model.onnx is 4 bytes in the archive but 10 bytes in model.yaml",
    );
    let archive = with_manifest().file("saved_model.onnx", b"ONNX BYTES").gz();
    refused(
        &archive[..],
        &format!(
            "the sha256 of saved_model.onnx in the archive is {}, model.yaml says {}",
            hex::encode(Sha256::digest(b"ONNX BYTES")),
            hex::encode(Sha256::digest(MODEL))
        ),
    );
    // A model.yaml whose size is not what its files add up to.
    let text =
        manifest(&[("saved_model.onnx", MODEL)]).replace("size: 10\nfiles", "size: 99\nfiles");
    assert!(text.contains("size: 99"), "{text}");
    let archive = RawTar::default()
        .file("model.yaml", text.as_bytes())
        .file("saved_model.onnx", MODEL)
        .gz();
    refused(
        &archive[..],
        "size is 99 but the files listed add up to 10 bytes",
    );
}

#[test]
fn refuses_bad_model_yaml() {
    let archive = RawTar::default()
        .file("model.yaml", b"name: [unclosed\n")
        .gz();
    refused(&archive[..], "model.yaml in the archive: ");
    let text = manifest(&[("saved_model.onnx", MODEL)]).replace("name: evil", "name: Evil");
    let archive = RawTar::default()
        .file("model.yaml", text.as_bytes())
        .file("saved_model.onnx", MODEL)
        .gz();
    refused(&archive[..], "the name \"Evil\" must be lowercase letters");
    let big = vec![b'#'; (1 << 20) + 1];
    let archive = RawTar::default().file("model.yaml", &big).gz();
    refused(
        &archive[..],
        "model.yaml in the archive is 1048577 bytes; at most 1048576",
    );
}

/// Counts how much of the generated (uncompressed) archive the importer pulled.
struct Counting<R> {
    inner: R,
    read: std::rc::Rc<std::cell::Cell<u64>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

#[test]
fn refuses_a_gzip_bomb_without_inflating_it() {
    // model.yaml claims 10 bytes; the file entry announces 5 GB of zeros. The archive is
    // compressed as it is read, so only what the importer asks for is ever produced: were the
    // entry inflated, this test would not finish.
    const BOMB: u64 = 5 * 1000 * 1000 * 1000;
    let head = with_manifest().0;
    let file_header = RawTar::header(b"saved_model.onnx", EntryType::Regular, BOMB, b"");
    let pulled = std::rc::Rc::new(std::cell::Cell::new(0));
    let source = Counting {
        inner: head
            .as_slice()
            .chain(&file_header.as_bytes()[..])
            .chain(io::repeat(0).take(BOMB + 1024)),
        read: pulled.clone(),
    };
    let archive = flate2::read::GzEncoder::new(source, Compression::default());
    refused(
        archive,
        "the archive holds more data than model.yaml claims (10 bytes)",
    );
    // The decompressor reads compressed input ahead in buffers of some KiB, and zeros
    // compress about 1000:1, so a few MB of the source are produced; not 5 GB.
    assert!(pulled.get() < 64 << 20, "read {} bytes", pulled.get());
}

#[test]
fn refuses_what_is_not_a_complete_gzip() {
    refused(
        &b"this is not a gzip file at all"[..],
        "not a valid gzip-compressed tar",
    );
    refused(
        &with_manifest().tar()[..],
        "not a valid gzip-compressed tar",
    );

    let (_tmp, a) = store();
    save(&a, "iris", &[("saved_model.onnx", &[7u8; 100_000])]);
    let archive = export_bytes(&a, "iris");
    refused(
        &archive[..archive.len() / 2],
        "not a valid gzip-compressed tar",
    );
    // Cut just before the gzip trailer: every file is complete, the checksum is not.
    refused(
        &archive[..archive.len() - 4],
        "not a valid gzip-compressed tar",
    );
}

#[test]
fn refuses_long_extension_headers() {
    // A GNU long-name entry is read into memory by the tar reader; an oversized one is
    // refused before it is.
    let mut bytes = with_manifest().0;
    let long = RawTar::header(b"././@LongLink", EntryType::GNULongName, 10 << 20, b"");
    bytes.extend_from_slice(long.as_bytes());
    bytes.resize(bytes.len() + (10 << 20), b'a');
    bytes.extend_from_slice(&[0u8; 1024]);
    refused(
        &gzip(&bytes)[..],
        "the archive holds more data than model.yaml claims",
    );
}

// ---- Uploads (uncompressed tar from the CLI). ----

fn upload_refused(tar: &[u8], max_bytes: u64, expected: &str) {
    let (_tmp, store) = store();
    let before = snapshot(store.root());
    {
        let staging = store.begin().unwrap();
        let err = staging.unpack_upload(tar, max_bytes).unwrap_err();
        assert!(matches!(err, StoreError::BadArchive(_)), "{err:?}");
        let message = err.to_string();
        assert!(
            message.contains(expected),
            "{message:?} should contain {expected:?}"
        );
    }
    assert_eq!(snapshot(store.root()), before);
    assert!(staging_is_empty(&store));
}

#[test]
fn upload_unpacks_and_commits() {
    let (_tmp, store) = store();
    let tar = RawTar::default()
        .dir("bert/")
        .file("bert/model.onnx", b"graph")
        .dir("bert/data/")
        .file("bert/data/w.bin", b"weights")
        .file("bert/model.yaml", b"nested model.yaml is just a file")
        .tar();
    let staging = store.begin().unwrap();
    staging.unpack_upload(&tar[..], 1000).unwrap();
    let model = staging.commit(new_model("bert")).unwrap();
    assert_eq!(
        model
            .info
            .files
            .iter()
            .map(|f| f.path.as_str())
            .collect::<Vec<_>>(),
        ["bert/data/w.bin", "bert/model.onnx", "bert/model.yaml"]
    );
    assert_eq!(model.info.size, 5 + 7 + 32);
    assert_eq!(
        fs::read(model.path.join("bert/data/w.bin")).unwrap(),
        b"weights"
    );

    // Exactly at the limit is fine.
    let staging = store.begin().unwrap();
    let tar = RawTar::default().file("saved_model.onnx", &[1u8; 64]).tar();
    staging.unpack_upload(&tar[..], 64).unwrap();
    staging.commit(new_model("small")).unwrap();
}

#[test]
fn upload_refusals() {
    let file = |name: &str| RawTar::default().file(name, b"x").tar();
    upload_refused(&file("/etc/passwd"), 100, "absolute paths are not allowed");
    upload_refused(&file("../up.onnx"), 100, "'..' components are not allowed");
    upload_refused(
        &file("a/../../up.onnx"),
        100,
        "'..' components are not allowed",
    );
    upload_refused(&file("model.yaml"), 100, "top-level model.yaml");
    let link = |kind, target: &str| RawTar::default().link("m.onnx", kind, target).tar();
    upload_refused(
        &link(EntryType::Symlink, "/etc/passwd"),
        100,
        "is a symbolic link",
    );
    upload_refused(
        &link(EntryType::Symlink, "other.onnx"),
        100,
        "is a symbolic link",
    );
    upload_refused(&link(EntryType::Link, "other.onnx"), 100, "is a hard link");
    let fifo = RawTar::default().raw(b"p", EntryType::Fifo, b"", b"").tar();
    upload_refused(&fifo, 100, "upload entry \"p\" is a FIFO");
    let dev = RawTar::default().raw(b"d", EntryType::Char, b"", b"").tar();
    upload_refused(&dev, 100, "is a character device");

    let big = RawTar::default()
        .file("a.onnx", &[0u8; 60])
        .file("b.bin", &[0u8; 60])
        .tar();
    upload_refused(
        &big,
        100,
        "the upload is larger than the limit of 100 bytes",
    );
    let twice = RawTar::default()
        .file("a.onnx", b"1")
        .file("a.onnx", b"2")
        .tar();
    upload_refused(&twice, 100, "upload entry \"a.onnx\" appears twice");
    let clash = RawTar::default().file("a", b"1").file("a/b", b"2").tar();
    upload_refused(&clash, 100, "lies inside \"a\", which is a file");
    upload_refused(b"not a tar, just some bytes that are not 512 long", 100, "");

    // A huge announced size is refused from the header, without reading.
    let header = RawTar::header(b"huge.onnx", EntryType::Regular, 1 << 40, b"");
    upload_refused(header.as_bytes(), 1 << 30, "larger than the limit");
}

/// A tar written by the `tar` crate's builder, which adds GNU long-name entries for paths
/// that do not fit a header.
fn built_tar(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        let mut header = Header::new_gnu();
        header.set_entry_type(EntryType::Regular);
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        builder.append_data(&mut header, path, *data).unwrap();
    }
    builder.into_inner().unwrap()
}

/// 21 components of 200 bytes and a file name: 4222 bytes.
fn deep_path() -> String {
    format!("{}f", format!("{}/", "d".repeat(200)).repeat(21))
}

#[test]
fn refuses_names_no_file_system_takes() {
    let long = "a".repeat(256);
    let deep = deep_path();
    let yaml = manifest(&[("saved_model.onnx", MODEL)]);
    for (path, why) in [
        (
            &long,
            "a path component is 256 bytes long; at most 255 are allowed",
        ),
        (
            &deep,
            "the path is 4222 bytes long; at most 4096 are allowed",
        ),
    ] {
        // As an archive entry.
        let archive = gzip(&built_tar(&[
            ("model.yaml", yaml.as_bytes()),
            ("saved_model.onnx", MODEL),
            (path, b"x"),
        ]));
        refused(&archive[..], &format!("archive entry {path:?}: {why}"));
        // As a path in model.yaml.
        let archive = gzip(&built_tar(&[
            ("model.yaml", manifest(&[(path, MODEL)]).as_bytes()),
            (path, MODEL),
        ]));
        refused(&archive[..], &format!("files lists {path:?}: {why}"));
        // In an upload.
        upload_refused(
            &built_tar(&[(path, b"x")]),
            100,
            &format!("upload entry {path:?}: {why}"),
        );
    }

    // At the limit is fine.
    let (_tmp, store) = store();
    let name = format!("{}.onnx", "b".repeat(250));
    let archive = gzip(&built_tar(&[
        ("model.yaml", manifest(&[(&name, MODEL)]).as_bytes()),
        (&name, MODEL),
    ]));
    let model = store.import(&archive[..]).unwrap();
    assert_eq!(fs::read(model.path.join(&name)).unwrap(), MODEL);
    let staging = store.begin().unwrap();
    staging
        .unpack_upload(&built_tar(&[(&name, MODEL)])[..], 100)
        .unwrap();
    staging.commit(new_model("long")).unwrap();
}

#[test]
fn refuses_a_file_where_a_directory_entry_was() {
    let upload = RawTar::default().dir("a/b/").file("a", b"1").tar();
    upload_refused(
        &upload,
        100,
        "upload entry \"a\" is a file, but an earlier entry made it a directory",
    );
    let upload = RawTar::default().dir("a/b/").file("a/b", b"1").tar();
    upload_refused(
        &upload,
        100,
        "upload entry \"a/b\" is a file, but an earlier entry made it a directory",
    );
    let archive = RawTar::default()
        .file(
            "model.yaml",
            manifest(&[("saved_model.onnx", MODEL), ("a/b/w.bin", b"w")]).as_bytes(),
        )
        .dir("a/b/")
        .file("a", b"w")
        .gz();
    refused(
        &archive[..],
        "a is in the archive but not listed in model.yaml",
    );
}

#[test]
fn upload_write_errors_name_the_entry_not_the_staging_dir() {
    let (_tmp, store) = store();
    let root = store.root().to_str().unwrap().to_string();
    // Something already in the staging directory stands for whatever the file system may
    // refuse that the path rules do not foresee.
    for (in_the_way, upload, entry) in [
        ("a", RawTar::default().file("a/b", b"1").tar(), "a/b"),
        (
            "x.onnx",
            RawTar::default().file("x.onnx", b"1").tar(),
            "x.onnx",
        ),
        ("d", RawTar::default().dir("d/").tar(), "d"),
    ] {
        let staging = store.begin().unwrap();
        fs::write(staging.dir().join(in_the_way), b"in the way").unwrap();
        let err = staging.unpack_upload(&upload[..], 100).unwrap_err();
        assert!(matches!(err, StoreError::BadArchive(_)), "{err:?}");
        assert!(err.is_client_error());
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("upload entry {entry:?} cannot be written: ")),
            "{message}"
        );
        assert!(!message.contains(&root), "{message}");
    }
    assert!(staging_is_empty(&store));
}

#[test]
fn refuses_a_model_larger_than_the_cap() {
    let claimed = gyrus_store::MAX_MODEL_BYTES + 1;
    let text =
        manifest(&[("saved_model.onnx", MODEL)]).replace("size: 10", &format!("size: {claimed}"));
    assert_eq!(
        text.matches(&format!("size: {claimed}")).count(),
        2,
        "{text}"
    );
    let archive = RawTar::default()
        .file("model.yaml", text.as_bytes())
        .file("saved_model.onnx", MODEL)
        .gz();
    refused(
        &archive[..],
        "model.yaml in the archive: size is 68719476737 bytes; models of at most 64 GiB \
         (68719476736 bytes) are accepted",
    );
}

/// A TensorFlow SavedModel is stored as its directory, with the framework in `model.yaml`,
/// and its export imports into another store unchanged.
#[test]
fn saved_model_directory_is_stored_as_is_and_round_trips() {
    let (_tmp, a) = store();
    let staging = a.begin().unwrap();
    for (path, data) in [
        ("saved_model.pb", &b"graph"[..]),
        ("fingerprint.pb", b"fp"),
        ("variables/variables.index", b"index"),
        ("variables/variables.data-00000-of-00001", b"weights"),
    ] {
        let dest = staging.dir().join(path);
        fs::create_dir_all(dest.parent().unwrap()).unwrap();
        fs::write(dest, data).unwrap();
    }
    fs::create_dir_all(staging.dir().join("assets")).unwrap();
    let mut model = NewModel {
        name: "iris-tf".into(),
        module: gyrus_store::info::MODULE_TENSORFLOW.into(),
        ..NewModel::default()
    };
    model.context.framework_name = gyrus_store::info::FRAMEWORK_TENSORFLOW.into();
    model
        .context
        .framework_versions
        .insert("tensorflow".into(), "2.21.0".into());
    model.signatures.insert(
        "serving_default".into(),
        Signature {
            input_spec: vec![TensorSpec {
                name: "x".into(),
                datatype: "FP32".into(),
                shape: vec![-1, 4],
            }],
            ..Signature::default()
        },
    );
    let saved = staging.commit(model).unwrap();
    assert!(saved.info.is_tensorflow());
    assert!(saved.path.join("saved_model.pb").is_file());
    assert!(saved.path.join("variables/variables.index").is_file());
    assert_eq!(
        saved
            .info
            .files
            .iter()
            .map(|f| f.path.as_str())
            .collect::<Vec<_>>(),
        [
            "fingerprint.pb",
            "saved_model.pb",
            "variables/variables.data-00000-of-00001",
            "variables/variables.index"
        ]
    );
    // It has no ONNX file: asking for one is a corrupt entry, not a model.
    assert!(saved.model_file().is_err());

    let (_tmp_b, b) = store();
    let imported = b.import(&export_bytes(&a, "iris-tf")[..]).unwrap();
    assert_eq!(imported.info, saved.info);
    assert!(imported.info.is_tensorflow());
    assert_eq!(
        fs::read(
            imported
                .path
                .join("variables/variables.data-00000-of-00001")
        )
        .unwrap(),
        b"weights"
    );
    assert_eq!(
        b.resolve(&tag("iris-tf:latest")).unwrap().info.signatures["serving_default"].input_spec[0]
            .name,
        "x"
    );
}
