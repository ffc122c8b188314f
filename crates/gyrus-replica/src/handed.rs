//! Connections the daemon hands this replica (`gyrus_gateway::handoff`): served here with the
//! replica's own routes, so that a request is parsed once, by the process that answers it.
//!
//! Each connection arrives with the bytes the daemon read (the first request head) and runs on
//! hyper with the same guards as the daemon's socket: a header timeout for idle keep-alive,
//! request bodies that stall answered 408, writes to a peer that stopped reading failing after
//! a minute. Its state (idle, request read, responding) is published in the slot table, which
//! the daemon reads if this process dies. The paths a client sends are the daemon's: the API's
//! endpoint, `{endpoint}/v2/...`, and `/v2/models/<one of ours>/...` map onto the replica's
//! routes; any other path belongs to another API or to the daemon and is proxied to the
//! daemon. A connection goes back to the daemon, idle, when the replica stops, or after the
//! time the daemon set, so that connections spread over replicas added since.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use bytes::{Bytes, BytesMut};
use gyrus_gateway::handoff::channel::Channel;
use gyrus_gateway::handoff::io::{Prefixed, WriteStall};
use gyrus_gateway::handoff::slots::{SlotState, SlotTable};
use gyrus_gateway::handoff::wire::{ToDaemon, ToReplica};
use gyrus_gateway::handoff::MAX_CARRIED_BYTES;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tower::ServiceExt;

/// Time for a client to send a request head on a handed connection (as on the daemon's
/// socket): idle keep-alive connections end after it.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a path on a handed connection goes.
#[derive(Debug, PartialEq, Eq)]
enum Mapped {
    /// To this replica's route (the path it has here).
    Here(String),
    /// The endpoint with a method it does not serve.
    NotAllowed,
    /// Another API's, or the daemon's.
    Daemon,
}

/// The paths of the API this replica serves, as clients send them to the daemon.
#[derive(Debug, Clone)]
pub(crate) struct Paths {
    pub(crate) endpoint: String,
    /// Models served over the Open Inference Protocol (empty for a Python predictor).
    pub(crate) models: Vec<String>,
}

impl Paths {
    /// The gateway's rules (`gyrus_gateway::Gateway::handle`), for this API only.
    fn map(&self, method: &Method, path: &str) -> Mapped {
        if path == "/v2" || path.starts_with("/v2/") {
            let model = path
                .strip_prefix("/v2/models/")
                .and_then(|rest| rest.split('/').next());
            return match model {
                Some(m) if self.models.iter().any(|own| own == m) => Mapped::Here(path.into()),
                _ => Mapped::Daemon,
            };
        }
        let endpoint = self.endpoint.as_str();
        if path == endpoint || path.strip_suffix('/') == Some(endpoint) {
            return match *method {
                Method::POST => Mapped::Here("/predict".into()),
                Method::GET | Method::HEAD => Mapped::Here("/".into()),
                _ => Mapped::NotAllowed,
            };
        }
        match path.strip_prefix(endpoint) {
            Some(rest) if rest == "/v2" || rest.starts_with("/v2/") => Mapped::Here(rest.into()),
            _ => Mapped::Daemon,
        }
    }
}

/// What every handed connection of this replica shares.
pub(crate) struct Handed {
    app: Router,
    paths: Paths,
    daemon: SocketAddr,
    client: Client<HttpConnector, Body>,
    stopping: watch::Receiver<bool>,
    channel: Channel,
    /// Connections being served.
    live: AtomicUsize,
    live_changed: Notify,
}

