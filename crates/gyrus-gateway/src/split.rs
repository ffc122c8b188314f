//! Traffic splitters (Cortex's `TrafficSplitter`): an endpoint with no replicas of its own,
//! whose requests the gateway shares among APIs by weight, request by request, and copies to
//! a shadow API whose answers are dropped.
//!
//! Shares are exact rather than random: the answering APIs take turns in an interleaved
//! schedule of 100 slots (smooth weighted round robin, as nginx's upstreams do), so every 100
//! consecutive requests follow the weights. Which requests are copied to the shadow is drawn
//! at random, so that it does not move in step with the schedule.
//!
//! A splitter's connections are never handed to a replica (the next request on the
//! connection may belong to another API), so its requests take the proxy path.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, ALLOW, CONTENT_LENGTH};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame};

use gyrus_launch::telemetry::RejectReason;

use crate::{json_error, stall, ApiRoute, Gateway, GatewayBody, RouteTable, BODY_STALL_TIMEOUT};

/// Which API answered a request sent to a splitter.
pub const ANSWERED_BY: HeaderName = HeaderName::from_static("x-gyrus-api");

/// Marks the shadow's copy of a request.
pub const SHADOW_HEADER: HeaderName = HeaderName::from_static("x-gyrus-shadow");

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Bodies up to this size are copied to the shadow; a larger one is sent only to the API that
/// answers (the copy would hold it in memory).
pub const SHADOW_BODY_MAX: usize = 4 * 1024 * 1024;

/// Copies in flight at once; beyond, a request is not copied (a slow shadow must not hold
/// the daemon's memory or connections).
pub const SHADOW_IN_FLIGHT_MAX: usize = 64;

/// How long a copy may take before it is dropped.
pub const SHADOW_TIMEOUT: Duration = Duration::from_secs(60);

static NEXT_ROUTE_ID: AtomicU64 = AtomicU64::new(1);

/// One splitter's route.
#[derive(Debug)]
pub struct SplitRoute {
    pub name: String,
    pub endpoint: String,
    /// The answering APIs with their weights (those with weight 0 never get a request).
    pub apis: Vec<(String, u32)>,
    /// The shadow API and the percent of requests copied to it.
    pub shadow: Option<(String, u32)>,
    /// Unique per route made (see [`SplitCount::route`]).
    id: u64,
    /// Index into `apis` for each of 100 consecutive requests.
    schedule: Vec<usize>,
    next: AtomicUsize,
    /// Requests sent to each of `apis` (same order), copies sent to the shadow, and copies
    /// drawn but not sent (too many in flight, a body too large, the shadow not deployed).
    sent: Vec<AtomicU64>,
    copied: AtomicU64,
    copies_skipped: AtomicU64,
}

/// What a splitter did with a request, for `gyrus_splitter_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SplitRole {
    /// Sent to an API that answers.
    Sent,
    /// Copied to the shadow.
    Copied,
    /// Drawn for a copy that was not sent.
    CopySkipped,
}

impl SplitRole {
    pub fn as_str(&self) -> &'static str {
        match self {
            SplitRole::Sent => "sent",
            SplitRole::Copied => "copied",
            SplitRole::CopySkipped => "copy_skipped",
        }
    }
}

/// A splitter's count of one API and role since the splitter was (re)deployed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitCount {
    /// Which installation of the splitter: a new one (a deploy that changed it) counts from 0.
    pub route: u64,
    pub splitter: String,
    pub api: String,
    pub role: SplitRole,
    pub total: u64,
}

impl SplitRoute {
    pub fn new(
        name: impl Into<String>,
        endpoint: impl Into<String>,
        apis: Vec<(String, u32)>,
        shadow: Option<(String, u32)>,
    ) -> Self {
        let weights: Vec<u32> = apis.iter().map(|(_, w)| *w).collect();
        Self {
            name: name.into(),
            endpoint: endpoint.into(),
            id: NEXT_ROUTE_ID.fetch_add(1, Ordering::Relaxed),
            schedule: interleave(&weights),
            sent: apis.iter().map(|_| AtomicU64::new(0)).collect(),
            apis,
            shadow,
            next: AtomicUsize::new(0),
            copied: AtomicU64::new(0),
            copies_skipped: AtomicU64::new(0),
        }
    }

