//! What can go wrong when loading or calling a plugin, worded for the person who wrote it.
//!
//! Every variant names the plugin. None of them leaves a trace in an entity's state or journal:
//! a failed call changes nothing, and the host keeps serving.

use std::time::Duration;

use super::limits::OutputLimit;

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
