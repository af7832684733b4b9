//! What a person running `weft serve` sees, over a real process: every response's
//! `x-request-id` (the client's sane one echoed, a new ULID otherwise), the id in error bodies and
//! in the access line of the node's log, JSON log lines (`WEFT_LOG_FORMAT`, `[log] format`), the
//! latency histograms of `/metrics`, and the exception text, traceback and entity of a plugin
//! that fails.

mod support;

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use support::node::{ServeProcess, metrics_text, plugins_dir, weft_binary};
use support::{eventually, plugin_bytes, shared_compile_cache};

const COMMAND_ROUTE: &str = "/entities/{entity_type}/{entity_id}";

/// Sends `command` to `entity_type/id` with the given `x-request-id`, if any: the status, the
/// response's `x-request-id` and the JSON body.
async fn send(
    http: &reqwest::Client,
    url: &str,
    path: &str,
    request_id: Option<&str>,
    command: Value,
) -> (u16, String, Value) {
    let mut request = http.post(format!("{url}/entities/{path}")).json(&command);
    if let Some(id) = request_id {
        request = request.header("x-request-id", id);
    }
    let response = request.send().await.expect("the node answers");
    let status = response.status().as_u16();
    let id = response
        .headers()
        .get("x-request-id")
        .map(|value| value.to_str().expect("a visible id").to_owned())
        .unwrap_or_default();
    let body = response.json().await.expect("a JSON body");
    (status, id, body)
}

/// `<root>/weft.toml`: a node on a free port serving `plugins`, compiling through the compile
/// cache the tests share (a Python build compiles once, not per run), then `sections`.
fn write_config(root: &Path, plugins: &Path, sections: &str) -> PathBuf {
    let config = root.join("weft.toml");
    let node = format!(
        "[node]\nlisten = \"127.0.0.1:0\"\ndata_dir = {:?}\nplugins_dir = {:?}\ncompile_cache_dir = {:?}\n\n",
        root.join("data"),
        plugins,
        shared_compile_cache()
    );
    std::fs::write(&config, node + sections).unwrap();
    config
}

/// `GET path` with an `x-request-id`.
async fn get_with_id(http: &reqwest::Client, url: &str, path: &str, id: &str) -> reqwest::Response {
    let request = http.get(format!("{url}{path}")).header("x-request-id", id);
    request.send().await.expect("the node answers")
}

