//! Replicas as processes of this machine: `gyrus replica` started from this executable in its
//! own process group, with the [`ReplicaLaunch`] on its stdin, its stderr appended to the API's
//! log, its stdout read for events, compute limits attached before it starts its workers (a
//! cgroup, or the memory watch when there is none). It never outlives the daemon: it stops when
//! its stdin reaches EOF, which happens when the daemon's process ends, however it ends.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gyrus_compute::Compute;
use gyrus_launch::ReplicaEvent;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};

use super::{LaunchError, LaunchRequest, Launched, LauncherEvent, ReplicaHandle, ReplicaLauncher};
use crate::home::GyrusHome;

/// Starts replicas as child processes. See the module documentation.
pub struct LocalLauncher {
    home: GyrusHome,
    compute: Arc<Compute>,
    exe: PathBuf,
    /// The daemon's address, when replicas serving users take connections from it.
    handoff: Option<std::net::SocketAddr>,
}

impl LocalLauncher {
    pub fn new(
        home: GyrusHome,
        compute: Arc<Compute>,
        handoff: Option<std::net::SocketAddr>,
    ) -> Self {
        Self {
            home,
            compute,
            exe: crate::own_exe(),
            handoff,
        }
    }
}

/// One replica process.
struct LocalReplica {
    pid: Option<u32>,
    /// Closing it is the replica's signal to stop (besides SIGTERM).
    stdin: Mutex<Option<tokio::process::ChildStdin>>,
    /// True once the process has been reaped: its pid may belong to another process then.
    exited: watch::Receiver<bool>,
}

impl LocalReplica {
    fn signal(&self, sig: libc::c_int, group: bool) {
        let Some(pid) = self.pid else { return };
        if *self.exited.borrow() {
            return;
        }
        let target = if group {
            -(pid as libc::pid_t)
        } else {
            pid as libc::pid_t
        };
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is our child, not yet
        // reaped (checked above), and leads its own process group (setpgid at spawn).
        unsafe {
            libc::kill(target, sig);
        }
    }
}

impl ReplicaHandle for LocalReplica {
    fn pid(&self) -> Option<u32> {
        self.pid
    }

    fn host(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    }

    fn stop(&self, grace: Duration) {
        self.signal(libc::SIGTERM, false);
        drop(self.stdin.lock().unwrap_or_else(|e| e.into_inner()).take());
        let Some(pid) = self.pid else { return };
        let mut exited = self.exited.clone();
        tokio::spawn(async move {
            let gone = tokio::time::timeout(grace, exited.wait_for(|e| *e))
                .await
                .is_ok();
            if !gone && !*exited.borrow() {
                // The whole group: the replica, its Python workers and anything the user's code
                // started.
                // SAFETY: as in `signal`; not reaped yet, so the group is still ours.
                unsafe {
                    libc::kill(-(pid as libc::pid_t), libc::SIGKILL);
                }
            }
        });
    }

    fn kill(&self) {
        self.signal(libc::SIGKILL, true);
    }
}

impl ReplicaLauncher for LocalLauncher {
    fn launch(&self, request: LaunchRequest) -> Result<Launched, LaunchError> {
        let LaunchRequest {
            api,
            mut launch,
            env,
            limits,
            slot,
        } = request;
        let id = launch.id.clone();
        let log_path = match &launch.job {
            Some(job) => {
                let path = self.home.job_log(&api, &job.job_id);
                if let Some(dir) = path.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                path
            }
            None => self.home.api_log(&api),
        };
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|source| LaunchError::Log {
                path: log_path.clone(),
                source,
            })?;
        // Job workers serve the daemon's batch calls only: no connections to hand them.
        let handoff = match self.handoff.filter(|_| launch.job.is_none()) {
            Some(daemon) => {
                let (link, theirs) =
                    gyrus_gateway::handoff::link::pair().map_err(LaunchError::Handoff)?;
                // At 3 or above (stdio is 0 to 2), close-on-exec until the child moves it.
                let theirs = theirs.try_clone().map_err(LaunchError::Handoff)?;
                launch.handoff = Some(gyrus_launch::HandoffLaunch {
                    fd: gyrus_gateway::handoff::REPLICA_CHANNEL_FD,
                    daemon,
                });
                Some((link, theirs))
            }
            None => None,
        };
        let line = format!("{}\n", launch.to_line()?);

