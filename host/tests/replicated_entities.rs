//! Replicated entities in one process: two entity systems, replicas `a` and `b`, linked by an
//! in-process [`Peers`] that can be cut. They converge, recover from their own snapshots and
//! every replica's stream, refuse commands while their own events wait for their causal past,
//! pick up a hot-swapped plugin at the next command, fence a paused former lease holder on every
//! replica's stream (lease mode), and refuse what they are not configured for
//! with the reason.

mod support;

use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::pause::Gate;
use support::{eventually, from_msgpack, msgpack, plugin_bytes};
use ulid::Ulid;
use weft::clock::NodeClock;
use weft::entity::{CommandOptions, IdempotencyKey, Notification, lease_name};
use weft::entity::{
    EntityError, EntitySystem, EntityTypeConfig, ReplicationConfig, SystemSettings,
};
use weft::journal::{EventEnvelope, InMemoryJournal, Journal};
use weft::lease::{InMemoryLease, Lease};
use weft::plugin::{PluginRegistry, PluginRuntime, RuntimeLimits};
use weft::replication::{CONFIG_EVENT, Peers, ReplicationBody, ReplicationMessage};

const DEADLINE: Duration = Duration::from_secs(30);

/// Delivers replication messages to the linked systems, unless cut.
#[derive(Default)]
struct Link {
    systems: Mutex<HashMap<String, EntitySystem>>,
    cut: AtomicBool,
}

struct Endpoint {
    link: Arc<Link>,
    from: String,
}

impl Peers for Endpoint {
    fn send(&self, replica: &str, message: ReplicationMessage) {
        if self.link.cut.load(Ordering::SeqCst) {
            return;
        }
        let systems = self.link.systems.lock().unwrap();
        if let Some(system) = systems.get(replica).cloned() {
            let from = self.from.clone();
            tokio::spawn(async move { system.replicate(&from, message).await });
        }
    }
}

fn plugins() -> Arc<PluginRegistry> {
    let runtime = PluginRuntime::new(RuntimeLimits::default(), None).unwrap();
    let plugins = Arc::new(PluginRegistry::new(Arc::new(runtime)));
    plugins.load("counter", &plugin_bytes("counter")).unwrap();
    plugins
}

fn tally(resolver: &str) -> EntityTypeConfig {
    EntityTypeConfig {
        snapshot_every: 3,
        replication: Some(ReplicationConfig {
            replicas: vec!["a".into(), "b".into()],
            resolver: resolver.into(),
            pull_interval_ms: 50,
        }),
        ..EntityTypeConfig::for_plugin("counter")
    }
}

/// Replica `name` on `journal`, linked through `link` when given.
fn replica(
    name: &str,
    journal: Arc<dyn Journal>,
    plugins: &Arc<PluginRegistry>,
    link: Option<&Arc<Link>>,
) -> EntitySystem {
    replica_with_lease(name, journal, Arc::new(InMemoryLease::new()), plugins, link)
}

fn replica_with_lease(
    name: &str,
    journal: Arc<dyn Journal>,
    lease: Arc<dyn Lease>,
    plugins: &Arc<PluginRegistry>,
    link: Option<&Arc<Link>>,
) -> EntitySystem {
    let settings = SystemSettings {
        writer_id: Ulid::new(),
        replica: name.to_owned(),
        clustered: true,
        per_node_journal: false,
    };
    let system = EntitySystem::new(
        journal,
        lease,
        plugins.clone(),
        settings,
        NodeClock::default(),
    );
    system
        .bind_type("tally", tally("last-writer-wins"))
        .unwrap();
    if let Some(link) = link {
        system.set_peers(Arc::new(Endpoint {
            link: link.clone(),
            from: name.to_owned(),
        }));
        link.systems
            .lock()
            .unwrap()
            .insert(name.to_owned(), system.clone());
    }
    system
}

