//! Per-replica compute limits: what cortex.yaml's `compute` section (`cpu`, `mem`, `gpu`)
//! means for a replica process on this machine.
//!
//! The daemon calls [`Compute::detect`] once at start. It finds out how limits can be enforced:
//!
//! - **cgroup v2** (a pure cgroup2 mount at `/sys/fs/cgroup` with a subtree delegated to the
//!   daemon): each replica gets its own cgroup with `memory.max` (no swap) and `cpu.max`. The
//!   kernel enforces both; an OOM kill shows up in `memory.events` and is reported once.
//! - **polling** (everything else, including cgroup v1 and hybrid layouts): once a second the
//!   supervisor calls [`ReplicaLimit::check`], which sums the resident memory of every process in
//!   the replica's process group and SIGKILLs the group when it is over the limit. CPU is not
//!   limited; [`Compute::deploy_warnings`] says so at deploy.
//!
//! GPUs are counted once ([`detect_gpus`]); [`Compute::check_gpus`] refuses a deploy asking for
//! more than there are, and [`Compute::gpu_devices`] hands replicas consecutive devices through
//! `CUDA_VISIBLE_DEVICES`.
//!
//! This crate owns only the mechanism; the supervisor decides when to spawn, attach, check and
//! drop, and what to show.

mod cgroup;
mod gpu;
mod procfs;

use std::fmt;
use std::path::PathBuf;

pub use gpu::{detect_gpus, GPU_COUNT_ENV};

/// A replica's limits, from its API's `compute` section.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// CPU limit in millicores (1000 = one core); 0 means none.
    pub cpu_millis: u64,
    /// Memory limit in bytes, for all the replica's processes together.
    pub memory_bytes: Option<u64>,
    /// GPUs per replica.
    pub gpus: u32,
}

impl Limits {
    pub fn from_spec(c: &gyrus_spec::ComputeSpec) -> Limits {
        Limits {
            cpu_millis: c.cpu.millis(),
            memory_bytes: c.mem.map(|m| m.bytes()),
            gpus: c.gpu,
        }
    }
}

/// How limits are enforced on this machine, and its GPUs. Detected once at daemon start.
#[derive(Debug, Clone)]
pub struct Compute {
    backend: Backend,
    gpus: Vec<u32>,
    /// Why there are no GPUs, for the deploy error (empty when there are some).
    gpu_none_reason: String,
}

#[derive(Debug, Clone)]
enum Backend {
    Cgroup(cgroup::Root),
    Polling { reason: String },
}

impl Compute {
    /// Detects cgroup v2 and the GPUs. `instance`: a short unique id for this daemon (e.g. a hash
    /// of GYRUS_HOME) so two daemons don't share cgroups; `[A-Za-z0-9_-]`.
    ///
    /// With cgroup v2 this may move the daemon process into a `daemon` leaf of its cgroup (see
    /// the crate's cgroup notes), so call it before spawning anything.
    pub fn detect(instance: &str) -> Compute {
        let backend = match cgroup::setup(instance) {
            Ok(root) => Backend::Cgroup(root),
            Err(reason) => Backend::Polling { reason },
        };
        Compute::with_backend(backend)
    }

    /// Memory limits by polling whatever the machine offers, with `reason` saying why (for a
    /// daemon told not to use cgroups, and for tests of the fallback on any machine).
    pub fn without_cgroup(reason: &str) -> Compute {
        Compute::with_backend(Backend::Polling {
            reason: reason.to_string(),
        })
    }

    fn with_backend(backend: Backend) -> Compute {
        let inventory = gpu::inventory();
        Compute {
            backend,
            gpus: inventory.indices,
            gpu_none_reason: inventory.none_reason,
        }
    }

    /// Replaces the detected GPUs with `gpus` (CUDA device ordinals): for tests of the
    /// assignment and the deploy error, without touching the environment.
    pub fn with_gpus(mut self, gpus: Vec<u32>) -> Compute {
        self.gpu_none_reason = "no GPUs were configured".to_string();
        self.gpus = gpus;
        self
    }

    /// The machine's GPUs (CUDA device ordinals), as detected.
    pub fn gpus(&self) -> &[u32] {
        &self.gpus
    }

