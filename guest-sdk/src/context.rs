//! What a handler knows about where and when it runs, and the metadata of the events it sees.
//!
//! These mirror the WIT `types` interface with plain Rust types, so handlers and their unit tests
//! never touch generated bindings.

use std::collections::BTreeMap;

/// Whether this replica may persist events for the entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// Commands are handled here and their events persisted.
    #[default]
    Writer,
    /// Another replica holds the write lease; this one only applies events.
    Observer,
}

/// Why a single-writer entity stopped being the writer on this host ([`crate::Entity::on_lease_lost`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaseLost {
    /// The fencing token of the tenure that ended.
    pub fencing_token: u64,
    /// `expired` (no renewal before the local deadline), `taken-over` (the backend answered that
    /// another owner holds it) or `fenced` (a newer holder's token refused a write).
    pub reason: String,
}

/// What the journal recorded about an event, besides its payload.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EventMeta {
    pub persistence_id: String,
    pub seq_nr: u64,
    /// ULID of the host boot that wrote the event.
    pub writer: String,
    pub fencing_token: u64,
    /// Hybrid logical clock timestamp (physical milliseconds << 16 | logical counter).
    pub timestamp: u64,
    pub origin_replica: String,
    pub origin_seq_nr: u64,
    pub version: BTreeMap<String, u64>,
    pub concurrent: bool,
}

/// An event with its metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope<E> {
    pub meta: EventMeta,
    pub event: E,
}

/// The context of one call.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Context {
    pub entity_type: String,
    pub entity_id: String,
    /// The replica (node) running the call.
    pub replica: String,
    /// Every replica of the entity type.
    pub all_replicas: Vec<String>,
    /// The only clock a guest reads: HLC timestamp of the call, the same on replay.
    pub now: u64,
    /// True while the entity is being recovered from its journal.
    pub recovery_running: bool,
    pub role: Role,
    /// Metadata of the event being applied (set in `apply` only).
    pub event: Option<EventMeta>,
}

impl Context {
    /// A context for unit tests: a writer on a single replica `"local"`.
    pub fn for_test(entity_type: &str, entity_id: &str) -> Self {
        Context {
            entity_type: entity_type.to_owned(),
            entity_id: entity_id.to_owned(),
            replica: "local".to_owned(),
            all_replicas: vec!["local".to_owned()],
            ..Context::default()
        }
    }
}
