//! The [`Replicator`]: one node's sans-IO DistributedData store. It owns the key → [`Entry`] map,
//! the replication protocol (delta push, anti-entropy with digests), tombstones, and the
//! bookkeeping of reads and writes at a [`Consistency`] level. It turns inputs (client calls, peer
//! messages, ticks, membership changes), each with the time, into [`ReplicatorAction`]s.
//!
//! # Driving it
//!
//! After every input, drain [`Replicator::drain_actions`] and carry them out in order: send the
//! messages, tell subscribers about changed keys, answer the pending client calls. Call
//! [`Replicator::tick`] every few hundred milliseconds (each call flushes the pending deltas; every
//! [`ReplicatorConfig::gossip_interval_ms`] it also runs an anti-entropy round) and
//! [`Replicator::members_changed`] whenever the live members change.
//!
//! `Majority` and `All` are counted over the *membership*: every node this replicator was told
//! of ([`Replicator::add_members`], and every node that was ever live), reachable or not. A node
//! cut off from the others therefore cannot satisfy a quorum by itself, and any two majorities
//! share a node. Gossip and deltas go to the live members only; requests go to every member.
//!
//! [`ReplicatorAction::Changed`] comes out for every change of a key, local or merged from a peer.
//! Coalescing them per subscriber notify interval (a subscriber wants the latest value, not every
//! step) is the driver's job: it keeps the latest entry per key and flushes on its own timer.
//!
//! Time is milliseconds on the node's wall clock (`now_ms`), used for deadlines, the gossip timer
//! and the hybrid logical clock that stamps last-writer-wins registers. Nothing here reads a
//! clock, draws random numbers or does I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use serde::{Deserialize, Serialize};
use weft_crdt::{Hlc, ManualClock, ReplicaId};

use super::DdataError;
use super::value::{DataType, DataValue, Entry, Key, Kind, Op, Writer, digest};
use crate::cluster::identity::NodeName;

/// Largest message sent or accepted, in bytes. A quarter of the cluster transport's 4 MiB frame
/// limit leaves room for the frame envelope; at 100 Mbit/s it holds a connection for about 40 ms,
/// short enough not to delay the cluster's other traffic noticeably. A 10,000-element OR-Set of
/// short strings (about 200 KB, see `docs/ddata.md`) fits in one.
pub const MESSAGE_BYTES_MAX: usize = 512 * 1024;

/// Largest key name, in bytes: keys are names chosen by programs, not data, and digests repeat
/// them in every anti-entropy round.
pub const KEY_BYTES_MAX: usize = 256;

/// Largest encoded value a local write may grow a key to. A value of that size fits in one message
/// with its key and the message envelope (a few dozen bytes; 4 KiB is a generous margin). The
/// limit applies to local writes only, never to merges: values that each side of a partition
/// grew to the limit merge into a larger one, which stays readable, shrinkable and replicated
/// (alone in a message of up to [`ENTRY_MESSAGE_BYTES_MAX`]).
pub const VALUE_BYTES_MAX: usize = MESSAGE_BYTES_MAX - 4 * 1024;

/// Largest message carrying one entry too large to share a message: a merged value past
/// [`VALUE_BYTES_MAX`]. The transport's frame limit less a margin for its envelope: a value merged
/// from up to 8 partition sides that each grew it to the limit still replicates.
pub const ENTRY_MESSAGE_BYTES_MAX: usize = crate::cluster::transport::FRAME_BYTES_MAX - 64 * 1024;

/// Bytes of anti-entropy traffic (digests sent, full states sent in reply to digests and pulls)
/// one node sends per gossip round. Two messages' worth: one full message of digests or states and
/// room to answer a peer. At one round per second that caps repair traffic at about 8 Mbit/s per
/// node; a larger divergence is repaired over several rounds.
pub const GOSSIP_ROUND_BYTES_MAX: usize = 2 * MESSAGE_BYTES_MAX;

/// Bytes of deltas sent to each peer per tick. One message's worth: deltas are small (one op each),
/// so this is only reached by a burst of writes, whose remaining deltas wait for the next tick.
pub const DELTA_TICK_BYTES_MAX: usize = MESSAGE_BYTES_MAX;

/// Keys with a delta waiting to be pushed. Past this a new delta is not queued: anti-entropy
/// delivers the change instead, a round or two later. 4096 keys of small deltas is a few MB.
pub const PENDING_DELTA_KEYS_MAX: usize = 4096;

/// Reads and writes at `Majority` or `All` waiting for acks. Each costs a key name and a set of
/// node names; a client that starts more gets [`DdataError::TooManyRequests`].
pub const REQUESTS_MAX: usize = 1024;

/// Keys a client may create on one node, tombstones included. Every key costs memory for as long
/// as the node runs and a digest in every anti-entropy cycle; 100,000 keys of small values is a
/// few hundred MB at most and one full digest cycle of about 40 rounds. The limit applies to local
/// writes only: keys merged from peers are always kept (up to [`MERGED_KEYS_MAX`]), so the two
/// sides of a partition that each created keys up to the limit still converge to the same keys.
pub const KEYS_MAX: usize = 100_000;

/// Keys held at most, counting those merged from peers: a bound against a runaway peer, four
/// times [`KEYS_MAX`] (reached only if four partitioned sides each filled the store separately).
/// Entries for new keys past it are ignored, counted, and not acked.
pub const MERGED_KEYS_MAX: usize = 4 * KEYS_MAX;

/// How far ahead of our clock a peer's register timestamp may be and still advance our hybrid
/// logical clock (a minute: well above NTP-synced skew, small enough that one broken clock cannot
/// push every node's timestamps far into the future).
const HLC_DRIFT_MS_MAX: u64 = 60_000;

/// What a message's envelope costs on top of its entries, at most, in bytes (enum tag, array
/// headers, a request id). Used to pack messages without encoding them twice.
const ENVELOPE_BYTES: usize = 64;

/// How a replicator runs. [`ReplicatorConfig::default`] uses the constants above; tests shrink the
/// budgets to exercise them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicatorConfig {
    /// How often an anti-entropy round runs. Default 1 s: a node that missed a delta catches up
    /// within a few seconds, at the cost of one digest message per second.
    pub gossip_interval_ms: u64,
    /// How often a `Majority`/`All` request is resent to the peers that have not acked it.
    /// Default 200 ms: a few tries fit in a typical 1–5 s deadline.
    pub resend_interval_ms: u64,
    pub message_bytes_max: usize,
    pub entry_message_bytes_max: usize,
    pub value_bytes_max: usize,
    pub gossip_round_bytes_max: usize,
    pub delta_tick_bytes_max: usize,
    pub pending_delta_keys_max: usize,
    pub requests_max: usize,
    pub keys_max: usize,
    pub merged_keys_max: usize,
}

