//! The route table: each API's endpoint, status, models and ready replicas (each with its
//! in-flight counter and hand-off link), the lookups by path, model and name, and the choice
//! of a replica for a request or a connection. The control plane writes it; the proxy
//! (`lib.rs`), the hand-off and the splitters (`split.rs`) read it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use serde::Serialize;

use crate::handoff::link::HandoffLink;
use crate::SplitRoute;

/// One ready replica that requests can be sent to.
#[derive(Debug)]
pub struct ReplicaTarget {
    pub id: String,
    pub addr: SocketAddr,
    pub(crate) in_flight: AtomicUsize,
    /// Where connections are handed to it, for a replica that takes them.
    pub handoff: Option<Arc<HandoffLink>>,
}

impl ReplicaTarget {
    pub fn new(id: impl Into<String>, addr: SocketAddr) -> Arc<Self> {
        Self::with_handoff(id, addr, None)
    }

    pub fn with_handoff(
        id: impl Into<String>,
        addr: SocketAddr,
        handoff: Option<Arc<HandoffLink>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            id: id.into(),
            addr,
            in_flight: AtomicUsize::new(0),
            handoff,
        })
    }

    /// Connections handed to it that it still holds.
    pub fn held_connections(&self) -> usize {
        self.handoff.as_ref().map(|l| l.held()).unwrap_or(0)
    }

    /// Requests the gateway has sent to this replica that have not answered yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// Everything the gateway knows about one API.
#[derive(Debug, Clone)]
pub struct ApiRoute {
    pub api: String,
    pub endpoint: String,
    /// Status as the control plane reports it, for error messages ("updating", "error", ...).
    pub status: String,
    pub replicas: Vec<Arc<ReplicaTarget>>,
    /// Models served over the Open Inference Protocol (model APIs); empty for predictors.
    pub models: Vec<String>,
    /// A batch API: its endpoint takes job submissions, which the daemon answers itself
    /// ([`RouteTable::batch_api`]); the gateway forwards nothing to it.
    pub batch: bool,
}

/// Rotates where the search for the least busy replica starts, so that ties (the common case
/// at low load) spread over replicas instead of always landing on the first.
static TIE_BREAK: AtomicUsize = AtomicUsize::new(0);

/// Endpoint → route. Reads are one short `RwLock` read per request; writes happen only when a
/// replica becomes ready or goes away.
#[derive(Debug, Default)]
pub struct RouteTable {
    pub(crate) by_endpoint: RwLock<HashMap<String, Arc<ApiRoute>>>,
    /// Whether any route is a batch API's, so that realtime requests skip that lookup.
    pub(crate) any_batch: AtomicBool,
    /// Traffic splitters by endpoint (see [`split`]).
    pub(crate) splits: RwLock<HashMap<String, Arc<SplitRoute>>>,
    pub(crate) any_split: AtomicBool,
}

#[derive(Debug, Serialize)]
struct DeployedApi<'a> {
    name: &'a str,
    endpoint: &'a str,
    status: &'a str,
}

impl RouteTable {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Installs or replaces the route of an API. An endpoint that moved is removed first.
    pub fn set_api(&self, route: ApiRoute) {
        let mut map = self.write();
        map.retain(|endpoint, r| r.api != route.api || *endpoint == route.endpoint);
        map.insert(route.endpoint.clone(), Arc::new(route));
        self.any_batch
            .store(map.values().any(|r| r.batch), Ordering::Relaxed);
    }

    pub fn remove_api(&self, api: &str) {
        let mut map = self.write();
        map.retain(|_, r| r.api != api);
        self.any_batch
            .store(map.values().any(|r| r.batch), Ordering::Relaxed);
    }

    /// The batch API whose endpoint is `path`, if any.
    pub fn batch_api(&self, path: &str) -> Option<String> {
        if !self.any_batch.load(Ordering::Relaxed) {
            return None;
        }
        self.lookup(path).filter(|r| r.batch).map(|r| r.api.clone())
    }

