//! One job from start to end: `workers` job worker processes (started through the
//! [`ReplicaLauncher`], like replicas), each driven by a task that leases a batch, posts it to
//! its worker, renews the lease while the batch runs, and acks or fails it. A worker that dies
//! gives its batch back (not counted as a failure of the batch) and is started again; when the
//! queue is drained, `on_job_complete()` runs once on one worker, and the job ends with its
//! status. A stop or the job's timeout ends every worker at once.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gyrus_compute::Limits;
use gyrus_launch::{JobLaunch, ReplicaEvent, ReplicaLaunch};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;

use super::queue::{BatchQueue, Failure, Lease, RetryPolicy};
use super::store::{JobRecord, JobStatus, JobStore};
use crate::controller::Generation;
use crate::launcher::{LaunchRequest, LauncherEvent, ReplicaHandle, ReplicaLauncher};

/// How long a batch is held before another worker may take it, unless renewed.
pub const LEASE_TTL: Duration = Duration::from_secs(30);
/// How long a worker may take to construct its predictor.
const START_TIMEOUT: Duration = Duration::from_secs(600);
/// Restarts of one worker slot after its process died, before the job gives up on it.
const MAX_WORKER_RESTARTS: u32 = 3;
/// Deliveries of a batch beyond its failures allowed for workers dying under it.
const EXTRA_DELIVERIES: u32 = 2;
/// How long `on_job_complete()` may run when the job has no timeout.
const COMPLETION_TIMEOUT: Duration = Duration::from_secs(3600);
/// The largest answer read from a worker (the predictor's return value is not kept).
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Workers of a job by state, as `gyrus job get` shows them.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct WorkerCounts {
    pub initializing: u32,
    pub running: u32,
    pub succeeded: u32,
    pub failed: u32,
}

/// A job while it runs: how to stop it and what its workers are doing.
pub struct LiveJob {
    pub stop: watch::Sender<Option<JobStatus>>,
    pub workers: Mutex<WorkerCounts>,
}

impl LiveJob {
    pub fn new() -> Arc<LiveJob> {
        Arc::new(LiveJob {
            stop: watch::Sender::new(None),
            workers: Mutex::new(WorkerCounts::default()),
        })
    }

