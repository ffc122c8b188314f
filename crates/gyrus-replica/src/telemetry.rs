//! What the replica records about each request it answers, on whichever path it came (handed
//! connections and the loopback port run the same router): one middleware, [`observe`], gives
//! the request its `X-Request-ID`, times it, counts it by route and status class, counts 503s by
//! reason, and feeds successful predictions to the API's `tracker`. The counts go to the daemon
//! in the once-a-second metrics event ([`Telemetry::snapshot`]); recording is a few relaxed
//! atomic additions, so that it costs the request path well under a microsecond.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use gyrus_launch::telemetry::{
    valid_request_id, value_bucket, RejectReason, RequestIds, RequestStats, Route, Tally,
    TrackerStats, MAX_TRACKED_CLASSES, OTHER_CLASS,
};
use gyrus_spec::{ModelType, TrackerSpec};
use http_body_util::BodyExt;

pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest class name the tracker keeps; a longer value is invalid (free text, not a class).
const MAX_CLASS_LEN: usize = 128;

/// The largest response the tracker reads (a prediction, not a file).
const MAX_TRACKED_BODY: usize = 64 * 1024;

pub(crate) struct Telemetry {
    tally: Tally,
    tracker: Option<Tracker>,
    ids: Ids,
    /// The replica's id, for its log lines.
    replica: String,
}

impl Telemetry {
    pub(crate) fn new(python: bool, tracker: Option<&TrackerSpec>, replica: String) -> Self {
        Telemetry {
            replica,
            tally: if python {
                Tally::with_workers()
            } else {
                Tally::default()
            },
            tracker: tracker.map(Tracker::new),
            ids: Ids::new(),
        }
    }

    pub(crate) fn tally(&self) -> &Tally {
        &self.tally
    }

    pub(crate) fn snapshot(&self) -> RequestStats {
        let mut stats = self.tally.snapshot();
        stats.tracker = self.tracker.as_ref().map(Tracker::snapshot);
        stats
    }
}

/// The replica's route of a path on its own router (handed paths are already mapped onto it).
fn route_of(method: &Method, path: &str) -> Option<Route> {
    match (method, path) {
        (&Method::POST, "/predict") => Some(Route::Predict),
        (&Method::GET | &Method::HEAD, "/") => Some(Route::Health),
        (_, p) if p.starts_with("/v2/") || p == "/v2" => Some(if p.ends_with("/infer") {
            Route::Infer
        } else {
            Route::Metadata
        }),
        _ => None,
    }
}

/// The middleware around every route of the replica.
pub(crate) async fn observe(
    State(telemetry): State<Arc<Telemetry>>,
    mut req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let route = route_of(req.method(), req.uri().path());
    let id = match req.headers().get(REQUEST_ID) {
        Some(v) if valid_client_id(v) => v.clone(),
        _ => {
            // Handlers read the id from the headers (the worker's log lines, a predictor that
            // takes `headers`): the one the response will carry.
            let made = telemetry.ids.make();
            req.headers_mut().insert(REQUEST_ID, made.clone());
            made
        }
    };
    let mut response = next.run(req).await;
    if let Some(reason) = response.extensions().get::<RejectReason>() {
        telemetry.tally.rejected(*reason);
    }
    let status = response.status();
    if let (Some(tracker), Some(Route::Predict), true) =
        (&telemetry.tracker, route, status.is_success())
    {
        response = tracker.observe(response).await;
    }
    if status.is_server_error() && status != axum::http::StatusCode::SERVICE_UNAVAILABLE {
        // The answer says what failed; the log says which request it was.
        tracing::warn!(
            "replica {}: request_id={} {} answered {} after {:.1} ms",
            telemetry.replica,
            id.to_str().unwrap_or(""),
            route.map_or("request", Route::as_str),
            status.as_u16(),
            started.elapsed().as_secs_f64() * 1000.0
        );
    }
    response.headers_mut().insert(REQUEST_ID, id);
    if let Some(route) = route {
        telemetry
            .tally
            .request(route, status.as_u16(), started.elapsed());
    }
    response
}

fn valid_client_id(v: &HeaderValue) -> bool {
    valid_request_id(v.as_bytes())
}

/// The process's request ids ([`RequestIds`]), seeded from the OS's randomness.
struct Ids(RequestIds);

