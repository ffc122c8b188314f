//! [`BatchQueue`] and its SQLite implementation, [`SqliteQueue`] (table `batches`, created by
//! the state database's migrations). See the module documentation of `jobs`.
//!
//! Each batch row is `queued`, `leased` (with a random token and an expiry), `succeeded` or
//! `failed`. A lease is taken in one immediate transaction, so two workers never get the same
//! batch while its lease holds; a lease that expires makes the batch available again, and the
//! old holder's ack or renewal is then refused ([`QueueError::LeaseLost`]): delivery is at least
//! once. A successful batch keeps its id and time, not its payload.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

/// One batch to enqueue: its id (given to `predict` as `batch_id`) and its items as a JSON list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBatch {
    pub batch_id: String,
    pub payload: String,
}

/// A batch a worker holds until it acks, fails or loses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub job_id: String,
    pub batch_id: String,
    /// The batch's items, a JSON list.
    pub payload: String,
    /// Which delivery of this batch this is, from 1.
    pub delivery: u32,
    seq: i64,
    token: String,
}

/// Why a leased batch did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub error: String,
    pub traceback: Option<String>,
    /// Whether the predictor failed on this batch (it counts toward
    /// [`RetryPolicy::max_failures`]), rather than its worker dying or being stopped under it.
    pub counts: bool,
}

/// How often a batch may be tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Failures of the predictor after which the batch is failed for good (Cortex's
    /// `max_receive_count`; 1 means no retry).
    pub max_failures: u32,
    /// Deliveries after which a batch is failed whatever happened (a batch that kills every
    /// worker it is given must not loop for ever).
    pub max_deliveries: u32,
}

/// What [`BatchQueue::fail`] did with the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailOutcome {
    /// Back in the queue for another try.
    Retried,
    /// Failed for good, kept with its error.
    Failed,
}

/// Counts of a job's batches.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct QueueStats {
    pub total: u64,
    pub queued: u64,
    pub in_progress: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// Mean time of the batches that succeeded, in milliseconds.
    pub mean_batch_ms: Option<f64>,
}

/// A batch failed for good.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FailedBatch {
    pub batch_id: String,
    pub error: String,
    pub traceback: Option<String>,
    pub failures: u32,
    pub deliveries: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("job queue database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error(
        "the lease of batch {batch_id} was lost: it expired and the batch went back to the queue"
    )]
    LeaseLost { batch_id: String },
}

/// The queue a job's workers are driven through. See the module documentation.
pub trait BatchQueue: Send + Sync {
    /// Adds a job's batches, all or none, in order.
    fn enqueue(&self, job_id: &str, batches: &[NewBatch]) -> Result<(), QueueError>;
    /// The next batch nobody holds (queued, or leased with its lease expired), held for `ttl`.
    fn lease(&self, job_id: &str, ttl: Duration) -> Result<Option<Lease>, QueueError>;
    /// Holds `lease` for `ttl` more from now.
    fn renew(&self, lease: &Lease, ttl: Duration) -> Result<(), QueueError>;
    /// The batch succeeded in `took`.
    fn ack(&self, lease: &Lease, took: Duration) -> Result<(), QueueError>;
    /// The batch did not succeed: back to the queue, or failed for good under `policy`.
    fn fail(
        &self,
        lease: &Lease,
        failure: &Failure,
        policy: RetryPolicy,
    ) -> Result<FailOutcome, QueueError>;
    /// Returns every leased batch of a job to the queue at once, without counting a failure
    /// (its workers are gone: the daemon restarted). Returns how many.
    fn release_all(&self, job_id: &str) -> Result<u64, QueueError>;
    fn stats(&self, job_id: &str) -> Result<QueueStats, QueueError>;
    /// Up to `limit` of the job's batches that failed for good, in order.
    fn failed(&self, job_id: &str, limit: usize) -> Result<Vec<FailedBatch>, QueueError>;
    /// Forgets a job's batches.
    fn delete_job(&self, job_id: &str) -> Result<(), QueueError>;
}

