//! cgroup v2: finding a delegated subtree at daemon start, and one cgroup per replica.
//!
//! Layout, under the cgroup the daemon was started in (`<own>`, from `/proc/self/cgroup`):
//!
//! ```text
//! <own>/                      memory and cpu enabled in cgroup.subtree_control
//!   daemon/                   the daemon itself, when <own> had to be emptied (see below)
//!   gyrus-<instance>/         this daemon's root; memory and cpu enabled for its children
//!     <replica id>/           memory.max, memory.swap.max, memory.oom.group, cpu.max, the replica
//! ```
//!
//! cgroup v2's "no internal processes" rule forbids enabling controllers for the children of a
//! cgroup that holds processes (except in the root cgroup). A daemon started by systemd with
//! `Delegate=yes` sits alone in its service cgroup, so it moves itself into a `daemon` leaf first
//! — what systemd's delegation documentation asks of delegated services. If anything on the way
//! fails (not cgroup2, not delegated, other processes in the way), the caller falls back to
//! polling and records the reason this module returns.
//!
//! Nothing here can run on a cgroup v1 or hybrid machine (such as the one gyrus's CI runs on):
//! the parsers are unit-tested with fixture text, and the per-replica file handling is tested
//! against a directory that stands in for a cgroup (its files created up front, as the kernel
//! does on mkdir).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::{procfs, ComputeError, Limits};

/// Where the cgroup2 hierarchy must be mounted for gyrus to use it.
pub(crate) const MOUNT: &str = "/sys/fs/cgroup";

/// The CPU bandwidth period written to cpu.max, in microseconds (the kernel's default).
pub(crate) const CPU_PERIOD_US: u64 = 100_000;

/// The smallest quota the kernel accepts in cpu.max, in microseconds (1 ms per period, i.e. 10m).
pub(crate) const CPU_MIN_QUOTA_US: u64 = 1_000;

/// This daemon's cgroup subtree.
#[derive(Debug, Clone)]
pub(crate) struct Root {
    /// `<own>/gyrus-<instance>`.
    pub dir: PathBuf,
    /// Why CPU limits are not available when only the memory controller could be had.
    pub cpu_unavailable: Option<String>,
}

/// Finds or creates this daemon's cgroup subtree, or says why there is none to use.
pub(crate) fn setup(instance: &str) -> Result<Root, String> {
    if !is_valid_name(instance) {
        return Err(format!(
            "the instance id {instance:?} cannot be a cgroup name"
        ));
    }
    let mounts = fs::read_to_string("/proc/self/mounts")
        .map_err(|e| format!("cannot read /proc/self/mounts: {e}"))?;
    match mount_fstype(&mounts, MOUNT) {
        Some("cgroup2") => {}
        Some(other) => {
            return Err(format!(
                "{MOUNT} is a {other} mount, not cgroup2: a cgroup v1 or hybrid layout"
            ))
        }
        None => return Err(format!("nothing is mounted at {MOUNT}")),
    }
    let mount = Path::new(MOUNT);
    if !mount.join("cgroup.controllers").exists() {
        return Err(format!("{MOUNT}/cgroup.controllers is missing"));
    }
    let self_cgroup = fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
    let own = own_cgroup(&self_cgroup)
        .ok_or_else(|| "/proc/self/cgroup has no usable cgroup v2 entry (0::<path>)".to_string())?;
    let mut own_dir = mount.join(own.trim_start_matches('/'));
    // Detection twice in one process (a daemon that re-detects): it already moved itself into
    // the `daemon` leaf, whose parent is the cgroup to build on.
    if own_dir.file_name().is_some_and(|n| n == "daemon") {
        if let Some(parent) = own_dir.parent() {
            if controller_list(&parent.join("cgroup.subtree_control")).contains(&"memory".into()) {
                own_dir = parent.to_path_buf();
            }
        }
    }

    let available = controller_list(&own_dir.join("cgroup.controllers"));
    if !available.iter().any(|c| c == "memory") {
        return Err(format!(
            "the memory controller is not available in {} (cgroup.controllers: {})",
            own_dir.display(),
            if available.is_empty() {
                "none".to_string()
            } else {
                available.join(" ")
            }
        ));
    }
    let mut cpu_unavailable = if available.iter().any(|c| c == "cpu") {
        None
    } else {
        Some(format!(
            "the cpu controller is not available in {}",
            own_dir.display()
        ))
    };

    enable_in_own(&own_dir)?;
    if cpu_unavailable.is_none() {
        if let Err(e) = enable(&own_dir, "cpu") {
            cpu_unavailable = Some(format!(
                "cannot enable the cpu controller in {}: {e}",
                own_dir.display()
            ));
        }
    }

    let dir = own_dir.join(format!("gyrus-{instance}"));
    mkdir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    enable(&dir, "memory").map_err(|e| {
        format!(
            "cannot enable the memory controller in {}: {e}",
            dir.display()
        )
    })?;
    if cpu_unavailable.is_none() {
        if let Err(e) = enable(&dir, "cpu") {
            cpu_unavailable = Some(format!(
                "cannot enable the cpu controller in {}: {e}",
                dir.display()
            ));
        }
    }
    remove_stale(&dir);
    Ok(Root {
        dir,
        cpu_unavailable,
    })
}

