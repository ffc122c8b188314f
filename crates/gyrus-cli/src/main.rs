//! The `gyrus` command. Every user command is a thin client of the daemon's HTTP API; `daemon`
//! runs the control plane in the foreground and the hidden `replica` runs one replica process.

/// mimalloc, for the data plane: a replica's request path allocates and frees many small
/// buffers (headers, JSON, tensors), which glibc's malloc made about 6% of its time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod archive;
mod client;
mod jobs;
mod models;
mod observe;
mod output;
mod processes;
mod progress;
mod show;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use gyrus_daemon::api::{ApiInfo, DeployResponse};

use crate::client::DaemonClient;

/// gyrus serves Cortex projects (cortex.yaml + predictor.py) as HTTP APIs on this machine.
///
/// A daemon (started by `gyrus deploy` when none runs) keeps every API's replicas alive and
/// routes requests on GYRUS_ADDR (default 127.0.0.1:8888). State lives in GYRUS_HOME
/// (default ~/.gyrus).
#[derive(Parser)]
#[command(
    name = "gyrus",
    version,
    propagate_version = true,
    max_term_width = 100
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

use crate::output::Output;

/// `-o` of `gyrus logs`.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum SpecOutput {
    Yaml,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Deploy the APIs of a project (its cortex.yaml) and wait until they are live.
    ///
    /// The project folder is snapshotted: later edits change nothing until the next deploy.
    /// Left out: *.pyc/*.pyo/*.pyd, names starting with '.', the config file, and whatever
    /// .cortexignore excludes. .env sets environment variables; requirements.txt is installed
    /// into a cached Python environment.
    #[command(
        after_help = "Examples:\n  gyrus deploy                      # the project in this folder\n  gyrus deploy examples/iris-python\n  gyrus deploy -f prod.yaml --no-wait -o json"
    )]
    Deploy {
        /// Project folder (default: the current folder).
        dir: Option<PathBuf>,
        /// Config file (default: cortex.yaml, else gyrus.yaml, in DIR).
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// Return as soon as the daemon accepted the deploy.
        #[arg(long)]
        no_wait: bool,
        /// Give up waiting after this long (e.g. 90s, 10m).
        #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
        timeout: Duration,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Show deployed APIs: status, replicas ready/requested, URL, last update, error.
    #[command(
        after_help = "Examples:\n  gyrus get\n  gyrus get iris-classifier -o yaml\n  gyrus get --watch"
    )]
    Get {
        /// Only this API.
        api: Option<String>,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// Print again whenever a status or replica count changes (Ctrl-C to stop).
        #[arg(short, long)]
        watch: bool,
    },
    /// Show one API in detail, with the state of each replica.
    #[command(
        after_help = "Examples:\n  gyrus describe iris-classifier\n  gyrus describe iris-classifier -o json | jq .replica_details"
    )]
    Describe {
        api: String,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Print an API's logs: its replicas, Python workers and deploy events.
    ///
    /// Lines about a request carry its X-Request-ID (`request_id=...`). With --json each line
    /// is a JSON object {"api", "line", "request_id" (when the line names one)}, for log
    /// shippers.
    #[command(
        after_help = "Examples:\n  gyrus logs iris --tail 50\n  gyrus logs iris -f --json | jq 'select(.request_id == \"4f1c...\")'"
    )]
    Logs {
        api: String,
        /// Keep printing new lines as they are written (Ctrl-C to stop).
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<usize>,
        /// One JSON object per line (the same as -o json).
        #[arg(long)]
        json: bool,
        /// text: the lines as written; json: JSON lines.
        #[arg(short, long, value_enum, default_value_t = LogFormat::Text)]
        output: LogFormat,
    },
    /// Open the web dashboard: APIs, live charts, the tracker, models, jobs and logs.
    ///
    /// Prints a one-time sign-in link (it works once, within 60 s, and signs the browser in for
    /// 12 hours) and opens it in the browser. Metrics for Prometheus are at /metrics.
    #[command(
        after_help = "Examples:\n  gyrus dashboard\n  gyrus dashboard --no-open   # print the link only (e.g. over ssh)"
    )]
    Dashboard {
        /// Print the link without opening a browser.
        #[arg(long)]
        no_open: bool,
    },
    /// Delete APIs: stop their replicas and forget them.
    #[command(
        after_help = "Examples:\n  gyrus delete iris-classifier\n  gyrus delete api-a api-b        # each is deleted; the exit code says if any was missing"
    )]
    Delete {
        #[arg(required = true)]
        apis: Vec<String>,
    },
    /// Restart an API's replicas (a new generation replaces the old once ready). Model URLs
    /// are checked again: an object changed since the deploy is downloaded.
    #[command(
        after_help = "Examples:\n  gyrus refresh iris-classifier\n  gyrus refresh iris-classifier --no-wait"
    )]
    Refresh {
        api: String,
        #[arg(long)]
        no_wait: bool,
        #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Send one request to an API and print the answer.
    #[command(
        after_help = "Examples:\n  gyrus predict iris-classifier '{\"sepal_length\": 5.2, \"sepal_width\": 3.6, \"petal_length\": 1.5, \"petal_width\": 0.3}'\n  gyrus predict iris-classifier @sample.json -o json\n  gyrus predict text-api 'hello' --content-type text/plain --debug"
    )]
    Predict {
        api: String,
        /// The request body: JSON text, or @FILE to send a file's content.
        payload: String,
        /// Content-Type of the body.
        #[arg(long, default_value = "application/json")]
        content_type: String,
        /// Ask the API to log the payload and the prediction (?debug=true).
        #[arg(long)]
        debug: bool,
        /// table: the answer's body as it came; json/yaml: {status, request_id, body}.
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Check a project's config and print the resolved spec with every default filled in.
    #[command(
        after_help = "Examples:\n  gyrus validate\n  gyrus validate examples/iris-python -o json"
    )]
    Validate {
        /// Project folder (default: the current folder).
        dir: Option<PathBuf>,
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        #[arg(short, long, value_enum, default_value_t = SpecOutput::Yaml)]
        output: SpecOutput,
    },
    /// Run the daemon in the foreground (logs to stderr), or stop/inspect a running one.
    ///
    /// The control API needs the token the daemon writes to GYRUS_HOME/token (the CLI sends it
    /// itself; from another machine set GYRUS_TOKEN). To serve other machines, bind another
    /// address and use TLS, e.g.:
    ///
    ///   GYRUS_ADDR=0.0.0.0:8888 gyrus daemon --tls-cert cert.pem --tls-key key.pem
    ///
    /// and on the client: GYRUS_ADDR=https://HOST:8888 GYRUS_TOKEN=... [GYRUS_TLS_CA=cert.pem].
    #[command(
        verbatim_doc_comment,
        after_help = "Examples:\n  gyrus daemon                  # in the foreground\n  gyrus daemon status\n  gyrus daemon stop"
    )]
    Daemon {
        #[command(subcommand)]
        action: Option<DaemonAction>,
        /// Serve HTTPS with this PEM certificate chain (needs --tls-key).
        #[arg(long, env = "GYRUS_TLS_CERT", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The PEM private key of --tls-cert.
        #[arg(long, env = "GYRUS_TLS_KEY", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
    /// Print the version of this CLI and of the running daemon.
    #[command(after_help = "Examples:\n  gyrus version\n  gyrus --version")]
    Version {
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// The model store: save, list, get, delete, export and import versioned models.
    ///
    /// Models live under GYRUS_HOME/models as NAME/VERSION (BentoML's layout). Tags are NAME,
    /// NAME:latest, NAME:VERSION or a unique version prefix; cortex.yaml's `model:` takes them
    /// (e.g. `model: iris:latest`), pinned to the exact version at deploy.
    #[command(
        after_help = "Examples:\n  gyrus models save model.onnx --name iris\n  gyrus models list\n  gyrus models export iris:latest iris.tar.gz"
    )]
    Models {
        #[command(subcommand)]
        command: models::ModelsCommand,
    },
    /// A batch API's jobs: submit, get, list, stop, logs (see docs/batch.md).
    #[command(
        after_help = "Examples:\n  gyrus job submit sums job.json --wait\n  gyrus job list sums"
    )]
    Job {
        #[command(subcommand)]
        command: jobs::JobCommand,
    },
    /// Print a shell completion script (e.g. `gyrus completion bash > ~/.gyrus-completion`).
    #[command(
        after_help = "Examples:\n  gyrus completion bash > ~/.gyrus-completion && echo 'source ~/.gyrus-completion' >> ~/.bashrc"
    )]
    Completion { shell: clap_complete::Shell },
    #[command(hide = true)]
    Replica(ReplicaArgs),
    /// Load an ONNX model and print its signature as JSON (the daemon validates saves with it,
    /// in a child process so that a model crashing ONNX Runtime cannot crash the daemon).
    #[command(hide = true)]
    InspectModel {
        #[arg(long)]
        onnx_library: PathBuf,
        path: PathBuf,
    },
}

