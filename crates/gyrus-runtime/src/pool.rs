//! The worker pool of one replica: `workers` Python processes with `threads` each.
//!
//! Each worker has a connection ([`Conn`]) shared by callers, which write request frames
//! under an async mutex, and by a supervisor task, which reads response frames, resolves the
//! waiting callers by request id, and restarts the process when it dies.
//!
//! Capacity is counted per connection: a request holds one of the worker's `threads` from
//! the moment it is assigned until its response arrives (or the worker dies), even when the
//! caller stops waiting, because the Python thread is busy until then either way.
//!
//! A caller waits for a free thread at most `queue_timeout`. A predictor whose workers keep
//! dying soon after they start (a crash loop, see [`WorkerPool::crash_looping`]) would make
//! callers wait for restarts that only crash again, ever further apart; while no worker is up
//! in a crash loop, calls fail at once with [`RuntimeError::Unavailable`] instead.
//!
//! This file holds the pool as callers see it (assigning requests, waiting, shutdown); one
//! worker process's life (start, serve, restart) is in `pool/worker.rs`.
//!
//! INFER frames (`onnx_client.predict`) go to the [`InferenceService`]: the supervisor task
//! decodes the frame and hands it to the service, which answers it at once when the model is
//! quick and the engine idle, and otherwise on its engine thread, which then writes the reply
//! frame itself, so that a slow model never holds up the I/O thread.

use std::collections::HashMap;
use std::io::IoSlice;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio::process::Child;
use tokio::runtime::Handle;
use tokio::sync::{oneshot, watch, Notify, OwnedMutexGuard};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{sleep, timeout, Instant};

use crate::protocol::{self, Frame, FrameReader};
use crate::tensor_frame::{self, InferCall};
use crate::{
    InferenceError, InferenceService, PredictRequest, PredictResponse, RuntimeError, WorkerConfig,
};

mod frames;
mod worker;
use frames::*;
use worker::*;

const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A worker that stayed up this long is healthy again: its next restart is quick, and its
/// earlier exits no longer count towards a crash loop.
const STABLE_AFTER: Duration = Duration::from_secs(60);
/// Exits in a row within STABLE_AFTER of starting that make a worker crash-looping: one or
/// two can be bad luck (an OOM kill, a bad request), three in a row are the predictor.
const CRASH_LOOP_EXITS: u32 = 3;
/// The `retry_after` of a call that found no free thread: the wait is load, not a failure.
const BUSY_RETRY_AFTER: Duration = Duration::from_secs(1);
/// How long `shutdown` lets workers finish in-flight requests before killing them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// After a worker exits, how long to wait for responses it wrote just before.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);
/// After EOF on the socket, how long to wait for the process to finish exiting.
const EXIT_WAIT: Duration = Duration::from_secs(2);

type Responder = oneshot::Sender<Result<PredictResponse, RuntimeError>>;

/// What a worker says once its predictor is constructed.
#[derive(Debug, Deserialize)]
struct Ready {
    wants_query_params: bool,
    wants_headers: bool,
    pid: u32,
}

#[derive(Debug, Deserialize)]
struct InitFailed {
    error: String,
    #[serde(default)]
    traceback: String,
}

/// One live worker process as callers see it.
struct Conn {
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    /// Requests sent and not yet answered; `None` once the worker is gone, so that nothing
    /// is registered after its requests were failed.
    pending: Mutex<Option<HashMap<u64, Responder>>>,
    /// Threads in use: assigned requests, including those whose frame is still being written.
    busy: AtomicUsize,
    /// Set when a write failed half-way: the stream is unusable and the worker is killed.
    broken: Notify,
}

impl Conn {
    fn pending(&self) -> MutexGuard<'_, Option<HashMap<u64, Responder>>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Slot {
    /// The current process of this worker; `None` while it is down.
    conn: Mutex<Option<Arc<Conn>>>,
    health: Mutex<Health>,
}

