//! Resolvers are pure and contained. The same conflict, asked twice or with its concurrent events
//! shuffled, gets the same resolution from each build of the highest-bid resolver (Rust, Python,
//! JavaScript). A resolver that traps or runs past its CPU bound fails the fold with a clear error
//! naming it, and leaves the replica exactly as it was; the replica goes on folding, and takes the
//! refused event again once the resolver behaves.

mod support;

use serde_json::json;
use std::collections::BTreeMap;
use support::rng::SplitMix64;
use support::{cached_registry, context, from_msgpack, msgpack};
use ulid::Ulid;
use weft::journal::EventEnvelope;
use weft::plugin::{PluginError, PluginRegistry, RuntimeLimits};
use weft::replication::{Fold, PluginFold, Replica, Resolver};

/// An event of `origin` with the version vector `version`, carrying `payload`.
fn event(
    origin: &str,
    version: &[(&str, u64)],
    timestamp: u64,
    payload: serde_json::Value,
) -> EventEnvelope {
    let version: BTreeMap<String, u64> = version
        .iter()
        .map(|(replica, counter)| (replica.to_string(), *counter))
        .collect();
    EventEnvelope {
        persistence_id: "auction|1".into(),
        seq_nr: version[origin],
        writer: Ulid::nil(),
        fencing_token: 0,
        timestamp,
        origin_replica: origin.into(),
        origin_seq_nr: version[origin],
        version,
        concurrent: false,
        plugin: "counter@test".into(),
        payload: msgpack(&payload),
        idempotency: None,
    }
}

fn registry(limits: RuntimeLimits) -> PluginRegistry {
    let registry = cached_registry(limits);
    for name in [
        "counter",
        "highest-bid",
        "highest-bid-py",
        "highest-bid-js",
        "hostile-resolver",
    ] {
        registry.load(name, &support::plugin_bytes(name)).unwrap();
    }
    registry
}

fn fold(registry: &PluginRegistry, resolver: &str) -> PluginFold {
    PluginFold::new(
        registry.get("counter").unwrap(),
        Resolver::Plugin(registry.get(resolver).unwrap()),
        context("auction", "1", 0),
    )
}

#[test]
fn the_same_conflict_gets_the_same_resolution_in_any_order() {
    let registry = registry(RuntimeLimits::default());
    let state = registry
        .get("counter")
        .unwrap()
        .init(&context("auction", "1", 0))
        .unwrap();
    let replicas = ["a", "b", "c", "d", "e", "f"];
    let mut rng = SplitMix64(0xC0F1);
    for resolver in ["highest-bid", "highest-bid-py", "highest-bid-js"] {
        let fold = fold(&registry, resolver);
        for case in 0..60 {
            // An incoming bid and up to five concurrent ones from other replicas, amounts often
            // tied so the replica order decides.
            let concurrent_count = 1 + rng.below(5) as usize;
            let bid = |rng: &mut SplitMix64, origin: &str, timestamp: u64| {
                let amount = 1 + rng.below(4);
                event(
                    origin,
                    &[(origin, 1)],
                    timestamp,
                    json!({"type": "incremented", "by": amount, "amount": amount}),
                )
            };
            let incoming = bid(&mut rng, replicas[0], 100);
            let mut concurrent: Vec<EventEnvelope> = (1..=concurrent_count)
                .map(|index| bid(&mut rng, replicas[index], 100 + index as u64))
                .collect();
            let ask = |concurrent: &[EventEnvelope]| {
                let refs: Vec<&EventEnvelope> = concurrent.iter().collect();
                fold.resolve(&state, &incoming, &refs).expect("resolves")
            };
            let first = ask(&concurrent);
            assert_eq!(
                ask(&concurrent),
                first,
                "{resolver}, case {case}: asked twice"
            );
            for _shuffle in 0..3 {
                for i in (1..concurrent.len()).rev() {
                    concurrent.swap(i, rng.below(i as u64 + 1) as usize);
                }
                assert_eq!(ask(&concurrent), first, "{resolver}, case {case}: shuffled");
            }
        }
    }
}

#[test]
fn a_resolver_that_traps_or_spins_fails_the_fold_and_changes_nothing() {
    let registry = registry(RuntimeLimits {
        cpu_per_call_ms: 100,
        ..RuntimeLimits::default()
    });
    let fold = fold(&registry, "hostile-resolver");
    let initial = registry
        .get("counter")
        .unwrap()
        .init(&context("auction", "1", 0))
        .unwrap();
    let mut replica = Replica::new("a", "auction|1", Ulid::new(), initial);
    let increment = |by: i64| json!({"type": "incremented", "by": by});
    // Two concurrent increments: the resolver is asked and keeps the second.
    assert_eq!(
        replica
            .receive(&fold, event("b", &[("b", 1)], 10, increment(1)))
            .unwrap(),
        1
    );
    assert_eq!(
        replica
            .receive(&fold, event("c", &[("c", 1)], 20, increment(10)))
            .unwrap(),
        1
    );
    let value = |replica: &Replica| from_msgpack(replica.state())["value"].as_i64();
    assert_eq!(value(&replica), Some(11));

    let before = (
        replica.state().to_vec(),
        replica.seen().clone(),
        replica.events().count(),
    );
    let unchanged = |replica: &Replica| {
        (
            replica.state().to_vec(),
            replica.seen().clone(),
            replica.events().count(),
        )
    };
    let trap = event(
        "d",
        &[("d", 1)],
        30,
        json!({"type": "incremented", "by": 100, "hostile": "trap"}),
    );
    match replica.receive(&fold, trap.clone()) {
        Err(PluginError::Trapped { plugin, message }) => {
            assert!(plugin.starts_with("hostile-resolver@"), "{plugin}");
            assert!(
                message.contains("deliberate trap in a resolver"),
                "{message}"
            );
        }
        other => panic!("a trapping resolver must fail the fold, got {other:?}"),
    }
    assert_eq!(unchanged(&replica), before, "a trap changes nothing");

    // A resolver that spins is stopped at its CPU bound; the replica keeps its old state too.
    let spin = event(
        "e",
        &[("e", 1)],
        50,
        json!({"type": "incremented", "by": 1000, "hostile": "spin"}),
    );
    match replica.receive(&fold, spin) {
        Err(PluginError::CpuBoundExceeded { plugin, .. }) => {
            assert!(plugin.starts_with("hostile-resolver@"), "{plugin}");
        }
        other => panic!("a spinning resolver must be stopped, got {other:?}"),
    }
    assert_eq!(
        unchanged(&replica),
        before,
        "a stopped resolver changes nothing"
    );

    // The replica goes on, and the trapped event was not counted as seen: it can come again.
    assert_eq!(
        replica
            .receive(&fold, event("f", &[("f", 1)], 60, increment(7)))
            .unwrap(),
        1
    );
    assert_eq!(value(&replica), Some(18));
    assert_eq!(replica.seen().get("d"), None);
    let behaving = EventEnvelope {
        payload: msgpack(&increment(100)),
        ..trap
    };
    assert_eq!(replica.receive(&fold, behaving).unwrap(), 1);
    assert_eq!(value(&replica), Some(118));
}