    /// Counts a request sent on to `api` (one of the answering APIs).
    fn count_sent(&self, api: &str) {
        if let Some(i) = self.apis.iter().position(|(a, _)| a == api) {
            self.sent[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Every count of this splitter.
    pub fn counts(&self) -> Vec<SplitCount> {
        let count = |api: &str, role, n: &AtomicU64| SplitCount {
            route: self.id,
            splitter: self.name.clone(),
            api: api.to_string(),
            role,
            total: n.load(Ordering::Relaxed),
        };
        let mut out: Vec<SplitCount> = self
            .apis
            .iter()
            .zip(&self.sent)
            .map(|((api, _), n)| count(api, SplitRole::Sent, n))
            .collect();
        if let Some((shadow, _)) = &self.shadow {
            out.push(count(shadow, SplitRole::Copied, &self.copied));
            out.push(count(shadow, SplitRole::CopySkipped, &self.copies_skipped));
        }
        out
    }

    /// The API that answers the next request, and whether the request is copied to the shadow.
    pub fn pick(&self) -> (&str, Option<&str>) {
        let api = match self.schedule.len() {
            0 => self.apis.first().map(|(a, _)| a.as_str()).unwrap_or(""),
            n => {
                let slot = self.next.fetch_add(1, Ordering::Relaxed) % n;
                self.apis[self.schedule[slot]].0.as_str()
            }
        };
        let shadow = self
            .shadow
            .as_ref()
            .filter(|(_, percent)| fastrand::u32(0..100) < *percent)
            .map(|(s, _)| s.as_str());
        (api, shadow)
    }
}

/// Smooth weighted round robin: for weights summing to N, N slots in which each index
/// appears as often as its weight, spread out (weights 2, 1 give 0, 1, 0 rather than 0, 0, 1).
fn interleave(weights: &[u32]) -> Vec<usize> {
    let total: i64 = weights.iter().map(|w| i64::from(*w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            current[i] += i64::from(*w);
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best);
    }
    out
}

impl RouteTable {
    /// Installs or replaces a splitter's route.
    pub fn set_split(&self, route: SplitRoute) {
        let mut map = self.splits.write().unwrap_or_else(|e| e.into_inner());
        map.retain(|endpoint, r| r.name != route.name || *endpoint == route.endpoint);
        map.insert(route.endpoint.clone(), Arc::new(route));
        self.any_split.store(!map.is_empty(), Ordering::Relaxed);
    }

    pub fn remove_split(&self, name: &str) {
        let mut map = self.splits.write().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, r| r.name != name);
        self.any_split.store(!map.is_empty(), Ordering::Relaxed);
    }

    /// The splitter at `path` (its endpoint, or `{endpoint}/v2...`), with the path under it.
    pub(crate) fn lookup_split(&self, path: &str) -> Option<(Arc<SplitRoute>, Option<String>)> {
        if !self.any_split.load(Ordering::Relaxed) {
            return None;
        }
        let map = self.splits.read().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = map.get(path).or_else(|| map.get(path.strip_suffix('/')?)) {
            return Some((r.clone(), None));
        }
        path.rmatch_indices("/v2")
            .filter(|(i, _)| {
                let rest = &path[i + 3..];
                *i > 0 && (rest.is_empty() || rest.starts_with('/'))
            })
            .find_map(|(i, _)| {
                map.get(&path[..i])
                    .map(|r| (r.clone(), Some(path[i..].to_string())))
            })
    }

    /// The route of the API named `api`.
    pub(crate) fn by_name(&self, api: &str) -> Option<Arc<ApiRoute>> {
        self.read().values().find(|r| r.api == api).cloned()
    }

    /// Every splitter's counts.
    pub fn split_counts(&self) -> Vec<SplitCount> {
        let map = self.splits.read().unwrap_or_else(|e| e.into_inner());
        map.values().flat_map(|r| r.counts()).collect()
    }

    /// The splitters, for the list of what is deployed.
    pub(crate) fn splits_json(&self) -> Vec<serde_json::Value> {
        let map = self.splits.read().unwrap_or_else(|e| e.into_inner());
        map.values()
            .map(|r| serde_json::json!({"name": r.name, "endpoint": r.endpoint, "kind": "TrafficSplitter"}))
            .collect()
    }
}

impl Gateway {
    /// A request to a splitter: sent to the API whose turn it is, and copied to the shadow
    /// when it is drawn for a copy.
    pub(crate) async fn split<B>(
        &self,
        req: Request<B>,
        split: Arc<SplitRoute>,
        under: Option<String>,
    ) -> Response<GatewayBody>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let upstream_path = match (under, req.method()) {
            (Some(p), _) => p,
            (None, &Method::POST) => "/predict".to_string(),
            (None, &Method::GET | &Method::HEAD) => "/".to_string(),
            (None, method) => {
                let mut resp = json_error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    serde_json::json!({
                        "error": format!("{method} is not allowed on {}: use POST to predict, GET for health", split.endpoint)
                    }),
                );
                resp.headers_mut()
                    .insert(ALLOW, HeaderValue::from_static("GET, HEAD, POST"));
                return resp;
            }
        };
        let (api, shadow) = split.pick();
        let Some(route) = self.routes.by_name(api) else {
            self.refused(
                api,
                crate::route_of(&upstream_path),
                RejectReason::NoReadyReplica,
            );
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({
                    "error": format!("api {api} of traffic splitter {} is not deployed", split.name)
                }),
            );
        };
        split.count_sent(api);
        let answered_by = HeaderValue::from_str(api).ok();
        // A copy needs the shadow ready, a free slot, and a body small enough to hold (as far
        // as Content-Length tells; a chunked body is checked as it is read).
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let shadow = shadow.and_then(|s| {
            let copy = self
                .routes
                .by_name(s)
                .filter(|r| !r.replicas.is_empty())
                .filter(|_| declared.is_none_or(|n| n <= SHADOW_BODY_MAX as u64))
                .and_then(|r| Some((r, self.shadow_slots.clone().try_acquire_owned().ok()?)));
            if copy.is_none() {
                split.copies_skipped.fetch_add(1, Ordering::Relaxed);
            }
            copy
        });
        let mut resp = match shadow {
            None => self.forward(req, route, &upstream_path).await,
            Some((shadow_route, permit)) => {
                let (parts, body) = req.into_parts();
                let buffered = match read_up_to(body, SHADOW_BODY_MAX).await {
                    Ok(b) => b,
                    Err(resp) => return resp,
                };
                match buffered {
                    Buffered::Whole(bytes) => {
                        split.copied.fetch_add(1, Ordering::Relaxed);
                        let copy = shadow_copy(&parts, bytes.clone());
                        let gateway = self.clone();
                        let path = upstream_path.clone();
                        tokio::spawn(async move {
                            let _permit = permit;
                            let _ = tokio::time::timeout(SHADOW_TIMEOUT, async {
                                // Its answer is read and dropped frame by frame, never held.
                                let resp =
                                    gateway.forward_as(copy, shadow_route, &path, false).await;
                                let mut body = resp.into_body();
                                while let Some(Ok(_)) = body.frame().await {}
                            })
                            .await;
                        });
                        let req = Request::from_parts(parts, Full::new(bytes));
                        self.forward(req, route, &upstream_path).await
                    }
                    Buffered::Partial(prefix, rest) => {
                        drop(permit);
                        split.copies_skipped.fetch_add(1, Ordering::Relaxed);
                        let body = Resumed {
                            read: Some(prefix),
                            rest,
                        };
                        self.forward(Request::from_parts(parts, body), route, &upstream_path)
                            .await
                    }
                }
            }
        };
        if let Some(v) = answered_by {
            resp.headers_mut().insert(ANSWERED_BY, v);
        }
        resp
    }
}

