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
