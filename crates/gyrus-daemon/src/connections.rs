//! The daemon's listening socket: it accepts HTTP/1 connections for the control API and the
//! gateway and keeps slow or hostile peers from taking the daemon over.
//!
//! - A client has `header_timeout` to send a request head, counted from when the connection
//!   opens or its previous response was sent; this closes half-open connections and idle
//!   keep-alive ones alike (hyper's header-read timer).
//! - At most `max_connections` are open. When one more arrives, the connection idle the longest
//!   (no request in progress) is closed to make room, so a flood of idle or half-open
//!   connections cannot lock out the CLI or real clients. When every connection is busy (slow
//!   clients holding requests open), up to [`CONTROL_RESERVE`] more are admitted for the
//!   control API only: a data-plane request on one of them gets 503 at once, so the CLI still
//!   gets in. Beyond that, new connections are refused.
//! - Accept errors (out of file descriptors) back off instead of spinning.
//! - On stop, idle connections close at once and busy ones after their response.
//! - With TLS (`crate::tls`), the handshake is bounded by the header timeout as well.
//! - A peer that stops reading is dropped once a write has waited [`WRITE_STALL_TIMEOUT`]
//!   (a response, or a `logs -f` stream, it never takes).
//! - Without TLS, a connection whose first request is for an API whose replicas take
//!   connections is handed to one of them (`gyrus_gateway::handoff`): the daemon reads the
//!   request head, sends the socket and those bytes to the replica, and waits, holding a
//!   duplicate, until the replica closes it, gives it back (it drains, or rebalances), or dies.
//!   Everything else is served here, by hyper, from the bytes already read.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::Router;
use bytes::BytesMut;
use gyrus_gateway::handoff::head::{self, Head};
pub use gyrus_gateway::handoff::io::WRITE_STALL_TIMEOUT;
use gyrus_gateway::handoff::io::{Prefixed, WriteStall};
use gyrus_gateway::handoff::link::Outcome;
use gyrus_gateway::handoff::slots::SlotState;
use gyrus_gateway::Gateway;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

/// How long a replica serves a handed connection before giving it back once idle, so that
/// long-lived keep-alive connections spread over replicas that were added since.
const RETURN_AFTER: Duration = Duration::from_secs(2);

/// Connections admitted beyond `max_connections`, when every other one is busy, for the
/// control API only.
pub const CONTROL_RESERVE: usize = 64;

/// How the daemon's socket treats its peers.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// Time to send a request head (from connect, or from the previous response).
    pub header_timeout: Duration,
    pub max_connections: usize,
}

impl ServeLimits {
    /// 10 s for a request head (Cortex's NLB and most proxies allow less idle time than
    /// that); connections bounded by the file descriptors this process may open, two per
    /// proxied connection (the client's and the replica's), and at most 10,000.
    /// `GYRUS_HEADER_TIMEOUT` and `GYRUS_MAX_CONNECTIONS` override them.
    pub fn from_env() -> Result<Self, String> {
        let header_timeout = match std::env::var("GYRUS_HEADER_TIMEOUT") {
            Ok(v) if !v.is_empty() => humantime::parse_duration(&v).map_err(|e| {
                format!("GYRUS_HEADER_TIMEOUT={v:?}: expected a duration like 10s ({e})")
            })?,
            _ => Duration::from_secs(10),
        };
        let max_connections = match std::env::var("GYRUS_MAX_CONNECTIONS") {
            Ok(v) if !v.is_empty() => {
                v.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| {
                    format!("GYRUS_MAX_CONNECTIONS={v:?}: expected a positive number")
                })?
            }
            _ => {
                let files = raise_file_limit();
                (files.saturating_sub(512) / 2).clamp(64, 10_000) as usize
            }
        };
        Ok(Self {
            header_timeout,
            max_connections,
        })
    }
}

/// Raises this process's open-file limit to its hard limit (what `ulimit -Hn` allows); returns
/// the limit in force.
fn raise_file_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write to and read from a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    lim.rlim_cur
}

