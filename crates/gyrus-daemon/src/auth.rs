//! Who may use the control API (`/_gyrus/v1`): it deploys code that runs as the daemon's user,
//! so every route but a bare health check needs the daemon's token, and requests that a web
//! browser could send on behalf of another site are refused whatever they carry.
//!
//! The token is 32 random bytes, made at the daemon's first start in `GYRUS_HOME/token`
//! (mode 0600). The CLI sends it as `Authorization: Bearer ...`, read from that file or from
//! `GYRUS_TOKEN` for a daemon on another machine. Against browsers (cross-site requests and DNS
//! rebinding, where the page's own name resolves to 127.0.0.1):
//! - an `Origin` must be the daemon's own (the scheme and the `Host` the request was sent to);
//! - `Host` must be an IP address, a loopback name, the name the daemon was bound to, or one
//!   listed in `GYRUS_ALLOWED_HOSTS` (a rebinding page can only send its own name);
//! - a request that changes anything (not GET or HEAD) must carry one of the content types the
//!   CLI sends, none of which a page can send without a CORS preflight, which gyrus never
//!   answers.

use std::io::Write;
use std::net::IpAddr;
use std::path::Path;

use axum::http::{header, HeaderMap, Method};
use subtle::ConstantTimeEq;

use crate::error::DaemonError;
use crate::home::GyrusHome;

/// The content types of every control request with a body or a side effect.
pub const CONTROL_CONTENT_TYPES: &[&str] = &[
    "application/json",
    "application/gzip",
    "application/x-tar",
    "application/octet-stream",
];

/// The environment variable the CLI reads the token from, before `GYRUS_HOME/token`.
pub const TOKEN_ENV: &str = "GYRUS_TOKEN";

/// Extra names `Host` may carry (comma-separated), for a daemon reached by a DNS name.
pub const ALLOWED_HOSTS_ENV: &str = "GYRUS_ALLOWED_HOSTS";

