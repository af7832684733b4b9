//! `weft serve` as a real process over HTTP: state survives a restart, nothing acknowledged
//! is lost or duplicated when the process is killed with SIGKILL under load, and the port answers
//! while plugins are still compiling (`/health`, `/ready`, `503 plugins_loading`).

mod support;

use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::node::{ServeProcess, plugins_dir};
use support::{eventually_within, plugin_bytes};

async fn send(
    http: &reqwest::Client,
    url: &str,
    entity_type: &str,
    id: &str,
    command: Value,
) -> reqwest::Result<Value> {
    http.post(format!("{url}/entities/{entity_type}/{id}"))
        .json(&command)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await
}

async fn get(http: &reqwest::Client, url: &str, path: &str) -> Value {
    http.get(format!("{url}{path}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_and_seq_nr_survive_a_restart() {
    let root = tempfile::tempdir().unwrap();
    let plugins = plugins_dir(root.path(), &["counter"]);
    let data = root.path().join("data");
    let http = reqwest::Client::new();

    let node = ServeProcess::start(&data, &plugins);
    for by in [3, 4, 5] {
        send(
            &http,
            &node.url,
            "counter",
            "c1",
            json!({"op": "increment", "by": by}),
        )
        .await
        .unwrap();
    }
    let reply = send(
        &http,
        &node.url,
        "counter",
        "c1",
        json!({"op": "decrement", "by": 2}),
    )
    .await
    .unwrap();
    assert_eq!(reply["reply"], json!({"value": 10}));
    assert_eq!(reply["seq_nr"], json!(4));
    node.kill();

    let node = ServeProcess::start(&data, &plugins);
    let state = get(&http, &node.url, "/entities/counter/c1").await;
    assert_eq!(
        state["state"],
        json!({"value": 10}),
        "{}",
        node.log.lock().unwrap()
    );
    assert_eq!(state["seq_nr"], json!(4));
    let reply = send(
        &http,
        &node.url,
        "counter",
        "c1",
        json!({"op": "increment", "by": 1}),
    )
    .await
    .unwrap();
    assert_eq!(reply["seq_nr"], json!(5));
    assert_eq!(reply["reply"], json!({"value": 11}));
}

/// How a test stops a node under load.
#[derive(Clone, Copy, PartialEq)]
enum Stop {
    Kill,
    Interrupt,
    Terminate,
}

/// Four clients stream increments with distinct amounts; the process is SIGKILLed after at
/// least 200 acknowledgements. After a restart every acknowledged increment is in the journal
/// exactly once, sequence numbers are gap-free, and the state is the sum of the events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acknowledged_event() {
    stop_under_load(Stop::Kill).await;
}

/// SIGTERM and SIGINT under load: the node exits 0, and every increment it applied was
/// answered — no client saw its connection cut on a command that is in the journal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_and_sigint_answer_every_applied_command_and_exit_0() {
    stop_under_load(Stop::Terminate).await;
    stop_under_load(Stop::Interrupt).await;
}