    fn count(&self, change: impl FnOnce(&mut WorkerCounts)) {
        change(&mut self.workers.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

/// Everything a running job needs.
pub struct JobRun {
    pub job: JobRecord,
    pub plan: Generation,
    pub config: serde_json::Value,
    pub queue: Arc<dyn BatchQueue>,
    pub store: Arc<JobStore>,
    pub launcher: Arc<dyn ReplicaLauncher>,
    pub lib_dir: PathBuf,
    pub log: PathBuf,
    pub live: Arc<LiveJob>,
    pub client: HttpClient,
    /// Set when a worker was stopped for exceeding its memory limit (while starting, under a
    /// batch or in `on_job_complete`).
    pub oom: Mutex<Option<String>>,
}

/// How one worker slot ended.
enum SlotEnd {
    /// The queue is drained; its worker is still up, for `on_job_complete`.
    Drained(Worker),
    /// The job was stopped or timed out.
    Stopped,
    /// Its worker could not be started, or kept dying.
    Failed(String),
}

/// A started job worker.
struct Worker {
    id: String,
    handle: Arc<dyn ReplicaHandle>,
    base: String,
    /// Becomes `Some(how it ended)` when the process is gone.
    exited: watch::Receiver<Option<String>>,
    /// Set (before `exited`) when the launcher stopped it for exceeding its memory limit.
    oom: Arc<Mutex<Option<String>>>,
}

impl Worker {
    fn stop(&self) {
        self.handle.stop(Duration::from_secs(5));
    }

    fn out_of_memory(&self) -> Option<String> {
        self.oom.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

pub fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

impl JobRun {
    fn log(&self, msg: &str) {
        crate::logs::append(&self.log, msg);
    }

    fn stopping(&self) -> Option<JobStatus> {
        *self.live.stop.borrow()
    }

    fn policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_failures: self.job.max_receive_count,
            max_deliveries: self.job.max_receive_count + EXTRA_DELIVERIES,
        }
    }

    /// Runs the job to its end and records it.
    pub async fn run(self: Arc<Self>) {
        let id = self.job.job_id.clone();
        if let Err(e) = self.store.set_running(&id, &crate::now()) {
            self.log(&format!("error: cannot record the job as running: {e}"));
        }
        self.log(&format!(
            "job {id}: running with {} worker(s)",
            self.job.workers
        ));
        let mut slots = tokio::task::JoinSet::new();
        for index in 0..self.job.workers {
            let me = self.clone();
            slots.spawn(async move { me.drive_slot(index).await });
        }
        let timeout = self.job.timeout;
        let mut ends = Vec::new();
        let deadline = async {
            match timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                joined = slots.join_next() => match joined {
                    Some(Ok(end)) => ends.push(end),
                    Some(Err(e)) => ends.push(SlotEnd::Failed(format!("internal error: {e}"))),
                    None => break,
                },
                _ = &mut deadline, if self.stopping().is_none() => {
                    self.log(&format!("job {id}: timed out after {}s: stopping its workers", timeout.map(|t| t.as_secs()).unwrap_or(0)));
                    self.live.stop.send_replace(Some(JobStatus::TimedOut));
                }
            }
        }
        let (status, error) = self.conclude(ends).await;
        self.log(&format!("job {id}: {}", status.as_str()));
        if let Err(e) = self
            .store
            .finish(&id, status, error.as_deref(), &crate::now())
        {
            self.log(&format!("error: cannot record the job's end: {e}"));
        }
    }

    /// After every slot ended: `on_job_complete` if the queue was drained, and the status.
    async fn conclude(&self, ends: Vec<SlotEnd>) -> (JobStatus, Option<String>) {
        let mut drained = Vec::new();
        let mut failures = Vec::new();
        for end in ends {
            match end {
                SlotEnd::Drained(w) => drained.push(w),
                SlotEnd::Failed(e) => failures.push(e),
                SlotEnd::Stopped => {}
            }
        }
        if let Some(stopped) = self.stopping() {
            for w in &drained {
                w.stop();
            }
            return (stopped, None);
        }
        let Some(last) = drained.pop() else {
            let error = failures.join("; ");
            return match self.out_of_memory() {
                Some(why) => (JobStatus::WorkerOom, Some(why)),
                None => (JobStatus::WorkerError, Some(error)),
            };
        };
        for w in &drained {
            w.stop();
        }
        let completion_ok = self.complete(&last).await;
        last.stop();
        if !completion_ok {
            if let Some(why) = last.out_of_memory() {
                self.note_oom(why);
            }
        }
        let stats = self.queue.stats(&self.job.job_id);
        let failed_batches = stats.as_ref().map(|s| s.failed).unwrap_or(0);
        if failed_batches == 0 && completion_ok {
            return (JobStatus::Succeeded, None);
        }
        // Batches were lost, or on_job_complete() failed, and a worker went over its memory
        // limit: the job says so (Cortex's worker_oom) rather than completed_with_failures.
        // A worker stopped for memory whose batches all succeeded on a retry does not count.
        match self.out_of_memory() {
            Some(why) => {
                let mut lost = vec![format!("{failed_batches} batch(es) failed")];
                if !completion_ok {
                    lost.push("on_job_complete() failed".into());
                }
                (
                    JobStatus::WorkerOom,
                    Some(format!("{why}; {}", lost.join(", "))),
                )
            }
            None => (JobStatus::CompletedWithFailures, None),
        }
    }

    fn out_of_memory(&self) -> Option<String> {
        self.oom.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn note_oom(&self, why: String) {
        *self.oom.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }

    /// Runs `on_job_complete()` once; whether it succeeded.
    async fn complete(&self, worker: &Worker) -> bool {
        let id = &self.job.job_id;
        let _ = self.store.set_completion(id, "running", None);
        let limit = self.job.timeout.unwrap_or(COMPLETION_TIMEOUT);
        let url = format!("{}/_job_complete", worker.base);
        let result = tokio::time::timeout(limit, self.post(&url, Bytes::new())).await;
        let (state, error) = match result {
            Ok(Ok((status, _))) if (200..300).contains(&status) => ("succeeded", None),
            Ok(Ok((_, body))) => ("failed", Some(answer_error(&body).0)),
            Ok(Err(e)) => (
                "failed",
                Some(format!("the worker died during on_job_complete(): {e}")),
            ),
            Err(_) => (
                "failed",
                Some(format!(
                    "on_job_complete() did not finish within {}s",
                    limit.as_secs()
                )),
            ),
        };
        match &error {
            None => self.log(&format!("job {id}: on_job_complete() succeeded")),
            Some(e) => self.log(&format!("job {id}: on_job_complete() failed: {e}")),
        }
        let _ = self.store.set_completion(id, state, error.as_deref());
        error.is_none()
    }

    /// One worker slot: starts a worker and feeds it batches until the queue is drained.
    async fn drive_slot(self: Arc<Self>, index: u32) -> SlotEnd {
        let mut restarts = 0;
        loop {
            if self.stopping().is_some() {
                return SlotEnd::Stopped;
            }
            self.live.count(|c| c.initializing += 1);
            let started = self.start_worker(index, restarts).await;
            self.live.count(|c| c.initializing -= 1);
            let worker = match started {
                Ok(w) => w,
                Err(e) if self.stopping().is_some() => {
                    let _ = e;
                    return SlotEnd::Stopped;
                }
                Err(e) => {
                    self.log(&format!(
                        "job {}: worker {index} failed to start: {e}",
                        self.job.job_id
                    ));
                    self.live.count(|c| c.failed += 1);
                    return SlotEnd::Failed(format!("worker {index} failed to start: {e}"));
                }
            };
            self.live.count(|c| c.running += 1);
            let end = self.feed(&worker).await;
            self.live.count(|c| c.running -= 1);
            match end {
                Fed::Drained => {
                    self.live.count(|c| c.succeeded += 1);
                    return SlotEnd::Drained(worker);
                }
                Fed::Stopped => {
                    worker.handle.kill();
                    return SlotEnd::Stopped;
                }
                Fed::WorkerDied(how) => {
                    if let Some(why) = worker.out_of_memory() {
                        self.note_oom(why);
                    }
                    restarts += 1;
                    if restarts > MAX_WORKER_RESTARTS {
                        self.live.count(|c| c.failed += 1);
                        return SlotEnd::Failed(format!(
                            "worker {index} died {restarts} times; last: {how}"
                        ));
                    }
                    self.log(&format!(
                        "job {}: worker {} died ({how}); starting it again",
                        self.job.job_id, worker.id
                    ));
                }
            }
        }
    }

    async fn start_worker(&self, index: u32, restarts: u32) -> Result<Worker, String> {
        let plan = &self.plan;
        let id = format!("{}-w{index}-{restarts}", self.job.job_id);
        let request = LaunchRequest {
            api: self.job.api.clone(),
            launch: ReplicaLaunch {
                id: id.clone(),
                spec: (*plan.spec).clone(),
                project_dir: plan.project_dir.clone(),
                python: plan.python.clone(),
                lib_dir: self.lib_dir.clone(),
                model_path: plan.model_path.clone(),
                models: plan.models.clone(),
                onnx_library: plan.onnx_library.clone(),
                tensorflow_library: plan.tensorflow_library.clone(),
                handoff: None,
                job: Some(JobLaunch {
                    job_id: self.job.job_id.clone(),
                    config: self.config.clone(),
                    job_spec: self.job.spec.clone(),
                }),
            },
            env: plan.env.clone(),
            limits: Limits::from_spec(&plan.spec.compute),
            slot: index,
        };
        let launched = self.launcher.launch(request).map_err(|e| e.to_string())?;
        let handle = launched.handle;
        let mut events = launched.events;
        let mut stop = self.live.stop.subscribe();
        let mut port = None;
        let deadline = tokio::time::sleep(START_TIMEOUT);
        tokio::pin!(deadline);
        loop {
            let event = tokio::select! {
                e = events.recv() => e,
                _ = &mut deadline => {
                    handle.kill();
                    return Err(format!("not ready within {}s", START_TIMEOUT.as_secs()));
                }
                _ = stop.wait_for(|s| s.is_some()) => {
                    handle.kill();
                    return Err("stopped".into());
                }
            };
            match event {
                Some(LauncherEvent::Replica(ReplicaEvent::Listening { port: p })) => port = Some(p),
                Some(LauncherEvent::Replica(ReplicaEvent::Ready)) => break,
                Some(LauncherEvent::Replica(ReplicaEvent::Failed { error })) => return Err(error),
                Some(LauncherEvent::Replica(ReplicaEvent::Metrics { .. })) => {}
                Some(LauncherEvent::OutOfMemory(why)) => self.note_oom(why),
                Some(LauncherEvent::Exited(how)) => {
                    return Err(format!("exited before it was ready ({how})"))
                }
                None => return Err("exited before it was ready".into()),
            }
        }
        let port = port.ok_or("reported ready without a port")?;
        let (tx, exited) = watch::channel(None);
        let oom_note = Arc::new(Mutex::new(None::<String>));
        let oom = oom_note.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                match event {
                    LauncherEvent::Exited(how) => {
                        let how = match oom.lock().unwrap_or_else(|e| e.into_inner()).clone() {
                            Some(why) => format!("{how}; {why}"),
                            None => how,
                        };
                        let _ = tx.send(Some(how));
                        return;
                    }
                    LauncherEvent::OutOfMemory(why) => {
                        *oom.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
                    }
                    LauncherEvent::Replica(_) => {}
                }
            }
            let _ = tx.send(Some("exited".into()));
        });
        let base = format!("http://{}", std::net::SocketAddr::new(handle.host(), port));
        self.log(&format!("job {}: worker {id} ready", self.job.job_id));
        Ok(Worker {
            id,
            handle,
            base,
            exited,
            oom: oom_note,
        })
    }

