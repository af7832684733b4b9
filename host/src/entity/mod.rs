//! Event-sourced entities: one task per active entity, fed by a bounded mailbox, a batch of
//! commands per turn, its state resident in the plugin and changed only by the plugin's fold.
//!
//! An entity is recovered on its first message (latest snapshot, then events through the
//! replay filter), handles commands in turns, batches the commands queued behind a journal write
//! into the next write, snapshots every N events, and passivates after an idle timeout. A full
//! mailbox is a clear `overloaded` error, never unbounded memory. A single-writer entity writes
//! only while this host holds its lease, and observes otherwise. [`EntitySystem::ask`] is the
//! one entry point, used by the HTTP API, the CLI and (later) other nodes.
//!
//! # Layout
//! - `types`: entity types and what they are bound to (`EntityTypeConfig`).
//! - `error`: [`EntityError`], with stable codes for the API.
//! - `budget`: the node's budget for resident entity state, and which entities to passivate
//!   when it is exceeded.
//! - `actor`: the task of one entity: recovery, turns, batching, snapshots, passivation.
//! - `replicated`: the task of one replica of a replicated entity: its own stream, pushes and
//!   pulls between replicas, lease mode.
//! - `tenure`: the lease side of a single-writer entity: contending, writing with a fencing
//!   token, losing it exactly once.
//! - `listing`: the entities of a type, a page at a time, from the journal's streams.
//! - `notifications`: [`Notification`]s of lease changes, for `GET /notifications`.
//! - `pending`: answers held back until a turn's events are durable, for both actors.
//! - `system`: [`EntitySystem`]: routing commands to actors, spawning and retiring them.

mod actor;
mod budget;
mod error;
mod idempotency;
mod listing;
mod notifications;
mod pending;
mod replicated;
mod system;
mod tenure;
mod types;

pub use budget::{ENTITY_OVERHEAD_BYTES, ResidentBudget};
pub use error::EntityError;
pub use idempotency::{
    CommandOptions, IDEMPOTENCY_KEY_BYTES_MAX, IdempotencyKey, RecentKeys, command_digest,
};
pub use listing::{ENTITY_PAGE_DEFAULT, ENTITY_PAGE_MAX, EntityHead, EntityPage};
pub use notifications::{NOTIFICATIONS_BUFFERED_MAX, Notification, Notifications};
pub use system::{
    CommandReply, EntityState, EntitySystem, ParkedEvent, ReplicaStatus, StopReport, SystemSettings,
};
pub use tenure::lease_name;
pub use types::{
    EntityType, EntityTypeConfig, FIRST_WRITER_WINS, LAST_WRITER_WINS, ReplicationConfig,
    persistence_id, replica_stream,
};
