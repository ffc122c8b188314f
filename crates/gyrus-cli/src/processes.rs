//! `gyrus version`, and the commands that run gyrus's own processes: `gyrus daemon`
//! (run, stop, status), the hidden `gyrus replica` started by the daemon's launcher, and the
//! hidden `gyrus inspect-model` the daemon validates model saves with.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::client::DaemonClient;
use crate::{DaemonAction, Output, ReplicaArgs};

pub(crate) fn inspect_model(library: &std::path::Path, path: &std::path::Path) -> Result<()> {
    gyrus_engine::init_library(library).map_err(|e| anyhow!("{e}"))?;
    let model = gyrus_engine::Model::load(
        "model",
        path,
        &gyrus_engine::SessionConfig::default(),
        &mut |_| {},
    )
    .map_err(|e| match e {
        // The daemon's staging path means nothing to the user: name the file only.
        gyrus_engine::EngineError::Load { message, .. } => {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            anyhow!("{}", message.replace(&path.display().to_string(), &name))
        }
        e => anyhow!("{e}"),
    })?;
    let specs = |infos: &[gyrus_engine::TensorInfo]| -> Vec<serde_json::Value> {
        infos
            .iter()
            .map(|t| {
                serde_json::json!({
                    "name": t.name,
                    "datatype": t.dtype.oip_name(),
                    "shape": t.shape,
                })
            })
            .collect()
    };
    let version = gyrus_engine::library_version(library)
        .map(|(a, b, c)| format!("{a}.{b}.{c}"))
        .unwrap_or_else(|| "unknown".into());
    let sig = model.signature();
    println!(
        "{}",
        serde_json::json!({
            "onnxruntime": version,
            "inputs": specs(&sig.inputs),
            "outputs": specs(&sig.outputs),
        })
    );
    Ok(())
}

pub(crate) async fn daemon(
    action: Option<DaemonAction>,
    tls: Option<gyrus_daemon::tls::TlsFiles>,
) -> Result<()> {
    match action {
        None => {
            use tracing_subscriber::prelude::*;
            let home = gyrus_daemon::GyrusHome::from_env();
            // GYRUS_LOG filters the daemon's own log (stderr); the APIs' logs get every line
            // meant for them whatever it says.
            let filter = tracing_subscriber::EnvFilter::try_from_env("GYRUS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
            tracing_subscriber::registry()
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_writer(std::io::stderr)
                        // Colours for a terminal only: `gyrus deploy` starts the daemon with
                        // stderr on daemon.log, where escape codes are noise.
                        .with_ansi(
                            std::io::IsTerminal::is_terminal(&std::io::stderr())
                                && std::env::var_os("NO_COLOR").is_none(),
                        )
                        .with_filter(filter),
                )
                .with(gyrus_daemon::logs::ApiLogLayer::new(home.clone()))
                .init();
            gyrus_daemon::run(gyrus_daemon::DaemonOptions {
                home,
                addr: gyrus_daemon::addr_from_env(),
                tls,
            })
            .await
            .map_err(|e| anyhow!("{e}"))
        }
        Some(DaemonAction::Stop) => {
            let client = DaemonClient::from_env()?;
            let Some(h) = client.health().await else {
                println!("no gyrus daemon is running at {}", client.addr);
                return Ok(());
            };
            let h = client.accepted(h)?;
            client.post_json::<serde_json::Value>("/shutdown").await?;
            // Wait until it is gone, so a following start does not race it.
            for _ in 0..400 {
                if client.health().await.is_none() && !pid_alive(h.pid) {
                    println!("stopped the gyrus daemon (pid {})", h.pid);
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            bail!("the daemon (pid {}) did not stop within 40s", h.pid)
        }
        Some(DaemonAction::Status { output }) => {
            let client = DaemonClient::from_env()?;
            let h = client.health().await;
            let running = h.is_some();
            if output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&h)?);
            } else {
                match h.map(|h| client.accepted(h)) {
                    Some(Ok(h)) => println!(
                        "running: pid {} at {}://{} (GYRUS_HOME={}, version {})",
                        h.pid,
                        client.scheme(),
                        h.addr,
                        h.home,
                        h.version
                    ),
                    Some(Err(e)) => println!("running, but {e:#}"),
                    None => println!("not running (GYRUS_ADDR={})", client.addr),
                }
            }
            // As `systemctl status`: scripts can test whether a daemon runs.
            if !running {
                std::process::exit(3);
            }
            Ok(())
        }
    }
}

fn pid_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    if unsafe { libc::kill(pid as libc::pid_t, 0) } != 0 {
        return false;
    }
    // A zombie has exited; only its parent has not collected it yet.
    let state = i32::try_from(pid)
        .ok()
        .and_then(|pid| procfs::process::Process::new(pid).ok())
        .and_then(|p| p.stat().ok())
        .map(|s| s.state);
    state != Some('Z')
}

pub(crate) async fn version(output: Output) -> Result<()> {
    let client = DaemonClient::from_env()?;
    let daemon = client.health().await.map(|h| h.version);
    if output == Output::Json {
        println!(
            "{}",
            serde_json::json!({"cli": env!("CARGO_PKG_VERSION"), "daemon": daemon})
        );
    } else {
        println!("cli:    {}", env!("CARGO_PKG_VERSION"));
        println!(
            "daemon: {}",
            daemon.unwrap_or_else(|| format!("not running at {}", client.addr))
        );
    }
    Ok(())
}

pub(crate) async fn replica(_args: ReplicaArgs) -> Result<()> {
    let line = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    })
    .await
    .context("reading the replica's launch")?
    .context("reading the replica's launch from stdin")?;
    let launch = gyrus_launch::ReplicaLaunch::from_line(&line)
        .context("the replica's launch on stdin (gyrus replica is started by the daemon)")?;
    // A replica's stderr is its API's log file: plain lines with the time (UTC), each saying
    // which replica wrote it (the messages do), as the daemon's own `[gyrus <time>]` lines and
    // the workers' lines beside them do.
    let filter = tracing_subscriber::EnvFilter::try_from_env("GYRUS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .with_level(false)
        .with_env_filter(filter)
        .init();
    gyrus_replica::run(launch).await.map_err(|e| anyhow!("{e}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_live_process_is_alive() {
        assert!(super::pid_alive(std::process::id()));
        assert!(!super::pid_alive(u32::MAX >> 1));
    }
}
