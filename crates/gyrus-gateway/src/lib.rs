//! The gateway: the part of the data plane that runs inside the daemon. It owns the route table
//! (`routes`: endpoint → the API's ready replicas, each with an in-flight counter), the proxy
//! here that forwards a request to the ready replica with the fewest requests in flight, the
//! traffic splitters (`split`) and the connection hand-off (`handoff`).
//!
//! The control plane writes routes ([`RouteTable::set_api`], [`RouteTable::remove_api`]); the
//! gateway only reads them, so it knows nothing of processes or SQLite.
//!
//! Paths: `{endpoint}` goes to the replica's `/predict` (POST) or `/` (GET);
//! `{endpoint}/v2/...` to the replica's Open Inference Protocol routes; and `/v2/...` at the
//! root is the protocol for the whole server, with `/v2/models/{m}/...` sent to the API that
//! serves model `m` (an API named `m` first, else the first API by name with a model `m`).

pub mod handoff;
mod routes;
mod split;
mod stall;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CONTENT_TYPE, RETRY_AFTER};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

pub use routes::{ApiRoute, ReplicaTarget, RouteTable};
pub use split::{
    SplitCount, SplitRole, SplitRoute, ANSWERED_BY, SHADOW_BODY_MAX, SHADOW_HEADER,
    SHADOW_IN_FLIGHT_MAX,
};
pub use stall::{is_stalled, BodyStalled, StallGuard};

use routes::{pick_least_in_flight, pick_least_loaded};

use gyrus_launch::telemetry::{RejectReason, Route};

/// The body type the gateway answers with: either the replica's streamed body or a small
/// JSON error of its own.
pub type GatewayBody = UnsyncBoxBody<Bytes, hyper::Error>;

/// A request body that sends nothing for this long is dropped and the request answered 408.
pub const BODY_STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The proxy. Cheap to clone (everything inside is shared).
#[derive(Clone)]
pub struct Gateway {
    routes: Arc<RouteTable>,
    client: Client<HttpConnector, GatewayRequestBody>,
    /// 503s answered here, by API, route and reason (the error path only).
    refusals: Arc<std::sync::Mutex<RefusalCounts>>,
    /// Copies to splitters' shadow APIs that may be in flight.
    shadow_slots: Arc<tokio::sync::Semaphore>,
}

/// 503s the gateway answered itself: (API, route, reason) to how many.
type RefusalCounts = HashMap<(String, Route, RejectReason), u64>;

