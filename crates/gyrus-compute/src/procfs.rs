//! The `/proc` reads behind the polling fallback: which processes belong to a replica's process
//! group, how much resident memory they hold, and how to stop them all.
//!
//! A replica is a process-group leader and its Python workers stay in its group, so "the
//! replica" is every process whose process group is the replica's pid. Processes come and go
//! while `/proc` is being read; one that vanished between listing and reading is skipped, which
//! is what its memory use now is anyway.

use std::fs;
use std::sync::OnceLock;

/// The page size in bytes (`/proc/<pid>/statm` counts pages).
pub(crate) fn page_size() -> u64 {
    static PAGE: OnceLock<u64> = OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf only reads a system constant; it has no memory-safety preconditions.
        let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        // -1 means "indeterminate"; 4 KiB is the page size of every platform gyrus runs on.
        u64::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
    })
}

/// The fields of a `/proc/<pid>/stat` line that matter here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stat {
    pub state: char,
    pub pgrp: u32,
}

/// Parses a `/proc/<pid>/stat` line. The command name (field 2) is in parentheses and may itself
/// contain spaces and parentheses, so the fixed fields are read after the *last* `)`: state,
/// ppid, pgrp, ...
pub(crate) fn parse_stat(line: &str) -> Option<Stat> {
    let (_, rest) = line.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some(Stat { state, pgrp })
}

/// Parses `/proc/<pid>/statm` into resident bytes (its second field, in pages).
pub(crate) fn parse_statm_rss(text: &str, page_size: u64) -> Option<u64> {
    let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages.saturating_mul(page_size))
}

/// Every live process (zombies excluded: they hold no memory and cannot be killed again) whose
/// process group is `pgid`. One pass over `/proc`.
pub(crate) fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut members = Vec::new();
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(line) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue; // exited since the listing
        };
        if let Some(stat) = parse_stat(&line) {
            if stat.pgrp == pgid && !matches!(stat.state, 'Z' | 'X' | 'x') {
                members.push(pid);
            }
        }
    }
    members
}

/// Resident memory of one process, or None when it is gone.
pub(crate) fn rss_bytes(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    parse_statm_rss(&text, page_size())
}

/// Summed resident memory of the group `pgid`, or None when no process of it is alive.
///
/// Summed RSS counts pages shared between processes (shared libraries, copy-on-write pages of
/// forked workers) once per process, so it overstates what a cgroup would charge; it errs on the
/// side of stopping a replica early rather than letting the machine run out of memory.
pub(crate) fn group_rss(pgid: u32) -> Option<u64> {
    let members = group_members(pgid);
    if members.is_empty() {
        return None;
    }
    Some(
        members
            .into_iter()
            .filter_map(rss_bytes)
            .fold(0u64, u64::saturating_add),
    )
}

/// SIGKILLs every process of the group `pgid`. A group that is already gone is not an error.
pub(crate) fn kill_group(pgid: u32) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return;
    };
    // Never signal group 0 or 1 (the caller's own group, or init): `attach` refuses such pids,
    // this keeps a mistake from ever reaching kill(2).
    if pgid <= 1 {
        return;
    }
    // SAFETY: kill has no memory-safety preconditions; the negative pid addresses the group.
    let rc = unsafe { libc::kill(-pgid, libc::SIGKILL) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ESRCH) {
            tracing::warn!(pgid, "cannot SIGKILL the process group: {err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines() {
        let line = "4242 (python3) S 4200 4242 4242 0 -1 4194560 1234 0 0 0 5 1 0 0 20 0 1 0";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                state: 'S',
                pgrp: 4242
            })
        );
        // A command name with spaces and parentheses: only the last ')' ends it.
        let tricky = "17 (we ) ird) (x) R 1 4242 17 0";
        assert_eq!(
            parse_stat(tricky),
            Some(Stat {
                state: 'R',
                pgrp: 4242
            })
        );
        assert_eq!(parse_stat("17 (cut"), None);
        assert_eq!(parse_stat("17 (x) Z 1"), None);
        assert_eq!(parse_stat("17 (x) S 1 notanumber"), None);
    }

    #[test]
    fn statm() {
        assert_eq!(
            parse_statm_rss("12345 678 90 1 0 500 0\n", 4096),
            Some(678 * 4096)
        );
        assert_eq!(parse_statm_rss("12345", 4096), None);
        assert_eq!(parse_statm_rss("", 4096), None);
    }

    #[test]
    fn own_process_is_visible() {
        // SAFETY: getpgrp cannot fail.
        let own_group = unsafe { libc::getpgrp() } as u32;
        assert!(group_members(own_group).contains(&std::process::id()));
        assert!(rss_bytes(std::process::id()).unwrap_or(0) > 1 << 20);
        assert!(page_size() >= 4096);
    }
}
