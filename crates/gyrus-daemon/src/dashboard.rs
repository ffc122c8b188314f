//! The web dashboard (`/_gyrus/ui`): its files, embedded in the binary, and how a browser signs
//! in. `gyrus dashboard` asks the control API (with the token) for a one-time code and opens
//! `/_gyrus/ui/login?code=...`. A code opens a session of two secrets:
//! - the page key, an HttpOnly, SameSite=Strict cookie on `Path=/_gyrus/ui`: it only lets the
//!   browser load the page's files;
//! - the API key, handed to the page in the redirect's URL fragment (never sent to a server),
//!   kept in that tab's sessionStorage and sent as `X-Gyrus-Session`. It stands for the token on
//!   reads only (GET and HEAD of `/_gyrus/v1`, see `server::require_token`).
//!
//! Why not one cookie: cookies ignore ports, and the dashboard shares its origin with the APIs'
//! endpoints. A cookie would reach a server on another port of the host, and a predictor that
//! answered HTML could script the origin and read through it. A header has to be set by the
//! page's own script, and cross-origin requests with it need a CORS preflight, which gyrus never
//! answers. Whatever changes state needs the token in any case.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use crate::error::DaemonError;
use crate::server::AppState;

/// Where the dashboard is served.
pub const UI_PATH: &str = "/_gyrus/ui";

/// The page key's cookie.
const COOKIE: &str = "gyrus_page";

/// The header the page sends its API key in.
pub const SESSION_HEADER: &str = "x-gyrus-session";

/// A sign-in code works once, within this time.
const CODE_LIFETIME: Duration = Duration::from_secs(60);

/// A browser stays signed in this long.
const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// Codes and sessions held at once; older ones are dropped first.
const MAX_HELD: usize = 1000;

/// Only the page's own files, no inline code, no other site: what a script injected through a
/// model's output (shown as text anyway) could not get around.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The page's files: (name under `/_gyrus/ui/`, content type, bytes).
const FILES: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../ui/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../ui/app.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("../ui/style.css"),
    ),
    (
        "vendor/uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../ui/vendor/uPlot.iife.min.js"),
    ),
    (
        "vendor/uPlot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../ui/vendor/uPlot.min.css"),
    ),
];

/// One-time codes and the sessions they opened, in memory (a daemon restart signs everyone
/// out; `gyrus dashboard` signs in again).
#[derive(Default)]
pub struct Sessions {
    inner: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    codes: HashMap<String, Instant>,
    /// Page keys (cookie) and API keys (header), each to its session's expiry.
    pages: HashMap<String, Instant>,
    api_keys: HashMap<String, Instant>,
}

/// The two secrets of a session.
struct Opened {
    page: String,
    api: String,
}

fn random_secret() -> Result<String, DaemonError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| DaemonError::Internal(format!("no randomness for a sign-in code: {e}")))?;
    Ok(hex::encode(bytes))
}

/// Drops what expired, then the oldest while over [`MAX_HELD`].
fn prune(map: &mut HashMap<String, Instant>, now: Instant) {
    map.retain(|_, expires| *expires > now);
    while map.len() >= MAX_HELD {
        let Some(oldest) = map.iter().min_by_key(|(_, e)| **e).map(|(k, _)| k.clone()) else {
            break;
        };
        map.remove(&oldest);
    }
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new one-time sign-in code.
    pub fn new_code(&self) -> Result<String, DaemonError> {
        let code = random_secret()?;
        let now = Instant::now();
        let mut held = self.lock();
        prune(&mut held.codes, now);
        held.codes.insert(code.clone(), now + CODE_LIFETIME);
        Ok(code)
    }

    /// Trades a code (once, unexpired) for a session.
    fn redeem(&self, code: &str) -> Result<Option<Opened>, DaemonError> {
        let now = Instant::now();
        let mut held = self.lock();
        match held.codes.remove(code) {
            Some(expires) if expires > now => {
                let opened = Opened {
                    page: random_secret()?,
                    api: random_secret()?,
                };
                prune(&mut held.pages, now);
                prune(&mut held.api_keys, now);
                held.pages
                    .insert(opened.page.clone(), now + SESSION_LIFETIME);
                held.api_keys
                    .insert(opened.api.clone(), now + SESSION_LIFETIME);
                Ok(Some(opened))
            }
            _ => Ok(None),
        }
    }

    /// Whether the request carries a live session's API key (`X-Gyrus-Session`).
    pub fn is_signed_in(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(SESSION_HEADER).iter();
        let (Some(key), None) = (values.next(), values.next()) else {
            return false;
        };
        let Ok(key) = key.to_str() else { return false };
        let now = Instant::now();
        // The map's lookup is by hash, not a byte-by-byte comparison an attacker could time.
        self.lock().api_keys.get(key).is_some_and(|e| *e > now)
    }

    /// Whether the request's cookie holds a live session's page key.
    fn may_load_page(&self, headers: &HeaderMap) -> bool {
        let Some(page) = page_cookie(headers) else {
            return false;
        };
        let now = Instant::now();
        self.lock().pages.get(page).is_some_and(|e| *e > now)
    }
}

