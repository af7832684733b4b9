//! DistributedData across real `weft serve` processes on loopback: parallel updates of a counter
//! and an OR-Set from every node converge everywhere, a subscriber on one node sees the final
//! value, a majority write on one node is read back at majority on another with a third node
//! killed, a deletion stays deleted, and bad input gets a clear error. Under a partition and a
//! heal whose traffic arrives late, majority reads never miss an acknowledged majority write,
//! `all` on the cut-off node times out, and the views converge while the delay lasts; subscribing and leaving 10,000 times gives the memory
//! back.

mod support;

use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::cluster::{DEADLINE, TestCluster, cluster_view, inject_fault, wait_for_members};
use support::memory::rss_bytes;
use support::node::ServeProcess;
use support::rng::SplitMix64;
use support::services::Postgres;
use support::sse::EventStream;

const UPDATES_PER_NODE: u64 = 40;

async fn post(http: &reqwest::Client, url: &str, key: &str, body: Value) -> (u16, Value) {
    let response = http
        .post(format!("{url}/ddata/{key}"))
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON"))
}

async fn get(http: &reqwest::Client, url: &str, key: &str, query: &str) -> (u16, Value) {
    let response = http
        .get(format!("{url}/ddata/{key}{query}"))
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON"))
}

/// Waits until every node reads `expected` as the value of `key` (locally).
async fn converged(http: &reqwest::Client, urls: &[&str], key: &str, expected: &Value) {
    let started = Instant::now();
    for url in urls {
        loop {
            let (status, body) = get(http, url, key, "").await;
            if status == 200 && body["value"] == *expected {
                break;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "{url} reads {key} as {body}, not {expected}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_converge_and_majority_reads_see_majority_writes() {
    let postgres = Postgres::start();
    let cluster = TestCluster::new(&postgres, "d1").await;
    let start = |name: &str| cluster.start(name, "actor");
    let (d1, d2, d3) = (start("d1"), start("d2"), start("d3"));
    let http = reqwest::Client::new();
    for node in [&d1, &d2, &d3] {
        wait_for_members(&http, &node.url, &["d1", "d2", "d3"]).await;
    }
    let urls = [d1.url.as_str(), d2.url.as_str(), d3.url.as_str()];
    let mut subscription =
        EventStream::open(&http, &format!("{}/ddata/hits/subscribe", d2.url)).await;

    // Every node increments the counter and adds its own elements to the cart, all at once.
    let writers: Vec<_> = urls
        .iter()
        .enumerate()
        .map(|(index, url)| {
            let (http, url) = (http.clone(), url.to_string());
            tokio::spawn(async move {
                for n in 0..UPDATES_PER_NODE {
                    let (status, body) =
                        post(&http, &url, "hits", json!({"op": "increment", "by": 1})).await;
                    assert_eq!(status, 200, "{body}");
                    if n % 10 == 0 {
                        let element = format!("item-{index}-{n}");
                        let (status, body) = post(
                            &http,
                            &url,
                            "cart",
                            json!({"op": "add", "element": element}),
                        )
                        .await;
                        assert_eq!(status, 200, "{body}");
                    }
                }
                // Each node takes back its first item: add-wins only for concurrent adds.
                let element = format!("item-{index}-0");
                let (status, body) = post(
                    &http,
                    &url,
                    "cart",
                    json!({"op": "remove", "element": element}),
                )
                .await;
                assert_eq!(status, 200, "{body}");
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let total = 3 * UPDATES_PER_NODE;
    converged(&http, &urls, "hits", &json!(total)).await;
    let mut cart: Vec<String> = (0..3)
        .flat_map(|index| {
            (10..UPDATES_PER_NODE)
                .step_by(10)
                .map(move |n| format!("item-{index}-{n}"))
        })
        .collect();
    cart.sort();
    converged(&http, &urls, "cart", &json!(cart)).await;

    // The subscriber on d2 sees the counter grow to the final value, never backwards.
    let mut last = 0;
    while last < total {
        let (name, data) = subscription.next().await;
        assert_eq!(name, "value");
        let value = data["value"].as_u64().unwrap_or(0);
        assert!(
            value >= last,
            "the subscription went back from {last} to {value}"
        );
        last = value;
    }
    assert_eq!(last, total);

    // Bad input: an op of another kind, an unknown op, an unknown key.
    let (status, body) = post(&http, &d1.url, "hits", json!({"op": "add", "element": "x"})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("wrong_kind")),
        "{body}"
    );
    let (status, body) = post(&http, &d1.url, "hits", json!({"op": "multiply", "by": 2})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_op")),
        "{body}"
    );
    let (status, body) = get(&http, &d1.url, "nobody-wrote-this", "").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("unknown_key")),
        "{body}"
    );

    // The CLI mirrors the API.
    let weft = |args: &[&str]| {
        let output = std::process::Command::new(support::node::weft_binary())
            .args(args)
            .output()
            .expect("run weft");
        assert!(output.status.success(), "{args:?}: {output:?}");
        serde_json::from_slice::<Value>(&output.stdout).expect("JSON")
    };
    let op = r#"{"op":"increment","by":5}"#;
    weft(&[
        "ddata",
        "update",
        "hits",
        op,
        "--consistency",
        "all",
        "--url",
        &d1.url,
    ]);
    let read = weft(&[
        "ddata",
        "get",
        "hits",
        "--consistency",
        "all",
        "--url",
        &d3.url,
    ]);
    assert_eq!(read["value"], json!(total + 5), "{read}");

    // One node down: a majority write on d1 is read back at majority on d2 at once.
    d3.kill();
    let (status, body) = post(
        &http,
        &d1.url,
        "leader",
        json!({"op": "set", "value": "d1", "consistency": "majority"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(&http, &d2.url, "leader", "?consistency=majority").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["value"], json!("d1"));

    // A deletion at majority stays deleted: reads say so, and the key takes no more writes.
    let response = http
        .delete(format!("{}/ddata/cart?consistency=majority", d1.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (status, body) = get(&http, &d2.url, "cart", "?consistency=majority").await;
    assert_eq!(
        (status, body["deleted"].clone()),
        (200, json!(true)),
        "{body}"
    );
    let (status, body) = post(
        &http,
        &d2.url,
        "cart",
        json!({"op": "add", "element": "back"}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("key_deleted")),
        "{body}"
    );
    drop((d1, d2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_key_comes_back_after_a_restart_and_another_does_not() {
    let postgres = Postgres::start();
    let cluster = TestCluster {
        extra: "[ddata]\ndurable_keys = [\"cart-*\"]\n".into(),
        ..TestCluster::new(&postgres, "s1").await
    };
    let config = cluster.config("s1", "actor");
    let http = reqwest::Client::new();

    let node = ServeProcess::start_with_config(&config);
    wait_for_members(&http, &node.url, &["s1"]).await;
    for element in ["apples", "pears", "plums"] {
        let (status, body) = post(
            &http,
            &node.url,
            "cart-1",
            json!({"op": "add", "element": element}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, _) = post(
        &http,
        &node.url,
        "cart-1",
        json!({"op": "remove", "element": "pears"}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = post(
        &http,
        &node.url,
        "hits",
        json!({"op": "increment", "by": 3}),
    )
    .await;
    assert_eq!(status, 200);
    // A clean stop writes what is queued; the restart reads it back, alone in its cluster.
    assert!(node.interrupt().success());

    let node = ServeProcess::start_with_config(&config);
    wait_for_members(&http, &node.url, &["s1"]).await;
    let (status, body) = get(&http, &node.url, "cart-1", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["value"], json!(["apples", "plums"]));
    let (status, body) = get(&http, &node.url, "hits", "").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("unknown_key")),
        "{body}"
    );
    // It goes on from the reloaded state.
    let (status, _) = post(
        &http,
        &node.url,
        "cart-1",
        json!({"op": "add", "element": "figs"}),
    )
    .await;
    assert_eq!(status, 200);
    let (_, body) = get(&http, &node.url, "cart-1", "").await;
    assert_eq!(body["value"], json!(["apples", "figs", "plums"]));
}

/// A majority write followed by a majority read on another node, many times, while d1 is cut off,
/// while the heal's traffic from q1 arrives 1.8 s late, and after: every read that answers holds
/// every write acknowledged before it. Writes and reads on the cut-off side time out (504).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn majority_reads_never_miss_an_acknowledged_majority_write_across_a_delayed_heal() {
    let postgres = Postgres::start();
    let cluster = TestCluster {
        fault_injection: true,
        ..TestCluster::new(&postgres, "q1").await
    };
    let nodes = [
        cluster.start("q1", "actor"),
        cluster.start("q2", "actor"),
        cluster.start("q3", "actor"),
    ];
    let http = reqwest::Client::new();
    for node in &nodes {
        wait_for_members(&http, &node.url, &["q1", "q2", "q3"]).await;
    }
    let urls: Vec<&str> = nodes.iter().map(|node| node.url.as_str()).collect();

    // q1 is cut off, and drops the others from its view (1 s of suspicion). Each side cuts the
    // other: the seam drops frames by peer name, and a connection opened before the peer's name
    // was known carries its address instead.
    inject_fault(
        &http,
        urls[0],
        json!({"fault": "partition", "from": ["q2", "q3"]}),
    )
    .await;
    for url in &urls[1..] {
        inject_fault(&http, url, json!({"fault": "partition", "from": ["q1"]})).await;
    }
    wait_for_members(&http, urls[0], &["q1"]).await;
    let (status, body) = post(
        &http,
        urls[0],
        "alone",
        json!({"op": "set", "value": "q1", "consistency": "all", "timeout_ms": 1000}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (504, Some("consistency_timeout")),
        "an `all` write on the cut-off node: {body}"
    );
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("reached 1 of the 3"), "{message}");
    let (status, body) = get(
        &http,
        urls[1],
        "alone",
        "?consistency=majority&timeout_ms=1000",
    )
    .await;
    assert_eq!(status, 404, "the majority side never had it: {body}");

    let mut rng = SplitMix64(0x5eed_0021);
    let mut log = PairLog::default();
    majority_pairs(&http, &urls, &mut rng, "partitioned", 8, &mut log).await;
    // The heal: q1's frames now arrive 1.8 s late, longer than the 1 s suspicion.
    for url in &urls {
        inject_fault(&http, url, json!({"fault": "heal"})).await;
    }
    inject_fault(&http, urls[0], json!({"fault": "delay", "ms": 1800})).await;
    majority_pairs(&http, &urls, &mut rng, "delayed", 8, &mut log).await;
    // The views converge while the delay lasts, and stay so: the suspicion timeout adapts to it
    // (with a fixed 1 s timeout q1 is declared down, rejoins and is declared down again, forever).
    views_settle(&http, &urls, 3).await;
    inject_fault(&http, urls[0], json!({"fault": "heal"})).await;
    majority_pairs(&http, &urls, &mut rng, "healed", 8, &mut log).await;
    let acked = log.acked;
    assert!(
        log.reads_checked >= 8 && log.writes_timed_out >= 1 && acked.len() >= 8,
        "vacuous: {} reads checked, {} writes timed out, {} acked",
        log.reads_checked,
        log.writes_timed_out,
        acked.len()
    );

    // Once quiet, every node holds every acknowledged element.
    for url in &urls {
        support::eventually(&format!("{url} holds every acknowledged write"), || {
            let (http, url, acked) = (http.clone(), url.to_string(), acked.clone());
            async move {
                let (_, body) = get(&http, &url, "log", "").await;
                let seen = elements(&body);
                acked.iter().all(|element| seen.contains(&element.as_str()))
            }
        })
        .await;
    }
}

/// Waits until every node at `urls` sees `count` members and has for 8 s on end (eight suspicion
/// timeouts of the test configs), polling; panics after [`DEADLINE`].
async fn views_settle(http: &reqwest::Client, urls: &[&str], count: usize) {
    const SETTLED: Duration = Duration::from_secs(8);
    let started = Instant::now();
    let mut full_since: Option<Instant> = None;
    loop {
        let mut full = true;
        for url in urls {
            let view = cluster_view(http, url).await.unwrap_or_default();
            full &= view["members"].as_array().map_or(0, Vec::len) == count;
        }
        full_since = if full {
            full_since.or(Some(Instant::now()))
        } else {
            None
        };
        if full_since.is_some_and(|since| since.elapsed() >= SETTLED) {
            return;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "the views did not settle on {count} members within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the majority write/read pairs saw.
#[derive(Default)]
struct PairLog {
    /// Elements whose majority write was acknowledged, in order.
    acked: Vec<String>,
    reads_checked: usize,
    writes_timed_out: usize,
}

/// The elements of the set in a read's body.
fn elements(body: &Value) -> Vec<&str> {
    body["value"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// `count` times: a majority add of a new element to `log` on a random node, then a majority read
/// on another; a read that answers must hold every element acknowledged so far.
async fn majority_pairs(
    http: &reqwest::Client,
    urls: &[&str],
    rng: &mut SplitMix64,
    phase: &str,
    count: usize,
    log: &mut PairLog,
) {
    for n in 0..count {
        let writer = rng.below(3) as usize;
        let reader = (writer + 1 + rng.below(2) as usize) % 3;
        let element = format!("{phase}-{n}");
        let body = json!({"op": "add", "element": element, "consistency": "majority",
                          "timeout_ms": 1000});
        let (status, body) = post(http, urls[writer], "log", body).await;
        match status {
            200 => log.acked.push(element),
            504 => log.writes_timed_out += 1,
            _ => panic!("a majority write on {}: {status} {body}", urls[writer]),
        }
        let query = "?consistency=majority&timeout_ms=1000";
        let (status, body) = get(http, urls[reader], "log", query).await;
        if status == 504 {
            continue;
        }
        assert!(
            status == 200 || (status == 404 && log.acked.is_empty()),
            "a majority read on {}: {status} {body}",
            urls[reader]
        );
        let seen = elements(&body);
        for element in &log.acked {
            assert!(
                seen.contains(&element.as_str()),
                "{phase}: a majority read on {} missed {element}, acknowledged by a majority \
                 write before it: {body}",
                urls[reader]
            );
        }
        log.reads_checked += 1;
    }
}

/// Subscribes to `count` distinct keys on `url` (`concurrency` at a time), reading each one's
/// first event, then leaves.
async fn subscribe_and_leave(http: &reqwest::Client, url: &str, from: usize, count: usize) {
    const CONCURRENCY: usize = 16;
    for batch in (from..from + count).collect::<Vec<_>>().chunks(CONCURRENCY) {
        let opened: Vec<_> = batch
            .iter()
            .map(|index| {
                let (http, url) = (http.clone(), url.to_string());
                // Long keys make every leaked watch cost more.
                let key = format!("sub-{index:06}-{}", "k".repeat(240));
                tokio::spawn(async move {
                    let mut events =
                        EventStream::open(&http, &format!("{url}/ddata/{key}/subscribe")).await;
                    let (name, data) = events.next().await;
                    assert_eq!((name.as_str(), &data), ("value", &json!({"value": null})));
                })
            })
            .collect();
        for subscriber in opened {
            subscriber.await.expect("a subscriber");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_to_10000_keys_and_leaving_gives_the_memory_back() {
    let postgres = Postgres::start();
    let cluster = TestCluster::new(&postgres, "m1").await;
    let node = cluster.start("m1", "actor");
    let http = reqwest::Client::new();
    wait_for_members(&http, &node.url, &["m1"]).await;

    // Keys are validated like writes.
    for key in ["k".repeat(300), "k".repeat(10_000)] {
        let response = http
            .get(format!("{}/ddata/{key}/subscribe", node.url))
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        let body: Value = response.json().await.expect("JSON");
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("invalid_ddata_request")),
            "{body}"
        );
    }

    // Warm up (allocator arenas, connections), then measure.
    subscribe_and_leave(&http, &node.url, 0, 1_000).await;
    let before = rss_bytes(node.pid());
    subscribe_and_leave(&http, &node.url, 1_000, 10_000).await;
    let limit = before + before / 20;
    support::eventually(
        "the node's RSS returns to within 5% of where it started",
        || {
            let rss = rss_bytes(node.pid());
            async move { rss <= limit }
        },
    )
    .await;
    println!(
        "RSS before {} KiB, after 10,000 subscriptions {} KiB",
        before / 1024,
        rss_bytes(node.pid()) / 1024
    );
}
