//! Deployments across a cluster of real `weft serve` processes sharing a PostgreSQL journal: a
//! build uploaded to one node is loaded, recorded and served by every node; two uploads of one
//! name made at once on two nodes end with the same winner everywhere; a node that joins later
//! has the build before placement can give it an entity of its type; a node that cannot load a
//! build says so; and a build received from a peer is served again after a restart with no peer
//! left.

mod support;

use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use support::cluster::{TestCluster, cluster_view, wait_for_members};
use support::eventually;
use support::node::{ServeProcess, get_json, send_command, upload_plugin};
use support::plugin_bytes;
use support::services::Postgres;

/// Entities of the uploaded type that commands go to: enough that each node owns some.
const ENTITIES: usize = 12;

/// The hash of `plugin` on the node at `url`, if it has it loaded.
async fn loaded_hash(http: &reqwest::Client, url: &str, plugin: &str) -> Option<String> {
    let plugins = get_json(http, &format!("{url}/plugins")).await;
    plugins["plugins"]
        .as_array()?
        .iter()
        .find(|loaded| loaded["name"] == plugin)
        .and_then(|loaded| loaded["content_hash"].as_str().map(str::to_owned))
}

/// Waits until every node serves `hash` as `plugin` and the first says the cluster converged.
async fn wait_for_everywhere(http: &reqwest::Client, urls: &[&str], plugin: &str, hash: &str) {
    for url in urls {
        eventually(&format!("{url} serves {plugin} {hash}"), || async {
            loaded_hash(http, url, plugin).await.as_deref() == Some(hash)
        })
        .await;
    }
    eventually("the cluster reports it converged", || async {
        let plugins = get_json(http, &format!("{}/plugins", urls[0])).await;
        let view = cluster_view(http, urls[0]).await.unwrap_or_default();
        plugins["cluster"]["converged"] == true && view["converged"] == true
    })
    .await;
}

/// Sends a command to every entity through every node in `urls`: each must be answered by
/// `version`, whichever node owns the entity. A command that fails while an entity moves between
/// nodes (its lease not yet released) is sent again, but none may fail for want of the plugin or
/// the type.
async fn every_node_answers_with(http: &reqwest::Client, urls: &[&str], version: &str) {
    for url in urls {
        for entity in 0..ENTITIES {
            let entity = format!("e{entity}");
            eventually(&format!("{entity} answers through {url}"), || async {
                let (status, body) =
                    send_command(http, url, "versioned", &entity, &json!({"n": 1})).await;
                assert_no_missing_build(&entity, url, &body);
                if status == 200 {
                    assert_eq!(body["plugin"], version, "{entity} through {url}: {body}");
                }
                status == 200
            })
            .await;
        }
    }
}

