//! What an `ask` can end in besides a reply, each with a stable code for APIs.

use crate::journal::{JournalError, WriterConflict};
use crate::plugin::PluginError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum EntityError {
    #[error(
        "unknown entity type `{0}`: bind it to a plugin in weft.toml or with PUT /entity-types/{0}"
    )]
    UnknownEntityType(String),

    #[error("{0}")]
    InvalidName(String),

    /// The plugin refused the command; nothing was persisted.
    #[error("{message}")]
    Rejected { message: String },

    #[error(
        "entity {persistence_id} is overloaded: {capacity} messages are already queued; retry later"
    )]
    Overloaded {
        persistence_id: String,
        capacity: usize,
    },

    /// The entity could not be recovered; it does not start until the cause is fixed.
    #[error(transparent)]
    WriterConflict(#[from] WriterConflict),

    /// The plugin failed (trap, CPU bound, memory cap, not loaded); nothing was persisted.
    #[error("{message}")]
    Plugin { code: &'static str, message: String },

    #[error("journal: {0}")]
    Journal(String),

    /// The entity stopped while the message was queued (another writer wrote its stream).
    #[error("entity {0} stopped before answering; retry")]
    Stopped(String),
}

impl EntityError {
    pub fn code(&self) -> &'static str {
        match self {
            EntityError::UnknownEntityType(_) => "unknown_entity_type",
            EntityError::InvalidName(_) => "invalid_name",
            EntityError::Rejected { .. } => "command_rejected",
            EntityError::Overloaded { .. } => "overloaded",
            EntityError::WriterConflict(_) => "writer_conflict",
            EntityError::Plugin { code, .. } => code,
            EntityError::Journal(_) => "journal_error",
            EntityError::Stopped(_) => "entity_stopped",
        }
    }
}

impl From<PluginError> for EntityError {
    fn from(error: PluginError) -> Self {
        match error {
            PluginError::Rejected { message, .. } => EntityError::Rejected { message },
            other => EntityError::Plugin {
                code: other.code(),
                message: other.to_string(),
            },
        }
    }
}

impl From<JournalError> for EntityError {
    fn from(error: JournalError) -> Self {
        EntityError::Journal(error.to_string())
    }
}