        let mut cmd = tokio::process::Command::new(&self.exe);
        // The id in argv only names the process for `ps`; the replica reads its launch on stdin.
        cmd.arg("replica").arg("--id").arg(&id);
        if let Some(devices) = self.compute.gpu_devices(slot, limits.gpus) {
            // nvidia-smi's numbering, which the assignment follows.
            cmd.env("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
                .env("CUDA_VISIBLE_DEVICES", devices);
        }
        cmd.current_dir(&launch.project_dir)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("GYRUS_HOME", self.home.root())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(false)
            // Its own process group: a Ctrl-C on a foreground daemon reaches the daemon only,
            // which then stops replicas gracefully.
            .process_group(0);
        let channel_fd = handoff.as_ref().map(|(_, theirs)| theirs.as_raw_fd());
        // No parent-death signal: Linux sends it when the *thread* that forked exits, and a
        // launch from one of tokio's blocking threads (which end after 10 s idle) had its
        // replica stopped under live traffic. The replica watches its stdin instead, which
        // reaches EOF when this process ends, however it ends.
        // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
        #[cfg(target_os = "linux")]
        unsafe {
            cmd.pre_exec(move || {
                if let Some(fd) = channel_fd {
                    let to = gyrus_gateway::handoff::REPLICA_CHANNEL_FD;
                    // dup2 clears close-on-exec on the copy; a descriptor already at 3 keeps
                    // its own flag, cleared here.
                    if fd == to {
                        if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    } else if libc::dup2(fd, to) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|source| LaunchError::Spawn {
            exe: self.exe.clone(),
            source,
        })?;
        // The daemon keeps no copy of the replica's end: when the replica exits, its end
        // closes and the link learns at once.
        let handoff = handoff.map(|(link, _theirs)| link);
        let pid = child.id();
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let (events_tx, events) = mpsc::unbounded_channel();
        let (exited_tx, exited) = watch::channel(false);
        let handle = Arc::new(LocalReplica {
            pid,
            stdin: Mutex::new(None),
            exited,
        });

        // Limits go on before the replica forks its workers, which then inherit them.
        let mut limit = match pid.map(|p| self.compute.attach(&id, p, &limits)) {
            Some(Ok(limit)) => Some(limit),
            Some(Err(e)) => {
                crate::api_log!(
                    api,
                    "warning: replica {id} runs without compute limits: {e}"
                );
                None
            }
            None => None,
        };
        let watch_memory = limits.memory_bytes.is_some();

        let reader = handle.clone();
        tokio::spawn(async move {
            if let Some(mut stdin) = stdin {
                if stdin.write_all(line.as_bytes()).await.is_ok() {
                    *reader.stdin.lock().unwrap_or_else(|e| e.into_inner()) = Some(stdin);
                }
            }
            let mut out_of_memory = false;
            // Over its memory limit: check() has killed the process group; its exit follows.
            let mut check_memory = |limit: &mut Option<gyrus_compute::ReplicaLimit>| {
                if out_of_memory || !watch_memory {
                    return;
                }
                if let Some(oom) = limit.as_mut().and_then(|l| l.check()) {
                    out_of_memory = true;
                    crate::api_log!(api, "replica {id}: {oom}");
                    let _ = events_tx.send(LauncherEvent::OutOfMemory(oom.to_string()));
                }
            };
            if let Some(stdout) = stdout {
                let mut lines = BufReader::new(stdout).lines();
                let mut every_second = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tokio::select! {
                        line = lines.next_line() => match line {
                            Ok(Some(line)) => {
                                if let Some(event) = ReplicaEvent::from_line(&line) {
                                    let _ = events_tx.send(LauncherEvent::Replica(event));
                                }
                            }
                            _ => break,
                        },
                        _ = every_second.tick() => check_memory(&mut limit),
                    }
                }
            }
            let detail = match child.wait().await {
                Ok(status) => status.to_string(),
                Err(e) => e.to_string(),
            };
            // With cgroup v2 the kernel kills the replica and the exit is seen first, but
            // memory.events still tells why: said before the exit, so the exit carries it.
            check_memory(&mut limit);
            let _ = exited_tx.send(true);
            let _ = events_tx.send(LauncherEvent::Exited(detail));
            // Kept for the replica's whole life: its cgroup can only go once it is empty.
            drop(limit);
        });
        Ok(Launched {
            handle,
            events,
            handoff,
        })
    }
}