impl Default for ReplicatorConfig {
    fn default() -> Self {
        Self {
            gossip_interval_ms: 1_000,
            resend_interval_ms: 200,
            message_bytes_max: MESSAGE_BYTES_MAX,
            entry_message_bytes_max: ENTRY_MESSAGE_BYTES_MAX,
            value_bytes_max: VALUE_BYTES_MAX,
            gossip_round_bytes_max: GOSSIP_ROUND_BYTES_MAX,
            delta_tick_bytes_max: DELTA_TICK_BYTES_MAX,
            pending_delta_keys_max: PENDING_DELTA_KEYS_MAX,
            requests_max: REQUESTS_MAX,
            keys_max: KEYS_MAX,
            merged_keys_max: MERGED_KEYS_MAX,
        }
    }
}

/// How many replicas must have a write, or answer a read, before it is done.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    /// This node only: done at once.
    Local,
    /// More than half of the members (reachable or not), this node included.
    Majority,
    /// Every member, unreachable ones included.
    All,
}

impl Consistency {
    /// Replicas needed out of `members` (this node included, so `members >= 1`).
    pub fn needed(self, members: usize) -> usize {
        match self {
            Consistency::Local => 1,
            Consistency::Majority => members / 2 + 1,
            Consistency::All => members,
        }
    }
}

/// Names one read or write call; its outcome comes out as an action with the same id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId(pub u64);

/// What the replicator asks its driver to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicatorAction {
    /// Send `bytes` to the peer `to` (a fire-and-forget message; losing it is fine).
    Send { to: NodeName, bytes: Vec<u8> },
    /// `key` now holds `entry` (for subscribers).
    Changed { key: String, entry: Entry },
    /// The write (update or delete) `request` reached its consistency level.
    WriteDone { request: RequestId },
    /// The write `request` was refused: a replica answered that `key` is deleted. The write is
    /// lost to the tombstone everywhere, so it is not acknowledged.
    WriteRefused { request: RequestId, key: String },
    /// The read `request` reached its consistency level: `entry` is the join of what the replicas
    /// that answered held (`None`: no replica knew the key).
    ReadDone {
        request: RequestId,
        key: String,
        entry: Option<Entry>,
    },
    /// The deadline of `request` passed with `acks` of the `needed` replicas (this node counts as
    /// one). A timed-out write is still applied locally and still spreads by gossip.
    TimedOut {
        request: RequestId,
        acks: usize,
        needed: usize,
    },
}

/// Counters of what this replicator did, for metrics and reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplicatorStats {
    pub messages_sent: u64,
    pub bytes_sent: u64,
    /// Anti-entropy rounds run.
    pub gossip_rounds: u64,
    /// Entries that alone exceed `message_bytes_max` (only a merge of near-limit values can
    /// produce one): sent alone in a message of up to `entry_message_bytes_max`, or, past that,
    /// not sent at all.
    pub entries_oversized: u64,
    /// Deltas not queued because `pending_delta_keys_max` keys were waiting.
    pub deltas_dropped: u64,
    /// Entries from peers for new keys, ignored because `merged_keys_max` keys are held.
    pub keys_refused: u64,
}

/// The wire protocol between replicators, encoded with rmp-serde.
#[derive(Debug, Serialize, Deserialize)]
enum Message {
    /// Eager push of recent changes.
    Deltas { entries: Vec<(String, Entry)> },
    /// Anti-entropy: the sender's digests of every key it holds in `(after, through]` (`None`:
    /// unbounded on that side).
    Digests {
        after: Option<String>,
        through: Option<String>,
        digests: Vec<(String, u64)>,
    },
    /// Anti-entropy: send me your full state of these keys.
    Pull { keys: Vec<String> },
    /// Full states, in reply to digests or a pull.
    Entries { entries: Vec<(String, Entry)> },
    /// A write at `Majority`/`All`: merge `entry` and ack.
    Write {
        request: RequestId,
        key: String,
        entry: Entry,
    },
    /// `deleted`: the key is deleted here, so a value written to it is lost.
    WriteAck { request: RequestId, deleted: bool },
    /// A read at `Majority`/`All`: answer with your entry.
    Read { request: RequestId, key: String },
    ReadReply {
        request: RequestId,
        key: String,
        entry: Option<Entry>,
    },
}

/// An entry with its digest and encoded size, kept up to date on every change.
#[derive(Clone, Debug)]
struct Stored {
    entry: Entry,
    digest: u64,
    bytes: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RequestKind {
    /// An update: refused if a replica answers that the key is deleted.
    Write,
    Delete,
    Read,
}

#[derive(Clone, Debug)]
struct Pending {
    kind: RequestKind,
    key: String,
    needed: usize,
    /// Replicas that acked, this node included.
    acks: usize,
    /// Members asked and not yet answered (every member when the request started, reachable or
    /// not).
    waiting: BTreeSet<NodeName>,
    deadline_ms: u64,
    resend_at_ms: u64,
}

/// One node's DistributedData state machine; see the module doc.
pub struct Replicator {
    node: NodeName,
    replica: ReplicaId,
    config: ReplicatorConfig,
    hlc: Hlc<ManualClock>,
    /// The live members other than this node: gossip and deltas go to them.
    peers: BTreeSet<NodeName>,
    /// Every member other than this node, live or not: `Majority` and `All` are counted over
    /// them, so a node that lost sight of the others cannot reach a quorum alone.
    members: BTreeSet<NodeName>,
    entries: BTreeMap<String, Stored>,
    /// Changes not pushed yet, joined per key.
    pending_deltas: BTreeMap<String, Entry>,
    requests: BTreeMap<RequestId, Pending>,
    next_request: u64,
    gossip_at_ms: Option<u64>,
    /// The peer the last anti-entropy round went to; rounds go round-robin over the peers.
    gossip_peer: Option<NodeName>,
    /// The last key the previous digest message covered (`None`: start from the first key).
    digest_cursor: Option<String>,
    round_bytes_left: usize,
    actions: Vec<ReplicatorAction>,
    stats: ReplicatorStats,
}

impl Replicator {
    /// A replicator for `node`, writing as `replica` (one id per incarnation of the node, see
    /// [`ReplicaId`]), knowing no peer yet.
    pub fn new(node: NodeName, replica: ReplicaId, config: ReplicatorConfig, now_ms: u64) -> Self {
        let round_bytes_left = config.gossip_round_bytes_max;
        Self {
            node,
            replica,
            config,
            hlc: Hlc::new(ManualClock::new(now_ms), HLC_DRIFT_MS_MAX),
            peers: BTreeSet::new(),
            members: BTreeSet::new(),
            entries: BTreeMap::new(),
            pending_deltas: BTreeMap::new(),
            requests: BTreeMap::new(),
            // Ids start from the boot time, shifted: a restarted node's ids are above every id its
            // previous run used (that would take 2^20 requests per millisecond of uptime), so a
            // late ack for a request of the previous run cannot count for one of this run.
            next_request: now_ms << 20,
            gossip_at_ms: None,
            gossip_peer: None,
            digest_cursor: None,
            round_bytes_left,
            actions: Vec::new(),
            stats: ReplicatorStats::default(),
        }
    }

