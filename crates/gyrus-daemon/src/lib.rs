//! The gyrus control plane: the local daemon. It owns the daemon's socket (`connections`,
//! `tls`) and HTTP API (`server`, guarded by `auth`), the deploy service (`deploy`), the durable
//! state in SQLite under `GYRUS_HOME` (`state`), project snapshots (`project`), Python
//! environments (`pyenv`) and model sources (`model_source`); the supervisor (`supervisor`),
//! which prepares each version and drives a controller per API (`controller`) over a replica
//! launcher (`launcher`). It hosts the gateway (from `gyrus-gateway`) on the same address.
//! `docs/architecture.md` draws how they fit.

pub mod api;
pub mod auth;
pub mod connections;
pub mod controller;
pub mod dashboard;
pub mod deploy;
pub mod error;
pub mod home;
pub mod jobs;
pub mod jobs_api;
pub mod launcher;
pub mod log_rotation;
pub mod logs;
pub mod model_archive;
pub mod model_source;
pub mod observe_api;
pub mod project;
pub mod pyenv;
pub mod rollout;
pub mod server;
pub mod splitters;
pub mod state;
pub mod store_api;
pub mod supervisor;
pub mod telemetry;
pub mod tls;

use std::sync::Arc;

use gyrus_gateway::{Gateway, RouteTable};

pub use error::DaemonError;
pub use home::{addr_from_env, https_from_env, GyrusHome};

use crate::model_source::{FetchContext, ModelSources};
use crate::server::AppState;
use crate::state::StateStore;
use crate::supervisor::Supervisor;

pub struct DaemonOptions {
    pub home: GyrusHome,
    pub addr: String,
    /// Serve TLS with this certificate and key (`--tls-cert`, `--tls-key`).
    pub tls: Option<tls::TlsFiles>,
}