/// Enables the memory controller for `own`'s children, moving the daemon into `own/daemon` when
/// the no-internal-processes rule refuses (EBUSY).
fn enable_in_own(own: &Path) -> Result<(), String> {
    if controller_list(&own.join("cgroup.subtree_control")).contains(&"memory".into()) {
        return Ok(());
    }
    let first = match enable(own, "memory") {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    if first.raw_os_error() != Some(libc::EBUSY) {
        return Err(format!(
            "cannot enable the memory controller in {}: {first}{}",
            own.display(),
            not_delegated_hint(&first)
        ));
    }
    let leaf = own.join("daemon");
    mkdir(&leaf).map_err(|e| {
        format!(
            "{} holds processes and a leaf for the daemon cannot be created: {e}{}",
            own.display(),
            not_delegated_hint(&e)
        )
    })?;
    let pid = std::process::id().to_string();
    write(&leaf.join("cgroup.procs"), &pid).map_err(|e| {
        format!(
            "cannot move the daemon into {}: {e}{}",
            leaf.display(),
            not_delegated_hint(&e)
        )
    })?;
    match enable(own, "memory") {
        Ok(()) => {
            tracing::info!(
                "moved the daemon into {} to delegate cgroups",
                leaf.display()
            );
            Ok(())
        }
        Err(e) => {
            // Put things back as they were: the daemon in its own cgroup, no leaf.
            let _ = write(&own.join("cgroup.procs"), &pid);
            let _ = fs::remove_dir(&leaf);
            if e.raw_os_error() == Some(libc::EBUSY) {
                Err(format!(
                    "other processes share the daemon's cgroup {}, so controllers cannot be \
                     enabled for its children (run the daemon in a cgroup of its own, e.g. a \
                     systemd service with Delegate=yes)",
                    own.display()
                ))
            } else {
                Err(format!(
                    "cannot enable the memory controller in {}: {e}",
                    own.display()
                ))
            }
        }
    }
}

fn not_delegated_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EACCES | libc::EPERM | libc::EROFS) => {
            " (the cgroup is not delegated to this user)"
        }
        _ => "",
    }
}

/// Removes replica cgroups a previous run of this daemon left behind (it crashed, or a replica
/// outlived it). Those with processes still in them stay, and are reported.
fn remove_stale(root: &Path) {
    let Ok(dir) = fs::read_dir(root) else {
        return;
    };
    for entry in dir.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            let path = entry.path();
            if let Err(e) = fs::remove_dir(&path) {
                tracing::warn!("cannot remove the stale cgroup {}: {e}", path.display());
            }
        }
    }
}

/// Creates a cgroup directory; an existing one is fine.
fn mkdir(dir: &Path) -> io::Result<()> {
    match fs::create_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

/// Writes a cgroup interface file in one write(2), without creating it: cgroupfs files exist or
/// the feature is missing (NotFound). O_TRUNC is what `echo > file` does; cgroupfs ignores it,
/// and the test stand-in (a plain directory) needs it.
fn write(path: &Path, content: &str) -> io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)?;
    file.write_all(content.as_bytes())
}

fn enable(dir: &Path, controller: &str) -> io::Result<()> {
    write(
        &dir.join("cgroup.subtree_control"),
        &format!("+{controller}"),
    )
}