    pub fn node(&self) -> &NodeName {
        &self.node
    }

    pub fn stats(&self) -> ReplicatorStats {
        self.stats
    }

    /// The entry this node holds for `key`, without asking anyone.
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.get(key).map(|stored| &stored.entry)
    }

    /// The typed value this node holds for `key`: `Ok(None)` if the key is unknown here.
    pub fn get_typed<T: DataType>(&self, key: &Key<T>) -> Result<Option<&T>, DdataError> {
        match self.get(key.name()) {
            None => Ok(None),
            Some(Entry::Deleted) => Err(DdataError::Deleted {
                key: key.name().to_owned(),
            }),
            Some(Entry::Value(value)) => {
                T::from_value(value)
                    .map(Some)
                    .ok_or_else(|| DdataError::WrongKind {
                        key: key.name().to_owned(),
                        stored: value.kind(),
                        requested: T::KIND,
                    })
            }
        }
    }

    /// The keys this node holds, tombstones included, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Applies `op` to `key` (created as `kind` if new), then replicates it at `consistency`:
    /// [`ReplicatorAction::WriteDone`] or [`ReplicatorAction::TimedOut`] follows, at once for
    /// `Local`. On error nothing changed.
    pub fn update(
        &mut self,
        key: &str,
        kind: Kind,
        op: &Op,
        consistency: Consistency,
        deadline_ms: u64,
        now_ms: u64,
    ) -> Result<RequestId, DdataError> {
        self.check_capacity(consistency)?;
        self.write_local(key, kind, now_ms, |value, writer| value.apply(op, writer))?;
        Ok(self.start_request(RequestKind::Write, key, consistency, deadline_ms, now_ms))
    }

    /// Typed [`Replicator::update`]: `mutate` changes the CRDT with one of its mutators and returns
    /// the delta that mutator returned.
    pub fn update_typed<T: DataType>(
        &mut self,
        key: &Key<T>,
        consistency: Consistency,
        deadline_ms: u64,
        now_ms: u64,
        mutate: impl FnOnce(&mut T, &Writer<'_>) -> T,
    ) -> Result<RequestId, DdataError> {
        self.check_capacity(consistency)?;
        self.write_local(key.name(), T::KIND, now_ms, |value, writer| {
            let stored = value.kind();
            let crdt = T::from_value_mut(value).ok_or(DdataError::WrongKind {
                key: key.name().to_owned(),
                stored,
                requested: T::KIND,
            })?;
            Ok(mutate(crdt, writer).into_value())
        })?;
        Ok(self.start_request(
            RequestKind::Write,
            key.name(),
            consistency,
            deadline_ms,
            now_ms,
        ))
    }

    /// Deletes `key` for good: its tombstone replaces any value, on every node it reaches, and the
    /// key cannot be written again. Replicated like an update.
    pub fn delete(
        &mut self,
        key: &str,
        consistency: Consistency,
        deadline_ms: u64,
        now_ms: u64,
    ) -> Result<RequestId, DdataError> {
        check_key(key)?;
        self.check_capacity(consistency)?;
        self.check_room_for(key)?;
        self.hlc.clock_mut().set_ms(now_ms);
        self.set_entry(key, Entry::Deleted)?;
        self.queue_delta(key, Entry::Deleted);
        Ok(self.start_request(RequestKind::Delete, key, consistency, deadline_ms, now_ms))
    }

    /// Reads `key` at `consistency`: [`ReplicatorAction::ReadDone`] (at once for `Local`) or
    /// [`ReplicatorAction::TimedOut`] follows. What the peers answer is merged into this node.
    pub fn read(
        &mut self,
        key: &str,
        consistency: Consistency,
        deadline_ms: u64,
        now_ms: u64,
    ) -> Result<RequestId, DdataError> {
        check_key(key)?;
        self.check_capacity(consistency)?;
        Ok(self.start_request(RequestKind::Read, key, consistency, deadline_ms, now_ms))
    }

    /// The live members changed to `peers` (this node among them or not). Every one of them also
    /// joins the membership quorums are counted over; a member that is no longer live stays in
    /// it. Requests already started keep the member count they started with.
    pub fn members_changed(&mut self, peers: impl IntoIterator<Item = NodeName>) {
        self.peers = peers
            .into_iter()
            .filter(|peer| *peer != self.node)
            .collect();
        self.members.extend(self.peers.iter().cloned());
    }

    /// Adds `names` (this node among them or not) to the membership quorums are counted over,
    /// live or not: the cluster's configured nodes, known before any of them is seen.
    pub fn add_members(&mut self, names: impl IntoIterator<Item = NodeName>) {
        let node = self.node.clone();
        self.members
            .extend(names.into_iter().filter(|name| *name != node));
    }

    /// Merges `entry` into `key` as if a peer had sent it (a durable key reloaded from this node's
    /// store at start-up). Announces the change; replication picks it up through anti-entropy.
    pub fn load(&mut self, key: &str, entry: &Entry) -> Result<(), DdataError> {
        check_key(key)?;
        self.merge_remote(key, entry)
    }

    /// Advances time: pushes pending deltas, runs an anti-entropy round when one is due, resends
    /// unanswered requests and times out those past their deadline.
    pub fn tick(&mut self, now_ms: u64) {
        self.hlc.clock_mut().set_ms(now_ms);
        self.flush_deltas();
        let due = self.gossip_at_ms.is_none_or(|at| now_ms >= at);
        if due {
            self.gossip_at_ms = Some(now_ms.saturating_add(self.config.gossip_interval_ms));
            self.gossip_round();
        }
        self.advance_requests(now_ms);
    }

    /// Takes in a message from the peer `from`. A message that is too large, does not decode or
    /// names an over-long key is refused with an error and changes nothing.
    pub fn handle_message(
        &mut self,
        from: &NodeName,
        bytes: &[u8],
        now_ms: u64,
    ) -> Result<(), DdataError> {
        if bytes.len() > self.config.entry_message_bytes_max {
            return Err(DdataError::MessageTooLarge {
                bytes: bytes.len(),
                max: self.config.entry_message_bytes_max,
            });
        }
        let message: Message = rmp_serde::from_slice(bytes)?;
        check_message_keys(&message)?;
        self.hlc.clock_mut().set_ms(now_ms);
        match message {
            Message::Deltas { entries } | Message::Entries { entries } => {
                for (key, entry) in entries {
                    self.merge_remote(&key, &entry)?;
                }
            }
            Message::Digests {
                after,
                through,
                digests,
            } => self.answer_digests(from, after, through, digests)?,
            Message::Pull { keys } => {
                self.send_entries(from, keys.iter().map(String::as_str))?;
            }
            Message::Write {
                request,
                key,
                entry,
            } => {
                // Only a key this node holds is acked: a new key past the limit is not kept.
                self.merge_remote(&key, &entry)?;
                let deleted = match self.get(&key) {
                    Some(held) => held.is_deleted(),
                    None => return Ok(()),
                };
                self.send(from, &Message::WriteAck { request, deleted })?;
            }
            Message::WriteAck { request, deleted } => self.write_acked(request, from, deleted),
            Message::Read { request, key } => {
                let entry = self.get(&key).cloned();
                self.send(
                    from,
                    &Message::ReadReply {
                        request,
                        key,
                        entry,
                    },
                )?;
            }
            Message::ReadReply {
                request,
                key,
                entry,
            } => {
                let expected = self
                    .requests
                    .get(&request)
                    .is_some_and(|pending| pending.kind == RequestKind::Read && pending.key == key);
                if expected {
                    if let Some(entry) = entry {
                        self.merge_remote(&key, &entry)?;
                    }
                    self.acked(request, from);
                }
            }
        }
        Ok(())
    }

    /// The actions queued by the inputs so far, in order.
    pub fn drain_actions(&mut self) -> std::vec::Drain<'_, ReplicatorAction> {
        self.actions.drain(..)
    }

