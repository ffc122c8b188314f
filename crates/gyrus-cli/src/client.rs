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
    /// `GYRUS_ADDR` starts with `https://`.
    https: bool,
    pub home: GyrusHome,
    http: reqwest::Client,
    /// `GYRUS_TOKEN`, for a daemon on another machine; else `GYRUS_HOME/token` is read when a
    /// request is sent (a daemon this command starts makes it).
    token_env: Option<String>,
}

/// What a daemon told about itself to a request with its token.
pub struct Daemon {
    pub pid: u32,
    pub home: String,
    pub addr: String,
    pub version: String,
}

impl DaemonClient {
    pub fn from_env() -> Result<Self> {
        let mut builder = reqwest::Client::builder().no_proxy().use_rustls_tls();
        // A daemon with its own (self-signed) certificate: trust it for these requests.
        if let Some(ca) = std::env::var_os("GYRUS_TLS_CA").filter(|v| !v.is_empty()) {
            let pem = std::fs::read(&ca)
                .with_context(|| format!("reading GYRUS_TLS_CA={}", Path::new(&ca).display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).with_context(|| {
                format!(
                    "GYRUS_TLS_CA={}: not PEM certificates",
                    Path::new(&ca).display()
                )
            })?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().context("creating the HTTP client")?;
        Ok(Self {
            https: gyrus_daemon::https_from_env(),
            addr: gyrus_daemon::addr_from_env(),
            home: GyrusHome::from_env(),
            http,
            token_env: std::env::var(gyrus_daemon::auth::TOKEN_ENV)
                .ok()
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty()),
        })
    }

    fn token(&self) -> Option<String> {
        self.token_env
            .clone()
            .or_else(|| gyrus_daemon::auth::read_token(&self.home).ok().flatten())
    }

    /// A request to the control API, with the token. Anything but GET must also set one of
    /// the content types the daemon accepts (`gyrus_daemon::auth::CONTROL_CONTENT_TYPES`).
    pub fn control(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, self.url(path));
        match self.token() {
            Some(token) => req.bearer_auth(token),
            None => req,
        }
    }

    pub fn scheme(&self) -> &'static str {
        if self.https {
            "https"
        } else {
            "http"
        }
    }

    /// A path on the daemon outside the control API (the dashboard, /metrics).
    pub fn base_url(&self, path: &str) -> String {
        format!("{}://{}{}", self.scheme(), self.addr, path)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{}{}", self.scheme(), self.addr, API_PREFIX, path)
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Whatever daemon answers at the address; only one that accepted the token tells its
    /// pid and home.
    pub async fn health(&self) -> Option<Health> {
        self.probe().await.ok().flatten()
    }

    /// `Ok(None)` when nothing listens at the address; an error when something does but the
    /// conversation fails (a TLS certificate not trusted, a timeout, not a gyrus daemon):
    /// then starting a daemon there would not help.
    pub async fn probe(&self) -> Result<Option<Health>> {
        let sent = self
            .control(reqwest::Method::GET, "/health")
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        let resp = match sent {
            Ok(resp) => resp,
            Err(e) if is_refused(&e) => return Ok(None),
            Err(e) => return Err(self.unreachable(e)),
        };
        let status = resp.status();
        resp.json().await.map(Some).map_err(|e| {
            anyhow!(
                "something answers at {} (HTTP {status}), but not as a gyrus daemon: {e}",
                self.addr
            )
        })
    }

    /// Fails with a hint when no daemon answers (commands that only read never start one), or
    /// when the one answering serves another GYRUS_HOME than this shell's.
    pub async fn require_daemon(&self) -> Result<Daemon> {
        let h = self.probe().await?.ok_or_else(|| {
            anyhow!(
                "no gyrus daemon is running at {} (GYRUS_ADDR); `gyrus deploy` starts one, or run `gyrus daemon`",
                self.addr
            )
        })?;
        let d = self.accepted(h)?;
        if self.token_env.is_none() {
            check_same_home(&d, &self.home)?;
        }
        Ok(d)
    }

    /// The daemon's own account of itself, or why it does not take this CLI's token.
    pub fn accepted(&self, h: Health) -> Result<Daemon> {
        match (h.pid, h.home, h.addr) {
            (Some(pid), Some(home), Some(addr)) => Ok(Daemon {
                pid,
                home,
                addr,
                version: h.version,
            }),
            _ if self.token_env.is_some() => bail!(
                "the gyrus daemon at {} refused the token in GYRUS_TOKEN; copy the content of \
                 GYRUS_HOME/token from the daemon's machine",
                self.addr
            ),
            _ => bail!(
                "the gyrus daemon at {} does not accept the token in {}: it runs with another \
                 GYRUS_HOME (set GYRUS_ADDR to use another address), or it is on another machine \
                 (set GYRUS_TOKEN to the content of its GYRUS_HOME/token)",
                self.addr,
                self.home.token_file().display()
            ),
        }
    }

    /// Returns the running daemon, starting one in the background if needed.
    pub async fn ensure_daemon(&self) -> Result<Daemon> {
        if let Some(h) = self.probe().await? {
            let d = self.accepted(h)?;
            if self.token_env.is_none() {
                check_same_home(&d, &self.home)?;
            }
            return Ok(d);
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
            .env("GYRUS_ADDR", format!("{}://{}", self.scheme(), self.addr))
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
        let mut sent_token = self.token().is_some();
        loop {
            if let Some(h) = self.health().await {
                match self.accepted(h) {
                    Ok(d) => return Ok(d),
                    // The daemon makes its token as it starts: a health check sent before the
                    // file existed is answered without details; ask again with it.
                    Err(_) if !sent_token && self.token().is_some() => sent_token = true,
                    Err(e) => return Err(e),
                }
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
            .control(reqwest::Method::GET, path)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        decode(resp).await
    }

    pub async fn post_json<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let resp = self
            .control(reqwest::Method::POST, path)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        decode(resp).await
    }

    pub async fn delete_json<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let resp = self
            .control(reqwest::Method::DELETE, path)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        decode(resp).await
    }

    pub fn unreachable(&self, e: reqwest::Error) -> anyhow::Error {
        let mut msg = e.to_string();
        let mut cur = std::error::Error::source(&e);
        while let Some(inner) = cur {
            msg.push_str(": ");
            msg.push_str(&inner.to_string());
            cur = inner.source();
        }
        let hint = if msg.contains("certificate") || msg.contains("InvalidCertificate") {
            " (for a daemon with its own certificate, set GYRUS_TLS_CA to it)"
        } else {
            ""
        };
        anyhow!(
            "cannot reach the gyrus daemon at {}: {msg}{hint}",
            self.addr
        )
    }
}

/// Nothing listens there (connection refused), as opposed to a conversation that failed.
fn is_refused(e: &reqwest::Error) -> bool {
    if !e.is_connect() {
        return false;
    }
    let mut cur = std::error::Error::source(e);
    while let Some(inner) = cur {
        if let Some(io) = inner.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        cur = inner.source();
    }
    false
}

fn check_same_home(h: &Daemon, home: &GyrusHome) -> Result<()> {
    let theirs = Path::new(&h.home);
    // The same directory reached by a symlink, a bind mount or `..` is the same home.
    let same = theirs == home.root()
        || matches!(
            (theirs.canonicalize(), home.root().canonicalize()),
            (Ok(a), Ok(b)) if a == b
        );
    if !same {
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
