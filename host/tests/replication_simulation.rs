//! Replicas converge under a random schedule. 3–5 replicas of one entity write events at random
//! while the network between them delays, reorders, duplicates and drops them, and partitions
//! the replicas now and then. Then the network heals and pull rounds run (each replica sends what
//! the other has not seen). Afterwards every replica's state is byte-identical, and every event
//! was folded exactly once however often it arrived. The states are equal again after every
//! replica is snapshotted and restored, and again after more writes on the restored replicas.
//!
//! The fold is the counter plugin, with last-writer-wins (the value must then be the exact sum of
//! every increment) and with the highest-bid resolver plugin.

mod support;

use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use support::rng::SplitMix64;
use support::{cached_registry, context, from_msgpack, msgpack};
use ulid::Ulid;
use weft::journal::EventEnvelope;
use weft::plugin::{PluginRegistry, RuntimeLimits};
use weft::replication::{PluginFold, Replica, Resolver, Stamp};

const PID: &str = "auction|1";
/// Writes per run, spread over the replicas.
const WRITES: usize = 80;
/// Pull rounds allowed after healing: one round over every pair delivers everything a healed
/// replica misses; the bound leaves room for causal gaps closed by a second round.
const PULL_ROUNDS_MAX: usize = 3;

/// An event on its way to a replica.
struct InFlight {
    at_ms: u64,
    to: usize,
    event: EventEnvelope,
}

struct Run {
    rng: SplitMix64,
    replicas: Vec<Replica>,
    /// Which side of a partition each replica is on; `None` while the network is whole.
    sides: Option<Vec<bool>>,
    in_flight: Vec<InFlight>,
    now_ms: u64,
    /// Each replica's clock skew, in milliseconds.
    skew_ms: Vec<u64>,
    drop_per_mille: u64,
    duplicate_per_mille: u64,
    written: Vec<EventEnvelope>,
    plugin: String,
}

impl Run {
    fn new(seed: u64, registry: &PluginRegistry) -> Run {
        let mut rng = SplitMix64(seed);
        let count = 3 + rng.below(3) as usize;
        let entity = registry.get("counter").unwrap();
        let initial = entity.init(&context("auction", "1", 0)).unwrap();
        let replicas = (0..count)
            .map(|index| Replica::new(&format!("r{index}"), PID, Ulid::new(), initial.clone()))
            .collect();
        let skew_ms = (0..count).map(|_| rng.below(50)).collect();
        let drop_per_mille = rng.below(301);
        let duplicate_per_mille = rng.below(201);
        Run {
            rng,
            replicas,
            sides: None,
            in_flight: Vec::new(),
            now_ms: 0,
            skew_ms,
            drop_per_mille,
            duplicate_per_mille,
            written: Vec::new(),
            plugin: entity.id().to_owned(),
        }
    }

    /// One replica writes an increment (a bid of the same amount) and pushes it to the others.
    fn write(&mut self, fold: &PluginFold, writer: usize, reliable: bool) {
        let amount = 1 + self.rng.below(9);
        let payload = msgpack(&json!({"type": "incremented", "by": amount, "amount": amount}));
        let now = (self.now_ms + self.skew_ms[writer]) << 16;
        let stamp = Stamp {
            now,
            plugin: self.plugin.clone(),
            fencing_token: 0,
        };
        let events = self.replicas[writer]
            .emit(fold, vec![payload], &stamp)
            .expect("fold");
        for event in events {
            self.written.push(event.clone());
            for to in 0..self.replicas.len() {
                if to != writer {
                    self.push(writer, to, &event, reliable);
                }
            }
        }
    }

    fn push(&mut self, from: usize, to: usize, event: &EventEnvelope, reliable: bool) {
        let cut = self
            .sides
            .as_ref()
            .is_some_and(|sides| sides[from] != sides[to]);
        if cut || (!reliable && self.rng.below(1000) < self.drop_per_mille) {
            return;
        }
        let copies = if !reliable && self.rng.below(1000) < self.duplicate_per_mille {
            2 + self.rng.below(2)
        } else {
            1
        };
        for _ in 0..copies {
            self.in_flight.push(InFlight {
                at_ms: self.now_ms + 1 + self.rng.below(200),
                to,
                event: event.clone(),
            });
        }
    }

