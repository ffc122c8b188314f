//! The `gyrus` command. Every user command is a thin client of the daemon's HTTP API; `daemon`
//! runs the control plane in the foreground and the hidden `replica` runs one replica process.

/// mimalloc, for the data plane: a replica's request path allocates and frees many small
/// buffers (headers, JSON, tensors), which glibc's malloc made about 6% of its time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod apis;
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

use anyhow::{anyhow, Result};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

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
        } => apis::deploy(dir, file, no_wait, timeout, output).await,
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
        Command::Delete { apis } => apis::delete(&apis).await,
        Command::Refresh {
            api,
            no_wait,
            timeout,
        } => apis::refresh(&api, no_wait, timeout).await,
        Command::Predict {
            api,
            payload,
            content_type,
            debug,
            output,
        } => apis::predict(&api, &payload, &content_type, debug, output).await,
        Command::Validate { dir, file, output } => apis::validate(dir, file, output),
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
