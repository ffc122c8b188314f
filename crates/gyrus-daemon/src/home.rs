//! The layout of `GYRUS_HOME`: every path the daemon writes lives here.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct GyrusHome {
    root: PathBuf,
}

impl GyrusHome {
    /// `GYRUS_HOME`, else `~/.gyrus`.
    pub fn from_env() -> Self {
        let root = std::env::var_os("GYRUS_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let home = std::env::var_os("HOME")
                    .map(PathBuf::from)
                    .unwrap_or_default();
                home.join(".gyrus")
            });
        Self::new(root)
    }

    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root: PathBuf = root.into();
        // Replicas and workers run with other working directories: keep paths absolute.
        let root = std::path::absolute(&root).unwrap_or(root);
        Self { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn state_db(&self) -> PathBuf {
        self.root.join("state.db")
    }
    /// The control API's token (mode 0600); see `auth`.
    pub fn token_file(&self) -> PathBuf {
        self.root.join("token")
    }
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("daemon.lock")
    }
    pub fn daemon_log(&self) -> PathBuf {
        self.root.join("daemon.log")
    }
    pub fn projects(&self) -> PathBuf {
        self.root.join("projects")
    }
    pub fn envs(&self) -> PathBuf {
        self.root.join("envs")
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn api_log(&self, api: &str) -> PathBuf {
        self.logs().join(format!("{api}.log"))
    }
    pub fn lib(&self) -> PathBuf {
        self.root.join("lib")
    }
    /// The model store (gyrus-store's layout).
    pub fn models(&self) -> PathBuf {
        self.root.join("models")
    }
    /// Downloads of model URLs, by URL and content.
    pub fn remote_cache(&self) -> PathBuf {
        self.root.join("cache").join("remote")
    }

    /// Creates the home and its folders. The home is the owner's only (0700): it holds the
    /// token, `.env` values in the state database, and logs with payloads.
    pub fn create_dirs(&self) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(&self.root)?;
        let mode = std::fs::metadata(&self.root)?.permissions().mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o700))?;
        }
        for dir in [self.projects(), self.envs(), self.logs(), self.lib()] {
            std::fs::create_dir_all(dir)?;
        }
        Ok(())
    }
}

/// `GYRUS_ADDR` without its scheme (`host:port`), else `127.0.0.1:8888`.
pub fn addr_from_env() -> String {
    split_scheme(&raw_addr()).0
}

/// Whether `GYRUS_ADDR` starts with `https://`: the daemon serves TLS there and the CLI
/// speaks it.
pub fn https_from_env() -> bool {
    split_scheme(&raw_addr()).1
}

fn raw_addr() -> String {
    std::env::var("GYRUS_ADDR")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "127.0.0.1:8888".to_owned())
}

/// `https://host:port/` → (`host:port`, true); a bare `host:port` is plain HTTP.
fn split_scheme(raw: &str) -> (String, bool) {
    let raw = raw.trim().trim_end_matches('/');
    if let Some(rest) = raw.strip_prefix("https://") {
        (rest.to_owned(), true)
    } else {
        (raw.strip_prefix("http://").unwrap_or(raw).to_owned(), false)
    }
}

#[cfg(test)]
mod tests {
    use super::{split_scheme, GyrusHome};

    #[test]
    fn the_home_is_the_owners_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("home");
        std::fs::create_dir(&root).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        GyrusHome::new(&root).create_dirs().unwrap();
        let mode = std::fs::metadata(&root).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn addresses_with_and_without_a_scheme() {
        assert_eq!(
            split_scheme("127.0.0.1:8888"),
            ("127.0.0.1:8888".into(), false)
        );
        assert_eq!(split_scheme("http://h:1/"), ("h:1".into(), false));
        assert_eq!(split_scheme("https://h:1"), ("h:1".into(), true));
    }
}
