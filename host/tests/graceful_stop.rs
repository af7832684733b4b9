//! A graceful stop of a `weft serve` process in a cluster (real processes on loopback, a real
//! PostgreSQL journal and lease table): the stopped node hands its single-writer entities over
//! before their leases could have expired — it releases them — and every acknowledged write is in
//! the journal exactly once; and it leaves the cluster through SWIM, so its peer drops it long
//! before suspicion could have declared it down. Both stops exit 0. A stop held up by a request in
//! flight is forced after `shutdown_timeout_ms`, and a second signal forces it at once; both are
//! logged and exit 0.

mod support;

use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::cluster::{TestCluster, amounts_applied_once, cluster_view, wait_for_members};
use support::node::{ServeProcess, metric, plugins_dir};
use support::services::Postgres;
use weft::journal::PostgresJournal;

/// Long enough that a takeover by expiry is told apart from one by release.
const LEASE_TTL_MS: u64 = 15_000;
/// Long enough that only a leave can drop a stopped node from its peer's view within the test.
const SUSPECT_TO_DOWN_AFTER_MS: u64 = 60_000;
/// Entities written before the stop; placement puts some of them on each node.
const ENTITIES: usize = 16;

/// One command a writer sent: its unique amount, when it was sent, and when it was acknowledged.
struct Sent {
    amount: i64,
    sent_at: Instant,
    acked_at: Option<Instant>,
}

/// What one writer sent, as it goes.
type Ledger = Arc<Mutex<Vec<Sent>>>;