    fn write_local(
        &mut self,
        key: &str,
        kind: Kind,
        now_ms: u64,
        change: impl FnOnce(&mut DataValue, &Writer<'_>) -> Result<DataValue, DdataError>,
    ) -> Result<(), DdataError> {
        check_key(key)?;
        self.check_room_for(key)?;
        let mut value = match self.get(key) {
            None => DataValue::empty(kind),
            Some(Entry::Deleted) => {
                return Err(DdataError::Deleted {
                    key: key.to_owned(),
                });
            }
            Some(Entry::Value(value)) if value.kind() != kind => {
                return Err(DdataError::WrongKind {
                    key: key.to_owned(),
                    stored: value.kind(),
                    requested: kind,
                });
            }
            Some(Entry::Value(value)) => value.clone(),
        };
        self.hlc.clock_mut().set_ms(now_ms);
        let writer = Writer {
            replica: &self.replica,
            timestamp: self.hlc.now(),
        };
        let delta = change(&mut value, &writer)?;
        let encoded = encode(&Entry::Value(value.clone()))?;
        // Only growth past the limit is refused: a merged value already over it still takes
        // writes that do not grow it (removes).
        let before = self.entries.get(key).map_or(0, |stored| stored.bytes);
        if encoded.len() > self.config.value_bytes_max && encoded.len() > before {
            return Err(DdataError::ValueTooLarge {
                key: key.to_owned(),
                bytes: encoded.len(),
                max: self.config.value_bytes_max,
            });
        }
        self.store(key, Entry::Value(value), &encoded);
        self.queue_delta(key, Entry::Value(delta));
        Ok(())
    }

    /// Refuses a key this node does not hold yet when it holds `keys_max` already (keys merged
    /// from peers included).
    fn check_room_for(&self, key: &str) -> Result<(), DdataError> {
        if self.get(key).is_none() && self.entries.len() >= self.config.keys_max {
            return Err(DdataError::TooManyKeys {
                max: self.config.keys_max,
            });
        }
        Ok(())
    }

    /// Refuses a request that would need a slot when all are taken, before anything changes.
    fn check_capacity(&self, consistency: Consistency) -> Result<(), DdataError> {
        let needs_slot = consistency.needed(self.members.len() + 1) > 1;
        if needs_slot && self.requests.len() >= self.config.requests_max {
            return Err(DdataError::TooManyRequests {
                max: self.config.requests_max,
            });
        }
        Ok(())
    }

    fn start_request(
        &mut self,
        kind: RequestKind,
        key: &str,
        consistency: Consistency,
        deadline_ms: u64,
        now_ms: u64,
    ) -> RequestId {
        self.next_request = self.next_request.wrapping_add(1);
        let request = RequestId(self.next_request);
        // Every caller checked `check_capacity` before changing anything.
        let needed = consistency.needed(self.members.len() + 1);
        let pending = Pending {
            kind,
            key: key.to_owned(),
            needed,
            acks: 1,
            waiting: self.members.clone(),
            deadline_ms,
            resend_at_ms: now_ms.saturating_add(self.config.resend_interval_ms),
        };
        if needed <= 1 {
            self.finish(request, &pending);
            return request;
        }
        self.ask(request, &pending);
        self.requests.insert(request, pending);
        request
    }

    /// Sends the request to every peer that has not answered yet.
    fn ask(&mut self, request: RequestId, pending: &Pending) {
        let message = match pending.kind {
            RequestKind::Write | RequestKind::Delete => match self.get(&pending.key) {
                Some(entry) => Message::Write {
                    request,
                    key: pending.key.clone(),
                    entry: entry.clone(),
                },
                None => return,
            },
            RequestKind::Read => Message::Read {
                request,
                key: pending.key.clone(),
            },
        };
        for peer in &pending.waiting {
            // Only an oversized entry fails to encode into a message; the deadline reports it.
            let _ = self.send(peer, &message);
        }
    }

    /// A member acked the write `request`; `deleted`: it holds the key's tombstone. An update
    /// acked that way is lost to the tombstone on every node, so it is refused, never
    /// acknowledged: a `Majority` update after a `Majority` delete always meets a member that
    /// holds the tombstone.
    fn write_acked(&mut self, request: RequestId, from: &NodeName, deleted: bool) {
        let Some(pending) = self.requests.get(&request) else {
            return;
        };
        if pending.kind == RequestKind::Read {
            return;
        }
        let key = pending.key.clone();
        if deleted {
            // The tombstone is news here at the latest now; the update is gone.
            let _ = self.set_entry(&key, Entry::Deleted);
        }
        self.acked(request, from);
    }

    /// A member answered `request`; once `needed` did, it is done. An update whose key turned
    /// out deleted is refused instead.
    fn acked(&mut self, request: RequestId, from: &NodeName) {
        let Some(pending) = self.requests.get_mut(&request) else {
            return; // Done, timed out, or a duplicate: nothing to do.
        };
        if !pending.waiting.remove(from) {
            return;
        }
        pending.acks += 1;
        let (kind, done) = (pending.kind, pending.acks >= pending.needed);
        let key = pending.key.clone();
        if kind == RequestKind::Write && self.get(&key).is_some_and(Entry::is_deleted) {
            self.requests.remove(&request);
            self.actions
                .push(ReplicatorAction::WriteRefused { request, key });
        } else if done && let Some(pending) = self.requests.remove(&request) {
            self.finish(request, &pending);
        }
    }

    fn finish(&mut self, request: RequestId, pending: &Pending) {
        let action = match pending.kind {
            RequestKind::Write | RequestKind::Delete => ReplicatorAction::WriteDone { request },
            RequestKind::Read => ReplicatorAction::ReadDone {
                request,
                key: pending.key.clone(),
                entry: self.get(&pending.key).cloned(),
            },
        };
        self.actions.push(action);
    }

    fn advance_requests(&mut self, now_ms: u64) {
        let expired: Vec<RequestId> = self
            .requests
            .iter()
            .filter(|(_, pending)| now_ms >= pending.deadline_ms)
            .map(|(request, _)| *request)
            .collect();
        for request in expired {
            if let Some(pending) = self.requests.remove(&request) {
                self.actions.push(ReplicatorAction::TimedOut {
                    request,
                    acks: pending.acks,
                    needed: pending.needed,
                });
            }
        }
        let resend: Vec<RequestId> = self
            .requests
            .iter()
            .filter(|(_, pending)| now_ms >= pending.resend_at_ms)
            .map(|(request, _)| *request)
            .collect();
        for request in resend {
            if let Some(pending) = self.requests.get_mut(&request) {
                pending.resend_at_ms = now_ms.saturating_add(self.config.resend_interval_ms);
                let pending = pending.clone();
                self.ask(request, &pending);
            }
        }
    }

    fn queue_delta(&mut self, key: &str, delta: Entry) {
        if let Some(pending) = self.pending_deltas.get_mut(key) {
            pending.merge(&delta);
        } else if self.pending_deltas.len() < self.config.pending_delta_keys_max {
            self.pending_deltas.insert(key.to_owned(), delta);
        } else {
            self.stats.deltas_dropped += 1;
        }
    }

    /// Pushes the pending deltas to every peer, up to `delta_tick_bytes_max` per peer; the rest
    /// waits for the next tick.
    fn flush_deltas(&mut self) {
        if self.peers.is_empty() {
            // Nobody to tell: anti-entropy brings peers that join later up to date.
            self.pending_deltas.clear();
            return;
        }
        let mut batches: Vec<Vec<(String, Entry)>> = Vec::new();
        let mut batch = Vec::new();
        let (mut batch_bytes, mut total_bytes) = (ENVELOPE_BYTES, 0);
        let mut sent_keys = Vec::new();
        for (key, delta) in &self.pending_deltas {
            let Ok(encoded) = encode(delta) else {
                continue;
            };
            let bytes = key.len() + encoded.len() + 8;
            if bytes + ENVELOPE_BYTES > self.config.message_bytes_max {
                self.stats.entries_oversized += 1;
                sent_keys.push(key.clone()); // Never sendable as a delta: leave it to gossip.
                continue;
            }
            if total_bytes + bytes > self.config.delta_tick_bytes_max {
                break;
            }
            if batch_bytes + bytes > self.config.message_bytes_max {
                batches.push(std::mem::take(&mut batch));
                batch_bytes = ENVELOPE_BYTES;
            }
            batch.push((key.clone(), delta.clone()));
            sent_keys.push(key.clone());
            batch_bytes += bytes;
            total_bytes += bytes;
        }
        if !batch.is_empty() {
            batches.push(batch);
        }
        for key in sent_keys {
            self.pending_deltas.remove(&key);
        }
        let peers: Vec<NodeName> = self.peers.iter().cloned().collect();
        for entries in batches {
            let message = Message::Deltas { entries };
            for peer in &peers {
                let _ = self.send(peer, &message);
            }
        }
    }

    /// One anti-entropy round: digests of the next chunk of keys go to the next peer in turn.
    fn gossip_round(&mut self) {
        self.stats.gossip_rounds += 1;
        self.round_bytes_left = self.config.gossip_round_bytes_max;
        let next_peer = self
            .gossip_peer
            .as_ref()
            .and_then(|last| {
                self.peers
                    .range((Bound::Excluded(last.clone()), Bound::Unbounded))
                    .next()
            })
            .or_else(|| self.peers.iter().next())
            .cloned();
        let Some(peer) = next_peer else {
            return;
        };
        self.gossip_peer = Some(peer.clone());
        let budget = self.round_bytes_left.min(self.config.message_bytes_max);
        let after = self.digest_cursor.take();
        let lower = after.clone().map_or(Bound::Unbounded, Bound::Excluded);
        let mut digests = Vec::new();
        // The envelope, the `after` bound, and room for the `through` bound (one more key).
        let mut bytes = ENVELOPE_BYTES + after.as_ref().map_or(0, String::len) + KEY_BYTES_MAX + 8;
        let mut through = None;
        for (key, stored) in self.entries.range::<String, _>((lower, Bound::Unbounded)) {
            // The key, its digest (a u64 takes 9 bytes at most) and their headers.
            let cost = key.len() + 16;
            if bytes + cost > budget {
                through = digests.last().map(|(key, _): &(String, u64)| key.clone());
                break;
            }
            bytes += cost;
            digests.push((key.clone(), stored.digest));
        }
        self.digest_cursor = through.clone();
        let message = Message::Digests {
            after,
            through,
            digests,
        };
        if let Ok(sent) = self.send(&peer, &message) {
            self.round_bytes_left = self.round_bytes_left.saturating_sub(sent);
        }
    }

    /// Answers a peer's digests of `(after, through]`: pushes our entries it lacks or holds
    /// differently, and pulls its entries we lack or hold differently.
    fn answer_digests(
        &mut self,
        from: &NodeName,
        after: Option<String>,
        through: Option<String>,
        digests: Vec<(String, u64)>,
    ) -> Result<(), DdataError> {
        let theirs: BTreeMap<String, u64> = digests.into_iter().collect();
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        let upper = through.map_or(Bound::Unbounded, Bound::Included);
        let push: Vec<String> = self
            .entries
            .range::<String, _>((lower, upper))
            .filter(|(key, stored)| theirs.get(*key) != Some(&stored.digest))
            .map(|(key, _)| key.clone())
            .collect();
        let pull: Vec<String> = theirs
            .iter()
            .filter(|(key, digest)| {
                self.entries
                    .get(key.as_str())
                    .is_none_or(|stored| stored.digest != **digest)
            })
            .map(|(key, _)| key.clone())
            .collect();
        self.send_entries(from, push.iter().map(String::as_str))?;
        if !pull.is_empty() {
            let mut keys = Vec::new();
            let mut bytes = ENVELOPE_BYTES;
            for key in pull {
                bytes += key.len() + 8;
                if bytes > self.config.message_bytes_max.min(self.round_bytes_left) {
                    break;
                }
                keys.push(key);
            }
            let sent = self.send(from, &Message::Pull { keys })?;
            self.round_bytes_left = self.round_bytes_left.saturating_sub(sent);
        }
        Ok(())
    }

    /// Sends the full states of `keys` (those we hold) to `to` in one message, as many as fit in
    /// the message limit and what is left of this round's budget.
    fn send_entries<'a>(
        &mut self,
        to: &NodeName,
        keys: impl Iterator<Item = &'a str>,
    ) -> Result<(), DdataError> {
        let limit = self.round_bytes_left.min(self.config.message_bytes_max);
        let mut batch = Vec::new();
        let mut oversized = Vec::new();
        let mut bytes = ENVELOPE_BYTES;
        for (key, stored) in keys.filter_map(|key| self.entries.get_key_value(key)) {
            let cost = key.len() + stored.bytes + 8;
            if cost + ENVELOPE_BYTES > self.config.message_bytes_max {
                oversized.push((key.clone(), stored.entry.clone()));
                continue;
            }
            if bytes + cost > limit {
                break;
            }
            bytes += cost;
            batch.push((key.clone(), stored.entry.clone()));
        }
        if !batch.is_empty() {
            let sent = self.send(to, &Message::Entries { entries: batch })?;
            self.round_bytes_left = self.round_bytes_left.saturating_sub(sent);
        }
        // A merged value over the message limit goes alone, while the round has budget left: a
        // replica that never received it would stay different for good.
        for entry in oversized {
            self.stats.entries_oversized += 1;
            if self.round_bytes_left == 0 {
                break;
            }
            let message = Message::Entries {
                entries: vec![entry],
            };
            if let Ok(sent) = self.send(to, &message) {
                self.round_bytes_left = self.round_bytes_left.saturating_sub(sent);
            }
        }
        Ok(())
    }

