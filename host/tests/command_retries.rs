//! Deadlines and retries over real `weft serve` processes: a forwarded command whose caller
//! timed out is dropped by its owner, not applied later; clients that retry every unanswered
//! command with its idempotency key through dropped answers, a `kill -9` and a failover get
//! every command applied exactly once (checked against the PostgreSQL journal); and a key sent
//! again after a restart of a single SQLite node gets the original reply.

mod support;

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::cluster::{TestCluster, cluster_view, inject_fault, wait_for_members};
use support::node::{ServeProcess, get_json, metric, plugins_dir, weft_binary};
use support::services::Postgres;
use support::{eventually, plugin_path};
use weft::journal::{Journal, PostgresJournal};

/// A command's HTTP outcome: the status and the body (JSON, or null when none came back).
async fn post(
    http: &reqwest::Client,
    url: &str,
    command: &Value,
    key: Option<&str>,
) -> Result<(u16, Value), String> {
    let mut request = http
        .post(url)
        .json(command)
        .timeout(Duration::from_secs(30));
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.map_err(|error| error.to_string())?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

/// Whether the node at `url` runs the entity `hostile/<id>`.
async fn hosts(http: &reqwest::Client, url: &str, id: &str) -> bool {
    cluster_view(http, url).await.is_some_and(|view| {
        view["active_entities"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|entity| entity["entity_id"] == id)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_command_whose_caller_timed_out_is_not_applied_later() {
    let postgres = Postgres::start();
    let mut cluster = TestCluster::new(&postgres, "a1").await;
    // The hostile plugin's `work` keeps its entity busy for seconds; the entity passivates after
    // a second idle, so that the test can see it activated again by the command that blocks it.
    cluster.extra = "[limits]\ncpu_per_call_ms = 60000\n\n\
                     [entities.hostile]\nplugin = \"hostile\"\npassivate_after_secs = 1\n"
        .to_owned();
    let start = |name: &str| {
        let config = cluster.config(name, "actor");
        let plugins = config.parent().unwrap().join("plugins");
        std::fs::copy(plugin_path("hostile"), plugins.join("hostile.wasm")).unwrap();
        ServeProcess::start_with_config(&config)
    };
    let (a1, a2) = (start("a1"), start("a2"));
    let http = reqwest::Client::new();
    for node in [&a1, &a2] {
        wait_for_members(&http, &node.url, &["a1", "a2"]).await;
    }
    let entity = |node: &ServeProcess, id: &str| format!("{}/entities/hostile/{id}", node.url);

    // An entity a2 owns, found by sending through a1.
    let mut owned_by_a2 = None;
    for number in 0..64 {
        let id = format!("h{number}");
        let echo = json!({"op": "echo", "text": "hi"});
        let (status, body) = post(&http, &entity(&a1, &id), &echo, None).await.unwrap();
        assert_eq!(status, 200, "{body}");
        if hosts(&http, &a2.url, &id).await {
            owned_by_a2 = Some(id);
            break;
        }
    }
    let id = owned_by_a2.expect("a2 owns one of 64 entities");

    // How many iterations of `work` keep an entity busy for about 8 s here (on another entity).
    let probe_iterations = 20_000_000u64;
    let started = Instant::now();
    let work = json!({"op": "work", "iterations": probe_iterations});
    let (status, body) = post(&http, &entity(&a2, "calibration"), &work, None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let per_iteration = started.elapsed().as_secs_f64() / probe_iterations as f64;
    let iterations = (8.0 / per_iteration) as u64;

    // The entity idles out, so the blocking command's arrival shows as its next activation.
    eventually("the entity passivates", || async {
        !hosts(&http, &a2.url, &id).await
    })
    .await;
    let activations = metric(&http, &a2.url, "weft_entity_activations_total").await;
    let blocking = {
        let (http, url) = (http.clone(), entity(&a2, &id));
        let work = json!({"op": "work", "iterations": iterations});
        tokio::spawn(async move { post(&http, &url, &work, None).await })
    };
    eventually("the blocking command reaches the entity", || async {
        metric(&http, &a2.url, "weft_entity_activations_total").await > activations
    })
    .await;

    // Queued behind it, through a1: a1 gives up after forward_timeout_ms = 3000.
    let event = json!({"op": "raw_event", "bytes": [1]});
    let (status, body) = post(&http, &entity(&a1, &id), &event, None).await.unwrap();
    assert_eq!(
        status, 503,
        "the forwarded command times out while the entity is busy: {body}"
    );
    assert_eq!(body["error"]["code"], "owner_unreachable", "{body}");

    // The entity unblocks; the timed-out command, still queued, must not be applied.
    let (status, body) = blocking.await.unwrap().unwrap();
    assert_eq!(status, 200, "{body}");
    // A state read queued after it is answered once everything before it was handled.
    let state = get_json(&http, &entity(&a2, &id)).await;
    let journal = PostgresJournal::open(&cluster.database).await.unwrap();
    let events = journal
        .read(&format!("hostile|{id}"), 1, 100)
        .await
        .unwrap();
    assert!(
        events.is_empty(),
        "the command whose caller timed out was applied after the answer: {events:?} (state {state})"
    );
    drop((a1, a2));
}

/// What the retrying clients sent: per entity, the amount of every command (each sent under its
/// own key until acknowledged), and the errors their attempts met.
#[derive(Default)]
struct Sent {
    acked: BTreeMap<String, Vec<i64>>,
    errors: BTreeMap<String, usize>,
    retries: usize,
}

/// The errors after which a command may or may not have been applied, or surely was not, and a
/// retry may succeed.
const RETRYABLE: &[&str] = &[
    "owner_unreachable",
    "no_owner",
    "not_writer",
    "entity_stopped",
    "stale_fencing_token",
    "plugins_loading",
    "deadline_exceeded",
    "ask_timeout",
    "lease_unavailable",
];

const ENTITIES: usize = 6;
const CLIENTS: usize = 3;

/// Sends `count` increments, each under its own key, round robin over the entities and the
/// gateways; retries every attempt that got no answer, a timeout or a retryable error with the
/// same key and the same amount, until it is acknowledged.
async fn retrying_client(
    round: usize,
    number: usize,
    count: usize,
    gateways: Vec<String>,
    sent: Arc<Mutex<Sent>>,
) {
    let http = reqwest::Client::new();
    for sequence in 0..count {
        let entity = format!("e{}", (number + sequence) % ENTITIES);
        let amount = (100_000 * round + 1_000 * (number + 1) + sequence) as i64;
        let key = format!("round-{round}-client-{number}-command-{sequence}");
        let command = json!({"op": "increment", "by": amount});
        let started = Instant::now();
        for attempt in 0.. {
            let gateway = &gateways[(sequence + attempt) % gateways.len()];
            let url = format!("{gateway}/entities/counter/{entity}");
            let outcome = post(&http, &url, &command, Some(&key)).await;
            let code = match outcome {
                Ok((200, _)) => break,
                Ok((status, body)) => {
                    let code = body["error"]["code"].as_str().unwrap_or("?").to_owned();
                    assert!(
                        RETRYABLE.contains(&code.as_str()),
                        "{key}: a failure a retry cannot fix: {status} {body}"
                    );
                    code
                }
                Err(error) => format!("transport: {error}"),
            };
            {
                let mut sent = sent.lock().unwrap();
                *sent.errors.entry(code).or_default() += 1;
                sent.retries += 1;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "{key} not acknowledged within 2 minutes"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        sent.lock()
            .unwrap()
            .acked
            .entry(entity)
            .or_default()
            .push(amount);
    }
}

async fn retrying_load(round: usize, count: usize, gateways: &[String], sent: &Arc<Mutex<Sent>>) {
    let clients: Vec<_> = (0..CLIENTS)
        .map(|number| {
            tokio::spawn(retrying_client(
                round,
                number,
                count,
                gateways.to_vec(),
                sent.clone(),
            ))
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_with_a_key_through_lost_answers_a_kill_and_a_failover_apply_each_command_once() {
    let postgres = Postgres::start();
    let mut cluster = TestCluster::new(&postgres, "a1").await;
    cluster.fault_injection = true;
    let a1 = cluster.start("a1", "actor");
    let a2 = cluster.start("a2", "actor");
    let a3 = cluster.start("a3", "actor");
    let g1 = cluster.start("g1", "gateway");
    let http = reqwest::Client::new();
    for node in [&a1, &a2, &a3, &g1] {
        wait_for_members(&http, &node.url, &["a1", "a2", "a3", "g1"]).await;
    }
    let gateways = vec![g1.url.clone(), a1.url.clone()];
    let sent = Arc::new(Mutex::new(Sent::default()));

    // The actor nodes lose every 5th frame they send, answers to forwarded commands included:
    // their callers time out on commands that were applied, and retry them.
    for node in [&a1, &a2, &a3] {
        inject_fault(&http, &node.url, json!({"fault": "drop-every", "n": 5})).await;
    }
    retrying_load(1, 8, &gateways, &sent).await;

    // An actor node is killed under load: its entities fail over once its leases expire.
    let during = {
        let (gateways, sent) = (gateways.clone(), sent.clone());
        tokio::spawn(async move { retrying_load(2, 8, &gateways, &sent).await })
    };
    let acked = |sent: &Arc<Mutex<Sent>>| {
        sent.lock()
            .unwrap()
            .acked
            .values()
            .map(Vec::len)
            .sum::<usize>()
    };
    let before = acked(&sent);
    eventually("the second round is under way", || async {
        acked(&sent) >= before + 3
    })
    .await;
    // The actor node running the most entities (a1 stays: clients send through it) is killed.
    let running = |view: Option<Value>| {
        view.and_then(|view| view["active_entities"].as_array().map(Vec::len))
            .unwrap_or(0)
    };
    let a2_runs = running(cluster_view(&http, &a2.url).await);
    let a3_runs = running(cluster_view(&http, &a3.url).await);
    let (victim, survivor, survivors) = match a2_runs >= a3_runs {
        true => (a2, a3, ["a1", "a3", "g1"]),
        false => (a3, a2, ["a1", "a2", "g1"]),
    };
    assert!(
        a2_runs.max(a3_runs) > 0,
        "a2 or a3 runs some of the entities"
    );
    eprintln!("killing the node running {} entities", a2_runs.max(a3_runs));
    victim.kill();
    during.await.unwrap();
    for node in [&a1, &survivor] {
        inject_fault(&http, &node.url, json!({"fault": "heal"})).await;
    }
    for node in [&a1, &survivor, &g1] {
        wait_for_members(&http, &node.url, &survivors).await;
    }

    // The journal against the model: every command's amount exactly once, each key on one
    // event, and each entity's state the sum of what was acknowledged.
    let journal = PostgresJournal::open(&cluster.database).await.unwrap();
    let sent = std::mem::take(&mut *sent.lock().unwrap());
    let mut applied_total = 0;
    for number in 0..ENTITIES {
        let entity = format!("e{number}");
        let events = journal
            .read(&format!("counter|{entity}"), 1, 100_000)
            .await
            .unwrap();
        let mut amounts: Vec<i64> = events
            .iter()
            .map(|event| {
                support::from_msgpack(&event.payload)["by"]
                    .as_i64()
                    .unwrap()
            })
            .collect();
        let mut acked = sent.acked.get(&entity).cloned().unwrap_or_default();
        amounts.sort();
        acked.sort();
        assert_eq!(
            amounts, acked,
            "{entity}: the journal holds each acknowledged command exactly once"
        );
        let keys: Vec<&str> = events
            .iter()
            .filter_map(|event| event.idempotency.as_ref().map(|record| record.key.as_str()))
            .collect();
        assert_eq!(
            keys.len(),
            events.len(),
            "{entity}: every event carries its key"
        );
        let state = get_json(&http, &format!("{}/entities/counter/{entity}", g1.url)).await;
        assert_eq!(
            state["state"]["value"].as_i64(),
            Some(acked.iter().sum::<i64>()),
            "{entity}: {state}"
        );
        applied_total += events.len();
    }
    assert_eq!(applied_total, CLIENTS * 16);
    assert!(
        sent.retries > 0,
        "the faults made some commands be retried: {:?}",
        sent.errors
    );
    eprintln!(
        "{applied_total} commands applied once each after {} retries: {:?}",
        sent.retries, sent.errors
    );
    drop((a1, survivor, g1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_sent_again_after_a_restart_gets_the_original_reply() {
    let root = tempfile::tempdir().unwrap();
    let plugins = plugins_dir(root.path(), &["counter"]);
    let data = root.path().join("data");
    let http = reqwest::Client::new();
    let increment = json!({"op": "increment", "by": 5});

    let node = ServeProcess::start(&data, &plugins);
    let url = format!("{}/entities/counter/c1", node.url);
    let (status, first) = post(&http, &url, &increment, Some("order-1"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{first}");
    let (status, other) = post(&http, &url, &json!({"op": "increment", "by": 1}), None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{other}");
    node.kill();

    let node = ServeProcess::start(&data, &plugins);
    let url = format!("{}/entities/counter/c1", node.url);
    let (status, again) = post(&http, &url, &increment, Some("order-1"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        again["reply"], first["reply"],
        "the original reply: {again}"
    );
    assert_eq!(again["seq_nr"], first["seq_nr"], "{again}");
    assert_eq!(again["replayed"], true, "{again}");
    let state = get_json(&http, &url).await;
    assert_eq!(state["state"]["value"], 6, "applied once: {state}");

    // The same key with another command is refused; a malformed key too.
    let (status, reused) = post(
        &http,
        &url,
        &json!({"op": "increment", "by": 7}),
        Some("order-1"),
    )
    .await
    .unwrap();
    assert_eq!(status, 422, "{reused}");
    assert_eq!(
        reused["error"]["code"], "idempotency_key_reused",
        "{reused}"
    );
    let (status, invalid) = post(&http, &url, &increment, Some("has space"))
        .await
        .unwrap();
    assert_eq!(status, 400, "{invalid}");
    assert_eq!(invalid["error"]["code"], "invalid_idempotency_key");

    // `weft send --idempotency-key` sends the header: a new key applies, the same key again
    // does not.
    let send = |key: &str| {
        let output = Command::new(weft_binary())
            .args(["send", "counter", "c1", r#"{"op":"increment","by":10}"#])
            .args(["--idempotency-key", key, "--url", &node.url])
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        serde_json::from_slice::<Value>(&output.stdout).unwrap()
    };
    let applied = send("order-2");
    let replayed = send("order-2");
    assert_eq!(replayed["seq_nr"], applied["seq_nr"], "{replayed}");
    assert_eq!(replayed["replayed"], true, "{replayed}");
    let state = get_json(&http, &url).await;
    assert_eq!(state["state"]["value"], 16, "{state}");
    drop(node);
}