fn controller_list(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .map(|text| parse_controllers(&text))
        .unwrap_or_default()
}

/// A cgroup directory name gyrus creates: `[A-Za-z0-9_-]`, not empty, well under NAME_MAX.
pub(crate) fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

// ---- parsers --------------------------------------------------------------------------------

/// The filesystem type mounted at `mountpoint` per `/proc/self/mounts`; the last line wins, as a
/// later mount hides an earlier one at the same place.
pub(crate) fn mount_fstype<'a>(mounts: &'a str, mountpoint: &str) -> Option<&'a str> {
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let _source = fields.next()?;
            let target = fields.next()?;
            let fstype = fields.next()?;
            (target == mountpoint).then_some(fstype)
        })
        .next_back()
}

/// The cgroup v2 path of `/proc/self/cgroup` (the `0::<path>` line). Paths outside the cgroup
/// namespace (`/..`) cannot be reached through the mount, so they count as none.
pub(crate) fn own_cgroup(text: &str) -> Option<&str> {
    let path = text
        .lines()
        .find_map(|line| line.strip_prefix("0::"))?
        .trim();
    if !path.starts_with('/') || path.split('/').any(|part| part == "..") {
        return None;
    }
    Some(path)
}

pub(crate) fn parse_controllers(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_string).collect()
}

/// The `oom_kill` count of a memory.events file: how many processes of the cgroup the OOM killer
/// killed.
pub(crate) fn parse_oom_kills(events: &str) -> Option<u64> {
    events.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == "oom_kill").then(|| value.trim().parse().ok())?
    })
}

/// The cpu.max line for a CPU limit in millicores: the quota per period, both in microseconds
/// (1000m = one full period). 0 means "no limit"; below the kernel's minimum quota the minimum is
/// used (the deploy warnings say so).
pub(crate) fn cpu_max(cpu_millis: u64) -> String {
    if cpu_millis == 0 {
        return format!("max {CPU_PERIOD_US}");
    }
    let quota = cpu_millis
        .saturating_mul(CPU_PERIOD_US / 1000)
        .max(CPU_MIN_QUOTA_US);
    format!("{quota} {CPU_PERIOD_US}")
}

// ---- per replica ----------------------------------------------------------------------------

/// A replica's cgroup, created and populated by [`attach`].
#[derive(Debug)]
pub(crate) struct ReplicaCgroup {
    pub dir: PathBuf,
    /// memory.events' oom_kill when the replica was attached (0 for a fresh cgroup).
    pub oom_kills_at_attach: u64,
}

/// Creates `<root>/<replica_id>`, writes the limits, and moves the replica's process group in.
pub(crate) fn attach(
    root: &Root,
    replica_id: &str,
    pid: u32,
    limits: &Limits,
) -> Result<ReplicaCgroup, ComputeError> {
    let dir = root.dir.join(replica_id);
    let err = |action: &str, source: io::Error| ComputeError::Cgroup {
        path: dir.clone(),
        action: action.to_string(),
        source,
    };
    mkdir(&dir).map_err(|e| err("create it", e))?;
    let result = (|| {
        let memory_max = match limits.memory_bytes {
            Some(bytes) => bytes.to_string(),
            // A reused directory may carry an old limit.
            None => "max".to_string(),
        };
        write(&dir.join("memory.max"), &memory_max).map_err(|e| err("write memory.max", e))?;
        if limits.memory_bytes.is_some() {
            // Swap would let a replica exceed its limit unnoticed (and slowly); absent when the
            // kernel does no swap accounting, which is the same as no swap for it.
            optional(write(&dir.join("memory.swap.max"), "0"))
                .map_err(|e| err("write memory.swap.max", e))?;
        }
        // One OOM kill takes the whole replica down, as the poller does: a replica missing a
        // worker is not one the supervisor can keep serving with (kernels before 4.19 lack it;
        // `check` kills the rest of the group then).
        optional(write(&dir.join("memory.oom.group"), "1"))
            .map_err(|e| err("write memory.oom.group", e))?;
        if root.cpu_unavailable.is_none() {
            write(&dir.join("cpu.max"), &cpu_max(limits.cpu_millis))
                .map_err(|e| err("write cpu.max", e))?;
        }
        let oom_kills_at_attach = fs::read_to_string(dir.join("memory.events"))
            .ok()
            .and_then(|text| parse_oom_kills(&text))
            .unwrap_or(0);
        write(&dir.join("cgroup.procs"), &pid.to_string())
            .map_err(|e| err("move the replica into cgroup.procs", e))?;
        // Anything the replica forked before it was moved stays behind: move the rest of its
        // process group too (children forked from now on are born inside).
        for member in procfs::group_members(pid) {
            if member != pid {
                let _ = write(&dir.join("cgroup.procs"), &member.to_string());
            }
        }
        Ok(oom_kills_at_attach)
    })();
    match result {
        Ok(oom_kills_at_attach) => Ok(ReplicaCgroup {
            dir,
            oom_kills_at_attach,
        }),
        Err(e) => {
            let _ = fs::remove_dir(&dir);
            Err(e)
        }
    }
}

