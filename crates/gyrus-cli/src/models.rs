//! `gyrus models …`: the model store's commands. Like every user command they talk to the
//! daemon (started on demand), which owns the store under GYRUS_HOME/models; files travel as
//! streamed bodies with a progress bar when they are large.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Subcommand, ValueEnum};
use futures_util::StreamExt;
use gyrus_daemon::api::{ModelEntry, SaveRequest, SignatureOptions, SAVE_HEADER};

use crate::client::{self, DaemonClient};
use crate::output::{bytes, print_table};

/// Show a progress bar for transfers at least this large.
const PROGRESS_FROM: u64 = 16 << 20;

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum ListOutput {
    Table,
    Json,
    Yaml,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum GetOutput {
    Yaml,
    Json,
    /// Only the directory holding the model's files.
    Path,
}

#[derive(Subcommand)]
pub enum ModelsCommand {
    /// Save an ONNX model (a .onnx file, or a directory with one .onnx file and its external
    /// data) or a TensorFlow SavedModel directory as a new version of NAME.
    ///
    /// An ONNX model is loaded in ONNX Runtime first; its inputs, outputs and dynamic axes are
    /// recorded in model.yaml. A SavedModel (a directory with saved_model.pb) is stored as it
    /// is, with its serving signature (read from saved_model.pb) in model.yaml; a directory of
    /// TensorFlow Serving version directories (1/, 2/ ...) saves its highest version. The save is atomic: a model that fails to load, or a save that
    /// is interrupted, leaves nothing behind. Deploy it with `model: NAME:latest`.
    #[command(
        after_help = "Examples:\n  gyrus models save model.onnx --name iris\n  gyrus models save saved_model/ --name iris-tf --label stage=prod"
    )]
    Save {
        path: PathBuf,
        /// The model's name: lowercase letters, digits, '.', '_', '-' (as BentoML tags).
        #[arg(long)]
        name: String,
        /// A label, as KEY=VALUE (repeat for more).
        #[arg(long = "label", value_parser = key_value)]
        labels: Vec<(String, String)>,
        /// Metadata, as KEY=VALUE (repeat for more); values are kept as strings.
        #[arg(long = "metadata", value_parser = key_value)]
        metadata: Vec<(String, String)>,
        /// A signature, as METHOD:batchable=true,batch_dim=0 (default run:batchable=false).
        #[arg(long = "signature", value_parser = signature)]
        signatures: Vec<(String, SignatureOptions)>,
        #[arg(short, long, value_enum, default_value_t = ListOutput::Table)]
        output: ListOutput,
    },
    /// List saved models, newest first: tag, framework, size, creation time, APIs using it.
    #[command(after_help = "Examples:\n  gyrus models list\n  gyrus models list -o json")]
    List {
        /// Only the versions of this model.
        name: Option<String>,
        #[arg(short, long, value_enum, default_value_t = ListOutput::Table)]
        output: ListOutput,
    },
    /// Show one model's model.yaml (TAG is NAME, NAME:latest, NAME:VERSION or a unique
    /// version prefix).
    #[command(
        after_help = "Examples:\n  gyrus models get iris:latest\n  gyrus models get iris -o path"
    )]
    Get {
        tag: String,
        #[arg(short, long, value_enum, default_value_t = GetOutput::Yaml)]
        output: GetOutput,
    },
    /// Delete models: NAME deletes every version, NAME:VERSION (or a prefix, or NAME:latest)
    /// one. A version a deployed API uses is kept unless --force.
    #[command(
        after_help = "Examples:\n  gyrus models delete iris:0vd8abc\n  gyrus models delete iris:latest --force"
    )]
    Delete {
        #[arg(required = true)]
        tags: Vec<String>,
        /// Do not ask for confirmation.
        #[arg(short = 'y', long = "yes")]
        yes: bool,
        /// Delete even versions that deployed APIs use (their replicas cannot restart then).
        #[arg(long)]
        force: bool,
    },
    /// Write a model to a compressed archive (default: NAME-VERSION.tar.gz here).
    #[command(after_help = "Examples:\n  gyrus models export iris:latest iris.tar.gz")]
    Export {
        tag: String,
        /// The archive to write, or a directory to write it in.
        out: Option<PathBuf>,
    },
    /// Add a model from an archive made by `gyrus models export`.
    #[command(after_help = "Examples:\n  gyrus models import iris.tar.gz")]
    Import { path: PathBuf },
}

fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, found {s:?}")),
    }
}

fn signature(s: &str) -> Result<(String, SignatureOptions), String> {
    let (method, rest) = s.split_once(':').unwrap_or((s, ""));
    let ok_method = !method.is_empty()
        && method
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok_method {
        return Err(format!(
            "expected METHOD:batchable=true,batch_dim=0 with a method name like run, found {s:?}"
        ));
    }
    let mut options = SignatureOptions {
        batchable: false,
        batch_dim: 0,
    };
    for part in rest.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('=') {
            Some(("batchable", v)) => {
                options.batchable = v
                    .parse()
                    .map_err(|_| format!("batchable must be true or false, found {v:?}"))?
            }
            Some(("batch_dim", v)) => {
                options.batch_dim = v
                    .parse()
                    .map_err(|_| format!("batch_dim must be an integer, found {v:?}"))?
            }
            _ => {
                return Err(format!(
                "unknown signature option {part:?}: expected batchable=true|false or batch_dim=N"
            ))
            }
        }
    }
    Ok((method.to_string(), options))
}

pub async fn run(command: ModelsCommand) -> Result<()> {
    let client = DaemonClient::from_env()?;
    // Saving and importing write to the store: they start a daemon if none runs. Reading
    // never does (an empty answer from a daemon just started would say nothing).
    if matches!(
        command,
        ModelsCommand::Save { .. } | ModelsCommand::Import { .. }
    ) {
        client.ensure_daemon().await?;
    } else {
        client.require_daemon().await?;
    }
    match command {
        ModelsCommand::Save {
            path,
            name,
            labels,
            metadata,
            signatures,
            output,
        } => {
            let request = SaveRequest {
                name,
                labels: labels.into_iter().collect(),
                metadata: metadata
                    .into_iter()
                    .map(|(k, v)| (k, serde_json::Value::String(v)))
                    .collect(),
                signatures: signatures.into_iter().collect(),
            };
            save(&client, &path, &request, output).await
        }
        ModelsCommand::List { name, output } => list(&client, name, output).await,
        ModelsCommand::Get { tag, output } => get(&client, &tag, output).await,
        ModelsCommand::Delete { tags, yes, force } => delete(&client, &tags, yes, force).await,
        ModelsCommand::Export { tag, out } => export(&client, &tag, out).await,
        ModelsCommand::Import { path } => import(&client, &path).await,
    }
}

/// A model tag goes into a URL path: keep it to the characters tags may hold.
fn tag_path(tag: &str) -> Result<String> {
    gyrus_spec::ModelTag::parse(tag).map_err(|e| anyhow!("{e}"))?;
    Ok(format!("/models/{tag}"))
}

fn created(info: &gyrus_store::ModelInfo) -> String {
    // RFC 3339 down to the second, as a table cell.
    let t = info.creation_time.replacen('T', " ", 1);
    t.get(..19).unwrap_or(&t).to_string()
}

fn print_entries(entries: &[ModelEntry], output: ListOutput) -> Result<()> {
    match output {
        ListOutput::Json => println!("{}", serde_json::to_string_pretty(entries)?),
        ListOutput::Yaml => print!("{}", serde_saphyr::to_string(&entries)?),
        ListOutput::Table => {
            let rows = entries
                .iter()
                .map(|e| {
                    vec![
                        e.tag.clone(),
                        e.info.framework().to_string(),
                        bytes(e.info.size),
                        created(&e.info),
                        if e.used_by.is_empty() {
                            "-".into()
                        } else {
                            e.used_by.join(",")
                        },
                    ]
                })
                .collect();
            print_table(
                &["TAG", "FRAMEWORK", "SIZE", "CREATED (UTC)", "USED BY"],
                rows,
            );
        }
    }
    Ok(())
}

