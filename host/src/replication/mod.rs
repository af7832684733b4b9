//! Replicated event sourcing, the sans-IO core: how a replica turns events from every replica,
//! arriving in any order, into the same state as every other replica.
//!
//! Each replica of an entity persists its own events and receives the others'. Every event
//! carries its origin replica, its sequence number there, its version vector and its HLC
//! timestamp. Two steps make replicas converge for any deterministic `apply-event`:
//!
//! 1. [`CausalBuffer`] drops duplicates (`origin_seq_nr <= seen[origin]`) and holds an event
//!    back until its causal past has been delivered.
//! 2. [`MergeLog`] folds the delivered events in one total order that every replica computes
//!    the same way: HLC timestamp, then origin replica, then origin sequence number. HLC
//!    timestamps respect causality (an event's timestamp exceeds every timestamp its replica
//!    had seen), so this order is a linear extension of the causal order. An event that
//!    arrives late and sorts before events already folded makes the log rewind to a cached
//!    state before it and fold again. When the event being folded is concurrent with events
//!    already applied, the entity type's [`Resolver`] decides: keep it, drop it, or replace it.
//!
//! [`Replica`] puts both behind one replica's interface: it stamps its own events, takes the
//! others' (push) and answers what another replica misses (pull), and snapshots itself.
//! Nothing here does I/O or reads a clock. The driver is the replicated entity's actor
//! (`entity::replicated`): it persists a replica's own events to its own journal stream, pushes
//! them to the other replicas over the cluster transport, and pulls what it lacks after restarts
//! and partitions, with the messages of `wire`.
//!
//! # Layout
//! - `causal_buffer`: [`CausalBuffer`], dedup and causal delivery.
//! - `merge_log`: [`MergeLog`], the total order, checkpoints, re-folding, compaction.
//! - `replica`: [`Replica`], one replica's events, push, pull and snapshots.
//! - `wire`: [`ReplicationMessage`]s between replicas and the [`Peers`] they are sent through.
//! - `fold`: the [`Fold`] a merge log folds with — a plugin's `apply-event` plus a [`Resolver`]
//!   (last-writer-wins, first-writer-wins, or a resolver plugin).

mod causal_buffer;
mod fold;
mod merge_log;
mod replica;
mod wire;

pub use causal_buffer::{CausalBuffer, Offer};
pub use fold::{
    CONFIG_EVENT, FIRST_WRITER_WINS, Fold, FoldConfig, LAST_WRITER_WINS, PluginFold, Resolution,
    Resolver,
};
pub use merge_log::{MergeLog, order_key};
pub use replica::{Replica, ReplicaSnapshot, Stamp, WAITING_EVENTS_MAX};
pub use wire::{EVENTS_PER_MESSAGE_MAX, Peers, ReplicationBody, ReplicationMessage};
