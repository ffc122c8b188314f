//! `gyrus logs` (as text, or as JSON lines for log shippers) and `gyrus dashboard` (a
//! one-time sign-in link to the daemon's web dashboard, opened in the browser).

use anyhow::{Context, Result};
use futures_util::StreamExt;
use std::io::Write;

use crate::client::{self, DaemonClient};

pub async fn logs(api: &str, follow: bool, tail: Option<usize>, json: bool) -> Result<()> {
    let client = DaemonClient::from_env()?;
    client.require_daemon().await?;
    let mut req = client
        .control(reqwest::Method::GET, &format!("/apis/{api}/logs"))
        .query(&[("follow", follow.to_string())]);
    if let Some(n) = tail {
        req = req.query(&[("tail", n.to_string())]);
    }
    let resp = req.send().await.map_err(|e| client.unreachable(e))?;
    if !resp.status().is_success() {
        return client::decode::<serde_json::Value>(resp).await.map(|_| ());
    }
    let mut stream = resp.bytes_stream();
    let mut out = std::io::stdout();
    // JSON lines are written whole: a chunk may end inside a line.
    let mut pending: Vec<u8> = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.context("reading logs")?;
        if !json {
            out.write_all(&chunk)?;
            out.flush()?;
            continue;
        }
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            writeln!(out, "{}", json_line(api, &line[..line.len() - 1]))?;
        }
        out.flush()?;
    }
    if json && !pending.is_empty() {
        writeln!(out, "{}", json_line(api, &pending))?;
    }
    Ok(())
}

/// One log line as a JSON object: the API, the line as written, and the request it is about
/// when it names one (`request_id=...` from the replica, `[request_id=...]` from a worker).
fn json_line(api: &str, line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches('\r');
    let mut object = serde_json::json!({"api": api, "line": text});
    if let Some(id) = request_id(text) {
        object["request_id"] = serde_json::Value::String(id.to_string());
    }
    object.to_string()
}

fn request_id(line: &str) -> Option<&str> {
    let at = line.find("request_id=")?;
    let rest = &line[at + "request_id=".len()..];
    // Ids are visible ASCII (no blanks); a worker's `[request_id=...]` ends with its bracket.
    let mut id = &rest[..rest.find(char::is_whitespace).unwrap_or(rest.len())];
    if line[..at].ends_with('[') {
        id = id.strip_suffix(']').unwrap_or(id);
    }
    Some(id).filter(|id| !id.is_empty())
}

pub async fn dashboard(open: bool) -> Result<()> {
    let client = DaemonClient::from_env()?;
    client.require_daemon().await?;
    let link: serde_json::Value = client.post_json("/dashboard/login").await?;
    let path = link["path"]
        .as_str()
        .context("the daemon answered without a sign-in link")?;
    let url = client.base_url(path);
    let url = url.as_str();
    println!("{url}");
    eprintln!(
        "a one-time link: it signs this browser in for 12 hours and works once, within {} s",
        link["expires_in_seconds"].as_u64().unwrap_or(60)
    );
    if open && !open_in_browser(client.home.root(), url) {
        eprintln!("(no browser could be opened here: open the link above in yours)");
    }
    Ok(())
}

/// Opens the link with the platform's opener. Not as an argument: the code would show in the
/// opener's and the browser's command lines, which every local user can read in /proc. A
/// private file (0600) that redirects to it is opened instead, as Jupyter does.
fn open_in_browser(home: &std::path::Path, url: &str) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let page = home.join("dashboard-open.html");
    let escaped = url.replace('&', "&amp;").replace('"', "&quot;");
    let html = format!(
        "<!doctype html><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"0;url={escaped}\">\
         <title>gyrus dashboard</title><a href=\"{escaped}\">Open the gyrus dashboard</a>\n"
    );
    let _ = std::fs::remove_file(&page);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&page)
        .and_then(|mut f| f.write_all(html.as_bytes()));
    if written.is_err() {
        return false;
    }
    std::process::Command::new("xdg-open")
        .arg(&page)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_name_their_request() {
        assert_eq!(
            request_id("2026 WARN replica r1: request_id=ab12 predict answered 500"),
            Some("ab12")
        );
        assert_eq!(
            request_id("[request_id=my-id] debug: payload: {}"),
            Some("my-id")
        );
        assert_eq!(request_id("[request_id=a]b] debug"), Some("a]b"));
        assert_eq!(request_id("request_id=x]"), Some("x]"));
        assert_eq!(request_id("request_id="), None);
        assert_eq!(request_id("nothing here"), None);
        let v: serde_json::Value =
            serde_json::from_str(&json_line("a", b"[request_id=x1] hi \"there\"\r"))
                .unwrap_or_default();
        assert_eq!(v["api"], "a");
        assert_eq!(v["line"], "[request_id=x1] hi \"there\"");
        assert_eq!(v["request_id"], "x1");
        let v: serde_json::Value =
            serde_json::from_str(&json_line("a", b"plain")).unwrap_or_default();
        assert!(v.get("request_id").is_none());
    }
}