async fn list(client: &DaemonClient, name: Option<String>, output: ListOutput) -> Result<()> {
    let mut request = client.control(reqwest::Method::GET, "/models");
    if let Some(name) = &name {
        request = request.query(&[("name", name)]);
    }
    let resp = request.send().await.map_err(|e| client.unreachable(e))?;
    let entries: Vec<ModelEntry> = client::decode(resp).await?;
    if output == ListOutput::Table {
        // After the answer, so that an error stays the only line.
        if let Some(daemon) = client
            .probe()
            .await
            .ok()
            .flatten()
            .and_then(|h| client.accepted(h).ok())
        {
            crate::output::source(&daemon);
        }
    }
    if entries.is_empty() && output == ListOutput::Table {
        match name {
            Some(n) => println!("no versions of {n} in the store"),
            None => println!("no models in the store (save one with `gyrus models save`)"),
        }
        return Ok(());
    }
    print_entries(&entries, output)
}

async fn get(client: &DaemonClient, tag: &str, output: GetOutput) -> Result<()> {
    let entry: ModelEntry = client.get_json(&tag_path(tag)?).await?;
    match output {
        GetOutput::Path => println!("{}", entry.path),
        GetOutput::Json => println!("{}", serde_json::to_string_pretty(&entry.info)?),
        GetOutput::Yaml => print!("{}", serde_saphyr::to_string(&entry.info)?),
    }
    Ok(())
}

async fn delete(client: &DaemonClient, tags: &[String], yes: bool, force: bool) -> Result<()> {
    // As in BentoML, a bare NAME means every version of it; NAME:latest only the newest.
    let mut targets: Vec<String> = Vec::new();
    for tag in tags {
        tag_path(tag)?;
        if tag.contains(':') {
            targets.push(tag.clone());
            continue;
        }
        let resp = client
            .control(reqwest::Method::GET, "/models")
            .query(&[("name", tag)])
            .send()
            .await
            .map_err(|e| client.unreachable(e))?;
        let versions: Vec<ModelEntry> = client::decode(resp).await?;
        if versions.is_empty() {
            // Let the daemon say what the store holds instead.
            targets.push(tag.clone());
        }
        targets.extend(versions.into_iter().map(|e| e.tag));
    }
    if !yes {
        if !std::io::stdin().is_terminal() {
            bail!(
                "not deleting without confirmation: pass -y to delete {}",
                targets.join(" ")
            );
        }
        eprint!("delete {}? [y/N] ", targets.join(", "));
        std::io::stderr().flush().ok();
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            bail!("nothing deleted");
        }
    }
    let mut failed = Vec::new();
    for tag in &targets {
        let mut request = client
            .control(reqwest::Method::DELETE, &tag_path(tag)?)
            .header("content-type", "application/json");
        if force {
            request = request.query(&[("force", "true")]);
        }
        let resp = request.send().await.map_err(|e| client.unreachable(e))?;
        match client::decode::<ModelEntry>(resp).await {
            Ok(e) => println!("deleted {}", e.tag),
            Err(e) => failed.push(e.to_string()),
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("{}", failed.join("\n"))
    }
}

fn transfer_bar(total: u64, verb: &str) -> Option<indicatif::ProgressBar> {
    (total >= PROGRESS_FROM).then(|| {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message(verb.to_string());
        bar
    })
}

