//! Job records in the daemon's SQLite database (table `jobs`): what was submitted, the job's
//! status, its times, and whether `on_job_complete` ran. The batches themselves are the
//! queue's (`queue.rs`).

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

use super::queue::QueueError;

/// Cortex's job statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    Enqueuing,
    Running,
    EnqueueFailed,
    CompletedWithFailures,
    Succeeded,
    UnexpectedError,
    WorkerError,
    WorkerOom,
    TimedOut,
    Stopped,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Enqueuing => "enqueuing",
            JobStatus::Running => "running",
            JobStatus::EnqueueFailed => "enqueue_failed",
            JobStatus::CompletedWithFailures => "completed_with_failures",
            JobStatus::Succeeded => "succeeded",
            JobStatus::UnexpectedError => "unexpected_error",
            JobStatus::WorkerError => "worker_error",
            JobStatus::WorkerOom => "worker_oom",
            JobStatus::TimedOut => "timed_out",
            JobStatus::Stopped => "stopped",
        }
    }

    fn parse(s: &str) -> JobStatus {
        match s {
            "enqueuing" => JobStatus::Enqueuing,
            "running" => JobStatus::Running,
            "enqueue_failed" => JobStatus::EnqueueFailed,
            "completed_with_failures" => JobStatus::CompletedWithFailures,
            "succeeded" => JobStatus::Succeeded,
            "worker_error" => JobStatus::WorkerError,
            "worker_oom" => JobStatus::WorkerOom,
            "timed_out" => JobStatus::TimedOut,
            "stopped" => JobStatus::Stopped,
            _ => JobStatus::UnexpectedError,
        }
    }

    /// Whether the job has ended.
    pub fn is_final(self) -> bool {
        !matches!(self, JobStatus::Enqueuing | JobStatus::Running)
    }
}

/// One job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub job_id: String,
    pub api: String,
    /// The submission without its items (`Submission::spec_json`): the predictor's `job_spec`.
    pub spec: serde_json::Value,
    pub status: JobStatus,
    pub workers: u32,
    pub timeout: Option<Duration>,
    pub max_receive_count: u32,
    pub created_at: String,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    /// `pending`, `running`, `succeeded`, `failed` or `interrupted` (the daemon stopped
    /// while it ran: it is not run again, so it runs at most once).
    pub completion: String,
    pub completion_error: Option<String>,
    pub error: Option<String>,
}

pub struct JobStore {
    conn: Mutex<Connection>,
}

const COLUMNS: &str = "job_id, api, spec_json, status, workers, timeout_secs, max_receive_count,
     created_at, started_at, ended_at, completion, completion_error, error";

fn row_to_job(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRecord> {
    let spec: String = r.get(2)?;
    let status: String = r.get(3)?;
    let timeout: Option<u64> = r.get(5)?;
    Ok(JobRecord {
        job_id: r.get(0)?,
        api: r.get(1)?,
        spec: serde_json::from_str(&spec).unwrap_or(serde_json::Value::Null),
        status: JobStatus::parse(&status),
        workers: r.get(4)?,
        timeout: timeout.map(Duration::from_secs),
        max_receive_count: r.get(6)?,
        created_at: r.get(7)?,
        started_at: r.get(8)?,
        ended_at: r.get(9)?,
        completion: r.get(10)?,
        completion_error: r.get(11)?,
        error: r.get(12)?,
    })
}

impl JobStore {
    /// Opens the job table of the state database at `path` (open the `StateStore` first:
    /// its migrations create the table).
    pub fn open(path: &Path) -> Result<Self, QueueError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        Ok(JobStore {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn insert(&self, job: &JobRecord) -> Result<(), QueueError> {
        self.conn().execute(
            &format!("INSERT INTO jobs ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"),
            params![
                job.job_id,
                job.api,
                job.spec.to_string(),
                job.status.as_str(),
                job.workers,
                job.timeout.map(|t| t.as_secs()),
                job.max_receive_count,
                job.created_at,
                job.started_at,
                job.ended_at,
                job.completion,
                job.completion_error,
                job.error,
            ],
        )?;
        Ok(())
    }

    pub fn get(&self, job_id: &str) -> Result<Option<JobRecord>, QueueError> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM jobs WHERE job_id = ?1"),
                params![job_id],
                row_to_job,
            )
            .optional()?)
    }

    /// An API's jobs, newest first.
    pub fn list(&self, api: &str) -> Result<Vec<JobRecord>, QueueError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM jobs WHERE api = ?1 ORDER BY created_at DESC, rowid DESC"
        ))?;
        let rows = stmt.query_map(params![api], row_to_job)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Jobs that had not ended when the daemon stopped.
    pub fn unfinished(&self) -> Result<Vec<JobRecord>, QueueError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM jobs WHERE status IN ('enqueuing', 'running') ORDER BY created_at"
        ))?;
        let rows = stmt.query_map([], row_to_job)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    pub fn set_running(&self, job_id: &str, started_at: &str) -> Result<(), QueueError> {
        self.conn().execute(
            "UPDATE jobs SET status = 'running', started_at = COALESCE(started_at, ?2) WHERE job_id = ?1",
            params![job_id, started_at],
        )?;
        Ok(())
    }

    pub fn set_completion(
        &self,
        job_id: &str,
        completion: &str,
        error: Option<&str>,
    ) -> Result<(), QueueError> {
        self.conn().execute(
            "UPDATE jobs SET completion = ?2, completion_error = ?3 WHERE job_id = ?1",
            params![job_id, completion, error],
        )?;
        Ok(())
    }

    /// Ends a job, unless it has ended already (a stop racing the last batch).
    pub fn finish(
        &self,
        job_id: &str,
        status: JobStatus,
        error: Option<&str>,
        ended_at: &str,
    ) -> Result<bool, QueueError> {
        let changed = self.conn().execute(
            "UPDATE jobs SET status = ?2, error = COALESCE(?3, error), ended_at = ?4
             WHERE job_id = ?1 AND status IN ('enqueuing', 'running')",
            params![job_id, status.as_str(), error, ended_at],
        )?;
        Ok(changed > 0)
    }

    pub fn delete_api(&self, api: &str) -> Result<Vec<String>, QueueError> {
        let ids: Vec<String> = self.list(api)?.into_iter().map(|j| j.job_id).collect();
        self.conn()
            .execute("DELETE FROM jobs WHERE api = ?1", params![api])?;
        Ok(ids)
    }
}