    /// Advances the clock and delivers what is due, in random order.
    fn tick(&mut self, fold: &PluginFold, step_ms: u64) {
        self.now_ms += step_ms;
        let mut due = Vec::new();
        let mut index = 0;
        while index < self.in_flight.len() {
            if self.in_flight[index].at_ms <= self.now_ms {
                due.push(self.in_flight.swap_remove(index));
            } else {
                index += 1;
            }
        }
        for i in (1..due.len()).rev() {
            due.swap(i, self.rng.below(i as u64 + 1) as usize);
        }
        for InFlight { to, event, .. } in due {
            self.replicas[to].receive(fold, event).expect("fold");
        }
    }

    fn random_schedule(&mut self, fold: &PluginFold) {
        for _ in 0..WRITES {
            match self.rng.below(20) {
                0 => {
                    let sides = (0..self.replicas.len())
                        .map(|_| self.rng.below(2) == 0)
                        .collect();
                    self.sides = Some(sides);
                }
                1 => self.sides = None,
                _ => {}
            }
            let writer = self.rng.below(self.replicas.len() as u64) as usize;
            self.write(fold, writer, false);
            let step = self.rng.below(40);
            self.tick(fold, step);
        }
    }

    /// Heals the network, lets everything in flight arrive, then runs pull rounds until every
    /// replica has seen the same; returns the rounds it took.
    fn heal_and_pull(&mut self, fold: &PluginFold) -> usize {
        self.sides = None;
        self.tick(fold, 1_000);
        for round in 0..=PULL_ROUNDS_MAX {
            let seen: BTreeSet<_> = self.replicas.iter().map(|r| r.seen().clone()).collect();
            if seen.len() == 1 {
                return round;
            }
            for from in 0..self.replicas.len() {
                for to in 0..self.replicas.len() {
                    if from == to {
                        continue;
                    }
                    let missing = self.replicas[from].missing_for(self.replicas[to].seen());
                    for event in missing {
                        self.replicas[to].receive(fold, event).expect("fold");
                    }
                }
            }
        }
        panic!("replicas still differ after {PULL_ROUNDS_MAX} pull rounds");
    }

    fn assert_converged(&self, what: &str) {
        let first = self.replicas[0].state();
        for replica in &self.replicas[1..] {
            assert_eq!(
                replica.state(),
                first,
                "{what}: {} differs from r0",
                replica.name()
            );
        }
        // Every event folded exactly once on every replica, however often it arrived.
        let written: BTreeSet<(String, u64)> = self
            .written
            .iter()
            .map(|event| (event.origin_replica.clone(), event.origin_seq_nr))
            .collect();
        assert_eq!(written.len(), self.written.len());
        for replica in &self.replicas {
            let folded: Vec<(String, u64)> = replica
                .events()
                .map(|event| (event.origin_replica.clone(), event.origin_seq_nr))
                .collect();
            let unique: BTreeSet<(String, u64)> = folded.iter().cloned().collect();
            assert_eq!(
                folded.len(),
                unique.len(),
                "{what}: {} folded twice",
                replica.name()
            );
            assert_eq!(unique, written, "{what}: {} misses events", replica.name());
        }
    }

    fn sum_written(&self) -> i64 {
        self.written
            .iter()
            .map(|event| from_msgpack(&event.payload)["by"].as_i64().unwrap())
            .sum()
    }

    fn snapshot_and_restore(&mut self, fold: &PluginFold) {
        self.replicas = self
            .replicas
            .iter()
            .map(|replica| {
                let saved = replica.snapshot();
                // The snapshot survives its encoding, as it would in the journal.
                let bytes = rmp_serde::to_vec_named(&saved).unwrap();
                let saved = rmp_serde::from_slice(&bytes).unwrap();
                Replica::restore(replica.name(), PID, Ulid::new(), saved, fold).expect("restore")
            })
            .collect();
    }
}

