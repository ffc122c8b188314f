//! `gyrus job …`: a batch API's jobs (docs/batch.md). Like every command they talk to the
//! daemon's control API; `submit --wait` and `get --watch` follow a job with a progress bar.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use futures_util::StreamExt;
use serde_json::Value;

use crate::client::{self, DaemonClient};
use crate::output::print_table;

pub use crate::output::Output;

#[derive(Subcommand)]
pub enum JobCommand {
    /// Submit a job to a batch API: FILE holds Cortex's submission (`-` for stdin).
    ///
    /// Example: `gyrus job submit sums job.json --wait` with job.json
    /// `{"workers": 2, "item_list": {"items": [[1, 2], [3]], "batch_size": 1}}`, or with
    /// `"delimited_files": {"s3_paths": ["data/"], "includes": ["*.jsonl"], "batch_size": 10}`
    /// (JSON lines; relative paths are taken from the current directory; s3:// and other URLs
    /// are read with your AWS_*/GOOGLE_*/AZURE_* credentials).
    Submit {
        api: String,
        file: PathBuf,
        /// Follow the job with a progress bar until it ends; exit 1 unless it succeeded.
        #[arg(long)]
        wait: bool,
        /// Only say what the job would process (the files it would read, how many batches).
        #[arg(long)]
        dry_run: bool,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Show a job: status, batches, workers, failed batches with their errors.
    #[command(
        after_help = "Examples:\n  gyrus job get sums 69b2c0f1a3\n  gyrus job get sums 69b2c0f1a3 -o json"
    )]
    Get {
        api: String,
        job: String,
        /// Follow it with a progress bar until it ends.
        #[arg(long)]
        watch: bool,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// List a batch API's jobs, newest first.
    #[command(after_help = "Examples:\n  gyrus job list sums")]
    List {
        api: String,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Stop a running job: its workers end within seconds.
    #[command(after_help = "Examples:\n  gyrus job stop sums 69b2c0f1a3")]
    Stop { api: String, job: String },
    /// Print a job's log: its workers' output and the daemon's notes on the job.
    #[command(after_help = "Examples:\n  gyrus job logs sums 69b2c0f1a3 -f")]
    Logs {
        api: String,
        job: String,
        #[arg(short, long)]
        follow: bool,
    },
}

pub async fn run(command: JobCommand) -> Result<()> {
    let client = DaemonClient::from_env()?;
    client.require_daemon().await?;
    match command {
        JobCommand::Submit {
            api,
            file,
            wait,
            dry_run,
            output,
        } => {
            let body = if file.as_os_str() == "-" {
                let mut b = Vec::new();
                std::io::stdin()
                    .read_to_end(&mut b)
                    .context("reading stdin")?;
                b
            } else {
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?
            };
            let body = absolute_local_paths(body)?;
            let resp = client
                .control(reqwest::Method::POST, &format!("/apis/{api}/jobs"))
                .query(&[("dryRun", dry_run.to_string())])
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(
                    gyrus_daemon::api::FETCH_ENV_HEADER,
                    gyrus_daemon::api::encode_header(&crate::apis::fetch_env())?,
                )
                .body(body)
                .send()
                .await
                .map_err(|e| client.unreachable(e))?;
            let job: Value = client::decode(resp).await?;
            if !wait && crate::output::structured(&job, output)? {
                return Ok(());
            }
            for w in job["warnings"].as_array().into_iter().flatten() {
                eprintln!("warning: {}", w.as_str().unwrap_or_default());
            }
            if dry_run {
                for f in job["files"].as_array().into_iter().flatten() {
                    println!("{}", f.as_str().unwrap_or_default());
                }
                let shown = job["files"].as_array().map_or(0, Vec::len) as u64;
                if let Some(count) = job["file_count"].as_u64().filter(|c| *c > shown) {
                    println!("... and {} more file(s)", count - shown);
                }
                println!(
                    "would run {} batch(es) of up to {} item(s) ({} items)",
                    job["batch_count"], job["batch_size"], job["item_count"]
                );
                return Ok(());
            }
            let id = job["job_id"].as_str().unwrap_or_default().to_owned();
            println!("submitted job {id} ({} batches)", job["total_batch_count"]);
            if wait {
                return follow(&client, &api, &id, output).await;
            }
            Ok(())
        }
        JobCommand::Get {
            api,
            job,
            watch,
            output,
        } => {
            if watch {
                return follow(&client, &api, &job, output).await;
            }
            let status: Value = client.get_json(&format!("/apis/{api}/jobs/{job}")).await?;
            show(&status, output)
        }
        JobCommand::List { api, output } => {
            let list: Value = client.get_json(&format!("/apis/{api}/jobs")).await?;
            if crate::output::structured(&list, output)? {
                return Ok(());
            }
            let rows = list["jobs"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|j| {
                    vec![
                        text(&j["job_id"]),
                        text(&j["status"]),
                        format!("{}/{}", j["succeeded"], j["total_batch_count"]),
                        text(&j["failed"]),
                        text(&j["created_time"]),
                    ]
                })
                .collect();
            print_table(
                &["job", "status", "batches done", "failed", "created"],
                rows,
            );
            Ok(())
        }
        JobCommand::Stop { api, job } => {
            let _: Value = client
                .delete_json(&format!("/apis/{api}/jobs/{job}"))
                .await?;
            println!("stopping job {job}");
            Ok(())
        }
        JobCommand::Logs { api, job, follow } => {
            let resp = client
                .control(
                    reqwest::Method::GET,
                    &format!("/apis/{api}/jobs/{job}/logs"),
                )
                .query(&[("follow", follow.to_string())])
                .send()
                .await
                .map_err(|e| client.unreachable(e))?;
            if !resp.status().is_success() {
                return client::decode::<Value>(resp).await.map(|_| ());
            }
            let mut stream = resp.bytes_stream();
            let mut out = std::io::stdout();
            while let Some(chunk) = stream.next().await {
                out.write_all(&chunk.context("reading the job's log")?)?;
                out.flush()?;
            }
            Ok(())
        }
    }
}

/// The submission with the relative local paths of `file_path_lister` / `delimited_files`
/// made absolute against the current directory, since the daemon has no working directory of
/// the user's. A body that is not JSON goes as it is: the daemon says what is wrong with it.
fn absolute_local_paths(body: Vec<u8>) -> Result<Vec<u8>> {
    let Ok(mut submission) = serde_json::from_slice::<Value>(&body) else {
        return Ok(body);
    };
    let cwd = std::env::current_dir().context("reading the current directory")?;
    let mut changed = false;
    for source in ["file_path_lister", "delimited_files"] {
        let paths = submission
            .get_mut(source)
            .and_then(|s| s.get_mut("s3_paths"))
            .and_then(Value::as_array_mut);
        for path in paths.into_iter().flatten() {
            if let Some(p) = path.as_str().filter(|p| !p.contains("://")) {
                let p = std::path::Path::new(p);
                if p.is_relative() {
                    *path = Value::String(cwd.join(p).display().to_string());
                    changed = true;
                }
            }
        }
    }
    Ok(match changed {
        true => serde_json::to_vec(&submission)?,
        false => body,
    })
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn is_final(status: &str) -> bool {
    !matches!(status, "enqueuing" | "running")
}

/// Polls a job until it ends, with a progress bar on a terminal; then shows it. Fails unless
/// it succeeded.
async fn follow(client: &DaemonClient, api: &str, job: &str, output: Output) -> Result<()> {
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {pos}/{len} batches ({elapsed}, eta {eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar
    });
    let status = loop {
        let status: Value = client.get_json(&format!("/apis/{api}/jobs/{job}")).await?;
        if let Some(bar) = &bar {
            let m = &status["batch_metrics"];
            bar.set_length(status["total_batch_count"].as_u64().unwrap_or(0));
            bar.set_position(
                m["succeeded"].as_u64().unwrap_or(0) + m["failed"].as_u64().unwrap_or(0),
            );
            bar.set_message(format!(
                "{} ({} failed)",
                text(&status["status"]),
                m["failed"].as_u64().unwrap_or(0)
            ));
        }
        if is_final(status["status"].as_str().unwrap_or("")) {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    show(&status, output)?;
    match status["status"].as_str() {
        Some("succeeded") => Ok(()),
        Some(other) => bail!("job {job} ended {other}"),
        None => bail!("job {job}: no status"),
    }
}

fn show(status: &Value, output: Output) -> Result<()> {
    if crate::output::structured(status, output)? {
        return Ok(());
    }
    let m = &status["batch_metrics"];
    println!("job:      {}", text(&status["job_id"]));
    println!("status:   {}", text(&status["status"]));
    println!(
        "batches:  {} total, {} succeeded, {} failed, {} queued, {} in progress",
        status["total_batch_count"],
        m["succeeded"],
        m["failed"],
        status["batches_in_queue"],
        status["batches_in_progress"]
    );
    if let Some(avg) = m["avg_time_per_batch"].as_f64() {
        println!("per batch: {:.3}s on average", avg);
    }
    let w = &status["worker_counts"];
    if !w.is_null() {
        println!(
            "workers:  {} requested; {} initializing, {} running, {} succeeded, {} failed",
            status["workers"], w["initializing"], w["running"], w["succeeded"], w["failed"]
        );
    } else {
        println!("workers:  {}", status["workers"]);
    }
    println!("started:  {}", text(&status["start_time"]));
    println!("ended:    {}", text(&status["end_time"]));
    let completion = &status["on_job_complete"];
    println!(
        "on_job_complete: {}{}",
        text(&completion["status"]),
        completion["error"]
            .as_str()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default()
    );
    if let Some(e) = status["error"].as_str() {
        println!("error:    {e}");
    }
    for f in status["failed_batches"].as_array().into_iter().flatten() {
        println!(
            "failed batch {}: {}",
            text(&f["batch_id"]),
            text(&f["error"])
        );
    }
    Ok(())
}
