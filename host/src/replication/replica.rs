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
use super::merge_log::{MergeLog, Position, order_key};
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
    /// The configuration in effect at the base (the last configuration event compacted).
    #[serde(default)]
    pub base_config: Option<Vec<u8>>,
    pub events: Vec<EventEnvelope>,
    /// Compacted events that `events` may be concurrent with (a re-fold still counts them).
    #[serde(default)]
    pub settled: Vec<EventEnvelope>,
    /// Per origin replica, the highest origin sequence number folded in.
    pub seen: BTreeMap<String, u64>,
    /// The highest HLC timestamp the replica had seen.
    pub clock: u64,
    /// Per origin replica, the version vector of the latest event delivered from it (what that
    /// replica had seen when it wrote it): what compaction may rely on. Absent from snapshots
    /// saved before it existed; it fills again as events arrive.
    #[serde(default)]
    pub latest: BTreeMap<String, BTreeMap<String, u64>>,
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
    /// Per origin replica, the version vector of the latest event delivered from it.
    latest: BTreeMap<String, BTreeMap<String, u64>>,
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
            latest: BTreeMap::new(),
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
        let base = Position {
            state: snapshot.base,
            config: snapshot.base_config,
        };
        let mut log = MergeLog::restored(base, snapshot.settled);
        let mut latest = snapshot.latest;
        for event in snapshot.events {
            note_latest(&mut latest, &event);
            log.insert(fold, event)?;
        }
        Ok(Replica {
            name: name.to_owned(),
            persistence_id: persistence_id.to_owned(),
            writer,
            buffer: CausalBuffer::new(snapshot.seen, WAITING_EVENTS_MAX),
            log,
            clock: snapshot.clock,
            latest,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The state after every event folded so far.
    pub fn state(&self) -> &[u8] {
        self.log.state()
    }

    /// The configuration in effect after every event folded (a configuration event's payload;
    /// `None`: the entity type's).
    pub fn config(&self) -> Option<&[u8]> {
        self.log.config()
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
            [event] => self.log.insert(fold, event.clone()).map(drop)?,
            _ => {
                let mut log = self.log.clone();
                for event in events {
                    log.insert(fold, event.clone())?;
                }
                self.log = log;
            }
        }
        for event in events {
            note_latest(&mut self.latest, event);
        }
        Ok(())
    }

    /// Folds into the base state the events that are causally stable here, and returns how many.
    ///
    /// An event `e` is stable when no event concurrent with it can still arrive: for every
    /// replica `r` of `replicas`, this replica has delivered an event of `r` whose version
    /// vector covers `e` (then every event `r` wrote before seeing `e` has been delivered too —
    /// delivery is causal — and everything `r` writes later is causally after `e`). `reports`
    /// (per replica, the seen-vector it last sent in a pull) stand in for an event of a replica
    /// that writes rarely: a report counts once every event its sender had written when it sent
    /// it has been delivered here, and it is trusted not to shrink (a replica's recovery folds
    /// everything it had folded before). This replica's own future events follow everything
    /// delivered. The merge log then compacts only a prefix that every event held after it
    /// causally follows (`MergeLog::compact`).
    pub fn compact(
        &mut self,
        replicas: &[String],
        reports: &BTreeMap<String, BTreeMap<String, u64>>,
    ) -> usize {
        let seen = self.seen();
        let mut stable = seen.clone();
        for replica in replicas.iter().filter(|replica| **replica != self.name) {
            let mut covered = self.latest.get(replica).cloned().unwrap_or_default();
            if let Some(report) = reports.get(replica) {
                let count = |vector: &BTreeMap<String, u64>| vector.get(replica).copied();
                if count(report).unwrap_or(0) <= count(seen).unwrap_or(0) {
                    join_into(&mut covered, report);
                }
            }
            stable = meet(&stable, &covered);
        }
        self.log.compact(&stable)
    }

    pub fn snapshot(&self) -> ReplicaSnapshot {
        ReplicaSnapshot {
            base: self.log.base().state.clone(),
            base_config: self.log.base().config.clone(),
            events: self.log.events().cloned().collect(),
            settled: self.log.settled().to_vec(),
            seen: self.seen().clone(),
            clock: self.clock,
            latest: self.latest.clone(),
        }
    }
}

/// Records `event` as the latest delivered from its origin unless a later one is recorded (the
/// events of one origin are causally ordered, so the latest covers the others).
fn note_latest(latest: &mut BTreeMap<String, BTreeMap<String, u64>>, event: &EventEnvelope) {
    let origin = &event.origin_replica;
    let recorded = latest
        .get(origin)
        .and_then(|version| version.get(origin))
        .copied()
        .unwrap_or(0);
    if event.origin_seq_nr > recorded {
        latest.insert(origin.clone(), event.version.clone());
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
            idempotency: None,
        }
    }
}

/// The pointwise maximum of `into` and `version`, into `into`.
fn join_into(into: &mut BTreeMap<String, u64>, version: &BTreeMap<String, u64>) {
    for (replica, counter) in version {
        let entry = into.entry(replica.clone()).or_default();
        *entry = (*entry).max(*counter);
    }
}

/// The pointwise minimum of two version vectors (a replica missing from one counts 0).
fn meet(a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    a.iter()
        .map(|(replica, counter)| {
            let other = b.get(replica).copied().unwrap_or(0);
            (replica.clone(), (*counter).min(other))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::Resolution;

    /// Appends payloads; keeps every concurrent event.
    struct Append;

    impl Fold for Append {
        fn apply(&self, state: &[u8], event: &EventEnvelope) -> Result<Vec<u8>, PluginError> {
            Ok([state, &event.payload].concat())
        }

        fn resolve(
            &self,
            _: &[u8],
            _: &EventEnvelope,
            _: &[&EventEnvelope],
        ) -> Result<Resolution, PluginError> {
            Ok(Resolution::Keep)
        }
    }

    fn stamp(now: u64) -> Stamp {
        Stamp {
            now,
            plugin: "append@1".into(),
            fencing_token: 0,
        }
    }

    fn replicas() -> Vec<String> {
        vec!["a".into(), "b".into()]
    }

    /// `a` writes a full checkpoint interval and one more; `b` saw all of it.
    fn written_at_a(a: &mut Replica) -> BTreeMap<String, u64> {
        for now in 1..=(super::super::merge_log::CHECKPOINT_EVERY as u64 + 1) {
            a.emit(&Append, vec![b"x".to_vec()], &stamp(now)).unwrap();
        }
        a.seen().clone()
    }

    #[test]
    fn a_report_counts_only_once_the_reporters_own_events_arrived() {
        let mut a = Replica::new("a", "t|1", Ulid::nil(), Vec::new());
        let mut b = Replica::new("b", "t|1", Ulid::nil(), Vec::new());
        let seen_at_a = written_at_a(&mut a);
        // b wrote b1 before it saw a's events, then reported having seen everything.
        let b1 = b.emit(&Append, vec![b"y".to_vec()], &stamp(500)).unwrap();
        let mut report = seen_at_a.clone();
        report.insert("b".into(), 1);
        let reports = [("b".to_string(), report)].into();
        assert_eq!(a.compact(&replicas(), &reports), 0, "b1 may still arrive");
        a.receive(&Append, b1[0].clone()).unwrap();
        let state = a.state().to_vec();
        assert!(
            a.compact(&replicas(), &reports) > 0,
            "b1 arrived: nothing else can"
        );
        assert_eq!(a.state(), state);
    }
}
