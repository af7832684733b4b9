//! A deterministic simulator for [`Replicator`]s: virtual time in milliseconds, one seeded
//! generator, and an in-memory network between named nodes that drops, duplicates, delays (and so
//! reorders) messages, and partitions that heal. During a partition every node's live view
//! follows it, as the failure detector's would: each node sees only its own side as live. Nodes can
//! be taken down (they neither tick nor receive) and brought back with their state. Each node is driven as a real driver would: feed
//! the input, drain every action.
//!
//! Everything follows from the seed: a failing run prints it and replays with
//! `WEFT_SIM_SEED=<seed>` (see [`for_each_seed`]). Whether a run is correct is decided by
//! [`checks`], which only reads the simulation.

pub mod checks;
mod limits;
mod quorums;
mod scenarios;

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use weft_crdt::ReplicaId;

use super::{
    Consistency, DdataError, Entry, Kind, Op, Replicator, ReplicatorAction, ReplicatorConfig,
    RequestId,
};
use crate::cluster::identity::NodeName;
pub use crate::simulation::{Faults, for_each_seed};
use crate::timeline::Timeline;

/// Counters of what happened, for reports and checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub messages_sent: u64,
    pub messages_dropped: u64,
    pub messages_duplicated: u64,
    pub messages_delivered: u64,
    /// Messages a replicator refused with an error (none should be, between correct nodes).
    pub messages_refused: u64,
    /// The largest message any node sent, in bytes.
    pub message_bytes_largest: usize,
}

/// How a read or write ended, as the node's actions reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    WriteDone,
    /// A replica holds the key's tombstone: the write is lost, so it is not acknowledged.
    WriteRefused,
    ReadDone(Option<Entry>),
    TimedOut {
        acks: usize,
        needed: usize,
    },
}

pub struct SimNode {
    pub replicator: Replicator,
    /// A node that is down neither ticks nor receives; it keeps its state for when it comes back.
    pub up: bool,
}

#[derive(Debug)]
enum EventKind {
    Deliver {
        to: NodeName,
        from: NodeName,
        bytes: Vec<u8>,
    },
    Tick {
        node: NodeName,
    },
}

/// Wall-clock milliseconds at virtual time zero: a fixed date, so runs replay bit for bit.
const EPOCH_MS: u64 = 1_750_000_000_000;

pub struct Simulation {
    rng: StdRng,
    now_ms: u64,
    pub config: ReplicatorConfig,
    /// How often every node ticks.
    pub tick_ms: u64,
    pub nodes: BTreeMap<NodeName, SimNode>,
    events: Timeline<u64, EventKind>,
    in_flight: usize,
    pub faults: Faults,
    /// Nodes in the same group talk; `None` means no partition.
    groups: Option<BTreeMap<NodeName, usize>>,
    pub stats: Stats,
    pub outcomes: BTreeMap<(NodeName, RequestId), Outcome>,
    /// When each outcome came, in virtual milliseconds.
    pub finished_ms: BTreeMap<(NodeName, RequestId), u64>,
}

impl Simulation {
    /// Messages in flight at most; more are dropped (and counted), so a runaway protocol cannot
    /// exhaust memory in a test.
    const IN_FLIGHT_MAX: usize = 200_000;

    /// `count` nodes named `node-00`, `node-01`, …, all up, each knowing all others.
    pub fn new(seed: u64, count: usize, config: ReplicatorConfig, faults: Faults) -> Self {
        let mut sim = Self {
            rng: StdRng::seed_from_u64(seed),
            now_ms: 0,
            config: config.clone(),
            tick_ms: 100,
            nodes: BTreeMap::new(),
            events: Timeline::default(),
            in_flight: 0,
            faults,
            groups: None,
            stats: Stats::default(),
            outcomes: BTreeMap::new(),
            finished_ms: BTreeMap::new(),
        };
        let names: Vec<NodeName> = (0..count).map(node_name).collect();
        for name in &names {
            let replica = ReplicaId::incarnation(name.as_str(), "01J9ZK8Q7R6W5V4T3S2R1Q0P9N");
            let mut replicator = Replicator::new(name.clone(), replica, config.clone(), EPOCH_MS);
            replicator.members_changed(names.iter().cloned());
            sim.nodes.insert(
                name.clone(),
                SimNode {
                    replicator,
                    up: true,
                },
            );
            // Ticks start at a random offset, so nodes do not run their rounds in lockstep.
            let offset = sim.rng.random_range(0..sim.tick_ms);
            sim.push(offset, EventKind::Tick { node: name.clone() });
        }
        sim
    }

    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    pub fn names(&self) -> Vec<NodeName> {
        self.nodes.keys().cloned().collect()
    }