fn increment(by: i64) -> Vec<u8> {
    msgpack(&json!({"op": "increment", "by": by}))
}

/// The counter's value, or `"catching up"` while the replica refuses reads as catching up.
async fn value(system: &EntitySystem) -> Value {
    match system.state("tally", "x").await {
        Ok(state) => from_msgpack(&state.state)["value"].clone(),
        Err(EntityError::CatchingUp { .. }) => json!("catching up"),
        Err(error) => panic!("state read failed: {error}"),
    }
}

async fn wait_for_value(systems: &[&EntitySystem], expected: i64) {
    let started = Instant::now();
    loop {
        let mut values = Vec::new();
        for system in systems {
            values.push(value(system).await);
        }
        if values.iter().all(|value| *value == json!(expected)) {
            return;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "the replicas hold {values:?}, not {expected}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_converge_and_a_restarted_one_recovers_from_its_snapshot_and_every_stream() {
    let journal: Arc<dyn Journal> = Arc::new(InMemoryJournal::new());
    let plugins = plugins();
    let link = Arc::new(Link::default());
    let a = replica("a", journal.clone(), &plugins, Some(&link));
    let b = replica("b", journal.clone(), &plugins, Some(&link));
    let (a_writes, b_writes) = (a.clone(), b.clone());
    let writers = [
        tokio::spawn(async move {
            for _ in 0..5 {
                a_writes.ask("tally", "x", increment(1)).await.unwrap();
            }
        }),
        tokio::spawn(async move {
            for _ in 0..4 {
                b_writes.ask("tally", "x", increment(10)).await.unwrap();
            }
        }),
    ];
    for writer in writers {
        writer.await.unwrap();
    }
    wait_for_value(&[&a, &b], 45).await;
    // Each replica wrote its own stream, and snapshotted it every 3 of its own events.
    assert_eq!(journal.highest_seq_nr("tally|x|a").await, Ok(5));
    assert_eq!(journal.highest_seq_nr("tally|x|b").await, Ok(4));
    assert_eq!(journal.highest_seq_nr("tally|x").await, Ok(0));
    let snapshot = journal.latest_snapshot("tally|x|a").await.unwrap().unwrap();
    assert_eq!(snapshot.seq_nr, 3);

    // A fresh replica a, alone, recovers the whole state from the shared journal.
    let restarted = replica("a", journal.clone(), &plugins, None);
    assert_eq!(value(&restarted).await, json!(45));
    let state = restarted.state("tally", "x").await.unwrap();
    assert_eq!(state.seq_nr, 9, "events folded, from both replicas");
    let reply = restarted.ask("tally", "x", increment(100)).await.unwrap();
    assert_eq!(reply.seq_nr, 6, "its own sixth event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_its_own_journal_refuses_commands_until_pulls_bring_what_its_events_follow()
{
    let plugins = plugins();
    let link = Arc::new(Link::default());
    let a_journal: Arc<dyn Journal> = Arc::new(InMemoryJournal::new());
    let a = replica("a", a_journal.clone(), &plugins, Some(&link));
    let b = replica("b", Arc::new(InMemoryJournal::new()), &plugins, Some(&link));
    b.ask("tally", "x", increment(10)).await.unwrap();
    wait_for_value(&[&a, &b], 10).await;
    // a's own event follows b's, which only b's journal holds.
    a.ask("tally", "x", increment(1)).await.unwrap();
    wait_for_value(&[&a, &b], 11).await;

    // a restarts on its own journal, cut off: its event waits for b's, so it takes no command.
    link.cut.store(true, Ordering::SeqCst);
    let restarted = replica("a", a_journal, &plugins, Some(&link));
    let refused = restarted.ask("tally", "x", increment(1)).await.unwrap_err();
    assert!(
        matches!(refused, EntityError::CatchingUp { waiting: 1, .. }),
        "{refused:?}"
    );
    assert_eq!(refused.code(), "replica_catching_up");
    // Nor does it show its partial state (0: b's event is missing) as current.
    let read = restarted.state("tally", "x").await.unwrap_err();
    assert!(
        matches!(&read, EntityError::CatchingUp { waiting: 1, unheard, .. } if unheard == &["b"]),
        "{read:?}"
    );

    // Reconnected, its pulls bring b's event; then it writes on.
    link.cut.store(false, Ordering::SeqCst);
    wait_for_value(&[&restarted], 11).await;
    let reply = restarted.ask("tally", "x", increment(100)).await.unwrap();
    assert_eq!(reply.seq_nr, 2);
    wait_for_value(&[&restarted, &b], 111).await;
}

#[tokio::test]
async fn what_a_node_is_not_configured_for_is_refused_with_the_reason() {
    let plugins = plugins();
    let journal: Arc<dyn Journal> = Arc::new(InMemoryJournal::new());
    let outsider = EntitySystem::single_host(journal.clone(), plugins.clone());
    outsider
        .bind_type("tally", tally("last-writer-wins"))
        .unwrap();
    let refused = outsider.ask("tally", "x", increment(1)).await.unwrap_err();
    assert_eq!(refused.code(), "not_a_replica");
    assert!(
        refused.to_string().contains("replicated on a, b"),
        "{refused}"
    );

    // An entity plugin named as the resolver.
    let a = replica("a", journal, &plugins, None);
    a.bind_type("tally", tally("counter")).unwrap();
    let refused = a.ask("tally", "x", increment(1)).await.unwrap_err();
    assert_eq!(refused.code(), "not_a_resolver");
    assert!(refused.to_string().contains("not a resolver"), "{refused}");

    // Replica lists that cannot work are refused when the type is bound.
    let mut twice = tally("last-writer-wins");
    twice.replication.as_mut().unwrap().replicas = vec!["a".into(), "a".into()];
    let error = a.bind_type("tally", twice).unwrap_err();
    assert!(error.to_string().contains("listed twice"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_swapped_plugin_handles_the_next_command_of_an_active_replica() {
    let plugins = plugins();
    plugins
        .load("versioned", &plugin_bytes("versioned"))
        .unwrap();
    let a = replica("a", Arc::new(InMemoryJournal::new()), &plugins, None);
    let config = EntityTypeConfig {
        plugin: "versioned".into(),
        ..tally("last-writer-wins")
    };
    a.bind_type("echo", config).unwrap();
    let build = |reply: &[u8]| from_msgpack(reply)["build"].clone();
    let first = a.ask("echo", "x", msgpack(&json!({"n": 1}))).await.unwrap();
    assert_eq!(build(&first.reply), json!(1));
    plugins
        .load("versioned", &plugin_bytes("versioned-v2"))
        .unwrap();
    let second = a.ask("echo", "x", msgpack(&json!({"n": 2}))).await.unwrap();
    assert_eq!(build(&second.reply), json!(2));
    assert_ne!(second.plugin, first.plugin);
    assert_eq!(second.seq_nr, 2);
}

/// Lease mode: a, the holder, pauses with an append in flight; its lease expires and b takes over,
/// recording its token on every replica's stream. When a resumes, its append to its own stream is
/// refused, it reports the loss once, and it observes b's writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_lease_holder_is_fenced_on_its_own_stream_when_another_replica_takes_over() {
    let plugins = plugins();
    let link = Arc::new(Link::default());
    let journal: Arc<dyn Journal> = Arc::new(InMemoryJournal::new());
    let lease: Arc<dyn Lease> = Arc::new(InMemoryLease::new());
    let (a_gate, b_gate) = (Gate::new(), Gate::new());
    let paused = |name: &str, gate: &Arc<Gate>| {
        let system = replica_with_lease(
            name,
            gate.journal(&journal),
            gate.lease(&lease),
            &plugins,
            Some(&link),
        );
        let mut config = EntityTypeConfig {
            single_writer: true,
            lease_ttl_ms: 2_000,
            snapshot_every: 0,
            ..tally("last-writer-wins")
        };
        // No snapshots, and pulls only on activation: neither a snapshot nor an answer to a
        // pull may be what the pause catches instead of the append.
        config.replication.as_mut().unwrap().pull_interval_ms = 60_000;
        system.bind_type("ledger", config).unwrap();
        system
    };
    let (a, b) = (paused("a", &a_gate), paused("b", &b_gate));
    let mut a_notifications = a.notifications().subscribe();
    for _ in 0..3 {
        a.ask("ledger", "z", increment(1)).await.unwrap();
    }
    let Ok(Notification::LeaseAcquired {
        fencing_token: a_token,
        ..
    }) = a_notifications.recv().await
    else {
        panic!("a's first notification is its lease")
    };
    // b observes (activated by a's pushes or by this query) and refuses commands naming a.
    let refused = b.ask("ledger", "z", increment(5)).await.unwrap_err();
    assert_eq!(refused.code(), "not_writer");
    assert!(refused.to_string().contains("and a@"), "{refused}");

    // b's activation pull is answered before a pauses.
    eventually("a answers b's pull", || async {
        a.metrics()
            .replication_pulls_answered
            .load(Ordering::SeqCst)
            > 0
    })
    .await;
    a_gate.pause();
    let in_flight = {
        let a = a.clone();
        tokio::spawn(async move { a.ask("ledger", "z", increment(100)).await })
    };
    a_gate.wait_until_waiting("append", DEADLINE).await;
    // Its renewals wait at the gate: the lease expires (and b, contending, may take it at once).
    eventually("a's lease expires", || async {
        let holder = lease.holder(&lease_name("ledger|z")).await.unwrap();
        !holder.is_some_and(|holder| holder.owner.starts_with("a@"))
    })
    .await;
    // b takes over, once its manager holds the lease.
    let started = Instant::now();
    let reply = loop {
        match b.ask("ledger", "z", increment(10)).await {
            Ok(reply) => break reply,
            Err(error) => assert!(started.elapsed() < DEADLINE, "b never took over: {error}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(reply.seq_nr, 1, "b's first own event");
    let b_token = journal.fence("ledger|z|a").await.unwrap();
    assert!(
        b_token > a_token,
        "b's token {b_token} is recorded on a's stream too"
    );

    a_gate.resume();
    let refused = in_flight.await.unwrap().unwrap_err();
    assert_eq!(refused.code(), "stale_fencing_token", "{refused}");
    match tokio::time::timeout(DEADLINE, a_notifications.recv()).await {
        Ok(Ok(Notification::LeaseLost {
            fencing_token,
            reason,
            ..
        })) => assert_eq!((fencing_token, reason), (a_token, "fenced")),
        other => panic!("expected a's lease loss, got {other:?}"),
    }
    assert_eq!(journal.highest_seq_nr("ledger|z|a").await, Ok(3));
    assert_eq!(journal.highest_seq_nr("ledger|z|b").await, Ok(1));
    // a recovers (its failed write stopped it) and follows b's write.
    eventually("a follows b's write", || async {
        from_msgpack(&a.state("ledger", "z").await.unwrap().state)["value"] == json!(13)
    })
    .await;
}

/// Replica `b`'s event `seq` as it would arrive after a heal: it saw only its own earlier
/// events, and its timestamp sorts it after `after` (so the resolver is asked about it).
fn event_of_b(seq: u64, after: &EventEnvelope, payload: Value) -> EventEnvelope {
    EventEnvelope {
        persistence_id: "tally|x|b".into(),
        seq_nr: seq,
        origin_replica: "b".into(),
        origin_seq_nr: seq,
        version: [("b".to_string(), seq)].into(),
        timestamp: after.timestamp + seq,
        concurrent: false,
        payload: msgpack(&payload),
        ..after.clone()
    }
}

/// A resolver that loops, or traps, on an event that arrives after a heal: the replica parks the
/// event with the plugin's error (the state and the node's parked list show it, each failing
/// event folded once however often it is offered again), and goes on answering reads and
/// writes; the events after the parked one wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolver_that_loops_or_traps_parks_the_event_and_the_replica_keeps_serving() {
    let limits = RuntimeLimits {
        cpu_per_call_ms: 200,
        ..RuntimeLimits::default()
    };
    let plugins = Arc::new(PluginRegistry::new(Arc::new(
        PluginRuntime::new(limits, None).unwrap(),
    )));
    for name in ["counter", "hostile-resolver"] {
        plugins.load(name, &plugin_bytes(name)).unwrap();
    }
    for (hostile, code) in [
        ("spin", "plugin_cpu_bound_exceeded"),
        ("trap", "plugin_trapped"),
    ] {
        let journal: Arc<dyn Journal> = Arc::new(InMemoryJournal::new());
        let link = Arc::new(Link::default());
        let a = replica("a", journal.clone(), &plugins, Some(&link));
        a.bind_type("tally", tally("hostile-resolver")).unwrap();
        a.ask("tally", "x", increment(1)).await.unwrap();
        let own = journal.read("tally|x|a", 1, 1).await.unwrap().remove(0);
        // The heal: b's events arrive, and arrive again with every pull answer.
        let poisoned = event_of_b(
            1,
            &own,
            json!({"type": "incremented", "by": 10, "hostile": hostile}),
        );
        let after = event_of_b(2, &own, json!({"type": "incremented", "by": 100}));
        let offers = 5;
        for _ in 0..offers {
            let body = ReplicationBody::Events {
                events: vec![poisoned.clone(), after.clone()],
                complete: true,
            };
            let message = ReplicationMessage {
                entity_type: "tally".into(),
                entity_id: "x".into(),
                body,
            };
            a.replicate("b", message).await;
        }
        // Reads and writes answer (the deadline is the test's; no fold of the poisoned event
        // runs again to make them wait).
        let written = tokio::time::timeout(DEADLINE, a.ask("tally", "x", increment(2)))
            .await
            .expect("a write answers")
            .unwrap();
        assert_eq!(written.seq_nr, 2);
        let state = tokio::time::timeout(DEADLINE, a.state("tally", "x"))
            .await
            .expect("a read answers")
            .unwrap();
        assert_eq!(from_msgpack(&state.state)["value"], json!(3), "{hostile}");
        let status = state.replica.expect("a replica's status");
        assert_eq!(
            status.resolver,
            plugins.get("hostile-resolver").unwrap().id()
        );
        assert_eq!(status.parked.len(), 1, "{hostile}: {:?}", status.parked);
        let parked = &status.parked[0];
        assert_eq!(
            (
                parked.origin_replica.as_str(),
                parked.origin_seq_nr,
                parked.code.as_str()
            ),
            ("b", 1, code)
        );
        assert!(
            parked.error.contains("hostile-resolver"),
            "{}",
            parked.error
        );
        // The node reports it (`/health` shows this list), and counts one failed fold.
        assert_eq!(a.parked(), status.parked);
        assert_eq!(
            a.metrics().replicated_folds_failed.load(Ordering::SeqCst),
            1
        );
        assert_eq!(
            a.metrics().replicated_events_parked.load(Ordering::SeqCst),
            1
        );
    }
}

/// A resolver change under load: replica a records it (a configuration event in its own stream,
/// at its point of a's history) while both replicas write; a folds on with the new build, its
/// value still the exact sum of every increment (the change itself changes no state); b, which
/// lacks that build, folds everything before the change, stops at it and says so (the change is
/// parked with `plugin_version_missing`), still takes commands, and folds on once it loads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolver_change_takes_effect_at_its_point_and_a_replica_without_the_build_stops_there() {
    let journal: Arc<dyn Journal> = Arc::new(InMemoryJournal::new());
    let with_build = plugins();
    with_build
        .load("bids", &plugin_bytes("highest-bid"))
        .unwrap();
    let bids = with_build.get("bids").unwrap().id().to_owned();
    let link = Arc::new(Link::default());
    let a = replica("a", journal.clone(), &with_build, Some(&link));
    let without_build = plugins();
    let b = replica("b", journal.clone(), &without_build, Some(&link));
    let b_writes = b.clone();
    let b_writer = tokio::spawn(async move {
        for _ in 0..20 {
            b_writes.ask("tally", "x", increment(10)).await.unwrap();
        }
    });
    for _ in 0..10 {
        a.ask("tally", "x", increment(1)).await.unwrap();
    }
    let changed = a.change_resolver("tally", "x", "bids").await.unwrap();
    assert_eq!(from_msgpack(&changed.reply), json!({"resolver": bids}));
    for _ in 0..10 {
        a.ask("tally", "x", increment(1)).await.unwrap();
    }
    b_writer.await.unwrap();
    b.ask("tally", "x", increment(1000)).await.unwrap();

    // The change is in a's stream, at its point of a's history.
    let stream = journal.read("tally|x|a", 1, 100).await.unwrap();
    let configs: Vec<&EventEnvelope> = stream
        .iter()
        .filter(|event| event.plugin == CONFIG_EVENT)
        .collect();
    assert_eq!(configs.len(), 1);
    assert_eq!((configs[0].origin_seq_nr, stream.len()), (11, 21));
    assert_eq!(changed.seq_nr, 11);
    // a: every increment counts, folded on with the new build.
    wait_for_value(&[&a], 1_220).await;
    let status = a.state("tally", "x").await.unwrap().replica.unwrap();
    assert_eq!(
        (status.resolver.as_str(), status.parked.len()),
        (bids.as_str(), 0)
    );
    // b: everything before the change, nothing of a's after it, and it says why.
    wait_for_value(&[&b], 10 + 200 + 1_000).await;
    let status = b.state("tally", "x").await.unwrap().replica.unwrap();
    assert_eq!(status.resolver, "last-writer-wins");
    let [parked] = status.parked.as_slice() else {
        panic!("{:?}", status.parked)
    };
    assert_eq!(
        (
            parked.origin_replica.as_str(),
            parked.origin_seq_nr,
            parked.code.as_str()
        ),
        ("a", 11, "plugin_version_missing")
    );
    assert!(parked.error.contains(&bids), "{}", parked.error);
    assert_eq!(b.parked(), status.parked);
    b.ask("tally", "x", increment(1)).await.unwrap();

    // Once b loads that build, it folds on from the change: both hold everything.
    without_build
        .load("bids", &plugin_bytes("highest-bid"))
        .unwrap();
    wait_for_value(&[&a, &b], 1_221).await;
    let status = b.state("tally", "x").await.unwrap().replica.unwrap();
    assert_eq!(
        (status.resolver.as_str(), status.parked.len()),
        (bids.as_str(), 0)
    );
    assert!(b.parked().is_empty());
}

/// Each replica writes its own stream, so a retry landing on another replica could not find the
/// first attempt's key: keys are refused, and nothing is applied.
#[tokio::test]
async fn a_replicated_type_refuses_idempotency_keys() {
    let journal: Arc<dyn Journal> = Arc::new(InMemoryJournal::new());
    let a = replica("a", journal.clone(), &plugins(), None);
    let keyed = CommandOptions {
        deadline: None,
        idempotency_key: Some(IdempotencyKey::parse("k").unwrap()),
    };
    let refused = a.ask_with("tally", "x", increment(1), keyed).await;
    assert!(
        matches!(refused, Err(EntityError::IdempotencyUnsupported(_))),
        "{refused:?}"
    );
    assert!(journal.read("tally|x|a", 1, 10).await.unwrap().is_empty());
}
