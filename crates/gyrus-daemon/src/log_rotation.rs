//! Log files kept to a size: `logs/<api>.log`, `logs/jobs/*.log` and `daemon.log` are rotated
//! when they pass `GYRUS_LOG_MAX_BYTES` (64 MiB by default), keeping two older copies
//! (`.log.1`, `.log.2`). Rotation copies the file, then truncates it in place ("copytruncate"):
//! replicas, their Python workers and the daemon hold the files open in append mode, so they go
//! on writing at the new end without being told. A line written between the copy and the
//! truncation can be lost; that is the price of not coordinating every writer.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::home::GyrusHome;

/// The largest a log file grows before it is rotated.
pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// Older copies kept.
const KEEP: u32 = 2;

/// How often the files are looked at (`GYRUS_LOG_CHECK_INTERVAL` for tests).
const CHECK_EVERY: Duration = Duration::from_secs(30);

fn older(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Rotates `path` if it is larger than `max`; whether it did.
pub fn rotate_if_large(path: &Path, max: u64) -> std::io::Result<bool> {
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len <= max {
        return Ok(false);
    }
    for n in (1..KEEP).rev() {
        let from = older(path, n);
        if from.exists() {
            std::fs::rename(&from, older(path, n + 1))?;
        }
    }
    std::fs::copy(path, older(path, 1))?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .set_len(0)?;
    Ok(true)
}

/// Every log file of the home, rotated where needed.
pub fn rotate_all(home: &GyrusHome, max: u64) {
    let mut files = vec![home.daemon_log()];
    for dir in [home.logs(), home.logs().join("jobs")] {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            files.extend(
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "log")),
            );
        }
    }
    for path in files {
        if let Err(e) = rotate_if_large(&path, max) {
            tracing::warn!("rotating {}: {e}", path.display());
        }
    }
}

/// The size limit from `GYRUS_LOG_MAX_BYTES` (bytes), else the default.
pub fn max_bytes_from_env() -> u64 {
    std::env::var("GYRUS_LOG_MAX_BYTES")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(DEFAULT_MAX_BYTES)
}

/// Checks the files every 30 s (or `GYRUS_LOG_CHECK_INTERVAL`), off the async threads.
pub fn start(home: GyrusHome) {
    let max = max_bytes_from_env();
    let every = std::env::var("GYRUS_LOG_CHECK_INTERVAL")
        .ok()
        .and_then(|v| humantime::parse_duration(&v).ok())
        .unwrap_or(CHECK_EVERY)
        .max(Duration::from_millis(100));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let home = home.clone();
            let _ = tokio::task::spawn_blocking(move || rotate_all(&home, max)).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn large_files_rotate_and_writers_go_on() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("api.log");
        let mut writer = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        writer.write_all(&[b'a'; 100])?;
        assert!(!rotate_if_large(&path, 100)?, "not past the limit");
        writer.write_all(&[b'b'; 10])?;
        assert!(rotate_if_large(&path, 100)?);
        assert_eq!(std::fs::metadata(older(&path, 1))?.len(), 110);
        // The writer, still open in append mode, writes at the start of the emptied file.
        writer.write_all(b"after\n")?;
        assert_eq!(std::fs::read(&path)?, b"after\n");
        // Two older copies at most.
        for round in 0..3u8 {
            writer.write_all(&[b'0' + round; 200])?;
            rotate_if_large(&path, 100)?;
        }
        assert!(older(&path, 2).exists() && !older(&path, 3).exists());
        assert_eq!(std::fs::read(older(&path, 1))?, vec![b'2'; 200]);
        assert!(!rotate_if_large(&dir.path().join("none.log"), 1)?);
        Ok(())
    }
}