impl Slot {
    fn get(&self) -> Option<Arc<Conn>> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, conn: Option<Arc<Conn>>) {
        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = conn;
    }

    fn health(&self) -> MutexGuard<'_, Health> {
        // Plain values, each written whole: a panic elsewhere cannot leave them inconsistent.
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How a worker's recent processes ended: what tells a crash loop from a one-off death.
#[derive(Debug, Clone, Default)]
struct Health {
    /// When the current process started serving; `None` while the worker is down.
    up_since: Option<Instant>,
    /// Exits (and failed restarts) in a row, each within STABLE_AFTER of its start.
    quick_exits: u32,
    /// How the last process ended, for the error that calls get in a crash loop.
    last_exit: String,
    /// When the supervisor next tries to start the worker (in the past while it is starting).
    restart_at: Option<Instant>,
}

impl Health {
    fn crash_looping(&self, now: Instant) -> bool {
        // A process that has served for STABLE_AFTER ends the loop without waiting for it to
        // exit; one that is merely up may be about to crash like the ones before it.
        self.quick_exits >= CRASH_LOOP_EXITS
            && self
                .up_since
                .is_none_or(|t| now.saturating_duration_since(t) < STABLE_AFTER)
    }
}

struct Shared {
    config: WorkerConfig,
    threads: usize,
    slots: Box<[Slot]>,
    wants_headers: bool,
    wants_query_params: bool,
    next_id: AtomicU64,
    /// Where the search for the least busy worker starts, so ties rotate between workers.
    next_start: AtomicUsize,
    in_flight: AtomicUsize,
    /// Signalled when a thread becomes free or a worker comes up.
    freed: Notify,
    closing: AtomicBool,
    /// `Some(deadline)` once shutting down: workers still running then are killed.
    deadline: watch::Sender<Option<Instant>>,
    /// The replica's runtime, for writes that must wait for the socket when they were started
    /// off it (INFER replies may be written from the engine thread).
    runtime: Handle,
}

/// A started and initialised worker process, not yet serving.
struct Started {
    child: Child,
    reader: FrameReader,
    conn: Arc<Conn>,
    ready: Ready,
}

/// The Python workers of one replica. See the module documentation.
pub struct WorkerPool {
    shared: Arc<Shared>,
    supervisors: Mutex<Vec<JoinHandle<()>>>,
}

impl WorkerPool {
    /// Starts `workers` processes and resolves when every one has constructed the predictor.
    /// The first one that fails (INIT_FAILED, or an exit before READY) fails the whole start,
    /// and the others are killed.
    pub async fn start(
        config: WorkerConfig,
        workers: usize,
    ) -> Result<Arc<WorkerPool>, RuntimeError> {
        let workers = workers.max(1);
        let threads = config.threads.max(1);
        let mut launches = JoinSet::new();
        for index in 0..workers {
            let config = config.clone();
            launches.spawn(async move { (index, launch(&config, threads, index).await) });
        }
        let mut started: Vec<Option<Started>> = (0..workers).map(|_| None).collect();
        while let Some(joined) = launches.join_next().await {
            // Dropping `launches` on return aborts the other launches, and dropping their
            // `Child` kills the process (kill_on_drop).
            let (index, result) = joined
                .map_err(|e| RuntimeError::Protocol(format!("worker start task failed: {e}")))?;
            started[index] = Some(result?);
        }
        let started: Vec<Started> = started.into_iter().flatten().collect();

        let shared = Arc::new(Shared {
            wants_headers: started.iter().any(|s| s.ready.wants_headers),
            wants_query_params: started.iter().any(|s| s.ready.wants_query_params),
            config: WorkerConfig { threads, ..config },
            threads,
            slots: (0..workers)
                .map(|_| Slot {
                    conn: Mutex::new(None),
                    health: Mutex::new(Health::default()),
                })
                .collect(),
            next_id: AtomicU64::new(1),
            next_start: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            freed: Notify::new(),
            closing: AtomicBool::new(false),
            deadline: watch::Sender::new(None),
            runtime: Handle::current(),
        });
        for (index, s) in started.iter().enumerate() {
            shared.slots[index].set(Some(s.conn.clone()));
        }
        let supervisors = started
            .into_iter()
            .enumerate()
            .map(|(index, s)| tokio::spawn(supervise(shared.clone(), index, s)))
            .collect();
        Ok(Arc::new(WorkerPool {
            shared,
            supervisors: Mutex::new(supervisors),
        }))
    }

