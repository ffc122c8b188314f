//! `gyrus get` and `gyrus describe`: an API's status, replicas and scaling, as tables or JSON.

use anyhow::Result;
use gyrus_daemon::api::{ApiInfo, BatchJobs};

use crate::client::DaemonClient;
use crate::output::Output;
use crate::output::{age, print_table};

pub(crate) async fn get(api: Option<String>, output: Output, watch: bool) -> Result<()> {
    let client = DaemonClient::from_env()?;
    let daemon = client.require_daemon().await?;
    // Said once, after the first answer (an error stays the only line).
    let mut said = output != Output::Table;
    let say = |said: &mut bool| {
        if !std::mem::replace(said, true) {
            crate::output::source(&daemon);
        }
    };
    if !watch {
        let infos = fetch(&client, &api).await?;
        say(&mut said);
        return render(&api, &infos, output);
    }
    // Printed again when something a reader watches changes (kubectl's --watch); JSON as one
    // line per change. Ctrl-C ends it.
    let mut last: Option<String> = None;
    loop {
        let infos = fetch(&client, &api).await?;
        say(&mut said);
        let seen: Vec<_> = infos
            .iter()
            .map(|i| {
                (
                    &i.name,
                    &i.status,
                    i.replicas.ready,
                    i.replicas.requested,
                    &i.message,
                    &i.error,
                )
            })
            .collect();
        let key = serde_json::to_string(&seen)?;
        if last.as_ref() != Some(&key) {
            match output {
                Output::Json => println!("{}", serde_json::to_string(&infos)?),
                // One YAML document per change, so that a YAML stream reader takes them apart.
                Output::Yaml => {
                    println!("---");
                    render(&api, &infos, output)?;
                }
                Output::Table => {
                    if last.is_some() {
                        println!();
                    }
                    render(&api, &infos, output)?;
                }
            }
            last = Some(key);
        }
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
}

async fn fetch(client: &DaemonClient, api: &Option<String>) -> Result<Vec<ApiInfo>> {
    Ok(match api {
        Some(name) => vec![client.get_json(&format!("/apis/{name}")).await?],
        None => client.get_json("/apis").await?,
    })
}

fn render(api: &Option<String>, infos: &[ApiInfo], output: Output) -> Result<()> {
    let printed = match (api, infos) {
        (Some(_), [one]) => crate::output::structured(one, output)?,
        _ => crate::output::structured(&infos, output)?,
    };
    if printed {
        return Ok(());
    }
    if infos.is_empty() {
        println!("no APIs are deployed (deploy one with `gyrus deploy`)");
        return Ok(());
    }
    let rows = infos
        .iter()
        .map(|i| {
            // A batch API has no replicas of its own: its processes are its jobs' workers.
            // Nor does a traffic splitter: its requests go to its APIs.
            let replicas = match &i.jobs {
                Some(j) => format!("{} worker(s)", j.workers_running),
                None if !i.splits.is_empty() => format!("splits {} API(s)", i.splits.len()),
                None => format!("{}/{}", i.replicas.ready, i.replicas.requested),
            };
            vec![
                i.name.clone(),
                i.status.clone(),
                replicas,
                i.autoscaling
                    .as_ref()
                    .and_then(|a| a.in_flight_avg)
                    .map(|v| format!("{v:.1}"))
                    .unwrap_or_else(|| "-".into()),
                i.url.clone(),
                age(&i.updated_at),
            ]
        })
        .collect();
    print_table(
        &[
            "API",
            "STATUS",
            "READY/REQUESTED",
            "IN-FLIGHT",
            "URL",
            "LAST UPDATE",
        ],
        rows,
    );
    if let [one] = infos {
        if api.is_some() {
            match &one.jobs {
                Some(jobs) => print_jobs(&one.name, jobs),
                None if !one.splits.is_empty() => print_splits(one),
                None => print_scaling(one),
            }
        }
    }
    if api.is_none() {
        for i in infos {
            if let Some(j) = &i.jobs {
                println!(
                    "\n{}: batch API, {} job(s) running, {} in all (gyrus get {} lists them)",
                    i.name, j.running, j.total, i.name
                );
            }
        }
    }
    for i in infos {
        if let Some(e) = &i.error {
            println!("\n{} error: {e}", i.name);
        }
    }
    Ok(())
}

/// A traffic splitter's APIs, with their shares.
fn print_splits(info: &ApiInfo) {
    println!();
    let rows = info
        .splits
        .iter()
        .map(|s| {
            vec![
                s.api.clone(),
                if s.shadow {
                    format!("{}% copied (shadow)", s.weight)
                } else {
                    format!("{}%", s.weight)
                },
                s.status.clone(),
            ]
        })
        .collect();
    print_table(&["API", "SHARE", "STATUS"], rows);
}

/// A batch API's newest jobs.
fn print_jobs(api: &str, jobs: &BatchJobs) {
    println!(
        "\njobs:        {} running, {} in all; workers running: {}",
        jobs.running, jobs.total, jobs.workers_running
    );
    if jobs.recent.is_empty() {
        println!("no jobs yet: submit one with `gyrus job submit {api} job.json`");
        return;
    }
    println!();
    let rows = jobs
        .recent
        .iter()
        .map(|j| {
            vec![
                j.job_id.clone(),
                j.status.clone(),
                format!("{}/{}", j.succeeded, j.total_batch_count),
                j.failed.to_string(),
                age(&j.created_time),
            ]
        })
        .collect();
    print_table(
        &["JOB", "STATUS", "BATCHES DONE", "FAILED", "SUBMITTED"],
        rows,
    );
    if jobs.total as usize > jobs.recent.len() {
        println!(
            "(the newest {}; gyrus job list {api} shows all)",
            jobs.recent.len()
        );
    }
}

/// The replica counts, the load and the autoscaler's reasoning of one API.
fn print_scaling(i: &ApiInfo) {
    let r = &i.replicas;
    println!(
        "\nreplicas:    {} requested, {} ready, {} starting, {} failed",
        r.requested, r.ready, r.starting, r.failed
    );
    if let Some(a) = &i.autoscaling {
        match (a.in_flight_avg, a.in_flight_now) {
            (Some(avg), now) => println!(
                "in-flight:   {avg:.2} average over {}s{}",
                a.window_secs,
                now.map(|n| format!(" (now {n})")).unwrap_or_default()
            ),
            (None, _) => println!("in-flight:   no samples in the last {}s", a.window_secs),
        }
        if let Some(c) = &a.last_change {
            println!(
                "last scale:  {} → {} replicas, {} ago: {}",
                c.from,
                c.to,
                age(&c.at),
                c.reason
            );
        }
        if let Some(d) = &a.last_decision {
            println!("autoscaler:  {} ago: {}", age(&d.at), d.reason);
        }
    }
}

pub(crate) async fn describe(api: &str, output: Output) -> Result<()> {
    let client = DaemonClient::from_env()?;
    let daemon = client.require_daemon().await?;
    let info: ApiInfo = client.get_json(&format!("/apis/{api}")).await?;
    if crate::output::structured(&info, output)? {
        return Ok(());
    }
    crate::output::source(&daemon);
    // A traffic splitter has no predictor, generation or replicas: its APIs instead.
    let splitter = !info.splits.is_empty();
    println!("name:        {}", info.name);
    if splitter {
        println!("kind:        {}", info.kind);
    } else {
        println!(
            "kind:        {} ({} predictor)",
            info.kind, info.predictor_type
        );
    }
    println!("status:      {}", info.status);
    if let Some(m) = &info.message {
        println!("doing:       {m}");
    }
    println!("url:         {}", info.url);
    if !splitter {
        println!("generation:  {}", info.generation);
    }
    println!("created:     {}", info.created_at);
    println!(
        "updated:     {} ({} ago)",
        info.updated_at,
        age(&info.updated_at)
    );
    if let Some(e) = &info.error {
        println!("error:       {e}");
    }
    if splitter {
        print_splits(&info);
        return Ok(());
    }
    println!();
    let rows = info
        .replica_details
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                r.state.clone(),
                r.generation.to_string(),
                r.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                r.port.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                r.in_flight.to_string(),
                r.restarts.to_string(),
                age(&r.started_at),
            ]
        })
        .collect();
    print_table(
        &[
            "REPLICA",
            "STATE",
            "GEN",
            "PID",
            "PORT",
            "IN-FLIGHT",
            "RESTARTS",
            "AGE",
        ],
        rows,
    );
    for r in &info.replica_details {
        if let Some(e) = &r.error {
            println!("{}: {e}", r.id);
        }
        if let Some(e) = &r.last_exit {
            println!("{}: replaces one that stopped: {e}", r.id);
        }
    }
    print_scaling(&info);
    print_models(&info);
    Ok(())
}

