//! Batch jobs (`kind: BatchAPI`, seed 002): the durable queue of a job's batches.
//!
//! [`BatchQueue`] is the small interface a job's workers are driven through (enqueue, lease,
//! renew, ack, fail, stats); [`SqliteQueue`] implements it in the daemon's own SQLite
//! database (WAL), so a batch survives any process dying: a leased batch is invisible to other
//! workers until its lease expires or its worker's failure returns it, success removes it from
//! the work left, and failure retries it up to the job's limit, then keeps it as failed with
//! its error and traceback. A network broker can implement the same trait later.
//!
//! [`JobService`] (`service.rs`) submits, shows, lists and stops jobs, and brings unfinished
//! ones back after a restart; `runner.rs` runs one job: its workers, their batches,
//! `on_job_complete()` once, and its final status; `store.rs` keeps job records;
//! `submission.rs` checks Cortex's submission body and cuts it into batches under the limits;
//! `sources.rs` lists and reads the files of `file_path_lister` and `delimited_files`.
//!
//! What a worker runs is a job worker replica (`gyrus-replica`, `ReplicaLaunch::job`), which
//! answers the daemon's `POST /_batch/<batch id>` with the predictor's result, or with its
//! error and traceback.

mod queue;
mod runner;
mod service;
mod sources;
mod store;
mod submission;

pub use queue::{
    BatchQueue, FailOutcome, FailedBatch, Failure, Lease, NewBatch, QueueError, QueueStats,
    RetryPolicy, SqliteQueue,
};
pub use service::JobService;
pub use sources::MAX_DELIMITED_BYTES;
pub use store::{JobRecord, JobStatus, JobStore};
pub use submission::{Submission, SubmissionError, MAX_BATCH_BYTES, MAX_SUBMISSION_BYTES};
