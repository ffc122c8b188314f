//! The daemon's side of each API's log (`GYRUS_HOME/logs/<api>.log`, what `gyrus logs` shows):
//! deploy steps, rollouts, restarts and scaling decisions. They are ordinary `tracing` events
//! with the target `gyrus::api` and an `api` field ([`api_log!`]); [`ApiLogLayer`] appends them
//! to the API's file as `[gyrus <time>] <message>` lines, beside what the API's replicas and
//! workers write there themselves.

use std::fmt::Write as _;
use std::io::Write as _;

use tracing::field::{Field, Visit};
use tracing_subscriber::layer::Context;

use crate::home::GyrusHome;

/// The target of events meant for an API's log.
pub const TARGET: &str = "gyrus::api";

/// Logs a line to an API's log: `api_log!(name, "format {args}")`.
#[macro_export]
macro_rules! api_log {
    ($api:expr, $($arg:tt)+) => {
        tracing::info!(target: "gyrus::api", api = %$api, $($arg)+)
    };
}

/// Appends one `[gyrus <time>] <message>` line to a log file that is not an API's (e.g. the
/// model store's `models.log`).
pub fn append(path: &std::path::Path, msg: &str) {
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "[gyrus {}] {msg}", crate::now());
    }
}

/// Writes `gyrus::api` events to `GYRUS_HOME/logs/<api>.log`.
pub struct ApiLogLayer {
    home: GyrusHome,
}

impl ApiLogLayer {
    pub fn new(home: GyrusHome) -> Self {
        Self { home }
    }
}

#[derive(Default)]
struct Fields {
    api: Option<String>,
    message: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "api" => self.api = Some(value.to_owned()),
            "message" => self.message.push_str(value),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "api" => self.api = Some(format!("{value:?}")),
            "message" => {
                let _ = write!(self.message, "{value:?}");
            }
            _ => {}
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for ApiLogLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() != TARGET {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        // API names follow the spec's rule (no `/`, no `..`): safe as file names.
        let Some(api) = fields.api.filter(|a| gyrus_spec::check_api_name(a).is_ok()) else {
            return;
        };
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.home.api_log(&api))
        {
            let _ = writeln!(f, "[gyrus {}] {}", crate::now(), fields.message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn api_events_go_to_the_apis_file() {
        let dir = tempfile::tempdir().unwrap();
        let home = GyrusHome::new(dir.path());
        home.create_dirs().unwrap();
        let subscriber = tracing_subscriber::registry().with(ApiLogLayer::new(home.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let n = 3;
            api_log!("iris", "generation {n} is live");
            tracing::info!("not for any api");
            api_log!("../escape", "refused");
        });
        let text = std::fs::read_to_string(home.api_log("iris")).unwrap();
        assert!(text.starts_with("[gyrus "), "{text}");
        assert!(
            text.trim_end().ends_with("] generation 3 is live"),
            "{text}"
        );
        assert_eq!(std::fs::read_dir(home.logs()).unwrap().count(), 1);
    }
}