/// The shadow's copy of a request: the same method, path and headers, marked as a copy, with
/// a request id of its own (the client's with `.shadow`, so the two logs can be matched).
fn shadow_copy(parts: &http::request::Parts, body: Bytes) -> Request<Full<Bytes>> {
    let mut copy = Request::new(Full::new(body));
    *copy.method_mut() = parts.method.clone();
    *copy.uri_mut() = parts.uri.clone();
    *copy.headers_mut() = parts.headers.clone();
    let headers = copy.headers_mut();
    headers.insert(SHADOW_HEADER, HeaderValue::from_static("1"));
    let id = headers
        .remove(REQUEST_ID)
        .and_then(|id| HeaderValue::from_bytes(&[id.as_bytes(), b".shadow"].concat()).ok())
        .filter(|id| gyrus_launch::telemetry::valid_request_id(id.as_bytes()));
    if let Some(id) = id {
        headers.insert(REQUEST_ID, id);
    }
    copy
}

/// A request body read up to a limit.
enum Buffered<B> {
    Whole(Bytes),
    /// Over the limit: what was read, and the rest still to stream.
    Partial(Bytes, std::pin::Pin<Box<B>>),
}

/// A body of which a first part was read already: that part, then the rest as it comes.
struct Resumed<B> {
    read: Option<Bytes>,
    rest: std::pin::Pin<Box<B>>,
}