fn check(resolver: impl Fn(&PluginRegistry) -> Resolver, seeds: u64, exact_sum: bool) {
    let registry = cached_registry(RuntimeLimits::default());
    load(&registry, &["counter", "highest-bid"]);
    let fold = counter_with(resolver(&registry), &registry);
    let mut rounds_by_size: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for seed in 0..seeds {
        let mut run = Run::new(0xE5 + seed, &registry);
        let value = |run: &Run| from_msgpack(run.replicas[0].state())["value"].as_i64();
        run.random_schedule(&fold);
        let rounds = run.heal_and_pull(&fold);
        rounds_by_size
            .entry(run.replicas.len())
            .or_default()
            .push(rounds);
        run.assert_converged(&format!("seed {seed}, after healing"));
        if exact_sum {
            assert_eq!(value(&run), Some(run.sum_written()), "seed {seed}");
        }
        let before = run.replicas[0].state().to_vec();
        run.snapshot_and_restore(&fold);
        assert_eq!(
            run.replicas[0].state(),
            before.as_slice(),
            "seed {seed}: restored"
        );
        run.assert_converged(&format!("seed {seed}, restored"));
        // The restored replicas go on: concurrent writes, reliable pushes, then a pull round.
        for writer in 0..run.replicas.len() {
            run.write(&fold, writer, true);
        }
        run.heal_and_pull(&fold);
        run.assert_converged(&format!("seed {seed}, written after restoring"));
        if exact_sum {
            assert_eq!(value(&run), Some(run.sum_written()), "seed {seed}");
        }
    }
    println!("pull rounds to converge after healing, by replica count: {rounds_by_size:?}");
}

#[test]
fn a_counter_with_last_writer_wins_converges_to_the_exact_sum() {
    check(|_| Resolver::LastWriterWins, 10, true);
}

#[test]
fn a_resolver_plugin_converges_after_partitions_and_a_restore() {
    check(
        |registry| Resolver::Plugin(registry.get("highest-bid").unwrap()),
        6,
        false,
    );
}

fn load(registry: &PluginRegistry, names: &[&str]) {
    for name in names {
        registry.load(name, &support::plugin_bytes(name)).unwrap();
    }
}

/// The Rust counter folded with `resolver`.
fn counter_with(resolver: Resolver, registry: &PluginRegistry) -> PluginFold {
    PluginFold::new(
        registry.get("counter").unwrap(),
        resolver,
        context("auction", "1", 0),
    )
}

/// The Rust entity with the Python build of the resolver, on the same schedules (same seeds: the
/// schedule does not depend on the fold), ends in exactly the state it reaches with the Rust build.
#[test]
fn the_python_resolver_converges_exactly_as_the_rust_one() {
    let registry = cached_registry(RuntimeLimits::default());
    load(&registry, &["counter", "highest-bid", "highest-bid-py"]);
    let rust = counter_with(
        Resolver::Plugin(registry.get("highest-bid").unwrap()),
        &registry,
    );
    let python = counter_with(
        Resolver::Plugin(registry.get("highest-bid-py").unwrap()),
        &registry,
    );
    for seed in 0..3 {
        let converged = |fold: &PluginFold| {
            let mut run = Run::new(0xA11CE + seed, &registry);
            run.random_schedule(fold);
            run.heal_and_pull(fold);
            run.assert_converged(&format!("seed {seed}"));
            run.replicas[0].state().to_vec()
        };
        assert_eq!(converged(&python), converged(&rust), "seed {seed}");
    }
}

/// Order-sensitive replication under compaction, snapshots, restarts and delayed, lossy heals,
/// checked against a model.
///
/// Replicas write `add`, `set` and `reset` events, and now and then a resolver change (a
/// configuration event), and fold them with a fold whose state is an order-sensitive digest of
/// every payload applied (any two orders differ) and whose resolver decides from the state and
/// the concurrent events — or keeps everything, after a change saying so. Pulls carry the asker's seen-vector, which
/// the answering replica keeps as that replica's report for compaction, exactly as the driver
/// does; replicas compact, snapshot and restart (restore the last snapshot, then fold every
/// stream of a shared journal after it) at random; after a heal one replica's traffic is held
/// back ~1.5 s. The checker folds the union of every event written in the documented total order
/// (HLC timestamp, origin, origin seq nr), asking the resolver whenever applied events before
/// one are concurrent with it, and compares every replica with that, byte for byte.
mod ordered {
    use std::collections::{BTreeMap, BTreeSet};

