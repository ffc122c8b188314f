//! What the batch queue alone costs per batch (issue 12): the daemon's real [`SqliteQueue`] on
//! a migrated state database in a temporary directory (a file, WAL, `synchronous = NORMAL`, as
//! the daemon opens it), no HTTP and no worker.
//!
//! 1. On a job of `BATCHES` batches (the size `bench/batch_bench.py` submits): enqueue, all in
//!    one call (one transaction, as a submission does) and, for reference, one call per batch;
//!    lease, then ack, one batch at a time on one thread, as one job worker's driver does; and
//!    lease + ack from `THREADS` threads at once on one shared queue (the daemon shares one
//!    connection among every worker's driver), per pair and in batches/s.
//! 2. Lease and ack after 0, 1,000, 10,000 and 100,000 of a job's batches have succeeded: the
//!    lease query walks the job's rows in `seq` order past those that already succeeded (its
//!    query plan is printed), so a lease costs more the further a job has got. The set-up marks
//!    the first batches succeeded with one UPDATE on a second connection; what is timed is the
//!    queue's own `lease` and `ack` of the next 300 batches. Before them, at exactly that
//!    point, the same SELECT and a split one (the first queued batch, then the first expired
//!    lease, each a search of the `(job_id, state, seq)` index) are timed on the second
//!    connection: what a fix of the query would save. The queue's code is not changed.
//!
//! ```text
//! cargo run --release -p gyrus-daemon --example queue_overhead             # 2000 batches, 4 threads
//! target/release/examples/queue_overhead 20000 16                          # BATCHES THREADS
//! ```

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gyrus_daemon::jobs::{BatchQueue, NewBatch, SqliteQueue};
use gyrus_daemon::state::StateStore;
use rusqlite::{params, Connection};

const TTL: Duration = Duration::from_secs(30);

/// The lease's SELECT, as `SqliteQueue::lease` runs it (copied from `jobs/queue.rs`).
const LEASE_SELECT: &str = "SELECT seq, batch_id, payload, deliveries FROM batches
     WHERE job_id = ?1 AND (state = 'queued' OR (state = 'leased' AND lease_until < ?2))
     ORDER BY seq LIMIT 1";
/// The same answer in two index searches: the first queued batch, and the first expired lease.
const QUEUED_SELECT: &str = "SELECT seq, batch_id, payload, deliveries FROM batches
     WHERE job_id = ?1 AND state = 'queued' ORDER BY seq LIMIT 1";
const EXPIRED_SELECT: &str = "SELECT seq, batch_id, payload, deliveries FROM batches
     WHERE job_id = ?1 AND state = 'leased' AND lease_until < ?2 ORDER BY seq LIMIT 1";

fn batches(job: &str, n: usize) -> Vec<NewBatch> {
    (0..n)
        .map(|i| NewBatch {
            batch_id: format!("{job}-{i}"),
            // One item per batch, like `batch_size: 1` over a list of small numbers.
            payload: format!("[{i}]"),
        })
        .collect()
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The `q` quantile of sorted durations.
fn at(d: &[Duration], q: f64) -> Duration {
    d[((d.len() - 1) as f64 * q).round() as usize]
}

/// `| name | n | mean | p50 | p99 | max |` in microseconds.
fn row(name: &str, mut d: Vec<Duration>) -> String {
    d.sort();
    let mean = us(d.iter().sum::<Duration>()) / d.len() as f64;
    format!(
        "| {name} | {} | {mean:.1} | {:.1} | {:.1} | {:.1} |",
        d.len(),
        us(at(&d, 0.5)),
        us(at(&d, 0.99)),
        us(d[d.len() - 1])
    )
}

fn p50(mut d: Vec<Duration>) -> f64 {
    d.sort();
    us(at(&d, 0.5))
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let out = f();
    (out, t.elapsed())
}

/// Leases and acks every batch of `job` from `threads` threads: each pair's time, and the wall.
fn drain(q: &Arc<SqliteQueue>, job: &str, threads: usize) -> (Vec<Duration>, Duration) {
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (q, job) = (q.clone(), job.to_owned());
            std::thread::spawn(move || {
                let mut pairs = Vec::new();
                loop {
                    let t = Instant::now();
                    let Some(lease) = q.lease(&job, TTL).unwrap() else {
                        break;
                    };
                    q.ack(&lease, Duration::from_micros(100)).unwrap();
                    pairs.push(t.elapsed());
                }
                pairs
            })
        })
        .collect();
    let pairs = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    (pairs, start.elapsed())
}

/// Runs `stmt` with `job` and, where it has a second parameter, the time 0 (no lease expired).
fn bind<'s>(stmt: &'s mut rusqlite::Statement<'_>, job: &str) -> rusqlite::Rows<'s> {
    match stmt.parameter_count() {
        1 => stmt.query(params![job]),
        _ => stmt.query(params![job, 0i64]),
    }
    .unwrap()
}

fn plan(conn: &Connection, sql: &str) -> String {
    let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
    let mut rows = bind(&mut stmt, "plan");
    let mut steps = Vec::new();
    while let Some(r) = rows.next().unwrap() {
        steps.push(r.get::<_, String>(3).unwrap());
    }
    steps.join("; ")
}