    /// One line for the daemon log: how memory and CPU limits are enforced, and if not, why.
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Cgroup(root) => match &root.cpu_unavailable {
                None => format!(
                    "cgroup v2 at {}: memory and CPU limits enforced",
                    root.dir.display()
                ),
                Some(why) => format!(
                    "cgroup v2 at {}: memory limits enforced; CPU not limited ({why})",
                    root.dir.display()
                ),
            },
            Backend::Polling { reason } => format!(
                "no usable cgroup v2 ({reason}): memory limits by polling each replica's RSS \
                 every second; CPU not limited"
            ),
        }
    }

    pub fn enforces_cpu(&self) -> bool {
        matches!(&self.backend, Backend::Cgroup(root) if root.cpu_unavailable.is_none())
    }

    /// Why CPU limits are not enforced, or None when they are.
    fn cpu_unenforced_reason(&self) -> Option<String> {
        match &self.backend {
            Backend::Cgroup(root) => root
                .cpu_unavailable
                .as_ref()
                .map(|why| format!("cgroup v2 without CPU control: {why}")),
            Backend::Polling { reason } => Some(format!("no usable cgroup v2: {reason}")),
        }
    }

    /// Warnings to show at deploy: a CPU limit that cannot be enforced here, or one below what the
    /// kernel can enforce. Memory limits are always enforced (by cgroup or by polling), so they
    /// never warn.
    pub fn deploy_warnings(&self, limits: &Limits) -> Vec<String> {
        let mut warnings = Vec::new();
        if limits.cpu_millis == 0 {
            return warnings;
        }
        let cpu = gyrus_spec::Cpu::from_millis(limits.cpu_millis);
        match self.cpu_unenforced_reason() {
            Some(why) => warnings.push(format!(
                "compute.cpu: {cpu} cannot be enforced on this machine ({why}); replicas may use \
                 more"
            )),
            None => {
                let min_millis = cgroup::CPU_MIN_QUOTA_US * 1000 / cgroup::CPU_PERIOD_US;
                if limits.cpu_millis < min_millis {
                    warnings.push(format!(
                        "compute.cpu: {cpu} is below the smallest CPU limit the kernel enforces \
                         ({}); replicas get that much",
                        gyrus_spec::Cpu::from_millis(min_millis)
                    ));
                }
            }
        }
        warnings
    }

    /// Deploy-time check: Err with a clear message when more GPUs are requested (per replica)
    /// than the machine has.
    pub fn check_gpus(&self, requested: u32) -> Result<(), String> {
        let have = self.gpus.len();
        if requested == 0 || usize::try_from(requested).is_ok_and(|r| r <= have) {
            return Ok(());
        }
        let asked = if requested == 1 {
            "1 GPU requested".to_string()
        } else {
            format!("{requested} GPUs requested")
        };
        if have == 0 {
            return Err(format!(
                "compute.gpu: {asked}, but this machine has none ({})",
                self.gpu_none_reason
            ));
        }
        let list = self
            .gpus
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let noun = if have == 1 { "GPU" } else { "GPUs" };
        Err(format!(
            "compute.gpu: {asked}, but this machine has {have} ({noun} {list})"
        ))
    }

    /// The CUDA_VISIBLE_DEVICES value for the `slot`-th replica of an API asking for `requested`
    /// GPUs: replicas take consecutive GPUs round-robin (`slot*requested ..+requested`, modulo
    /// the count), so replicas share GPUs only once every GPU has one. None when `requested` is 0
    /// or the machine has no GPU ([`check_gpus`](Self::check_gpus) refuses such deploys). Never
    /// names a device twice, even if more are requested than exist.
    pub fn gpu_devices(&self, slot: u32, requested: u32) -> Option<String> {
        if requested == 0 || self.gpus.is_empty() {
            return None;
        }
        let count = self.gpus.len() as u64;
        let take = u64::from(requested).min(count);
        let start = u64::from(slot) * u64::from(requested);
        let devices: Vec<String> = (0..take)
            .filter_map(|i| {
                let index = usize::try_from((start + i) % count).ok()?;
                self.gpus.get(index).map(u32::to_string)
            })
            .collect();
        Some(devices.join(","))
    }

    /// Puts a just-spawned replica (`pid`, the leader of its own process group) under its
    /// limits. Call it right after spawn, before the replica forks its workers: with cgroup v2,
    /// children forked afterwards are born inside the replica's cgroup (attach also moves any
    /// group member that is already there).
    pub fn attach(
        &self,
        replica_id: &str,
        pid: u32,
        limits: &Limits,
    ) -> Result<ReplicaLimit, ComputeError> {
        validate_replica_id(replica_id)?;
        validate_pid(pid)?;
        let mode = match &self.backend {
            Backend::Cgroup(root) => Mode::Cgroup(cgroup::attach(root, replica_id, pid, limits)?),
            Backend::Polling { .. } => Mode::Polling,
        };
        Ok(ReplicaLimit {
            pid,
            limit: limits.memory_bytes,
            reported: false,
            mode,
        })
    }
}

