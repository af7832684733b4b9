//! The web console in a real headless Chromium, against a real `weft serve` in a (one-member)
//! cluster: the page served at `/` shows the members and their roles, the plugins, the entity
//! types; from a type's listing it opens an entity and shows the events a command wrote; it
//! sends a command itself, shows a single-writer entity's lease with its fencing token and the
//! live notifications — with no error in the browser's console. On a node with tokens the page
//! loads without one, and the token typed into it reaches the API and outlives a reload of the
//! tab. Screenshots are kept under `target/test-artifacts/console/`.

mod support;

use std::path::PathBuf;

use serde_json::{Value, json};
use support::browser::Browser;
use support::cluster::{TestCluster, wait_for_members};
use support::node::{TestNode, command_ok, config, get_json};
use support::services::Postgres;

fn artifacts() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts/console")
}

/// The events table the page shows: per row, the seq nr and the event as the page prints it.
async fn rendered_events(browser: &Browser) -> Vec<(String, Value)> {
    let rows = browser
        .execute(
            "return [...document.querySelectorAll('#entity-events tbody tr')] \
                 .map((row) => [...row.cells].map((cell) => cell.innerText));",
            json!([]),
        )
        .await;
    rows.as_array()
        .into_iter()
        .flatten()
        .map(|row| {
            let seq_nr = row[0].as_str().unwrap_or_default().to_owned();
            let event =
                serde_json::from_str(row[1].as_str().unwrap_or_default()).unwrap_or(Value::Null);
            (seq_nr, event)
        })
        .collect()
}

