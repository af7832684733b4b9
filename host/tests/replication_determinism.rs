//! Replicas converge whatever the delivery order: small causal histories over three replicas,
//! delivered in every order (all permutations up to 6 events, seeded random ones for 7 and 8,
//! with duplicates), through the causal buffer into a merge log, give byte-identical states —
//! for the counter plugin with last-writer-wins, with first-writer-wins, and with the
//! highest-bid resolver plugin; and the Rust entity folded with the Python or the JavaScript build
//! of that resolver ends in exactly the state it reaches with the Rust build.

mod support;

use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use support::rng::SplitMix64;
use support::{cached_registry, context, msgpack, plugin_bytes};
use weft::journal::EventEnvelope;
use weft::plugin::{PluginRegistry, PluginRuntime, RuntimeLimits};
use weft::replication::{CausalBuffer, MergeLog, Offer, PluginFold, Resolver};

const REPLICAS: [&str; 3] = ["a", "b", "c"];

/// One replica while a history is generated.
#[derive(Default, Clone)]
struct ReplicaClock {
    version: BTreeMap<String, u64>,
    /// HLC: above every timestamp this replica has seen.
    timestamp: u64,
}

/// `events` bids/increments written by random replicas that now and then first receive another
/// replica's history, so some events are causally ordered and others concurrent. Timestamps
/// sometimes tie across replicas.
fn history(rng: &mut SplitMix64, events: usize) -> Vec<EventEnvelope> {
    let mut clocks: Vec<ReplicaClock> = vec![ReplicaClock::default(); REPLICAS.len()];
    let mut written = Vec::new();
    for _ in 0..events {
        let writer = rng.below(3) as usize;
        if rng.below(2) == 0 {
            let source = clocks[rng.below(3) as usize].clone();
            let clock = &mut clocks[writer];
            for (replica, counter) in source.version {
                let entry = clock.version.entry(replica).or_default();
                *entry = (*entry).max(counter);
            }
            clock.timestamp = clock.timestamp.max(source.timestamp);
        }
        let clock = &mut clocks[writer];
        let origin = REPLICAS[writer];
        let seq = clock.version.get(origin).copied().unwrap_or(0) + 1;
        clock.version.insert(origin.to_owned(), seq);
        clock.timestamp += 1 + rng.below(2);
        let amount = 1 + rng.below(5);
        written.push(EventEnvelope {
            persistence_id: "auction|1".into(),
            seq_nr: seq,
            writer: ulid::Ulid::nil(),
            fencing_token: 0,
            timestamp: clock.timestamp,
            origin_replica: origin.to_owned(),
            origin_seq_nr: seq,
            version: clock.version.clone(),
            concurrent: false,
            plugin: "counter@test".into(),
            payload: msgpack(&json!({"type": "incremented", "by": amount, "amount": amount})),
            idempotency: None,
        });
    }
    written
}

/// Delivers `order` (indexes into `events`, repeats allowed) to a fresh replica.
fn deliver(
    fold: &PluginFold,
    initial: &[u8],
    events: &[EventEnvelope],
    order: &[usize],
) -> Vec<u8> {
    let mut buffer = CausalBuffer::new(BTreeMap::new(), 64);
    let mut log = MergeLog::new(initial.to_vec());
    for &index in order {
        if let Offer::Delivered(delivered) = buffer.offer(events[index].clone()) {
            for event in delivered {
                log.insert(fold, event).expect("fold");
            }
        }
    }
    assert_eq!(buffer.waiting(), 0, "every event was delivered");
    log.state().to_vec()
}

fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![Vec::new()];
    }
    let mut all = Vec::new();
    for rest in permutations(n - 1) {
        for position in 0..=rest.len() {
            let mut order = rest.clone();
            order.insert(position, n - 1);
            all.push(order);
        }
    }
    all
}

/// Random orders with some events offered two or three times.
fn shuffled_with_duplicates(rng: &mut SplitMix64, n: usize, count: usize) -> Vec<Vec<usize>> {
    (0..count)
        .map(|_| {
            let mut order: Vec<usize> = (0..n).collect();
            for _ in 0..rng.below(4) {
                order.push(rng.below(n as u64) as usize);
            }
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i as u64 + 1) as usize);
            }
            order
        })
        .collect()
}

