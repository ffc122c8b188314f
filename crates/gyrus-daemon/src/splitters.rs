//! Traffic splitters in the daemon (`kind: TrafficSplitter`): which are deployed (kept in the
//! state database and restored at start), the gateway routes they install, the checks a
//! deploy or delete must pass because of them, and how `gyrus get` shows them. The sharing of
//! requests itself is the gateway's (`gyrus_gateway::SplitRoute`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use gyrus_gateway::{RouteTable, SplitRoute};
use gyrus_spec::SplitterSpec;

use crate::api::{ApiInfo, ReplicaCounts, SplitInfo};
use crate::error::DaemonError;
use crate::state::{StateStore, StoredSplitter};
use crate::supervisor::Supervisor;

pub struct Splitters {
    state: Arc<StateStore>,
    routes: Arc<RouteTable>,
    gateway_url: String,
    by_name: Mutex<BTreeMap<String, StoredSplitter>>,
}

impl Splitters {
    /// The splitters deployed before the last stop, with their routes installed.
    pub fn restore(
        state: Arc<StateStore>,
        routes: Arc<RouteTable>,
        gateway_url: String,
    ) -> Result<Self, DaemonError> {
        let mut by_name = BTreeMap::new();
        for stored in state.splitters()? {
            routes.set_split(route_of(&stored.spec));
            by_name.insert(stored.spec.name.clone(), stored);
        }
        Ok(Self {
            state,
            routes,
            gateway_url,
            by_name: Mutex::new(by_name),
        })
    }

    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, StoredSplitter>> {
        self.by_name.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Deploys a splitter (already checked by [`Splitters::check_deploy`]): `created`,
    /// `updated` or `up to date`.
    pub fn apply(&self, spec: SplitterSpec) -> Result<&'static str, DaemonError> {
        let previous = self.map().get(&spec.name).cloned();
        if previous.as_ref().is_some_and(|p| p.spec == spec) {
            return Ok("up to date");
        }
        let now = crate::now();
        let stored = StoredSplitter {
            created_at: previous
                .as_ref()
                .map(|p| p.created_at.clone())
                .unwrap_or_else(|| now.clone()),
            updated_at: now,
            spec,
        };
        self.state.upsert_splitter(&stored)?;
        self.routes.set_split(route_of(&stored.spec));
        self.map().insert(stored.spec.name.clone(), stored);
        Ok(if previous.is_some() {
            "updated"
        } else {
            "created"
        })
    }

    /// Removes a splitter; false when there was none of that name.
    pub fn remove(&self, name: &str) -> Result<bool, DaemonError> {
        let existed = self.state.delete_splitter(name)?;
        self.routes.remove_split(name);
        Ok(self.map().remove(name).is_some() || existed)
    }

    pub fn names(&self) -> Vec<String> {
        self.map().keys().cloned().collect()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.map().contains_key(name)
    }

    /// The splitters that send requests to `api` (answering or shadow).
    pub fn using(&self, api: &str) -> Vec<String> {
        self.map()
            .values()
            .filter(|s| s.spec.apis.iter().any(|t| t.name == api))
            .map(|s| s.spec.name.clone())
            .collect()
    }