/// One open connection, as the table sees it.
struct Conn {
    /// Admitted from [`CONTROL_RESERVE`]: only control requests are served.
    reserved: bool,
    /// Requests whose response has not been fully sent.
    busy: AtomicUsize,
    /// Milliseconds since the table's epoch when it last started or finished a request.
    last_active: AtomicU64,
    evict: Notify,
}

struct Table {
    epoch: Instant,
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    /// Signalled when the table becomes empty (for the stop).
    emptied: Notify,
}

impl Table {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        // The map stays consistent whatever panicked while holding it.
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new connection, closing the longest-idle one if the table is full, or
    /// admitting it from the control reserve if every connection is busy. `None` when the
    /// reserve is busy too.
    fn admit(&self, max: usize) -> Option<(u64, Arc<Conn>)> {
        let mut conns = self.lock();
        let mut reserved = false;
        if conns.len() >= max {
            let victim = conns
                .iter()
                .filter(|(_, c)| c.busy.load(Ordering::Acquire) == 0)
                .min_by_key(|(_, c)| c.last_active.load(Ordering::Relaxed))
                .map(|(id, _)| *id);
            match victim {
                Some(victim) => {
                    if let Some(c) = conns.remove(&victim) {
                        // Its place, and what it may be used for.
                        reserved = c.reserved;
                        c.evict.notify_one();
                    }
                }
                None if conns.values().filter(|c| c.reserved).count() < CONTROL_RESERVE => {
                    reserved = true;
                }
                None => return None,
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            reserved,
            busy: AtomicUsize::new(0),
            last_active: AtomicU64::new(self.now_ms()),
            evict: Notify::new(),
        });
        conns.insert(id, conn.clone());
        Some((id, conn))
    }