impl Handed {
    pub(crate) fn new(
        channel: Channel,
        app: Router,
        paths: Paths,
        daemon: SocketAddr,
        stopping: watch::Receiver<bool>,
    ) -> Arc<Self> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Arc::new(Handed {
            app,
            paths,
            daemon,
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
            stopping,
            channel,
            live: AtomicUsize::new(0),
            live_changed: Notify::new(),
        })
    }

    /// Takes connections until the daemon's end closes, or until the replica stops and every
    /// connection has been closed or given back (new arrivals then go straight back).
    pub(crate) async fn run(self: Arc<Self>) {
        let slots = match self.channel.recv().await {
            Ok(Some((msg, Some(fd)))) if ToReplica::decode(&msg) == Ok(ToReplica::Slots) => {
                match SlotTable::open(fd) {
                    Ok(t) => Arc::new(t),
                    Err(e) => {
                        tracing::error!("hand-off: cannot map the slot table: {e}");
                        return;
                    }
                }
            }
            _ => {
                tracing::error!("hand-off: the daemon sent no slot table");
                return;
            }
        };
        let mut stopping = self.stopping.clone();
        loop {
            let drained = async {
                let _ = stopping.wait_for(|s| *s).await;
                loop {
                    let changed = self.live_changed.notified();
                    if self.live.load(Ordering::Acquire) == 0 {
                        return;
                    }
                    changed.await;
                }
            };
            let received = tokio::select! {
                received = self.channel.recv() => received,
                _ = drained => return,
            };
            let (msg, fd) = match received {
                Ok(Some(m)) => m,
                // The daemon is gone: the stdin watcher stops the replica.
                Ok(None) | Err(_) => return,
            };
            let (
                Ok(ToReplica::Conn {
                    slot,
                    return_after_ms,
                    carried,
                }),
                Some(fd),
            ) = (ToReplica::decode(&msg), fd)
            else {
                continue;
            };
            if *self.stopping.borrow() {
                drop(fd);
                self.send(ToDaemon::Returned { slot, carried }).await;
                continue;
            }
            self.live.fetch_add(1, Ordering::AcqRel);
            let me = self.clone();
            let slots = slots.clone();
            tokio::spawn(async move {
                let return_after =
                    (return_after_ms > 0).then(|| Duration::from_millis(return_after_ms.into()));
                me.serve(fd, slot, carried, return_after, slots).await;
                me.live.fetch_sub(1, Ordering::AcqRel);
                me.live_changed.notify_waiters();
            });
        }
    }

    async fn send(&self, msg: ToDaemon) {
        if let Err(e) = self.channel.send(&msg.encode(), None).await {
            tracing::debug!("hand-off: telling the daemon {msg:?}: {e}");
        }
    }

    /// Serves one connection, then closes it or gives it back.
    async fn serve(
        self: &Arc<Self>,
        fd: OwnedFd,
        slot: u32,
        carried: Bytes,
        return_after: Option<Duration>,
        slots: Arc<SlotTable>,
    ) {
        let std = std::net::TcpStream::from(fd);
        let tcp = match std
            .set_nonblocking(true)
            .and_then(|()| TcpStream::from_std(std))
        {
            Ok(tcp) => tcp,
            Err(_) => {
                self.send(ToDaemon::Closed { slot }).await;
                return;
            }
        };
        let conn_state = Arc::new(ConnState {
            slots,
            slot,
            state: AtomicU8::new(SlotState::Request as u8),
            busy: AtomicUsize::new(0),
            changed: Notify::new(),
            stalled: AtomicBool::new(false),
        });
        let io = Tracked {
            io: WriteStall::new(Prefixed::new(carried, tcp)),
            conn: conn_state.clone(),
        };
        let svc = {
            let me = self.clone();
            let conn_state = conn_state.clone();
            hyper::service::service_fn(move |req: Request<Incoming>| -> ServiceFuture {
                let busy = BusyGuard::new(conn_state.clone());
                let me = me.clone();
                Box::pin(async move {
                    let response = me.route(req, &busy.0).await;
                    // The guard lives as long as the response body.
                    Ok(response.map(|body| {
                        Body::new(body.map_frame(move |frame| {
                            let _ = &busy;
                            frame
                        }))
                    }))
                })
            })
        };
        let mut conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .serve_connection(TokioIo::new(io), svc);

        let mut stopping = self.stopping.clone();
        let give_back_at = return_after.map(|d| tokio::time::Instant::now() + d);
        let mut giving_back = false;
        let ended = loop {
            let wait_return = async {
                match give_back_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                done = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => {
                    break Ended::Finished(done.is_ok());
                }
                _ = stopping.wait_for(|s| *s), if !giving_back => giving_back = true,
                _ = wait_return, if !giving_back => giving_back = true,
                _ = conn_state.changed.notified(), if giving_back => {}
            }
            // Between requests only: never while one is being answered.
            if giving_back && conn_state.busy.load(Ordering::Acquire) == 0 {
                Pin::new(&mut conn).graceful_shutdown();
                let done = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)).await;
                break if done.is_ok() {
                    Ended::GiveBack
                } else {
                    Ended::Finished(false)
                };
            }
        };
        let parts = conn.into_parts();
        let read_ahead = parts.read_buf;
        let (unread_prefix, tcp) = parts.io.into_inner().io.into_inner().into_parts();
        match ended {
            Ended::GiveBack if unread_prefix.len() + read_ahead.len() <= MAX_CARRIED_BYTES => {
                let mut carried = BytesMut::with_capacity(unread_prefix.len() + read_ahead.len());
                carried.extend_from_slice(&unread_prefix);
                carried.extend_from_slice(&read_ahead);
                // Out of this process before the daemon reads it again.
                drop(tcp);
                self.send(ToDaemon::Returned {
                    slot,
                    carried: carried.freeze(),
                })
                .await;
            }
            _ => {
                // The daemon holds a copy of the socket: shut it down so that the client sees
                // the end now.
                if let Ok(std) = tcp.into_std() {
                    let _ = std.shutdown(std::net::Shutdown::Both);
                }
                self.send(ToDaemon::Closed { slot }).await;
            }
        }
    }

    /// Answers one request of a handed connection.
    async fn route(&self, req: Request<Incoming>, conn: &Arc<ConnState>) -> Response<Body> {
        match self.paths.map(req.method(), req.uri().path()) {
            Mapped::Here(path) => {
                let uri = match req.uri().query() {
                    Some(q) => format!("{path}?{q}"),
                    None => path,
                };
                let Ok(uri) = uri.parse::<Uri>() else {
                    return crate::error_response(
                        StatusCode::BAD_REQUEST,
                        "invalid request URI".into(),
                    );
                };
                let (mut parts, body) = req.into_parts();
                parts.uri = uri;
                // A body that stops arriving fails the handler's read; the answer is then 408,
                // as the gateway gives, whatever the handler made of the failure.
                let watch = conn.clone();
                let body = gyrus_gateway::StallGuard::new(body, gyrus_gateway::BODY_STALL_TIMEOUT)
                    .map_err(move |e| {
                        if gyrus_gateway::is_stalled(e.as_ref()) {
                            watch.stalled.store(true, Ordering::Relaxed);
                        }
                        e
                    });
                let response = match self
                    .app
                    .clone()
                    .oneshot(Request::from_parts(parts, Body::new(body)))
                    .await
                {
                    Ok(r) => r,
                    Err(never) => match never {},
                };
                if conn.stalled.swap(false, Ordering::Relaxed) {
                    return crate::error_response(
                        StatusCode::REQUEST_TIMEOUT,
                        gyrus_gateway::BodyStalled(gyrus_gateway::BODY_STALL_TIMEOUT).to_string(),
                    );
                }
                response
            }
            Mapped::NotAllowed => {
                let message = format!(
                    "{} is not allowed on {}: use POST to predict, GET for health",
                    req.method(),
                    self.paths.endpoint
                );
                // A small body is read to its end so that the connection stays usable.
                let body = http_body_util::Limited::new(req.into_body(), 64 * 1024);
                let _ = tokio::time::timeout(Duration::from_secs(5), body.collect()).await;
                let mut r = crate::error_response(StatusCode::METHOD_NOT_ALLOWED, message);
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, POST"));
                r
            }
            Mapped::Daemon => self.to_daemon(req).await,
        }
    }

    /// A request for another API (or the daemon) on a connection handed here: sent on to the
    /// daemon, which routes it as it routes everything.
    async fn to_daemon(&self, req: Request<Incoming>) -> Response<Body> {
        let path_and_query = req
            .uri()
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/");
        let Ok(uri) = format!("http://{}{}", self.daemon, path_and_query).parse::<Uri>() else {
            return crate::error_response(StatusCode::BAD_REQUEST, "invalid request URI".into());
        };
        let (mut parts, body) = req.into_parts();
        parts.uri = uri;
        let body = Body::new(gyrus_gateway::StallGuard::new(
            body,
            gyrus_gateway::BODY_STALL_TIMEOUT,
        ));
        match self.client.request(Request::from_parts(parts, body)).await {
            Ok(r) => r.map(Body::new),
            Err(e) => crate::error_response(
                StatusCode::BAD_GATEWAY,
                format!("cannot reach the gyrus daemon at {}: {e}", self.daemon),
            ),
        }
    }
}

type ServiceFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

enum Ended {
    /// The connection ended (the client closed it, asked to, or timed out; or an error).
    Finished(#[allow(dead_code)] bool),
    /// Idle, stopped by us: the daemon takes it back.
    GiveBack,
}

/// One connection's state, shared by its socket and its requests.
struct ConnState {
    slots: Arc<SlotTable>,
    slot: u32,
    /// What the slot table last got.
    state: AtomicU8,
    /// Requests whose response body has not ended.
    busy: AtomicUsize,
    /// Signalled when `busy` drops.
    changed: Notify,
    stalled: AtomicBool,
}

impl ConnState {
    fn set(&self, state: SlotState) {
        if self.state.swap(state as u8, Ordering::Relaxed) != state as u8 {
            self.slots.set(self.slot, state);
        }
    }

    fn is(&self, state: SlotState) -> bool {
        self.state.load(Ordering::Relaxed) == state as u8
    }
}

/// Marks a request in progress from its head to the end of its response body.
struct BusyGuard(Arc<ConnState>);

impl BusyGuard {
    fn new(conn: Arc<ConnState>) -> Self {
        conn.busy.fetch_add(1, Ordering::AcqRel);
        conn.set(SlotState::Request);
        Self(conn)
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        if self.0.busy.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.set(SlotState::Done);
        }
        self.0.changed.notify_one();
    }
}