/// Runs the daemon until SIGINT, SIGTERM or `POST /_gyrus/v1/shutdown`, then stops every
/// replica. Deployed APIs stay in the state database and come back at the next start.
pub async fn run(opts: DaemonOptions) -> Result<(), DaemonError> {
    let home = opts.home;
    let acceptor =
        match &opts.tls {
            Some(files) => Some(tls::acceptor(files)?),
            None if https_from_env() => return Err(DaemonError::BadRequest(
                "GYRUS_ADDR asks for https:// but the daemon has no certificate: pass --tls-cert \
                 and --tls-key (or set GYRUS_TLS_CERT and GYRUS_TLS_KEY)"
                    .into(),
            )),
            None => None,
        };
    let scheme = if acceptor.is_some() { "https" } else { "http" };
    home.create_dirs()
        .map_err(|e| DaemonError::io(format!("creating {}", home.root().display()), e))?;
    let _lock = DaemonLock::acquire(&home)?;
    // Before the socket opens: a client that can connect can find the token.
    let token = auth::load_or_create_token(&home)?;

    let listener = tokio::net::TcpListener::bind(&opts.addr).await.map_err(|e| {
        DaemonError::io(
            format!(
                "cannot listen on {} (is another gyrus daemon running there? set GYRUS_ADDR to use another address)",
                opts.addr
            ),
            e,
        )
    })?;
    let local = listener
        .local_addr()
        .map_err(|e| DaemonError::io("reading the listening address", e))?;
    let limits = connections::ServeLimits::from_env().map_err(DaemonError::BadRequest)?;
    if !local.ip().is_loopback() {
        tracing::warn!(
            "listening on {local}, which other machines can reach: the control API needs the \
             token in {} (clients send it with GYRUS_TOKEN){}; the APIs on this address are open \
             to anyone who reaches it (docs/security.md)",
            home.token_file().display(),
            if acceptor.is_some() {
                ""
            } else {
                ", and without --tls-cert it travels in clear text"
            }
        );
    }

    let state = Arc::new(StateStore::open(&home.state_db())?);
    let envs = Arc::new(pyenv::PythonEnvs::discover(home.clone()).await);
    let store = gyrus_store::ModelStore::open(home.models())?;
    let remote = gyrus_remote::RemoteCache::new(home.remote_cache());
    // Nothing is saving or downloading yet; what a crash left half-written can go.
    store.clean_staging(std::time::Duration::from_secs(3600));
    remote.clean_tmp(std::time::Duration::from_secs(3600));
    let sources = Arc::new(ModelSources {
        store: Arc::new(store),
        remote,
        unpacked: home.root().join("cache").join("unpacked"),
    });
    // Limits are per daemon: its home names its cgroups.
    let instance = {
        use sha2::{Digest, Sha256};
        hex::encode(&Sha256::digest(home.root().as_os_str().as_encoded_bytes())[..6])
    };
    let compute = Arc::new(gyrus_compute::Compute::detect(&instance));
    tracing::info!("compute limits: {}", compute.describe());
    let routes = RouteTable::new();
    // Replicas take their connections from the daemon (one hop per request) unless TLS is on,
    // or GYRUS_HANDOFF=0 asks for the proxy (to compare the two, or to rule one out).
    let handoff_enabled = acceptor.is_none()
        && !matches!(
            std::env::var("GYRUS_HANDOFF").as_deref(),
            Ok("0") | Ok("false") | Ok("off")
        );
    // Where a replica sends the requests of a handed connection that are not its own.
    let daemon_for_replicas = handoff_enabled.then(|| {
        let ip = match local.ip() {
            std::net::IpAddr::V4(v4) if v4.is_unspecified() => {
                std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
            }
            std::net::IpAddr::V6(v6) if v6.is_unspecified() => {
                std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
            }
            ip => ip,
        };
        std::net::SocketAddr::new(ip, local.port())
    });
    let launcher = Arc::new(launcher::local::LocalLauncher::new(
        home.clone(),
        compute.clone(),
        daemon_for_replicas,
    ));
    let telemetry = Arc::new(telemetry::Telemetry::new());
    let supervisor = Supervisor::new(
        home.clone(),
        envs.clone(),
        sources.clone(),
        controller::ControllerContext {
            launcher,
            routes: routes.clone(),
            recorder: state.clone(),
            lib_dir: home.lib(),
            gateway_url: format!("{scheme}://{local}"),
            epoch: tokio::time::Instant::now(),
            observer: telemetry.clone(),
        },
    );

    // Cortex ran its autoscaler every 10 s; tests set a shorter interval.
    let interval = match std::env::var("GYRUS_AUTOSCALE_INTERVAL") {
        Ok(v) if !v.is_empty() => humantime::parse_duration(&v).map_err(|e| {
            DaemonError::BadRequest(format!(
                "GYRUS_AUTOSCALE_INTERVAL={v:?}: expected a duration like 10s or 500ms ({e})"
            ))
        })?,
        _ => std::time::Duration::from_secs(10),
    };
    supervisor.start_autoscaler(interval.max(std::time::Duration::from_millis(100)));
    supervisor.start_heartbeat_watch();

    // Nothing runs yet, so snapshots no API refers to (older versions, interrupted
    // extractions) can go.
    remove_unreferenced_snapshots(&home, &state);

    // Bring back every API deployed before the last stop or crash, as it was: the last good
    // generation serving, a failed newer one still shown as failed.
    for api in state.restorable()? {
        let spec_of = |stored: &state::StoredApi| {
            serde_json::from_str::<gyrus_spec::ApiSpec>(&stored.spec_json)
                .map_err(|e| {
                    tracing::error!(
                        "cannot restore api {} (generation {}): stored spec unreadable: {e}",
                        stored.name,
                        stored.generation
                    )
                })
                .ok()
        };
        let Some(desired_spec) = spec_of(&api.desired) else {
            continue;
        };
        match api.serving.and_then(|s| spec_of(&s).map(|spec| (s, spec))) {
            Some(serving) => {
                tracing::info!(
                    "restoring api {}: generation {} serving, generation {} {}",
                    api.desired.name,
                    serving.0.generation,
                    api.desired.generation,
                    if api.error.is_some() {
                        "failed"
                    } else {
                        "deploying"
                    }
                );
                supervisor.restore(serving, (api.desired, desired_spec), api.error);
            }
            None => {
                tracing::info!(
                    "restoring api {} (generation {})",
                    api.desired.name,
                    api.desired.generation
                );
                supervisor.apply(api.desired, desired_spec, FetchContext::cached());
            }
        }
    }

    let splitters = Arc::new(splitters::Splitters::restore(
        state.clone(),
        routes.clone(),
        format!("{scheme}://{local}"),
    )?);

    // Jobs that had not ended run on, each once its API is live again.
    let jobs = jobs::JobService::open(home.clone(), supervisor.clone())?;
    jobs.restore()?;

    let app = Arc::new(AppState {
        jobs,
        routes: routes.clone(),
        guard: auth::ControlGuard::new(token, &opts.addr, scheme == "https"),
        home: home.clone(),
        addr: local.to_string(),
        state: state.clone(),
        supervisor: supervisor.clone(),
        gateway: Gateway::new(routes),
        shutdown: tokio::sync::Notify::new(),
        stopping: std::sync::atomic::AtomicBool::new(false),
        deploys: deploy::DeployService::new(
            home.clone(),
            state.clone(),
            supervisor.clone(),
            sources.clone(),
            compute.clone(),
            splitters,
        ),
        envs,
        sources,
        compute,
        self_exe: own_exe(),
        uploads: Arc::new(tokio::sync::Semaphore::new(server::MAX_CONCURRENT_UPLOADS)),
        telemetry,
        sessions: dashboard::Sessions::default(),
        request_ids: gyrus_launch::telemetry::RequestIds::new({
            let mut seed = [0u8; 4];
            // Without the OS's randomness the ids are still unique within this daemon.
            let _ = getrandom::fill(&mut seed);
            u32::from_le_bytes(seed)
        }),
    });
    observe_api::start_tick(app.clone());
    log_rotation::start(home.clone());
    tracing::info!(
        "gyrus daemon listening on {scheme}://{local} (GYRUS_HOME={})",
        home.root().display()
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    {
        let app = app.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(mut term), Ok(mut int)) => tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                    _ = app.shutdown.notified() => {}
                },
                _ => app.shutdown.notified().await,
            }
            tracing::info!("shutting down: stopping replicas");
            app.stopping
                .store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = stop_tx.send(true);
        });
    }
    let handoff = handoff_enabled.then(|| app.gateway.clone());
    let server = connections::serve(
        listener,
        server::router(app),
        limits,
        acceptor,
        handoff,
        stop_rx.clone(),
    );
    // Open connections (a hung predict, a client that never reads) may delay the stop only a
    // little: the replicas are stopped either way.
    let mut deadline = stop_rx;
    let bounded = async move {
        let _ = deadline.wait_for(|stop| *stop).await;
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    };
    tokio::select! {
        _ = server => {}
        _ = bounded => tracing::warn!("closing connections still open 5s after the stop"),
    }
    supervisor.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// This very executable, to start replicas and helpers with. `/proc/self/exe` names the file