/// The inference service's work per model, summed over the live replicas.
fn print_models(info: &ApiInfo) {
    if info.models.is_empty() {
        return;
    }
    println!();
    let per = |total: u64, n: u64| {
        if n == 0 {
            "-".to_string()
        } else {
            format!("{:.2}", total as f64 / n as f64 / 1000.0)
        }
    };
    let rows = info
        .models
        .iter()
        .map(|m| {
            vec![
                m.model.clone(),
                if m.batching { "on" } else { "off" }.to_string(),
                m.requests.to_string(),
                m.runs.to_string(),
                if m.runs == 0 {
                    "-".to_string()
                } else {
                    format!("{:.1}", m.requests as f64 / m.runs as f64)
                },
                m.queued.to_string(),
                format!("{} / {}", m.shed_queue_full, m.shed_deadline),
                per(m.queue_us, m.requests + m.shed_deadline),
                per(m.engine_us, m.runs),
            ]
        })
        .collect();
    print_table(
        &[
            "MODEL",
            "BATCHING",
            "REQUESTS",
            "RUNS",
            "REQ/RUN",
            "QUEUED",
            "SHED (FULL / LATE)",
            "QUEUE MS",
            "ENGINE MS",
        ],
        rows,
    );
    const LABELS: [&str; 9] = [
        "1", "2", "3-4", "5-8", "9-16", "17-32", "33-64", "65-128", ">128",
    ];
    for m in info.models.iter().filter(|m| m.batching && m.runs > 0) {
        let sizes: Vec<String> = LABELS
            .iter()
            .zip(&m.batch_sizes)
            .filter(|(_, n)| **n > 0)
            .map(|(label, n)| format!("{label}: {n}"))
            .collect();
        println!("{}: runs by rows: {}", m.model, sizes.join(", "));
    }
}
