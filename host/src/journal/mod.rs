//! The event journal: the envelopes every backend stores, the [`Journal`] trait they implement and the
//! errors they report.
//!
//! An entity's events form one stream per persistence id (`"<entity type>|<entity id>"`), numbered
//! 1, 2, 3, … without gaps. A write is a conditional, all-or-nothing [`Journal::append`]: it names the
//! highest sequence number the writer has seen and the lease fencing token it holds, and the journal
//! refuses it if the stream moved on ([`JournalError::SeqConflict`]) or a newer lease holder recorded a
//! higher token ([`JournalError::StaleFencingToken`]). Tokens are recorded by a lease holder
//! ([`Journal::record_fence`]) or drawn from the journal itself ([`Journal::advance_fence`]). The unique key `(persistence_id, seq_nr)` of every
//! backend is a second fence behind that check.
//!
//! # Layout
//!
//! - `mod.rs` (this file): [`EventEnvelope`], [`SnapshotEnvelope`], [`StreamHead`],
//!   [`JournalError`], the [`Journal`] trait.
//! - [`rules`]: the checks every backend applies to an append, a fence and a snapshot, so that all
//!   backends accept and refuse exactly the same writes.
//! - [`memory`]: an in-memory backend for tests and single-process experiments.
//! - [`sqlite`]: the embedded default backend (WAL, one writer thread, group commit).
//! - [`postgres`]: the backend a cluster shares (row-locked fences, portable SQL).
//! - [`replay_filter`]: the sans-IO [`ReplayFilter`] recovery runs events through to detect several
//!   hosts writing the same stream.
//! - [`conformance`]: the behaviour every backend must show, as async checks each backend's tests run.
//!
//! The trait is dyn-compatible through `#[async_trait]`: the runtime holds an `Arc<dyn Journal>` and
//! does not know which backend it talks to.

pub mod conformance;
pub mod memory;
pub mod postgres;
pub mod replay_filter;
pub mod rules;
pub mod sqlite;

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use ulid::Ulid;

pub use memory::InMemoryJournal;
pub use postgres::{PostgresJournal, PostgresJournalOptions};
pub use replay_filter::{
    ReplayFilter, ReplayFilterMode, ReplayFilterSettings, UnknownReplayFilterMode, WriterConflict,
};
pub use sqlite::{SqliteJournal, SqliteJournalOptions, SqliteSynchronous};

/// One persisted event with the metadata recovery and replication need.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct EventEnvelope {
    /// The stream the event belongs to: `"<entity type>|<entity id>"`.
    pub persistence_id: String,
    /// Position in the stream: 1-based and gap-free per persistence id.
    pub seq_nr: u64,
    /// Writer id (one ULID per host boot) of the host that wrote the event; the replay filter uses it to
    /// detect two hosts writing the same stream.
    pub writer: Ulid,
    /// Lease fencing token in force when the event was written; 0 when the entity type has no lease.
    pub fencing_token: u64,
    /// Hybrid logical clock timestamp: physical milliseconds `<< 16 | logical counter`.
    pub timestamp: u64,
    /// Replica that originally persisted the event; empty when the entity type is not replicated.
    pub origin_replica: String,
    /// Sequence number of the event in its origin replica's stream.
    pub origin_seq_nr: u64,
    /// Version vector of the event: replica -> counter.
    pub version: BTreeMap<String, u64>,
    /// Whether the event was concurrent with events already applied when it was folded.
    pub concurrent: bool,
    /// Plugin version that produced the event: `"name@<sha256 hex prefix>"`.
    pub plugin: String,
    /// The event itself, MessagePack with named fields.
    pub payload: Vec<u8>,
    /// On the last event of a command sent with an idempotency key: the key, the command's digest
    /// and its reply, so that a retry of the command after a restart or a failover gets that reply
    /// instead of applying the command again (docs/entities.md, "Retrying safely").
    #[serde(default)]
    pub idempotency: Option<IdempotencyRecord>,
}

/// What a keyed command leaves on its last event: enough to recognise a retry and answer it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyRecord {
    /// The client's `Idempotency-Key`, unique per entity within its retention window.
    pub key: String,
    /// SHA-256 of the command's MessagePack bytes: the same key with another command is refused.
    #[serde(with = "serde_bytes")]
    pub digest: Vec<u8>,
    /// The reply the command got (MessagePack), returned again to its retries.
    #[serde(with = "serde_bytes")]
    pub reply: Vec<u8>,
}

impl IdempotencyRecord {
    /// The record as stored in a journal column: MessagePack with named fields.
    pub fn to_column(&self) -> Result<Vec<u8>, JournalError> {
        rmp_serde::to_vec_named(self).map_err(|error| {
            JournalError::InvalidBatch(format!(
                "an idempotency record that does not encode: {error}"
            ))
        })
    }

    /// A record read back from a journal column.
    pub fn from_column(bytes: &[u8]) -> Result<Self, JournalError> {
        rmp_serde::from_slice(bytes).map_err(|error| {
            JournalError::Storage(format!(
                "an idempotency record that does not decode: {error}"
            ))
        })
    }
}

/// An entity's state as of `seq_nr`, so recovery can skip the events up to it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SnapshotEnvelope {
    pub persistence_id: String,
    /// The state includes every event up to and including this sequence number.
    pub seq_nr: u64,
    /// Writer id of the host that took the snapshot.
    pub writer: Ulid,
    /// Version vector of the state: replica -> counter.
    pub version: BTreeMap<String, u64>,
    /// Per replica, the highest origin sequence number already applied (replication dedup).
    pub seen: BTreeMap<String, u64>,
    /// Plugin version that produced the state: `"name@<sha256 hex prefix>"`.
    pub plugin: String,
    /// The state bytes, MessagePack with named fields.
    pub payload: Vec<u8>,
}