fn validate_replica_id(id: &str) -> Result<(), ComputeError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ComputeError::InvalidReplicaId(id.to_string()))
    }
}

/// Refuses pids whose process group must never be SIGKILLed: init, the daemon's own group, and
/// processes that are not the leader of their own group (the group would not be the replica).
fn validate_pid(pid: u32) -> Result<(), ComputeError> {
    let refuse = |reason: &str| ComputeError::InvalidPid {
        pid,
        reason: reason.to_string(),
    };
    if pid <= 1 || libc::pid_t::try_from(pid).is_err() {
        return Err(refuse("not a replica's process id"));
    }
    // SAFETY: getpgrp cannot fail and has no preconditions.
    let own_group = unsafe { libc::getpgrp() };
    if pid == std::process::id() || libc::pid_t::try_from(pid).ok() == Some(own_group) {
        return Err(refuse(
            "it is the daemon's own process group (the replica must be spawned as the leader \
             of a new process group)",
        ));
    }
    // A replica that already exited has no stat to read: that is for the supervisor to notice,
    // and nothing here would act on it.
    if let Some(stat) = procfs::stat(pid) {
        if stat.pgrp != pid {
            return Err(refuse(&format!(
                "it is not the leader of its own process group (its group is {})",
                stat.pgrp
            )));
        }
    }
    Ok(())
}

/// One replica under its limits. The supervisor keeps it while the replica runs, calls
/// [`check`](Self::check) about once a second, and drops it once the replica's processes are
/// gone.
#[derive(Debug)]
pub struct ReplicaLimit {
    pid: u32,
    limit: Option<u64>,
    reported: bool,
    mode: Mode,
}

#[derive(Debug)]
enum Mode {
    Cgroup(cgroup::ReplicaCgroup),
    Polling,
}

impl ReplicaLimit {
    /// Called about once a second by the supervisor. Some(..) exactly once when the replica went
    /// over its memory limit; by then every process of the replica has been sent SIGKILL.
    ///
    /// - cgroup v2: memory.events' oom_kill count rose (the kernel killed something), and the
    ///   rest of the cgroup and the process group are killed too.
    /// - polling: the summed RSS of every process whose process group is the replica's pid
    ///   exceeded the limit; the whole group is killed. Between two checks a replica can briefly
    ///   exceed its limit; the check interval bounds how long.
    pub fn check(&mut self) -> Option<OutOfMemory> {
        if self.reported {
            return None;
        }
        let limit = self.limit?;
        let used = match &self.mode {
            Mode::Cgroup(cg) => {
                if cg.oom_kills()? <= cg.oom_kills_at_attach {
                    return None;
                }
                cg.kill_all();
                procfs::kill_group(self.pid);
                // The usage that hit the limit; without memory.peak (before 5.19) the limit itself
                // is the best statement of it.
                cg.memory_peak().unwrap_or(limit).max(limit)
            }
            Mode::Polling => {
                let used = procfs::group_rss(self.pid)?;
                if used <= limit {
                    return None;
                }
                procfs::kill_group(self.pid);
                used
            }
        };
        self.reported = true;
        tracing::warn!(pid = self.pid, used, limit, "replica over its memory limit");
        Some(OutOfMemory { used, limit })
    }

    /// Current memory use (summed RSS, or memory.current), for display. None when it cannot be
    /// read (the replica is gone).
    pub fn memory_used(&self) -> Option<u64> {
        match &self.mode {
            Mode::Cgroup(cg) => cg.memory_current(),
            Mode::Polling => procfs::group_rss(self.pid),
        }
    }

