//! How replicas come to run: the boundary between the controller (which replicas of which
//! version should exist) and the machinery that runs them. [`ReplicaLauncher::launch`] starts
//! one replica from a [`LaunchRequest`] and hands back a [`ReplicaHandle`] to stop or kill it
//! and a stream of [`LauncherEvent`]s: what the replica reports, then how it ended.
//!
//! [`local::LocalLauncher`] runs replicas as processes of this machine (with cgroups and the
//! memory watch of gyrus-compute). Batch workers and Kubernetes pods will be further
//! implementations; the controller's tests use a fake one.

pub mod local;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use gyrus_compute::Limits;
use gyrus_launch::{ReplicaEvent, ReplicaLaunch};
use tokio::sync::mpsc;

/// One replica to start.
#[derive(Debug, Clone)]
pub struct LaunchRequest {
    /// The API it belongs to (its logs go there).
    pub api: String,
    /// What the replica itself reads.
    pub launch: ReplicaLaunch,
    /// The predictor's environment: `.env`, `predictor.env`, `PYTHONPATH`.
    pub env: Vec<(String, String)>,
    pub limits: Limits,
    /// A number unique among the API's replicas, for spreading GPUs.
    pub slot: u32,
}

/// What the controller hears of a replica.
#[derive(Debug, Clone, PartialEq)]
pub enum LauncherEvent {
    /// A line the replica reported.
    Replica(ReplicaEvent),
    /// The launcher is stopping it for exceeding its memory limit; the text says by how much.
    OutOfMemory(String),
    /// It is gone; how it ended (an exit status, a signal). Always the last event.
    Exited(String),
}

/// A started replica, to stop or kill.
pub trait ReplicaHandle: Send + Sync {
    /// Its operating-system process, where it has one (shown by `describe`).
    fn pid(&self) -> Option<u32>;
    /// Where the port of its `Listening` event is.
    fn host(&self) -> IpAddr;
    /// Asks it to drain and exit; ends it by force if it is still there after `grace`.
    fn stop(&self, grace: Duration);
    /// Ends it now, with everything it started (it is hung).
    fn kill(&self);
}

/// A replica just started.
pub struct Launched {
    pub handle: Arc<dyn ReplicaHandle>,
    /// Where the gateway hands it connections, for a replica that takes them.
    pub handoff: Option<Arc<gyrus_gateway::handoff::link::HandoffLink>>,
    /// Ends after [`LauncherEvent::Exited`].
    pub events: mpsc::UnboundedReceiver<LauncherEvent>,
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("starting {exe}: {source}")]
    Spawn {
        exe: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("opening {path}: {source}")]
    Log {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("making the replica's hand-off channel: {0}")]
    Handoff(std::io::Error),
    #[error("encoding the replica's launch: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Starts replicas. See the module documentation.
pub trait ReplicaLauncher: Send + Sync {
    fn launch(&self, request: LaunchRequest) -> Result<Launched, LaunchError>;
}