    pub fn random_range(&mut self, range: std::ops::Range<u64>) -> u64 {
        self.rng.random_range(range)
    }

    pub fn random_per_mille(&mut self, per_mille: u32) -> bool {
        self.rng.random_range(0..1000) < per_mille
    }

    /// Splits the nodes in two random, non-empty groups.
    pub fn random_split(&mut self) -> Vec<Vec<NodeName>> {
        let mut names = self.names();
        for index in (1..names.len()).rev() {
            let other = usize::try_from(self.random_range(0..index as u64 + 1)).unwrap_or(0);
            names.swap(index, other);
        }
        let cut = usize::try_from(self.random_range(1..names.len() as u64)).unwrap_or(1);
        let right = names.split_off(cut);
        vec![names, right]
    }

    /// Runs every event up to and including `until_ms`.
    pub fn run_until(&mut self, until_ms: u64) {
        while let Some((at_ms, kind)) = self.events.pop_due(until_ms) {
            self.now_ms = at_ms;
            match kind {
                EventKind::Deliver { to, from, bytes } => {
                    self.in_flight -= 1;
                    self.deliver(&to, &from, &bytes);
                }
                EventKind::Tick { node } => {
                    let now = self.wall_ms();
                    if let Some(sim_node) = self.nodes.get_mut(&node)
                        && sim_node.up
                    {
                        sim_node.replicator.tick(now);
                        self.drain(&node);
                    }
                    let next = self.now_ms + self.tick_ms;
                    self.push(next, EventKind::Tick { node });
                }
            }
        }
        self.now_ms = self.now_ms.max(until_ms);
    }

    /// Runs until `done` holds, checking every tick interval, or until `limit_ms` more have passed.
    /// Returns the virtual time it took, if `done` came to hold.
    pub fn run_until_true(
        &mut self,
        limit_ms: u64,
        mut done: impl FnMut(&Simulation) -> bool,
    ) -> Option<u64> {
        let start = self.now_ms;
        while self.now_ms - start <= limit_ms {
            if done(self) {
                return Some(self.now_ms - start);
            }
            let next = self.now_ms + self.tick_ms;
            self.run_until(next);
        }
        None
    }

    /// A client call on `node`: an update at `consistency`, with a deadline `timeout_ms` from now.
    pub fn update(
        &mut self,
        node: &NodeName,
        key: &str,
        kind: Kind,
        op: &Op,
        consistency: Consistency,
        timeout_ms: u64,
    ) -> Result<RequestId, DdataError> {
        self.call(node, timeout_ms, |replicator, deadline, now| {
            replicator.update(key, kind, op, consistency, deadline, now)
        })
    }

    pub fn delete(
        &mut self,
        node: &NodeName,
        key: &str,
        consistency: Consistency,
        timeout_ms: u64,
    ) -> Result<RequestId, DdataError> {
        self.call(node, timeout_ms, |replicator, deadline, now| {
            replicator.delete(key, consistency, deadline, now)
        })
    }

    pub fn read(
        &mut self,
        node: &NodeName,
        key: &str,
        consistency: Consistency,
        timeout_ms: u64,
    ) -> Result<RequestId, DdataError> {
        self.call(node, timeout_ms, |replicator, deadline, now| {
            replicator.read(key, consistency, deadline, now)
        })
    }

    /// Runs a client call on `node`'s replicator with a deadline `timeout_ms` from now, then
    /// carries out what it asked for.
    fn call(
        &mut self,
        node: &NodeName,
        timeout_ms: u64,
        call: impl FnOnce(&mut Replicator, u64, u64) -> Result<RequestId, DdataError>,
    ) -> Result<RequestId, DdataError> {
        let now = self.wall_ms();
        let result = call(self.replicator_mut(node), now + timeout_ms, now);
        self.drain(node);
        result
    }

    pub fn get(&self, node: &NodeName, key: &str) -> Option<&Entry> {
        self.nodes
            .get(node)
            .and_then(|sim_node| sim_node.replicator.get(key))
    }

    pub fn set_up(&mut self, node: &NodeName, up: bool) {
        if let Some(sim_node) = self.nodes.get_mut(node) {
            sim_node.up = up;
        }
    }

