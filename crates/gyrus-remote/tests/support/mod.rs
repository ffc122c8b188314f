//! Real servers for the fetch tests: s3s-fs (an S3-compatible server on a local directory), a
//! loopback proxy in front of it that counts requests and can damage response bodies, and a
//! tiny static HTTP server.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use gyrus_remote::FetchOptions;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub const AK: &str = "gyrus-test-key";
pub const SK: &str = "gyrus-test-secret";

/// A port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    let listener = StdListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn s3s_fs_binary() -> PathBuf {
    let path = match std::env::var_os("GYRUS_TEST_S3S_FS") {
        Some(path) => PathBuf::from(path),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/bin/s3s-fs"),
    };
    assert!(
        path.is_file(),
        "s3s-fs not found at {}: run scripts/setup-s3s.sh (or set GYRUS_TEST_S3S_FS)",
        path.display()
    );
    path
}

/// s3s-fs on a fresh directory; buckets are its subdirectories. Killed on drop.
pub struct S3Server {
    pub root: tempfile::TempDir,
    pub addr: SocketAddr,
    child: Child,
}

impl S3Server {
    pub fn start(buckets: &[&str]) -> S3Server {
        let root = tempfile::tempdir().unwrap();
        for bucket in buckets {
            std::fs::create_dir_all(root.path().join(bucket)).unwrap();
        }
        let port = free_port();
        let child = Command::new(s3s_fs_binary())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", AK, "--secret-key", SK])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let server = S3Server { root, addr, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "s3s-fs did not start listening on {addr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes an object behind the server's back (s3s-fs computes the ETag, an MD5, on read).
    pub fn put(&self, bucket: &str, key: &str, data: &[u8]) {
        let path = self.root.path().join(bucket).join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The environment of a user with the test server's keys and no AWS files.
pub fn s3_env(endpoint: &str, home: &Path) -> FetchOptions {
    let env: BTreeMap<String, String> = [
        ("AWS_ACCESS_KEY_ID", AK),
        ("AWS_SECRET_ACCESS_KEY", SK),
        ("AWS_ENDPOINT_URL", endpoint),
        ("HOME", home.to_str().unwrap()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    FetchOptions {
        env,
        ..FetchOptions::default()
    }
}

/// What the proxy does to the body of an object GET (listings and HEADs pass untouched).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    None,
    /// Headers as the server sent them (Content-Length included), half the body, then the
    /// connection is dropped.
    Truncate,
    /// One byte in the middle inverted.
    FlipByte,
    /// Half the body, then nothing, forever.
    Stall,
}

type Body = BoxBody<Bytes, std::io::Error>;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A loopback HTTP proxy in front of `upstream` that logs every request.
pub struct Proxy {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<(String, String)>>>,
    /// Set once a damaged body has sent its first half.
    pub half_sent: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr, damage: Damage) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let half_sent = Arc::new(AtomicBool::new(false));
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let task = {
            let log = log.clone();
            let half_sent = half_sent.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let log = log.clone();
                    let half_sent = half_sent.clone();
                    let client = client.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |req: Request<Incoming>| {
                            let log = log.clone();
                            let half_sent = half_sent.clone();
                            let client = client.clone();
                            async move {
                                Ok::<_, Infallible>(
                                    forward(req, upstream, &client, damage, &log, &half_sent).await,
                                )
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            })
        };
        Proxy {
            addr,
            log,
            half_sent,
            task,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<(String, String)> {
        self.log.lock().unwrap().clone()
    }

    /// GETs of objects (not listings).
    pub fn object_gets(&self) -> usize {
        self.requests()
            .iter()
            .filter(|(method, uri)| method == "GET" && !uri.contains("list-type"))
            .count()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(
    req: Request<Incoming>,
    upstream: SocketAddr,
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    damage: Damage,
    log: &Mutex<Vec<(String, String)>>,
    half_sent: &Arc<AtomicBool>,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let uri = parts.uri.to_string();
    log.lock()
        .unwrap()
        .push((parts.method.to_string(), uri.clone()));
    let body = body.collect().await.unwrap().to_bytes();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    // The Host header stays the proxy's: it is what the client signed.
    let mut up = Request::builder()
        .method(parts.method.clone())
        .uri(format!("http://{upstream}{path}"));
    for (name, value) in &parts.headers {
        up = up.header(name, value);
    }
    let response = match client.request(up.body(Full::new(body)).unwrap()).await {
        Ok(response) => response,
        Err(e) => {
            return Response::builder()
                .status(StatusCode::BAD_GATEWAY)
                .body(full(e.to_string()))
                .unwrap()
        }
    };
    let (rparts, rbody) = response.into_parts();
    let mut bytes = rbody.collect().await.unwrap().to_bytes().to_vec();
    let object_get = parts.method == hyper::Method::GET
        && !uri.contains("list-type")
        && rparts.status.is_success();
    if !object_get || bytes.is_empty() {
        return Response::from_parts(rparts, full(bytes));
    }
    let half = Bytes::copy_from_slice(&bytes[..bytes.len() / 2]);
    let body = match damage {
        Damage::None => full(bytes),
        Damage::FlipByte => {
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0xff;
            full(bytes)
        }
        Damage::Truncate => {
            let half_sent = half_sent.clone();
            let first = futures_util::stream::iter([Ok(Frame::data(half))]);
            let then_fail = futures_util::stream::once(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                half_sent.store(true, Ordering::SeqCst);
                Err(std::io::Error::other("cut off by the test proxy"))
            });
            BodyExt::boxed(StreamBody::new(first.chain(then_fail)))
        }
        Damage::Stall => {
            let half_sent = half_sent.clone();
            let first = futures_util::stream::iter([Ok(Frame::data(half))]);
            let then_hang = futures_util::stream::once(async move {
                half_sent.store(true, Ordering::SeqCst);
                std::future::pending::<Result<Frame<Bytes>, std::io::Error>>().await
            });
            BodyExt::boxed(StreamBody::new(first.chain(then_hang)))
        }
    };
    Response::from_parts(rparts, body)
}

/// One file served over plain HTTP with optional ETag and Last-Modified; counts GETs.
#[derive(Clone)]
pub struct Resource {
    pub body: Bytes,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// More response headers (an S3 encryption header, say).
    pub headers: Vec<(&'static str, &'static str)>,
}

impl Resource {
    pub fn new(body: &'static [u8], etag: Option<&str>, last_modified: Option<&str>) -> Resource {
        Resource {
            body: Bytes::from_static(body),
            etag: etag.map(str::to_string),
            last_modified: last_modified.map(str::to_string),
            headers: Vec::new(),
        }
    }
}

pub struct StaticServer {
    pub addr: SocketAddr,
    files: Arc<Mutex<HashMap<String, Resource>>>,
    gets: Arc<Mutex<usize>>,
    behaviour: Arc<Mutex<Behaviour>>,
    task: JoinHandle<()>,
}

/// How the static server treats HEAD and Range requests.
#[derive(Debug, Clone, Copy, Default)]
struct Behaviour {
    /// Answer every HEAD with this status (a presigned URL's 403, a server's 405).
    refuse_head: Option<StatusCode>,
    /// Honour `Range: bytes=A-B` (else a range is ignored and the whole body sent).
    ranges: bool,
}

/// `bytes=A-B` of a Range header.
fn parse_range(value: &str) -> Option<(usize, usize)> {
    let (a, b) = value.strip_prefix("bytes=")?.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

impl StaticServer {
    pub async fn start() -> StaticServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let files: Arc<Mutex<HashMap<String, Resource>>> = Arc::default();
        let gets: Arc<Mutex<usize>> = Arc::default();
        let behaviour: Arc<Mutex<Behaviour>> = Arc::default();
        let task = {
            let files = files.clone();
            let gets = gets.clone();
            let behaviour = behaviour.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let files = files.clone();
                    let gets = gets.clone();
                    let behaviour = behaviour.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |req: Request<Incoming>| {
                            let files = files.clone();
                            let gets = gets.clone();
                            let behaviour = *behaviour.lock().unwrap();
                            async move {
                                if let Some(status) = behaviour.refuse_head {
                                    if req.method() == hyper::Method::HEAD {
                                        return Ok::<_, Infallible>(
                                            Response::builder()
                                                .status(status)
                                                .body(full(Bytes::new()))
                                                .unwrap(),
                                        );
                                    }
                                }
                                let found = files.lock().unwrap().get(req.uri().path()).cloned();
                                let Some(resource) = found else {
                                    return Ok::<_, Infallible>(
                                        Response::builder()
                                            .status(StatusCode::NOT_FOUND)
                                            .body(full("not found"))
                                            .unwrap(),
                                    );
                                };
                                if req.method() == hyper::Method::GET {
                                    *gets.lock().unwrap() += 1;
                                }
                                let range = req
                                    .headers()
                                    .get("range")
                                    .and_then(|v| v.to_str().ok())
                                    .and_then(parse_range)
                                    .filter(|_| behaviour.ranges);
                                let len = resource.body.len();
                                let mut response = Response::builder();
                                let mut body = resource.body.clone();
                                match range {
                                    Some((start, _)) if start >= len => {
                                        return Ok(Response::builder()
                                            .status(StatusCode::RANGE_NOT_SATISFIABLE)
                                            .header("content-range", format!("bytes */{len}"))
                                            .body(full(Bytes::new()))
                                            .unwrap());
                                    }
                                    Some((start, end)) => {
                                        let end = end.min(len - 1);
                                        body = resource.body.slice(start..end + 1);
                                        response =
                                            response.status(StatusCode::PARTIAL_CONTENT).header(
                                                "content-range",
                                                format!("bytes {start}-{end}/{len}"),
                                            );
                                    }
                                    None => {}
                                }
                                response = response.header("content-length", body.len());
                                if let Some(etag) = &resource.etag {
                                    response = response.header("etag", etag);
                                }
                                if let Some(lm) = &resource.last_modified {
                                    response = response.header("last-modified", lm);
                                }
                                for (name, value) in &resource.headers {
                                    response = response.header(*name, *value);
                                }
                                let body = match req.method() == hyper::Method::HEAD {
                                    true => full(Bytes::new()),
                                    false => full(body),
                                };
                                Ok(response.body(body).unwrap())
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            })
        };
        StaticServer {
            addr,
            files,
            gets,
            behaviour,
            task,
        }
    }

    /// Answers every HEAD with `status` from now on.
    pub fn refuse_head(&self, status: StatusCode) {
        self.behaviour.lock().unwrap().refuse_head = Some(status);
    }

    /// Honours (or, by default, ignores) Range headers.
    pub fn honour_ranges(&self, ranges: bool) {
        self.behaviour.lock().unwrap().ranges = ranges;
    }

    pub fn set(&self, path: &str, resource: Resource) {
        self.files
            .lock()
            .unwrap()
            .insert(path.to_string(), resource);
    }

    pub fn gets(&self) -> usize {
        *self.gets.lock().unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Every file under `dir`, relative, '/'-separated, sorted; to check what a cache holds.
pub fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.push(format!("{}/", path.strip_prefix(base).unwrap().display()));
                walk(base, &path, out);
            } else {
                out.push(path.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Bytes that differ from one test object to the next.
pub fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}