    use super::support::rng::SplitMix64;
    use ulid::Ulid;
    use weft::journal::EventEnvelope;
    use weft::plugin::PluginError;
    use weft::replication::{
        CONFIG_EVENT, Fold, Replica, ReplicaSnapshot, Resolution, Stamp, order_key,
    };

    const PID: &str = "ledger|1";
    const STEPS: usize = 400;
    /// How long one replica's traffic is held back after a heal.
    const SLOW_HEAL_MS: u64 = 1_500;

    /// State: `value/digest`, the digest an FNV hash over every payload applied, in order.
    pub struct Ledger;

    fn parse(state: &[u8]) -> (i64, u64) {
        let text = std::str::from_utf8(state).expect("utf-8 state");
        let (value, digest) = text.split_once('/').expect("value/digest");
        (value.parse().unwrap(), digest.parse().unwrap())
    }

    pub fn initial() -> Vec<u8> {
        b"0/14695981039346656037".to_vec()
    }

    impl Fold for Ledger {
        fn apply(&self, state: &[u8], event: &EventEnvelope) -> Result<Vec<u8>, PluginError> {
            let (value, digest) = parse(state);
            let payload = std::str::from_utf8(&event.payload).unwrap();
            let value = match payload.split_once(' ') {
                Some(("add", by)) => value + by.parse::<i64>().unwrap(),
                Some(("set", to)) => to.parse().unwrap(),
                _ => 0,
            };
            let digest = event.payload.iter().chain(b";").fold(digest, |h, b| {
                (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
            });
            Ok(format!("{value}/{digest}").into_bytes())
        }

        /// A `set` concurrent with a `reset` becomes `add 1`; otherwise an incoming event is
        /// dropped while the value is odd and kept while it is even.
        fn resolve(
            &self,
            state: &[u8],
            incoming: &EventEnvelope,
            concurrent: &[&EventEnvelope],
        ) -> Result<Resolution, PluginError> {
            let resets = concurrent.iter().any(|event| event.payload == b"reset");
            Ok(if incoming.payload.starts_with(b"set") && resets {
                Resolution::Replace(vec![b"add 1".to_vec()])
            } else if parse(state).0 % 2 != 0 {
                Resolution::Drop
            } else {
                Resolution::Keep
            })
        }

        /// After a configuration event saying `keep`, every concurrent event is kept; after one
        /// saying `default`, the resolver above decides again.
        fn resolve_under(
            &self,
            config: Option<&[u8]>,
            state: &[u8],
            incoming: &EventEnvelope,
            concurrent: &[&EventEnvelope],
        ) -> Result<Resolution, PluginError> {
            match config {
                Some(b"keep") => Ok(Resolution::Keep),
                _ => self.resolve(state, incoming, concurrent),
            }
        }
    }

    /// The model: the union of `events` folded in the documented total order, the resolver
    /// asked about each event that applied events before it are concurrent with, under the
    /// configuration of the last configuration event before it.
    pub fn model(fold: &impl Fold, events: &[EventEnvelope]) -> Vec<u8> {
        let mut sorted: Vec<EventEnvelope> = events.to_vec();
        sorted.sort_by(|a, b| order_key(a).cmp(&order_key(b)));
        let covers = |later: &EventEnvelope, earlier: &EventEnvelope| {
            earlier
                .version
                .iter()
                .all(|(r, c)| *c <= later.version.get(r).copied().unwrap_or(0))
        };
        let mut state = initial();
        let mut config: Option<Vec<u8>> = None;
        let mut applied: Vec<EventEnvelope> = Vec::new();
        for mut event in sorted {
            if event.plugin == CONFIG_EVENT {
                config = Some(event.payload);
                continue;
            }
            let concurrent: Vec<&EventEnvelope> =
                applied.iter().filter(|e| !covers(&event, e)).collect();
            event.concurrent = !concurrent.is_empty();
            let resolution = if concurrent.is_empty() {
                Resolution::Keep
            } else {
                fold.resolve_under(config.as_deref(), &state, &event, &concurrent)
                    .unwrap()
            };
            match resolution {
                Resolution::Keep => state = fold.apply(&state, &event).unwrap(),
                Resolution::Drop => continue,
                Resolution::Replace(payloads) => {
                    for payload in payloads {
                        let replacement = EventEnvelope {
                            payload,
                            ..event.clone()
                        };
                        state = fold.apply(&state, &replacement).unwrap();
                    }
                }
            }
            applied.push(event);
        }
        state
    }