    /// Sends one request to the least busy worker with a free thread, waiting for a thread
    /// if all are busy (or all workers are restarting) for at most `queue_timeout`. Fails at
    /// once with [`RuntimeError::Unavailable`] when no worker is up and the pool is
    /// [crash-looping](WorkerPool::crash_looping).
    pub async fn call(&self, req: PredictRequest) -> Result<PredictResponse, RuntimeError> {
        let sh = &*self.shared;
        let _counted = Counted::new(&sh.in_flight);
        let id = sh.next_id.fetch_add(1, Ordering::Relaxed);
        let head =
            protocol::encode_request_head(id, &req, sh.wants_query_params, sh.wants_headers)?;
        // `None` for a timeout too long to represent: that is waiting without a limit.
        let deadline = Instant::now().checked_add(sh.config.queue_timeout);
        loop {
            let (index, conn) = self.acquire(deadline).await?;
            let mut busy = Busy {
                shared: sh,
                conn: &conn,
                armed: true,
            };
            let writer = conn.writer.clone().lock_owned().await;
            let (tx, rx) = oneshot::channel();
            match conn.pending().as_mut() {
                Some(map) => map.insert(id, tx),
                // The worker died while we waited for its writer; nothing was sent, so
                // another worker can take the request.
                None => continue,
            };
            // From here on, whoever removes the pending entry frees the thread.
            busy.armed = false;
            let sent = Instant::now();
            if let Err(e) = write_request(&conn, writer, head, req.body, &sh.runtime) {
                conn.broken.notify_one();
                if conn
                    .pending()
                    .as_mut()
                    .and_then(|map| map.remove(&id))
                    .is_some()
                {
                    sh.release(&conn);
                    return Err(RuntimeError::WorkerExited {
                        worker: index,
                        detail: format!("cannot write to the worker: {e}"),
                    });
                }
            }
            return match rx.await {
                Ok(Ok(mut response)) => {
                    response.worker_time = sent.elapsed();
                    Ok(response)
                }
                Ok(Err(e)) => Err(e),
                Err(_) => Err(RuntimeError::WorkerExited {
                    worker: index,
                    detail: "the worker went away without answering".into(),
                }),
            };
        }
    }

    /// Whether the predictor's `predict` takes `headers` (the replica may skip collecting them).
    pub fn wants_headers(&self) -> bool {
        self.shared.wants_headers
    }

    /// Whether the predictor's `predict` takes `query_params`.
    pub fn wants_query_params(&self) -> bool {
        self.shared.wants_query_params
    }