/// [`BatchQueue`] in the daemon's SQLite database.
pub struct SqliteQueue {
    conn: Mutex<Connection>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn new_token() -> String {
    let mut bytes = [0u8; 8];
    // Tokens only tell leases of one batch apart; the time is a fallback that still does.
    if getrandom::fill(&mut bytes).is_err() {
        bytes = now_ms().to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl SqliteQueue {
    /// Opens the queue in the state database at `path`, whose migrations created its table
    /// (open the `StateStore` first).
    pub fn open(path: &Path) -> Result<Self, QueueError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")?;
        Ok(SqliteQueue {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // SQLite keeps itself consistent with its transactions: a poisoned lock is usable.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the state of a leased batch if `lease` still holds it.
    fn finish(
        conn: &Connection,
        lease: &Lease,
        set: &str,
        values: &[&dyn rusqlite::ToSql],
    ) -> Result<(), QueueError> {
        let sql = format!(
            "UPDATE batches SET {set}, token = NULL, lease_until = NULL
             WHERE job_id = ? AND seq = ? AND state = 'leased' AND token = ?"
        );
        let mut all: Vec<&dyn rusqlite::ToSql> = values.to_vec();
        all.extend([
            &lease.job_id as &dyn rusqlite::ToSql,
            &lease.seq,
            &lease.token,
        ]);
        // The few distinct statements are compiled once and kept (rusqlite's statement cache).
        match conn.prepare_cached(&sql)?.execute(all.as_slice())? {
            0 => Err(QueueError::LeaseLost {
                batch_id: lease.batch_id.clone(),
            }),
            _ => Ok(()),
        }
    }
}

impl BatchQueue for SqliteQueue {
    fn enqueue(&self, job_id: &str, batches: &[NewBatch]) -> Result<(), QueueError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let next: i64 = tx.query_row(
                "SELECT COALESCE(MAX(seq) + 1, 0) FROM batches WHERE job_id = ?1",
                params![job_id],
                |r| r.get(0),
            )?;
            let mut insert = tx.prepare(
                "INSERT INTO batches (job_id, seq, batch_id, payload, state)
                 VALUES (?1, ?2, ?3, ?4, 'queued')",
            )?;
            for (i, b) in batches.iter().enumerate() {
                insert.execute(params![job_id, next + i as i64, b.batch_id, b.payload])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn lease(&self, job_id: &str, ttl: Duration) -> Result<Option<Lease>, QueueError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = now_ms();
        // Two index searches (the oldest queued batch, the oldest expired lease) rather than
        // one filter with OR, which walks past every batch already done: a lease stays ~40 us
        // at any point of a job instead of growing with it.
        let found = tx
            .prepare_cached(
                "SELECT seq, batch_id, payload, deliveries FROM (
                     SELECT * FROM (SELECT seq, batch_id, payload, deliveries FROM batches
                         WHERE job_id = ?1 AND state = 'queued' ORDER BY seq LIMIT 1)
                     UNION ALL
                     SELECT * FROM (SELECT seq, batch_id, payload, deliveries FROM batches
                         WHERE job_id = ?1 AND state = 'leased' AND lease_until < ?2
                         ORDER BY seq LIMIT 1))
                 ORDER BY seq LIMIT 1",
            )?
            .query_row(params![job_id, now], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, u32>(3)?,
                ))
            })
            .optional()?;
        let Some((seq, batch_id, payload, deliveries)) = found else {
            return Ok(None);
        };
        let token = new_token();
        tx.prepare_cached(
            "UPDATE batches SET state = 'leased', token = ?3, lease_until = ?4,
                 deliveries = deliveries + 1
             WHERE job_id = ?1 AND seq = ?2",
        )?
        .execute(params![job_id, seq, token, now.saturating_add(millis(ttl))])?;
        tx.commit()?;
        Ok(Some(Lease {
            job_id: job_id.to_owned(),
            batch_id,
            payload,
            delivery: deliveries + 1,
            seq,
            token,
        }))
    }

    fn renew(&self, lease: &Lease, ttl: Duration) -> Result<(), QueueError> {
        let until = now_ms().saturating_add(millis(ttl));
        let changed = self
            .conn()
            .prepare_cached(
                "UPDATE batches SET lease_until = ?4
                 WHERE job_id = ?1 AND seq = ?2 AND state = 'leased' AND token = ?3",
            )?
            .execute(params![lease.job_id, lease.seq, lease.token, until])?;
        match changed {
            0 => Err(QueueError::LeaseLost {
                batch_id: lease.batch_id.clone(),
            }),
            _ => Ok(()),
        }
    }

    fn ack(&self, lease: &Lease, took: Duration) -> Result<(), QueueError> {
        let took = millis(took);
        Self::finish(
            &self.conn(),
            lease,
            "state = 'succeeded', payload = '', took_ms = ?, error = NULL, traceback = NULL",
            &[&took],
        )
    }

    fn fail(
        &self,
        lease: &Lease,
        failure: &Failure,
        policy: RetryPolicy,
    ) -> Result<FailOutcome, QueueError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (failures, deliveries): (u32, u32) = tx.query_row(
            "SELECT failures, deliveries FROM batches WHERE job_id = ?1 AND seq = ?2",
            params![lease.job_id, lease.seq],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let failures = failures + u32::from(failure.counts);
        let outcome = if failures >= policy.max_failures.max(1)
            || deliveries >= policy.max_deliveries.max(1)
        {
            FailOutcome::Failed
        } else {
            FailOutcome::Retried
        };
        let state = match outcome {
            FailOutcome::Failed => "failed",
            FailOutcome::Retried => "queued",
        };
        Self::finish(
            &tx,
            lease,
            "state = ?, failures = ?, error = ?, traceback = ?",
            &[&state, &failures, &failure.error, &failure.traceback],
        )?;
        tx.commit()?;
        Ok(outcome)
    }

    fn release_all(&self, job_id: &str) -> Result<u64, QueueError> {
        let changed = self.conn().execute(
            "UPDATE batches SET state = 'queued', token = NULL, lease_until = NULL
             WHERE job_id = ?1 AND state = 'leased'",
            params![job_id],
        )?;
        Ok(changed as u64)
    }

    fn stats(&self, job_id: &str) -> Result<QueueStats, QueueError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT state, COUNT(*), AVG(took_ms) FROM batches WHERE job_id = ?1 GROUP BY state",
        )?;
        let rows = stmt.query_map(params![job_id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, u64>(1)?,
                r.get::<_, Option<f64>>(2)?,
            ))
        })?;
        let mut stats = QueueStats::default();
        for row in rows {
            let (state, count, mean) = row?;
            stats.total += count;
            match state.as_str() {
                "queued" => stats.queued = count,
                "leased" => stats.in_progress = count,
                "succeeded" => {
                    stats.succeeded = count;
                    stats.mean_batch_ms = mean;
                }
                _ => stats.failed += count,
            }
        }
        Ok(stats)
    }

    fn failed(&self, job_id: &str, limit: usize) -> Result<Vec<FailedBatch>, QueueError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT batch_id, COALESCE(error, ''), traceback, failures, deliveries FROM batches
             WHERE job_id = ?1 AND state = 'failed' ORDER BY seq LIMIT ?2",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![job_id, limit], |r| {
            Ok(FailedBatch {
                batch_id: r.get(0)?,
                error: r.get(1)?,
                traceback: r.get(2)?,
                failures: r.get(3)?,
                deliveries: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn delete_job(&self, job_id: &str) -> Result<(), QueueError> {
        self.conn()
            .execute("DELETE FROM batches WHERE job_id = ?1", params![job_id])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