/// The token in `GYRUS_HOME/token`, if the daemon has made one.
pub fn read_token(home: &GyrusHome) -> std::io::Result<Option<String>> {
    match std::fs::read_to_string(home.token_file()) {
        Ok(text) => Ok(Some(text.trim().to_owned()).filter(|t| !t.is_empty())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The daemon's token, made (mode 0600, written whole before it appears) if there is none.
pub fn load_or_create_token(home: &GyrusHome) -> Result<String, DaemonError> {
    let path = home.token_file();
    let read_err = |e| DaemonError::io(format!("reading {}", path.display()), e);
    if let Some(token) = read_token(home).map_err(read_err)? {
        tighten_permissions(&path);
        return Ok(token);
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| DaemonError::Internal(format!("no randomness for the token: {e}")))?;
    let token = data_encoding::BASE64URL_NOPAD.encode(&bytes);
    // A temporary file is created 0600; linking it into place fails if another process made
    // a token meanwhile, and then that one is used.
    let write_err = |e| DaemonError::io(format!("writing {}", path.display()), e);
    let mut tmp = tempfile::NamedTempFile::new_in(home.root()).map_err(write_err)?;
    writeln!(tmp, "{token}").map_err(write_err)?;
    tmp.as_file().sync_all().map_err(write_err)?;
    match tmp.persist_noclobber(&path) {
        Ok(_) => Ok(token),
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {
            read_token(home).map_err(read_err)?.ok_or_else(|| {
                DaemonError::Internal(format!("{} exists but is empty", path.display()))
            })
        }
        Err(e) => Err(write_err(e.error)),
    }
}

/// A token file others can read is no secret: make it the owner's only.
fn tighten_permissions(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            "{} was readable by other users; setting its mode to 0600",
            path.display()
        );
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
}

/// The rules of this module for one daemon.
#[derive(Debug, Clone)]
pub struct ControlGuard {
    token: String,
    /// The daemon serves TLS: its own origin is `https://`.
    tls: bool,
    /// The host part of the address the daemon was asked to bind (a name or an address).
    bind_host: String,
    allowed_hosts: Vec<String>,
}

impl ControlGuard {
    pub fn new(token: String, bind_addr: &str, tls: bool) -> Self {
        let allowed_hosts = std::env::var(ALLOWED_HOSTS_ENV)
            .unwrap_or_default()
            .split(',')
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        Self {
            token,
            tls,
            bind_host: host_part(bind_addr).to_ascii_lowercase(),
            allowed_hosts,
        }
    }

    /// Whether the daemon was bound to a loopback address (only this machine can reach it).
    pub fn is_loopback(&self) -> bool {
        let bare = self.bind_host.trim_start_matches('[').trim_end_matches(']');
        match bare.parse::<IpAddr>() {
            Ok(ip) => ip.is_loopback(),
            Err(_) => bare == "localhost",
        }
    }

    /// Whether the daemon serves TLS (its own origin is `https://`).
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Whether the request carries the daemon's token.
    pub fn is_authenticated(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(header::AUTHORIZATION).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return false;
        };
        // `Bearer <token>`: the scheme is case-insensitive, then any blank space.
        let Some((scheme, given)) = value.to_str().ok().and_then(|v| v.split_once([' ', '\t']))
        else {
            return false;
        };
        scheme.eq_ignore_ascii_case("bearer")
            && bool::from(given.trim().as_bytes().ct_eq(self.token.as_bytes()))
    }

    pub fn require_token(&self, headers: &HeaderMap) -> Result<(), DaemonError> {
        if self.is_authenticated(headers) {
            return Ok(());
        }
        Err(DaemonError::Unauthorized(
            if headers.contains_key(header::AUTHORIZATION) {
                "the token sent is not this daemon's; the CLI sends GYRUS_HOME/token, or GYRUS_TOKEN when it is set".into()
            } else {
                "the gyrus control API needs the daemon's token (Authorization: Bearer ...): the CLI \
             sends GYRUS_HOME/token itself; from another machine, set GYRUS_TOKEN to its content"
                .into()
            },
        ))
    }

    /// Refuses what a browser sends for another site: a foreign `Origin`, a `Host` that is not
    /// this daemon's, or a request with side effects in a content type a page can send.
    pub fn refuse_browsers(&self, method: &Method, headers: &HeaderMap) -> Result<(), DaemonError> {
        // One of each: with two, which one a proxy or a browser honours is anyone's guess.
        for name in [header::HOST, header::ORIGIN, header::CONTENT_TYPE] {
            if headers.get_all(&name).iter().count() > 1 {
                return Err(DaemonError::Forbidden(format!(
                    "the {name} header is given more than once"
                )));
            }
        }
        let host = match headers.get(header::HOST) {
            Some(v) => Some(
                v.to_str()
                    .map_err(|_| DaemonError::Forbidden("the Host header is not ASCII".into()))?,
            ),
            None => None,
        };
        if let Some(host) = host {
            if !self.host_allowed(host) {
                return Err(DaemonError::Forbidden(format!(
                    "Host {host:?} is not this daemon's address: the control API answers to IP \
                     addresses, loopback names, the name it was bound to, and {ALLOWED_HOSTS_ENV}"
                )));
            }
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("");
            let scheme = if self.tls { "https" } else { "http" };
            let own = host.is_some_and(|h| origin.eq_ignore_ascii_case(&format!("{scheme}://{h}")));
            if !own {
                return Err(DaemonError::Forbidden(format!(
                    "cross-origin requests are refused (Origin {origin:?})"
                )));
            }
        }
        if headers
            .get("sec-fetch-site")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"))
        {
            return Err(DaemonError::Forbidden(
                "cross-site requests are refused (Sec-Fetch-Site: cross-site)".into(),
            ));
        }
        if *method != Method::GET && *method != Method::HEAD {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let essence = content_type
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if !CONTROL_CONTENT_TYPES.contains(&essence.as_str()) {
                return Err(DaemonError::UnsupportedMediaType(format!(
                    "{method} requests to the control API must have Content-Type {} (found {})",
                    CONTROL_CONTENT_TYPES.join(", "),
                    if content_type.is_empty() {
                        "none".to_owned()
                    } else {
                        format!("{content_type:?}")
                    }
                )));
            }
        }
        Ok(())
    }

    fn host_allowed(&self, host: &str) -> bool {
        // A name, an IPv4 address or a bracketed IPv6 one, and a port: nothing else (no
        // lists, no userinfo).
        let well_formed = host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b));
        if !well_formed {
            return false;
        }
        let name = host_part(host).to_ascii_lowercase();
        let name = name.trim_end_matches('.');
        if name.is_empty() {
            return false;
        }
        let bare = name.trim_start_matches('[').trim_end_matches(']');
        bare.parse::<IpAddr>().is_ok()
            || name == "localhost"
            || name.ends_with(".localhost")
            || name == self.bind_host
            || self.allowed_hosts.iter().any(|h| h == name)
    }
}