    /// Refuses a deploy whose splitters or APIs clash with what is deployed: names and
    /// endpoints used by the other kind, or a splitter naming an API that is neither in the
    /// file nor a deployed realtime API. `deployed` are the deployed APIs with their specs.
    pub fn check_deploy(
        &self,
        parsed: &gyrus_spec::ParsedConfig,
        deployed: &[(String, gyrus_spec::ApiSpec)],
    ) -> Result<(), DaemonError> {
        let splitters = self.map();
        for api in &parsed.apis {
            let users: Vec<&str> = splitters
                .values()
                .filter(|s| s.spec.apis.iter().any(|t| t.name == api.name))
                .map(|s| s.spec.name.as_str())
                .collect();
            if api.kind != gyrus_spec::ApiKind::RealtimeAPI && !users.is_empty() {
                return Err(DaemonError::BadRequest(format!(
                    "api {:?}: traffic splitter {} sends it requests, so it must stay a RealtimeAPI; change or delete the splitter first",
                    api.name,
                    users.join(", ")
                )));
            }
            if let Some(s) = splitters
                .values()
                .find(|s| gyrus_spec::is_under_protocol_paths(&api.endpoint, &s.spec.endpoint))
            {
                return Err(DaemonError::BadRequest(format!(
                    "api {:?}: traffic splitter {:?} is at {}, under this API's Open Inference Protocol paths ({}/v2/...); choose another endpoint",
                    api.name, s.spec.name, s.spec.endpoint, api.endpoint
                )));
            }
            if splitters.contains_key(&api.name) {
                return Err(DaemonError::BadRequest(format!(
                    "api {:?}: a traffic splitter of that name is deployed; delete it first (gyrus delete {})",
                    api.name, api.name
                )));
            }
            if let Some(s) = splitters.values().find(|s| s.spec.endpoint == api.endpoint) {
                return Err(DaemonError::BadRequest(format!(
                    "api {:?}: endpoint {} is already used by traffic splitter {:?}; choose another endpoint or delete that splitter",
                    api.name, api.endpoint, s.spec.name
                )));
            }
        }
        for split in &parsed.splitters {
            let name = &split.name;
            if deployed.iter().any(|(n, _)| n == name) {
                return Err(DaemonError::BadRequest(format!(
                    "traffic splitter {name:?}: an API of that name is deployed; delete it first or choose another name"
                )));
            }
            let other_endpoint = deployed
                .iter()
                .find(|(_, spec)| spec.endpoint == split.endpoint)
                .map(|(n, _)| format!("api {n:?}"))
                .or_else(|| {
                    splitters
                        .values()
                        .find(|s| s.spec.name != *name && s.spec.endpoint == split.endpoint)
                        .map(|s| format!("traffic splitter {:?}", s.spec.name))
                });
            if let Some((n, spec)) = deployed.iter().find(|(_, spec)| {
                gyrus_spec::is_under_protocol_paths(&spec.endpoint, &split.endpoint)
            }) {
                return Err(DaemonError::BadRequest(format!(
                    "traffic splitter {name:?}: endpoint {} is under api {n:?}'s Open Inference Protocol paths ({}/v2/...), which go to that API; choose another endpoint",
                    split.endpoint, spec.endpoint
                )));
            }
            if let Some(other) = other_endpoint {
                return Err(DaemonError::BadRequest(format!(
                    "traffic splitter {name:?}: endpoint {} is already used by {other}; choose another endpoint",
                    split.endpoint
                )));
            }
            for target in &split.apis {
                let in_file = parsed.apis.iter().find(|a| a.name == target.name);
                let kind = in_file
                    .or_else(|| {
                        deployed
                            .iter()
                            .find(|(n, _)| *n == target.name)
                            .map(|(_, s)| s)
                    })
                    .map(|s| s.kind);
                match kind {
                    Some(gyrus_spec::ApiKind::RealtimeAPI) => {}
                    Some(kind) => {
                        return Err(DaemonError::BadRequest(format!(
                            "traffic splitter {name:?}: api {:?} is a {kind}: a splitter shares requests among realtime APIs",
                            target.name
                        )))
                    }
                    None => {
                        let known = deployed
                            .iter()
                            .map(|(n, _)| n.as_str())
                            .chain(parsed.apis.iter().map(|a| a.name.as_str()));
                        let hint = gyrus_spec::suggest::did_you_mean(&target.name, known);
                        let what = if splitters.contains_key(&target.name)
                            || parsed.splitters.iter().any(|s| s.name == target.name)
                        {
                            " (it is a traffic splitter; a splitter shares requests among realtime APIs)"
                                .to_string()
                        } else {
                            hint
                        };
                        return Err(DaemonError::BadRequest(format!(
                            "traffic splitter {name:?}: api {:?} is not deployed and not in the config file{what}",
                            target.name
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// What `gyrus get NAME` shows of a splitter: its APIs with their status, and its own
    /// status from those that answer (error when one is missing or failed, updating while
    /// one is not live yet).
    pub fn info(&self, name: &str, supervisor: &Supervisor) -> Option<ApiInfo> {
        let stored = self.map().get(name).cloned()?;
        let spec = &stored.spec;
        let splits: Vec<SplitInfo> = spec
            .apis
            .iter()
            .map(|t| SplitInfo {
                api: t.name.clone(),
                weight: t.weight,
                shadow: t.shadow,
                status: supervisor
                    .info(&t.name)
                    .map(|i| i.status)
                    .unwrap_or_else(|| "not deployed".into()),
            })
            .collect();
        let answering = || splits.iter().filter(|s| !s.shadow && s.weight > 0);
        let (status, error) =
            if let Some(missing) = answering().find(|s| s.status == "not deployed") {
                (
                    "error",
                    Some(format!(
                        "api {} is not deployed: its share of the requests is answered 503",
                        missing.api
                    )),
                )
            } else if let Some(failed) = answering().find(|s| s.status == "error") {
                (
                    "error",
                    Some(format!("api {} failed to deploy", failed.api)),
                )
            } else if answering().any(|s| s.status == "updating") {
                ("updating", None)
            } else if let Some(other) = answering().find(|s| s.status != "live") {
                (
                    "degraded",
                    Some(format!("api {} is {}", other.api, other.status)),
                )
            } else {
                ("live", None)
            };
        Some(ApiInfo {
            name: spec.name.clone(),
            kind: "TrafficSplitter".into(),
            predictor_type: "-".into(),
            endpoint: spec.endpoint.clone(),
            url: format!("{}{}", self.gateway_url, spec.endpoint),
            status: status.into(),
            message: None,
            notes: Vec::new(),
            progress: None,
            error,
            replicas: ReplicaCounts::default(),
            autoscaling: None,
            generation: 0,
            created_at: stored.created_at.clone(),
            updated_at: stored.updated_at.clone(),
            replica_details: Vec::new(),
            models: Vec::new(),
            jobs: None,
            splits,
        })
    }
}

fn route_of(spec: &SplitterSpec) -> SplitRoute {
    SplitRoute::new(
        &spec.name,
        &spec.endpoint,
        spec.answering()
            .map(|t| (t.name.clone(), t.weight))
            .collect(),
        spec.shadow().map(|t| (t.name.clone(), t.weight)),
    )
}