    /// The replica's process group (its pid).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The replica's cgroup directory, when limits are enforced by cgroup v2.
    pub fn cgroup_dir(&self) -> Option<PathBuf> {
        match &self.mode {
            Mode::Cgroup(cg) => Some(cg.dir.clone()),
            Mode::Polling => None,
        }
    }
}

// Dropping a ReplicaLimit removes the replica's cgroup (see `cgroup::ReplicaCgroup`'s Drop):
// rmdir succeeds once its processes are gone, and EBUSY is ignored.

/// A replica stopped for going over its memory limit.
#[derive(Debug, Clone, PartialEq)]
pub struct OutOfMemory {
    pub used: u64,
    pub limit: u64,
}

impl fmt::Display for OutOfMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "out of memory: used {} of its {} limit (compute.mem); the replica was stopped",
            format_bytes(self.used),
            format_bytes(self.limit)
        )
    }
}

/// Bytes in binary units with one decimal (`312.4 MiB`), plain bytes below 1 KiB.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[derive(thiserror::Error, Debug)]
pub enum ComputeError {
    #[error("invalid replica id {0:?}: only a-z, 0-9 and - are allowed (at most 128)")]
    InvalidReplicaId(String),
    #[error("refusing to limit process {pid}: {reason}")]
    InvalidPid { pid: u32, reason: String },
    #[error("cgroup {}: cannot {action}: {source}", path.display())]
    Cgroup {
        path: PathBuf,
        action: String,
        #[source]
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(1023), "1023 B");
        assert_eq!(format_bytes(1024), "1.0 KiB");
        assert_eq!(format_bytes(256 << 20), "256.0 MiB");
        assert_eq!(format_bytes(327_574_323), "312.4 MiB");
        assert_eq!(format_bytes(3 << 30), "3.0 GiB");
        assert_eq!(format_bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn oom_message() {
        let oom = OutOfMemory {
            used: 327_574_323,
            limit: 256 << 20,
        };
        assert_eq!(
            oom.to_string(),
            "out of memory: used 312.4 MiB of its 256.0 MiB limit (compute.mem); the replica \
             was stopped"
        );
    }

    #[test]
    fn replica_ids() {
        for id in ["a", "iris-0", "3f9a1c2b-1"] {
            assert!(validate_replica_id(id).is_ok(), "{id}");
        }
        for id in ["", "Iris", "a_b", "a/b", "..", "a b", &"x".repeat(129)] {
            assert!(validate_replica_id(id).is_err(), "{id}");
        }
    }

    #[test]
    fn cgroup_backend_describes_and_warns() {
        let compute = Compute {
            backend: Backend::Cgroup(cgroup::Root {
                dir: PathBuf::from("/sys/fs/cgroup/system.slice/gyrus.service/gyrus-ab12"),
                cpu_unavailable: None,
            }),
            gpus: vec![],
            gpu_none_reason: String::new(),
        };
        assert_eq!(
            compute.describe(),
            "cgroup v2 at /sys/fs/cgroup/system.slice/gyrus.service/gyrus-ab12: memory and CPU \
             limits enforced"
        );
        assert!(compute.enforces_cpu());
        let limits = |cpu_millis| Limits {
            cpu_millis,
            memory_bytes: None,
            gpus: 0,
        };
        assert!(compute.deploy_warnings(&limits(500)).is_empty());
        assert_eq!(
            compute.deploy_warnings(&limits(5)),
            [
                "compute.cpu: 5m is below the smallest CPU limit the kernel enforces (10m); \
              replicas get that much"
            ]
        );

        let no_cpu = Compute {
            backend: Backend::Cgroup(cgroup::Root {
                dir: PathBuf::from("/sys/fs/cgroup/user.slice/gyrus-ab12"),
                cpu_unavailable: Some("the cpu controller is not available in X".into()),
            }),
            ..compute
        };
        assert!(!no_cpu.enforces_cpu());
        assert!(no_cpu
            .describe()
            .contains("memory limits enforced; CPU not limited"));
        assert_eq!(
            no_cpu.deploy_warnings(&limits(1500)),
            [
                "compute.cpu: 1500m cannot be enforced on this machine (cgroup v2 without CPU \
              control: the cpu controller is not available in X); replicas may use more"
            ]
        );
    }
}
