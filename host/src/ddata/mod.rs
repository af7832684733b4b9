//! DistributedData's sans-IO core: a replicated key → CRDT store on every node.
//!
//! - `value`: what is stored ([`DataValue`], [`Entry`] with its tombstone), the client's [`Op`]s,
//!   typed [`Key`]s.
//! - `replicator`: the [`Replicator`] state machine: delta push, anti-entropy with digests, byte
//!   budgets, tombstones, reads and writes at a [`Consistency`] level.
//! - `simulation` (tests only): a deterministic simulator of many replicators on a faulty network,
//!   with its invariant checks and scenarios.
//!
//! - `durable`: durable keys in the node's SQLite file ([`DdataConfig`]).
//! - `service`: [`DistributedData`], the task that drives a node's replicator over the cluster
//!   transport.
//! - `subscribers`: the bounded watches of subscribed keys.
//!
//! `docs/ddata.md` describes the design and the decisions.

mod durable;
mod replicator;
mod service;
#[cfg(test)]
mod simulation;
mod subscribers;
mod value;

pub use durable::DdataConfig;
pub use replicator::{
    Consistency, DELTA_TICK_BYTES_MAX, ENTRY_MESSAGE_BYTES_MAX, GOSSIP_ROUND_BYTES_MAX,
    KEY_BYTES_MAX, MERGED_KEYS_MAX, MESSAGE_BYTES_MAX, PENDING_DELTA_KEYS_MAX, REQUESTS_MAX,
    Replicator, ReplicatorAction, ReplicatorConfig, ReplicatorStats, RequestId, VALUE_BYTES_MAX,
};
pub use service::{
    DdataCallError, DistributedData, PEER_MESSAGES_QUEUED_MAX, PeerMessage, Subscription,
    default_kind, entry_to_json, message_channel,
};
pub use subscribers::SUBSCRIBERS_MAX;
pub use value::{DataType, DataValue, Entry, Key, Kind, Op, Writer, digest};

/// What can go wrong in DistributedData. Each variant says what it did to the state.
#[derive(thiserror::Error, Debug)]
pub enum DdataError {
    /// A write of `requested` kind to a key that holds `stored`. Nothing changed.
    #[error("key {key:?} holds a {stored}, not a {requested}")]
    WrongKind {
        key: String,
        stored: Kind,
        requested: Kind,
    },
    /// An op that the key's kind does not have (`decrement` on a grow-only counter, …). Nothing
    /// changed.
    #[error("a {kind} has no {op:?} operation")]
    UnsupportedOp { kind: Kind, op: &'static str },
    /// The key was deleted; deleted keys cannot be written again. Nothing changed.
    #[error("key {key:?} was deleted")]
    Deleted { key: String },
    /// The write would make the value larger than one message can carry. Nothing changed.
    #[error("the value of {key:?} would take {bytes} bytes, more than the {max} allowed")]
    ValueTooLarge {
        key: String,
        bytes: usize,
        max: usize,
    },
    /// An empty key, or one longer than the limit. Nothing changed.
    #[error("a key must be 1 to {max} bytes long, not {bytes}")]
    InvalidKey { bytes: usize, max: usize },
    /// Clients created as many keys as this node takes; only existing keys can be written (keys
    /// merged from peers are still taken). Nothing changed.
    #[error("{max} keys are already held")]
    TooManyKeys { max: usize },
    /// The node serves as many subscribers as it may. Nothing changed.
    #[error("{max} subscribers are already served")]
    TooManySubscribers { max: usize },
    /// Every slot for `Majority`/`All` requests is taken. Nothing changed.
    #[error("{max} requests are already waiting for acks")]
    TooManyRequests { max: usize },
    /// A message larger than the limit: refused unread (from a peer), or not sent (ours).
    #[error("a message of {bytes} bytes is over the limit of {max}")]
    MessageTooLarge { bytes: usize, max: usize },
    /// A peer's message that does not decode. Dropped; nothing changed.
    #[error("undecodable message: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    /// A message or entry of ours that did not encode. Nothing was sent.
    #[error("could not encode: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
}
