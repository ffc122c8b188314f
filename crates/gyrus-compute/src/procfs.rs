//! The `/proc` reads behind the polling fallback, through the `procfs` crate: which processes
//! belong to a replica's process group, how much resident memory they hold, and how to stop
//! them all.
//!
//! A replica is a process-group leader and its Python workers stay in its group, so "the
//! replica" is every process whose process group is the replica's pid. Processes come and go
//! while `/proc` is being read; one that vanished between listing and reading is skipped, which
//! is what its memory use now is anyway.

use procfs::process::{all_processes, Process};

/// What matters here of a process's `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stat {
    pub state: char,
    pub pgrp: u32,
}

/// The state and process group of `pid`, or None when it is gone.
pub(crate) fn stat(pid: u32) -> Option<Stat> {
    let pid = i32::try_from(pid).ok()?;
    let stat = Process::new(pid).ok()?.stat().ok()?;
    Some(Stat {
        state: stat.state,
        pgrp: u32::try_from(stat.pgrp).ok()?,
    })
}

/// Every live process (zombies excluded: they hold no memory and cannot be killed again) whose
/// process group is `pgid`. One pass over `/proc`.
pub(crate) fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(all) = all_processes() else {
        return Vec::new();
    };
    all.flatten()
        .filter_map(|p| p.stat().ok()) // exited since the listing
        .filter(|s| {
            u32::try_from(s.pgrp).is_ok_and(|g| g == pgid) && !matches!(s.state, 'Z' | 'X' | 'x')
        })
        .filter_map(|s| u32::try_from(s.pid).ok())
        .collect()
}

/// Resident memory of one process, or None when it is gone.
pub(crate) fn rss_bytes(pid: u32) -> Option<u64> {
    let statm = Process::new(i32::try_from(pid).ok()?).ok()?.statm().ok()?;
    Some(statm.resident.saturating_mul(procfs::page_size()))
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
    fn own_process_is_visible() {
        // SAFETY: getpgrp cannot fail.
        let own_group = unsafe { libc::getpgrp() } as u32;
        assert!(group_members(own_group).contains(&std::process::id()));
        assert!(rss_bytes(std::process::id()).unwrap_or(0) > 1 << 20);
        let own = stat(std::process::id());
        assert_eq!(own.map(|s| s.pgrp), Some(own_group));
        assert!(own.is_some_and(|s| matches!(s.state, 'R' | 'S')));
        assert_eq!(stat(u32::MAX), None);
    }
}
