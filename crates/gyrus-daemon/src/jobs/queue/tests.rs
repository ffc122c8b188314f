//! The SQLite queue on a real database file: order, leases and their expiry, retries and the
//! dead-letter limit, workers that die, a daemon restart, and what survives reopening.

use std::time::Duration;

use super::*;
use crate::state::StateStore;

const HOLD: Duration = Duration::from_secs(60);
const POLICY: RetryPolicy = RetryPolicy {
    max_failures: 2,
    max_deliveries: 4,
};

/// A migrated state database and a queue on it.
fn open() -> (tempfile::TempDir, SqliteQueue) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    StateStore::open(&path).unwrap();
    let queue = SqliteQueue::open(&path).unwrap();
    (dir, queue)
}

fn batches(n: usize) -> Vec<NewBatch> {
    (0..n)
        .map(|i| NewBatch {
            batch_id: format!("b{i}"),
            payload: format!("[{i}]"),
        })
        .collect()
}

fn failure(counts: bool) -> Failure {
    Failure {
        error: "ValueError: bad".into(),
        traceback: Some("Traceback ...".into()),
        counts,
    }
}

#[test]
fn batches_are_leased_in_order_once_each_and_acked() {
    let (_dir, q) = open();
    q.enqueue("j", &batches(3)).unwrap();
    q.enqueue("other", &batches(1)).unwrap();
    let a = q.lease("j", HOLD).unwrap().unwrap();
    let b = q.lease("j", HOLD).unwrap().unwrap();
    assert_eq!((a.batch_id.as_str(), a.payload.as_str()), ("b0", "[0]"));
    assert_eq!((b.batch_id.as_str(), a.delivery), ("b1", 1));
    let stats = q.stats("j").unwrap();
    assert_eq!(
        (stats.total, stats.queued, stats.in_progress),
        (3, 1, 2),
        "{stats:?}"
    );
    q.ack(&a, Duration::from_millis(30)).unwrap();
    q.ack(&b, Duration::from_millis(10)).unwrap();
    let c = q.lease("j", HOLD).unwrap().unwrap();
    assert_eq!(c.batch_id, "b2");
    assert_eq!(q.lease("j", HOLD).unwrap(), None, "nothing left to lease");
    q.ack(&c, Duration::from_millis(20)).unwrap();
    let stats = q.stats("j").unwrap();
    assert_eq!(
        (stats.succeeded, stats.queued, stats.in_progress),
        (3, 0, 0)
    );
    assert_eq!(stats.mean_batch_ms, Some(20.0));
    assert_eq!(q.stats("other").unwrap().queued, 1, "jobs are apart");
}

#[test]
fn a_failing_batch_is_retried_up_to_the_limit_then_kept_with_its_error() {
    let (_dir, q) = open();
    q.enqueue("j", &batches(1)).unwrap();
    let first = q.lease("j", HOLD).unwrap().unwrap();
    assert_eq!(
        q.fail(&first, &failure(true), POLICY).unwrap(),
        FailOutcome::Retried
    );
    let second = q.lease("j", HOLD).unwrap().unwrap();
    assert_eq!(second.delivery, 2);
    assert_eq!(
        q.fail(&second, &failure(true), POLICY).unwrap(),
        FailOutcome::Failed
    );
    assert_eq!(q.lease("j", HOLD).unwrap(), None);
    assert_eq!(q.stats("j").unwrap().failed, 1);
    assert_eq!(
        q.failed("j", 10).unwrap(),
        vec![FailedBatch {
            batch_id: "b0".into(),
            error: "ValueError: bad".into(),
            traceback: Some("Traceback ...".into()),
            failures: 2,
            deliveries: 2,
        }]
    );
}

#[test]
fn a_worker_dying_returns_its_batch_without_a_failure_until_the_delivery_limit() {
    let (_dir, q) = open();
    q.enqueue("j", &batches(1)).unwrap();
    for delivery in 1..POLICY.max_deliveries {
        let lease = q.lease("j", HOLD).unwrap().unwrap();
        assert_eq!(lease.delivery, delivery);
        assert_eq!(
            q.fail(&lease, &failure(false), POLICY).unwrap(),
            FailOutcome::Retried
        );
    }
    let last = q.lease("j", HOLD).unwrap().unwrap();
    assert_eq!(
        q.fail(&last, &failure(false), POLICY).unwrap(),
        FailOutcome::Failed,
        "a batch that kills every worker it is given ends"
    );
    assert_eq!(q.failed("j", 10).unwrap()[0].failures, 0);
}

#[test]
fn an_expired_lease_goes_to_the_next_worker_and_the_old_holder_loses_it() {
    let (_dir, q) = open();
    q.enqueue("j", &batches(1)).unwrap();
    let stale = q.lease("j", Duration::from_millis(0)).unwrap().unwrap();
    std::thread::sleep(Duration::from_millis(5));
    let fresh = q
        .lease("j", HOLD)
        .unwrap()
        .expect("the expired batch is leased again");
    assert_eq!((fresh.batch_id.as_str(), fresh.delivery), ("b0", 2));
    assert!(matches!(
        q.ack(&stale, Duration::ZERO),
        Err(QueueError::LeaseLost { .. })
    ));
    assert!(matches!(
        q.renew(&stale, HOLD),
        Err(QueueError::LeaseLost { .. })
    ));
    q.renew(&fresh, HOLD).unwrap();
    q.ack(&fresh, Duration::ZERO).unwrap();
    assert_eq!(q.stats("j").unwrap().succeeded, 1);
}

#[test]
fn everything_survives_reopening_and_a_restart_releases_the_leases() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    StateStore::open(&path).unwrap();
    {
        let q = SqliteQueue::open(&path).unwrap();
        q.enqueue("j", &batches(3)).unwrap();
        let done = q.lease("j", HOLD).unwrap().unwrap();
        q.ack(&done, Duration::from_millis(1)).unwrap();
        let _held = q.lease("j", HOLD).unwrap().unwrap();
        // The daemon dies here, holding b1.
    }
    StateStore::open(&path).unwrap();
    let q = SqliteQueue::open(&path).unwrap();
    let stats = q.stats("j").unwrap();
    assert_eq!(
        (stats.succeeded, stats.in_progress, stats.queued),
        (1, 1, 1)
    );
    assert_eq!(q.release_all("j").unwrap(), 1);
    let again = q.lease("j", HOLD).unwrap().unwrap();
    assert_eq!(
        again.batch_id, "b1",
        "the batch held at the crash comes back first"
    );
    q.delete_job("j").unwrap();
    assert_eq!(q.stats("j").unwrap(), QueueStats::default());
}