/// Request bodies are forwarded as they stream in, without buffering.
pub type GatewayRequestBody = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Decrements a replica's in-flight counter however the request ends (answer, error, or the
/// client going away and the future being dropped).
struct InFlightGuard(Arc<ReplicaTarget>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Gateway {
    pub fn new(routes: Arc<RouteTable>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(30))
            .build(connector);
        Self {
            routes,
            client,
            refusals: Default::default(),
            shadow_slots: Arc::new(tokio::sync::Semaphore::new(SHADOW_IN_FLIGHT_MAX)),
        }
    }

    /// Counts a request the gateway answered 503 itself (the replicas never saw it).
    pub fn refused(&self, api: &str, route: Route, reason: RejectReason) {
        let mut counts = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        *counts.entry((api.to_string(), route, reason)).or_default() += 1;
    }

    /// Every 503 the gateway answered itself since it started, by API, route and reason.
    pub fn refusals(&self) -> Vec<(String, Route, RejectReason, u64)> {
        let counts = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        counts
            .iter()
            .map(|((api, route, reason), n)| (api.clone(), *route, *reason, *n))
            .collect()
    }

    /// Forwards one request to the API that owns its path.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<GatewayBody>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let path = req.uri().path().to_owned();
        if path == "/v2" || path.starts_with("/v2/") {
            return match self.server_v2(&path) {
                Ok(route) => self.forward(req, route, &path).await,
                Err(resp) => resp,
            };
        }
        let Some(route) = self.routes.lookup(&path) else {
            if let Some((route, upstream)) = self.routes.lookup_v2_under_endpoint(&path) {
                let upstream = upstream.to_owned();
                return self.forward(req, route, &upstream).await;
            }
            if let Some((split, under)) = self.routes.lookup_split(&path) {
                return self.split(req, split, under).await;
            }
            return json_error(
                StatusCode::NOT_FOUND,
                serde_json::json!({
                    "error": format!("no API is deployed at {path}"),
                    "apis": self.routes.deployed_apis_json(),
                }),
            );
        };
        let upstream_path = match *req.method() {
            Method::POST => "/predict",
            Method::GET | Method::HEAD => "/",
            _ => {
                let mut resp = json_error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    serde_json::json!({
                        "error": format!("{} is not allowed on {}: use POST to predict, GET for health", req.method(), route.endpoint)
                    }),
                );
                resp.headers_mut()
                    .insert(ALLOW, HeaderValue::from_static("GET, HEAD, POST"));
                return resp;
            }
        };
        self.forward(req, route, upstream_path).await
    }

    /// Where a connection whose first request is `method path` can be handed, with the API
    /// it belongs to: the least loaded replica of the API that owns the path, when it takes
    /// connections. `None` for everything the daemon answers itself (the control API, batch
    /// submissions, the server-wide `/v2` paths, errors) or proxies.
    pub fn handoff_target(
        &self,
        method: &Method,
        path: &str,
    ) -> Option<(Arc<ApiRoute>, Arc<ReplicaTarget>)> {
        let route = if path == "/v2" || path.starts_with("/v2/") {
            let model = path
                .strip_prefix("/v2/models/")
                .and_then(|rest| rest.split('/').next())
                .filter(|m| !m.is_empty())?;
            self.routes.lookup_model(model)?
        } else if let Some(route) = self.routes.lookup(path) {
            if !matches!(*method, Method::POST | Method::GET | Method::HEAD) {
                return None;
            }
            route
        } else {
            self.routes.lookup_v2_under_endpoint(path)?.0
        };
        if route.batch {
            return None;
        }
        let target = pick_least_loaded(&route.replicas)?.clone();
        Some((route, target))
    }

    /// The root `/v2` paths: answered here for the server as a whole, or the route of the API
    /// serving the model named in the path.
    #[allow(clippy::result_large_err)]
    fn server_v2(&self, path: &str) -> Result<Arc<ApiRoute>, Response<GatewayBody>> {
        match path {
            "/v2" | "/v2/" => Err(json_error(
                StatusCode::OK,
                serde_json::json!({
                    "name": "gyrus",
                    "version": env!("CARGO_PKG_VERSION"),
                    "extensions": ["binary_tensor_data"],
                }),
            )),
            "/v2/health/live" => Err(empty_response(StatusCode::OK)),
            "/v2/health/ready" => Err(empty_response(if self.routes.models_ready() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            })),
            _ => {
                let model = path
                    .strip_prefix("/v2/models/")
                    .and_then(|rest| rest.split('/').next())
                    .filter(|m| !m.is_empty());
                let Some(model) = model else {
                    return Err(json_error(
                        StatusCode::NOT_FOUND,
                        serde_json::json!({"error": format!("no such Open Inference Protocol path: {path}")}),
                    ));
                };
                self.routes.lookup_model(model).ok_or_else(|| {
                    json_error(
                        StatusCode::NOT_FOUND,
                        serde_json::json!({
                            "error": format!("no deployed API serves a model named \"{model}\""),
                            "models": self.routes.models_json(),
                        }),
                    )
                })
            }
        }
    }

    async fn forward<B>(
        &self,
        req: Request<B>,
        route: Arc<ApiRoute>,
        upstream_path: &str,
    ) -> Response<GatewayBody>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.forward_as(req, route, upstream_path, true).await
    }

    /// [`Gateway::forward`]; `client` is false for a request no client waits for (a shadow
    /// copy), whose 503s are not the API's refusals.
    async fn forward_as<B>(
        &self,
        req: Request<B>,
        route: Arc<ApiRoute>,
        upstream_path: &str,
        client: bool,
    ) -> Response<GatewayBody>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Some(target) = pick_least_in_flight(&route.replicas) else {
            if client {
                self.refused(
                    &route.api,
                    route_of(upstream_path),
                    RejectReason::NoReadyReplica,
                );
            }
            // A small body is read to its end first, so that the connection stays usable for
            // the client's retry (an unread body would close it under the client's next request).
            let body = http_body_util::Limited::new(req.into_body(), 64 * 1024);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), body.collect()).await;
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({
                    "error": format!("api {} has no ready replica (status: {})", route.api, route.status)
                }),
            );
        };

        let uri = match req.uri().query() {
            Some(q) => format!("http://{}{}?{}", target.addr, upstream_path, q),
            None => format!("http://{}{}", target.addr, upstream_path),
        };
        let uri: Uri = match uri.parse() {
            Ok(u) => u,
            Err(e) => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({"error": format!("invalid request URI: {e}")}),
                )
            }
        };
        let (mut parts, body) = req.into_parts();
        parts.uri = uri;
        parts.headers.remove(http::header::HOST);
        let body: GatewayRequestBody = StallGuard::new(body, BODY_STALL_TIMEOUT).boxed_unsync();
        let upstream = Request::from_parts(parts, body);

        target.in_flight.fetch_add(1, Ordering::Relaxed);
        let guard = InFlightGuard(target.clone());
        let result = self.client.request(upstream).await;
        drop(guard);
        match result {
            Ok(resp) => resp.map(|b| b.boxed_unsync()),
            // The replica went away under the request (it crashed, was killed, or ran out of
            // memory): 503, which says "try again", because the supervisor replaces it and the
            // other replicas keep serving.
            Err(e) if stall::is_stalled(&e) => json_error(
                StatusCode::REQUEST_TIMEOUT,
                serde_json::json!({ "error": stall::BodyStalled(BODY_STALL_TIMEOUT).to_string() }),
            ),
            Err(e) => {
                if client {
                    self.refused(
                        &route.api,
                        route_of(upstream_path),
                        RejectReason::ReplicaStopped,
                    );
                }
                json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({
                        "error": format!(
                            "replica {} of api {} stopped before answering ({}); it is being replaced, retry the request",
                            target.id, route.api, error_chain(&e)
                        )
                    }),
                )
            }
        }
    }
}

/// The metrics' route of a request as the client sent it (the API's endpoint or a `/v2` path).
pub fn route_of_request(method: &Method, path: &str) -> Route {
    if path.ends_with("/infer") {
        Route::Infer
    } else if path == "/v2" || path.starts_with("/v2/") || path.contains("/v2/") {
        Route::Metadata
    } else if method == Method::POST {
        Route::Predict
    } else {
        Route::Health
    }
}

/// The metrics' route of a path on a replica (what the gateway forwards to).
pub fn route_of(upstream_path: &str) -> Route {
    match upstream_path {
        "/predict" => Route::Predict,
        "/" => Route::Health,
        p if p.ends_with("/infer") => Route::Infer,
        _ => Route::Metadata,
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

fn empty_response(status: StatusCode) -> Response<GatewayBody> {
    let mut resp = Response::new(
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp
}

/// A JSON error body in the shape every gyrus component uses: `{"error": "...", ...}`.
pub fn json_error(status: StatusCode, body: serde_json::Value) -> Response<GatewayBody> {
    let bytes = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
    let mut resp = Response::new(
        Full::new(bytes)
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    // Every 503 of the gateway is temporary (no ready replica yet, one replaced): say when to
    // come back, as clients and load balancers honour it.
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}