    /// How many replicas of `api` requests are sent to now (0 when it has no route).
    pub fn replicas_of(&self, api: &str) -> usize {
        self.read()
            .values()
            .find(|r| r.api == api)
            .map(|r| r.replicas.len())
            .unwrap_or(0)
    }

    pub(crate) fn lookup(&self, path: &str) -> Option<Arc<ApiRoute>> {
        let map = self.read();
        if let Some(r) = map.get(path) {
            return Some(r.clone());
        }
        // `/iris/` reaches `/iris`, as users type both.
        let trimmed = path.strip_suffix('/')?;
        map.get(trimmed).cloned()
    }

    /// `{endpoint}/v2...`: the route and the path to send to the replica.
    pub(crate) fn lookup_v2_under_endpoint<'p>(
        &self,
        path: &'p str,
    ) -> Option<(Arc<ApiRoute>, &'p str)> {
        let map = self.read();
        // From the right: with APIs at `/a` and `/a/v2`, `/a/v2/v2/...` belongs to `/a/v2`.
        path.rmatch_indices("/v2")
            .filter(|(i, _)| {
                let rest = &path[i + 3..];
                *i > 0 && (rest.is_empty() || rest.starts_with('/'))
            })
            .find_map(|(i, _)| map.get(&path[..i]).map(|r| (r.clone(), &path[i..])))
    }

    /// The API serving model `name` over the Open Inference Protocol.
    pub(crate) fn lookup_model(&self, name: &str) -> Option<Arc<ApiRoute>> {
        let map = self.read();
        let mut candidates: Vec<&Arc<ApiRoute>> = map
            .values()
            .filter(|r| r.models.iter().any(|m| m == name))
            .collect();
        candidates.sort_by(|a, b| (a.api != name, &a.api).cmp(&(b.api != name, &b.api)));
        candidates.first().map(|r| (*r).clone())
    }

    pub(crate) fn models_json(&self) -> serde_json::Value {
        let map = self.read();
        let mut models: Vec<serde_json::Value> = map
            .values()
            .flat_map(|r| {
                r.models
                    .iter()
                    .map(|m| serde_json::json!({"name": m, "api": r.api, "endpoint": r.endpoint}))
            })
            .collect();
        models.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        serde_json::Value::Array(models)
    }

    /// Every API with models has a ready replica.
    pub(crate) fn models_ready(&self) -> bool {
        self.read()
            .values()
            .filter(|r| !r.models.is_empty())
            .all(|r| !r.replicas.is_empty())
    }

    pub(crate) fn deployed_apis_json(&self) -> serde_json::Value {
        let map = self.read();
        let apis = map.values().map(|r| {
            serde_json::to_value(DeployedApi {
                name: &r.api,
                endpoint: &r.endpoint,
                status: &r.status,
            })
            .unwrap_or_default()
        });
        let mut all: Vec<serde_json::Value> = apis.chain(self.splits_json()).collect();
        all.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        serde_json::Value::Array(all)
    }

    // A poisoned lock only means a writer panicked mid-update of a HashMap that is still
    // structurally sound, so serving from it beats failing every request.
    pub(crate) fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<ApiRoute>>> {
        self.by_endpoint.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<ApiRoute>>> {
        self.by_endpoint.write().unwrap_or_else(|e| e.into_inner())
    }
}

pub(crate) fn pick_least_in_flight(replicas: &[Arc<ReplicaTarget>]) -> Option<&Arc<ReplicaTarget>> {
    let n = replicas.len();
    if n <= 1 {
        return replicas.first();
    }
    let start = TIE_BREAK.fetch_add(1, Ordering::Relaxed) % n;
    (0..n)
        .map(|i| &replicas[(start + i) % n])
        .min_by_key(|r| r.in_flight())
}