    fn merge_remote(&mut self, key: &str, entry: &Entry) -> Result<(), DdataError> {
        if let Entry::Value(DataValue::LWWRegister(register)) = entry
            && let Some((timestamp, _)) = register.written()
        {
            // A timestamp too far ahead is still merged; it only does not drag our clock along.
            let _ = self.hlc.observe(timestamp);
        }
        let mut merged = match self.get(key) {
            Some(ours) => ours.clone(),
            None if self.entries.len() >= self.config.merged_keys_max => {
                self.stats.keys_refused += 1;
                return Ok(());
            }
            None => {
                return self.set_entry(key, entry.clone());
            }
        };
        if merged.merge(entry) {
            self.set_entry(key, merged)?;
        }
        Ok(())
    }

    /// Stores `entry` under `key` with its digest and announces the change.
    fn set_entry(&mut self, key: &str, entry: Entry) -> Result<(), DdataError> {
        if self.get(key) == Some(&entry) {
            return Ok(());
        }
        let encoded = encode(&entry)?;
        self.store(key, entry, &encoded);
        Ok(())
    }

    /// Keeps `entry` (encoded as `encoded`) under `key` with its digest, and announces the change.
    fn store(&mut self, key: &str, entry: Entry, encoded: &[u8]) {
        self.entries.insert(
            key.to_owned(),
            Stored {
                digest: digest(encoded),
                bytes: encoded.len(),
                entry: entry.clone(),
            },
        );
        self.actions.push(ReplicatorAction::Changed {
            key: key.to_owned(),
            entry,
        });
    }

