//! Project snapshots: the daemon's side of `gyrus deploy`'s archive. It extracts the project
//! into `GYRUS_HOME/projects/<hash>/` (content-addressed, written once, renamed into place so a
//! half-written snapshot is never used), pulls out the config file and `.env`, and parses
//! `.env`.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::DaemonError;
use crate::home::GyrusHome;

/// The largest archive the daemon accepts, and the most it will write when extracting one.
pub const MAX_ARCHIVE_BYTES: usize = 1024 * 1024 * 1024;
const MAX_EXTRACTED_BYTES: u64 = 4 * 1024 * 1024 * 1024;
/// The config file and `.env` are read into memory: bound them.
const MAX_TEXT_BYTES: u64 = 1024 * 1024;

#[derive(Debug)]
pub struct ExtractedProject {
    pub dir: PathBuf,
    pub hash: String,
    pub config_text: String,
    pub dotenv_text: Option<String>,
}

/// Unpacks a gzipped tar made by `gyrus deploy`. `config_name` is the config file's name
/// inside the archive; it and `.env` are returned, not written into the snapshot.
pub fn extract(
    home: &GyrusHome,
    archive: &[u8],
    config_name: &str,
) -> Result<ExtractedProject, DaemonError> {
    let hash = hex::encode(Sha256::digest(archive));
    let hash = hash[..24].to_owned();
    let final_dir = home.projects().join(&hash);
    let already = final_dir.is_dir();
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp_dir = home
        .projects()
        .join(format!(".tmp-{hash}-{}-{seq}", std::process::id()));
    if !already {
        let _ = std::fs::remove_dir_all(&tmp_dir);
        std::fs::create_dir_all(&tmp_dir)
            .map_err(|e| DaemonError::io(format!("creating {}", tmp_dir.display()), e))?;
    }

    let result = unpack(
        archive,
        config_name,
        (!already).then_some(tmp_dir.as_path()),
    );
    let (config_text, dotenv_text) = match result {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp_dir);
            return Err(e);
        }
    };
    if !already {
        if let Err(e) = std::fs::rename(&tmp_dir, &final_dir) {
            let _ = std::fs::remove_dir_all(&tmp_dir);
            // Another deploy of the same archive won the race: its copy is identical.
            if !final_dir.is_dir() {
                return Err(DaemonError::io("saving the project snapshot", e));
            }
        }
    }
    let config_text = config_text.ok_or_else(|| {
        DaemonError::BadRequest(format!(
            "the project archive does not contain the config file {config_name:?}"
        ))
    })?;
    Ok(ExtractedProject {
        dir: final_dir,
        hash,
        config_text,
        dotenv_text,
    })
}

type Unpacked = (Option<String>, Option<String>);

fn unpack(archive: &[u8], config_name: &str, dest: Option<&Path>) -> Result<Unpacked, DaemonError> {
    let bad = |m: String| DaemonError::BadRequest(format!("invalid project archive: {m}"));
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    let mut config_text = None;
    let mut dotenv_text = None;
    let mut written: u64 = 0;
    let entries = tar.entries().map_err(|e| bad(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let path = entry.path().map_err(|e| bad(e.to_string()))?.into_owned();
        let rel = safe_relative(&path).ok_or_else(|| {
            bad(format!(
                "entry {:?} is absolute or leaves the project",
                path.display()
            ))
        })?;
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            if let Some(dest) = dest {
                std::fs::create_dir_all(dest.join(&rel))
                    .map_err(|e| DaemonError::io("extracting the project", e))?;
            }
            continue;
        }
        if !kind.is_file() {
            return Err(bad(format!(
                "entry {:?} is not a regular file or directory",
                path.display()
            )));
        }
        let rel_str = rel.to_string_lossy();
        if rel_str == config_name || rel_str == ".env" {
            if entry.header().size().unwrap_or(0) > MAX_TEXT_BYTES {
                return Err(bad(format!("{rel_str} is larger than 1 MiB")));
            }
            let mut text = String::new();
            (&mut entry)
                .take(MAX_TEXT_BYTES)
                .read_to_string(&mut text)
                .map_err(|e| bad(format!("{rel_str} is not UTF-8 text: {e}")))?;
            if rel_str == ".env" {
                dotenv_text = Some(text);
            } else {
                config_text = Some(text);
            }
            continue;
        }
        written += entry.header().size().unwrap_or(0);
        if written > MAX_EXTRACTED_BYTES {
            return Err(bad("the project is larger than 4 GiB once extracted".into()));
        }
        if let Some(dest) = dest {
            let target = dest.join(&rel);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| DaemonError::io("extracting the project", e))?;
            }
            // A name clash (a file where the archive has a folder) is the archive's fault.
            let mut file = std::fs::File::create(&target)
                .map_err(|e| bad(format!("cannot create {}: {e}", rel.display())))?;
            copy_entry(&mut entry, &mut file).map_err(|e| match e {
                CopyError::Read(e) => bad(format!("{}: {e}", rel.display())),
                CopyError::Write(e) => DaemonError::io(format!("writing {}", target.display()), e),
            })?;
            #[cfg(unix)]
            if let Ok(mode) = entry.header().mode() {
                use std::os::unix::fs::PermissionsExt;
                let _ = file.set_permissions(std::fs::Permissions::from_mode(mode & 0o755 | 0o600));
            }
        }
    }
    Ok((config_text, dotenv_text))
}