    fn remove(&self, id: u64) {
        let mut conns = self.lock();
        conns.remove(&id);
        if conns.is_empty() {
            self.emptied.notify_waiters();
        }
    }

    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// Marks a connection busy from the moment a request arrives until its response body is
/// sent or dropped.
struct BusyGuard {
    table: Arc<Table>,
    conn: Arc<Conn>,
}

impl BusyGuard {
    fn new(table: Arc<Table>, conn: Arc<Conn>) -> Self {
        conn.busy.fetch_add(1, Ordering::AcqRel);
        conn.last_active.store(table.now_ms(), Ordering::Relaxed);
        Self { table, conn }
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.conn
            .last_active
            .store(self.table.now_ms(), Ordering::Relaxed);
        self.conn.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves `app` on `listener` until `stop` turns true, then until the open connections are
/// done (the caller bounds that wait). With `handoff`, connections for APIs whose replicas
/// take them are handed over (never with TLS, whose session cannot move).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServeLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    handoff: Option<Gateway>,
    mut stop: watch::Receiver<bool>,
) {
    let table = Arc::new(Table {
        epoch: Instant::now(),
        next_id: AtomicU64::new(0),
        conns: Mutex::new(HashMap::new()),
        emptied: Notify::new(),
    });
    let service = TowerToHyperService::new(app);
    let mut refused_logged = Instant::now() - Duration::from_secs(60);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped(&mut stop) => break,
        };
        let tcp = match accepted {
            Ok((tcp, _peer)) => tcp,
            Err(e) => {
                // Out of file descriptors (or another transient error): give connections
                // time to close instead of spinning on accept.
                if refused_logged.elapsed() > Duration::from_secs(10) {
                    tracing::warn!("cannot accept connections: {e}");
                    refused_logged = Instant::now();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some((id, conn)) = table.admit(limits.max_connections) else {
            if refused_logged.elapsed() > Duration::from_secs(10) {
                tracing::warn!(
                    "refusing connections: all {} are busy (GYRUS_MAX_CONNECTIONS)",
                    limits.max_connections
                );
                refused_logged = Instant::now();
            }
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let table = table.clone();
        let service = service.clone();
        let mut stop = stop.clone();
        let tls = tls.clone();
        let handoff = handoff.clone().filter(|_| tls.is_none() && !conn.reserved);
        tokio::spawn(async move {
            let svc = {
                let table = table.clone();
                let conn = conn.clone();
                hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                    let guard = BusyGuard::new(table.clone(), conn.clone());
                    let refused =
                        conn.reserved && !req.uri().path().starts_with(crate::api::API_PREFIX);
                    let call = (!refused).then(|| hyper::service::Service::call(&service, req));
                    async move {
                        let Some(call) = call else {
                            return Ok::<_, Infallible>(at_capacity());
                        };
                        let response = match call.await {
                            Ok(r) => r,
                            Err(never) => match never {},
                        };
                        // The guard lives as long as the response body, so a streaming answer
                        // (`logs -f`) counts as busy until it ends.
                        let response = response.map(|body| {
                            Body::new(body.map_frame(move |frame| {
                                let _ = &guard;
                                frame
                            }))
                        });
                        Ok::<_, Infallible>(response)
                    }
                })
            };
            match (tls, handoff) {
                (None, Some(gateway)) => {
                    serve_plain(tcp, &gateway, svc, limits, &table, &conn, &mut stop).await
                }
                (None, None) => drive(WriteStall::new(tcp), svc, limits, &conn, &mut stop).await,
                // The handshake gets the header timeout too, and yields to eviction and stop.
                (Some(acceptor), _) => {
                    let handshake = tokio::time::timeout(
                        limits.header_timeout,
                        acceptor.accept(WriteStall::new(tcp)),
                    );
                    tokio::select! {
                        done = handshake => {
                            if let Ok(Ok(stream)) = done {
                                drive(stream, svc, limits, &conn, &mut stop).await;
                            }
                        }
                        _ = conn.evict.notified() => {}
                        _ = stopped(&mut stop) => {}
                    }
                }
            }
            table.remove(id);
        });
    }
    // Stopped accepting; wait for the connections still open.
    loop {
        let emptied = table.emptied.notified();
        if table.len() == 0 {
            return;
        }
        emptied.await;
    }
}

/// The answer to a data-plane request on a connection admitted for the control API only.
fn at_capacity() -> hyper::Response<Body> {
    let mut response = hyper::Response::new(Body::from(
        r#"{"error":"the daemon is at its connection limit (GYRUS_MAX_CONNECTIONS); retry"}"#,
    ));
    *response.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    headers.insert(
        hyper::header::RETRY_AFTER,
        hyper::header::HeaderValue::from_static("1"),
    );
    headers.insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("close"),
    );
    response
}

/// A plain connection that may be handed to a replica: reads each first request head (within
/// the header timeout), hands the connection over when its API's replicas take connections,
/// and takes it back when the replica returns it or dies; otherwise serves it here.
async fn serve_plain<S>(
    mut tcp: TcpStream,
    gateway: &Gateway,
    svc: S,
    limits: ServeLimits,
    table: &Arc<Table>,
    conn: &Arc<Conn>,
    stop: &mut watch::Receiver<bool>,
) where
    S: hyper::service::HttpService<Incoming, ResBody = Body>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut carried = BytesMut::new();
    loop {
        let read = tokio::time::timeout(limits.header_timeout, head::read(&mut tcp, &mut carried));
        let head = tokio::select! {
            read = read => read,
            _ = conn.evict.notified() => return,
            _ = stopped(stop) => return,
        };
        let (target, route_kind) = match head {
            Ok(Ok(Head::Complete { method, path })) => (
                gateway.handoff_target(&method, &path),
                gyrus_gateway::route_of_request(&method, &path),
            ),
            Ok(Ok(Head::Other)) => (None, gyrus_launch::telemetry::Route::Predict),
            // Closed, timed out, or failed before a whole head: nothing to answer.
            Ok(Ok(Head::Closed)) | Ok(Err(_)) | Err(_) => return,
        };
        let Some((route, target, link)) =
            target.and_then(|(r, t)| t.handoff.clone().map(|l| (r, t, l)))
        else {
            break;
        };
        // Out of this process's reactor while the replica reads it, and busy (never evicted:
        // the replica bounds its idle time).
        let Ok(socket) = tcp.into_std() else { return };
        let busy = BusyGuard::new(table.clone(), conn.clone());
        let sent = carried.split().freeze();
        let handed = link
            .hand(&socket, sent.clone(), RETURN_AFTER.as_millis() as u32)
            .await;
        let outcome = match handed {
            Ok(rx) => Some(rx.await.unwrap_or(Outcome::Died(SlotState::Done))),
            Err(e) => {
                tracing::debug!("serving a connection here: replica {}: {e}", target.id);
                carried.extend_from_slice(&sent);
                None
            }
        };
        drop(busy);
        let Ok(back) = TcpStream::from_std(socket) else {
            return;
        };
        tcp = back;
        match outcome {
            None => break,
            Some(Outcome::Returned(bytes)) => carried.extend_from_slice(&bytes),
            Some(Outcome::Died(SlotState::Idle)) => {}
            Some(Outcome::Died(SlotState::Request)) => {
                let message = format!(
                    "replica {} of api {} stopped before answering (its process ended); it is \
                     being replaced, retry the request",
                    target.id, route.api
                );
                gateway.refused(
                    &route.api,
                    route_kind,
                    gyrus_launch::telemetry::RejectReason::ReplicaStopped,
                );
                answer_and_close(tcp, &message).await;
                return;
            }
            Some(Outcome::Closed) | Some(Outcome::Died(_)) => return,
        }
        if *stop.borrow() {
            return;
        }
    }
    // Served here, from the bytes already read.
    let io = WriteStall::new(Prefixed::new(carried.freeze(), tcp));
    drive(io, svc, limits, conn, stop).await
}

