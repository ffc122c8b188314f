//! [`JobService`]: what the HTTP handlers call for jobs (submit, get, list, stop) and what
//! brings unfinished jobs back after a restart. It checks the API, records the job and its
//! batches, and starts a [`JobRun`] for it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gyrus_remote::FetchOptions;
use gyrus_spec::ApiKind;
use serde_json::{json, Value};

use super::queue::{BatchQueue, SqliteQueue};
use super::runner::{http_client, JobRun, LiveJob};
use super::store::{JobRecord, JobStatus, JobStore};
use super::submission::{Submission, SubmissionError};
use crate::api::{BatchJobs, JobBrief};
use crate::error::DaemonError;
use crate::home::GyrusHome;
use crate::supervisor::Supervisor;

/// How many files a dry run lists (it counts them all).
const DRY_RUN_FILES_SHOWN: usize = 1000;
/// How many jobs `gyrus get` lists for a batch API.
const RECENT_JOBS_SHOWN: usize = 10;
/// How many failed batches a job's status lists.
const FAILED_SHOWN: usize = 20;
/// How long a restored job waits for its API to be live again.
const RESTORE_WAIT: Duration = Duration::from_secs(600);

pub struct JobService {
    home: GyrusHome,
    supervisor: Arc<Supervisor>,
    store: Arc<JobStore>,
    queue: Arc<SqliteQueue>,
    live: Mutex<HashMap<String, Arc<LiveJob>>>,
}

impl From<SubmissionError> for DaemonError {
    fn from(e: SubmissionError) -> Self {
        match e {
            SubmissionError::Invalid(m) => DaemonError::BadRequest(m),
            e @ SubmissionError::TooLarge { .. } => DaemonError::TooLarge(e.to_string()),
            SubmissionError::Fetch { ref source, .. } if source.is_client_error() => {
                DaemonError::BadRequest(e.to_string())
            }
            e @ SubmissionError::Fetch { .. } => DaemonError::BadGateway(e.to_string()),
        }
    }
}

impl From<super::queue::QueueError> for DaemonError {
    fn from(e: super::queue::QueueError) -> Self {
        DaemonError::Internal(e.to_string())
    }
}

fn new_job_id() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut salt = [0u8; 3];
    let _ = getrandom::fill(&mut salt);
    format!("{secs:x}{}", hex::encode(salt))
}