    /// Calls currently inside [`WorkerPool::call`]: waiting for a thread or being handled.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Relaxed)
    }

    /// Worker processes currently up and serving (the others are restarting).
    pub fn workers_up(&self) -> usize {
        self.shared.workers_up()
    }

    /// Whether the predictor's workers are crash-looping: every worker has exited (or failed
    /// to restart) within 60 s of starting at least 3 times in a row, and none has stayed up
    /// 60 s since. A worker that is up for a moment between two crashes does not end the
    /// loop, so this does not flicker with each restart.
    ///
    /// One worker that is not crash-looping makes this false: it serves, or will soon, so
    /// calls wait for its threads (up to `queue_timeout`) rather than fail. While this is
    /// true and no worker is up, calls fail at once with [`RuntimeError::Unavailable`]: the
    /// next restart is up to 30 s away and likely to crash again.
    pub fn crash_looping(&self) -> bool {
        self.shared.crash_looping()
    }

    /// Asks every worker to finish its in-flight requests and exit, waits for them up to a
    /// few seconds, then kills what is left. Calls after this fail with `ShuttingDown`.
    pub async fn shutdown(&self) {
        let sh = &self.shared;
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        if !sh.closing.swap(true, Ordering::SeqCst) {
            sh.deadline.send_replace(Some(deadline));
            sh.freed.notify_waiters();
            if let Ok(frame) = protocol::encode_frame(protocol::SHUTDOWN, 0, &[]) {
                for slot in sh.slots.iter() {
                    if let Some(conn) = slot.get() {
                        // A writer stuck on a worker that stopped reading is killed at the deadline.
                        let _ = tokio::time::timeout_at(deadline, async {
                            conn.writer.lock().await.write_all(&frame).await
                        })
                        .await;
                    }
                }
            }
        }
        let supervisors =
            std::mem::take(&mut *self.supervisors.lock().unwrap_or_else(|e| e.into_inner()));
        for handle in supervisors {
            let _ = handle.await;
        }
    }

    /// Assigns a request to the least busy worker with a free thread, waiting for one until
    /// `deadline` (`None`: no limit), unless the pool is crash-looping with no worker up.
    async fn acquire(&self, deadline: Option<Instant>) -> Result<(usize, Arc<Conn>), RuntimeError> {
        let sh = &*self.shared;
        loop {
            // Register interest before looking, so a thread freed (or a worker found
            // crash-looping) in between is not missed.
            let notified = sh.freed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if sh.closing.load(Ordering::SeqCst) {
                return Err(RuntimeError::ShuttingDown);
            }
            if let Some(found) = sh.try_acquire() {
                return Ok(found);
            }
            if let Some(e) = sh.crash_loop_error() {
                return Err(e);
            }
            match deadline {
                Some(deadline) => {
                    if tokio::time::timeout_at(deadline, notified).await.is_err() {
                        return Err(sh.queue_timeout_error());
                    }
                }
                None => notified.await,
            }
        }
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        // Without a shutdown, the supervisors kill their workers at once.
        self.shared.closing.store(true, Ordering::SeqCst);
        let now = Instant::now();
        self.shared
            .deadline
            .send_if_modified(|deadline| match *deadline {
                Some(d) if d <= now => false,
                _ => {
                    *deadline = Some(now);
                    true
                }
            });
        self.shared.freed.notify_waiters();
    }
}

