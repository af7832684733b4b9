//! Placed entities of a cluster (neither single-writer nor replicated) over one shared journal:
//! every activation advances the entity's fence, so when two hosts (or two activations on one
//! host) hold the entity at once, the older one's append is refused with a stale token instead
//! of interleaving with the newer one's. The stream then reads as tenures (`A@1 B@2 A@3`), and
//! recovery in `fail` mode accepts it; the older one answers no read from its memory either.
//! Outside a cluster nothing is fenced.

mod support;

use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use support::{eventually, from_msgpack, msgpack};
use ulid::Ulid;
use weft::clock::NodeClock;
use weft::entity::{EntityError, EntitySystem, EntityTypeConfig, SystemSettings};
use weft::journal::{InMemoryJournal, Journal, ReplayFilterMode};
use weft::lease::InMemoryLease;

/// One host over `journal` with its own writer id, serving `counter` as a plain (placed) type.
fn host(journal: &Arc<dyn Journal>, writer_id: Ulid, clustered: bool) -> EntitySystem {
    let plugins = support::counter_registry();
    let settings = SystemSettings {
        writer_id,
        replica: writer_id.to_string(),
        clustered,
        per_node_journal: false,
    };
    let lease = Arc::new(InMemoryLease::new());
    let system = EntitySystem::new(
        journal.clone(),
        lease,
        plugins,
        settings,
        NodeClock::default(),
    );
    let config = EntityTypeConfig {
        replay_filter: ReplayFilterMode::Fail,
        ..EntityTypeConfig::for_plugin("counter")
    };
    system.bind_type("counter", config).expect("bind counter");
    system
}

async fn increment(system: &EntitySystem, id: &str, by: i64) -> Result<u64, EntityError> {
    let command = msgpack(&json!({"op": "increment", "by": by}));
    Ok(system.ask("counter", id, command).await?.seq_nr)
}

/// The entity's value as a fresh host recovers it (replay filter in `fail` mode).
async fn recovered_value(journal: &Arc<dyn Journal>, id: &str) -> Result<(i64, u64), EntityError> {
    let fresh = host(journal, Ulid::new(), true);
    let state = fresh.state("counter", id).await?;
    let value = from_msgpack(&state.state)["value"].as_i64().expect("value");
    Ok((value, state.seq_nr))
}