impl<B> Body for Resumed<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Some(read) = this.read.take() {
            return std::task::Poll::Ready(Some(Ok(Frame::data(read))));
        }
        this.rest
            .as_mut()
            .poll_frame(cx)
            .map(|frame| frame.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.read.is_none() && self.rest.is_end_stream()
    }
}

#[allow(clippy::result_large_err)]
async fn read_up_to<B>(body: B, limit: usize) -> Result<Buffered<B>, Response<GatewayBody>>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut body = Box::pin(body);
    let mut read = bytes::BytesMut::new();
    loop {
        let frame = match tokio::time::timeout(BODY_STALL_TIMEOUT, body.as_mut().frame()).await {
            Err(_) => {
                return Err(json_error(
                    StatusCode::REQUEST_TIMEOUT,
                    serde_json::json!({ "error": stall::BodyStalled(BODY_STALL_TIMEOUT).to_string() }),
                ))
            }
            Ok(None) => return Ok(Buffered::Whole(read.freeze())),
            Ok(Some(Err(e))) => {
                let e: Box<dyn std::error::Error + Send + Sync> = e.into();
                return Err(json_error(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({ "error": format!("reading the request body: {e}") }),
                ));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        // Trailers are not forwarded on the proxy path either.
        if let Ok(data) = frame.into_data() {
            read.extend_from_slice(&data);
            if read.len() > limit {
                return Ok(Buffered::Partial(read.freeze(), body));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_follows_the_weights_and_spreads_them() {
        assert_eq!(interleave(&[2, 1]), vec![0, 1, 0]);
        let s = interleave(&[50, 30, 20]);
        assert_eq!(s.len(), 100);
        for (i, w) in [50, 30, 20].iter().enumerate() {
            assert_eq!(s.iter().filter(|x| **x == i).count(), *w);
            // Spread: every 10 slots hold the weight's tenth.
            assert_eq!(s[..10].iter().filter(|x| **x == i).count(), w / 10);
        }
        assert_eq!(interleave(&[100, 0]), vec![0; 100]);
        let s = interleave(&[1, 99]);
        assert_eq!(s.iter().filter(|x| **x == 0).count(), 1);
        assert!(interleave(&[]).is_empty());
    }

    #[test]
    fn picks_follow_the_schedule_and_the_shadow_share() {
        let split = SplitRoute::new(
            "s",
            "/s",
            vec![("a".into(), 70), ("b".into(), 30)],
            Some(("c".into(), 40)),
        );
        let mut a = 0;
        let mut copied = 0;
        for _ in 0..1000 {
            let (api, shadow) = split.pick();
            split.count_sent(api);
            a += usize::from(api == "a");
            copied += usize::from(shadow == Some("c"));
        }
        assert_eq!(a, 700);
        assert!(
            (300..500).contains(&copied),
            "{copied} copies of 1000 at 40%"
        );
        let counts = split.counts();
        let sent = |api: &str| {
            counts
                .iter()
                .find(|c| c.api == api && c.role == SplitRole::Sent)
                .map(|c| c.total)
        };
        assert_eq!((sent("a"), sent("b")), (Some(700), Some(300)));
        assert!(counts
            .iter()
            .any(|c| c.api == "c" && c.role == SplitRole::Copied));
        let none = SplitRoute::new("s", "/s", vec![("a".into(), 100)], Some(("c".into(), 0)));
        assert!((0..100).all(|_| none.pick() == ("a", None)));
    }

    #[test]
    fn splitter_paths() {
        let t = RouteTable::new();
        assert!(t.lookup_split("/s").is_none());
        t.set_split(SplitRoute::new("s", "/s", vec![("a".into(), 100)], None));
        let found = |p: &str| t.lookup_split(p).map(|(r, under)| (r.name.clone(), under));
        assert_eq!(found("/s"), Some(("s".into(), None)));
        assert_eq!(found("/s/"), Some(("s".into(), None)));
        assert_eq!(
            found("/s/v2/models/m/infer"),
            Some(("s".into(), Some("/v2/models/m/infer".into())))
        );
        assert_eq!(found("/sx"), None);
        t.set_split(SplitRoute::new(
            "s",
            "/moved",
            vec![("a".into(), 100)],
            None,
        ));
        assert_eq!(found("/s"), None);
        t.remove_split("s");
        assert_eq!(found("/moved"), None);
    }
}
