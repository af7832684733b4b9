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

    /// The journal gave up on the write at one of its time bounds (a row lock held by another
    /// host, a statement that ran too long): nothing was persisted. Retry shortly.
    #[error("{0}")]
    JournalBusy(String),

    /// The entity is single-writer and another host holds its lease (or none could be acquired in
    /// time); nothing was persisted. Send the command to the writer, or retry.
    #[error("{}", not_writer_message(persistence_id, writer.as_deref(), *fencing_token))]
    NotWriter {
        persistence_id: String,
        /// The owner holding the lease (its writer id), when known.
        writer: Option<String>,
        fencing_token: Option<u64>,
    },

    /// A newer holder of the entity's lease recorded a higher fencing token, or a newer
    /// activation of a placed entity advanced its fence, and the journal refused this host's
    /// write: nothing was persisted. A single-writer entity observes from now on; a placed one
    /// stops, and the command is to be sent again (to the entity's current owner).
    #[error("{0}; this node no longer writes the entity: send the command to the writer")]
    Fenced(String),

    /// The lease backend failed or refused the entity's lease request; nothing was persisted.
    #[error("lease: {0}")]
    Lease(String),

    /// A change only replicated entities take (their resolver) was asked of another.
    #[error("entity {0} is not replicated: only a replicated entity's resolver can change")]
    NotReplicated(String),

    /// The entity type is replicated, and this node hosts none of its replicas.
    #[error(
        "entity type `{entity_type}` is replicated on {}, and this node is replica `{replica}`: send the command to one of them",
        replicas.join(", ")
    )]
    NotAReplica {
        entity_type: String,
        replica: String,
        replicas: Vec<String>,
    },

    /// The replica does not hold everything it knows exists yet: its own persisted events, or
    /// events it received, wait for their causal past, or (for a state read) it has not heard
    /// from every other replica since it was activated. It writes and answers again once its
    /// pulls brought what is missing.
    #[error(
        "replica {persistence_id} is catching up with the other replicas ({waiting} events wait for their causal past{}); retry shortly",
        unheard_list(unheard)
    )]
    CatchingUp {
        persistence_id: String,
        waiting: usize,
        /// The replicas it has not heard from since it was activated.
        unheard: Vec<String>,
    },

    /// The entity stopped while the message was queued (another writer wrote its stream), again
    /// and again: the message was never handled. `ask` resends such messages itself; this is
    /// what is left when every attempt found the entity stopping.
    #[error("entity {0} stopped before answering; retry")]
    Stopped(String),

    /// The command's deadline passed while it waited for its turn: it was dropped, not applied.
    #[error(
        "the command to {0} was still waiting for its turn when its deadline passed: it was not applied; retry"
    )]
    DeadlineExceeded(String),

    /// A command came with an idempotency key that the entity's recent history holds for another
    /// command (its digest differs): nothing was applied.
    #[error(
        "idempotency key `{key}` of {persistence_id} was already used for another command (applied as seq nr {seq_nr}); a retry must send the same command, a new command needs a new key"
    )]
    IdempotencyKeyReused {
        persistence_id: String,
        key: String,
        seq_nr: u64,
    },

    /// Idempotency keys are kept with single-stream entities' events only; nothing was applied.
    #[error(
        "entity type `{0}` is replicated: idempotency keys are not supported for it (each replica writes its own stream); send the command without one"
    )]
    IdempotencyUnsupported(String),

    /// This node is stopping: it passivates its entities and hands their leases back, and
    /// starts no entity any more. Another node takes the entity over; retry there (a cluster
    /// routes the retry to the new owner once this node has left).
    #[error("this node is stopping and no longer runs entity {0}; retry")]
    NodeStopping(String),
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
            EntityError::JournalBusy(_) => "journal_busy",
            EntityError::Stopped(_) => "entity_stopped",
            EntityError::NodeStopping(_) => "node_stopping",
            EntityError::NotWriter { .. } => "not_writer",
            EntityError::Lease(_) => "lease_unavailable",
            EntityError::Fenced(_) => "stale_fencing_token",
            EntityError::NotAReplica { .. } => "not_a_replica",
            EntityError::NotReplicated(_) => "not_replicated",
            EntityError::CatchingUp { .. } => "replica_catching_up",
            EntityError::DeadlineExceeded(_) => "deadline_exceeded",
            EntityError::IdempotencyKeyReused { .. } => "idempotency_key_reused",
            EntityError::IdempotencyUnsupported(_) => "idempotency_unsupported",
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
        match error {
            JournalError::StaleFencingToken { .. } => EntityError::Fenced(error.to_string()),
            JournalError::Busy(_) => EntityError::JournalBusy(error.to_string()),
            other => EntityError::Journal(other.to_string()),
        }
    }
}

fn unheard_list(unheard: &[String]) -> String {
    if unheard.is_empty() {
        String::new()
    } else {
        format!("; not heard from {} since activation", unheard.join(", "))
    }
}

fn not_writer_message(persistence_id: &str, writer: Option<&str>, token: Option<u64>) -> String {
    match (writer, token) {
        (Some(writer), Some(token)) => format!(
            "entity {persistence_id} is single-writer and {writer} holds its lease (fencing token \
             {token}); this node only observes it: send the command to the writer"
        ),
        _ => format!(
            "entity {persistence_id} is single-writer and this node could not acquire its lease in \
             time; retry"
        ),
    }
}