/// `gyrus replica`: started by the daemon's launcher, which writes the replica's launch
/// (`gyrus_launch::ReplicaLaunch`) as the first line of its stdin.
#[derive(clap::Args)]
struct ReplicaArgs {
    /// The replica's id, only so that `ps` tells replicas apart (the launch has it too).
    #[arg(long)]
    id: Option<String>,
}

#[derive(Subcommand)]
enum DaemonAction {
    /// Stop the running daemon (its APIs come back at the next start).
    #[command(after_help = "Examples:\n  gyrus daemon stop")]
    Stop,
    /// Show whether a daemon is running, and where.
    #[command(
        after_help = "Examples:\n  gyrus daemon status || echo not running   # exits 3 when no daemon runs\n  gyrus daemon status -o json"
    )]
    Status {
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

fn main() {
    let cli = Cli::parse();
    // Commands that print for a reader end quietly when it goes away (`gyrus get | head`),
    // as Unix tools do; the daemon and replicas keep ignoring SIGPIPE (a client that hangs up
    // is an error on that connection only).
    if !matches!(
        cli.command,
        Command::Daemon { .. } | Command::Replica(_) | Command::InspectModel { .. }
    ) {
        // SAFETY: setting a signal's disposition to its default, before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    // A replica mostly relays bytes between one socket and its Python workers: one thread
    // avoids cross-thread wake-ups on every request (measured: lower latency than a pool).
    let mut builder = if matches!(cli.command, Command::Replica(_)) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    // Run on a worker thread, not in block_on: the daemon's accept loop then shares a thread
    // with the connections it spawns instead of waking another thread for each.
    let result = runtime
        .block_on(async move { tokio::spawn(run(cli.command)).await })
        .unwrap_or_else(|e| Err(anyhow!("internal error: {e}")));
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Deploy {
            dir,
            file,
            no_wait,
            timeout,
            output,
        } => deploy(dir, file, no_wait, timeout, output).await,
        Command::Get { api, output, watch } => show::get(api, output, watch).await,
        Command::Describe { api, output } => show::describe(&api, output).await,
        Command::Logs {
            api,
            follow,
            tail,
            json,
            output,
        } => observe::logs(&api, follow, tail, json || output == LogFormat::Json).await,
        Command::Dashboard { no_open } => observe::dashboard(!no_open).await,
        Command::Delete { apis } => delete(&apis).await,
        Command::Refresh {
            api,
            no_wait,
            timeout,
        } => refresh(&api, no_wait, timeout).await,
        Command::Predict {
            api,
            payload,
            content_type,
            debug,
            output,
        } => predict(&api, &payload, &content_type, debug, output).await,
        Command::Validate { dir, file, output } => validate(dir, file, output),
        Command::Daemon {
            action,
            tls_cert,
            tls_key,
        } => {
            let tls = tls_cert
                .zip(tls_key)
                .map(|(cert, key)| gyrus_daemon::tls::TlsFiles { cert, key });
            processes::daemon(action, tls).await
        }
        Command::Version { output } => processes::version(output).await,
        Command::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "gyrus", &mut std::io::stdout());
            Ok(())
        }
        Command::Models { command } => models::run(command).await,
        Command::Job { command } => jobs::run(command).await,
        Command::Replica(args) => processes::replica(args).await,
        Command::InspectModel { onnx_library, path } => {
            processes::inspect_model(&onnx_library, &path)
        }
    }
}

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

fn validate(dir: Option<PathBuf>, file: Option<PathBuf>, output: SpecOutput) -> Result<()> {
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

async fn deploy(
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
async fn delete(apis: &[String]) -> Result<()> {
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

async fn refresh(api: &str, no_wait: bool, timeout: Duration) -> Result<()> {
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

async fn predict(
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