/// For a hand-off: the replica taking connections with the fewest connections and requests.
pub(crate) fn pick_least_loaded(replicas: &[Arc<ReplicaTarget>]) -> Option<&Arc<ReplicaTarget>> {
    let n = replicas.len();
    let start = if n > 1 {
        TIE_BREAK.fetch_add(1, Ordering::Relaxed) % n
    } else {
        0
    };
    (0..n)
        .map(|i| &replicas[(start + i) % n])
        .filter(|r| r.handoff.as_ref().is_some_and(|l| !l.is_dead()))
        .min_by_key(|r| r.held_connections() + r.in_flight())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn least_in_flight_wins() {
        let a = ReplicaTarget::new("a", addr(1));
        let b = ReplicaTarget::new("b", addr(2));
        a.in_flight.store(3, Ordering::Relaxed);
        b.in_flight.store(1, Ordering::Relaxed);
        let both = [a.clone(), b.clone()];
        for _ in 0..4 {
            let picked = pick_least_in_flight(&both).map(|r| r.id.clone());
            assert_eq!(picked.as_deref(), Some("b"));
        }
        assert!(pick_least_in_flight(&[]).is_none());
        // Ties alternate.
        a.in_flight.store(0, Ordering::Relaxed);
        b.in_flight.store(0, Ordering::Relaxed);
        let picks: std::collections::HashSet<String> = (0..4)
            .filter_map(|_| pick_least_in_flight(&both).map(|r| r.id.clone()))
            .collect();
        assert_eq!(picks.len(), 2);
    }

    #[test]
    fn routes_replace_and_move() {
        let t = RouteTable::new();
        t.set_api(ApiRoute {
            api: "x".into(),
            endpoint: "/x".into(),
            status: "live".into(),
            replicas: vec![],
            models: vec![],
            batch: false,
        });
        t.set_api(ApiRoute {
            api: "x".into(),
            endpoint: "/y".into(),
            status: "live".into(),
            replicas: vec![],
            models: vec![],
            batch: false,
        });
        assert!(t.lookup("/x").is_none());
        assert_eq!(t.lookup("/y/").map(|r| r.api.clone()).as_deref(), Some("x"));
        t.remove_api("x");
        assert!(t.lookup("/y").is_none());
    }

    #[test]
    fn open_inference_protocol_paths() {
        let t = RouteTable::new();
        for (api, endpoint, models) in [
            ("iris", "/iris", vec!["iris"]),
            ("multi", "/a/multi", vec!["iris", "mlp"]),
            ("py", "/py", vec![]),
        ] {
            t.set_api(ApiRoute {
                api: api.into(),
                endpoint: endpoint.into(),
                status: "live".into(),
                replicas: vec![],
                models: models.into_iter().map(String::from).collect(),
                batch: false,
            });
        }
        let under = |p: &str| {
            t.lookup_v2_under_endpoint(p)
                .map(|(r, rest)| (r.api.clone(), rest.to_string()))
        };
        assert_eq!(under("/iris/v2"), Some(("iris".into(), "/v2".into())));
        assert_eq!(
            under("/a/multi/v2/models/mlp/infer"),
            Some(("multi".into(), "/v2/models/mlp/infer".into()))
        );
        assert_eq!(under("/iris/v2x"), None);
        assert_eq!(under("/v2/models"), None);
        assert_eq!(under("/nope/v2"), None);
        t.set_api(ApiRoute {
            api: "nested".into(),
            endpoint: "/iris/v2".into(),
            status: "live".into(),
            replicas: vec![],
            models: vec!["nested".into()],
            batch: false,
        });
        assert_eq!(
            under("/iris/v2/v2/models/nested"),
            Some(("nested".into(), "/v2/models/nested".into()))
        );
        let model = |m: &str| t.lookup_model(m).map(|r| r.api.clone());
        // An API named like the model wins; otherwise the API that has it.
        assert_eq!(model("iris").as_deref(), Some("iris"));
        assert_eq!(model("mlp").as_deref(), Some("multi"));
        assert_eq!(model("py"), None);
        // No replicas anywhere: not ready.
        assert!(!t.models_ready());
    }
}