fn optional(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

impl ReplicaCgroup {
    /// The oom_kill count now, or None when memory.events cannot be read.
    pub(crate) fn oom_kills(&self) -> Option<u64> {
        let text = fs::read_to_string(self.dir.join("memory.events")).ok()?;
        parse_oom_kills(&text)
    }

    /// memory.current.
    pub(crate) fn memory_current(&self) -> Option<u64> {
        read_u64(&self.dir.join("memory.current"))
    }

    /// memory.peak (Linux 5.19+): the usage that triggered the kill.
    pub(crate) fn memory_peak(&self) -> Option<u64> {
        read_u64(&self.dir.join("memory.peak"))
    }

    /// Kills everything left in the cgroup (cgroup.kill, Linux 5.14+; `check` also signals the
    /// process group, which covers older kernels).
    pub(crate) fn kill_all(&self) {
        if let Err(e) = optional(write(&self.dir.join("cgroup.kill"), "1")) {
            tracing::debug!("cannot write {}/cgroup.kill: {e}", self.dir.display());
        }
    }
}

impl Drop for ReplicaCgroup {
    fn drop(&mut self) {
        // rmdir succeeds once no process is left; EBUSY means the replica is still running
        // (dropped early): leave the directory, the next daemon start removes it.
        if let Err(e) = fs::remove_dir(&self.dir) {
            tracing::debug!("cannot remove the cgroup {}: {e}", self.dir.display());
        }
    }
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts() {
        // A pure cgroup v2 machine.
        let v2 = "sysfs /sys sysfs rw,nosuid 0 0\n\
                  cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0\n";
        assert_eq!(mount_fstype(v2, MOUNT), Some("cgroup2"));
        // The hybrid layout gyrus's CI has: tmpfs with v1 controllers, v2 at .../unified.
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n\
                      cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0\n";
        assert_eq!(mount_fstype(hybrid, MOUNT), Some("tmpfs"));
        // Overmounted: the last one is what a path lookup sees.
        let over = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n";
        assert_eq!(mount_fstype(over, MOUNT), Some("cgroup2"));
        assert_eq!(mount_fstype("proc /proc proc rw 0 0\n", MOUNT), None);
    }

    #[test]
    fn proc_self_cgroup() {
        assert_eq!(
            own_cgroup("0::/system.slice/gyrus.service\n"),
            Some("/system.slice/gyrus.service")
        );
        assert_eq!(own_cgroup("0::/\n"), Some("/"));
        let hybrid = "9:name=systemd:/\n4:memory:/process_api/d1dd\n1:cpu:/\n0::/\n";
        assert_eq!(own_cgroup(hybrid), Some("/"));
        assert_eq!(own_cgroup("4:memory:/x\n1:cpu:/\n"), None);
        assert_eq!(own_cgroup("0::/../../outside\n"), None);
        assert_eq!(own_cgroup("0::relative\n"), None);
    }

    #[test]
    fn controllers_and_events() {
        assert_eq!(
            parse_controllers("cpuset cpu io memory hugetlb pids rdma misc\n"),
            ["cpuset", "cpu", "io", "memory", "hugetlb", "pids", "rdma", "misc"]
        );
        assert!(parse_controllers("\n").is_empty());
        let events = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(parse_oom_kills(events), Some(1));
        assert_eq!(
            parse_oom_kills("low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n"),
            Some(0)
        );
        assert_eq!(parse_oom_kills("oom_group_kill 3\n"), None);
        assert_eq!(parse_oom_kills(""), None);
    }

    #[test]
    fn cpu_max_lines() {
        assert_eq!(cpu_max(1000), "100000 100000");
        assert_eq!(cpu_max(200), "20000 100000");
        assert_eq!(cpu_max(2500), "250000 100000");
        assert_eq!(cpu_max(10), "1000 100000");
        // Below the kernel's minimum quota: the minimum.
        assert_eq!(cpu_max(1), "1000 100000");
        assert_eq!(cpu_max(0), "max 100000");
        assert_eq!(cpu_max(u64::MAX), format!("{} 100000", u64::MAX));
    }

    #[test]
    fn names() {
        assert!(is_valid_name("3f9a1c"));
        assert!(is_valid_name("iris-classifier-0"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("../x"));
        assert!(!is_valid_name("a/b"));
        assert!(!is_valid_name(&"a".repeat(200)));
    }

    /// A directory standing in for the kernel's freshly made replica cgroup.
    fn fake_replica_dir(root: &Path, id: &str, with_swap: bool) -> PathBuf {
        let dir = root.join(id);
        fs::create_dir(&dir).expect("mkdir");
        let mut files = vec![
            ("memory.max", "max\n"),
            ("memory.oom.group", "0\n"),
            ("cpu.max", "max 100000\n"),
            ("cgroup.procs", ""),
            ("memory.events", "low 0\nhigh 0\nmax 0\noom 0\noom_kill 2\n"),
            ("memory.current", "1234567\n"),
        ];
        if with_swap {
            files.push(("memory.swap.max", "max\n"));
        }
        for (name, content) in files {
            fs::write(dir.join(name), content).expect("write");
        }
        dir
    }

    #[test]
    fn attach_writes_limits() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = Root {
            dir: tmp.path().to_path_buf(),
            cpu_unavailable: None,
        };
        let dir = fake_replica_dir(tmp.path(), "api-1", true);
        let limits = Limits {
            cpu_millis: 500,
            memory_bytes: Some(256 << 20),
            gpus: 0,
        };
        // A pid of no live process group: nothing else gets moved.
        let cg = attach(&root, "api-1", 999_999_999, &limits).expect("attach");
        let read = |name: &str| fs::read_to_string(dir.join(name)).expect("read");
        assert_eq!(read("memory.max"), (256u64 << 20).to_string());
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("memory.oom.group"), "1");
        assert_eq!(read("cpu.max"), "50000 100000");
        assert_eq!(read("cgroup.procs"), "999999999");
        assert_eq!(cg.oom_kills_at_attach, 2);
        assert_eq!(cg.memory_current(), Some(1_234_567));
        assert_eq!(cg.memory_peak(), None);

        // Without swap accounting (no memory.swap.max), without the cpu controller, and
        // without a memory limit.
        let root = Root {
            dir: tmp.path().to_path_buf(),
            cpu_unavailable: Some("cpu controller not delegated".into()),
        };
        let dir = fake_replica_dir(tmp.path(), "api-2", false);
        let limits = Limits {
            cpu_millis: 500,
            memory_bytes: None,
            gpus: 0,
        };
        attach(&root, "api-2", 999_999_999, &limits).expect("attach");
        assert_eq!(
            fs::read_to_string(dir.join("memory.max")).expect("read"),
            "max"
        );
        assert_eq!(
            fs::read_to_string(dir.join("cpu.max")).expect("read"),
            "max 100000\n"
        );
        assert!(!dir.join("memory.swap.max").exists());
    }

    #[test]
    fn attach_failure_is_reported_and_cleaned_up() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = Root {
            dir: tmp.path().to_path_buf(),
            cpu_unavailable: None,
        };
        // A bare directory: no memory.max, as if the memory controller were not enabled.
        let limits = Limits {
            cpu_millis: 500,
            memory_bytes: Some(1 << 30),
            gpus: 0,
        };
        let err = attach(&root, "api-3", 999_999_999, &limits).expect_err("no memory.max");
        let text = err.to_string();
        assert!(
            text.contains("api-3") && text.contains("memory.max"),
            "{text}"
        );
        assert!(!tmp.path().join("api-3").exists());
    }
}