impl Ids {
    fn new() -> Self {
        let mut seed = [0u8; 4];
        // Without the OS's randomness, time and pid still tell replicas apart.
        if getrandom::fill(&mut seed).is_err() {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            seed = (nanos ^ std::process::id()).to_le_bytes();
        }
        Ids(RequestIds::new(u32::from_le_bytes(seed)))
    }

    fn make(&self) -> HeaderValue {
        HeaderValue::from_bytes(&self.0.make()).unwrap_or(HeaderValue::from_static("0"))
    }
}

/// Cortex's `tracker`: classes or values read from successful predictions.
struct Tracker {
    key: Option<String>,
    model_type: ModelType,
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    classes: BTreeMap<String, u64>,
    values: BTreeMap<i32, (u64, f64)>,
    invalid: u64,
}

/// What the tracker read from one response.
#[derive(Debug, PartialEq)]
enum Reading {
    Class(String),
    Value(f64),
    Invalid,
}

impl Tracker {
    fn new(spec: &TrackerSpec) -> Self {
        Tracker {
            key: spec.key.clone(),
            model_type: spec.model_type,
            seen: Mutex::new(Seen::default()),
        }
    }

    /// Reads the response's body and gives the response back whole. The tracker never fails a
    /// request: what it cannot read is counted as invalid.
    async fn observe(&self, response: Response) -> Response {
        use axum::body::HttpBody as _;
        // Answers are in memory, so their size is known: one too large to be a prediction
        // (a file, an image) goes out untouched, unread.
        let small = response
            .body()
            .size_hint()
            .exact()
            .is_some_and(|n| n <= MAX_TRACKED_BODY as u64);
        if !small {
            self.record(Reading::Invalid);
            return response;
        }
        let (parts, body) = response.into_parts();
        match body.collect().await {
            Ok(collected) => {
                let bytes = collected.to_bytes();
                self.record(read_prediction(
                    &bytes,
                    self.key.as_deref(),
                    self.model_type,
                ));
                Response::from_parts(parts, Body::from(bytes))
            }
            // A body of known size already in memory does not fail; if one did, the client
            // could not have had it either.
            Err(_) => {
                self.record(Reading::Invalid);
                Response::from_parts(parts, Body::empty())
            }
        }
    }

    fn record(&self, reading: Reading) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        match reading {
            Reading::Class(class) => {
                let full = seen.classes.len() >= MAX_TRACKED_CLASSES;
                let name = if full && !seen.classes.contains_key(&class) {
                    OTHER_CLASS.to_string()
                } else {
                    class
                };
                *seen.classes.entry(name).or_default() += 1;
            }
            Reading::Value(v) => {
                let b = seen.values.entry(value_bucket(v)).or_default();
                b.0 += 1;
                b.1 += v;
            }
            Reading::Invalid => seen.invalid += 1,
        }
    }

    fn snapshot(&self) -> TrackerStats {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        TrackerStats {
            classes: seen.classes.clone(),
            values: seen
                .values
                .iter()
                .map(|(b, (count, sum))| (*b, *count, *sum))
                .collect(),
            invalid: seen.invalid,
        }
    }
}

