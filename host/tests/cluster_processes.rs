//! A cluster of real `weft serve` processes on loopback sharing a real PostgreSQL journal: 3 actor
//! nodes and 2 gateways. Clients send commands through both gateways; one actor node is killed
//! with SIGKILL under load, then a fourth joins. Every acknowledged command is in the journal
//! exactly once, nothing is applied twice, and each entity's state is the sum of its events. A plain
//! (placed) type moved back and forth as nodes stop, are killed and come back still recovers.

mod support;

use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::cluster::{
    TestCluster, amounts_applied_once, cluster_view, inject_fault, wait_for_members,
};
use support::node::{ServeProcess, get_json};
use support::services::Postgres;
use weft::journal::{Journal, PostgresJournal};

use support::cluster::DEADLINE;
const ENTITIES: usize = 12;
const CLIENTS: usize = 4;

/// What the clients sent: per entity, the amounts acknowledged and those that failed (each
/// amount is sent once and is unique, so a duplicate in the journal is visible).
#[derive(Default)]
struct Ledger {
    acked: BTreeMap<usize, Vec<i64>>,
    failed: BTreeMap<usize, Vec<i64>>,
    /// Failures by error code, for the report.
    errors: BTreeMap<String, usize>,
}

/// Attempts per command before a client gives up on it; each attempt sends a new amount, so an
/// attempt that failed but was applied anyway is still told apart from the one that succeeded.
const ATTEMPTS_MAX: usize = 5;

