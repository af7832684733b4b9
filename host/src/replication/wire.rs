//! What replicas of an entity send each other over the cluster transport, and the [`Peers`] seam
//! the entity system sends it through.
//!
//! Pushes carry a replica's new events right after they were persisted; pulls carry what a
//! replica has seen and are answered with the events it lacks. Both are one-way messages: a lost
//! one is repaired by the next pull round.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::journal::EventEnvelope;

/// Events in one message, at most: an answer to a pull that lacks more says so (`complete:
/// false`) and the asker pulls again at once. Keeps frames far below the transport's bound.
pub const EVENTS_PER_MESSAGE_MAX: usize = 512;

/// A replication message about one entity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationMessage {
    pub entity_type: String,
    pub entity_id: String,
    pub body: ReplicationBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicationBody {
    /// Events of the entity, in any order. `complete` is false when the sender held more than
    /// it sent in answer to a pull.
    Events {
        events: Vec<EventEnvelope>,
        complete: bool,
    },
    /// Per origin replica, the highest origin sequence number the sender has folded in; the
    /// receiver answers with `Events` the sender lacks.
    Pull { seen: BTreeMap<String, u64> },
}

/// Where a replica's messages to the other replicas go: the cluster transport, addressed by
/// replica name (the hosting node's cluster name). Sending never waits and may lose the message.
pub trait Peers: Send + Sync + 'static {
    fn send(&self, replica: &str, message: ReplicationMessage);
}
