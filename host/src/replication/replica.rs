//! [`Replica`]: one replica of a replicated entity, sans-IO. It stamps the events its own
//! commands decide on (origin replica, origin sequence number, version vector, HLC timestamp),
//! takes the other replicas' events in any order and any number of times (push), answers what
//! another replica is missing given what it has seen (pull), and snapshots itself so that a
//! restored replica folds on exactly as before.
//!
//! The driver does the I/O: it persists what [`Replica::emit`] returns before pushing it, feeds
//! [`Replica::receive`] with what arrives, and runs pull rounds (`seen` one way,
//! [`Replica::missing_for`] the other) after restarts and partitions.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use ulid::Ulid;

use super::causal_buffer::{CausalBuffer, Offer};
use super::fold::Fold;
use super::merge_log::{MergeLog, order_key};
use crate::journal::EventEnvelope;
use crate::plugin::PluginError;

/// Events a replica holds back for their causal past, at most; beyond it the event is refused
/// and the driver pulls instead (a partition that long is healed by a pull round anyway).
pub const WAITING_EVENTS_MAX: usize = 4_096;

/// What a replica saves to be restored: the base state (everything compacted), and the events
/// after it, which may still be re-folded when a late concurrent event arrives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaSnapshot {
    pub base: Vec<u8>,
    pub events: Vec<EventEnvelope>,
    /// Per origin replica, the highest origin sequence number folded in.
    pub seen: BTreeMap<String, u64>,
    /// The highest HLC timestamp the replica had seen.
    pub clock: u64,
}

pub struct Replica {
    name: String,
    persistence_id: String,
    /// The writer id (host boot) stamped on this replica's events.
    writer: Ulid,
    buffer: CausalBuffer,
    log: MergeLog,
    /// The highest HLC timestamp seen: every own event is stamped above it.
    clock: u64,
}

impl Replica {
    /// A replica with no events yet, starting from `initial` (the plugin's `init`).
    pub fn new(name: &str, persistence_id: &str, writer: Ulid, initial: Vec<u8>) -> Self {
        Replica {
            name: name.to_owned(),
            persistence_id: persistence_id.to_owned(),
            writer,
            buffer: CausalBuffer::new(BTreeMap::new(), WAITING_EVENTS_MAX),
            log: MergeLog::new(initial),
            clock: 0,
        }
    }