impl JobService {
    /// Opens the job tables of the state database (already migrated by the `StateStore`).
    pub fn open(home: GyrusHome, supervisor: Arc<Supervisor>) -> Result<Arc<Self>, DaemonError> {
        let db = home.state_db();
        Ok(Arc::new(JobService {
            store: Arc::new(JobStore::open(&db)?),
            queue: Arc::new(SqliteQueue::open(&db)?),
            home,
            supervisor,
            live: Mutex::new(HashMap::new()),
        }))
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<LiveJob>>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The spec of `api` if it is a batch API.
    fn batch_api(&self, api: &str) -> Result<gyrus_spec::ApiSpec, DaemonError> {
        let spec = self
            .supervisor
            .specs_in_use()
            .into_iter()
            .find(|(name, _)| name == api)
            .map(|(_, spec)| spec);
        match spec {
            None => Err(DaemonError::no_api(api, &self.supervisor.names())),
            Some(spec) if spec.kind == ApiKind::BatchAPI => Ok(spec),
            Some(_) => Err(DaemonError::BadRequest(format!(
                "api {api:?} is a RealtimeAPI: jobs are submitted to BatchAPIs"
            ))),
        }
    }

    /// Submits a job (or, with `dry_run`, says what it would process). `env` is the
    /// submitting user's `AWS_*`, `GOOGLE_*`, `AZURE_*` variables and `HOME`, for reading the
    /// files of `file_path_lister` and `delimited_files` at URLs.
    pub async fn submit(
        self: &Arc<Self>,
        api: &str,
        body: &[u8],
        dry_run: bool,
        env: BTreeMap<String, String>,
    ) -> Result<Value, DaemonError> {
        let api_spec = self.batch_api(api)?;
        let mut submission = Submission::parse(body)?;
        let s3 = api_spec.predictor.s3.as_ref();
        let opts = FetchOptions {
            env,
            s3_endpoint_url: s3.and_then(|s| s.endpoint_url.clone()),
            s3_region: s3.and_then(|s| s.region.clone()),
        };
        let files = submission.read_files(&opts).await?;
        let job_id = new_job_id();
        let batches = submission.batches(&job_id)?;
        if dry_run {
            let mut shown = json!({
                "dry_run": true,
                "api_name": api,
                "item_count": submission.items.len(),
                "batch_count": batches.len(),
                "batch_size": submission.batch_size,
                "warnings": submission.warnings,
            });
            if !files.is_empty() {
                shown["file_count"] = json!(files.len());
                shown["files"] = files
                    .iter()
                    .take(DRY_RUN_FILES_SHOWN)
                    .map(|f| f.name.clone())
                    .collect();
            }
            return Ok(shown);
        }
        let Some(plan) = self.supervisor.serving_plan(api) else {
            return Err(DaemonError::Busy {
                message: format!("api {api:?} is still deploying; submit the job once `gyrus get {api}` shows it live"),
                retry_after_secs: 5,
            });
        };
        let mut config = serde_json::Map::from_iter(plan.spec.predictor.config.clone());
        config.extend(submission.config.clone());
        let mut spec = submission.spec_json(api, &job_id);
        spec["config"] = Value::Object(config);
        let record = JobRecord {
            job_id: job_id.clone(),
            api: api.to_owned(),
            spec,
            status: JobStatus::Enqueuing,
            workers: submission.workers,
            timeout: submission.timeout_secs.map(Duration::from_secs),
            max_receive_count: submission.max_receive_count,
            created_at: crate::now(),
            started_at: None,
            ended_at: None,
            completion: "pending".into(),
            completion_error: None,
            error: None,
        };
        self.store.insert(&record)?;
        if let Err(e) = self.queue.enqueue(&job_id, &batches) {
            let _ = self.store.finish(
                &job_id,
                JobStatus::EnqueueFailed,
                Some(&e.to_string()),
                &crate::now(),
            );
            return Err(e.into());
        }
        let _ = self.store.set_running(&job_id, &crate::now());
        for warning in &submission.warnings {
            crate::logs::append(
                &self.home.job_log(api, &job_id),
                &format!("warning: {warning}"),
            );
        }
        crate::api_log!(
            api,
            "job {job_id} submitted: {} batch(es) of up to {} item(s), {} worker(s)",
            batches.len(),
            submission.batch_size,
            submission.workers
        );
        self.start(record, plan);
        let mut shown = self.get(api, &job_id)?;
        shown["warnings"] = json!(submission.warnings);
        Ok(shown)
    }

    fn start(self: &Arc<Self>, job: JobRecord, plan: crate::controller::Generation) {
        let live = LiveJob::new();
        self.live().insert(job.job_id.clone(), live.clone());
        let config = job.spec["config"].clone();
        let run = Arc::new(JobRun {
            log: self.home.job_log(&job.api, &job.job_id),
            job,
            plan,
            config,
            queue: self.queue.clone() as Arc<dyn BatchQueue>,
            store: self.store.clone(),
            launcher: self.supervisor.launcher(),
            lib_dir: self.supervisor.lib_dir(),
            live,
            client: http_client(),
            oom: Mutex::new(None),
        });
        let me = self.clone();
        tokio::spawn(async move {
            let id = run.job.job_id.clone();
            run.run().await;
            me.live().remove(&id);
        });
    }

    fn record(&self, api: &str, job_id: &str) -> Result<JobRecord, DaemonError> {
        match self.store.get(job_id)? {
            Some(job) if job.api == api => Ok(job),
            _ => Err(DaemonError::NotFound(format!(
                "api {api:?} has no job {job_id:?}"
            ))),
        }
    }

    /// A job's status, in Cortex's shape plus what gyrus adds.
    pub fn get(&self, api: &str, job_id: &str) -> Result<Value, DaemonError> {
        let job = self.record(api, job_id)?;
        let stats = self.queue.stats(job_id)?;
        let failed = self.queue.failed(job_id, FAILED_SHOWN)?;
        // Only a running job has workers to count.
        let workers = self
            .live()
            .get(job_id)
            .map(|l| *l.workers.lock().unwrap_or_else(|e| e.into_inner()));
        let mut status = json!({
            "job_id": job.job_id,
            "api_name": job.api,
            "kind": "BatchAPI",
            "status": job.status.as_str(),
            "workers": job.workers,
            "timeout": job.timeout.map(|t| t.as_secs()),
            "config": job.spec["config"],
            "sqs_dead_letter_queue": {"max_receive_count": job.max_receive_count},
            "created_time": job.created_at,
            "start_time": job.started_at,
            "end_time": job.ended_at,
            "total_batch_count": stats.total,
            "batches_in_queue": stats.queued,
            "batches_in_progress": stats.in_progress,
            "batch_metrics": {
                "succeeded": stats.succeeded,
                "failed": stats.failed,
                "avg_time_per_batch": stats.mean_batch_ms.map(|ms| ms / 1000.0),
            },
            "worker_counts": workers,
            "failed_batches": failed,
            "on_job_complete": {"status": job.completion, "error": job.completion_error},
            "error": job.error,
        });
        // Where the items came from (`item_list`, `file_path_lister` or `delimited_files`).
        for source in ["item_list", "file_path_lister", "delimited_files"] {
            if let Some(v) = job.spec.get(source) {
                status[source] = v.clone();
            }
        }
        Ok(status)
    }

    /// What `gyrus get` shows of a batch API: its running jobs and workers, the newest jobs.
    pub fn summary(&self, api: &str) -> Result<BatchJobs, DaemonError> {
        let jobs = self.store.list(api)?;
        let live = self.live();
        let mut summary = BatchJobs {
            total: u32::try_from(jobs.len()).unwrap_or(u32::MAX),
            ..BatchJobs::default()
        };
        for job in &jobs {
            if !job.status.is_final() {
                summary.running += 1;
            }
            if let Some(l) = live.get(&job.job_id) {
                summary.workers_running +=
                    l.workers.lock().unwrap_or_else(|e| e.into_inner()).running;
            }
        }
        summary.recent = jobs
            .iter()
            .take(RECENT_JOBS_SHOWN)
            .map(|j| {
                let stats = self.queue.stats(&j.job_id).unwrap_or_default();
                JobBrief {
                    job_id: j.job_id.clone(),
                    status: j.status.as_str().to_owned(),
                    created_time: j.created_at.clone(),
                    end_time: j.ended_at.clone(),
                    total_batch_count: stats.total,
                    succeeded: stats.succeeded,
                    failed: stats.failed,
                }
            })
            .collect();
        Ok(summary)
    }

    /// An API's jobs, newest first.
    pub fn list(&self, api: &str) -> Result<Value, DaemonError> {
        self.batch_api(api)?;
        let jobs = self.store.list(api)?;
        let rows: Vec<Value> = jobs
            .iter()
            .map(|j| {
                let stats = self.queue.stats(&j.job_id).unwrap_or_default();
                json!({
                    "job_id": j.job_id,
                    "status": j.status.as_str(),
                    "created_time": j.created_at,
                    "end_time": j.ended_at,
                    "total_batch_count": stats.total,
                    "succeeded": stats.succeeded,
                    "failed": stats.failed,
                })
            })
            .collect();
        Ok(json!({"api_name": api, "jobs": rows}))
    }

    /// Stops a running job: its workers end within seconds.
    pub fn stop(&self, api: &str, job_id: &str) -> Result<Value, DaemonError> {
        let job = self.record(api, job_id)?;
        if job.status.is_final() {
            return Err(DaemonError::Conflict(format!(
                "job {job_id} has already ended ({})",
                job.status.as_str()
            )));
        }
        match self.live().get(job_id) {
            Some(live) => {
                live.stop.send_replace(Some(JobStatus::Stopped));
            }
            None => {
                self.store
                    .finish(job_id, JobStatus::Stopped, None, &crate::now())?;
            }
        }
        crate::api_log!(api, "job {job_id}: stop asked");
        Ok(json!({"job_id": job_id, "api_name": api, "message": format!("stopping job {job_id}")}))
    }

    /// The log of a job.
    pub fn log_path(&self, api: &str, job_id: &str) -> Result<std::path::PathBuf, DaemonError> {
        self.record(api, job_id)?;
        Ok(self.home.job_log(api, job_id))
    }

    /// Brings back the jobs that had not ended when the daemon stopped: their leased batches
    /// return to the queue, and each runs again once its API is live. An `on_job_complete()`
    /// that was running is not run again (it runs at most once): the job ends with it failed.
    pub fn restore(self: &Arc<Self>) -> Result<(), DaemonError> {
        for job in self.store.unfinished()? {
            let id = job.job_id.clone();
            let log = self.home.job_log(&job.api, &id);
            if job.status == JobStatus::Enqueuing {
                self.store.finish(
                    &id,
                    JobStatus::EnqueueFailed,
                    Some("the daemon stopped while the job was being enqueued"),
                    &crate::now(),
                )?;
                continue;
            }
            if job.completion == "running" {
                let why = "the daemon stopped while on_job_complete() ran; it is not run twice";
                self.store.set_completion(&id, "interrupted", Some(why))?;
                self.store.finish(
                    &id,
                    JobStatus::CompletedWithFailures,
                    Some(why),
                    &crate::now(),
                )?;
                continue;
            }
            let released = self.queue.release_all(&id)?;
            crate::logs::append(&log, &format!("job {id}: the daemon restarted; {released} batch(es) in progress went back to the queue"));
            let me = self.clone();
            tokio::spawn(async move {
                let started = tokio::time::Instant::now();
                loop {
                    if let Some(plan) = me.supervisor.serving_plan(&job.api) {
                        me.start(job, plan);
                        return;
                    }
                    if started.elapsed() > RESTORE_WAIT {
                        let _ = me.store.finish(
                            &job.job_id,
                            JobStatus::UnexpectedError,
                            Some("its API did not come back after the daemon restarted"),
                            &crate::now(),
                        );
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            });
        }
        Ok(())
    }

    /// Forgets an API's jobs (the API is deleted): running ones are stopped first.
    pub fn delete_api(&self, api: &str) -> Result<(), DaemonError> {
        for job in self.store.list(api)? {
            if let Some(live) = self.live().get(&job.job_id) {
                live.stop.send_replace(Some(JobStatus::Stopped));
            }
        }
        for id in self.store.delete_api(api)? {
            self.queue.delete_job(&id)?;
        }
        Ok(())
    }
}