/// What the API says the entity's events are: (seq nr, payload).
async fn api_events(http: &reqwest::Client, url: &str, id: &str) -> Vec<(String, Value)> {
    let events = get_json(http, &format!("{url}/entities/counter/{id}/events")).await;
    events["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|event| (event["seq_nr"].to_string(), event["payload"].clone()))
        .collect()
}

/// Types a command into the console's form, sends it, and waits for the reply naming `seq_nr`.
async fn send_from_console(browser: &Browser, entity_id: &str, command: &str, seq_nr: u64) {
    browser.type_into("#command-type", "counter").await;
    browser.type_into("#command-id", entity_id).await;
    browser.type_into("#command-body", command).await;
    browser.click("#command-form button[type='submit']").await;
    let reply = format!("\"seq_nr\": {seq_nr}");
    browser.wait_for_text("#command-reply", &[&reply]).await;
}

/// Waits until the page's events table is exactly what the API says the entity's events are.
async fn wait_for_events(browser: &Browser, expected: &[(String, Value)]) {
    support::eventually("the page shows the entity's events", || async {
        rendered_events(browser).await.as_slice() == expected
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_the_cluster_and_an_entitys_events_in_chromium() {
    let postgres = Postgres::start();
    let cluster = TestCluster::new(&postgres, "alpha").await;
    let node = cluster.start("alpha", "actor");
    let http = reqwest::Client::new();
    let url = node.url.clone();
    wait_for_members(&http, &url, &["alpha"]).await;
    for by in [5, 7] {
        command_ok(
            &http,
            &url,
            "counter",
            "console-1",
            &json!({"op": "increment", "by": by}),
        )
        .await;
    }

    let browser = Browser::start().await;
    browser.goto(&format!("{url}/")).await;
    browser
        .wait_for_text("#members", &["alpha", "actor", "(this node)"])
        .await;
    browser
        .wait_for_text("#plugins", &["counter", "ledger", "entity"])
        .await;
    browser
        .wait_for_text("#entity-types", &["counter", "single writer"])
        .await;

    // From the type's listing to the entity, by clicking as a user would.
    browser
        .click("#entity-types button[data-type='counter']")
        .await;
    browser.wait_for_text("#entities", &["console-1"]).await;
    browser.click("#entities a[data-entity='console-1']").await;
    let expected = api_events(&http, &url, "console-1").await;
    assert_eq!(expected.len(), 2, "{expected:?}");
    wait_for_events(&browser, &expected).await;
    browser
        .wait_for_text("#entity-state", &["\"value\": 12"])
        .await;
    browser.screenshot(&artifacts(), "entity-events").await;

    // A command sent from the console is applied, and its event shows.
    send_from_console(&browser, "console-1", r#"{"op": "increment", "by": 30}"#, 3).await;
    let expected = api_events(&http, &url, "console-1").await;
    assert_eq!(
        expected.len(),
        3,
        "the console's command was applied: {expected:?}"
    );
    wait_for_events(&browser, &expected).await;

    // The single-writer entity's lease, with the fencing token its events carry.
    let lease = get_json(&http, &format!("{url}/leases/entity:counter%7Cconsole-1")).await;
    let token = lease["holder"]["fencing_token"].to_string();
    browser
        .type_into("#lease-name", "entity:counter|console-1")
        .await;
    browser.click("#lease-form button[type='submit']").await;
    browser
        .wait_for_text("#lease", &["fencing token", &token])
        .await;
    // And in the list of live leases, after a refresh.
    browser.click("#refresh").await;
    browser
        .wait_for_text("#leases", &["entity:counter|console-1", &token])
        .await;

    // A new single-writer entity's lease, acquired while the page listens.
    browser
        .wait_for_text("#notifications-state", &["live"])
        .await;
    command_ok(
        &http,
        &url,
        "counter",
        "console-2",
        &json!({"op": "increment", "by": 1}),
    )
    .await;
    browser
        .wait_for_text("#notifications", &["lease-acquired", "console-2"])
        .await;
    browser.screenshot(&artifacts(), "console").await;

    assert_eq!(
        browser.text("#status").await,
        "",
        "the page reported no error"
    );
    assert_eq!(
        browser.severe_log_entries().await,
        Vec::<String>::new(),
        "no errors in the browser's console"
    );
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_sends_the_token_typed_into_it() {
    const CLIENT_SECRET: &str = "console-client-secret";
    let root = tempfile::tempdir().unwrap();
    let mut config = config(root.path(), &["counter"]);
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(CLIENT_SECRET));
    config.auth.tokens = vec![
        serde_json::from_value(json!({"name": "shop", "scope": "client", "sha256": digest}))
            .unwrap(),
    ];
    let TestNode {
        node: _node,
        url,
        http,
    } = TestNode::start(config).await;

    let browser = Browser::start().await;
    browser.goto(&format!("{url}/")).await;
    browser
        .wait_for_text("#entity-types", &["401", "enter a bearer token"])
        .await;
    browser.type_into("#token", CLIENT_SECRET).await;
    browser.click("#token-form button[type='submit']").await;
    browser.wait_for_text("#entity-types", &["counter"]).await;
    // A client token may not see the members: the page says so.
    browser
        .wait_for_text("#members", &["403", "scope does not allow it"])
        .await;
    browser
        .wait_for_text("#notifications-state", &["live"])
        .await;

    // Sent from the page with the token, a command is applied.
    send_from_console(&browser, "with-token", r#"{"op": "increment", "by": 2}"#, 1).await;
    let state = http
        .get(format!("{url}/entities/counter/with-token"))
        .bearer_auth(CLIENT_SECRET)
        .send()
        .await
        .unwrap();
    let state: Value = state.json().await.unwrap();
    assert_eq!(state["state"]["value"], 2, "{state}");

    // The tab keeps the token across a reload.
    browser.goto(&format!("{url}/")).await;
    browser.wait_for_text("#entity-types", &["counter"]).await;
    browser.screenshot(&artifacts(), "with-token").await;
    // The only errors logged are the refused calls made before the token was entered, and the
    // client token's refused call for the members.
    let unexpected: Vec<String> = browser
        .severe_log_entries()
        .await
        .into_iter()
        .filter(|entry| !entry.contains("status of 401") && !entry.contains("status of 403"))
        .collect();
    assert_eq!(
        unexpected,
        Vec::<String>::new(),
        "no other errors in the browser's console"
    );
    browser.close().await;
}