async fn stop_under_load(stop: Stop) {
    const CLIENTS: u64 = 4;
    const COMMANDS_PER_CLIENT_MAX: u64 = 5_000;
    const ACKS_BEFORE_STOP: usize = 200;
    let root = tempfile::tempdir().unwrap();
    let plugins = plugins_dir(root.path(), &["counter"]);
    let data = root.path().join("data");
    let node = ServeProcess::start(&data, &plugins);
    // Each command's amount, and whether it was answered.
    let (outcome_tx, mut outcome_rx) = tokio::sync::mpsc::unbounded_channel::<(u64, bool)>();

    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (url, outcomes) = (node.url.clone(), outcome_tx.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                for n in 0..COMMANDS_PER_CLIENT_MAX {
                    // Distinct amounts identify each command in the journal.
                    let by = 1 + client + n * CLIENTS;
                    let command = json!({"op": "increment", "by": by});
                    let answered = send(&http, &url, "counter", "hot", command).await.is_ok();
                    if outcomes.send((by, answered)).is_err() || !answered {
                        return; // the node is gone
                    }
                }
            })
        })
        .collect();
    drop(outcome_tx);

    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut acked, mut unanswered) = (Vec::new(), Vec::new());
    while acked.len() < ACKS_BEFORE_STOP {
        assert!(
            Instant::now() < deadline,
            "too few acknowledgements before the deadline"
        );
        match tokio::time::timeout(Duration::from_secs(30), outcome_rx.recv()).await {
            Ok(Some((by, true))) => acked.push(by),
            other => panic!(
                "clients stopped early ({other:?}):\n{}",
                node.log.lock().unwrap()
            ),
        }
    }
    let exit = match stop {
        Stop::Kill => {
            node.kill();
            None
        }
        Stop::Interrupt => Some(
            tokio::task::spawn_blocking(|| node.interrupt())
                .await
                .unwrap(),
        ),
        Stop::Terminate => Some(
            tokio::task::spawn_blocking(|| node.terminate())
                .await
                .unwrap(),
        ),
    };
    for client in clients {
        client.await.unwrap();
    }
    while let Ok((by, answered)) = outcome_rx.try_recv() {
        if answered {
            acked.push(by)
        } else {
            unanswered.push(by)
        }
    }
    if let Some(exit) = exit {
        assert!(exit.success(), "a graceful stop exits 0: {exit}");
    }

    let node = ServeProcess::start(&data, &plugins);
    let http = reqwest::Client::new();
    let mut events = Vec::new();
    loop {
        let page = get(
            &http,
            &node.url,
            &format!("/entities/counter/hot/events?from={}", events.len() + 1),
        )
        .await;
        let page = page["events"].as_array().unwrap().clone();
        if page.is_empty() {
            break;
        }
        events.extend(page);
    }
    for (index, event) in events.iter().enumerate() {
        assert_eq!(
            event["seq_nr"],
            json!(index as u64 + 1),
            "sequence numbers are gap-free"
        );
    }
    let amounts: Vec<u64> = events
        .iter()
        .map(|e| e["payload"]["by"].as_u64().unwrap())
        .collect();
    for by in &acked {
        let copies = amounts.iter().filter(|a| *a == by).count();
        assert_eq!(
            copies, 1,
            "acknowledged increment {by} is in the journal {copies} times"
        );
    }
    if stop != Stop::Kill {
        for by in &unanswered {
            assert!(
                !amounts.contains(by),
                "increment {by} was applied, but its client's connection was cut"
            );
        }
    }
    let state = get(&http, &node.url, "/entities/counter/hot").await;
    assert_eq!(state["seq_nr"], json!(events.len()));
    assert_eq!(state["state"]["value"], json!(amounts.iter().sum::<u64>()));
}

