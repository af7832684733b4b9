//! What can go wrong when loading or calling a plugin, worded for the person who wrote it.
//!
//! Every variant names the plugin. None of them leaves a trace in an entity's state or journal:
//! a failed call changes nothing, and the host keeps serving.

use std::time::Duration;

use super::limits::OutputLimit;

/// The most of a guest's report (an exception's message and traceback) a trap's error carries:
/// enough for a traceback, small enough for an error body.
pub const GUEST_REPORT_BYTES_MAX: usize = 4 << 10;

/// What ends a report cut to [`GUEST_REPORT_BYTES_MAX`].
const CUT_MARKER: &str = "… [cut]";

/// `report` cut at a character boundary so that, with [`CUT_MARKER`], it fits
/// [`GUEST_REPORT_BYTES_MAX`].
fn cut_report(mut report: String) -> String {
    if report.len() <= GUEST_REPORT_BYTES_MAX {
        return report;
    }
    let mut end = GUEST_REPORT_BYTES_MAX - CUT_MARKER.len();
    while !report.is_char_boundary(end) {
        end -= 1;
    }
    report.truncate(end);
    report.push_str(CUT_MARKER);
    report
}

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The handler refused the command (its own `err`): a normal outcome, not a failure.
    #[error("{plugin} rejected the command: {message}")]
    Rejected { plugin: String, message: String },

    #[error("{plugin} exceeded its CPU bound of {limit:?} and was stopped")]
    CpuBoundExceeded { plugin: String, limit: Duration },

    #[error(
        "{plugin} exceeded its memory cap of {cap_bytes} bytes (it asked for {requested_bytes})"
    )]
    MemoryCapExceeded {
        plugin: String,
        cap_bytes: usize,
        requested_bytes: usize,
    },

    /// The guest handed the host more than a limit of `[limits.output]` allows.
    #[error("{plugin} went over its limit {} = {max}: {actual}", limit.name())]
    OutputLimitExceeded {
        plugin: String,
        limit: OutputLimit,
        max: usize,
        actual: String,
    },

    /// A reply, event or state that is not exactly one well-formed MessagePack value.
    #[error("{plugin} returned invalid output: {reason}")]
    InvalidOutput { plugin: String, reason: String },

    /// No instance slot came free within `instance_wait_ms` (all taken, or the plugin's share).
    #[error("{plugin}: {reason}; retry shortly")]
    Busy { plugin: String, reason: String },

    #[error("{plugin} trapped: {message}")]
    Trapped { plugin: String, message: String },

    #[error("no plugin named `{0}` is loaded")]
    UnknownPlugin(String),

    #[error("{plugin} is a {actual} plugin; this call needs a {expected} plugin")]
    WrongKind {
        plugin: String,
        expected: &'static str,
        actual: &'static str,
    },

    /// The bytes are not a component this host can run; the message says why.
    #[error("cannot load plugin `{plugin}`: {reason}")]
    Invalid { plugin: String, reason: String },

    #[error("plugin `{0}`: the name must be 1-64 characters of a-z, 0-9, '-' and '_'")]
    InvalidName(String),

    /// A replicated entity's history names a plugin build (`name@version`) this node has not
    /// loaded.
    #[error("{wanted} is not loaded on this node ({loaded}): load that build to fold on")]
    VersionMissing { wanted: String, loaded: String },

    /// The instance holding an entity's resident state was thrown away (another entity's call
    /// in it failed): the entity recovers from its journal and the call is tried again.
    #[error("{plugin}: the instance holding the entity's state was replaced; retry shortly")]
    ResidentLost { plugin: String },

    /// Something on the host side failed (the compile cache directory, the instance pool).
    #[error("plugin host error: {0}")]
    Host(String),
}

impl PluginError {
    /// A stable, machine-readable code for APIs.
    pub fn code(&self) -> &'static str {
        match self {
            PluginError::Rejected { .. } => "command_rejected",
            PluginError::CpuBoundExceeded { .. } => "plugin_cpu_bound_exceeded",
            PluginError::MemoryCapExceeded { .. } => "plugin_memory_cap_exceeded",
            PluginError::OutputLimitExceeded { limit, .. } => limit.code(),
            PluginError::InvalidOutput { .. } => "plugin_invalid_output",
            PluginError::Busy { .. } => "plugin_busy",
            PluginError::Trapped { .. } => "plugin_trapped",
            PluginError::UnknownPlugin(_) => "unknown_plugin",
            PluginError::WrongKind { .. } => "wrong_plugin_kind",
            PluginError::Invalid { .. } => "invalid_plugin",
            PluginError::InvalidName(_) => "invalid_plugin_name",
            PluginError::VersionMissing { .. } => "plugin_version_missing",
            PluginError::ResidentLost { .. } => "plugin_busy",
            PluginError::Host(_) => "plugin_host_error",
        }
    }

    /// A trap with what the guest reported just before it (the last line it logged at error in
    /// the call: an SDK's exception and traceback), cut to [`GUEST_REPORT_BYTES_MAX`]. Any other
    /// error is returned as it is.
    pub fn with_guest_report(self, reported: Option<String>) -> Self {
        match (self, reported) {
            (PluginError::Trapped { plugin, message }, Some(report)) => PluginError::Trapped {
                plugin,
                message: format!("{message}; the guest reported: {}", cut_report(report)),
            },
            (error, _) => error,
        }
    }

    /// Whether the instance that ran the failed call must be thrown away: a trap, a bound or cap
    /// hit, output the host refused. A handler's refusal and calls of the wrong kind leave it
    /// as good as before.
    pub fn poisons_instance(&self) -> bool {
        !matches!(
            self,
            PluginError::Rejected { .. } | PluginError::WrongKind { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trap() -> PluginError {
        PluginError::Trapped {
            plugin: "p@1".into(),
            message: "wasm trap: wasm `unreachable` instruction executed".into(),
        }
    }

    #[test]
    fn a_trap_carries_what_the_guest_reported() {
        let error = trap().with_guest_report(Some("handle failed: KeyError: 'x'".into()));
        assert!(
            error
                .to_string()
                .ends_with("the guest reported: handle failed: KeyError: 'x'")
        );
        let rejected = PluginError::Rejected {
            plugin: "p@1".into(),
            message: "no".into(),
        };
        let kept = rejected.with_guest_report(Some("other".into()));
        assert!(!kept.to_string().contains("other"));
    }

    #[test]
    fn a_long_report_is_cut_with_a_marker_within_the_bound() {
        let report = "é".repeat(GUEST_REPORT_BYTES_MAX);
        let cut = cut_report(report);
        assert!(cut.len() <= GUEST_REPORT_BYTES_MAX, "{}", cut.len());
        assert!(cut.ends_with(CUT_MARKER));
        assert_eq!(cut_report("short".into()), "short");
    }
}