    enum Body {
        Push(Box<EventEnvelope>),
        /// A pull: the sender's seen-vector.
        Pull(BTreeMap<String, u64>),
        Answer(Vec<EventEnvelope>),
    }

    struct InFlight {
        at_ms: u64,
        from: usize,
        to: usize,
        body: Body,
    }

    struct Node {
        replica: Replica,
        /// Per other replica, the seen-vector of its last pull that arrived here.
        reports: BTreeMap<String, BTreeMap<String, u64>>,
        saved: Option<ReplicaSnapshot>,
    }

    pub struct Run<'f, F: Fold> {
        fold: &'f F,
        rng: SplitMix64,
        names: Vec<String>,
        nodes: Vec<Node>,
        /// Every event written, per origin in order: the shared journal.
        journal: Vec<Vec<EventEnvelope>>,
        in_flight: Vec<InFlight>,
        sides: Option<Vec<bool>>,
        now_ms: u64,
        skew_ms: Vec<u64>,
        drop_per_mille: u64,
        /// (replica, until): this replica's messages are held back until then.
        slow: Option<(usize, u64)>,
        pub compacted: usize,
        pub restarts: usize,
    }

    impl<'f, F: Fold> Run<'f, F> {
        pub fn new(seed: u64, fold: &'f F) -> Self {
            let mut rng = SplitMix64(seed);
            let count = 3 + rng.below(3) as usize;
            let names: Vec<String> = (0..count).map(|i| format!("r{i}")).collect();
            let nodes = names
                .iter()
                .map(|name| Node {
                    replica: Replica::new(name, PID, Ulid::new(), initial()),
                    reports: BTreeMap::new(),
                    saved: None,
                })
                .collect();
            let skew_ms = (0..count).map(|_| rng.below(50)).collect();
            let drop_per_mille = rng.below(301);
            Run {
                fold,
                rng,
                names,
                nodes,
                journal: vec![Vec::new(); count],
                in_flight: Vec::new(),
                sides: None,
                now_ms: 0,
                skew_ms,
                drop_per_mille,
                slow: None,
                compacted: 0,
                restarts: 0,
            }
        }

        fn send(&mut self, from: usize, to: usize, body: Body, lossy: bool) {
            let cut = self.sides.as_ref().is_some_and(|s| s[from] != s[to]);
            if cut || (lossy && self.rng.below(1000) < self.drop_per_mille) {
                return;
            }
            let mut at_ms = self.now_ms + 1 + self.rng.below(200);
            if let Some((slow, until)) = self.slow
                && slow == from
            {
                at_ms = at_ms.max(until);
            }
            self.in_flight.push(InFlight {
                at_ms,
                from,
                to,
                body,
            });
        }

        /// One event of `writer`: mostly `add`, `set` or `reset`; now and then a resolver change.
        fn write(&mut self, writer: usize) {
            let (plugin, payload) = match self.rng.below(40) {
                0 => (CONFIG_EVENT, "keep".to_owned()),
                1 => (CONFIG_EVENT, "default".to_owned()),
                2..=9 => ("ledger@1", "reset".to_owned()),
                10..=21 => ("ledger@1", format!("set {}", self.rng.below(20))),
                _ => ("ledger@1", format!("add {}", 1 + self.rng.below(9))),
            };
            let stamp = Stamp {
                now: (self.now_ms + self.skew_ms[writer]) << 16,
                plugin: plugin.into(),
                fencing_token: 0,
            };
            let events = self.nodes[writer]
                .replica
                .emit(self.fold, vec![payload.into_bytes()], &stamp)
                .expect("a ledger fold never fails");
            for event in events {
                self.journal[writer].push(event.clone());
                for to in 0..self.nodes.len() {
                    if to != writer {
                        self.send(writer, to, Body::Push(Box::new(event.clone())), true);
                    }
                }
            }
        }