/// How long one run of `sql` takes on `conn`.
fn select(conn: &Connection, sql: &str, job: &str) -> Duration {
    let mut stmt = conn.prepare_cached(sql).unwrap();
    let t = Instant::now();
    let mut rows = bind(&mut stmt, job);
    let _ = rows.next().unwrap().map(|r| r.get::<_, i64>(0).unwrap());
    t.elapsed()
}

fn per_op(q: &Arc<SqliteQueue>, n: usize, threads: usize) {
    println!("| operation | n | mean (us) | p50 (us) | p99 (us) | max (us) |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    // Enqueue in bulk, five jobs: per batch of each call.
    let mut bulk = Vec::new();
    for j in 0..5 {
        let job = format!("bulk{j}");
        let all = batches(&job, n);
        let ((), took) = timed(|| q.enqueue(&job, &all).unwrap());
        bulk.push(took / n as u32);
    }
    println!(
        "{}",
        row(&format!("enqueue, {n} per call (per batch)"), bulk)
    );
    let one: Vec<Duration> = batches("single", n)
        .chunks(1)
        .map(|b| timed(|| q.enqueue("single", b).unwrap()).1)
        .collect();
    println!("{}", row("enqueue, 1 per call", one));

    // Lease, then ack, one at a time on one thread: one worker's driver.
    let (mut leases, mut acks, mut pairs) = (Vec::new(), Vec::new(), Vec::new());
    let start = Instant::now();
    loop {
        let (lease, l) = timed(|| q.lease("bulk0", TTL).unwrap());
        let Some(lease) = lease else { break };
        let ((), a) = timed(|| q.ack(&lease, Duration::from_micros(100)).unwrap());
        leases.push(l);
        acks.push(a);
        pairs.push(l + a);
    }
    let single_wall = start.elapsed();
    assert_eq!(leases.len(), n, "every batch leased once");
    println!("{}", row("lease (1 thread)", leases));
    println!("{}", row("ack (1 thread)", acks));
    println!("{}", row("lease + ack (1 thread)", pairs));

    let (contended, wall) = drain(q, "bulk1", threads);
    assert_eq!(contended.len(), n, "every batch leased once");
    println!(
        "{}",
        row(
            &format!("lease + ack ({threads} threads, per pair)"),
            contended
        )
    );

    println!();
    println!("| lease + ack, {n} batches | batches/s | us per batch (wall / batches) |");
    println!("| --- | ---: | ---: |");
    for (name, wall) in [
        ("1 thread".to_owned(), single_wall),
        (format!("{threads} threads, one shared queue"), wall),
    ] {
        println!(
            "| {name} | {:.0} | {:.1} |",
            n as f64 / wall.as_secs_f64(),
            us(wall) / n as f64
        );
    }
}

fn by_progress(q: &Arc<SqliteQueue>, path: &Path) {
    const MEASURED: usize = 300;
    let side = Connection::open(path).unwrap();
    side.busy_timeout(Duration::from_secs(5)).unwrap();
    println!(
        "| batches already succeeded | lease p50 (us) | ack p50 (us) | lease's SELECT p50 (us) \
         | split SELECTs p50 (us) |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: |");
    for done in [0usize, 1_000, 10_000, 100_000] {
        let job = format!("progress{done}");
        q.enqueue(&job, &batches(&job, done + 2 * MEASURED))
            .unwrap();
        // Set-up: the first `done` batches succeeded, as acks would have left them.
        side.execute(
            "UPDATE batches SET state = 'succeeded', payload = '', deliveries = 1, took_ms = 0
             WHERE job_id = ?1 AND seq < ?2",
            params![job, done as i64],
        )
        .unwrap();
        let current: Vec<Duration> = (0..MEASURED)
            .map(|_| select(&side, LEASE_SELECT, &job))
            .collect();
        let split: Vec<Duration> = (0..MEASURED)
            .map(|_| select(&side, QUEUED_SELECT, &job) + select(&side, EXPIRED_SELECT, &job))
            .collect();
        let (mut leases, mut acks) = (Vec::new(), Vec::new());
        for _ in 0..MEASURED {
            let (lease, l) = timed(|| q.lease(&job, TTL).unwrap().unwrap());
            let ((), a) = timed(|| q.ack(&lease, Duration::from_micros(100)).unwrap());
            leases.push(l);
            acks.push(a);
        }
        println!(
            "| {done} | {:.1} | {:.1} | {:.1} | {:.1} |",
            p50(leases),
            p50(acks),
            p50(current),
            p50(split)
        );
    }
    println!();
    println!("lease's query plan: {}", plan(&side, LEASE_SELECT));
    println!(
        "split query plans: {} / {}",
        plan(&side, QUEUED_SELECT),
        plan(&side, EXPIRED_SELECT)
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args
        .next()
        .map(|a| a.parse().expect("BATCHES"))
        .unwrap_or(2_000);
    let threads: usize = args
        .next()
        .map(|a| a.parse().expect("THREADS"))
        .unwrap_or(4);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("state.db");
    StateStore::open(&path).expect("the state database");
    let q = Arc::new(SqliteQueue::open(&path).expect("the queue"));

    println!("SqliteQueue on {} (batches of one item)\n", path.display());
    per_op(&q, n, threads);
    println!();
    by_progress(&q, &path);
}
