//! Replicated entities across real `weft serve` processes: three nodes on loopback, one replica
//! each, sharing a real PostgreSQL journal (each replica writes its own stream).
//!
//! - Every replica takes commands at once, concurrently; cut off by a partition (the transport's
//!   fault seam) both sides go on writing; after the heal every replica folds to the same state,
//!   the sum of every acknowledged increment. A gateway, hosting no replica, forwards to one.
//! - Conflicting resets on both sides of a partition, healed while one node's traffic is held
//!   back 1.5 s, replicas compacting: every replica ends with the model's state bytes.
//! - A resolver change under load: the nodes with the new build fold on with it; a node
//!   without it stops at the change and says so (state, `/health`, `/cluster`).
//! - In lease mode only the lease holder's replica persists; the others observe and forward the
//!   commands they get to the holder. Killed with SIGKILL, the holder is replaced by another
//!   replica, which writes on from everything the old one wrote, with a higher fencing token.

mod support;

use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::cluster::{DEADLINE, TestCluster, cluster_view, inject_fault, wait_for_members};
use support::node::{ServeProcess, get_json, metric, upload_plugin};
use support::services::Postgres;
use weft::journal::{EventEnvelope, Journal, PostgresJournal};

const REPLICAS: [&str; 3] = ["a", "b", "c"];

/// The replicated types every node of these tests configures: `tally` (last-writer-wins: every
/// increment counts) and `ledger` (the same, in lease mode).
const REPLICATED_TYPES: &str = r#"
[entities.tally]
plugin = "counter"
replication = { replicas = ["a", "b", "c"], pull_interval_ms = 200 }

[entities.ledger]
plugin = "counter"
single_writer = true
lease_ttl_ms = 2000
replication = { replicas = ["a", "b", "c"], pull_interval_ms = 200 }
"#;

async fn increment(
    http: &reqwest::Client,
    url: &str,
    path: &str,
    by: i64,
) -> Result<Value, (u16, Value)> {
    let response = http
        .post(format!("{url}/entities/{path}"))
        .json(&json!({"op": "increment", "by": by}))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("the node answers");
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status == 200 {
        Ok(body)
    } else {
        Err((status, body))
    }
}

