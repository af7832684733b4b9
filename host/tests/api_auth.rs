//! Credentials on the HTTP API, against a real `weft serve`: requests without a token or with a
//! wrong one get 401, a client token gets 403 on plugin uploads, bindings and leases and changes
//! nothing, an admin token may do all of it; named leases belong to the token that took them; the
//! CLI sends `--token` / `WEFT_TOKEN` and names the problem without one; a node asked to listen on
//! a non-loopback address without tokens refuses to start.

mod support;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::node::{ServeProcess, config, weft_binary};
use support::plugin_bytes;

const ADMIN_SECRET: &str = "admin-secret-0123";
const OTHER_ADMIN_SECRET: &str = "other-admin-secret-4567";
const CLIENT_SECRET: &str = "client-secret-89ab";

fn sha256_hex(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A config file under `root` serving `counter` on a free loopback port, with three tokens:
/// `ops` and `backup` (admin) and `shop` (client).
fn config_with_tokens(root: &Path) -> std::path::PathBuf {
    let mut config = config(root, &["counter"]);
    config.auth.tokens = [
        ("ops", "admin", ADMIN_SECRET),
        ("backup", "admin", OTHER_ADMIN_SECRET),
        ("shop", "client", CLIENT_SECRET),
    ]
    .into_iter()
    .map(|(name, scope, secret)| {
        serde_json::from_value(json!({"name": name, "scope": scope, "sha256": sha256_hex(secret)}))
            .unwrap()
    })
    .collect();
    write_config(root, &config)
}

fn write_config(root: &Path, config: &weft::config::Config) -> std::path::PathBuf {
    let path = root.join("weft.toml");
    std::fs::write(&path, toml::to_string(config).unwrap()).unwrap();
    path
}

/// Requests to one node, each with the token given (or none).
struct Api {
    http: reqwest::Client,
    url: String,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("the node answers");
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        (
            status,
            headers,
            serde_json::from_str(&text).unwrap_or(Value::Null),
        )
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        let (status, _, body) = self.call(reqwest::Method::GET, path, token, None).await;
        (status, body)
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        let (status, _, body) = self
            .call(reqwest::Method::POST, path, Some(token), Some(body))
            .await;
        (status, body)
    }

    async fn upload(&self, name: &str, token: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .put(format!("{}/plugins/{name}", self.url))
            .bearer_auth(token)
            .body(plugin_bytes("counter"))
            .send()
            .await
            .unwrap();
        (
            response.status(),
            response.json().await.unwrap_or(Value::Null),
        )
    }

    async fn bind(&self, entity_type: &str, token: &str) -> (StatusCode, Value) {
        let (status, _, body) = self
            .call(
                reqwest::Method::PUT,
                &format!("/entity-types/{entity_type}"),
                Some(token),
                Some(json!({"plugin": "counter"})),
            )
            .await;
        (status, body)
    }

    /// What the node holds: plugin names, entity types, the lease `nightly`'s holder.
    async fn holdings(&self) -> (Vec<String>, Value, Value) {
        let (_, plugins) = self.get("/plugins", Some(ADMIN_SECRET)).await;
        let mut names: Vec<String> = plugins["plugins"]
            .as_array()
            .expect("a plugin list")
            .iter()
            .map(|plugin| plugin["name"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        let (_, types) = self.get("/entity-types", Some(ADMIN_SECRET)).await;
        let (_, lease) = self.get("/leases/nightly", Some(ADMIN_SECRET)).await;
        (names, types, lease["holder"].clone())
    }
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no error code>")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_scopes_guard_the_api() {
    let root = tempfile::tempdir().unwrap();
    let node = ServeProcess::start_with_config(&config_with_tokens(root.path()));
    // A new connection per request: the node answers a refused upload before reading its body
    // and then closes the connection, which a pooled client could pick for the next request.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let api = Api {
        http,
        url: node.url.clone(),
    };

    // Probes need no token.
    assert_eq!(api.get("/health", None).await.0, StatusCode::OK);
    assert_eq!(api.get("/ready", None).await.0, StatusCode::OK);

    // No token, or a wrong one: 401 with a Bearer challenge, on reads and writes alike.
    for token in [None, Some("not-a-token"), Some("")] {
        for path in [
            "/entities/counter/a",
            "/metrics",
            "/plugins",
            "/leases/nightly",
        ] {
            let (status, headers, body) = api.call(reqwest::Method::GET, path, token, None).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{path} with {token:?}");
            assert_eq!(error_code(&body), "unauthorized", "{path}: {body}");
            assert_eq!(headers[reqwest::header::WWW_AUTHENTICATE], "Bearer");
        }
    }
    let (status, _, _) = api
        .call(
            reqwest::Method::POST,
            "/entities/counter/a",
            None,
            Some(json!({"op": "increment", "by": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // A client token sends commands and reads state.
    let (status, reply) = api
        .post(
            "/entities/counter/a",
            CLIENT_SECRET,
            json!({"op": "increment", "by": 2}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let (status, state) = api.get("/entities/counter/a", Some(CLIENT_SECRET)).await;
    assert_eq!(status, StatusCode::OK, "{state}");
    assert_eq!(
        api.get("/metrics", Some(CLIENT_SECRET)).await.0,
        StatusCode::OK
    );

    // A client token may not upload, bind or take a lease, and changes nothing trying.
    let before = api.holdings().await;
    let (status, body) = api.upload("intruder", CLIENT_SECRET).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(error_code(&body), "forbidden");
    let (status, body) = api.bind("intruded", CLIENT_SECRET).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = api
        .post(
            "/leases/nightly/acquire",
            CLIENT_SECRET,
            json!({"owner": "shop"}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(
        api.get("/plugins", Some(CLIENT_SECRET)).await.0,
        StatusCode::FORBIDDEN
    );
    let after = api.holdings().await;
    assert_eq!(before, after, "a refused request changed the node");
    assert_eq!(after.0, ["counter"]);
    assert!(after.2.is_null(), "{}", after.2);

    // An admin token may do all of it.
    let (status, body) = api.upload("tally", ADMIN_SECRET).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = api.bind("tallies", ADMIN_SECRET).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (names, types, _) = api.holdings().await;
    assert_eq!(names, ["counter", "tally"]);
    assert!(types.to_string().contains("tallies"), "{types}");

    // Leases are owned by the token's name: the owner may be left out; another admin token can
    // neither release the lease nor act in its owner's name.
    let (status, grant) = api
        .post("/leases/nightly/acquire", ADMIN_SECRET, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{grant}");
    let token = grant["fencing_token"].as_u64().unwrap();
    assert_eq!(api.holdings().await.2["owner"], "ops");
    // Each release in turn: (token, body, expected status, expected `released`).
    let releases = [
        (
            OTHER_ADMIN_SECRET,
            json!({"fencing_token": token}),
            StatusCode::OK,
            json!(false),
        ),
        (
            OTHER_ADMIN_SECRET,
            json!({"owner": "ops", "fencing_token": token}),
            StatusCode::FORBIDDEN,
            Value::Null,
        ),
        (
            ADMIN_SECRET,
            json!({"fencing_token": token}),
            StatusCode::OK,
            json!(true),
        ),
    ];
    for (secret, request, expected_status, released) in releases {
        let still_held = api.holdings().await.2;
        assert_eq!(still_held["owner"], "ops", "{still_held}");
        let (status, body) = api.post("/leases/nightly/release", secret, request).await;
        assert_eq!(status, expected_status, "{body}");
        assert_eq!(body["released"], released, "{body}");
    }
    assert!(api.holdings().await.2.is_null());
}

/// `weft ARGS --url URL`, with `WEFT_TOKEN` set to `env_token` when given.
fn weft(url: &str, args: &[&str], env_token: Option<&str>) -> std::process::Output {
    let mut command = Command::new(weft_binary());
    command
        .args(args)
        .args(["--url", url, "--output", "json"])
        .env_remove("WEFT_TOKEN")
        .stdin(Stdio::null());
    if let Some(token) = env_token {
        command.env("WEFT_TOKEN", token);
    }
    command.output().expect("run weft")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sends_its_token_and_names_a_missing_one() {
    let root = tempfile::tempdir().unwrap();
    let node = ServeProcess::start_with_config(&config_with_tokens(root.path()));
    let url = node.url.as_str();
    let send = ["send", "counter", "c", r#"{"op":"increment","by":1}"#];

    let refused = weft(url, &send, None);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("unauthorized") && stderr.contains("--token"),
        "{stderr}"
    );

    let with_flag = weft(
        url,
        &[&send[..], &["--token", CLIENT_SECRET]].concat(),
        None,
    );
    assert!(
        with_flag.status.success(),
        "{}",
        String::from_utf8_lossy(&with_flag.stderr)
    );
    let with_env = weft(url, &["state", "counter", "c"], Some(CLIENT_SECRET));
    assert!(
        with_env.status.success(),
        "{}",
        String::from_utf8_lossy(&with_env.stderr)
    );
    let state: Value = serde_json::from_slice(&with_env.stdout).unwrap();
    assert!(state.to_string().contains('1'), "{state}");

    let forbidden = weft(url, &["plugin", "list"], Some(CLIENT_SECRET));
    assert!(!forbidden.status.success());
    assert!(String::from_utf8_lossy(&forbidden.stderr).contains("forbidden"));
    let listed = weft(url, &["plugin", "list", "--token", ADMIN_SECRET], None);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
}

#[test]
fn a_public_address_without_tokens_is_refused_at_start() {
    let root = tempfile::tempdir().unwrap();
    let mut open = config(root.path(), &[]);
    open.node.listen = "0.0.0.0:0".parse().unwrap();
    let path = write_config(root.path(), &open);
    let mut child = Command::new(weft_binary())
        .args(["serve", "--config"])
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weft serve");
    let pid = child.id();
    let (exited_tx, exited_rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut { stderr }, &mut text).ok();
        let _ = exited_tx.send(text);
    });
    // stderr closes when the process exits; a node that started serving keeps it open.
    let Ok(stderr) = exited_rx.recv_timeout(Duration::from_secs(60)) else {
        let _ = child.kill();
        panic!("weft serve (pid {pid}) kept running on 0.0.0.0 without tokens");
    };
    let status = child.wait().unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("without credentials") && stderr.contains("allow_unauthenticated"),
        "{stderr}"
    );
}