/// Panics if a command's answer says the node lacked the plugin or the entity type.
fn assert_no_missing_build(entity: &str, url: &str, body: &Value) {
    let code = body["error"]["code"].as_str().unwrap_or_default();
    assert!(
        !matches!(code, "unknown_plugin" | "unknown_entity_type"),
        "{entity} through {url}: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_to_one_node_reaches_every_node_and_one_joining_later_has_it_first() {
    let postgres = Postgres::start();
    let mut cluster = TestCluster::new(&postgres, "a1").await;
    // Bound before its plugin exists; single-writer, so an entity moving to a joining node has
    // one writer throughout.
    cluster.extra =
        "[entities.versioned]\nplugin = \"versioned\"\nsingle_writer = true\nlease_ttl_ms = 2000\n"
            .into();
    let a1 = cluster.start("a1", "actor");
    let a2 = cluster.start("a2", "actor");
    let a3 = cluster.start("a3", "actor");
    let http = reqwest::Client::new();
    let urls = [a1.url.as_str(), a2.url.as_str(), a3.url.as_str()];
    for url in urls {
        wait_for_members(&http, url, &["a1", "a2", "a3"]).await;
    }

    // One upload, to one node.
    let first = upload_plugin(&http, &a1.url, "versioned", plugin_bytes("versioned")).await;
    let hash = first["content_hash"].as_str().unwrap().to_owned();
    wait_for_everywhere(&http, &urls, "versioned", &hash).await;
    every_node_answers_with(&http, &urls, first["version"].as_str().unwrap()).await;
    // What a peer received is recorded as an upload there is.
    let history = get_json(&http, &format!("{}/plugins/versioned/history", a2.url)).await;
    assert_eq!(history["history"][0]["content_hash"], hash, "{history}");

    // Two builds of one name uploaded at once to two nodes: one wins, everywhere.
    let (second, third) = tokio::join!(
        upload_plugin(&http, &a2.url, "versioned", plugin_bytes("versioned-v2")),
        upload_plugin(&http, &a3.url, "versioned", plugin_bytes("versioned")),
    );
    assert_ne!(second["content_hash"], third["content_hash"]);
    eventually("the nodes agree on one build", || async {
        let mut hashes = Vec::new();
        for url in urls {
            hashes.push(loaded_hash(&http, url, "versioned").await);
        }
        hashes
            .iter()
            .all(|hash| hash.is_some() && *hash == hashes[0])
    })
    .await;
    let winner = loaded_hash(&http, &a1.url, "versioned").await.unwrap();
    wait_for_everywhere(&http, &urls, "versioned", &winner).await;
    let winner_version = [&second, &third]
        .into_iter()
        .find(|upload| upload["content_hash"] == winner.as_str())
        .expect("the winner is one of the uploads")["version"]
        .as_str()
        .unwrap()
        .to_owned();
    every_node_answers_with(&http, &urls, &winner_version).await;

    // A fourth node joins. Meanwhile: every time a1 sees it as a member, it already has the
    // build, and no command through a1 finds a node without the type.
    let joined = Arc::new(AtomicBool::new(false));
    let watcher = tokio::spawn(watch_the_newcomer(
        a1.url.clone(),
        winner.clone(),
        joined.clone(),
    ));
    let sender = tokio::spawn(command_while_joining(a1.url.clone(), joined.clone()));
    let config = cluster.config("a4", "actor");
    let a4 = tokio::task::spawn_blocking(move || ServeProcess::start_with_config(&config))
        .await
        .unwrap();
    wait_for_members(&http, &a1.url, &["a1", "a2", "a3", "a4"]).await;
    wait_for_members(&http, &a4.url, &["a1", "a2", "a3", "a4"]).await;
    let all = [urls[0], urls[1], urls[2], a4.url.as_str()];
    // Entities owned by a4 are among those the commands reach now.
    every_node_answers_with(&http, &all, &winner_version).await;
    joined.store(true, Ordering::Release);
    sender.await.unwrap();
    let seen = watcher.await.unwrap();
    assert!(
        seen > 0,
        "a1 never described a4 while it joined: the check saw nothing"
    );
    wait_for_everywhere(&http, &all, "versioned", &winner).await;

    // A build that cannot load on one node: a2 binds an entity type to `tally`, and a resolver
    // is deployed as `tally`. a2 keeps running without it and says why; the cluster has not
    // converged.
    let response = http
        .put(format!("{}/entity-types/bids", a2.url))
        .json(&json!({"plugin": "tally"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let tally = upload_plugin(&http, &a1.url, "tally", plugin_bytes("highest-bid")).await;
    eventually("a2 reports the build it could not load", || async {
        let plugins = get_json(&http, &format!("{}/plugins", a1.url)).await;
        let members = plugins["cluster"]["members"].as_array().cloned();
        let a2 = members
            .into_iter()
            .flatten()
            .find(|member| member["name"] == "a2");
        a2.is_some_and(|a2| a2["deployment_failures"][0]["name"] == "tally")
            && plugins["cluster"]["converged"] == false
    })
    .await;
    assert_eq!(loaded_hash(&http, &a2.url, "tally").await, None);
    for url in [urls[0], urls[2], a4.url.as_str()] {
        eventually(&format!("{url} loads tally"), || async {
            loaded_hash(&http, url, "tally").await.is_some()
        })
        .await;
    }

    // What a3 received from a1 survives its restart on its own: every other node is gone, so
    // nobody can send it again.
    for node in [a1, a2, a4] {
        node.kill();
    }
    a3.terminate();
    let config = cluster.config("a3", "actor");
    let a3 = tokio::task::spawn_blocking(move || ServeProcess::start_with_config(&config))
        .await
        .unwrap();
    assert_eq!(
        loaded_hash(&http, &a3.url, "tally").await.as_deref(),
        tally["content_hash"].as_str()
    );
}

/// Until `joined`: sends commands through `a1` to the entities of the uploaded type; panics if
/// one fails for want of the type or plugin.
async fn command_while_joining(a1: String, joined: Arc<AtomicBool>) {
    let http = reqwest::Client::new();
    let mut round = 0;
    while !joined.load(Ordering::Acquire) {
        round += 1;
        let entity = format!("e{}", round % ENTITIES);
        let (_, body) = send_command(&http, &a1, "versioned", &entity, &json!({"n": 1})).await;
        assert_no_missing_build(&entity, &a1, &body);
    }
}

/// Until `joined`: reads a1's view; panics if a4 is a member without `hash` loaded. Returns how
/// many views described a4.
async fn watch_the_newcomer(a1: String, hash: String, joined: Arc<AtomicBool>) -> usize {
    let http = reqwest::Client::new();
    let mut described = 0;
    while !joined.load(Ordering::Acquire) {
        let Some(view) = cluster_view(&http, &a1).await else {
            continue;
        };
        let newcomer = view["members"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|member| member["name"] == "a4");
        if let Some(plugins) = newcomer.and_then(|member| member["plugins"].as_array()) {
            described += 1;
            assert!(
                plugins
                    .iter()
                    .any(|plugin: &Value| plugin["name"] == "versioned"
                        && plugin["content_hash"] == hash.as_str()),
                "a4 is a member of a1's view without the deployed build: {plugins:?}"
            );
        }
    }
    described
}