    /// Gives `worker` batches until the queue is drained, the job stops or the worker dies.
    async fn feed(&self, worker: &Worker) -> Fed {
        let id = &self.job.job_id;
        let mut stop = self.live.stop.subscribe();
        loop {
            if self.stopping().is_some() {
                return Fed::Stopped;
            }
            if let Some(how) = worker.exited.borrow().clone() {
                return Fed::WorkerDied(how);
            }
            let lease = match self.queue.lease(id, LEASE_TTL) {
                Ok(Some(lease)) => lease,
                Ok(None) => match self.queue.stats(id) {
                    Ok(s) if s.queued == 0 && s.in_progress == 0 => return Fed::Drained,
                    _ => {
                        // Others hold the last batches; one may come back if its worker dies.
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                            _ = stop.wait_for(|s| s.is_some()) => return Fed::Stopped,
                        }
                        continue;
                    }
                },
                Err(e) => {
                    self.log(&format!("job {id}: the queue failed: {e}"));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if let Some(end) = self.run_batch(worker, &lease).await {
                return end;
            }
        }
    }

    /// Runs one leased batch on `worker`; `Some` when the worker can take no more.
    async fn run_batch(&self, worker: &Worker, lease: &Lease) -> Option<Fed> {
        let id = &self.job.job_id;
        let started = Instant::now();
        let url = format!("{}/_batch/{}", worker.base, lease.batch_id);
        let call = self.post(&url, Bytes::from(lease.payload.clone()));
        tokio::pin!(call);
        let mut renew =
            tokio::time::interval_at(tokio::time::Instant::now() + LEASE_TTL / 3, LEASE_TTL / 3);
        let mut stop = self.live.stop.subscribe();
        let mut exited = worker.exited.clone();
        let result = loop {
            tokio::select! {
                r = &mut call => break Some(r),
                _ = renew.tick() => {
                    if let Err(e) = self.queue.renew(lease, LEASE_TTL) {
                        self.log(&format!("job {id}: batch {}: {e}", lease.batch_id));
                    }
                }
                _ = stop.wait_for(|s| s.is_some()) => break None,
                _ = exited.wait_for(|e| e.is_some()) => break Some(Err("the worker exited".to_owned())),
            }
        };
        let Some(result) = result else {
            return Some(Fed::Stopped);
        };
        let outcome = match result {
            Ok((status, _)) if (200..300).contains(&status) => {
                if let Err(e) = self.queue.ack(lease, started.elapsed()) {
                    self.log(&format!("job {id}: batch {}: {e}", lease.batch_id));
                }
                return None;
            }
            Ok((502, body)) => {
                // The worker's Python process died under the batch; the replica restarts it.
                let (error, _) = answer_error(&body);
                self.log(&format!(
                    "job {id}: batch {}: its worker process died ({error}); the batch goes back to the queue",
                    lease.batch_id
                ));
                let failure = Failure {
                    error: format!("the worker died while processing this batch ({error})"),
                    traceback: None,
                    counts: false,
                };
                self.queue
                    .fail(lease, &failure, self.policy())
                    .map(|_| None)
            }
            Ok((_, body)) => {
                let (error, traceback) = answer_error(&body);
                let failure = Failure {
                    error: error.clone(),
                    traceback,
                    counts: true,
                };
                self.log(&format!(
                    "job {id}: batch {} failed: {error}",
                    lease.batch_id
                ));
                self.queue
                    .fail(lease, &failure, self.policy())
                    .map(|_| None)
            }
            Err(e) => {
                // Wait a moment for the exit to be reported, so the log says how it died.
                let mut exited = worker.exited.clone();
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), exited.wait_for(|e| e.is_some()))
                        .await;
                let how = worker.exited.borrow().clone().unwrap_or(e);
                let failure = Failure {
                    error: format!("the worker died while processing this batch ({how})"),
                    traceback: None,
                    counts: false,
                };
                worker.handle.kill();
                self.queue
                    .fail(lease, &failure, self.policy())
                    .map(|_| Some(Fed::WorkerDied(how)))
            }
        };
        match outcome {
            Ok(end) => end,
            Err(e) => {
                self.log(&format!("job {id}: batch {}: {e}", lease.batch_id));
                None
            }
        }
    }

    /// POSTs `body` to a worker: its status and answer, or why it could not answer.
    async fn post(&self, url: &str, body: Bytes) -> Result<(u16, Bytes), String> {
        let req = http::Request::post(url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    }
}

/// How feeding a worker ended.
enum Fed {
    Drained,
    Stopped,
    WorkerDied(String),
}

/// The error and traceback a worker answered a failed call with.
fn answer_error(body: &[u8]) -> (String, Option<String>) {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) => (
            v["error"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| v.to_string()),
            v["traceback"].as_str().map(str::to_owned),
        ),
        Err(_) => (String::from_utf8_lossy(body).into_owned(), None),
    }
}