/// Sends `count` increments, round robin over the entities, alternating gateways; a command that
/// fails is tried again (with a new amount) after a pause, as a client honouring `Retry-After`
/// would.
async fn client(
    entity_type: &'static str,
    number: usize,
    count: usize,
    first_amount: i64,
    gateways: Vec<String>,
    ledger: Arc<Mutex<Ledger>>,
) {
    let http = reqwest::Client::new();
    for sent in 0..count {
        let entity = (number + sent) % ENTITIES;
        for attempt in 0..ATTEMPTS_MAX {
            let amount = first_amount + ((sent * CLIENTS + number) * ATTEMPTS_MAX + attempt) as i64;
            let gateway = &gateways[(sent + attempt) % gateways.len()];
            let response = http
                .post(format!("{gateway}/entities/{entity_type}/e{entity}"))
                .json(&json!({"op": "increment", "by": amount}))
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            let outcome = match response {
                Ok(response) if response.status() == 200 => Ok(()),
                Ok(response) => {
                    let body: Value = response.json().await.unwrap_or(Value::Null);
                    Err(body["error"]["code"].as_str().unwrap_or("?").to_owned())
                }
                Err(error) => Err(format!("transport: {error}")),
            };
            let acked = {
                let mut ledger = ledger.lock().unwrap();
                match outcome {
                    Ok(()) => {
                        ledger.acked.entry(entity).or_default().push(amount);
                        true
                    }
                    Err(code) => {
                        ledger.failed.entry(entity).or_default().push(amount);
                        *ledger.errors.entry(code).or_default() += 1;
                        false
                    }
                }
            };
            if acked {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn load(
    entity_type: &'static str,
    phase: i64,
    count: usize,
    gateways: &[String],
    ledger: &Arc<Mutex<Ledger>>,
) {
    let clients: Vec<_> = (0..CLIENTS)
        .map(|number| {
            tokio::spawn(client(
                entity_type,
                number,
                count,
                phase * 1_000_000,
                gateways.to_vec(),
                ledger.clone(),
            ))
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }
}

fn acked_count(ledger: &Arc<Mutex<Ledger>>) -> usize {
    ledger.lock().unwrap().acked.values().map(Vec::len).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_actor_node_and_a_joining_one_lose_and_duplicate_nothing() {
    let postgres = Postgres::start();
    let cluster = TestCluster::new(&postgres, "a1").await;
    let a1 = cluster.start("a1", "actor");
    let a2 = cluster.start("a2", "actor");
    let a3 = cluster.start("a3", "actor");
    let g1 = cluster.start("g1", "gateway");
    let g2 = cluster.start("g2", "gateway");
    let http = reqwest::Client::new();
    for node in [&a1, &a2, &a3, &g1, &g2] {
        wait_for_members(&http, &node.url, &["a1", "a2", "a3", "g1", "g2"]).await;
    }
    let gateways = vec![g1.url.clone(), g2.url.clone()];
    let ledger = Arc::new(Mutex::new(Ledger::default()));

    // Phase 1: all three actor nodes up; every command goes through a gateway to its owner.
    load("counter", 1, 30, &gateways, &ledger).await;
    assert_eq!(
        acked_count(&ledger),
        CLIENTS * 30,
        "{:?}",
        ledger.lock().unwrap().errors
    );
    let a2_entities = cluster_view(&http, &a2.url).await.unwrap()["active_entities"]
        .as_array()
        .unwrap()
        .len();
    assert!(a2_entities > 0, "a2 hosts some of the {ENTITIES} entities");
    for gateway in [&g1, &g2] {
        let view = cluster_view(&http, &gateway.url).await.unwrap();
        assert_eq!(
            view["active_entities"],
            json!([]),
            "a gateway hosts nothing"
        );
    }

    // Phase 2: kill a2 under load. Requests for its entities fail (retryably) until the others
    // declare it down and its leases expire, then its entities come back on a1 and a3.
    let during = {
        let (gateways, ledger) = (gateways.clone(), ledger.clone());
        tokio::spawn(async move { load("counter", 2, 60, &gateways, &ledger).await })
    };
    a2.kill();
    during.await.unwrap();
    for node in [&a1, &a3, &g1, &g2] {
        wait_for_members(&http, &node.url, &["a1", "a3", "g1", "g2"]).await;
    }
    let before = acked_count(&ledger);
    load("counter", 3, 30, &gateways, &ledger).await;
    assert_eq!(
        acked_count(&ledger) - before,
        CLIENTS * 30,
        "after detection every command succeeds (within {ATTEMPTS_MAX} attempts): {:?}",
        ledger.lock().unwrap().errors
    );

    // Phase 4: a fourth actor node joins under load and takes its share.
    let during = {
        let (gateways, ledger) = (gateways.clone(), ledger.clone());
        tokio::spawn(async move { load("counter", 4, 60, &gateways, &ledger).await })
    };
    let a4 = cluster.start("a4", "actor");
    for node in [&a1, &a3, &a4, &g1, &g2] {
        wait_for_members(&http, &node.url, &["a1", "a3", "a4", "g1", "g2"]).await;
    }
    during.await.unwrap();
    load("counter", 5, 30, &gateways, &ledger).await;
    let a4_entities = cluster_view(&http, &a4.url).await.unwrap()["active_entities"]
        .as_array()
        .unwrap()
        .len();
    assert!(
        a4_entities > 0,
        "the new node hosts its share of the entities"
    );

    check_against_the_journal(&cluster.database, "counter", &gateways, &ledger).await;
    drop((a1, a3, a4, g1, g2));
}

/// The journal against what the clients saw: every acknowledged amount exactly once, nothing
/// twice, nothing unsent, only retryable failures; and the state each entity reports through
/// `gateways` (which recovers it wherever it is placed now) is the sum of its events.
async fn check_against_the_journal(
    database: &str,
    entity_type: &str,
    gateways: &[String],
    ledger: &Arc<Mutex<Ledger>>,
) {
    let journal = PostgresJournal::open(database).await.unwrap();
    let http = reqwest::Client::new();
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    let failures_not_retryable: Vec<&String> = ledger
        .errors
        .keys()
        .filter(|code| {
            !matches!(
                code.as_str(),
                "owner_unreachable"
                    | "no_owner"
                    | "not_writer"
                    | "entity_stopped"
                    | "node_stopping"
                    | "stale_fencing_token"
                    | "plugins_loading"
            ) && !code.starts_with("transport:")
        })
        .collect();
    assert!(
        failures_not_retryable.is_empty(),
        "only retryable errors: {:?}",
        ledger.errors
    );
    for entity in 0..ENTITIES {
        let pid = format!("{entity_type}|e{entity}");
        let unique = amounts_applied_once(&journal, &pid).await;
        let acked = ledger.acked.get(&entity).cloned().unwrap_or_default();
        let failed: BTreeSet<i64> = ledger
            .failed
            .get(&entity)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .collect();
        for amount in &acked {
            assert!(
                unique.contains(amount),
                "{pid}: acknowledged {amount} is lost"
            );
        }
        for amount in &unique {
            assert!(
                acked.contains(amount) || failed.contains(amount),
                "{pid}: {amount} was never sent"
            );
        }
        let url = format!(
            "{}/entities/{entity_type}/e{entity}",
            gateways[entity % gateways.len()]
        );
        let state = get_json(&http, &url).await;
        assert_eq!(
            state["state"]["value"].as_i64(),
            Some(unique.iter().sum::<i64>()),
            "{pid}: {state}"
        );
        assert_eq!(state["seq_nr"].as_u64(), Some(unique.len() as u64));
    }
    eprintln!(
        "acknowledged {} commands; failed {:?}",
        ledger.acked.values().map(Vec::len).sum::<usize>(),
        ledger.errors
    );
}

/// Sends one increment of `amount` to `entity` through `url`; whether it was acknowledged.
async fn increment(http: &reqwest::Client, url: &str, entity: usize, amount: i64) -> bool {
    http.post(format!("{url}/entities/counter/e{entity}"))
        .json(&json!({"op": "increment", "by": amount}))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .is_ok_and(|response| response.status() == 200)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_node_never_gives_an_entity_two_writers_and_the_cluster_heals() {
    let postgres = Postgres::start();
    let cluster = TestCluster {
        fault_injection: true,
        ..TestCluster::new(&postgres, "p1").await
    };
    let start = |name: &str| cluster.start(name, "actor");
    let (p1, p2, p3) = (start("p1"), start("p2"), start("p3"));
    let http = reqwest::Client::new();
    for node in [&p1, &p2, &p3] {
        wait_for_members(&http, &node.url, &["p1", "p2", "p3"]).await;
    }
    for entity in 0..ENTITIES {
        assert!(
            increment(&http, &p1.url, entity, 1).await,
            "e{entity} before the cut"
        );
    }

    // Cut p3 off from p1 and p2 (the database stays reachable from both sides).
    inject_fault(
        &http,
        &p3.url,
        json!({"fault": "partition", "from": ["p1", "p2"]}),
    )
    .await;
    for node in [&p1, &p2] {
        inject_fault(
            &http,
            &node.url,
            json!({"fault": "partition", "from": ["p3"]}),
        )
        .await;
    }
    wait_for_members(&http, &p1.url, &["p1", "p2"]).await;
    wait_for_members(&http, &p2.url, &["p1", "p2"]).await;
    wait_for_members(&http, &p3.url, &["p3"]).await;

    // Both sides take commands for every entity. Each side believes it owns some entities the
    // other holds the lease of: those wait for the lease and fail; none is written by both.
    let mut sides = Vec::new();
    for (side, url) in [(1, p1.url.clone()), (3, p3.url.clone())] {
        for entity in 0..ENTITIES {
            let (http, url) = (http.clone(), url.clone());
            sides.push(tokio::spawn(async move {
                let mut acked = 0;
                for round in 0..2 {
                    if increment(&http, &url, entity, side * 1_000 + round).await {
                        acked += 1;
                    }
                }
                (side, acked)
            }));
        }
    }
    let mut acked_by_side: BTreeMap<i64, usize> = BTreeMap::new();
    for side in sides {
        let (side, acked) = side.await.unwrap();
        *acked_by_side.entry(side).or_default() += acked;
    }
    // Both sides kept writing the entities whose leases they held.
    assert!(
        acked_by_side.get(&1).is_some_and(|acked| *acked > 0)
            && acked_by_side.get(&3).is_some_and(|acked| *acked > 0),
        "{acked_by_side:?}"
    );
    eprintln!("acknowledged during the partition, by side: {acked_by_side:?}");

    // Heal: one view again, and every entity takes commands through any node.
    for node in [&p1, &p2, &p3] {
        inject_fault(&http, &node.url, json!({"fault": "heal"})).await;
    }
    for node in [&p1, &p2, &p3] {
        wait_for_members(&http, &node.url, &["p1", "p2", "p3"]).await;
    }
    for entity in 0..ENTITIES {
        let started = Instant::now();
        let url = [&p1.url, &p2.url, &p3.url][entity % 3];
        while !increment(&http, url, entity, 1_000_000).await {
            assert!(
                started.elapsed() < DEADLINE,
                "e{entity} takes no command after healing"
            );
        }
    }

    // No stream has two writers for one fencing token, and tokens only rise along a stream.
    let journal = PostgresJournal::open(&cluster.database).await.unwrap();
    for entity in 0..ENTITIES {
        let pid = format!("counter|e{entity}");
        let events = journal.read(&pid, 1, 100_000).await.unwrap();
        let mut writers_by_token: BTreeMap<u64, BTreeSet<ulid::Ulid>> = BTreeMap::new();
        for event in &events {
            writers_by_token
                .entry(event.fencing_token)
                .or_default()
                .insert(event.writer);
        }
        for (token, writers) in &writers_by_token {
            assert_eq!(
                writers.len(),
                1,
                "{pid}: token {token} written by {writers:?}"
            );
        }
        let tokens: Vec<u64> = events.iter().map(|event| event.fencing_token).collect();
        assert!(
            tokens.windows(2).all(|pair| pair[0] <= pair[1]),
            "{pid}: {tokens:?}"
        );
        assert!(
            tokens.iter().all(|token| *token > 0),
            "{pid}: every write fenced"
        );
    }
}

/// A plain entity type (placed, not single-writer) moved back and forth across the actor nodes
/// under load: one stops cleanly and comes back, another is killed and comes back, then the first
/// stops again, sending its entities back to where they were while it was away. Every
/// activation is fenced, so no stream ever reads as two writers interleaving: after the last
/// move every entity recovers (through the cluster, and afresh in `fail` mode), and each holds
/// exactly its acknowledged increments, plus perhaps some whose outcome the client never learnt,
/// none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_type_moved_back_and_forth_recovers_every_entity() {
    let postgres = Postgres::start();
    let cluster = TestCluster {
        extra: "[entities.tally]\nplugin = \"counter\"\n".to_owned(),
        ..TestCluster::new(&postgres, "n1").await
    };
    let (n1, n2, n3) = (
        cluster.start("n1", "actor"),
        cluster.start("n2", "actor"),
        cluster.start("n3", "actor"),
    );
    let g1 = cluster.start("g1", "gateway");
    let all = ["n1", "n2", "n3", "g1"];
    everyone_sees(&[&n1, &n2, &n3, &g1], &all).await;
    // Commands enter through the gateway and through an actor node, which forwards what it does
    // not own.
    let entries = vec![g1.url.clone(), n1.url.clone()];
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let under_load = |phase: i64| {
        let (entries, ledger) = (entries.clone(), ledger.clone());
        tokio::spawn(async move { load("tally", phase, 20, &entries, &ledger).await })
    };
    load("tally", 1, 20, &entries, &ledger).await;

    // n2 stops cleanly: its entities move to n1 and n3; then it comes back and takes its share.
    let during = under_load(2);
    n2.terminate();
    everyone_sees(&[&n1, &n3, &g1], &["n1", "n3", "g1"]).await;
    during.await.unwrap();
    let during = under_load(3);
    let n2 = cluster.start("n2", "actor");
    everyone_sees(&[&n1, &n2, &n3, &g1], &all).await;
    during.await.unwrap();

    // n3 is killed: its entities move once it is declared down; then it comes back.
    let during = under_load(4);
    n3.kill();
    everyone_sees(&[&n1, &n2, &g1], &["n1", "n2", "g1"]).await;
    during.await.unwrap();
    let during = under_load(5);
    let n3 = cluster.start("n3", "actor");
    everyone_sees(&[&n1, &n2, &n3, &g1], &all).await;
    during.await.unwrap();

    // n2 leaves again: its entities go back to the nodes that held them while it was away, whose
    // earlier writes are in their streams (`n1 n2 n1` by writer, a conflict without the fence).
    let during = under_load(6);
    n2.terminate();
    everyone_sees(&[&n1, &n3, &g1], &["n1", "n3", "g1"]).await;
    during.await.unwrap();
    load("tally", 7, 10, &entries, &ledger).await;

    check_against_the_journal(&cluster.database, "tally", &entries, &ledger).await;
    // Recovered afresh, from the whole stream, in `fail` mode.
    let journal: Arc<dyn Journal> =
        Arc::new(PostgresJournal::open(&cluster.database).await.unwrap());
    let fresh = fresh_host(journal.clone(), "tally");
    for entity in 0..ENTITIES {
        let id = format!("e{entity}");
        let state = fresh
            .state("tally", &id)
            .await
            .unwrap_or_else(|error| panic!("tally|{id} does not recover: {error}"));
        let seq_nr = journal
            .highest_seq_nr(&format!("tally|{id}"))
            .await
            .unwrap();
        assert_eq!(state.seq_nr, seq_nr, "tally|{id}");
    }
    drop((n1, n3, g1));
}

/// Waits until each of `nodes` sees exactly the members named `names`.
async fn everyone_sees(nodes: &[&ServeProcess], names: &[&str]) {
    let http = reqwest::Client::new();
    for node in nodes {
        wait_for_members(&http, &node.url, names).await;
    }
}

/// A host of its own (no cluster) over `journal`, serving `entity_type` with the counter and the
/// default replay filter (`fail`).
fn fresh_host(journal: Arc<dyn Journal>, entity_type: &str) -> weft::entity::EntitySystem {
    let plugins = support::counter_registry();
    let system = weft::entity::EntitySystem::single_host(journal, plugins);
    system
        .bind_type(
            entity_type,
            weft::entity::EntityTypeConfig::for_plugin("counter"),
        )
        .expect("bind the type");
    system
}
