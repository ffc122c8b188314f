//! End-to-end tests with real processes: the polling fallback stops a replica's whole process
//! group once it goes over its memory limit, and leaves one under its limit alone. Plus the
//! machine-independent parts of the public API (limits from a spec, deploy warnings, GPUs).
//!
//! The polling tests use `Compute::without_cgroup`, so they exercise the fallback on any
//! machine; the cgroup v2 path cannot run on gyrus's CI (cgroup v1 hybrid layout) and is covered
//! by the crate's unit tests of its parsing and file handling.

use std::io::{BufRead, BufReader};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gyrus_compute::{Compute, ComputeError, Limits, OutOfMemory};

const MIB: u64 = 1 << 20;

/// A python3 process leading its own process group, like a replica. Dropping it kills the group,
/// so a failing test leaves nothing behind.
struct Group {
    child: Child,
}

impl Group {
    fn spawn(script: &str) -> Group {
        let child = Command::new("python3")
            .args(["-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("spawn python3");
        Group { child }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line the script printed.
    fn read_line(&mut self) -> String {
        let out = self.child.stdout.as_mut().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line).expect("read");
        line.trim().to_string()
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// Whether `pid` is still a live (non-zombie) process.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(line) => {
            let state = line
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .unwrap_or("");
            !matches!(state, "Z" | "X")
        }
        Err(_) => false,
    }
}

fn polling() -> Compute {
    Compute::without_cgroup("test of the polling fallback")
}

fn mem_limit(bytes: u64) -> Limits {
    Limits {
        cpu_millis: 1000,
        memory_bytes: Some(bytes),
        gpus: 0,
    }
}

/// The replica sleeps, then a child it forked (same process group) allocates ~200 MB and touches
/// every page; with a 100 MiB limit the poller must kill both, once.
#[test]
fn polling_kills_the_whole_group_over_its_limit() {
    let script = r#"
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", """
import time
time.sleep(0.3)
b = bytearray(200 * 1024 * 1024)
for i in range(0, len(b), 4096):
    b[i] = 1
time.sleep(60)
"""])
print(child.pid, flush=True)
child.wait()
time.sleep(60)
"#;
    let mut replica = Group::spawn(script);
    let child_pid: u32 = replica.read_line().parse().expect("child pid");
    let compute = polling();
    let mut limit = compute
        .attach("api-oom-0", replica.pid(), &mem_limit(100 * MIB))
        .expect("attach");

    let deadline = Instant::now() + Duration::from_secs(10);
    let oom = loop {
        if let Some(oom) = limit.check() {
            break oom;
        }
        assert!(Instant::now() < deadline, "no OOM reported within 10s");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(oom.limit, 100 * MIB);
    assert!(oom.used > oom.limit, "{oom:?}");
    assert!(
        oom.to_string().starts_with("out of memory: used ")
            && oom
                .to_string()
                .ends_with(" of its 100.0 MiB limit (compute.mem); the replica was stopped"),
        "{oom}"
    );

    let status = replica.child.wait().expect("wait");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    // The child was killed by the same group SIGKILL; once dead it is reaped by init (or left a
    // zombie where init does not reap), either way not alive.
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(child_pid) {
        assert!(Instant::now() < deadline, "the child {child_pid} survived");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Reported exactly once.
    assert_eq!(limit.check(), None);
    assert_eq!(limit.memory_used(), None);
}

#[test]
fn polling_leaves_a_replica_under_its_limit_alone() {
    let mut replica = Group::spawn("print('up', flush=True)\nimport time\ntime.sleep(60)\n");
    assert_eq!(replica.read_line(), "up");
    let compute = polling();
    let mut limit = compute
        .attach("api-ok-0", replica.pid(), &mem_limit(512 * MIB))
        .expect("attach");
    for _ in 0..5 {
        assert_eq!(limit.check(), None);
        std::thread::sleep(Duration::from_millis(100));
    }
    let used = limit.memory_used().expect("memory use of a live replica");
    assert!(used > MIB && used < 512 * MIB, "{used}");
    assert!(replica.child.try_wait().expect("try_wait").is_none());
    assert_eq!(limit.cgroup_dir(), None);
}

#[test]
fn no_memory_limit_never_reports() {
    let mut replica = Group::spawn("print('up', flush=True)\nimport time\ntime.sleep(60)\n");
    assert_eq!(replica.read_line(), "up");
    let limits = Limits {
        cpu_millis: 200,
        memory_bytes: None,
        gpus: 0,
    };
    let mut limit = polling()
        .attach("api-nolimit-0", replica.pid(), &limits)
        .expect("attach");
    assert_eq!(limit.check(), None);
    assert!(limit.memory_used().is_some_and(|used| used > MIB));
}

#[test]
fn attach_refuses_bad_ids_and_pids() {
    let compute = polling();
    let limits = mem_limit(MIB);
    let mut replica = Group::spawn("print('up', flush=True)\nimport time\ntime.sleep(60)\n");
    assert_eq!(replica.read_line(), "up");
    assert!(matches!(
        compute.attach("Bad_Id", replica.pid(), &limits),
        Err(ComputeError::InvalidReplicaId(_))
    ));
    assert!(matches!(
        compute.attach("../x", replica.pid(), &limits),
        Err(ComputeError::InvalidReplicaId(_))
    ));
    for pid in [0, 1, std::process::id(), u32::MAX] {
        assert!(
            matches!(
                compute.attach("api-0", pid, &limits),
                Err(ComputeError::InvalidPid { .. })
            ),
            "pid {pid}"
        );
    }
    // A process that shares the test's process group is not a replica.
    let mut plain = Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("spawn sleep");
    let err = compute
        .attach("api-0", plain.id(), &limits)
        .expect_err("not a group leader");
    assert!(
        err.to_string()
            .contains("not the leader of its own process group"),
        "{err}"
    );
    let _ = plain.kill();
    let _ = plain.wait();
}

#[test]
fn limits_from_spec() {
    let spec = gyrus_spec::ComputeSpec {
        cpu: "2.5".parse().expect("cpu"),
        gpu: 1,
        mem: Some("256Mi".parse().expect("mem")),
    };
    assert_eq!(
        Limits::from_spec(&spec),
        Limits {
            cpu_millis: 2500,
            memory_bytes: Some(256 * MIB),
            gpus: 1
        }
    );
    assert_eq!(
        Limits::from_spec(&gyrus_spec::ComputeSpec::default()),
        Limits {
            cpu_millis: 200,
            memory_bytes: None,
            gpus: 0
        }
    );
}

/// On a machine without a pure cgroup v2 mount (gyrus's CI) detection must fall back to polling
/// and say why; elsewhere it may find cgroup v2, and says so.
#[test]
fn detect_describes_this_machine() {
    let compute = Compute::detect("gyrustest");
    let line = compute.describe();
    println!("{line}");
    if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        assert!(
            line.starts_with("cgroup v2 at ") || line.starts_with("no usable cgroup v2 ("),
            "{line}"
        );
    } else {
        assert!(line.starts_with("no usable cgroup v2 ("), "{line}");
        assert!(line.ends_with(
            "): memory limits by polling each replica's RSS every second; CPU not limited"
        ));
        assert!(!compute.enforces_cpu());
    }
}

#[test]
fn deploy_warnings_without_cgroup() {
    let compute = Compute::without_cgroup("/sys/fs/cgroup is a tmpfs mount");
    let cpu_only = Limits {
        cpu_millis: 500,
        memory_bytes: None,
        gpus: 0,
    };
    assert_eq!(
        compute.deploy_warnings(&cpu_only),
        [
            "compute.cpu: 500m cannot be enforced on this machine (no usable cgroup v2: \
          /sys/fs/cgroup is a tmpfs mount); replicas may use more"
        ]
    );
    // Memory is enforced by polling: no warning for it.
    let mem_only = Limits {
        cpu_millis: 0,
        memory_bytes: Some(256 * MIB),
        gpus: 0,
    };
    assert!(compute.deploy_warnings(&mem_only).is_empty());
}

#[test]
fn gpus_none() {
    let compute = polling().with_gpus(vec![]);
    assert_eq!(compute.check_gpus(0), Ok(()));
    assert_eq!(
        compute.check_gpus(1),
        Err(
            "compute.gpu: 1 GPU requested, but this machine has none (no GPUs were \
             configured)"
                .to_string()
        )
    );
    assert_eq!(compute.gpu_devices(0, 1), None);
}

#[test]
fn gpus_round_robin() {
    let compute = polling().with_gpus(vec![0, 1, 2, 3]);
    assert_eq!(compute.check_gpus(4), Ok(()));
    assert_eq!(
        compute.check_gpus(5),
        Err("compute.gpu: 5 GPUs requested, but this machine has 4 (GPUs 0, 1, 2, 3)".to_string())
    );
    let slots: Vec<_> = (0..5).map(|slot| compute.gpu_devices(slot, 2)).collect();
    assert_eq!(
        slots,
        ["0,1", "2,3", "0,1", "2,3", "0,1"].map(|s| Some(s.to_string()))
    );
    assert_eq!(compute.gpu_devices(3, 0), None);
    // Three GPUs, two per replica: consecutive, wrapping around.
    let three = polling().with_gpus(vec![0, 1, 2]);
    let slots: Vec<_> = (0..3).map(|slot| three.gpu_devices(slot, 2)).collect();
    assert_eq!(slots, ["0,1", "2,0", "1,2"].map(|s| Some(s.to_string())));
    let one = polling().with_gpus(vec![0]);
    assert_eq!(
        one.check_gpus(2),
        Err("compute.gpu: 2 GPUs requested, but this machine has 1 (GPU 0)".to_string())
    );
    // Never a device twice, even past the deploy check.
    assert_eq!(one.gpu_devices(1, 2), Some("0".to_string()));
}

#[test]
fn compute_is_send_sync_and_limit_is_send() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Compute>();
    send::<gyrus_compute::ReplicaLimit>();
    send_sync::<OutOfMemory>();
}