async fn value(http: &reqwest::Client, url: &str, path: &str) -> Option<i64> {
    let response = http
        .get(format!("{url}/entities/{path}"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()?;
    let body: Value = response.json().await.ok()?;
    body["state"]["value"].as_i64()
}

/// Waits until every node's replica of `path` holds `expected`.
async fn wait_for_value(http: &reqwest::Client, urls: &[&str], path: &str, expected: i64) {
    let started = Instant::now();
    loop {
        let mut values = Vec::new();
        for url in urls {
            values.push(value(http, url, path).await);
        }
        if values.iter().all(|value| *value == Some(expected)) {
            return;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "{path}: the replicas hold {values:?}, not {expected}, after {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts nodes a, b and c (fault injection on, `extra` in their configs) on a fresh database
/// of `postgres`, and waits until each sees all three.
async fn three_replicas(
    postgres: &Postgres,
    extra: &str,
) -> (TestCluster, Vec<ServeProcess>, reqwest::Client) {
    let cluster = TestCluster {
        fault_injection: true,
        extra: extra.to_owned(),
        ..TestCluster::new(postgres, "a").await
    };
    let nodes: Vec<_> = REPLICAS
        .iter()
        .map(|name| cluster.start(name, "actor"))
        .collect();
    let http = reqwest::Client::new();
    for node in &nodes {
        wait_for_members(&http, &node.url, &REPLICAS).await;
    }
    (cluster, nodes, http)
}

async fn stream(journal: &PostgresJournal, pid: &str, replica: &str) -> Vec<EventEnvelope> {
    journal
        .read(&format!("{pid}|{replica}"), 1, 10_000)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_take_concurrent_commands_and_converge_after_a_partition() {
    let postgres = Postgres::start();
    let (cluster, nodes, http) = three_replicas(&postgres, REPLICATED_TYPES).await;
    let urls: Vec<&str> = nodes.iter().map(|node| node.url.as_str()).collect();

    // Concurrent increments at every replica: replica i adds i + 1, ten times.
    let mut writers = Vec::new();
    for (index, url) in urls.iter().enumerate() {
        let (http, url) = (http.clone(), url.to_string());
        writers.push(tokio::spawn(async move {
            for _ in 0..10 {
                increment(&http, &url, "tally/t1", index as i64 + 1)
                    .await
                    .expect("every replica takes commands");
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    wait_for_value(&http, &urls, "tally/t1", 60).await;

    // Cut c off from a and b; both sides keep writing.
    cut_off_c(&http, &urls).await;
    wait_for_members(&http, urls[0], &["a", "b"]).await;
    wait_for_members(&http, urls[2], &["c"]).await;
    for _ in 0..5 {
        increment(&http, urls[0], "tally/t1", 100).await.unwrap();
        increment(&http, urls[2], "tally/t1", 1_000).await.unwrap();
    }
    // Each side sees its own writes (and b sees a's); c has not seen a's, a has not seen c's.
    wait_for_value(&http, &urls[..2], "tally/t1", 560).await;
    assert_eq!(value(&http, urls[2], "tally/t1").await, Some(5_060));

    for url in &urls {
        inject_fault(&http, url, json!({"fault": "heal"})).await;
    }
    for url in &urls {
        wait_for_members(&http, url, &REPLICAS).await;
    }
    wait_for_value(&http, &urls, "tally/t1", 5_560).await;

    // Each replica persisted exactly its own commands' events, to its own stream.
    let journal = PostgresJournal::open(&cluster.database).await.unwrap();
    let counts: Vec<usize> = {
        let mut counts = Vec::new();
        for replica in REPLICAS {
            let events = stream(&journal, "tally|t1", replica).await;
            assert!(events.iter().all(|event| event.origin_replica == replica));
            counts.push(events.len());
        }
        counts
    };
    assert_eq!(counts, vec![15, 10, 15]);
    // And the states agree byte for byte, not just in value.
    let mut states = Vec::new();
    for url in &urls {
        let body = get_json(&http, &format!("{url}/entities/tally/t1")).await;
        states.push((body["state"].clone(), body["seq_nr"].clone()));
    }
    assert!(
        states.windows(2).all(|pair| pair[0] == pair[1]),
        "{states:?}"
    );
    assert_eq!(states[0].1, json!(40));
    // c folded a's partition-time events after the heal (and at most every event of a and b).
    let folded = metric(&http, urls[2], "weft_replicated_events_folded_total").await;
    assert!((5..=25).contains(&folded), "{folded}");
    // The cluster view shows each node's replica, not a placed owner.
    let view = cluster_view(&http, urls[1]).await.unwrap();
    assert!(
        view["active_entities"]
            .as_array()
            .unwrap()
            .contains(&json!({"entity_type": "tally", "entity_id": "t1", "replica": "b"})),
        "{view}"
    );

    // A gateway, which hosts no replica, forwards to one.
    let gateway = cluster.start("g", "gateway");
    wait_for_members(&http, &gateway.url, &["a", "b", "c", "g"]).await;
    increment(&http, &gateway.url, "tally/t1", 7).await.unwrap();
    wait_for_value(&http, &urls, "tally/t1", 5_567).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_lease_mode_only_the_holder_persists_and_another_replica_takes_over_when_it_dies() {
    let postgres = Postgres::start();
    let cluster = TestCluster {
        extra: REPLICATED_TYPES.to_owned(),
        ..TestCluster::new(&postgres, "a").await
    };
    let mut nodes: Vec<_> = REPLICAS
        .iter()
        .map(|name| Some(cluster.start(name, "actor")))
        .collect();
    let urls: Vec<String> = nodes
        .iter()
        .map(|node| node.as_ref().unwrap().url.clone())
        .collect();
    let http = reqwest::Client::new();
    for url in &urls {
        wait_for_members(&http, url, &REPLICAS).await;
    }

    // a is the first to ask: it takes the lease and writes.
    for _ in 0..3 {
        increment(&http, &urls[0], "ledger/l1", 1).await.unwrap();
    }
    // b and c observe (they fold a's events, and contend for the lease from now on): a command
    // sent to them is forwarded to a, the holder, which persists it.
    for (url, expected_seq_nr) in urls[1..].iter().zip([4, 5]) {
        let reply = increment(&http, url, "ledger/l1", 1).await.unwrap();
        assert_eq!(
            reply["seq_nr"], expected_seq_nr,
            "a's own sequence: {reply}"
        );
    }
    wait_for_value(
        &http,
        &urls.iter().map(String::as_str).collect::<Vec<_>>(),
        "ledger/l1",
        5,
    )
    .await;
    let journal = PostgresJournal::open(&cluster.database).await.unwrap();
    let written_by_a = stream(&journal, "ledger|l1", "a").await;
    assert_eq!(written_by_a.len(), 5);
    assert!(stream(&journal, "ledger|l1", "b").await.is_empty());
    assert!(stream(&journal, "ledger|l1", "c").await.is_empty());

    // Kill a: once its lease expires, b or c becomes the writer (and the other forwards to it).
    nodes[0].take().unwrap().kill();
    let started = Instant::now();
    'took_over: loop {
        for url in &urls[1..] {
            if increment(&http, url, "ledger/l1", 10).await.is_ok() {
                break 'took_over;
            }
        }
        assert!(
            started.elapsed() < DEADLINE,
            "no replica took over after {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let survivors: Vec<&str> = urls[1..].iter().map(String::as_str).collect();
    wait_for_value(&http, &survivors, "ledger/l1", 15).await;

    // Only the new holder's stream grew, by the one accepted command, with a higher fencing
    // token; a's is as it was.
    assert_eq!(stream(&journal, "ledger|l1", "a").await, written_by_a);
    let (b_events, c_events) = (
        stream(&journal, "ledger|l1", "b").await,
        stream(&journal, "ledger|l1", "c").await,
    );
    let written = match (b_events.len(), c_events.len()) {
        (1, 0) => b_events,
        (0, 1) => c_events,
        counts => panic!("one event on exactly one survivor's stream, not {counts:?}"),
    };
    assert!(written[0].fencing_token > written_by_a[0].fencing_token);
    // The new writer's event follows everything a wrote.
    assert_eq!(written[0].version.get("a"), Some(&5));
}

/// `till`: a counter replicated with last-writer-wins, snapshotting often, so that replicas
/// compact while the test runs.
const TILL: &str = r#"
[entities.till]
plugin = "counter"
snapshot_every = 4
replication = { replicas = ["a", "b", "c"], pull_interval_ms = 100 }
"#;

async fn command(http: &reqwest::Client, url: &str, path: &str, command: Value) {
    let response = http
        .post(format!("{url}/entities/{path}"))
        .json(&command)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("the node answers");
    assert_eq!(response.status(), 200, "{command}");
}

/// Partitions c from a and b, both ways, through the transport's fault seam.
async fn cut_off_c(http: &reqwest::Client, urls: &[&str]) {
    inject_fault(
        http,
        urls[2],
        json!({"fault": "partition", "from": ["a", "b"]}),
    )
    .await;
    for url in &urls[..2] {
        inject_fault(http, url, json!({"fault": "partition", "from": ["c"]})).await;
    }
}

/// `rounds` rounds of an increment at every node (by the round's number).
async fn increment_everywhere(http: &reqwest::Client, urls: &[&str], path: &str, rounds: i64) {
    for round in 1..=rounds {
        for url in urls {
            command(http, url, path, json!({"op": "increment", "by": round})).await;
        }
    }
}

/// The state's exact bytes and the events folded, as a MessagePack client reads them; `None`
/// while the replica refuses the read (catching up) or is unreachable.
async fn raw_state(http: &reqwest::Client, url: &str, path: &str) -> Option<(Vec<u8>, u64)> {
    let response = http
        .get(format!("{url}/entities/{path}"))
        .header("accept", "application/msgpack")
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()?;
    if response.status() != 200 {
        return None;
    }
    let body = response.bytes().await.ok()?;
    let document = rmpv::decode::read_value(&mut body.as_ref()).expect("a MessagePack answer");
    let field = |name: &str| {
        document
            .as_map()
            .expect("a map")
            .iter()
            .find(|(key, _)| key.as_str() == Some(name))
            .map(|(_, value)| value.clone())
    };
    let raw = field("state_raw")?.as_slice()?.to_vec();
    Some((raw, field("seq_nr")?.as_u64()?))
}

/// The model: every replica's stream, folded by the counter in the documented total order
/// (HLC timestamp, origin replica, origin seq nr) — last-writer-wins keeps every event.
fn model_value(events: &[EventEnvelope]) -> i64 {
    let mut sorted: Vec<&EventEnvelope> = events.iter().collect();
    sorted.sort_by(|a, b| weft::replication::order_key(a).cmp(&weft::replication::order_key(b)));
    sorted.iter().fold(0, |value, event| {
        let payload: Value = rmp_serde::from_slice(&event.payload).unwrap();
        match payload["type"].as_str() {
            Some("reset") => 0,
            Some("incremented") => value + payload["by"].as_i64().unwrap(),
            other => panic!("unexpected event {other:?}"),
        }
    })
}

/// A partition with conflicting resets and increments on both sides, healed while one node's
/// traffic is held back 1.5 s, replicas compacting all along: every replica ends byte-identical
/// to the others and to the model of every event persisted anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_resets_across_a_delayed_heal_converge_to_the_model() {
    let postgres = Postgres::start();
    let (cluster, nodes, http) = three_replicas(&postgres, TILL).await;
    let urls: Vec<&str> = nodes.iter().map(|node| node.url.as_str()).collect();
    let path = "till/t";
    // Enough history everywhere for whole checkpoint intervals to compact.
    increment_everywhere(&http, &urls, path, 14).await;

    cut_off_c(&http, &urls).await;
    // Each side resets (c after a), then a and b increment on top: the last reset, in the
    // total order, is c's, which a and b have not seen.
    command(&http, urls[0], path, json!({"op": "reset"})).await;
    command(&http, urls[2], path, json!({"op": "reset"})).await;
    for round in 0..12 {
        command(&http, urls[0], path, json!({"op": "increment", "by": 7})).await;
        command(&http, urls[1], path, json!({"op": "increment", "by": 3})).await;
        if round % 4 == 0 {
            command(&http, urls[2], path, json!({"op": "increment", "by": 5})).await;
        }
    }

    // The heal, with b's traffic held back 1.5 s: c's events written in the partition reach b
    // only through b's pulls, which are late, while c's pulls (saying it has now seen a's and
    // b's events) reach b at once. Everyone keeps writing meanwhile.
    inject_fault(&http, urls[1], json!({"fault": "heal"})).await;
    inject_fault(&http, urls[1], json!({"fault": "delay", "ms": 1500})).await;
    for url in [urls[0], urls[2]] {
        inject_fault(&http, url, json!({"fault": "heal"})).await;
    }
    // Increments only from here on: the value still shows where each side's resets were
    // folded, rather than a later reset hiding it.
    increment_everywhere(&http, &urls, path, 6).await;
    inject_fault(&http, urls[1], json!({"fault": "heal"})).await;
    for url in &urls {
        wait_for_members(&http, url, &REPLICAS).await;
    }

    let journal = PostgresJournal::open(&cluster.database).await.unwrap();
    let mut events = Vec::new();
    for replica in REPLICAS {
        events.extend(stream(&journal, "till|t", replica).await);
    }
    let expected = model_value(&events);
    let started = Instant::now();
    loop {
        let mut states = Vec::new();
        for url in &urls {
            states.push(raw_state(&http, url, path).await);
        }
        let converged = states.iter().all(|state| {
            state.as_ref().is_some_and(|(raw, seq_nr)| {
                *seq_nr == events.len() as u64 && Some(raw) == states[0].as_ref().map(|s| &s.0)
            })
        });
        if converged {
            let (raw, _) = states[0].clone().unwrap();
            let state: Value = rmp_serde::from_slice(&raw).unwrap();
            assert_eq!(
                state["value"],
                json!(expected),
                "the replicas agree on a wrong value"
            );
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "the replicas did not converge: {states:?}, {} events",
            events.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The replicas compacted on the way (or the test would not test compaction).
    let mut compacted = Vec::new();
    for url in &urls {
        compacted.push(metric(&http, url, "weft_replicated_events_compacted_total").await);
    }
    println!(
        "events: {}, compacted per replica: {compacted:?}",
        events.len()
    );
    assert!(compacted.iter().any(|count| *count > 0), "{compacted:?}");
}

/// A resolver change under load across processes: a new resolver build (`bids`) is deployed to
/// the cluster, and a and b load it; c cannot (an entity type bound there to the name `bids`
/// needs an entity plugin, so c refuses the deployment). While every node writes, a records the change. a and b fold on with it and agree,
/// byte for byte, on the exact sum of every increment (the change itself changes no state); the
/// change is one event of a's stream, and b says it folds with the new build. c stops at the
/// change and says so — its state read, `/health` and `/cluster` name the parked change with
/// `plugin_version_missing` — and still takes commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolver_change_under_load_stops_a_node_without_the_build_and_it_says_so() {
    let postgres = Postgres::start();
    let (cluster, nodes, http) = three_replicas(&postgres, REPLICATED_TYPES).await;
    let urls: Vec<&str> = nodes.iter().map(|node| node.url.as_str()).collect();
    let response = http
        .put(format!("{}/entity-types/orders", urls[2]))
        .json(&json!({"plugin": "bids"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "c binds a type to the name `bids`");
    let report = upload_plugin(&http, urls[0], "bids", support::plugin_bytes("highest-bid")).await;
    let bids = report["version"].clone();
    support::eventually("b has the deployed resolver", || async {
        let plugins = get_json(&http, &format!("{}/plugins", urls[1])).await;
        plugins["plugins"]
            .as_array()
            .is_some_and(|plugins| plugins.iter().any(|plugin| plugin["version"] == bids))
    })
    .await;
    let path = "tally/r1";
    increment_everywhere(&http, &urls, path, 3).await;
    let response = http
        .put(format!("{}/entities/{path}/resolver", urls[0]))
        .json(&json!({"resolver": "bids"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let changed: Value = response.json().await.unwrap();
    assert_eq!(changed["config"]["resolver"], bids, "{changed}");
    increment_everywhere(&http, &urls, path, 3).await;
    let total = 3 * (1 + 2 + 3) * 2;

    // a and b: every increment, the same bytes, the new resolver.
    wait_for_value(&http, &urls[..2], path, total).await;
    let mut raw = Vec::new();
    for url in &urls[..2] {
        raw.push(raw_state(&http, url, path).await.expect("a state").0);
        let state = get_json(&http, &format!("{url}/entities/{path}")).await;
        assert_eq!(state["replica"]["resolver"], bids, "{state}");
    }
    assert_eq!(raw[0], raw[1]);
    // The change: one event of a's stream, at the point a recorded it.
    let journal = PostgresJournal::open(&cluster.database).await.unwrap();
    let configs: Vec<EventEnvelope> = stream(&journal, "tally|r1", "a")
        .await
        .into_iter()
        .filter(|event| event.plugin == weft::replication::CONFIG_EVENT)
        .collect();
    assert_eq!(configs.len(), 1);
    assert_eq!(json!(configs[0].origin_seq_nr), changed["seq_nr"]);

    // c: stopped at the change, saying so everywhere it is asked.
    let parked_change = |parked: &Value| {
        parked.as_array().is_some_and(|parked| {
            parked.iter().any(|event| {
                event["origin_replica"] == "a"
                    && event["origin_seq_nr"] == changed["seq_nr"]
                    && event["code"] == "plugin_version_missing"
            })
        })
    };
    let c_state = format!("{}/entities/{path}", urls[2]);
    let started = Instant::now();
    while !parked_change(&get_json(&http, &c_state).await["replica"]["parked"]) {
        assert!(
            started.elapsed() < DEADLINE,
            "c does not report the change it cannot fold"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let health = get_json(&http, &format!("{}/health", urls[2])).await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert!(parked_change(&health["parked_events"]), "{health}");
    let view = cluster_view(&http, urls[2]).await.unwrap();
    assert!(parked_change(&view["parked_events"]), "{view}");
    assert!(value(&http, urls[2], path).await.unwrap() < total);
    increment(&http, urls[2], path, 1)
        .await
        .expect("c still takes commands");
}