/// The connection's socket, publishing its state: bytes read while idle start a request,
/// bytes written start a response, and a flush after the response was produced ends it.
struct Tracked {
    io: WriteStall<Prefixed<TcpStream>>,
    conn: Arc<ConnState>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before && self.conn.is(SlotState::Idle) {
            self.conn.set(SlotState::Request);
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) && self.conn.is(SlotState::Request) {
            self.conn.set(SlotState::Responding);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) && self.conn.is(SlotState::Request) {
            self.conn.set(SlotState::Responding);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        if matches!(polled, Poll::Ready(Ok(()))) && self.conn.is(SlotState::Done) {
            self.conn.set(SlotState::Idle);
        }
        polled
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_paths_map_onto_the_replica_routes() {
        let p = Paths {
            endpoint: "/iris".into(),
            models: vec!["iris".into()],
        };
        let here = |s: &str| Mapped::Here(s.into());
        assert_eq!(p.map(&Method::POST, "/iris"), here("/predict"));
        assert_eq!(p.map(&Method::POST, "/iris/"), here("/predict"));
        assert_eq!(p.map(&Method::GET, "/iris"), here("/"));
        assert_eq!(p.map(&Method::HEAD, "/iris"), here("/"));
        assert_eq!(p.map(&Method::PUT, "/iris"), Mapped::NotAllowed);
        assert_eq!(
            p.map(&Method::POST, "/iris/v2/models/iris/infer"),
            here("/v2/models/iris/infer")
        );
        assert_eq!(p.map(&Method::GET, "/iris/v2"), here("/v2"));
        assert_eq!(
            p.map(&Method::POST, "/v2/models/iris/infer"),
            here("/v2/models/iris/infer")
        );
        assert_eq!(p.map(&Method::POST, "/v2/models/mlp/infer"), Mapped::Daemon);
        assert_eq!(p.map(&Method::GET, "/v2/health/ready"), Mapped::Daemon);
        assert_eq!(p.map(&Method::GET, "/v2"), Mapped::Daemon);
        assert_eq!(p.map(&Method::POST, "/iris2"), Mapped::Daemon);
        assert_eq!(p.map(&Method::POST, "/iris/v2x"), Mapped::Daemon);
        assert_eq!(p.map(&Method::GET, "/_gyrus/v1/apis"), Mapped::Daemon);
        let py = Paths {
            endpoint: "/a/hello".into(),
            models: vec![],
        };
        assert_eq!(
            py.map(&Method::POST, "/v2/models/hello/infer"),
            Mapped::Daemon
        );
        assert_eq!(py.map(&Method::POST, "/a/hello"), here("/predict"));
    }
}