/// Sends increments with unique amounts to `entity` through `url` until `done`, one at a time,
/// recording each in `ledger`; failures (the owner stopping, the lease moving) are retried after
/// a pause.
async fn write_until(
    url: String,
    entity: String,
    first_amount: i64,
    ledger: Ledger,
    done: Arc<AtomicBool>,
) {
    let http = reqwest::Client::new();
    let mut amount = first_amount;
    while !done.load(Ordering::Relaxed) {
        amount += 1;
        let sent_at = Instant::now();
        let acked = http
            .post(format!("{url}/entities/counter/{entity}"))
            .json(&json!({"op": "increment", "by": amount}))
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .is_ok_and(|response| response.status() == 200);
        ledger.lock().unwrap().push(Sent {
            amount,
            sent_at,
            acked_at: acked.then(Instant::now),
        });
        if !acked {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// When the first command sent at or after `since` was acknowledged, if one was.
fn first_ack_since(ledger: &Ledger, since: Instant) -> Option<Instant> {
    ledger
        .lock()
        .unwrap()
        .iter()
        .filter(|command| command.sent_at >= since)
        .find_map(|command| command.acked_at)
}

/// The entities `node_url`'s node hosts, by id.
async fn hosted(http: &reqwest::Client, node_url: &str) -> BTreeSet<String> {
    let view = cluster_view(http, node_url)
        .await
        .expect("the node answers");
    view["active_entities"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|entity| entity["entity_type"] == "counter")
        .filter_map(|entity| entity["entity_id"].as_str().map(str::to_owned))
        .collect()
}

/// The earliest instant the lease of `entity` can expire, as the lease table says now: its time
/// left, counted from before the question was sent.
async fn lease_expiry_floor(http: &reqwest::Client, url: &str, entity: &str) -> Instant {
    let asked_at = Instant::now();
    let lease: Value = http
        .get(format!("{url}/leases/entity:counter%7C{entity}"))
        .send()
        .await
        .expect("the node answers")
        .json()
        .await
        .expect("json");
    let left = lease["holder"]["expires_in_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("{entity}'s lease is held: {lease}"));
    asked_at + Duration::from_millis(left)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_hands_its_single_writer_entities_over_before_their_leases_could_expire() {
    let postgres = Postgres::start();
    let cluster = TestCluster {
        lease_ttl_ms: LEASE_TTL_MS,
        suspect_to_down_after_ms: SUSPECT_TO_DOWN_AFTER_MS,
        ..TestCluster::new(&postgres, "s1").await
    };
    let (s1, s2) = (cluster.start("s1", "actor"), cluster.start("s2", "actor"));
    let http = reqwest::Client::new();
    for node in [&s1, &s2] {
        wait_for_members(&http, &node.url, &["s1", "s2"]).await;
    }
    // Every entity written once through s1: the ones s2 owns run there, holding their leases.
    for entity in 0..ENTITIES {
        let response = http
            .post(format!("{}/entities/counter/e{entity}", s1.url))
            .json(&json!({"op": "increment", "by": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    }
    let on_s2 = hosted(&http, &s2.url).await;
    assert!(
        !on_s2.is_empty(),
        "placement put none of {ENTITIES} entities on s2"
    );

    let done = Arc::new(AtomicBool::new(false));
    let ledgers: BTreeMap<String, Ledger> = on_s2
        .iter()
        .map(|entity| (entity.clone(), Ledger::default()))
        .collect();
    let writers: Vec<_> = ledgers
        .iter()
        .enumerate()
        .map(|(index, (entity, ledger))| {
            tokio::spawn(write_until(
                s1.url.clone(),
                entity.clone(),
                (index as i64 + 1) * 1_000_000,
                ledger.clone(),
                done.clone(),
            ))
        })
        .collect();
    // Writes flow through s1 to s2 before the stop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut expiry_floors = BTreeMap::new();
    for entity in &on_s2 {
        expiry_floors.insert(
            entity.clone(),
            lease_expiry_floor(&http, &s1.url, entity).await,
        );
    }
    let s2_log = s2.log.clone();
    let exit = tokio::task::spawn_blocking(|| s2.terminate())
        .await
        .unwrap();
    let exited_at = Instant::now();
    let log = s2_log.lock().unwrap().clone();
    assert!(exit.success(), "a graceful stop exits 0: {exit}\n{log}");
    assert!(
        log.contains(&format!("{} leases released", on_s2.len()))
            && log.contains("left the cluster"),
        "the stop reports its leases and its leave:\n{log}"
    );

    // Each entity gets a write acknowledged by s1 — sent after s2 exited — and before its old
    // lease could have expired: only a released lease is taken over that soon. The writers go on
    // past the time to live, so a lease that was not released shows as a late takeover.
    let deadline = exited_at + Duration::from_millis(LEASE_TTL_MS + 5_000);
    while Instant::now() < deadline
        && !ledgers
            .values()
            .all(|ledger| first_ack_since(ledger, exited_at).is_some())
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    done.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    for (entity, ledger) in &ledgers {
        let first_after_exit = first_ack_since(ledger, exited_at)
            .unwrap_or_else(|| panic!("{entity}: no write acknowledged after s2 stopped"));
        let floor = expiry_floors[entity];
        assert!(
            first_after_exit < floor,
            "{entity}: the first write after the stop came {:?} after s2 exited, {:?} after its \
             old lease could have expired: the lease was not released",
            first_after_exit - exited_at,
            first_after_exit.saturating_duration_since(floor),
        );
    }

    // Every acknowledged write is in the journal exactly once, and nothing unsent is.
    let journal = PostgresJournal::open(&cluster.database).await.unwrap();
    for (entity, ledger) in &ledgers {
        let unique = amounts_applied_once(&journal, &format!("counter|{entity}")).await;
        let sent = ledger.lock().unwrap();
        let all_sent: BTreeSet<i64> = sent
            .iter()
            .map(|command| command.amount)
            .chain([1])
            .collect();
        for command in sent.iter().filter(|command| command.acked_at.is_some()) {
            assert!(
                unique.contains(&command.amount),
                "{entity}: acknowledged {} is lost",
                command.amount
            );
        }
        assert!(
            unique.is_subset(&all_sent),
            "{entity}: an amount never sent is in the journal"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_leaves_the_cluster_instead_of_waiting_to_be_suspected() {
    let postgres = Postgres::start();
    let cluster = TestCluster {
        suspect_to_down_after_ms: SUSPECT_TO_DOWN_AFTER_MS,
        ..TestCluster::new(&postgres, "l1").await
    };
    let (l1, l2) = (cluster.start("l1", "actor"), cluster.start("l2", "actor"));
    let http = reqwest::Client::new();
    for node in [&l1, &l2] {
        wait_for_members(&http, &node.url, &["l1", "l2"]).await;
    }
    let l2_log = l2.log.clone();
    let exit = tokio::task::spawn_blocking(|| l2.interrupt())
        .await
        .unwrap();
    let log = l2_log.lock().unwrap().clone();
    assert!(exit.success(), "a graceful stop exits 0: {exit}\n{log}");
    assert!(log.contains("left the cluster"), "{log}");
    // Suspicion alone would keep l2 in l1's view for a minute at least.
    support::eventually_within(
        "l1 drops l2 from its view",
        Duration::from_millis(SUSPECT_TO_DOWN_AFTER_MS / 3),
        || async {
            cluster_view(&http, &l1.url).await.is_some_and(|view| {
                view["members"]
                    .as_array()
                    .is_some_and(|members| members.len() == 1 && members[0]["name"] == "l1")
            })
        },
    )
    .await;
    let l1_log = l1.log.lock().unwrap().clone();
    assert!(
        l1_log.contains("l2") && l1_log.contains("is down"),
        "{l1_log}"
    );
}

/// A node serving the `hostile` plugin, whose `spin` command runs for its whole CPU bound (60 s
/// here), with `shutdown_timeout_ms`; a `spin` in flight (its entity activated). Returns the node
/// and the request's task.
async fn node_with_a_spin_in_flight(
    root: &std::path::Path,
    shutdown_timeout_ms: u64,
) -> (ServeProcess, tokio::task::JoinHandle<()>) {
    let plugins = plugins_dir(root, &["hostile"]);
    let config = root.join("weft.toml");
    let text = format!(
        "[node]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{data}\"\nplugins_dir = \"{plugins}\"\n\
         compile_cache_dir = \"{cache}\"\nshutdown_timeout_ms = {shutdown_timeout_ms}\n\n\
         [limits]\ncpu_per_call_ms = 60000\n",
        data = root.join("data").display(),
        plugins = plugins.display(),
        cache = support::shared_compile_cache().display(),
    );
    std::fs::write(&config, text).unwrap();
    let node = ServeProcess::start_with_config(&config);
    let url = node.url.clone();
    let spin = tokio::spawn(async move {
        // Answered with an error or cut off by the stop: either is fine here.
        let _ = reqwest::Client::new()
            .post(format!("{url}/entities/hostile/h1"))
            .json(&json!({"op": "spin"}))
            .send()
            .await;
    });
    let http = reqwest::Client::new();
    support::eventually("the spinning entity is active", || async {
        metric(&http, &node.url, "weft_entity_activations_total").await == 1
    })
    .await;
    (node, spin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_held_up_is_forced_after_the_timeout_or_by_a_second_signal() {
    let root = tempfile::tempdir().unwrap();
    let (node, spin) = node_with_a_spin_in_flight(&root.path().join("timeout"), 200).await;
    let log = node.log.clone();
    let exit = tokio::task::spawn_blocking(|| node.terminate())
        .await
        .unwrap();
    let log = log.lock().unwrap().clone();
    assert!(exit.success(), "a forced stop exits 0: {exit}\n{log}");
    assert!(
        log.contains("the stop did not finish within shutdown_timeout_ms (200 ms)"),
        "{log}"
    );
    spin.await.unwrap();

    let (node, spin) = node_with_a_spin_in_flight(&root.path().join("again"), 600_000).await;
    let log = node.log.clone();
    node.signal("TERM");
    support::eventually("the first SIGTERM is taken", || async {
        log.lock().unwrap().contains("SIGTERM: stopping gracefully")
    })
    .await;
    let exit = tokio::task::spawn_blocking(|| node.interrupt())
        .await
        .unwrap();
    let log = log.lock().unwrap().clone();
    assert!(exit.success(), "a forced stop exits 0: {exit}\n{log}");
    assert!(log.contains("SIGINT again: stopping at once"), "{log}");
    spin.await.unwrap();
}
