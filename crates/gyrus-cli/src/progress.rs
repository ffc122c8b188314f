//! What `gyrus deploy` shows while it waits: one spinner line per deploy (each API's step, e.g.
//! "python environment: Resolved 32 packages in 1.9s"), an indicatif bar per model download
//! (bytes, rate, ETA), and the daemon's notes (packages it added), said once each. Nothing but
//! the notes when stderr is not a terminal.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use gyrus_daemon::api::ApiInfo;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

pub struct DeployProgress {
    multi: MultiProgress,
    spinner: ProgressBar,
    downloads: HashMap<String, ProgressBar>,
    told: HashSet<(String, String)>,
}

impl DeployProgress {
    pub fn new() -> Self {
        let multi = MultiProgress::new();
        let spinner = multi.add(ProgressBar::new_spinner());
        spinner.enable_steady_tick(Duration::from_millis(120));
        DeployProgress {
            multi,
            spinner,
            downloads: HashMap::new(),
            told: HashSet::new(),
        }
    }

    /// Says each new note of `infos` once, above the bars; printed even when they are hidden.
    pub fn notes(&mut self, infos: &[ApiInfo]) {
        for i in infos {
            for note in &i.notes {
                if self.told.insert((i.name.clone(), note.clone())) {
                    let line = format!("{}: {note}", i.name);
                    self.multi.suspend(|| eprintln!("{line}"));
                }
            }
        }
    }

    /// Shows where the APIs still updating are.
    pub fn update(&mut self, pending: &[&ApiInfo]) {
        let mut steps = Vec::new();
        for i in pending {
            match &i.progress {
                Some(p) => {
                    let bar = self.downloads.entry(i.name.clone()).or_insert_with(|| {
                        let bar = self.multi.insert_before(&self.spinner, ProgressBar::new(0));
                        bar.enable_steady_tick(Duration::from_millis(250));
                        bar
                    });
                    bar.set_style(download_style(p.total.is_some()));
                    if let Some(total) = p.total {
                        bar.set_length(total);
                    }
                    bar.set_position(p.done);
                    bar.set_message(format!("{}: downloading {}", i.name, p.url));
                }
                None => {
                    if let Some(bar) = self.downloads.remove(&i.name) {
                        bar.finish_and_clear();
                    }
                    steps.push(format!(
                        "{}: {} ({}/{} replicas ready)",
                        i.name,
                        i.message.as_deref().unwrap_or("updating"),
                        i.replicas.ready,
                        i.replicas.requested
                    ));
                }
            }
        }
        self.spinner.set_message(steps.join("; "));
    }

    pub fn finish(&mut self) {
        for (_, bar) in self.downloads.drain() {
            bar.finish_and_clear();
        }
        self.spinner.finish_and_clear();
    }
}

fn download_style(sized: bool) -> ProgressStyle {
    let template = if sized {
        "{msg} [{bar:24}] {bytes}/{total_bytes} {bytes_per_sec}, {eta} left"
    } else {
        "{spinner} {msg} {bytes} {bytes_per_sec}"
    };
    // The templates are fixed and valid; the default style is the fallback all the same.
    ProgressStyle::with_template(template)
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}
