//! What changes the deployed APIs or talks to them: finding and validating the project's
//! config, `deploy` (with its wait and outcome), `refresh`, `delete` and `predict`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use gyrus_daemon::api::{ApiInfo, DeployResponse};

use crate::client::{self, DaemonClient};
use crate::output::{self, Output};
use crate::{archive, progress, SpecOutput};

/// Where the config is and what the project folder is.
struct ProjectConfig {
    dir: PathBuf,
    path: PathBuf,
    /// The config's path relative to the project folder (its name in the archive and errors).
    name: String,
}

fn find_config(dir: Option<PathBuf>, file: Option<PathBuf>) -> Result<ProjectConfig> {
    let dir_given = dir.is_some();
    let dir = dir.unwrap_or_else(|| PathBuf::from("."));
    if !dir.is_dir() {
        bail!("{} is not a folder", dir.display());
    }
    let path = match file {
        Some(f) if f.is_absolute() || f.exists() && !dir_given => f,
        Some(f) => {
            let in_dir = dir.join(&f);
            if in_dir.exists() {
                in_dir
            } else if f.exists() {
                f
            } else {
                bail!("config file {} not found", in_dir.display());
            }
        }
        None => ["cortex.yaml", "gyrus.yaml"]
            .iter()
            .map(|n| dir.join(n))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                anyhow!(
                    "no cortex.yaml or gyrus.yaml in {} (use -f FILE to name another config)",
                    std::path::absolute(&dir).unwrap_or(dir.clone()).display()
                )
            })?,
    };
    let dir = std::path::absolute(&dir).unwrap_or(dir);
    let path = std::path::absolute(&path).unwrap_or(path);
    let name = path
        .strip_prefix(&dir)
        .ok()
        .map(|p| p.display().to_string())
        .or_else(|| path.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "cortex.yaml".into());
    Ok(ProjectConfig { dir, path, name })
}

fn load_spec(cfg: &ProjectConfig) -> Result<gyrus_spec::ParsedConfig> {
    let text = std::fs::read_to_string(&cfg.path)
        .with_context(|| format!("reading {}", cfg.path.display()))?;
    gyrus_spec::load(&cfg.name, &text, Some(&cfg.dir)).map_err(|e| anyhow!("{e}"))
}

pub(crate) fn validate(
    dir: Option<PathBuf>,
    file: Option<PathBuf>,
    output: SpecOutput,
) -> Result<()> {
    let cfg = find_config(dir, file)?;
    let parsed = load_spec(&cfg)?;
    for w in &parsed.warnings {
        eprintln!("warning: {w}");
    }
    // Traffic splitters follow the APIs, as items of the same list.
    let mut items = Vec::new();
    for api in &parsed.apis {
        items.push(serde_json::to_value(api).context("serialising the spec")?);
    }
    for split in &parsed.splitters {
        items.push(serde_json::to_value(split).context("serialising the spec")?);
    }
    let value = serde_json::Value::Array(items);
    match output {
        SpecOutput::Json => println!("{}", serde_json::to_string_pretty(&value)?),
        SpecOutput::Yaml => print!("{}", serde_saphyr::to_string(&value)?),
    }
    Ok(())
}

pub(crate) async fn deploy(
    dir: Option<PathBuf>,
    file: Option<PathBuf>,
    no_wait: bool,
    timeout: Duration,
    output: Output,
) -> Result<()> {
    let cfg = find_config(dir, file)?;
    // Validate here too, so a typo is reported before anything starts.
    let parsed = load_spec(&cfg)?;
    for w in &parsed.warnings {
        eprintln!("warning: {w}");
    }
    let packed = archive::pack(&cfg.dir, &cfg.path, &cfg.name)?;
    let client = DaemonClient::from_env()?;
    client.ensure_daemon().await?;
    let resp = client
        .control(reqwest::Method::POST, "/deploy")
        .query(&[("config_file", &cfg.name)])
        .header(
            gyrus_daemon::api::FETCH_ENV_HEADER,
            gyrus_daemon::api::encode_header(&fetch_env())?,
        )
        .header("content-type", "application/gzip")
        .body(packed.archive)
        .send()
        .await
        .map_err(|e| client.unreachable(e))?;
    let deployed: DeployResponse = client::decode(resp).await?;
    // The daemon adds what only it knows (e.g. limits this machine cannot enforce).
    let local: Vec<String> = parsed.warnings.iter().map(|w| w.to_string()).collect();
    for w in deployed.warnings.iter().filter(|w| !local.contains(w)) {
        eprintln!("warning: {w}");
    }
    if output == Output::Table {
        eprintln!(
            "packed {} file(s), {} from {}",
            packed.files,
            output::bytes(packed.bytes),
            cfg.dir.display()
        );
        for api in &deployed.apis {
            eprintln!("{}: {}", api.name, api.result);
        }
    }
    let names: Vec<String> = deployed.apis.iter().map(|a| a.name.clone()).collect();
    if no_wait {
        crate::output::structured(&deployed, output)?;
        return Ok(());
    }
    let infos = wait_for(&client, &names, timeout, output == Output::Table).await?;
    report_outcome(&infos, output)
}

/// What the daemon needs of this shell to fetch model URLs as this user: the cloud SDKs'
/// variables (credentials, region, endpoint, profile) and HOME (for ~/.aws).
pub(crate) fn fetch_env() -> std::collections::BTreeMap<String, String> {
    std::env::vars()
        .filter(|(k, _)| {
            k == "HOME"
                || k.starts_with("AWS_")
                || k.starts_with("GOOGLE_")
                || k.starts_with("AZURE_")
        })
        .collect()
}