/// `host` of `host:port`, `[v6]:port`, or a bare host.
fn host_part(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match addr.rsplit_once(':') {
        // More than one colon without brackets: a bare IPv6 address.
        Some((host, _)) if !host.contains(':') => host,
        _ => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn guard() -> ControlGuard {
        ControlGuard {
            token: "secret".into(),
            tls: false,
            bind_host: "127.0.0.1".into(),
            allowed_hosts: vec!["gyrus.internal".into()],
        }
    }

    #[test]
    fn token_must_match() {
        let g = guard();
        assert!(g.is_authenticated(&headers(&[("authorization", "Bearer secret")])));
        assert!(!g.is_authenticated(&headers(&[("authorization", "Bearer secre")])));
        assert!(!g.is_authenticated(&headers(&[("authorization", "Basic secret")])));
        assert!(g.is_authenticated(&headers(&[("authorization", "BEARER secret")])));
        assert!(g.is_authenticated(&headers(&[("authorization", "Bearer\tsecret")])));
        let mut twice = headers(&[("authorization", "Bearer secret")]);
        twice.append(header::AUTHORIZATION, "Bearer other".parse().unwrap());
        assert!(!g.is_authenticated(&twice));
        assert!(!g.is_authenticated(&headers(&[])));
        let err = g.require_token(&headers(&[])).unwrap_err();
        assert_eq!(err.status(), axum::http::StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn browser_requests_are_refused() {
        let g = guard();
        let post = Method::POST;
        let cli = [
            ("host", "127.0.0.1:8888"),
            ("content-type", "application/gzip"),
        ];
        assert!(g.refuse_browsers(&post, &headers(&cli)).is_ok());
        // What a no-cors POST from a web page sends.
        for bad in [
            vec![("host", "127.0.0.1:8888"), ("content-type", "text/plain")],
            vec![("host", "127.0.0.1:8888")],
            vec![
                ("host", "127.0.0.1:8888"),
                ("content-type", "application/json"),
                ("origin", "http://evil.example"),
            ],
            vec![
                ("host", "evil.example:8888"),
                ("content-type", "application/json"),
            ],
            vec![
                ("host", "127.0.0.1:8888"),
                ("content-type", "application/json"),
                ("origin", "null"),
            ],
            vec![
                ("host", "127.0.0.1:8888"),
                ("content-type", "application/json"),
                ("sec-fetch-site", "cross-site"),
            ],
            vec![
                ("host", "127.0.0.1:8888, evil.example"),
                ("content-type", "application/json"),
            ],
            vec![
                ("host", "user@127.0.0.1:8888"),
                ("content-type", "application/json"),
            ],
            // The daemon speaks http here: an https page of the same host is another origin.
            vec![
                ("host", "127.0.0.1:8888"),
                ("content-type", "application/json"),
                ("origin", "https://127.0.0.1:8888"),
            ],
        ] {
            assert!(
                g.refuse_browsers(&post, &headers(&bad)).is_err(),
                "accepted {bad:?}"
            );
        }
        // The daemon's own origin (a page it serves), and other loopback names.
        for good in [
            vec![
                ("host", "localhost:8888"),
                ("origin", "http://localhost:8888"),
            ],
            vec![("host", "[::1]:8888")],
            vec![("host", "app.localhost:8888")],
            vec![("host", "gyrus.internal:8888")],
            vec![("host", "10.1.2.3:8888")],
        ] {
            assert!(
                g.refuse_browsers(&Method::GET, &headers(&good)).is_ok(),
                "refused {good:?}"
            );
        }
    }

    #[test]
    fn duplicated_headers_are_refused() {
        let g = guard();
        for (name, good) in [
            ("host", "127.0.0.1:8888"),
            ("origin", "http://127.0.0.1:8888"),
            ("content-type", "application/json"),
        ] {
            let mut h = headers(&[
                ("host", "127.0.0.1:8888"),
                ("content-type", "application/json"),
            ]);
            let name = header::HeaderName::from_bytes(name.as_bytes()).unwrap();
            h.insert(name.clone(), good.parse().unwrap());
            assert!(g.refuse_browsers(&Method::POST, &h).is_ok(), "{name}");
            h.append(name.clone(), "evil.example".parse().unwrap());
            assert!(g.refuse_browsers(&Method::POST, &h).is_err(), "{name}");
        }
    }

    #[test]
    fn host_parts() {
        assert_eq!(host_part("127.0.0.1:8888"), "127.0.0.1");
        assert_eq!(host_part("[::1]:8888"), "::1");
        assert_eq!(host_part("::1"), "::1");
        assert_eq!(host_part("example.com"), "example.com");
    }

    #[test]
    fn metrics_are_open_only_on_loopback() {
        let bound = |addr: &str| ControlGuard::new("t".into(), addr, false).is_loopback();
        assert!(bound("127.0.0.1:8888"));
        assert!(bound("127.0.0.2:8888"));
        assert!(bound("[::1]:8888"));
        assert!(bound("localhost:8888"));
        assert!(!bound("0.0.0.0:8888"));
        assert!(!bound("[::]:8888"));
        assert!(!bound("10.0.0.5:8888"));
        assert!(!bound("gyrus.example.com:443"));
    }

    #[test]
    fn token_file_is_private_and_stable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let home = GyrusHome::new(dir.path());
        let first = load_or_create_token(&home).unwrap();
        assert!(first.len() >= 40, "{first}");
        let mode = std::fs::metadata(home.token_file())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_create_token(&home).unwrap(), first);
        assert_eq!(read_token(&home).unwrap().as_deref(), Some(first.as_str()));
    }
}
