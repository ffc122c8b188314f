//! The path rule for entries (and for paths that name files of an extracted tree, such as
//! `model.yaml`'s `files`).

/// The longest path component an entry may have, in bytes (`NAME_MAX` on Linux).
pub const MAX_COMPONENT_BYTES: usize = 255;
/// The longest relative path an entry may have, in bytes (`PATH_MAX` on Linux).
pub const MAX_PATH_BYTES: usize = 4096;

/// Why a path is refused. The messages name the rule, never the path; callers add the entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path is not UTF-8")]
    NotUtf8,
    #[error("the path is empty")]
    Empty,
    #[error("the path is {len} bytes long; at most {MAX_PATH_BYTES} are allowed")]
    TooLong { len: usize },
    #[error("absolute paths are not allowed")]
    Absolute,
    #[error("the path contains a NUL byte")]
    Nul,
    /// A separator on Windows, so a tool reading the tree there could leave it.
    #[error("backslashes are not allowed in paths")]
    Backslash,
    #[error("'..' components are not allowed")]
    ParentDir,
    #[error("'.' and empty components are not allowed")]
    CurDirOrEmpty,
    #[error("a path component is {len} bytes long; at most {MAX_COMPONENT_BYTES} are allowed")]
    ComponentTooLong { len: usize },
}

impl PathError {
    /// Whether the path would reach outside the directory it is extracted into (absolute, or
    /// climbing with `..`), rather than merely being a name this crate does not take.
    pub fn escapes(&self) -> bool {
        matches!(self, PathError::Absolute | PathError::ParentDir)
    }
}

/// Checks a path: UTF-8, relative, '/'-separated normal components (no empty, `.` or `..`
/// component, no backslash or NUL), at most [`MAX_COMPONENT_BYTES`] a component and
/// [`MAX_PATH_BYTES`] in all, so that no file system refuses the name. Nothing is normalised:
/// the path is accepted exactly as written or refused. Returns it as a string.
pub fn check_path(raw: &[u8]) -> Result<&str, PathError> {
    let path = std::str::from_utf8(raw).map_err(|_| PathError::NotUtf8)?;
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong { len: path.len() });
    }
    if path.starts_with('/') {
        return Err(PathError::Absolute);
    }
    if path.contains('\0') {
        return Err(PathError::Nul);
    }
    if path.contains('\\') {
        return Err(PathError::Backslash);
    }
    for part in path.split('/') {
        match part {
            ".." => return Err(PathError::ParentDir),
            "." | "" => return Err(PathError::CurDirOrEmpty),
            long if long.len() > MAX_COMPONENT_BYTES => {
                return Err(PathError::ComponentTooLong { len: long.len() })
            }
            _ => {}
        }
    }
    Ok(path)
}

/// The '/'-separated ancestors of a relative path: `a/b/c` gives `a`, `a/b`.
pub fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').map(move |(i, _)| &path[..i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_rules() {
        for ok in ["a", "a/b.onnx", "x..y", ".hidden/f", "a b/c", "..a", "a.."] {
            assert_eq!(check_path(ok.as_bytes()).unwrap(), ok);
        }
        for (bad, why) in [
            ("", PathError::Empty),
            ("/etc/passwd", PathError::Absolute),
            ("/", PathError::Absolute),
            ("..", PathError::ParentDir),
            ("../x", PathError::ParentDir),
            ("a/../../x", PathError::ParentDir),
            ("a/..", PathError::ParentDir),
            ("a//b", PathError::CurDirOrEmpty),
            ("./a", PathError::CurDirOrEmpty),
            (".", PathError::CurDirOrEmpty),
            ("a/", PathError::CurDirOrEmpty),
            ("a\\..\\b", PathError::Backslash),
            ("C:\\x", PathError::Backslash),
            ("a\0b", PathError::Nul),
        ] {
            assert_eq!(check_path(bad.as_bytes()).unwrap_err(), why, "{bad:?}");
        }
        assert_eq!(check_path(b"\xff").unwrap_err(), PathError::NotUtf8);
        assert!(PathError::Absolute.escapes() && PathError::ParentDir.escapes());
        assert!(!PathError::Backslash.escapes() && !PathError::Nul.escapes());
        assert_eq!(ancestors("a/b/c").collect::<Vec<_>>(), ["a", "a/b"]);
        assert_eq!(ancestors("a").count(), 0);
    }

    #[test]
    fn messages() {
        for (err, text) in [
            (PathError::NotUtf8, "the path is not UTF-8"),
            (PathError::Empty, "the path is empty"),
            (PathError::Absolute, "absolute paths are not allowed"),
            (PathError::Nul, "the path contains a NUL byte"),
            (PathError::Backslash, "backslashes are not allowed in paths"),
            (PathError::ParentDir, "'..' components are not allowed"),
            (
                PathError::CurDirOrEmpty,
                "'.' and empty components are not allowed",
            ),
        ] {
            assert_eq!(err.to_string(), text);
        }
    }

    #[test]
    fn path_lengths() {
        let part = "a".repeat(255);
        assert!(check_path(part.as_bytes()).is_ok());
        let err = check_path(format!("x/{part}a/y").as_bytes()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "a path component is 256 bytes long; at most 255 are allowed"
        );
        let path = format!("{}/{}", vec!["b".repeat(200); 20].join("/"), "c".repeat(76));
        assert_eq!(path.len(), 4096);
        assert!(check_path(path.as_bytes()).is_ok());
        let err = check_path(format!("{path}d").as_bytes()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the path is 4097 bytes long; at most 4096 are allowed"
        );
    }
}
