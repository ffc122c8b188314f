//! The CLI's client of the daemon's HTTP API, including starting the daemon in the background
//! when a command needs one and none is running.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use gyrus_daemon::api::{Health, API_PREFIX};
use gyrus_daemon::GyrusHome;
use serde::de::DeserializeOwned;

pub struct DaemonClient {
    pub addr: String,
    pub home: GyrusHome,
    http: reqwest::Client,
}

impl DaemonClient {
    pub fn from_env() -> Result<Self> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .context("creating the HTTP client")?;
        Ok(Self {
            addr: gyrus_daemon::addr_from_env(),
            home: GyrusHome::from_env(),
            http,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}{}", self.addr, API_PREFIX, path)
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub async fn health(&self) -> Option<Health> {
        let resp = self
            .http
            .get(self.url("/health"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        resp.json().await.ok()
    }

    /// Fails with a hint when no daemon answers (for commands that only read).
    pub async fn require_daemon(&self) -> Result<Health> {
        self.health().await.ok_or_else(|| {
            anyhow!(
                "no gyrus daemon is running at {} (GYRUS_ADDR); `gyrus deploy` starts one, or run `gyrus daemon`",
                self.addr
            )
        })
    }

    /// Returns the running daemon, starting one in the background if needed.
    pub async fn ensure_daemon(&self) -> Result<Health> {
        if let Some(h) = self.health().await {
            check_same_home(&h, &self.home)?;
            return Ok(h);
        }
        self.home
            .create_dirs()
            .with_context(|| format!("creating {}", self.home.root().display()))?;
        let log_path = self.home.daemon_log();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let log_len = log.metadata().map(|m| m.len()).unwrap_or(0);
        let exe = std::env::current_exe().context("finding the gyrus executable")?;
        let mut cmd = std::process::Command::new(exe);
        cmd.arg("daemon")
            .env("GYRUS_HOME", self.home.root())
            .env("GYRUS_ADDR", &self.addr)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        // SAFETY: setsid is async-signal-safe; it detaches the daemon from this terminal so
        // it outlives the command that started it.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = cmd.spawn().context("starting the gyrus daemon")?;
        eprintln!(
            "started the gyrus daemon at {} (GYRUS_HOME={}, log: {})",
            self.addr,
            self.home.root().display(),
            log_path.display()
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(h) = self.health().await {
                return Ok(h);
            }
            if let Ok(Some(status)) = child.try_wait() {
                bail!(
                    "the gyrus daemon exited ({status}):\n{}",
                    log_tail(&log_path, log_len)
                );
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "the gyrus daemon did not answer within 30s; see {}",
                    log_path.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let resp = self
            .http
            .get(self.url(path))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        decode(resp).await
    }

    pub async fn post_json<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let resp = self
            .http
            .post(self.url(path))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        decode(resp).await
    }

    pub async fn delete_json<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let resp = self
            .http
            .delete(self.url(path))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        decode(resp).await
    }

    pub fn unreachable(&self, e: reqwest::Error) -> anyhow::Error {
        anyhow!("cannot reach the gyrus daemon at {}: {e}", self.addr)
    }
}

fn check_same_home(h: &Health, home: &GyrusHome) -> Result<()> {
    let theirs = Path::new(&h.home);
    if theirs != home.root() {
        bail!(
            "the daemon at {} uses GYRUS_HOME={}, not {}; set GYRUS_ADDR to another address to run a second daemon",
            h.addr,
            theirs.display(),
            home.root().display()
        );
    }
    Ok(())
}

/// Turns a daemon answer into `T`, or its `{"error": ...}` into an error.
pub async fn decode<T: DeserializeOwned>(resp: reqwest::Response) -> Result<T> {
    let status = resp.status();
    let body = resp.bytes().await.context("reading the daemon's answer")?;
    if !status.is_success() {
        let msg = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        bail!("{msg}");
    }
    serde_json::from_slice(&body).context("decoding the daemon's answer")
}

fn log_tail(path: &Path, from: u64) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let start = (from as usize).min(text.len());
    String::from_utf8_lossy(&text[start..])
        .trim_end()
        .to_owned()
}