/// A 503 on a connection whose replica died after reading its request, then the end.
async fn answer_and_close(mut tcp: TcpStream, message: &str) {
    let body = serde_json::json!({ "error": message }).to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(WRITE_STALL_TIMEOUT, async {
        tcp.write_all(response.as_bytes()).await?;
        tcp.shutdown().await
    })
    .await;
}

/// Serves HTTP/1 on one connection until it ends, it is evicted (dropped at once), or the
/// daemon stops (idle: closed now; busy: after the response in progress).
async fn drive<I, S>(
    io: I,
    svc: S,
    limits: ServeLimits,
    conn: &Conn,
    stop: &mut watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = Body>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(TokioIo::new(io), svc);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = conn.evict.notified() => {}
        _ = stopped(stop) => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.as_mut().await;
        }
    }
}

/// Resolves once `stop` is true (the borrow it takes ends here, so the future stays `Send`).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table {
        Table {
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            conns: Mutex::new(HashMap::new()),
            emptied: Notify::new(),
        }
    }

    #[test]
    fn full_table_evicts_the_longest_idle_connection() {
        let t = table();
        let (a, ca) = t.admit(2).unwrap();
        let (b, cb) = t.admit(2).unwrap();
        ca.last_active.store(5, Ordering::Relaxed);
        cb.last_active.store(1, Ordering::Relaxed);
        let (c, _) = t.admit(2).unwrap();
        let ids: Vec<u64> = t.lock().keys().copied().collect();
        assert!(ids.contains(&a) && ids.contains(&c) && !ids.contains(&b));
        // A busy connection is never the victim: with both busy, the newcomer comes from the
        // control reserve, and once that is busy too, it is refused.
        ca.busy.store(1, Ordering::Relaxed);
        t.lock().get(&c).unwrap().busy.store(1, Ordering::Relaxed);
        for _ in 0..CONTROL_RESERVE {
            let (_, r) = t.admit(2).unwrap();
            assert!(r.reserved);
            r.busy.store(1, Ordering::Relaxed);
        }
        assert!(t.admit(2).is_none());
        assert_eq!(t.len(), 2 + CONTROL_RESERVE);
        // An idle reserved connection makes room again (and the newcomer is reserved too).
        let idle = t.lock().values().find(|c| c.reserved).unwrap().clone();
        idle.busy.store(0, Ordering::Relaxed);
        assert!(t.admit(2).unwrap().1.reserved);
    }
}
