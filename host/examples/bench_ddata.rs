//! Benchmark of DistributedData (a program, not a test): `cargo xtask bench ddata`.
//!
//! Drives `Replicator`s through their public API on an in-memory network in virtual time (the
//! same sans-IO core a node runs), and measures:
//!
//! - convergence: after every key is updated once on a random node, the virtual time until every
//!   node holds every key, and the bytes sent, for 3, 5 and 10 nodes and 100 and 1,000 keys, on a
//!   lossless network and with 20% of messages lost (anti-entropy repairs those);
//! - local updates per second on one node (real time);
//! - the bytes that carry a 1% change of a 10,000-element OR-Set: the delta, against the full
//!   state a new node receives by anti-entropy.

use std::time::Instant;

use weft::cluster::NodeName;
use weft::ddata::{Consistency, Kind, Op, Replicator, ReplicatorAction, ReplicatorConfig};
use weft_crdt::ReplicaId;

/// Virtual milliseconds between ticks (what a node's service uses).
const TICK_MS: u64 = 100;
/// Give up on a run after this much virtual time.
const HORIZON_MS: u64 = 600_000;

/// A seeded splitmix64: the benchmark is the same every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }
}

fn name(index: usize) -> NodeName {
    NodeName::new(format!("node-{index}")).expect("a valid name")
}

fn cluster(nodes: usize) -> Vec<Replicator> {
    let names: Vec<NodeName> = (0..nodes).map(name).collect();
    names
        .iter()
        .map(|node| {
            let replica = ReplicaId::incarnation(node.as_str(), "01JBENCH0000000000000000000");
            let mut replicator =
                Replicator::new(node.clone(), replica, ReplicatorConfig::default(), 0);
            replicator.members_changed(names.iter().cloned());
            replicator
        })
        .collect()
}

/// Delivers every message sent (losing `loss_per_mille` of them) until nothing is in flight;
/// returns the bytes sent.
fn exchange(
    replicators: &mut [Replicator],
    rng: &mut Rng,
    loss_per_mille: u64,
    now_ms: u64,
) -> u64 {
    let mut bytes = 0;
    loop {
        let mut in_flight = Vec::new();
        for (from, replicator) in replicators.iter_mut().enumerate() {
            for action in replicator.drain_actions() {
                if let ReplicatorAction::Send { to, bytes: message } = action {
                    bytes += message.len() as u64;
                    in_flight.push((from, to, message));
                }
            }
        }
        if in_flight.is_empty() {
            return bytes;
        }
        for (from, to, message) in in_flight {
            if rng.below(1000) < loss_per_mille {
                continue;
            }
            let to_index = replicators
                .iter()
                .position(|r| *r.node() == to)
                .expect("a node");
            let from_name = name(from);
            replicators[to_index]
                .handle_message(&from_name, &message, now_ms)
                .expect("a valid message");
        }
    }
}

fn converged(replicators: &[Replicator], keys: usize) -> bool {
    replicators
        .iter()
        .all(|replicator| replicator.keys().count() == keys)
        && replicators.windows(2).all(|pair| {
            pair[0]
                .keys()
                .all(|key| pair[0].get(key) == pair[1].get(key))
        })
}

/// Every key updated once on a random node; (virtual ms to converge, bytes sent).
fn convergence(nodes: usize, keys: usize, loss_per_mille: u64) -> (u64, u64) {
    let mut rng = Rng(nodes as u64 * 1_000 + keys as u64);
    let mut replicators = cluster(nodes);
    for key in 0..keys {
        let writer = rng.below(nodes as u64) as usize;
        replicators[writer]
            .update(
                &format!("counter-{key}"),
                Kind::GCounter,
                &Op::Increment { by: 1 },
                Consistency::Local,
                0,
                0,
            )
            .expect("an update");
    }
    let mut bytes = 0;
    let mut now_ms = 0;
    while !converged(&replicators, keys) {
        now_ms += TICK_MS;
        assert!(
            now_ms < HORIZON_MS,
            "{nodes} nodes, {keys} keys: no convergence"
        );
        for replicator in replicators.iter_mut() {
            replicator.tick(now_ms);
        }
        bytes += exchange(&mut replicators, &mut rng, loss_per_mille, now_ms);
    }
    (now_ms, bytes)
}

fn updates_per_second() -> f64 {
    const UPDATES: u64 = 200_000;
    let mut replicators = cluster(1);
    let node = &mut replicators[0];
    let started = Instant::now();
    for update in 0..UPDATES {
        node.update(
            &format!("counter-{}", update % 1_000),
            Kind::PNCounter,
            &Op::Increment { by: 1 },
            Consistency::Local,
            0,
            update,
        )
        .expect("an update");
        node.drain_actions().for_each(drop);
    }
    UPDATES as f64 / started.elapsed().as_secs_f64()
}

/// (full-state bytes a joining node receives, delta bytes of a 1% change).
fn delta_against_full() -> (u64, u64) {
    const ELEMENTS: usize = 10_000;
    let mut rng = Rng(7);
    let mut pair = cluster(2);
    // Node 0 builds the set alone, then node 1 joins and is brought up to date by anti-entropy.
    pair[0].members_changed([name(0)]);
    for index in 0..ELEMENTS {
        let op = Op::Add {
            element: format!("item-{index:05}"),
        };
        pair[0]
            .update("cart", Kind::ORSet, &op, Consistency::Local, 0, 0)
            .expect("an add");
        pair[0].drain_actions().for_each(drop);
    }
    pair[0].tick(TICK_MS);
    pair[0].drain_actions().for_each(drop);
    pair[0].members_changed([name(0), name(1)]);
    let mut full = 0;
    let mut now_ms = TICK_MS;
    while pair[1].get("cart") != pair[0].get("cart") {
        now_ms += 1_000;
        for replicator in pair.iter_mut() {
            replicator.tick(now_ms);
        }
        full += exchange(&mut pair, &mut rng, 0, now_ms);
    }
    for index in 0..ELEMENTS / 100 {
        let op = if index % 2 == 0 {
            Op::Remove {
                element: format!("item-{index:05}"),
            }
        } else {
            Op::Add {
                element: format!("new-{index:05}"),
            }
        };
        pair[0]
            .update("cart", Kind::ORSet, &op, Consistency::Local, 0, now_ms)
            .expect("an op");
    }
    // One tick pushes the deltas (before the next anti-entropy round is due).
    pair[0].tick(now_ms + TICK_MS);
    let delta = exchange(&mut pair, &mut rng, 0, now_ms + TICK_MS);
    assert_eq!(
        pair[0].get("cart"),
        pair[1].get("cart"),
        "the delta alone converges"
    );
    (full, delta)
}

fn main() {
    println!("convergence after every key is updated once on a random node (virtual time):");
    println!("| nodes | keys | loss | time to converge | bytes sent |");
    println!("| ---: | ---: | ---: | ---: | ---: |");
    for loss in [0, 200] {
        for nodes in [3, 5, 10] {
            for keys in [100, 1_000] {
                let (ms, bytes) = convergence(nodes, keys, loss);
                println!("| {nodes} | {keys} | {}% | {ms} ms | {bytes} |", loss / 10);
            }
        }
    }
    println!("local updates on one node: {:.0}/s", updates_per_second());
    let (full, delta) = delta_against_full();
    println!(
        "10,000-element OR-Set: full state to a new node {full} bytes; a 1% change (50 removes, \
         50 adds) as deltas {delta} bytes ({:.2}%)",
        100.0 * delta as f64 / full as f64
    );
}
