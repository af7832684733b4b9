//! The HTTP API of a node running in this process: bad input is refused with a clear JSON error
//! and writes nothing; a plugin hot-loaded over HTTP under load fails no command.

mod support;

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use support::node::{TestNode, config};
use support::plugin_bytes;
use weft::entity::{EntityTypeConfig, ReplicationConfig};

/// Sends `request` and checks that it fails with `status`, `code` and a message containing
/// `fragment`.
async fn expect_error(
    request: reqwest::RequestBuilder,
    status: StatusCode,
    code: &str,
    fragment: &str,
) {
    let response = request.send().await.expect("the node answers");
    assert_eq!(response.status(), status, "status for {code}");
    let body: Value = response.json().await.expect("errors are JSON");
    assert_eq!(body["error"]["code"], json!(code), "{body}");
    let message = body["error"]["message"].as_str().expect("a message");
    assert!(
        message.contains(fragment),
        "{code}: {message:?} should mention {fragment:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_writes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let mut config = config(root.path(), &["counter"]);
    config.node.max_command_bytes = 4 << 10;
    let TestNode { node, url, http } = TestNode::start(config).await;
    let command = |path: &str| http.post(format!("{url}{path}"));
    let oversize = json!({"op": "increment", "by": 1, "padding": "x".repeat(8 << 10)});
    let cases = [
        (
            command("/entities/counter/bad").body("{not json"),
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "not valid JSON",
        ),
        (
            command("/entities/counter/bad"),
            StatusCode::BAD_REQUEST,
            "empty_body",
            "body is required",
        ),
        (
            command("/entities/nosuchtype/x").json(&json!({"op": "get"})),
            StatusCode::NOT_FOUND,
            "unknown_entity_type",
            "nosuchtype",
        ),
        (
            command("/entities/counter/bad").json(&json!({"op": "decrement", "by": 1})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "command_rejected",
            "below the floor",
        ),
        (
            command("/entities/counter/bad").json(&json!({"op": "explode"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "command_rejected",
            "cannot decode command",
        ),
        (
            command("/entities/counter/bad").json(&oversize),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "length limit",
        ),
        (
            http.put(format!("{url}/plugins/counter"))
                .body("not a component"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_plugin",
            "not WebAssembly",
        ),
        (
            http.put(format!("{url}/plugins/Bad%20Name")).body("x"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_plugin_name",
            "Bad Name",
        ),
        (
            http.get(format!("{url}/no/such/route")),
            StatusCode::NOT_FOUND,
            "not_found",
            "/no/such/route",
        ),
    ];
    for (request, status, code, fragment) in cases {
        expect_error(request, status, code, fragment).await;
    }

    // Nothing was written, and the plugin was not replaced.
    let events: Value = http
        .get(format!("{url}/entities/counter/bad/events"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(events["events"], json!([]));
    let state: Value = http
        .get(format!("{url}/entities/counter/bad"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (state["seq_nr"].clone(), state["state"].clone()),
        (json!(0), json!({"value": 0}))
    );
    let plugins: Value = http
        .get(format!("{url}/plugins"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(plugins["plugins"].as_array().unwrap().len(), 1);
    assert_eq!(
        node.plugins.list()[0].content_hash,
        node.plugins.get("counter").unwrap().content_hash()
    );
    node.shutdown().await.unwrap();
}

/// Clients keep sending while a new build is uploaded with `PUT /plugins/versioned`: no command
/// fails, commands after the upload run on the new build, and events record their version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_load_over_http_under_load_fails_no_command() {
    const CLIENTS: usize = 4;
    let root = tempfile::tempdir().unwrap();
    let TestNode { node, url, http } = TestNode::start(config(root.path(), &["versioned"])).await;
    let old_version = node.plugins.get("versioned").unwrap().id().to_owned();
    let uploaded = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(120);

    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (http, url, uploaded) = (http.clone(), url.clone(), uploaded.clone());
            tokio::spawn(async move {
                let mut after_upload = 0;
                let mut sent = 0u64;
                while after_upload < 50 {
                    assert!(Instant::now() < deadline, "client {client} ran out of time");
                    let started_after_upload = uploaded.load(Ordering::SeqCst);
                    let entity_id = format!("e{client}");
                    let command = json!({"n": sent});
                    let body =
                        support::node::command_ok(&http, &url, "versioned", &entity_id, &command)
                            .await;
                    if started_after_upload {
                        assert_eq!(body["reply"]["build"], json!(2));
                        after_upload += 1;
                    }
                    sent += 1;
                }
                sent
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(200)).await;
    let report =
        support::node::upload_plugin(&http, &url, "versioned", plugin_bytes("versioned-v2")).await;
    uploaded.store(true, Ordering::SeqCst);
    let new_version = report["version"].as_str().unwrap().to_owned();
    assert_eq!(report["replaced"], json!(old_version));
    assert_ne!(new_version, old_version);

    for client in clients {
        assert!(client.await.unwrap() >= 50);
    }
    let events: Value = http
        .get(format!("{url}/entities/versioned/e0/events"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let events = events["events"].as_array().unwrap();
    for event in events {
        let build = event["payload"]["build"].as_u64().unwrap();
        let expected = if build == 1 {
            &old_version
        } else {
            &new_version
        };
        assert_eq!(event["plugin"].as_str().unwrap(), expected, "event {event}");
    }
    assert_eq!(events.last().unwrap()["plugin"], json!(new_version));
    node.shutdown().await.unwrap();
}

/// A `.wasm` file that appears in or changes in the watched plugins directory is hot-loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugins_directory_is_watched() {
    let root = tempfile::tempdir().unwrap();
    let config = config(root.path(), &["versioned"]);
    let dir = config.node.plugins_dir.clone().unwrap();
    let TestNode { node, .. } = TestNode::start(config).await;
    let first = node.plugins.get("versioned").unwrap().id().to_owned();

    // Write through a temporary name and rename, as deploy tools do.
    let staged = dir.join("versioned.wasm.part");
    std::fs::write(&staged, plugin_bytes("versioned-v2")).unwrap();
    std::fs::rename(&staged, dir.join("versioned.wasm")).unwrap();
    std::fs::write(dir.join("counter.wasm"), plugin_bytes("counter")).unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let swapped = node.plugins.get("versioned").unwrap().id() != first;
        let added = node.plugins.get("counter").is_ok();
        if swapped && added {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the watcher did not load the new files in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        node.entities.types().iter().any(|t| t.name == "counter"),
        "a new entity plugin serves its own type"
    );
    node.shutdown().await.unwrap();
}

/// A new build of a resolver that a replicated entity type folds with would re-decide the
/// history each replica holds, at a different moment on each: the upload is refused with the
/// reason and the loaded build stays; a resolver no type uses still hot-loads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_build_of_a_resolver_in_use_is_refused_with_the_reason() {
    let root = tempfile::tempdir().unwrap();
    let mut config = config(root.path(), &["counter", "highest-bid"]);
    config.entities.insert(
        "tally".into(),
        EntityTypeConfig {
            replication: Some(ReplicationConfig {
                replicas: vec!["a".into(), "b".into()],
                resolver: "highest-bid".into(),
                pull_interval_ms: 1_000,
            }),
            ..EntityTypeConfig::for_plugin("counter")
        },
    );
    let TestNode {
        node: _node,
        url,
        http,
    } = TestNode::start(config).await;
    let version = |plugins: &Value| {
        plugins["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|plugin| plugin["name"] == "highest-bid")
            .map(|plugin| plugin["version"].clone())
    };
    let before = version(&support::node::get_json(&http, &format!("{url}/plugins")).await);
    expect_error(
        http.put(format!("{url}/plugins/highest-bid"))
            .body(plugin_bytes("highest-bid-py")),
        StatusCode::CONFLICT,
        "resolver_bound",
        "tally",
    )
    .await;
    let after = version(&support::node::get_json(&http, &format!("{url}/plugins")).await);
    assert_eq!(after, before);
    assert!(before.is_some());

    // The same build dropped into the watched plugins directory is refused too. Two probes
    // written after it, each once the one before has loaded, show its scan has finished.
    let plugins_dir = root.path().join("plugins");
    std::fs::write(
        plugins_dir.join("highest-bid.wasm"),
        plugin_bytes("highest-bid-py"),
    )
    .unwrap();
    for probe in ["probe-1", "probe-2"] {
        std::fs::write(
            plugins_dir.join(format!("{probe}.wasm")),
            plugin_bytes("counter"),
        )
        .unwrap();
        support::eventually(
            &format!("{probe} is loaded from the plugins directory"),
            || {
                let (http, url) = (http.clone(), url.clone());
                async move {
                    let plugins = support::node::get_json(&http, &format!("{url}/plugins")).await;
                    plugins.to_string().contains(probe)
                }
            },
        )
        .await;
    }
    let from_directory = version(&support::node::get_json(&http, &format!("{url}/plugins")).await);
    assert_eq!(from_directory, before);

    support::node::upload_plugin(
        &http,
        &url,
        "hostile-resolver",
        plugin_bytes("hostile-resolver"),
    )
    .await;
}

/// A cluster node whose journal is its own would start a placed entity from nothing on its new
/// owner after a failover: such a node refuses placed types at start and over the API, binds no
/// type on its own, and serves replicated types.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_node_with_its_own_journal_takes_only_replicated_types() {
    let root = tempfile::tempdir().unwrap();
    let clustered = |config: &mut weft::config::Config| {
        config.cluster = Some(toml::from_str("name = \"a\"\nlisten = \"127.0.0.1:0\"").unwrap());
    };
    let mut placed = config(root.path(), &["counter"]);
    clustered(&mut placed);
    placed
        .entities
        .insert("cart".into(), EntityTypeConfig::for_plugin("counter"));
    let refused = weft::node::Node::start(placed)
        .await
        .err()
        .expect("refused");
    assert!(
        format!("{refused:#}").contains("entity type `cart` would be placed across the cluster, but this node's journal is its own"),
        "{refused:#}"
    );

    let mut replicated = config(root.path(), &["counter"]);
    clustered(&mut replicated);
    replicated.entities.insert(
        "tally".into(),
        EntityTypeConfig {
            replication: Some(ReplicationConfig {
                replicas: vec!["a".into()],
                ..ReplicationConfig::default()
            }),
            ..EntityTypeConfig::for_plugin("counter")
        },
    );
    let TestNode {
        node: _node,
        url,
        http,
    } = TestNode::start(replicated).await;
    let types = support::node::get_json(&http, &format!("{url}/entity-types")).await;
    let names: Vec<&str> = types["entity_types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entity_type| entity_type["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["tally"],
        "the counter plugin was not bound as a placed type"
    );
    expect_error(
        http.put(format!("{url}/entity-types/cart"))
            .json(&serde_json::json!({"plugin": "counter"})),
        StatusCode::BAD_REQUEST,
        "invalid_name",
        "postgres",
    )
    .await;
}