    /// Encodes and queues `message` for `to`; returns its size. A message over the limit is not
    /// sent.
    fn send(&mut self, to: &NodeName, message: &Message) -> Result<usize, DdataError> {
        let bytes = rmp_serde::to_vec(message)?;
        // Messages are packed to `message_bytes_max`; only one oversized entry alone goes past it.
        if bytes.len() > self.config.entry_message_bytes_max {
            self.stats.entries_oversized += 1;
            return Err(DdataError::MessageTooLarge {
                bytes: bytes.len(),
                max: self.config.entry_message_bytes_max,
            });
        }
        let size = bytes.len();
        self.stats.messages_sent += 1;
        self.stats.bytes_sent += size as u64;
        self.actions.push(ReplicatorAction::Send {
            to: to.clone(),
            bytes,
        });
        Ok(size)
    }
}

fn encode(entry: &Entry) -> Result<Vec<u8>, DdataError> {
    Ok(rmp_serde::to_vec(entry)?)
}

pub(super) fn check_key(key: &str) -> Result<(), DdataError> {
    if key.is_empty() || key.len() > KEY_BYTES_MAX {
        return Err(DdataError::InvalidKey {
            bytes: key.len(),
            max: KEY_BYTES_MAX,
        });
    }
    Ok(())
}