enum CopyError {
    Read(std::io::Error),
    Write(std::io::Error),
}

/// Copies an archive entry to a file, telling a corrupt archive (read side, the client's
/// fault) from a full disk (write side, ours).
fn copy_entry(from: &mut impl Read, to: &mut impl std::io::Write) -> Result<(), CopyError> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).map_err(CopyError::Read)?;
        if n == 0 {
            return Ok(());
        }
        to.write_all(&buf[..n]).map_err(CopyError::Write)?;
    }
}

/// The path with `.` removed, or None if it is absolute or climbs out with `..`.
fn safe_relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// Parses `.env`: `VARIABLE=value` lines; blank lines and `#` comments are skipped; an
/// `export ` prefix and matching surrounding quotes are allowed.
pub fn parse_dotenv(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!(
                ".env:{}: expected VARIABLE=value, found {:?}",
                i + 1,
                raw
            ));
        };
        let key = key.trim();
        let valid = key
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!(
                ".env:{}: {:?} is not a valid variable name (letters, digits and _, not starting with a digit)",
                i + 1,
                key
            ));
        }
        let mut value = value.trim();
        // One matching pair of quotes, as a shell would strip: "'x'" keeps the inner quotes.
        if value.len() >= 2
            && (value.starts_with('"') && value.ends_with('"')
                || value.starts_with('\'') && value.ends_with('\''))
        {
            value = &value[1..value.len() - 1];
        }
        out.push((key.to_owned(), value.to_owned()));
    }
    Ok(out)
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

    #[test]
    fn extracts_and_separates_config_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let home = GyrusHome::new(dir.path());
        home.create_dirs().unwrap();
        let a = archive(&[
            ("cortex.yaml", b"- name: x\n"),
            (".env", b"A=1\n"),
            ("predictor.py", b"print(1)\n"),
            ("sub/values.json", b"{}"),
        ]);
        let p = extract(&home, &a, "cortex.yaml").unwrap();
        assert_eq!(p.config_text, "- name: x\n");
        assert_eq!(p.dotenv_text.as_deref(), Some("A=1\n"));
        assert!(p.dir.join("predictor.py").is_file());
        assert!(p.dir.join("sub/values.json").is_file());
        assert!(!p.dir.join("cortex.yaml").exists());
        assert!(!p.dir.join(".env").exists());
        // Same archive again: same snapshot, nothing rewritten.
        let again = extract(&home, &a, "cortex.yaml").unwrap();
        assert_eq!(again.dir, p.dir);
    }

    #[test]
    fn refuses_escaping_paths_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let home = GyrusHome::new(dir.path());
        home.create_dirs().unwrap();
        let a = archive(&[("cortex.yaml", b"x"), ("../evil.py", b"x")]);
        let err = extract(&home, &a, "cortex.yaml").unwrap_err().to_string();
        assert!(err.contains("leaves the project"), "{err}");
        assert!(!dir.path().join("evil.py").exists());
        assert_eq!(std::fs::read_dir(home.projects()).unwrap().count(), 0);
    }

    #[test]
    fn dotenv_lines() {
        let env = parse_dotenv("# c\n\nA=1\nexport B = \"two words\"\nC='x=y'\n").unwrap();
        assert_eq!(
            env,
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "two words".into()),
                ("C".into(), "x=y".into())
            ]
        );
        assert_eq!(
            parse_dotenv("A=1\nnot a pair\n").unwrap_err(),
            ".env:2: expected VARIABLE=value, found \"not a pair\""
        );
        assert!(parse_dotenv("1A=2")
            .unwrap_err()
            .contains("not a valid variable name"));
    }
}