impl Shared {
    fn try_acquire(&self) -> Option<(usize, Arc<Conn>)> {
        let n = self.slots.len();
        let start = self.next_start.fetch_add(1, Ordering::Relaxed) % n;
        // Retry only when another caller took the chosen thread between looking and taking.
        for _ in 0..8 {
            let mut best: Option<(usize, usize, Arc<Conn>)> = None;
            for i in 0..n {
                let index = (start + i) % n;
                let Some(conn) = self.slots[index].get() else {
                    continue;
                };
                let busy = conn.busy.load(Ordering::Acquire);
                if busy < self.threads && best.as_ref().is_none_or(|(b, _, _)| busy < *b) {
                    best = Some((busy, index, conn));
                }
            }
            let (_, index, conn) = best?;
            let taken = conn
                .busy
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                    (b < self.threads).then_some(b + 1)
                });
            if taken.is_ok() {
                return Some((index, conn));
            }
        }
        None
    }

    fn release(&self, conn: &Conn) {
        conn.busy.fetch_sub(1, Ordering::AcqRel);
        self.freed.notify_one();
    }

    fn workers_up(&self) -> usize {
        self.slots.iter().filter(|s| s.get().is_some()).count()
    }

    fn crash_looping(&self) -> bool {
        let now = Instant::now();
        self.slots.iter().all(|s| s.health().crash_looping(now))
    }

    /// Notes that worker `index` went down (its process ended, or a restart failed) and is
    /// next started in `restart_in`. Returns its quick exits in a row.
    fn record_exit(&self, index: usize, quick: bool, detail: String, restart_in: Duration) -> u32 {
        let quick_exits = {
            let mut health = self.slots[index].health();
            health.up_since = None;
            health.quick_exits = if quick {
                health.quick_exits.saturating_add(1)
            } else {
                0
            };
            health.last_exit = detail;
            health.restart_at = Some(Instant::now() + restart_in);
            health.quick_exits
        };
        // Callers waiting for a thread may now have no worker left to wait for.
        self.freed.notify_waiters();
        quick_exits
    }

    /// The error for a call while no worker is up and the pool is crash-looping; `None`
    /// otherwise.
    fn crash_loop_error(&self) -> Option<RuntimeError> {
        if self.workers_up() > 0 || !self.crash_looping() {
            return None;
        }
        let now = Instant::now();
        // Named: the worker that restarts soonest, since its restart is when a retry may work.
        let (index, health) = self
            .slots
            .iter()
            .map(|s| s.health().clone())
            .enumerate()
            .min_by_key(|(_, h)| h.restart_at.unwrap_or(now))?;
        let retry_after = health
            .restart_at
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(now))
            .max(Duration::from_secs(1));
        Some(RuntimeError::Unavailable {
            reason: format!(
                "the predictor's workers keep crashing (worker {index} exited {} times within \
                 {}s of starting: {})",
                health.quick_exits,
                STABLE_AFTER.as_secs(),
                health.last_exit
            ),
            retry_after,
            workers_down: true,
        })
    }

    fn queue_timeout_error(&self) -> RuntimeError {
        RuntimeError::Unavailable {
            reason: format!(
                "no worker thread became free within {:?} ({} of {} workers up, {} threads each)",
                self.config.queue_timeout,
                self.workers_up(),
                self.slots.len(),
                self.threads
            ),
            retry_after: BUSY_RETRY_AFTER,
            workers_down: false,
        }
    }

    /// Resolves when shutdown has begun.
    async fn closing(&self) {
        let mut rx = self.deadline.subscribe();
        let _ = rx.wait_for(Option::is_some).await;
    }

    /// Resolves when shutdown has begun and its grace period is over. The deadline can move
    /// closer (dropping the pool after a cancelled `shutdown` makes it "now").
    async fn past_deadline(&self) {
        let mut rx = self.deadline.subscribe();
        loop {
            let deadline = *rx.borrow_and_update();
            let changed = match deadline {
                Some(deadline) => tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => return,
                    changed = rx.changed() => changed,
                },
                None => rx.changed().await,
            };
            if changed.is_err() {
                // `Shared` owns the sender, so this cannot happen while anyone waits here.
                return std::future::pending().await;
            }
        }
    }

    /// Handles one frame from a worker that is serving.
    fn dispatch(&self, conn: &Arc<Conn>, frame: Frame) -> Result<(), RuntimeError> {
        if frame.kind == protocol::INFER {
            return frames::answer_infer(self, conn, frame);
        }
        if frame.kind != protocol::RESPONSE {
            return Err(RuntimeError::Protocol(format!(
                "unexpected frame kind {} from worker",
                frame.kind
            )));
        }
        let response = protocol::parse_response(frame.body);
        let Some(tx) = conn
            .pending()
            .as_mut()
            .and_then(|map| map.remove(&frame.id))
        else {
            return Err(RuntimeError::Protocol(format!(
                "response for unknown request id {}",
                frame.id
            )));
        };
        self.release(conn);
        match response {
            Ok(response) => {
                // The caller may have given up; the worker's thread is free either way.
                let _ = tx.send(Ok(response));
                Ok(())
            }
            Err(e) => {
                let _ = tx.send(Err(RuntimeError::Protocol(e.to_string())));
                Err(e)
            }
        }
    }
}

/// Counts a call in `in_flight` for as long as it lasts.
struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Counted(counter)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Frees an assigned thread if the call ends before its request was registered.
struct Busy<'a> {
    shared: &'a Shared,
    conn: &'a Conn,
    armed: bool,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.shared.release(self.conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_loop_needs_enough_quick_exits_and_ends_when_stable() {
        let now = Instant::now();
        let health = |quick_exits, up_for: Option<Duration>| Health {
            up_since: up_for.map(|d| now - d),
            quick_exits,
            ..Health::default()
        };
        assert!(!health(CRASH_LOOP_EXITS - 1, None).crash_looping(now));
        assert!(health(CRASH_LOOP_EXITS, None).crash_looping(now));
        // Up between two crashes: still looping.
        assert!(health(CRASH_LOOP_EXITS, Some(Duration::from_secs(1))).crash_looping(now));
        // Up long enough to be healthy again, before it ever exits.
        assert!(!health(CRASH_LOOP_EXITS + 5, Some(STABLE_AFTER)).crash_looping(now));
    }
}