fn check_message_keys(message: &Message) -> Result<(), DdataError> {
    let keys: Box<dyn Iterator<Item = &String>> = match message {
        Message::Deltas { entries } | Message::Entries { entries } => {
            Box::new(entries.iter().map(|(key, _)| key))
        }
        Message::Digests {
            after,
            through,
            digests,
        } => Box::new(
            digests
                .iter()
                .map(|(key, _)| key)
                .chain(after)
                .chain(through),
        ),
        Message::Pull { keys } => Box::new(keys.iter()),
        Message::Write { key, .. } | Message::Read { key, .. } | Message::ReadReply { key, .. } => {
            Box::new(std::iter::once(key))
        }
        Message::WriteAck { .. } => Box::new(std::iter::empty()),
    };
    for key in keys {
        check_key(key)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use weft_crdt::{Crdt, GCounter, ORSet};

    use super::*;

    fn name(index: usize) -> NodeName {
        NodeName::new(format!("node-{index}")).expect("a valid name")
    }

    fn replicator(index: usize, config: ReplicatorConfig) -> Replicator {
        let node = name(index);
        let replica = ReplicaId::incarnation(node.as_str(), "01J9ZK8Q7R6W5V4T3S2R1Q0P9N");
        Replicator::new(node, replica, config, 1_000)
    }

    fn sent(replicator: &mut Replicator) -> Vec<Vec<u8>> {
        replicator
            .drain_actions()
            .filter_map(|action| match action {
                ReplicatorAction::Send { bytes, .. } => Some(bytes),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_write_of_another_kind_is_refused_and_changes_nothing() {
        let mut node = replicator(0, ReplicatorConfig::default());
        let increment = Op::Increment { by: 3 };
        node.update(
            "hits",
            Kind::GCounter,
            &increment,
            Consistency::Local,
            0,
            1_000,
        )
        .expect("the first write fixes the kind");
        let before = node.get("hits").cloned();
        node.drain_actions().for_each(drop);

        let add = Op::Add {
            element: "x".into(),
        };
        let error = node
            .update("hits", Kind::ORSet, &add, Consistency::Local, 0, 1_001)
            .expect_err("hits is a counter");
        assert!(
            matches!(
                &error,
                DdataError::WrongKind { key, stored: Kind::GCounter, requested: Kind::ORSet }
                    if key == "hits"
            ),
            "{error}"
        );
        assert_eq!(
            error.to_string(),
            "key \"hits\" holds a gcounter, not a orset"
        );
        let error = node
            .update("hits", Kind::GCounter, &add, Consistency::Local, 0, 1_002)
            .expect_err("a counter has no add");
        assert!(matches!(
            error,
            DdataError::UnsupportedOp {
                kind: Kind::GCounter,
                op: "add"
            }
        ));
        let typed = Key::<ORSet<String>>::new("hits");
        assert!(matches!(
            node.get_typed(&typed),
            Err(DdataError::WrongKind { .. })
        ));
        assert!(matches!(
            node.update_typed(&typed, Consistency::Local, 0, 1_003, |set, writer| set
                .add("x".into(), writer.replica)),
            Err(DdataError::WrongKind { .. })
        ));
        assert_eq!(node.get("hits").cloned(), before);
        assert_eq!(
            node.drain_actions().count(),
            0,
            "no action for a refused write"
        );

        let counter = Key::<GCounter>::new("hits");
        assert_eq!(
            node.get_typed(&counter).ok().flatten().map(Crdt::value),
            Some(3)
        );
    }

    #[test]
    fn a_message_that_does_not_decode_is_an_error_and_changes_nothing() {
        let mut node = replicator(0, ReplicatorConfig::default());
        node.members_changed([name(1)]);
        let peer = name(1);
        for garbage in [&b""[..], b"\xff\xfe", b"\x93\x01\x02", b"hello, world"] {
            let result = node.handle_message(&peer, garbage, 1_000);
            assert!(
                matches!(result, Err(DdataError::Decode(_))),
                "{garbage:?}: {result:?}"
            );
        }
        // A well-formed message naming an over-long key.
        let long_key = "k".repeat(KEY_BYTES_MAX + 1);
        let bytes = rmp_serde::to_vec(&Message::Pull {
            keys: vec![long_key],
        })
        .expect("encodes");
        assert!(matches!(
            node.handle_message(&peer, &bytes, 1_000),
            Err(DdataError::InvalidKey { .. })
        ));
        // A message over the limit is refused unread.
        let small = ReplicatorConfig {
            message_bytes_max: 16,
            entry_message_bytes_max: 16,
            ..ReplicatorConfig::default()
        };
        let mut strict = replicator(2, small);
        assert!(matches!(
            strict.handle_message(&peer, &[0; 17], 1_000),
            Err(DdataError::MessageTooLarge { bytes: 17, max: 16 })
        ));
        assert_eq!(node.keys().count(), 0);
        assert_eq!(node.drain_actions().count(), 0);
    }

    #[test]
    fn a_write_that_would_outgrow_a_message_is_refused() {
        let config = ReplicatorConfig {
            value_bytes_max: 200,
            ..ReplicatorConfig::default()
        };
        let mut node = replicator(0, config);
        let mut refused = None;
        for index in 0..50 {
            let add = Op::Add {
                element: format!("element-{index}"),
            };
            if let Err(error) = node.update("set", Kind::GSet, &add, Consistency::Local, 0, 1_000) {
                refused = Some((index, error));
                break;
            }
        }
        let (index, error) = refused.expect("the value outgrew 200 bytes");
        assert!(matches!(error, DdataError::ValueTooLarge { max: 200, .. }));
        let held = node.get("set").and_then(Entry::value).cloned();
        assert!(
            matches!(&held, Some(DataValue::GSet(set)) if set.len() == index),
            "the refused element is not in {held:?}"
        );
    }

    #[test]
    fn clients_create_keys_up_to_the_limit_and_peers_keys_merge_past_it() {
        let config = ReplicatorConfig {
            keys_max: 2,
            merged_keys_max: 3,
            ..ReplicatorConfig::default()
        };
        let mut node = replicator(0, config);
        let one = Op::Increment { by: 1 };
        for key in ["a", "b"] {
            node.update(key, Kind::GCounter, &one, Consistency::Local, 0, 1_000)
                .expect("within the limit");
        }
        assert!(matches!(
            node.update("c", Kind::GCounter, &one, Consistency::Local, 0, 1_000),
            Err(DdataError::TooManyKeys { max: 2 })
        ));
        node.update("a", Kind::GCounter, &one, Consistency::Local, 0, 1_000)
            .expect("an existing key can still be written");
        // Peers' keys are merged past `keys_max` (so replicas never differ for good), up to
        // `merged_keys_max`.
        let message = Message::Entries {
            entries: vec![("d".into(), Entry::Deleted), ("e".into(), Entry::Deleted)],
        };
        let bytes = rmp_serde::to_vec(&message).expect("encodes");
        node.handle_message(&name(1), &bytes, 1_000)
            .expect("a valid message");
        assert_eq!(node.keys().collect::<Vec<_>>(), ["a", "b", "d"]);
        assert_eq!(node.stats().keys_refused, 1);
        assert!(matches!(
            node.update("c", Kind::GCounter, &one, Consistency::Local, 0, 1_000),
            Err(DdataError::TooManyKeys { max: 2 })
        ));
    }

    #[test]
    fn requests_waiting_for_acks_are_bounded_and_a_refused_one_changes_nothing() {
        let config = ReplicatorConfig {
            requests_max: 1,
            ..ReplicatorConfig::default()
        };
        let mut node = replicator(0, config);
        node.members_changed([name(1), name(2)]);
        let one = Op::Increment { by: 1 };
        let first = node
            .update(
                "a",
                Kind::GCounter,
                &one,
                Consistency::Majority,
                5_000,
                1_000,
            )
            .expect("a free slot");
        assert!(matches!(
            node.update("b", Kind::GCounter, &one, Consistency::All, 5_000, 1_000),
            Err(DdataError::TooManyRequests { max: 1 })
        ));
        assert!(node.get("b").is_none());
        node.update("b", Kind::GCounter, &one, Consistency::Local, 0, 1_000)
            .expect("a local write needs no slot");
        node.tick(5_000);
        let timed_out: Vec<_> = node
            .drain_actions()
            .filter(|action| matches!(action, ReplicatorAction::TimedOut { .. }))
            .collect();
        assert_eq!(
            timed_out,
            [ReplicatorAction::TimedOut {
                request: first,
                acks: 1,
                needed: 2
            }]
        );
        node.read("a", Consistency::Majority, 6_000, 5_000)
            .expect("the slot is free again");
    }

    #[test]
    fn quorums_count_members_the_view_lost_and_requests_still_go_to_them() {
        let mut node = replicator(0, ReplicatorConfig::default());
        node.add_members([name(0), name(2)]);
        node.members_changed([name(0), name(1)]);
        // The failure detector gave up on both peers: the view is this node alone.
        node.members_changed([name(0)]);
        let one = Op::Increment { by: 1 };
        let write = node
            .update(
                "a",
                Kind::GCounter,
                &one,
                Consistency::Majority,
                2_000,
                1_000,
            )
            .expect("a free slot");
        let asked: BTreeSet<NodeName> = node
            .drain_actions()
            .filter_map(|action| match action {
                ReplicatorAction::Send { to, .. } => Some(to),
                ReplicatorAction::WriteDone { .. } => panic!("a majority of one"),
                _ => None,
            })
            .collect();
        assert_eq!(asked, BTreeSet::from([name(1), name(2)]));
        node.tick(2_000);
        assert!(node.drain_actions().any(|action| action
            == ReplicatorAction::TimedOut {
                request: write,
                acks: 1,
                needed: 2
            }));
    }

    #[test]
    fn an_update_acked_by_a_holder_of_the_tombstone_is_refused_and_takes_it() {
        let mut node = replicator(0, ReplicatorConfig::default());
        node.members_changed([name(1), name(2)]);
        let add = Op::Add {
            element: "x".into(),
        };
        let write = node
            .update(
                "cart",
                Kind::ORSet,
                &add,
                Consistency::Majority,
                5_000,
                1_000,
            )
            .expect("a free slot");
        node.drain_actions().for_each(drop);
        let ack = rmp_serde::to_vec(&Message::WriteAck {
            request: write,
            deleted: true,
        })
        .expect("encodes");
        node.handle_message(&name(1), &ack, 1_001)
            .expect("a valid message");
        let actions: Vec<ReplicatorAction> = node.drain_actions().collect();
        assert!(
            actions.contains(&ReplicatorAction::WriteRefused {
                request: write,
                key: "cart".into()
            }),
            "{actions:?}"
        );
        assert!(!actions.contains(&ReplicatorAction::WriteDone { request: write }));
        assert_eq!(node.get("cart"), Some(&Entry::Deleted));
    }

    #[test]
    fn deltas_go_to_every_peer_on_the_next_tick_and_merge_there() {
        let mut a = replicator(0, ReplicatorConfig::default());
        let mut b = replicator(1, ReplicatorConfig::default());
        a.members_changed([name(1)]);
        b.members_changed([name(0)]);
        a.tick(1_000); // The first anti-entropy round, with nothing to say.
        sent(&mut a);
        let key = Key::<GCounter>::new("hits");
        a.update_typed(&key, Consistency::Local, 0, 1_001, |counter, writer| {
            counter.increment(writer.replica, 5)
        })
        .expect("a new key");
        a.tick(1_100);
        let messages = sent(&mut a);
        assert_eq!(
            messages.len(),
            1,
            "one delta message, no anti-entropy round yet"
        );
        for bytes in &messages {
            b.handle_message(&name(0), bytes, 1_101)
                .expect("a valid message");
        }
        assert_eq!(b.get_typed(&key).ok().flatten().map(Crdt::value), Some(5));
        assert!(b.drain_actions().any(|action| matches!(
            action,
            ReplicatorAction::Changed { key, .. } if key == "hits"
        )));
    }

    /// The measurement quoted in `docs/ddata.md`: what a delta saves over the full state.
    #[test]
    fn a_delta_of_a_one_percent_change_is_a_small_fraction_of_the_full_state() {
        const ELEMENTS: usize = 10_000;
        const CHANGED: usize = ELEMENTS / 100;
        let mut a = replicator(0, ReplicatorConfig::default());
        a.members_changed([name(1)]);
        a.tick(1_000);
        // The initial state is built directly: 10,000 writes through `update` would each re-encode
        // the growing set. The change starts from a replicated state (no delta pending).
        let mut set = ORSet::new();
        for index in 0..ELEMENTS {
            set.add(format!("item-{index:05}"), &a.replica);
        }
        a.set_entry("cart", Entry::Value(DataValue::ORSet(set)))
            .expect("encodes");
        sent(&mut a);
        let full_before = a.entries.get("cart").map_or(0, |stored| stored.bytes);
        for index in 0..CHANGED {
            let op = if index % 2 == 0 {
                Op::Remove {
                    element: format!("item-{index:05}"),
                }
            } else {
                Op::Add {
                    element: format!("new-{index:05}"),
                }
            };
            a.update("cart", Kind::ORSet, &op, Consistency::Local, 0, 1_200)
                .expect("a valid op");
        }
        a.tick(1_300);
        let delta_bytes: usize = sent(&mut a).iter().map(Vec::len).sum();
        let full_bytes = a.entries.get("cart").map_or(0, |stored| stored.bytes);
        println!(
            "OR-Set of {ELEMENTS} elements ({full_before} bytes), {CHANGED} ops \
             ({} removes, {} adds): delta message {delta_bytes} bytes, full state {full_bytes} \
             bytes ({:.2}%)",
            CHANGED / 2,
            CHANGED / 2,
            100.0 * delta_bytes as f64 / full_bytes as f64
        );
        assert!(full_bytes <= VALUE_BYTES_MAX);
        assert!(delta_bytes > 0);
        assert!(
            delta_bytes * 20 < full_bytes,
            "{delta_bytes} bytes of delta against {full_bytes} of state"
        );
    }
}