/// the daemon runs even after it was replaced on disk (an upgrade in place), so a running
/// daemon never starts replicas of another version; elsewhere, the path it was started from.
pub fn own_exe() -> std::path::PathBuf {
    let proc_exe = std::path::Path::new("/proc/self/exe");
    if proc_exe.exists() {
        return proc_exe.to_path_buf();
    }
    std::env::current_exe().unwrap_or_else(|_| "gyrus".into())
}

/// The time now as RFC 3339 to the second, as logs and `gyrus get` show it.
pub fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

fn remove_unreferenced_snapshots(home: &GyrusHome, state: &StateStore) {
    let Ok(referenced) = state.referenced_projects() else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(home.projects()) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !referenced.iter().any(|r| std::path::Path::new(r) == path) {
            if let Err(e) = std::fs::remove_dir_all(&path) {
                tracing::warn!("cannot remove old snapshot {}: {e}", path.display());
            }
        }
    }
}

/// An exclusive `flock` on `GYRUS_HOME/daemon.lock`: one daemon per home. The kernel drops it
/// when the process dies, so a crash never leaves a stale lock.
struct DaemonLock {
    _file: std::fs::File,
}

impl DaemonLock {
    fn acquire(home: &GyrusHome) -> Result<Self, DaemonError> {
        use std::io::Write;
        let path = home.lock_file();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| DaemonError::io(format!("opening {}", path.display()), e))?;
        // An advisory lock the OS drops with the process, however it ends.
        if file.try_lock().is_err() {
            let pid = std::fs::read_to_string(&path).unwrap_or_default();
            return Err(DaemonError::Internal(format!(
                "another gyrus daemon (pid {}) is already running with GYRUS_HOME={}",
                pid.trim(),
                home.root().display()
            )));
        }
        let _ = file.set_len(0);
        let _ = write!(file, "{}", std::process::id());
        Ok(Self { _file: file })
    }
}
