//! `weft plugin upgrade` and `rollback` over a real `weft serve` process: a build that folds
//! the journal the same is activated, one whose `apply` differs or traps is refused (naming the
//! first diverging entity and event), and neither an upgrade nor a rollback fails a command sent
//! meanwhile.

mod support;

use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use support::node::{ServeProcess, command_ok, get_json, send_command, upload_plugin, weft_binary};
use support::{plugin_bytes, plugin_path, rebuilt};

async fn post(http: &reqwest::Client, url: &str, body: Vec<u8>) -> (reqwest::StatusCode, Value) {
    let response = http.post(url).body(body).send().await.unwrap();
    (response.status(), response.json().await.unwrap())
}

fn current_hash(plugins: &Value, name: &str) -> String {
    plugins["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|plugin| plugin["name"] == name)
        .map(|plugin| plugin["content_hash"].as_str().unwrap().to_owned())
        .unwrap()
}

fn start() -> (tempfile::TempDir, ServeProcess) {
    let root = tempfile::tempdir().unwrap();
    let plugins = root.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let node = ServeProcess::start(&root.path().join("data"), &plugins);
    (root, node)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compatible_build_and_a_rollback_under_four_clients_lose_no_command() {
    let (root, node) = start();
    let http = reqwest::Client::new();
    let url = node.url.clone();
    let first = upload_plugin(&http, &url, "counter", plugin_bytes("counter")).await;
    let entities = ["c0", "c1", "c2", "c3", "c4", "c5"];
    for id in entities {
        command_ok(
            &http,
            &url,
            "counter",
            id,
            &json!({"op": "increment", "by": 1}),
        )
        .await;
    }

    // Four clients increment the counters by 1 until told to stop; each counts its successes.
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|client| {
            let (http, url, stop) = (http.clone(), url.clone(), stop.clone());
            tokio::spawn(async move {
                let mut sent = [0i64; 6];
                let mut n = client;
                while !stop.load(Ordering::Relaxed) {
                    let index = n % entities.len();
                    let (status, body) = send_command(
                        &http,
                        &url,
                        "counter",
                        entities[index],
                        &json!({"op": "increment", "by": 1}),
                    )
                    .await;
                    assert_eq!(status, reqwest::StatusCode::OK, "a command failed: {body}");
                    sent[index] += 1;
                    n += 1;
                }
                sent
            })
        })
        .collect();

    let second = rebuilt(&plugin_bytes("counter"));
    let (status, report) = post(&http, &format!("{url}/plugins/counter/upgrade"), second).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{report}");
    assert_eq!(report["verdict"], "compatible", "{report}");
    assert_eq!(report["activated"], true);
    assert!(
        report["entities_checked"].as_u64().unwrap() >= 6,
        "{report}"
    );
    assert!(report["events_replayed"].as_u64().unwrap() >= 6, "{report}");
    let upgraded = report["load"]["content_hash"].as_str().unwrap().to_owned();
    assert_ne!(upgraded, first["content_hash"].as_str().unwrap());
    assert_eq!(
        current_hash(&get_json(&http, &format!("{url}/plugins")).await, "counter"),
        upgraded
    );
    let increment = json!({"op": "increment", "by": 1});
    let served = command_ok(&http, &url, "counter", "c0", &increment).await;
    assert_eq!(served["plugin"], report["to"]);

    let (status, rollback) = post(&http, &format!("{url}/plugins/counter/rollback"), vec![]).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{rollback}");
    assert_eq!(rollback["load"]["content_hash"], first["content_hash"]);
    assert_eq!(rollback["durable"], true);

    stop.store(true, Ordering::Relaxed);
    let mut expected = [1i64; 6];
    expected[0] += 1;
    for client in clients {
        for (index, sent) in client.await.unwrap().iter().enumerate() {
            expected[index] += sent;
        }
    }
    for (index, id) in entities.iter().enumerate() {
        let state = get_json(&http, &format!("{url}/entities/counter/{id}")).await;
        assert_eq!(state["state"]["value"], expected[index], "{id}: {state}");
    }

    // The rollback is recorded: a restart keeps the rolled-back build.
    node.terminate();
    let node = ServeProcess::start(&root.path().join("data"), &root.path().join("plugins"));
    assert_eq!(
        current_hash(
            &get_json(&http, &format!("{}/plugins", node.url)).await,
            "counter"
        ),
        first["content_hash"].as_str().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_whose_apply_differs_is_refused_naming_the_first_diverging_event() {
    let (_root, node) = start();
    let http = reqwest::Client::new();
    let url = node.url.clone();
    upload_plugin(&http, &url, "versioned", plugin_bytes("versioned")).await;
    for id in ["v1", "v2"] {
        for n in 1..=3 {
            command_ok(&http, &url, "versioned", id, &json!({"n": n})).await;
        }
    }

    let (status, body) = post(
        &http,
        &format!("{url}/plugins/versioned/upgrade"),
        plugin_bytes("versioned-v2"),
    )
    .await;
    assert_eq!(status, reqwest::StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "upgrade_diverged");
    let divergence = &body["report"]["divergence"];
    assert_eq!(divergence["stream"], "versioned|v1", "{body}");
    assert_eq!(divergence["seq_nr"], 1);
    assert_eq!(
        divergence["current_state"],
        json!({"applied": 1, "last_build": 1})
    );
    assert_eq!(
        divergence["new_state"],
        json!({"applied": 1, "last_build": 2})
    );
    assert_eq!(body["report"]["activated"], false);
    // The old build keeps serving.
    let reply = command_ok(&http, &url, "versioned", "v1", &json!({"n": 9})).await;
    assert_eq!(reply["reply"]["build"], 1, "{reply}");

    // The CLI prints the report and exits non-zero.
    let output = std::process::Command::new(weft_binary())
        .args(["plugin", "--url", &url, "upgrade", "versioned"])
        .arg(plugin_path("versioned-v2"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{stdout}");
    assert!(stdout.contains("\"verdict\": \"diverged\""), "{stdout}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("upgrade_diverged"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_during_the_replay_refuses_the_upgrade_unless_forced() {
    let (_root, node) = start();
    let http = reqwest::Client::new();
    let url = node.url.clone();
    upload_plugin(&http, &url, "counter", plugin_bytes("counter")).await;
    command_ok(
        &http,
        &url,
        "counter",
        "c1",
        &json!({"op": "increment", "by": 2}),
    )
    .await;
    // `versioned` cannot read the counter's state: its apply panics, which traps.
    let upgrade = format!("{url}/plugins/counter/upgrade");

    let (status, body) = post(&http, &upgrade, plugin_bytes("versioned")).await;
    assert_eq!(status, reqwest::StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "upgrade_replay_failed");
    let failure = &body["report"]["replay_failure"];
    assert_eq!(failure["build"], "new", "{body}");
    assert_eq!(failure["seq_nr"], 1);
    assert_eq!(failure["code"], "plugin_trapped");
    let reply = command_ok(&http, &url, "counter", "c1", &json!({"op": "get"})).await;
    assert_eq!(reply["reply"]["value"], 2);

    let (status, body) = post(
        &http,
        &format!("{upgrade}?force=true"),
        plugin_bytes("versioned"),
    )
    .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    assert_eq!(body["verdict"], "replay_failed");
    assert_eq!(body["forced"], true);
    assert_eq!(body["activated"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_with_no_previous_build_changes_nothing() {
    let (_root, node) = start();
    let http = reqwest::Client::new();
    upload_plugin(&http, &node.url, "counter", plugin_bytes("counter")).await;
    let (status, body) = post(
        &http,
        &format!("{}/plugins/counter/rollback", node.url),
        vec![],
    )
    .await;
    assert_eq!(status, reqwest::StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "no_previous_version");
    let (status, body) = post(
        &http,
        &format!("{}/plugins/nothing/rollback", node.url),
        vec![],
    )
    .await;
    assert_eq!(status, reqwest::StatusCode::NOT_FOUND, "{body}");
}