        fn pull(&mut self, from: usize, to: usize, lossy: bool) {
            let seen = self.nodes[from].replica.seen().clone();
            self.send(from, to, Body::Pull(seen), lossy);
        }

        /// What `at` answers a pull with: its own events from its journal stream (compaction
        /// drops them from memory), the others' it still holds.
        fn answer(&self, at: usize, seen: &BTreeMap<String, u64>) -> Vec<EventEnvelope> {
            let own = seen.get(&self.names[at]).copied().unwrap_or(0);
            let mut events: Vec<EventEnvelope> = self.journal[at]
                .iter()
                .filter(|event| event.origin_seq_nr > own)
                .cloned()
                .collect();
            events.extend(
                self.nodes[at]
                    .replica
                    .missing_for(seen)
                    .into_iter()
                    .filter(|event| event.origin_replica != self.names[at]),
            );
            events.sort_by(|a, b| order_key(a).cmp(&order_key(b)));
            events
        }

        fn deliver(&mut self, message: InFlight, lossy: bool) {
            let InFlight { from, to, body, .. } = message;
            match body {
                Body::Push(event) => self.receive(to, vec![*event]),
                Body::Answer(events) => self.receive(to, events),
                Body::Pull(seen) => {
                    let events = self.answer(to, &seen);
                    let from_name = self.names[from].clone();
                    self.nodes[to].reports.insert(from_name, seen);
                    if !events.is_empty() {
                        self.send(to, from, Body::Answer(events), lossy);
                    }
                }
            }
        }

        fn receive(&mut self, to: usize, events: Vec<EventEnvelope>) {
            for event in events {
                self.nodes[to]
                    .replica
                    .receive(self.fold, event)
                    .expect("a ledger fold never fails");
            }
        }

        fn tick(&mut self, step_ms: u64, lossy: bool) {
            self.now_ms += step_ms;
            let (mut due, rest): (Vec<InFlight>, Vec<InFlight>) =
                std::mem::take(&mut self.in_flight)
                    .into_iter()
                    .partition(|message| message.at_ms <= self.now_ms);
            self.in_flight = rest;
            for i in (1..due.len()).rev() {
                due.swap(i, self.rng.below(i as u64 + 1) as usize);
            }
            for message in due {
                self.deliver(message, lossy);
            }
        }

        fn compact(&mut self, at: usize) {
            let node = &mut self.nodes[at];
            self.compacted += node.replica.compact(&self.names, &node.reports);
        }

        /// Restores the last snapshot (through its encoding) and folds every stream of the
        /// shared journal after it, sorted in the total order, as the driver's recovery does.
        fn restart(&mut self, at: usize) {
            self.restarts += 1;
            let name = &self.names[at];
            let mut replica = match self.nodes[at].saved.clone() {
                Some(saved) => {
                    let bytes = rmp_serde::to_vec_named(&saved).unwrap();
                    let saved = rmp_serde::from_slice(&bytes).unwrap();
                    Replica::restore(name, PID, Ulid::new(), saved, self.fold).expect("restore")
                }
                None => Replica::new(name, PID, Ulid::new(), initial()),
            };
            let mut events: Vec<EventEnvelope> = self
                .journal
                .iter()
                .flatten()
                .filter(|e| {
                    e.origin_seq_nr > replica.seen().get(&e.origin_replica).copied().unwrap_or(0)
                })
                .cloned()
                .collect();
            events.sort_by(|a, b| order_key(a).cmp(&order_key(b)));
            for event in events {
                replica.receive(self.fold, event).expect("fold");
            }
            self.nodes[at].replica = replica;
        }

        pub fn schedule(&mut self) {
            let count = self.nodes.len() as u64;
            for _ in 0..STEPS {
                let a = self.rng.below(count) as usize;
                let b = (a + 1 + self.rng.below(count - 1) as usize) % count as usize;
                match self.rng.below(100) {
                    0..=2 => {
                        let sides = (0..count).map(|_| self.rng.below(2) == 0).collect();
                        self.sides = Some(sides);
                    }
                    3..=5 if self.sides.is_some() => {
                        // A heal at which one replica's traffic is held back.
                        self.sides = None;
                        self.slow = Some((a, self.now_ms + SLOW_HEAL_MS));
                    }
                    6..=20 => self.pull(a, b, true),
                    21..=35 => self.compact(a),
                    36..=38 => self.nodes[a].saved = Some(self.nodes[a].replica.snapshot()),
                    39 => self.restart(a),
                    _ => self.write(a),
                }
                let step = self.rng.below(60);
                self.tick(step, true);
            }
        }

