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

/// The last `tail` lines of a log file (all of it without `tail`), read from its end in chunks,
/// and the file's length at that moment (where following it goes on). A missing file is empty.
pub fn read_tail(path: &std::path::Path, tail: Option<usize>) -> std::io::Result<(Vec<u8>, u64)> {
    use std::io::{Read, Seek, SeekFrom};
    const CHUNK: u64 = 64 * 1024;
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let Some(n) = tail else {
        let mut all = Vec::new();
        Read::by_ref(&mut file).take(len).read_to_end(&mut all)?;
        return Ok((all, len));
    };
    // Chunks from the end until the text holds `n` line breaks before its last line's.
    let mut text: Vec<u8> = Vec::new();
    let mut start = len;
    while start > 0 {
        let step = CHUNK.min(start);
        start -= step;
        file.seek(SeekFrom::Start(start))?;
        let mut chunk = vec![0u8; step as usize];
        file.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&text);
        text = chunk;
        let body = text.strip_suffix(b"\n").unwrap_or(&text);
        if n == 0 || body.iter().filter(|&&b| b == b'\n').count() >= n {
            break;
        }
    }
    let from = tail_start(&text, n);
    Ok((text.split_off(from), len))
}

/// Byte offset where the last `n` lines of `content` begin.
fn tail_start(content: &[u8], n: usize) -> usize {
    if n == 0 {
        return content.len();
    }
    let body = content.strip_suffix(b"\n").unwrap_or(content);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return i + 1;
            }
        }
    }
    0
}

#[cfg(test)]
mod tail_tests {
    use super::{read_tail, tail_start};

    #[test]
    fn tail_lines() {
        let c = b"a\nb\nc\n";
        assert_eq!(&c[tail_start(c, 2)..], b"b\nc\n");
        assert_eq!(&c[tail_start(c, 10)..], c);
        assert_eq!(&c[tail_start(c, 0)..], b"");
    }

    #[test]
    fn tails_of_a_large_file_come_from_its_end() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("api.log");
        let lines: Vec<String> = (0..50_000)
            .map(|i| format!("line {i} {}", "x".repeat(i % 97)))
            .collect();
        let text = lines.join("\n") + "\n";
        std::fs::write(&path, &text)?;
        let (last, len) = read_tail(&path, Some(3))?;
        assert_eq!(len, text.len() as u64);
        assert_eq!(
            String::from_utf8_lossy(&last),
            lines[49_997..].join("\n") + "\n"
        );
        let (many, _) = read_tail(&path, Some(20_000))?;
        assert_eq!(
            String::from_utf8_lossy(&many),
            lines[30_000..].join("\n") + "\n"
        );
        let (all, _) = read_tail(&path, None)?;
        assert_eq!(all, text.as_bytes());
        assert_eq!(read_tail(&path, Some(60_000))?.0, text.as_bytes());
        assert_eq!(read_tail(&path, Some(0))?.0, b"");
        assert_eq!(
            read_tail(&dir.path().join("none.log"), Some(5))?,
            (Vec::new(), 0)
        );
        Ok(())
    }
}