/// Why a journal operation failed. Every variant says what happened to the stored data.
#[derive(thiserror::Error, Clone, Debug, PartialEq, Eq)]
pub enum JournalError {
    /// The stream's highest sequence number is not the one the writer expected: another write got there
    /// first. Nothing was written; the writer must re-read the stream before writing again.
    #[error(
        "sequence conflict on {persistence_id}: expected highest seq nr {expected_seq_nr}, \
         the journal has {actual_seq_nr}"
    )]
    SeqConflict {
        persistence_id: String,
        expected_seq_nr: u64,
        actual_seq_nr: u64,
    },
    /// A newer lease holder recorded a higher fencing token for the persistence id. Nothing was written;
    /// the caller has lost the lease and must stop writing.
    #[error(
        "stale fencing token for {persistence_id}: got {token}, the journal has recorded {current}"
    )]
    StaleFencingToken {
        persistence_id: String,
        token: u64,
        current: u64,
    },
    /// The events of an append are not a well-formed batch for the stream (empty, mixed persistence
    /// ids, sequence numbers not consecutive from `expected_seq_nr + 1`, …). Nothing was written; the
    /// caller has a bug.
    #[error("invalid append batch: {0}")]
    InvalidBatch(String),
    /// A number does not fit the signed 64-bit integers SQL backends store. Nothing was written.
    #[error("{field} {value} is out of range: stored integers are at most {max}", max = i64::MAX)]
    ValueOutOfRange { field: &'static str, value: u64 },
    /// The storage gave up on the operation at one of its time bounds (a lock held elsewhere for
    /// longer than the journal waits, a statement that ran too long) and rolled it back: nothing
    /// was written. Retry shortly.
    #[error("journal busy: {0}; retry shortly")]
    Busy(String),
    /// The storage itself failed (I/O, a corrupt or foreign file, a stopped writer). For a write,
    /// nothing was written, unless the failure hid a successful commit (a lost reply): re-read before
    /// retrying.
    #[error("journal storage failed: {0}")]
    Storage(String),
}

/// An event journal backend. Shared as `Arc<dyn Journal>`; every method may be called concurrently.
///
/// A call whose future is dropped before it completes may or may not have taken effect.
#[async_trait]
pub trait Journal: Send + Sync {
    /// Atomically appends `events`, which must carry the sequence numbers `expected_seq_nr + 1 ..` in
    /// order, the persistence id and `fencing_token` — iff the stream's highest sequence number is
    /// `expected_seq_nr` and `fencing_token` is at least the fence recorded for the persistence id.
    /// All or nothing. See [`rules::validate_append`] for what makes a batch well formed.
    async fn append(
        &self,
        persistence_id: &str,
        expected_seq_nr: u64,
        fencing_token: u64,
        events: Vec<EventEnvelope>,
    ) -> Result<(), JournalError>;

    /// Up to `max` events with `seq_nr >= from_seq_nr`, in ascending order. Unknown ids read as empty.
    async fn read(
        &self,
        persistence_id: &str,
        from_seq_nr: u64,
        max: usize,
    ) -> Result<Vec<EventEnvelope>, JournalError>;

    /// The highest sequence number of the stream; 0 when it has no events.
    async fn highest_seq_nr(&self, persistence_id: &str) -> Result<u64, JournalError>;

    /// Stores `snapshot` unless a snapshot with a higher `seq_nr` is already stored for its persistence
    /// id: only the latest is kept. A snapshot at the same `seq_nr` replaces the stored one.
    async fn save_snapshot(&self, snapshot: SnapshotEnvelope) -> Result<(), JournalError>;

    /// The stored snapshot of the persistence id, if any.
    async fn latest_snapshot(
        &self,
        persistence_id: &str,
    ) -> Result<Option<SnapshotEnvelope>, JournalError>;

    /// Records a lease fencing token for the persistence id: from then on appends carrying a lower
    /// token fail. Fails with [`JournalError::StaleFencingToken`] if a higher token is recorded;
    /// recording the recorded token again succeeds and changes nothing.
    async fn record_fence(
        &self,
        persistence_id: &str,
        fencing_token: u64,
    ) -> Result<(), JournalError>;

    /// Atomically raises the fence of the persistence id to one above the recorded token (0 when
    /// none is) and returns the new token: from then on appends carrying a lower token fail.
    /// Concurrent calls never return the same token. Placed entities of a cluster take one per
    /// activation, so that an older activation's appends fail once a newer one started.
    ///
    /// The tokens come from the same counter as [`Journal::record_fence`]'s: a lease token
    /// recorded afterwards must be at least the advanced one, or it is refused as stale.
    async fn advance_fence(&self, persistence_id: &str) -> Result<u64, JournalError>;

    /// The fencing token recorded for the persistence id; 0 when none is.
    async fn fence(&self, persistence_id: &str) -> Result<u64, JournalError>;

    /// Every persistence id with at least one event, in ascending order.
    async fn persistence_ids(&self) -> Result<Vec<String>, JournalError>;

    /// The streams whose persistence id is in `from..until` (inclusive, exclusive; compared byte
    /// by byte) and that hold events or a snapshot, in ascending byte order, at most `max`; each
    /// with its highest seq nr, the higher of its last event's and its snapshot's. Entity listings
    /// page through an entity type's streams with it (`"<type>|"..` `"<type>}"`).
    async fn stream_heads(
        &self,
        from: &str,
        until: &str,
        max: usize,
    ) -> Result<Vec<StreamHead>, JournalError>;
}

/// A stream as [`Journal::stream_heads`] lists it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct StreamHead {
    pub persistence_id: String,
    /// The highest seq nr of its events or its snapshot.
    pub seq_nr: u64,
}