/// Plugins uploaded and entity types bound over the API come back after a SIGKILL: the current
/// version of each upload (not the first), the binding with its settings, and the entity's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_and_bindings_survive_a_restart() {
    let root = tempfile::tempdir().unwrap();
    let plugins = plugins_dir(root.path(), &["counter"]);
    let data = root.path().join("data");
    let http = reqwest::Client::new();
    let upload = |url: String, bytes: Vec<u8>| {
        let http = http.clone();
        async move {
            let answer: Value = http
                .put(format!("{url}/plugins/ledger"))
                .body(bytes)
                .send()
                .await
                .unwrap()
                .error_for_status()
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(answer["durable"], json!(true), "{answer}");
            answer["version"].clone()
        }
    };

    let node = ServeProcess::start(&data, &plugins);
    let rust = upload(node.url.clone(), plugin_bytes("counter")).await;
    http.put(format!("{}/entity-types/books", node.url))
        .json(&json!({"plugin": "ledger", "snapshot_every": 5}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let reply = send(
        &http,
        &node.url,
        "books",
        "b1",
        json!({"op": "increment", "by": 3}),
    )
    .await
    .unwrap();
    assert_eq!(reply["reply"], json!({"value": 3}));
    let javascript = upload(node.url.clone(), plugin_bytes("counter-js")).await;
    assert_ne!(rust, javascript);
    let reply = send(
        &http,
        &node.url,
        "books",
        "b1",
        json!({"op": "increment", "by": 4}),
    )
    .await
    .unwrap();
    assert_eq!(reply["plugin"], javascript);
    node.kill();

    let node = ServeProcess::start(&data, &plugins);
    let listed = get(&http, &node.url, "/plugins").await;
    let ledger = listed["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|plugin| plugin["name"] == "ledger")
        .cloned();
    assert_eq!(
        ledger.map(|plugin| plugin["version"].clone()),
        Some(javascript.clone()),
        "{}",
        node.log.lock().unwrap()
    );
    let types = get(&http, &node.url, "/entity-types").await;
    let books = types["entity_types"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entity_type| entity_type["name"] == "books")
        .cloned()
        .expect("the binding is back");
    assert_eq!(
        (&books["plugin"], &books["snapshot_every"]),
        (&json!("ledger"), &json!(5))
    );
    let reply = send(
        &http,
        &node.url,
        "books",
        "b1",
        json!({"op": "increment", "by": 1}),
    )
    .await
    .unwrap();
    assert_eq!(
        (&reply["reply"], &reply["seq_nr"]),
        (&json!({"value": 8}), &json!(3))
    );
    assert_eq!(reply["plugin"], javascript);
    let history = get(&http, &node.url, "/plugins/ledger/history").await;
    let versions: Vec<&Value> = history["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|record| &record["version"])
        .collect();
    assert_eq!(versions, [&rust, &javascript]);
}

/// How long a test waits for cold compiles of Python and JavaScript plugins, on a busy machine.
const COLD_COMPILES_MAX: Duration = Duration::from_secs(300);

/// `GET path`: the status and the JSON body.
async fn status_of(http: &reqwest::Client, url: &str, path: &str) -> (u16, Value) {
    let response = http.get(format!("{url}{path}")).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// Increments entity `c1` of `entity_type` by `by`: the reply.
async fn increment(http: &reqwest::Client, url: &str, entity_type: &str, by: u64) -> Value {
    send(
        http,
        url,
        entity_type,
        "c1",
        json!({"op": "increment", "by": by}),
    )
    .await
    .unwrap()
}

/// The port answers before the plugins are compiled. A fresh compile cache makes the JavaScript
/// and Python counters compile cold (each takes many seconds), and `counter-py` loads last: until
/// it is loaded `/health` is 200, `/ready` is 503 listing it, and its commands get
/// `503 plugins_loading` with `Retry-After`; then `/ready` turns 200 and the command is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_port_answers_while_plugins_compile_and_commands_wait_for_them() {
    let root = tempfile::tempdir().unwrap();
    let plugins = plugins_dir(root.path(), &["counter-js", "counter-py"]);
    // The default compile cache is under the data directory: fresh, so every compile is cold.
    let node = ServeProcess::start_listening(&root.path().join("data"), &plugins);
    let http = reqwest::Client::new();

    let (status, health) = status_of(&http, &node.url, "/health").await;
    assert_eq!(status, 200, "{health}");
    let (status, ready) = status_of(&http, &node.url, "/ready").await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["ready"], json!(false));
    assert!(
        ready["loading"]
            .as_array()
            .unwrap()
            .contains(&json!("counter-py")),
        "{ready}"
    );
    assert_eq!(ready["total"], json!(2), "{ready}");
    let early = http
        .post(format!("{}/entities/counter-py/c1", node.url))
        .json(&json!({"op": "increment", "by": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(early.status().as_u16(), 503);
    assert!(early.headers().contains_key("retry-after"));
    let early: Value = early.json().await.unwrap();
    assert_eq!(early["error"]["code"], json!("plugins_loading"), "{early}");

    eventually_within("the node becomes ready", COLD_COMPILES_MAX, || async {
        status_of(&http, &node.url, "/ready").await.0 == 200
    })
    .await;
    let (_, ready) = status_of(&http, &node.url, "/ready").await;
    assert_eq!(
        (&ready["loaded"], &ready["total"], &ready["loading"]),
        (&json!(2), &json!(2), &json!([])),
        "{ready}"
    );
    let reply = increment(&http, &node.url, "counter-py", 2).await;
    assert_eq!(
        reply["reply"],
        json!({"value": 2}),
        "the early command did nothing"
    );
    assert!(
        node.log.lock().unwrap().contains("ready in "),
        "start-up says when it is ready"
    );
}

/// A plugin that cannot load does not keep the node unready: `/ready` turns 200 and lists it
/// under `failed`, and the plugins that loaded are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_fails_to_load_is_listed_and_the_node_becomes_ready() {
    let root = tempfile::tempdir().unwrap();
    let plugins = plugins_dir(root.path(), &["counter"]);
    std::fs::write(plugins.join("broken.wasm"), b"not a component").unwrap();
    let node = ServeProcess::start_listening(&root.path().join("data"), &plugins);
    let http = reqwest::Client::new();

    eventually_within("the node becomes ready", COLD_COMPILES_MAX, || async {
        status_of(&http, &node.url, "/ready").await.0 == 200
    })
    .await;
    let (_, ready) = status_of(&http, &node.url, "/ready").await;
    assert_eq!(ready["ready"], json!(true));
    assert_eq!((&ready["loaded"], &ready["total"]), (&json!(1), &json!(2)));
    let failed = ready["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{ready}");
    assert_eq!(failed[0]["plugin"], json!("broken"), "{ready}");
    assert!(!failed[0]["error"].as_str().unwrap().is_empty());
    let reply = increment(&http, &node.url, "counter", 1).await;
    assert_eq!(reply["reply"], json!({"value": 1}));
    // Ready: an entity type nobody serves is unknown, not loading.
    let unknown = http
        .post(format!("{}/entities/broken/b1", node.url))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status().as_u16(), 404);
}