fn page_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

/// `POST /_gyrus/v1/dashboard/login`: a one-time sign-in path (behind the token). The CLI puts
/// it after the address it reached the daemon at, which is also what the browser can reach
/// (the daemon's own bind address may be 0.0.0.0).
pub async fn login_link(
    State(app): State<Arc<AppState>>,
) -> Result<Json<serde_json::Value>, DaemonError> {
    let code = app.sessions.new_code()?;
    Ok(Json(serde_json::json!({
        "path": format!("{UI_PATH}/login?code={code}"),
        "expires_in_seconds": CODE_LIFETIME.as_secs(),
    })))
}

#[derive(Deserialize)]
pub struct LoginQuery {
    code: Option<String>,
}

/// `GET /_gyrus/ui/login?code=...`: sets the session cookie and sends the browser to the page.
pub async fn login(
    State(app): State<Arc<AppState>>,
    Query(q): Query<LoginQuery>,
) -> Result<Response, DaemonError> {
    let opened = match q.code.as_deref() {
        Some(code) => app.sessions.redeem(code)?,
        None => None,
    };
    let Some(opened) = opened else {
        return Ok(page_error(
            StatusCode::UNAUTHORIZED,
            "This sign-in link has expired or was already used. Run `gyrus dashboard` for a new one.",
        ));
    };
    let secure = if app.guard.is_tls() { "; Secure" } else { "" };
    let cookie = format!(
        "{COOKIE}={}; Path={UI_PATH}; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        opened.page,
        SESSION_LIFETIME.as_secs()
    );
    let location = format!("{UI_PATH}#session={}", opened.api);
    let mut response = (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, location.as_str())],
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `GET /_gyrus/ui` and its files: only to a signed-in browser.
pub async fn page(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    file(&app, &headers, "index.html")
}

pub async fn asset(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    file(
        &app,
        &headers,
        if name.is_empty() { "index.html" } else { &name },
    )
}

fn file(app: &AppState, headers: &HeaderMap, name: &str) -> Response {
    if !app.sessions.may_load_page(headers) && !app.guard.is_authenticated(headers) {
        return page_error(
            StatusCode::UNAUTHORIZED,
            "Not signed in: run `gyrus dashboard`, which opens this page with a one-time sign-in link.",
        );
    }
    let Some((_, content_type, bytes)) = FILES.iter().find(|(n, _, _)| *n == name) else {
        return page_error(StatusCode::NOT_FOUND, "No such file in the dashboard.");
    };
    let mut response = (
        [
            (header::CONTENT_TYPE, *content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        *bytes,
    )
        .into_response();
    secure_headers(response.headers_mut());
    response
}

fn page_error(status: StatusCode, message: &str) -> Response {
    let mut response = (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{message}\n"),
    )
        .into_response();
    secure_headers(response.headers_mut());
    response
}

fn secure_headers(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_opens_one_session_once() {
        let s = Sessions::default();
        let code = s.new_code().unwrap_or_default();
        let Ok(Some(opened)) = s.redeem(&code) else {
            panic!("a fresh code opens a session");
        };
        assert_eq!((opened.page.len(), opened.api.len()), (64, 64));
        assert_ne!(opened.page, opened.api);
        assert!(
            s.redeem(&code).ok().flatten().is_none(),
            "a code works once"
        );
        assert!(s.redeem("guess").ok().flatten().is_none());
        let value = |v: &str| HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static(""));
        let mut h = HeaderMap::new();
        assert!(!s.is_signed_in(&h) && !s.may_load_page(&h));
        // The page key opens the page, never the API; the API key is a header, not a cookie.
        h.insert(
            header::COOKIE,
            value(&format!("a=b; {COOKIE}={}", opened.page)),
        );
        assert!(s.may_load_page(&h) && !s.is_signed_in(&h));
        h.insert(header::COOKIE, value(&format!("{COOKIE}={}", opened.api)));
        assert!(!s.may_load_page(&h) && !s.is_signed_in(&h));
        h.insert(SESSION_HEADER, value(&opened.api));
        assert!(s.is_signed_in(&h));
        h.insert(SESSION_HEADER, value(&opened.page));
        assert!(!s.is_signed_in(&h));
        h.append(SESSION_HEADER, value(&opened.api));
        assert!(
            !s.is_signed_in(&h),
            "two keys: which one counts is anyone's guess"
        );
    }

    #[test]
    fn every_file_is_embedded() {
        for (name, _, bytes) in FILES {
            assert!(!bytes.is_empty(), "{name}");
        }
        let index = String::from_utf8_lossy(FILES[0].2);
        for (name, _, _) in &FILES[1..] {
            assert!(
                index.contains(&format!("{UI_PATH}/{name}")),
                "index.html does not load {name}"
            );
        }
    }
}