    /// A replica restored from `snapshot`: the same state, and it folds on as the saved one would.
    pub fn restore(
        name: &str,
        persistence_id: &str,
        writer: Ulid,
        snapshot: ReplicaSnapshot,
        fold: &impl Fold,
    ) -> Result<Self, PluginError> {
        let mut log = MergeLog::new(snapshot.base);
        for event in snapshot.events {
            log.insert(fold, event)?;
        }
        Ok(Replica {
            name: name.to_owned(),
            persistence_id: persistence_id.to_owned(),
            writer,
            buffer: CausalBuffer::new(snapshot.seen, WAITING_EVENTS_MAX),
            log,
            clock: snapshot.clock,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The state after every event folded so far.
    pub fn state(&self) -> &[u8] {
        self.log.state()
    }

    /// Per origin replica, the highest origin sequence number folded in.
    pub fn seen(&self) -> &BTreeMap<String, u64> {
        self.buffer.delivered()
    }

    /// Events folded in (not yet compacted), in fold order.
    pub fn events(&self) -> impl Iterator<Item = &EventEnvelope> {
        self.log.events()
    }

    /// Events received that still wait for their causal past.
    pub fn waiting(&self) -> usize {
        self.buffer.waiting()
    }

    /// Stamps the payloads a command of this replica decided on, at HLC time `stamp.now` (raised
    /// above everything seen), folds them in, and returns them to persist and push. On a failed
    /// fold nothing changes.
    pub fn emit(
        &mut self,
        fold: &impl Fold,
        payloads: Vec<Vec<u8>>,
        stamp: &Stamp,
    ) -> Result<Vec<EventEnvelope>, PluginError> {
        let mut staged = ReplicaStage {
            seen: self.seen().clone(),
            clock: self.clock,
        };
        let events: Vec<EventEnvelope> = payloads
            .into_iter()
            .map(|payload| staged.stamp(self, stamp, payload))
            .collect();
        self.fold_all(fold, &events)?;
        self.clock = staged.clock;
        for event in &events {
            // Our own events are next in causal order: delivered at once.
            self.buffer.offer(event.clone());
        }
        Ok(events)
    }

    /// Takes an event from another replica (or a duplicate of any); returns how many events were
    /// folded — 0 for a duplicate or one still waiting for its causal past. A fold that fails (the
    /// plugin or the resolver trapped or ran past its bound) returns the error and leaves the
    /// replica as it was: the event still counts as not seen, so a later push or pull offers it
    /// again.
    pub fn receive(
        &mut self,
        fold: &impl Fold,
        event: EventEnvelope,
    ) -> Result<usize, PluginError> {
        let before = self.buffer.clone();
        let timestamp = event.timestamp;
        match self.buffer.offer(event) {
            Offer::Delivered(events) => {
                if let Err(error) = self.fold_all(fold, &events) {
                    self.buffer = before;
                    return Err(error);
                }
                self.clock = self.clock.max(timestamp);
                Ok(events.len())
            }
            Offer::Duplicate | Offer::Buffered | Offer::Overflow => {
                self.clock = self.clock.max(timestamp);
                Ok(0)
            }
        }
    }

    /// The events held here that a replica which has `seen` this much has not, in causal order
    /// per origin: what to send it in a pull round.
    pub fn missing_for(&self, seen: &BTreeMap<String, u64>) -> Vec<EventEnvelope> {
        let mut missing: Vec<EventEnvelope> = self
            .log
            .events()
            .filter(|event| {
                event.origin_seq_nr > seen.get(&event.origin_replica).copied().unwrap_or(0)
            })
            .cloned()
            .collect();
        missing.sort_by(|a, b| order_key(a).cmp(&order_key(b)));
        missing
    }

    /// Folds `events` into the log, all or none: one event is folded atomically by the log
    /// itself; several are folded on a copy, so a failure leaves the log as it was.
    fn fold_all(&mut self, fold: &impl Fold, events: &[EventEnvelope]) -> Result<(), PluginError> {
        match events {
            [event] => self.log.insert(fold, event.clone()).map(drop),
            _ => {
                let mut log = self.log.clone();
                for event in events {
                    log.insert(fold, event.clone())?;
                }
                self.log = log;
                Ok(())
            }
        }
    }

    /// Folds into the base state the events every replica has folded in (`stable`: per origin,
    /// the lowest origin sequence number folded across all replicas). Every later event of any
    /// replica is causally after them, so they can never be re-folded. Returns how many were
    /// compacted.
    pub fn compact(&mut self, stable: &BTreeMap<String, u64>) -> usize {
        self.log.compact(stable)
    }

    pub fn snapshot(&self) -> ReplicaSnapshot {
        ReplicaSnapshot {
            base: self.log.base().to_vec(),
            events: self.log.events().cloned().collect(),
            seen: self.seen().clone(),
            clock: self.clock,
        }
    }
}

/// What a command's events are stamped with besides their payloads.
#[derive(Debug, Clone)]
pub struct Stamp {
    /// The HLC time of the command (raised above everything the replica has seen).
    pub now: u64,
    /// The plugin version that decided on the events.
    pub plugin: String,
    /// The lease fencing token the events are persisted with; 0 without a lease.
    pub fencing_token: u64,
}

/// The version vector and clock while a command's events are stamped, committed only if they
/// all fold.
struct ReplicaStage {
    seen: BTreeMap<String, u64>,
    clock: u64,
}

impl ReplicaStage {
    fn stamp(&mut self, replica: &Replica, stamp: &Stamp, payload: Vec<u8>) -> EventEnvelope {
        let origin_seq_nr = self.seen.get(&replica.name).copied().unwrap_or(0) + 1;
        self.seen.insert(replica.name.clone(), origin_seq_nr);
        self.clock = stamp.now.max(self.clock + 1);
        EventEnvelope {
            persistence_id: replica.persistence_id.clone(),
            seq_nr: origin_seq_nr,
            writer: replica.writer,
            fencing_token: stamp.fencing_token,
            timestamp: self.clock,
            origin_replica: replica.name.clone(),
            origin_seq_nr,
            version: self.seen.clone(),
            concurrent: false,
            plugin: stamp.plugin.clone(),
            payload,
        }
    }
}