/// The tracked value of a prediction: the value at `key` of a JSON object, or the whole
/// response when it is a JSON scalar or plain text. A one-element list (a batch of one, as
/// model APIs answer) stands for its element.
fn read_prediction(body: &[u8], key: Option<&str>, model_type: ModelType) -> Reading {
    let value = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(mut map)) => match key.and_then(|k| map.remove(k)) {
            Some(v) => v,
            None => return Reading::Invalid,
        },
        Ok(v) => v,
        // Plain text (a predictor returning a str): the text is the class, or the number.
        Err(_) => match std::str::from_utf8(body) {
            Ok(text) => serde_json::Value::String(text.trim().to_string()),
            Err(_) => return Reading::Invalid,
        },
    };
    let mut value = value;
    while let serde_json::Value::Array(mut items) = value {
        if items.len() != 1 {
            return Reading::Invalid;
        }
        value = items.remove(0);
    }
    match model_type {
        ModelType::Classification => {
            let class = match value {
                serde_json::Value::String(s) => s,
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                _ => return Reading::Invalid,
            };
            if class.is_empty() || class.len() > MAX_CLASS_LEN {
                return Reading::Invalid;
            }
            Reading::Class(class)
        }
        ModelType::Regression => {
            let v = match value {
                serde_json::Value::Number(n) => n.as_f64(),
                serde_json::Value::String(s) => s.parse::<f64>().ok(),
                _ => None,
            };
            match v {
                Some(v) if v.is_finite() => Reading::Value(v),
                _ => Reading::Invalid,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(body: &str, key: Option<&str>) -> Reading {
        read_prediction(body.as_bytes(), key, ModelType::Classification)
    }

    fn value(body: &str, key: Option<&str>) -> Reading {
        read_prediction(body.as_bytes(), key, ModelType::Regression)
    }

    #[test]
    fn classes_from_every_shape_of_response() {
        assert_eq!(class("setosa", None), Reading::Class("setosa".into()));
        assert_eq!(class("\"setosa\"", None), Reading::Class("setosa".into()));
        assert_eq!(class("2", None), Reading::Class("2".into()));
        assert_eq!(class("true", None), Reading::Class("true".into()));
        assert_eq!(
            class(r#"{"label": "cat", "p": 0.9}"#, Some("label")),
            Reading::Class("cat".into())
        );
        assert_eq!(
            class(r#"{"class_ids": [1]}"#, Some("class_ids")),
            Reading::Class("1".into())
        );
        assert_eq!(
            class(r#"{"label": "cat"}"#, Some("other")),
            Reading::Invalid
        );
        assert_eq!(class(r#"{"label": "cat"}"#, None), Reading::Invalid);
        assert_eq!(class("[1, 2]", None), Reading::Invalid);
        assert_eq!(class("null", None), Reading::Invalid);
        assert_eq!(class("", None), Reading::Invalid);
        assert_eq!(class(&"x".repeat(129), None), Reading::Invalid);
        assert_eq!(
            read_prediction(&[0xff, 0xfe], None, ModelType::Classification),
            Reading::Invalid
        );
    }

    #[test]
    fn values_are_finite_numbers() {
        assert_eq!(value("2.5", None), Reading::Value(2.5));
        assert_eq!(value("[[-1]]", None), Reading::Value(-1.0));
        assert_eq!(
            value(r#"{"price": 10}"#, Some("price")),
            Reading::Value(10.0)
        );
        assert_eq!(value("3.25\n", None), Reading::Value(3.25));
        assert_eq!(value("\"NaN\"", None), Reading::Invalid);
        assert_eq!(value("\"inf\"", None), Reading::Invalid);
        assert_eq!(value("cat", None), Reading::Invalid);
        assert_eq!(value(r#"{"price": "x"}"#, Some("price")), Reading::Invalid);
    }

    #[test]
    fn classes_are_capped() {
        let t = Tracker::new(&TrackerSpec {
            key: None,
            model_type: ModelType::Classification,
        });
        for i in 0..MAX_TRACKED_CLASSES + 10 {
            t.record(Reading::Class(format!("c{i}")));
        }
        t.record(Reading::Class("c0".into()));
        t.record(Reading::Invalid);
        let s = t.snapshot();
        assert_eq!(s.classes.len(), MAX_TRACKED_CLASSES + 1);
        assert_eq!(s.classes.get(OTHER_CLASS), Some(&10));
        assert_eq!(s.classes.get("c0"), Some(&2));
        assert_eq!(s.invalid, 1);
    }

    #[test]
    fn request_ids() {
        let ids = Ids::new();
        let a = ids.make();
        let b = ids.make();
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
        assert!(valid_client_id(&a));
        assert!(valid_client_id(&HeaderValue::from_static("client-id.1")));
        assert!(valid_client_id(&HeaderValue::from_static(
            "x".repeat(128).leak()
        )));
        for bad in ["", "has space", "x".repeat(129).leak(), "tab\there"] {
            let v = HeaderValue::from_str(bad).unwrap_or(HeaderValue::from_static(""));
            assert!(!valid_client_id(&v), "{bad:?}");
        }
    }

    #[test]
    fn routes() {
        assert_eq!(route_of(&Method::POST, "/predict"), Some(Route::Predict));
        assert_eq!(route_of(&Method::GET, "/"), Some(Route::Health));
        assert_eq!(
            route_of(&Method::POST, "/v2/models/m/versions/1/infer"),
            Some(Route::Infer)
        );
        assert_eq!(
            route_of(&Method::GET, "/v2/models/m"),
            Some(Route::Metadata)
        );
        assert_eq!(route_of(&Method::POST, "/nope"), None);
    }
}