fn log_of(node: &ServeProcess) -> String {
    node.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Waits until a line of the node's log contains every one of `parts`, and returns it.
async fn log_line_with(node: &ServeProcess, parts: &[&str]) -> String {
    let has_all = |line: &&str| parts.iter().all(|part| line.contains(part));
    eventually(&format!("a log line with {parts:?}"), || async {
        log_of(node).lines().any(|line| has_all(&line))
    })
    .await;
    let log = log_of(node);
    log.lines().find(has_all).unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_carry_ids_into_responses_errors_and_the_access_log() {
    let root = tempfile::tempdir().unwrap();
    let plugins = plugins_dir(root.path(), &["counter"]);
    let node = ServeProcess::start(&root.path().join("data"), &plugins);
    let http = reqwest::Client::new();
    let increment = json!({"op": "increment", "by": 2});

    let (status, echoed, _) = send(
        &http,
        &node.url,
        "counter/a",
        Some("order-42.try-1"),
        increment.clone(),
    )
    .await;
    assert_eq!((status, echoed.as_str()), (200, "order-42.try-1"));

    // No id, or one that is not 1-128 bytes of visible ASCII: a new ULID.
    let too_long = "x".repeat(129);
    for sent in [None, Some("two words"), Some(too_long.as_str())] {
        let (status, given, _) = send(&http, &node.url, "counter/a", sent, increment.clone()).await;
        assert_eq!(status, 200);
        assert!(
            given.parse::<ulid::Ulid>().is_ok(),
            "{sent:?} got {given:?}"
        );
    }

    // An error body carries the id beside its code and message.
    let (status, id, body) = send(
        &http,
        &node.url,
        "no-such-type/a",
        Some("lost-1"),
        increment.clone(),
    )
    .await;
    assert_eq!((status, id.as_str()), (404, "lost-1"), "{body}");
    assert_eq!(body["error"]["code"], "unknown_entity_type", "{body}");
    assert_eq!(body["error"]["request_id"], "lost-1", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    let unrouted = get_with_id(&http, &node.url, "/nowhere", "lost-2").await;
    let body: Value = unrouted.json().await.unwrap();
    assert_eq!(body["error"]["request_id"], "lost-2", "{body}");

    // One access line per request, with its id, route, entity type, status and latency.
    let access = log_line_with(&node, &["weft::access", "order-42.try-1"]).await;
    for part in [
        COMMAND_ROUTE,
        "entity_type=\"counter\"",
        "status=200",
        "latency_ms=",
        "method=POST",
    ] {
        assert!(
            access.contains(part),
            "no {part} in the access line {access}"
        );
    }
    let refused = log_line_with(&node, &["weft::access", "lost-1"]).await;
    assert!(refused.contains("status=404"), "{refused}");

    // Health probes are not written at info.
    let health = get_with_id(&http, &node.url, "/health", "probe-1").await;
    assert_eq!(health.headers()["x-request-id"], "probe-1");
    log_line_with(&node, &["weft::access", "lost-2"]).await;
    assert!(
        !log_of(&node).contains("probe-1"),
        "a /health access line at info:\n{}",
        log_of(&node)
    );

    // The route's latency histogram, and the plugin calls' and journal appends'.
    let metrics = metrics_text(&http, &node.url).await;
    let series = format!(r#"method="POST",route="{COMMAND_ROUTE}",status_class="2xx""#);
    for suffix in ["_bucket", "_count", "_sum"] {
        let name = format!("weft_http_request_duration_seconds{suffix}");
        let line = metrics
            .lines()
            .find(|line| line.starts_with(&name) && line.contains(&series))
            .unwrap_or_else(|| panic!("no {name} for {series} in\n{metrics}"));
        if suffix == "_count" {
            assert!(line.ends_with(" 4"), "four commands answered 200: {line}");
        }
    }
    for name in [
        r#"weft_plugin_call_duration_seconds_count{plugin="counter"}"#,
        "weft_journal_append_duration_seconds_count",
        "weft_commands_ok_total 4",
    ] {
        assert!(
            metrics.lines().any(|line| line.starts_with(name)),
            "no {name} in\n{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_log_format_json_writes_every_line_as_json() {
    let root = tempfile::tempdir().unwrap();
    let plugins = plugins_dir(root.path(), &["counter"]);
    let node = ServeProcess::start_with_env(
        &root.path().join("data"),
        &plugins,
        &[("WEFT_LOG_FORMAT", "json"), ("RUST_LOG", "info,weft=debug")],
    );
    let http = reqwest::Client::new();
    let (status, _, _) = send(
        &http,
        &node.url,
        "counter/j",
        Some("json-7"),
        json!({"op": "increment", "by": 1}),
    )
    .await;
    assert_eq!(status, 200);

    let access = log_line_with(&node, &["weft::access", "json-7"]).await;
    let access: Value = serde_json::from_str(&access).expect("the access line is JSON");
    assert_eq!(access["request_id"], "json-7", "{access}");
    assert_eq!(access["route"], COMMAND_ROUTE, "{access}");
    assert_eq!(access["status"], 200, "{access}");
    assert_eq!(access["entity_type"], "counter", "{access}");
    for line in log_of(&node).lines() {
        let parsed: Result<Value, _> = serde_json::from_str(line);
        assert!(
            parsed.is_ok_and(|value| value.is_object()),
            "not a JSON object: {line}"
        );
    }
    // A line written while serving a request carries the id in its span: a plugin upload's.
    let upload = http
        .put(format!("{}/plugins/counter-copy", node.url))
        .header("x-request-id", "upload-9")
        .body(plugin_bytes("counter"))
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status(), 200);
    let loaded = log_line_with(&node, &["plugin loaded", "counter-copy"]).await;
    let loaded: Value = serde_json::from_str(&loaded).unwrap();
    let span = &loaded["spans"][0];
    assert_eq!(span["request_id"], "upload-9", "{loaded}");
    assert_eq!(span["route"], "/plugins/{name}", "{loaded}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_format_comes_from_the_config_and_a_bad_one_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let plugins = plugins_dir(root.path(), &["counter"]);
    let config = write_config(root.path(), &plugins, "[log]\nformat = \"json\"\n");
    let node = ServeProcess::start_with_config(&config);
    let log = log_of(&node);
    assert!(!log.is_empty());
    for line in log.lines() {
        assert!(
            serde_json::from_str::<Value>(line).is_ok(),
            "not JSON: {line}"
        );
    }
    drop(node);

    let refused = std::process::Command::new(weft_binary())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("WEFT_LOG_FORMAT", "xml")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("`text` or `json`"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_plugin_tells_the_caller_what_raised_and_the_log_which_entity() {
    let root = tempfile::tempdir().unwrap();
    let plugins = plugins_dir(root.path(), &["faulty-py", "faulty-js"]);
    let node = ServeProcess::start_with_config(&write_config(root.path(), &plugins, ""));
    let http = reqwest::Client::new();
    let note = json!({"op": "note", "text": "first"});
    let divide = json!({"op": "divide", "by": 0});

    // Python: the exception traps the call; its text and traceback reach the caller.
    let (status, _, _) = send(&http, &node.url, "faulty-py/bug-7", None, note.clone()).await;
    assert_eq!(status, 200);
    let (status, _, body) = send(
        &http,
        &node.url,
        "faulty-py/bug-7",
        Some("py-bug"),
        divide.clone(),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "plugin_trapped", "{body}");
    assert_eq!(body["error"]["request_id"], "py-bug", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    for part in [
        "ZeroDivisionError",
        "Traceback (most recent call last)",
        "in share",
        "app.py",
    ] {
        assert!(
            message.contains(part),
            "no {part:?} in {message}; the log:\n{}",
            log_of(&node)
        );
    }
    // The trap is logged with the entity and the position its event would have taken; the
    // guest's own line with the entity too.
    let trap = log_line_with(&node, &["plugin call failed", "bug-7"]).await;
    for part in [
        "WARN",
        "faulty-py",
        "seq_nr=2",
        "plugin_trapped",
        "request_id=py-bug",
    ] {
        assert!(trap.contains(part), "no {part} in {trap}");
    }
    let guest = log_line_with(&node, &["weft::guest", "handle failed: ZeroDivisionError"]).await;
    for part in [
        "entity_type=\"faulty-py\"",
        "entity_id=\"bug-7\"",
        "request_id=py-bug",
    ] {
        assert!(guest.contains(part), "no {part} in {guest}");
    }
    // The entity recovered and goes on.
    let (status, _, body) = send(&http, &node.url, "faulty-py/bug-7", None, note.clone()).await;
    assert_eq!(status, 200, "{body}");

    // JavaScript: the SDK refuses the command with the exception's text and stack.
    let (status, _, body) = send(&http, &node.url, "faulty-js/bug-8", Some("js-bug"), divide).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["request_id"], "js-bug", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    for part in ["TypeError", "at share"] {
        assert!(message.contains(part), "no {part:?} in {message}");
    }
    let guest = log_line_with(&node, &["weft::guest", "bug-8"]).await;
    assert!(guest.contains("TypeError"), "{guest}");
}