/// The files of a model (one file, or a directory's files in order), with their sizes.
fn model_files(path: &Path) -> Result<Vec<(PathBuf, String, u64)>> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.is_file() {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| anyhow!("{} has no file name", path.display()))?;
        if !is_onnx_name(&name) {
            bail!(
                "{} is not an ONNX model: gyrus models save takes a .onnx file, a directory \
                 with one .onnx file and its external data, or a TensorFlow SavedModel \
                 directory (saved_model.pb and variables/){}",
                path.display(),
                if name == "saved_model.pb" {
                    "; give the directory that holds saved_model.pb"
                } else {
                    ""
                }
            );
        }
        // A single ONNX file is stored as saved_model.onnx (the store's layout).
        return Ok(vec![(
            path.to_path_buf(),
            "saved_model.onnx".to_string(),
            meta.len(),
        )]);
    }
    // A TensorFlow SavedModel is stored as its directory. A directory of TensorFlow Serving
    // version directories (1/, 2/ ...) is saved as its highest version, as TensorFlow Serving
    // would serve it.
    let mut path = path.to_path_buf();
    let saved_model = path.join("saved_model.pb").is_file();
    if !saved_model {
        if let Ok(gyrus_tensorflow::saved_model::Located {
            dir,
            version: Some(version),
        }) = gyrus_tensorflow::saved_model::locate(&path)
        {
            eprintln!(
                "{} holds TensorFlow SavedModel versions; saving the highest, {version} ({})",
                path.display(),
                dir.display()
            );
            path = dir;
        }
    }
    let saved_model = path.join("saved_model.pb").is_file();
    let path = path.as_path();
    let mut out = Vec::new();
    for entry in ignore::WalkBuilder::new(path)
        .standard_filters(false)
        .sort_by_file_name(|a, b| a.cmp(b))
        .build()
    {
        let entry = entry.with_context(|| format!("reading {}", path.display()))?;
        let ft = entry.file_type();
        if ft.is_some_and(|t| t.is_dir()) {
            continue;
        }
        if !ft.is_some_and(|t| t.is_file()) {
            bail!(
                "{} is not a regular file (links and special files cannot be saved)",
                entry.path().display()
            );
        }
        let rel = entry
            .path()
            .strip_prefix(path)
            .map_err(|e| anyhow!("{e}"))?
            .to_string_lossy()
            .replace('\\', "/");
        let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
        out.push((entry.path().to_path_buf(), rel, size));
    }
    if out.is_empty() {
        bail!("{} is an empty directory", path.display());
    }
    if saved_model {
        return Ok(out);
    }
    // The store's rule for a model directory (checked again by the daemon): saved_model.onnx,
    // else exactly one top-level .onnx file.
    let top: Vec<&str> = out
        .iter()
        .map(|(_, rel, _)| rel.as_str())
        .filter(|rel| !rel.contains('/') && is_onnx_name(rel))
        .collect();
    if !top.contains(&"saved_model.onnx") && top.len() != 1 {
        bail!(
            "{} holds {} top-level .onnx files{}; an ONNX model directory holds exactly one \
             (or a saved_model.onnx beside its other files), a TensorFlow SavedModel directory \
             a saved_model.pb",
            path.display(),
            top.len(),
            if top.is_empty() {
                String::new()
            } else {
                format!(" ({})", top.join(", "))
            }
        );
    }
    Ok(out)
}

fn is_onnx_name(name: &str) -> bool {
    Path::new(name)
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
}

/// Writes into a channel, so a tar built on a blocking thread streams out as a request body.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<std::io::Result<Vec<u8>>>,
    bar: Option<indicatif::ProgressBar>,
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(b) = &self.bar {
            b.inc(buf.len() as u64);
        }
        self.tx
            .blocking_send(Ok(buf.to_vec()))
            .map_err(|_| std::io::Error::other("the upload stopped"))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn channel_body(rx: tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>) -> reqwest::Body {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    reqwest::Body::wrap_stream(stream)
}

