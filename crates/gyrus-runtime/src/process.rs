//! Starting one Python worker process connected by a socketpair.

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::process::Stdio;
use std::sync::mpsc;
use std::sync::OnceLock;

use tokio::net::UnixStream;
use tokio::process::{Child, Command};

use crate::{RuntimeError, WorkerConfig};

/// The worker's end of the socketpair is always this descriptor in the child.
const WORKER_FD: RawFd = 3;

type Job = Box<dyn FnOnce() + Send>;

/// Spawns `python -u script --fd 3` and returns the child and the replica's end of the socket.
///
/// The worker's stdout and stderr both go to the replica's stderr, which is the API's log.
///
/// The fork happens on one dedicated thread that lives as long as the process: the kernel
/// sends PR_SET_PDEATHSIG when the *thread* that forked exits, and a tokio thread may exit
/// (blocking-pool threads do after idling, and `block_in_place` turns workers into those),
/// which would kill healthy workers at random.
pub(crate) async fn spawn(config: &WorkerConfig) -> Result<(Child, UnixStream), RuntimeError> {
    static SPAWNER: OnceLock<Option<mpsc::Sender<Job>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("gyrus-worker-spawner".into())
            .spawn(move || {
                for job in rx {
                    // One failed spawn must not take the thread (and every later spawn) down.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            });
        thread.ok().map(|_| tx)
    });
    let unavailable = || {
        RuntimeError::Io(std::io::Error::other(
            "the worker spawner thread is not running",
        ))
    };
    let spawner = spawner.as_ref().ok_or_else(unavailable)?;

    let config = config.clone();
    // The child is registered with the caller's runtime (its pidfd or SIGCHLD handling).
    let runtime = tokio::runtime::Handle::current();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _entered = runtime.enter();
        let _ = tx.send(spawn_here(&config));
    });
    spawner.send(job).map_err(|_| unavailable())?;
    rx.await.map_err(|_| unavailable())?
}

fn spawn_here(config: &WorkerConfig) -> Result<(Child, UnixStream), RuntimeError> {
    if !config.cwd.is_dir() {
        return Err(RuntimeError::Io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("worker directory {} does not exist", config.cwd.display()),
        )));
    }
    let (parent_end, child_end) = std::os::unix::net::UnixStream::pair()?;
    parent_end.set_nonblocking(true)?;
    let stdout = std::io::stderr().as_fd().try_clone_to_owned()?;

    let mut cmd = Command::new(&config.python);
    cmd.arg("-u")
        .arg(&config.script)
        .args(["--fd", "3"])
        .current_dir(&config.cwd)
        .envs(config.env.iter().map(|(k, v)| (k, v)))
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::inherit())
        .kill_on_drop(true);

    let child_fd = child_end.as_raw_fd();
    // std::process::id() fits pid_t on every platform that has one.
    let parent_pid = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
    // system calls (dup2, fcntl, prctl, getppid); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || child_setup(child_fd, parent_pid));
    }
    let child = cmd.spawn().map_err(|source| RuntimeError::Spawn {
        python: config.python.clone(),
        source,
    })?;
    // The child has its copy; ours must go so that EOF is seen when the worker exits.
    drop(child_end);
    Ok((child, UnixStream::from_std(parent_end)?))
}

/// Runs in the forked child before exec.
fn child_setup(child_fd: RawFd, parent_pid: libc::pid_t) -> std::io::Result<()> {
    // SAFETY: plain system calls on descriptors this process owns.
    unsafe {
        if child_fd == WORKER_FD {
            // dup2 onto itself is a no-op that would keep close-on-exec set.
            let flags = libc::fcntl(WORKER_FD, libc::F_GETFD);
            if flags < 0 || libc::fcntl(WORKER_FD, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(std::io::Error::last_os_error());
            }
        } else if libc::dup2(child_fd, WORKER_FD) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        #[cfg(target_os = "linux")]
        {
            // Workers must not outlive the replica, however it dies. The signal is tied to the
            // thread that forked, which is the spawner thread and never exits.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The replica may have died before prctl took effect.
            if libc::getppid() != parent_pid {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = parent_pid;
    }
    Ok(())
}