/// Polls until every API is live or failed (or the timeout), showing progress.
async fn wait_for(
    client: &DaemonClient,
    names: &[String],
    timeout: Duration,
    progress: bool,
) -> Result<Vec<ApiInfo>> {
    let deadline = std::time::Instant::now() + timeout;
    let mut shown = progress.then(progress::DeployProgress::new);
    loop {
        let mut infos = Vec::new();
        for n in names {
            infos.push(client.get_json::<ApiInfo>(&format!("/apis/{n}")).await?);
        }
        if let Some(p) = shown.as_mut() {
            p.notes(&infos);
        }
        let pending: Vec<&ApiInfo> = infos.iter().filter(|i| i.status == "updating").collect();
        if pending.is_empty() {
            if let Some(p) = shown.as_mut() {
                p.finish();
            }
            return Ok(infos);
        }
        if let Some(p) = shown.as_mut() {
            p.update(&pending);
        }
        if std::time::Instant::now() > deadline {
            if let Some(p) = shown.as_mut() {
                p.finish();
            }
            bail!(
                "gave up waiting after {}: {} still updating (see `gyrus get` and `gyrus logs`)",
                humantime::format_duration(timeout),
                pending
                    .iter()
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

fn report_outcome(infos: &[ApiInfo], output: Output) -> Result<()> {
    crate::output::structured(&infos, output)?;
    let mut failed = Vec::new();
    for i in infos {
        if i.status == "live" {
            if output == Output::Table {
                println!("{} is live at {}", i.name, i.url);
            }
        } else {
            // A traffic splitter has no logs: its APIs' status says what is wrong.
            let see = match i.splits.is_empty() {
                true => format!("run `gyrus logs {}` for the full output", i.name),
                false => format!("run `gyrus get {}` for its APIs", i.name),
            };
            failed.push(format!(
                "{} failed: {}\n({see})",
                i.name,
                i.error.as_deref().unwrap_or(&i.status),
            ));
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("{}", failed.join("\n"))
    }
}

/// Deletes each API named; one that fails does not stop the others, and the exit code says
/// whether any did.
pub(crate) async fn delete(apis: &[String]) -> Result<()> {
    let client = DaemonClient::from_env()?;
    client.require_daemon().await?;
    // Names that fail are tried once more after the others: `gyrus delete api-a splitter`
    // works in either order (an API is refused while a splitter still sends it requests).
    let mut pending: Vec<&str> = apis.iter().map(String::as_str).collect();
    let mut failed: Vec<&str> = Vec::new();
    for last_round in [false, true] {
        let mut errors = Vec::new();
        let before = pending.len();
        for api in std::mem::take(&mut pending) {
            match client
                .delete_json::<serde_json::Value>(&format!("/apis/{api}"))
                .await
            {
                Ok(_) => println!("deleted {api}"),
                Err(e) => {
                    pending.push(api);
                    errors.push(e);
                }
            }
        }
        if last_round || pending.is_empty() || pending.len() == before {
            for e in errors {
                eprintln!("error: {e:#}");
            }
            failed = pending;
            break;
        }
    }
    if !failed.is_empty() {
        bail!("not deleted: {}", failed.join(", "));
    }
    Ok(())
}

pub(crate) async fn refresh(api: &str, no_wait: bool, timeout: Duration) -> Result<()> {
    let client = DaemonClient::from_env()?;
    client.require_daemon().await?;
    let resp = client
        .control(reqwest::Method::POST, &format!("/apis/{api}/refresh"))
        .header("content-type", "application/json")
        .header(
            gyrus_daemon::api::FETCH_ENV_HEADER,
            gyrus_daemon::api::encode_header(&fetch_env())?,
        )
        .send()
        .await
        .map_err(|e| client.unreachable(e))?;
    client::decode::<serde_json::Value>(resp).await?;
    eprintln!("{api}: restarting replicas");
    if no_wait {
        return Ok(());
    }
    let infos = wait_for(&client, &[api.to_owned()], timeout, true).await?;
    report_outcome(&infos, Output::Table)
}

pub(crate) async fn predict(
    api: &str,
    payload: &str,
    content_type: &str,
    debug: bool,
    output: Output,
) -> Result<()> {
    use std::io::Write;
    let client = DaemonClient::from_env()?;
    client.require_daemon().await?;
    let info: ApiInfo = client.get_json(&format!("/apis/{api}")).await?;
    let body = match payload.strip_prefix('@') {
        Some(path) => std::fs::read(path).with_context(|| format!("reading {path}"))?,
        None => payload.as_bytes().to_vec(),
    };
    let mut req = client
        .http()
        .post(&info.url)
        .header("content-type", content_type)
        .body(body);
    if debug {
        req = req.query(&[("debug", "true")]);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("sending the request to {}", info.url))?;
    let status = resp.status();
    let request_id = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = resp.bytes().await.context("reading the answer")?;
    if output != Output::Table {
        let body = serde_json::from_slice::<serde_json::Value>(&bytes)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into()));
        let answer = serde_json::json!({
            "api": api,
            "status": status.as_u16(),
            "request_id": request_id,
            "body": body,
        });
        crate::output::structured(&answer, output)?;
        if !status.is_success() {
            std::process::exit(1);
        }
        return Ok(());
    }
    if !status.is_success() {
        bail!(
            "{api} answered {status}: {}",
            String::from_utf8_lossy(&bytes).trim_end()
        );
    }
    let mut out = std::io::stdout();
    out.write_all(&bytes)?;
    if !bytes.ends_with(b"\n") {
        out.write_all(b"\n")?;
    }
    Ok(())
}