async fn save(
    client: &DaemonClient,
    path: &Path,
    request: &SaveRequest,
    output: ListOutput,
) -> Result<()> {
    gyrus_spec::check_tag_part("name", &request.name).map_err(|e| anyhow!("--name: {e}"))?;
    let files = model_files(path)?;
    let total: u64 = files.iter().map(|f| f.2).sum();
    let bar = transfer_bar(total, "uploading");
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let writer = ChannelWriter {
        tx: tx.clone(),
        bar: bar.clone(),
    };
    // The packer holds the last sender: the body ends when it is done (or has failed).
    let packer = tokio::task::spawn_blocking(move || -> Result<()> {
        let mut tar = tar::Builder::new(std::io::BufWriter::with_capacity(1 << 20, writer));
        for (src, rel, _) in &files {
            if let Err(e) = tar.append_path_with_name(src, rel) {
                let message = format!("reading {}: {e}", src.display());
                // A dropped Builder finishes the archive, which would upload a valid tar
                // missing this file; fail the body instead so the daemon saves nothing.
                std::mem::forget(tar);
                let _ = tx.blocking_send(Err(std::io::Error::other(message.clone())));
                bail!("{message}");
            }
        }
        tar.into_inner()?.flush()?;
        Ok(())
    });
    let header = gyrus_daemon::api::encode_header(request)?;
    if bar.is_none() {
        eprintln!(
            "validating and saving {} ({})",
            path.display(),
            bytes(total)
        );
    }
    let resp = client
        .control(reqwest::Method::POST, "/models")
        .header(SAVE_HEADER, header)
        .header("content-type", "application/x-tar")
        .body(channel_body(rx))
        .send()
        .await;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let packed = packer.await.map_err(|e| anyhow!("{e}"))?;
    // A file that could not be read is the error to report, whatever the daemon said.
    packed?;
    let resp = resp.map_err(|e| client.unreachable(e))?;
    let entry: ModelEntry = client::decode(resp)
        .await
        .map_err(|e| anyhow!("cannot save {}: {e}", path.display()))?;
    match output {
        ListOutput::Table => {
            println!("saved {} ({})", entry.tag, bytes(entry.info.size));
            println!(
                "deploy it with `model: {}:latest` (or {}) in cortex.yaml",
                entry.info.name, entry.tag
            );
        }
        _ => print_entries(std::slice::from_ref(&entry), output)?,
    }
    Ok(())
}

async fn export(client: &DaemonClient, tag: &str, out: Option<PathBuf>) -> Result<()> {
    let resp = client
        .control(reqwest::Method::GET, &format!("{}/export", tag_path(tag)?))
        .send()
        .await
        .map_err(|e| client.unreachable(e))?;
    if !resp.status().is_success() {
        return client::decode::<serde_json::Value>(resp).await.map(|_| ());
    }
    let full_tag = resp
        .headers()
        .get("x-gyrus-model-tag")
        .and_then(|v| v.to_str().ok())
        .unwrap_or(tag)
        .to_string();
    let default_name = format!("{}.tar.gz", full_tag.replace(':', "-"));
    let target = match out {
        Some(p) if p.is_dir() => p.join(default_name),
        Some(p) => p,
        None => PathBuf::from(default_name),
    };
    let partial = target.with_extension("gz.partial");
    let bar = resp
        .content_length()
        .and_then(|n| transfer_bar(n, "exporting"));
    let mut file = tokio::fs::File::create(&partial)
        .await
        .with_context(|| format!("creating {}", partial.display()))?;
    let mut stream = resp.bytes_stream();
    let mut written = 0u64;
    let result: Result<()> = async {
        use tokio::io::AsyncWriteExt;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.context("reading the export from the daemon")?;
            file.write_all(&chunk).await?;
            written += chunk.len() as u64;
            if let Some(b) = &bar {
                b.set_position(written);
            }
        }
        file.sync_all().await?;
        Ok(())
    }
    .await;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    if let Err(e) = result {
        let _ = std::fs::remove_file(&partial);
        return Err(e.context(format!("writing {}", target.display())));
    }
    std::fs::rename(&partial, &target)
        .with_context(|| format!("renaming {} to {}", partial.display(), target.display()))?;
    println!(
        "exported {full_tag} to {} ({})",
        target.display(),
        bytes(written)
    );
    Ok(())
}

async fn import(client: &DaemonClient, path: &Path) -> Result<()> {
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    let total = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let bar = transfer_bar(total, "importing");
    let progress = bar.clone();
    let stream = tokio_util::io::ReaderStream::new(file).map(move |chunk| {
        if let (Ok(c), Some(b)) = (&chunk, &progress) {
            b.inc(c.len() as u64);
        }
        chunk
    });
    let resp = client
        .control(reqwest::Method::POST, "/models/import")
        .header("content-type", "application/gzip")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let entry: ModelEntry = client::decode(resp.map_err(|e| client.unreachable(e))?)
        .await
        .map_err(|e| anyhow!("cannot import {}: {e}", path.display()))?;
    println!("imported {} ({})", entry.tag, bytes(entry.info.size));
    Ok(())
}