fn check_convergence(resolver: impl Fn(&PluginRegistry) -> Resolver) {
    let runtime = PluginRuntime::new(RuntimeLimits::default(), None).unwrap();
    let registry = PluginRegistry::new(Arc::new(runtime));
    registry.load("counter", &plugin_bytes("counter")).unwrap();
    registry
        .load("highest-bid", &plugin_bytes("highest-bid"))
        .unwrap();
    let entity = registry.get("counter").unwrap();
    let fold = PluginFold::new(
        entity.clone(),
        resolver(&registry),
        context("auction", "1", 0),
    );
    let initial = entity.init(&context("auction", "1", 0)).unwrap();
    let mut rng = SplitMix64(0x5EED);
    for events in 2..=8 {
        for _history in 0..4 {
            let history = history(&mut rng, events);
            let reference = deliver(&fold, &initial, &history, &(0..events).collect::<Vec<_>>());
            let orders = if events <= 6 {
                permutations(events)
            } else {
                shuffled_with_duplicates(&mut rng, events, 300)
            };
            for order in orders {
                let state = deliver(&fold, &initial, &history, &order);
                assert_eq!(
                    state, reference,
                    "delivery order {order:?} of history {history:#?}"
                );
            }
        }
    }
}

#[test]
fn counter_with_last_writer_wins_converges_in_every_order() {
    check_convergence(|_| Resolver::LastWriterWins);
}

#[test]
fn counter_with_first_writer_wins_converges_in_every_order() {
    check_convergence(|_| Resolver::FirstWriterWins);
}

#[test]
fn a_resolver_plugin_converges_in_every_order() {
    check_convergence(|registry| Resolver::Plugin(registry.get("highest-bid").unwrap()));
}

#[test]
fn duplicates_are_applied_once() {
    let mut rng = SplitMix64(7);
    let history = history(&mut rng, 6);
    let mut buffer = CausalBuffer::new(BTreeMap::new(), 64);
    let mut delivered = 0;
    for copy in 0..3 {
        for event in &history {
            match buffer.offer(event.clone()) {
                Offer::Delivered(events) => delivered += events.len(),
                Offer::Duplicate => assert!(copy > 0 || delivered > 0),
                Offer::Buffered | Offer::Overflow => {}
            }
        }
    }
    assert_eq!(delivered, history.len());
}

/// One resolver, written in Rust, Python and JavaScript, serves the same Rust entity: in every
/// delivery order of every history, the state with the Python or the JavaScript build is
/// byte-identical to the state with the Rust build.
#[test]
fn the_python_and_javascript_resolvers_converge_exactly_as_the_rust_one() {
    let registry = cached_registry(RuntimeLimits::default());
    for name in ["counter", "highest-bid", "highest-bid-py", "highest-bid-js"] {
        registry.load(name, &plugin_bytes(name)).unwrap();
    }
    let entity = registry.get("counter").unwrap();
    let ctx = context("auction", "1", 0);
    let fold_with = |resolver: &str| {
        PluginFold::new(
            entity.clone(),
            Resolver::Plugin(registry.get(resolver).unwrap()),
            ctx.clone(),
        )
    };
    let rust = fold_with("highest-bid");
    let others = [fold_with("highest-bid-py"), fold_with("highest-bid-js")];
    let initial = entity.init(&ctx).unwrap();
    let mut rng = SplitMix64(0xB1D);
    let mut compared = 0;
    for events in 2..=7 {
        for _history in 0..2 {
            let history = history(&mut rng, events);
            // Every order up to 5 events; seeded random ones (with duplicates) above.
            let orders = if events <= 5 {
                permutations(events)
            } else {
                shuffled_with_duplicates(&mut rng, events, 40)
            };
            for order in orders {
                let expected = deliver(&rust, &initial, &history, &order);
                for other in &others {
                    let state = deliver(other, &initial, &history, &order);
                    assert_eq!(state, expected, "order {order:?} of history {history:#?}");
                    compared += 1;
                }
            }
        }
    }
    assert!(compared > 400, "{compared} states compared");
}