        /// Heals, delivers everything, and runs reliable pull rounds (compacting on the way)
        /// until every replica has seen every event written.
        pub fn heal(&mut self) -> Result<(), String> {
            self.sides = None;
            self.slow = None;
            let written: BTreeMap<String, u64> = self
                .journal
                .iter()
                .zip(&self.names)
                .filter(|(events, _)| !events.is_empty())
                .map(|(events, name)| (name.clone(), events.len() as u64))
                .collect();
            for _ in 0..10 {
                self.tick(2_000, false);
                if self.nodes.iter().all(|n| *n.replica.seen() == written) {
                    return Ok(());
                }
                for from in 0..self.nodes.len() {
                    for to in 0..self.nodes.len() {
                        if from != to {
                            self.pull(from, to, false);
                        }
                    }
                }
                for at in 0..self.nodes.len() {
                    self.compact(at);
                }
            }
            Err("replicas have not seen every event after 10 pull rounds".into())
        }

        /// Every replica's state equals the model's.
        pub fn check(&self, when: &str) -> Result<(), String> {
            let all: Vec<EventEnvelope> = self.journal.iter().flatten().cloned().collect();
            let expected = model(self.fold, &all);
            for node in &self.nodes {
                let state = node.replica.state();
                if state != expected.as_slice() {
                    return Err(format!(
                        "{when}: {} folded {} but the model of {} events is {}",
                        node.replica.name(),
                        String::from_utf8_lossy(state),
                        all.len(),
                        String::from_utf8_lossy(&expected)
                    ));
                }
            }
            let origins: BTreeSet<&String> = all.iter().map(|e| &e.origin_replica).collect();
            if origins.len() < 2 {
                return Err(format!(
                    "{when}: the schedule wrote from fewer than 2 replicas"
                ));
            }
            Ok(())
        }

        /// Snapshots and restarts every replica, then checks again.
        pub fn restart_all(&mut self) {
            for at in 0..self.nodes.len() {
                self.nodes[at].saved = Some(self.nodes[at].replica.snapshot());
                self.restart(at);
            }
        }

        /// Every replica writes once more after the restarts, then heals again.
        pub fn write_everywhere(&mut self) {
            for at in 0..self.nodes.len() {
                self.write(at);
            }
        }
    }
}

/// Runs `run` for each seed (`WEFT_SIM_SEED` runs that one only) and panics with the replay
/// command on the first failure.
fn for_each_seed(
    test: &str,
    seeds: std::ops::Range<u64>,
    mut run: impl FnMut(u64) -> Result<(), String>,
) {
    let seeds: Vec<u64> = match std::env::var("WEFT_SIM_SEED") {
        Ok(seed) => vec![seed.parse().expect("WEFT_SIM_SEED is a u64")],
        Err(_) => seeds.collect(),
    };
    for seed in seeds {
        if let Err(failure) = run(seed) {
            panic!(
                "{test} failed with seed {seed}: {failure}\n\
                 replay: WEFT_SIM_SEED={seed} cargo test -p weft --test replication_simulation {test}"
            );
        }
    }
}

#[test]
fn order_sensitive_events_under_compaction_and_restarts_match_the_model() {
    let mut compacted = 0;
    let mut restarts = 0;
    for_each_seed(
        "order_sensitive_events_under_compaction_and_restarts_match_the_model",
        0..30,
        |seed| {
            let mut run = ordered::Run::new(seed, &ordered::Ledger);
            run.schedule();
            run.heal()?;
            run.check("after healing")?;
            run.restart_all();
            run.check("after restarting every replica")?;
            run.write_everywhere();
            run.heal()?;
            run.check("after writing on the restarted replicas")?;
            compacted += run.compacted;
            restarts += run.restarts;
            Ok(())
        },
    );
    println!("compacted {compacted} events, {restarts} restarts");
    assert!(
        compacted > 0,
        "the schedules never compacted: they test nothing"
    );
}