    /// Splits the nodes into `groups`; nodes in different groups cannot talk until [`Self::heal`].
    /// A node in no group is alone. Every node's live view shrinks to its own group.
    pub fn partition(&mut self, groups: &[Vec<NodeName>]) {
        let mut by_node = BTreeMap::new();
        for (index, group) in groups.iter().enumerate() {
            for name in group {
                by_node.insert(name.clone(), index);
            }
        }
        for (index, name) in self.nodes.keys().enumerate() {
            by_node.entry(name.clone()).or_insert(groups.len() + index);
        }
        for (name, node) in &mut self.nodes {
            let side = by_node.get(name);
            let live = by_node
                .iter()
                .filter(|(_, group)| Some(*group) == side)
                .map(|(other, _)| other.clone());
            node.replicator.members_changed(live);
        }
        self.groups = Some(by_node);
    }

    /// Ends the partition: every node sees every other as live again.
    pub fn heal(&mut self) {
        self.groups = None;
        let names = self.names();
        for node in self.nodes.values_mut() {
            node.replicator.members_changed(names.iter().cloned());
        }
    }

    fn replicator_mut(&mut self, node: &NodeName) -> &mut Replicator {
        &mut self
            .nodes
            .get_mut(node)
            .expect("the scenario names a node of the simulation")
            .replicator
    }

    fn wall_ms(&self) -> u64 {
        EPOCH_MS + self.now_ms
    }

    fn deliver(&mut self, to: &NodeName, from: &NodeName, bytes: &[u8]) {
        let now = self.wall_ms();
        let Some(node) = self.nodes.get_mut(to) else {
            return;
        };
        if !node.up {
            self.stats.messages_dropped += 1;
            return;
        }
        self.stats.messages_delivered += 1;
        if node.replicator.handle_message(from, bytes, now).is_err() {
            self.stats.messages_refused += 1;
        }
        self.drain(to);
    }

    fn drain(&mut self, node: &NodeName) {
        let actions: Vec<ReplicatorAction> = match self.nodes.get_mut(node) {
            Some(sim_node) => sim_node.replicator.drain_actions().collect(),
            None => return,
        };
        for action in actions {
            let (request, outcome) = match action {
                ReplicatorAction::Send { to, bytes } => {
                    self.send(node, to, bytes);
                    continue;
                }
                ReplicatorAction::Changed { .. } => continue,
                ReplicatorAction::WriteDone { request } => (request, Outcome::WriteDone),
                ReplicatorAction::WriteRefused { request, .. } => (request, Outcome::WriteRefused),
                ReplicatorAction::ReadDone { request, entry, .. } => {
                    (request, Outcome::ReadDone(entry))
                }
                ReplicatorAction::TimedOut {
                    request,
                    acks,
                    needed,
                } => (request, Outcome::TimedOut { acks, needed }),
            };
            self.outcomes.insert((node.clone(), request), outcome);
            self.finished_ms
                .insert((node.clone(), request), self.now_ms);
        }
    }

    fn send(&mut self, from: &NodeName, to: NodeName, bytes: Vec<u8>) {
        self.stats.messages_sent += 1;
        self.stats.message_bytes_largest = self.stats.message_bytes_largest.max(bytes.len());
        let cut = self
            .groups
            .as_ref()
            .is_some_and(|groups| groups.get(from) != groups.get(&to));
        if cut || self.random_per_mille(self.faults.drop_per_mille) {
            self.stats.messages_dropped += 1;
            return;
        }
        let copies = if self.random_per_mille(self.faults.duplicate_per_mille) {
            self.stats.messages_duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            if self.in_flight >= Self::IN_FLIGHT_MAX {
                self.stats.messages_dropped += 1;
                continue;
            }
            let delay_ms = self
                .rng
                .random_range(self.faults.delay_ms_min..=self.faults.delay_ms_max);
            self.in_flight += 1;
            let at = self.now_ms + delay_ms;
            self.push(
                at,
                EventKind::Deliver {
                    to: to.clone(),
                    from: from.clone(),
                    bytes: bytes.clone(),
                },
            );
        }
    }

    fn push(&mut self, at_ms: u64, kind: EventKind) {
        self.events.push(at_ms, kind);
    }
}

/// The faults of the partition scenarios (`quorums`, `limits`): some loss and duplication and
/// delays of up to 60 ms, so the partitions do the damage.
pub fn light_faults() -> Faults {
    Faults {
        drop_per_mille: 50,
        duplicate_per_mille: 50,
        delay_ms_min: 1,
        delay_ms_max: 60,
    }
}

pub fn node_name(index: usize) -> NodeName {
    NodeName::new(format!("node-{index:02}")).expect("a valid node name")
}
