//! DistributedData across three real `weft serve` processes on loopback: parallel updates of a
//! counter and an OR-Set from every node converge everywhere, a subscriber on one node sees the
//! final value, a majority write on one node is read back at majority on another with a third
//! node killed, a deletion stays deleted, and bad input gets a clear error.

mod support;

use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::cluster::{DEADLINE, TestCluster, wait_for_members};
use support::node::ServeProcess;
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
    node.interrupt();

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
