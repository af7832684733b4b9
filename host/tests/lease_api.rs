//! Named leases through a node's HTTP API and the `weft lease` CLI: grants, the live ones listed
//! a page at a time, conflicts naming the holder, renewals and releases by the wrong owner or token, bad input; and a node whose journal is
//! PostgreSQL keeping its leases there too.

mod support;

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use support::node::{TestNode, config};
use support::services::Postgres;
use weft::config::{Config, JournalBackend};
use weft::lease::{Lease, PostgresLease};

/// A node on the in-memory journal and leases, without plugins.
fn bare_config(root: &std::path::Path) -> Config {
    let mut config = Config::default();
    config.node.listen = "127.0.0.1:0".parse().expect("address");
    config.node.data_dir = root.join("data");
    config.node.plugins_dir = None;
    config.journal.backend = JournalBackend::Memory;
    config
}

struct Api {
    http: reqwest::Client,
    url: String,
}

impl Api {
    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.url))
            .json(&body)
            .send()
            .await
            .expect("request");
        (response.status(), response.json().await.expect("JSON body"))
    }

    async fn get(&self, path: &str) -> Value {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.expect("JSON body")
    }
}

fn token_of(body: &Value) -> u64 {
    body["fencing_token"]
        .as_u64()
        .unwrap_or_else(|| panic!("no fencing token in {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_over_http() {
    let root = tempfile::tempdir().expect("temp dir");
    let TestNode { node, url, http } = TestNode::start(bare_config(root.path())).await;
    let api = Api { http, url };

    let (status, grant) = api
        .post(
            "/leases/nightly-report/acquire",
            json!({"owner": "worker-a", "ttl_ms": 5000}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{grant}");
    assert_eq!(grant["ttl_ms"], json!(5000));
    let first = token_of(&grant);

    let (status, refused) = api
        .post(
            "/leases/nightly-report/acquire",
            json!({"owner": "worker-b", "ttl_ms": 5000}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(refused["error"]["code"], json!("lease_held"));
    let message = refused["error"]["message"].as_str().expect("a message");
    assert!(
        message.contains("held by worker-a"),
        "the conflict names the holder: {message}"
    );

    let shown = api.get("/leases/nightly-report").await;
    assert_eq!(shown["holder"]["owner"], json!("worker-a"));
    assert_eq!(shown["holder"]["fencing_token"], json!(first));
    assert!(shown["holder"]["expires_in_ms"].as_u64().expect("ms") <= 5000);

    let (status, lost) = api
        .post(
            "/leases/nightly-report/renew",
            json!({"owner": "worker-b", "fencing_token": first}),
        )
        .await;
    assert_eq!(
        (status, &lost["error"]["code"]),
        (StatusCode::CONFLICT, &json!("lease_lost"))
    );
    let (status, renewed) = api
        .post(
            "/leases/nightly-report/renew",
            json!({"owner": "worker-a", "fencing_token": first, "ttl_ms": 8000}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{renewed}");
    assert_eq!(renewed, json!({"fencing_token": first, "ttl_ms": 8000}));

    let (status, not_released) = api
        .post(
            "/leases/nightly-report/release",
            json!({"owner": "worker-b", "fencing_token": first}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        not_released["released"],
        json!(false),
        "a release by a non-holder is a no-op"
    );
    let (_, released) = api
        .post(
            "/leases/nightly-report/release",
            json!({"owner": "worker-a", "fencing_token": first}),
        )
        .await;
    assert_eq!(released["released"], json!(true));
    assert_eq!(
        api.get("/leases/nightly-report").await["holder"],
        Value::Null
    );

    let (status, taken) = api
        .post(
            "/leases/nightly-report/acquire",
            json!({"owner": "worker-b"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(token_of(&taken) > first, "a new holder, a higher token");
    assert_eq!(taken["ttl_ms"], json!(10_000), "the default time to live");
    node.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_leases_are_listed_a_page_at_a_time() {
    let root = tempfile::tempdir().expect("temp dir");
    let TestNode {
        node: _node,
        url,
        http,
    } = TestNode::start(bare_config(root.path())).await;
    let api = Api { http, url };
    let mut tokens = Vec::new();
    for name in ["report-b", "report-a", "report-c"] {
        let (status, grant) = api
            .post(&format!("/leases/{name}/acquire"), json!({"owner": "w1"}))
            .await;
        assert_eq!(status, StatusCode::OK, "{grant}");
        tokens.push((name, token_of(&grant)));
    }
    let (name, token) = tokens[2];
    let (status, _) = api
        .post(
            &format!("/leases/{name}/release"),
            json!({"owner": "w1", "fencing_token": token}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let first = api.get("/leases?limit=1").await;
    assert_eq!(first["leases"].as_array().map(Vec::len), Some(1), "{first}");
    assert_eq!(first["leases"][0]["name"], "report-a");
    assert_eq!(first["leases"][0]["holder"]["owner"], "w1");
    assert_eq!(first["leases"][0]["holder"]["fencing_token"], tokens[1].1);
    assert_eq!(first["next"], "report-a");
    let rest = api.get("/leases?after=report-a").await;
    let names: Vec<&str> = rest["leases"]
        .as_array()
        .expect("leases")
        .iter()
        .filter_map(|lease| lease["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["report-b"],
        "the released lease is not listed: {rest}"
    );
    assert_eq!(rest["next"], Value::Null);

    let response = api
        .http
        .get(format!("{}/leases?limit=1001", api.url))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.expect("JSON body");
    assert_eq!(body["error"]["code"], "invalid_query", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lease_requests_get_a_clear_error_and_change_nothing() {
    let root = tempfile::tempdir().expect("temp dir");
    let TestNode { node, url, http } = TestNode::start(bare_config(root.path())).await;
    let api = Api { http, url };

    let bad: [(Value, &str, &str); 5] = [
        (
            json!({"owner": ""}),
            "invalid_lease_request",
            "owner is empty",
        ),
        (
            json!({"owner": "w", "ttl_ms": 0}),
            "invalid_lease_request",
            "time to live",
        ),
        (
            json!({"owner": "w", "ttl_ms": 100_000_000_000u64}),
            "invalid_lease_request",
            "time to live",
        ),
        (json!({"ttl_ms": 5}), "invalid_json", "owner"),
        (
            json!({"owner": "w", "fencing_token": 3}),
            "invalid_json",
            "fencing_token",
        ),
    ];
    for (body, code, mentions) in bad {
        let (status, error) = api.post("/leases/job/acquire", body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {error}");
        assert_eq!(error["error"]["code"], json!(code), "{body}");
        let message = error["error"]["message"].as_str().expect("a message");
        assert!(message.contains(mentions), "{body}: {message}");
    }
    assert_eq!(api.get("/leases/job").await["holder"], Value::Null);
    node.shutdown().await.expect("shutdown");
}

/// Runs `weft lease ARGS… --url URL` and returns (success, stdout, stderr).
async fn weft_lease(url: &str, args: &[&str]) -> (bool, Value, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .arg("lease")
        .args(args)
        .args(["--url", url])
        .output()
        .await
        .expect("run weft lease");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let printed = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (
        output.status.success(),
        printed,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_acquires_shows_and_releases_a_lease() {
    let root = tempfile::tempdir().expect("temp dir");
    let TestNode { node, url, .. } = TestNode::start(bare_config(root.path())).await;
    let name = "reports/nightly run";

    let (ok, grant, stderr) = weft_lease(
        &url,
        &["acquire", name, "--owner", "cron-1", "--ttl-ms", "5000"],
    )
    .await;
    assert!(ok, "{stderr}");
    let token = token_of(&grant).to_string();

    let (ok, _, stderr) = weft_lease(&url, &["acquire", name, "--owner", "cron-2"]).await;
    assert!(!ok, "a held lease is refused");
    assert!(
        stderr.contains("lease_held") && stderr.contains("held by cron-1"),
        "{stderr}"
    );

    let (ok, shown, stderr) = weft_lease(&url, &["show", name]).await;
    assert!(ok, "{stderr}");
    assert_eq!(
        shown["name"],
        json!(name),
        "the name went through the URL intact"
    );
    assert_eq!(shown["holder"]["owner"], json!("cron-1"));

    for (action, field, expected) in [
        ("renew", "ttl_ms", json!(10_000)),
        ("release", "released", json!(true)),
    ] {
        let holder = ["--owner", "cron-1", "--fencing-token", &token];
        let (ok, printed, stderr) =
            weft_lease(&url, &[&[action, name][..], &holder].concat()).await;
        assert!(ok, "{action}: {stderr}");
        assert_eq!(printed[field], expected, "{action}: {printed}");
    }
    node.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_a_postgres_journal_keeps_events_and_leases_there() {
    let postgres = Postgres::start();
    let database = postgres.fresh_database().await;
    let root = tempfile::tempdir().expect("temp dir");
    let mut config = config(root.path(), &["counter"]);
    config.journal.backend = JournalBackend::Postgres;
    config.journal.url = Some(database.clone());
    let TestNode { node, url, http } = TestNode::start(config).await;
    let api = Api { http, url };

    let (status, reply) = api
        .post("/entities/counter/c1", json!({"op": "increment", "by": 5}))
        .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["seq_nr"], json!(1));
    let (status, grant) = api
        .post("/leases/singleton/acquire", json!({"owner": "node-1"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{grant}");
    node.shutdown().await.expect("shutdown");

    let journal = weft::journal::PostgresJournal::open(&database)
        .await
        .expect("open the journal the node wrote");
    assert_eq!(
        weft::journal::Journal::highest_seq_nr(&journal, "counter|c1").await,
        Ok(1)
    );
    let leases: Arc<dyn Lease> = Arc::new(
        PostgresLease::connect(&database, 1)
            .await
            .expect("connect the leases the node used"),
    );
    let holder = leases
        .holder("singleton")
        .await
        .expect("holder")
        .expect("the node's lease is in PostgreSQL");
    assert_eq!(holder.owner, "node-1");
    assert_eq!(holder.fencing_token, token_of(&grant));
    assert!(holder.expires_in <= Duration::from_secs(10));
}