/// Waits until `system` hosts no actor (a fenced one stops on its own).
async fn wait_until_idle(system: &EntitySystem) {
    eventually("the fenced activation stops", || async {
        system.active_entities() == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_activation_is_fenced_and_the_stream_recovers() {
    let journal: Arc<dyn Journal> = Arc::new(InMemoryJournal::new());
    let (a_id, b_id) = (Ulid::from_parts(1, 1), Ulid::from_parts(2, 2));
    let (a, b) = (host(&journal, a_id, true), host(&journal, b_id, true));

    // A activates the entity, then B does too (placement moved it) while A's actor still runs.
    increment(&a, "x", 1).await.expect("A's first increment");
    increment(&b, "x", 10)
        .await
        .expect("B takes the entity over");
    // A's activation is the older one: its append must not land after B's.
    let stale = increment(&a, "x", 100).await;
    wait_until_idle(&a).await;
    // Placement moves the entity back to A: a new activation, a new tenure.
    increment(&a, "x", 1000).await.expect("A's new activation");
    // B's activation is now the older one.
    let stale_again = increment(&b, "x", 10_000).await;

    // Recovery in `fail` mode accepts the stream, and it holds exactly the acknowledged commands.
    assert_eq!(
        recovered_value(&journal, "x")
            .await
            .expect("a fresh host recovers the entity"),
        (1 + 10 + 1000, 3)
    );
    assert!(
        matches!(stale, Err(EntityError::Fenced(_))),
        "the older activation's append is refused with a stale token: {stale:?}"
    );
    assert!(
        matches!(stale_again, Err(EntityError::Fenced(_))),
        "{stale_again:?}"
    );
    let events = journal.read("counter|x", 1, 100).await.unwrap();
    let tenures: Vec<(Ulid, u64)> = events
        .iter()
        .map(|event| (event.writer, event.fencing_token))
        .collect();
    assert_eq!(tenures, vec![(a_id, 1), (b_id, 2), (a_id, 3)]);
    assert_eq!(journal.fence("counter|x").await, Ok(4), "B's activation");
}

/// A read on the older activation, after a newer one wrote: never answered from the older one's
/// memory (which still holds the value before the newer one's write).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_activation_answers_no_read_from_memory() {
    let journal: Arc<dyn Journal> = Arc::new(InMemoryJournal::new());
    let (a, b) = (
        host(&journal, Ulid::new(), true),
        host(&journal, Ulid::new(), true),
    );
    increment(&a, "z", 1).await.expect("A's increment");
    increment(&b, "z", 10)
        .await
        .expect("B takes the entity over");
    let read = a.state("counter", "z").await;
    assert!(
        matches!(read, Err(EntityError::Fenced(_))),
        "the read on A's activation is refused as fenced: {:?}",
        read.map(|state| from_msgpack(&state.state))
    );
    wait_until_idle(&a).await;
    // A's next activation is the newer one, and reads what B wrote.
    let state = a.state("counter", "z").await.expect("A's new activation");
    assert_eq!(from_msgpack(&state.state)["value"], 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_activations_on_many_hosts_never_share_a_token() {
    const HOSTS: usize = 4;
    const ROUNDS: i64 = 6;
    let journal: Arc<dyn Journal> = Arc::new(InMemoryJournal::new());
    let hosts: Vec<EntitySystem> = (0..HOSTS)
        .map(|_| host(&journal, Ulid::new(), true))
        .collect();
    // Every host sends to the same entity at once, round after round: each round, the hosts
    // whose activation a newer one fenced fail their command (not applied, so not counted), and
    // activate the entity again in the next round.
    let mut acknowledged = 0;
    for round in 0..ROUNDS {
        let sends = hosts.iter().enumerate().map(|(number, system)| {
            let by = 10_i64.pow(number as u32) * (round + 1);
            async move { increment(system, "y", by).await.map(|_| by) }
        });
        for outcome in futures::future::join_all(sends).await {
            match outcome {
                Ok(by) => acknowledged += by,
                Err(EntityError::Fenced(_) | EntityError::Stopped(_)) => {}
                Err(other) => panic!("only a fenced activation may fail: {other}"),
            }
        }
    }
    let (value, _) = recovered_value(&journal, "y")
        .await
        .expect("a fresh host recovers the entity");
    assert_eq!(value, acknowledged);
    let events = journal.read("counter|y", 1, 10_000).await.unwrap();
    let mut writers_by_token: BTreeMap<u64, BTreeSet<Ulid>> = BTreeMap::new();
    for event in &events {
        writers_by_token
            .entry(event.fencing_token)
            .or_default()
            .insert(event.writer);
    }
    assert!(
        writers_by_token.values().all(|writers| writers.len() == 1),
        "one writer per token: {writers_by_token:?}"
    );
    let tokens: Vec<u64> = events.iter().map(|event| event.fencing_token).collect();
    assert!(
        tokens.windows(2).all(|pair| pair[0] <= pair[1]) && tokens.iter().all(|token| *token > 0),
        "tokens only rise along the stream: {tokens:?}"
    );
}

#[tokio::test]
async fn outside_a_cluster_nothing_is_fenced() {
    let journal: Arc<dyn Journal> = Arc::new(InMemoryJournal::new());
    let single = host(&journal, Ulid::new(), false);
    increment(&single, "z", 1).await.unwrap();
    increment(&single, "z", 2).await.unwrap();
    assert_eq!(journal.fence("counter|z").await, Ok(0));
    let events = journal.read("counter|z", 1, 10).await.unwrap();
    assert!(events.iter().all(|event| event.fencing_token == 0));
}
