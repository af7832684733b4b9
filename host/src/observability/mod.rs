//! What a node tells the people running it: its log lines (text or JSON, to stderr), the request
//! id every line written while serving a request carries, and the latency histograms of
//! `/metrics`.
//!
//! # Layout
//! - this file: the `[log]` section, [`init_logging`] (called by the binary before the command
//!   line is read) and [`use_configured_format`] (once `weft serve` has read its config).
//! - `request_id`: the id of the HTTP request being served, for error bodies and forwarded
//!   commands.
//! - `metrics`: the histograms (HTTP requests, plugin calls, journal appends) and their rendering
//!   in the Prometheus text format.

pub mod metrics;
mod request_id;

pub use request_id::{REQUEST_ID_HEADER, current_request_id, in_request, parse_request_id};

use serde::{Deserialize, Serialize};
use std::sync::OnceLock;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer, Registry, fmt, reload};

/// The environment variable that picks the log format, over `[log] format`.
pub const LOG_FORMAT_ENV: &str = "WEFT_LOG_FORMAT";

/// `[log]`: how the node writes its log lines. Which lines is `RUST_LOG`'s business.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (the default) or `json`; `WEFT_LOG_FORMAT` overrides it.
    pub format: LogFormat,
}

/// How each log line is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One line of text per event, the spans' fields before the message.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, the event's fields (`message`
    /// among them) at the top level, and `spans`, each with its fields (a request's `request_id`).
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "{LOG_FORMAT_ENV} = {other:?}: the log format is `text` or `json`"
            )),
        }
    }
}

/// The layer writing log lines, replaceable once the config is read.
type Writer = Box<dyn Layer<Registry> + Send + Sync>;

/// How the format is changed after start, and whether the environment fixed it.
struct Installed {
    writer: reload::Handle<Writer, Registry>,
    format_from_env: bool,
}

static INSTALLED: OnceLock<Installed> = OnceLock::new();

/// Installs the process's logging: stderr, filtered by `RUST_LOG` (default `info`), in the
/// format `WEFT_LOG_FORMAT` names (default text). Fails on a format it does not know.
pub fn init_logging() -> Result<(), String> {
    let from_env = match std::env::var(LOG_FORMAT_ENV) {
        Ok(name) => Some(name.trim().to_ascii_lowercase().parse::<LogFormat>()?),
        Err(_) => None,
    };
    let (writer, handle) = reload::Layer::new(writer(from_env.unwrap_or_default()));
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::registry()
        .with(writer)
        .with(filter)
        .try_init()
        .map_err(|error| format!("cannot install logging: {error}"))?;
    let _ = INSTALLED.set(Installed {
        writer: handle,
        format_from_env: from_env.is_some(),
    });
    Ok(())
}

/// Switches to `[log] format` unless `WEFT_LOG_FORMAT` chose one. Called by `weft serve` right
/// after reading its config, before the node opens a span: a span opened under one format is not
/// written by the other. Does nothing where [`init_logging`] did not run (a node in a test).
pub fn use_configured_format(format: LogFormat) {
    let Some(installed) = INSTALLED.get() else {
        return;
    };
    if installed.format_from_env || format == LogFormat::Text {
        return;
    }
    if let Err(error) = installed.writer.reload(writer(format)) {
        tracing::warn!("cannot switch the log format to {format:?}: {error}");
    }
}

fn writer(format: LogFormat) -> Writer {
    match format {
        LogFormat::Text => fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .with_writer(std::io::stderr)
            .boxed(),
    }
}
