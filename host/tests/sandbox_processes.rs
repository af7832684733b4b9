//! The sandbox holds against a real `weft serve`: no plugin and no request can crash, wedge or
//! starve the node. One hostile guest per class of what a guest hands the host (reply, events,
//! state, error text, log lines, time in host calls, instances held, compile time), plus hostile
//! requests. After every case the node is alive and the `counter` plugin still answers
//! correctly; the payload cases measure the node's peak RSS against the bound in
//! docs/plugins.md.

mod support;

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::hostile::compile_bomb;
use support::memory::{peak_rss_bytes, reset_peak_rss};
use support::node::{ServeProcess, get_json, plugins_dir};
use support::plugin_bytes;

const MIB: u64 = 1 << 20;
/// `memory_per_instance_bytes` of the test node.
const INSTANCE_MEMORY: u64 = 128 * MIB;
/// `compile_timeout_ms` of the test node: what a compile bomb runs into.
const COMPILE_TIMEOUT_MS: u64 = 2_000;
/// `compile_timeout_ms` while the node compiles its plugins into its cache, before it restarts
/// under [`COMPILE_TIMEOUT_MS`].
const COMPILE_WARM_UP_MS: u64 = 120_000;

/// A `weft serve` with the counter and the hostile plugin, small pools and a short compile
/// budget, its own compile cache, and a model of one counter entity.
struct Node {
    process: ServeProcess,
    http: reqwest::Client,
    cache: PathBuf,
    counter: u64,
    _root: tempfile::TempDir,
}

impl Node {
    fn start() -> Node {
        let root = tempfile::tempdir().unwrap();
        let plugins = plugins_dir(root.path(), &["counter", "hostile"]);
        let cache = root.path().join("compiled");
        let config = root.path().join("weft.toml");
        let write_config = |compile_timeout_ms: u64| {
            std::fs::write(
                &config,
                format!(
                    r#"
[node]
listen = "127.0.0.1:0"
data_dir = "{data}"
plugins_dir = "{plugins}"
compile_cache_dir = "{cache}"

[limits]
# Generous: the suite runs many processes on few cores, and the bound is wall-clock time.
cpu_per_call_ms = 3000
memory_per_instance_bytes = {INSTANCE_MEMORY}
max_instances = 32
busy_instances_per_plugin_max = 8
idle_instances_per_version = 4
idle_instances_max = 32
instance_wait_ms = 3000
compile_timeout_ms = {compile_timeout_ms}

[limits.output]
reply_bytes_max = {reply}
event_bytes_max = {event}
state_bytes_max = {state}
"#,
                    data = root.path().join("data").display(),
                    plugins = plugins.display(),
                    cache = cache.display(),
                    reply = 32 * MIB,
                    event = 4 * MIB,
                    state = 32 * MIB,
                ),
            )
            .unwrap()
        };
        // The plugins are compiled into the node's own cache first, with time to spare on a
        // loaded machine; the node then starts again under the short budget the compile bomb
        // meets, loading them from that cache.
        write_config(COMPILE_WARM_UP_MS);
        let warm_up = ServeProcess::start_with_config(&config);
        assert!(
            warm_up.terminate().success(),
            "the warm-up node stops cleanly"
        );
        write_config(COMPILE_TIMEOUT_MS);
        let process = ServeProcess::start_with_config(&config);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        Node {
            process,
            http,
            cache,
            counter: 0,
            _root: root,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.process.url)
    }

    /// Sends a JSON command; the status and the body (JSON, or `null` when it is not).
    async fn send(&self, entity_type: &str, id: &str, command: Value) -> (u16, Value) {
        let response = self
            .http
            .post(self.url(&format!("/entities/{entity_type}/{id}")))
            .json(&command)
            .send()
            .await
            .expect("the node answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// A hostile command that must be refused with `code`.
    async fn refused(&mut self, id: &str, command: Value, status: u16, code: &str) -> Value {
        let answer = self.send("hostile", id, command).await;
        assert_error(&answer, status, code, "");
        self.alive_and_counting().await;
        answer.1
    }

    /// The node runs and the counter answers with the value its model expects.
    async fn alive_and_counting(&mut self) {
        assert!(self.process.is_running(), "the node died:\n{}", self.log());
        let (status, body) = self
            .send("counter", "c", json!({"op": "increment", "by": 1}))
            .await;
        self.counter += 1;
        assert_eq!(
            (status, &body["reply"]),
            (200, &json!({"value": self.counter})),
            "{body}"
        );
    }

    /// Asks the hostile plugin for a reply of `bytes` bytes shaped `shape`; asserts the node's
    /// peak RSS rose by no more than the bound docs/plugins.md states and that the node still
    /// serves; returns the answer.
    async fn measured_reply(&mut self, shape: &str, bytes: u64) -> (u16, Value) {
        let pid = self.process.pid();
        reset_peak_rss(pid);
        let before = peak_rss_bytes(pid);
        let command = json!({"op": "reply", "shape": shape, "bytes": bytes});
        let answer = self.send("hostile", "h", command).await;
        let growth = peak_rss_bytes(pid).saturating_sub(before);
        println!(
            "a {} MiB reply of {shape} (status {}): peak RSS +{} MiB",
            bytes / MIB,
            answer.0,
            growth / MIB
        );
        assert!(growth <= rss_bound(bytes), "+{} MiB", growth / MIB);
        self.alive_and_counting().await;
        answer
    }

    fn log(&self) -> String {
        self.process.log.lock().unwrap().clone()
    }

    async fn events(&self, entity_type: &str, id: &str) -> Value {
        let url = self.url(&format!("/entities/{entity_type}/{id}/events"));
        get_json(&self.http, &url).await
    }

    async fn upload(&self, name: &str, bytes: Vec<u8>) -> (u16, Value) {
        let response = self
            .http
            .put(self.url(&format!("/plugins/{name}")))
            .body(bytes)
            .send()
            .await
            .expect("the node answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn plugin_version(&self, name: &str) -> Value {
        let plugins = get_json(&self.http, &self.url("/plugins")).await;
        plugins["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|plugin| plugin["name"] == name)
            .map(|plugin| plugin["version"].clone())
            .unwrap_or(Value::Null)
    }
}

/// Asserts an error answer: its status, code, and a part of its message.
fn assert_error(answer: &(u16, Value), status: u16, code: &str, message_part: &str) {
    let (got, body) = answer;
    assert_eq!(
        (*got, body["error"]["code"].as_str()),
        (status, Some(code)),
        "{body}"
    );
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(message_part), "{body}");
}

/// The bound docs/plugins.md states for one call whose payload is `payload` bytes: the
/// instance's linear memory, the payload lifted out of it, and the JSON written for it.
fn rss_bound(payload: u64) -> u64 {
    INSTANCE_MEMORY + 10 * payload + 32 * MIB
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_output_is_the_plugins_error() {
    let mut node = Node::start();
    node.alive_and_counting().await;

    // The worst case for a generic decoder — 16 MiB of nils, which took 1.2 GB before — is
    // within the reply limit here: it is answered, at a bounded cost.
    let (status, body) = node.measured_reply("nils", 16 * MIB).await;
    assert_eq!(status, 200);
    assert_eq!(body["reply"].as_array().map(Vec::len), Some(16 << 20));

    // Over the reply limit: the plugin's error, at the cost of the payload only.
    let answer = node.measured_reply("bin", 64 * MIB).await;
    assert_error(&answer, 422, "plugin_reply_bytes_max_exceeded", "");

    node.refused(
        "h",
        json!({"op": "events", "count": 100_000, "bytes": 1}),
        422,
        "plugin_events_per_command_max_exceeded",
    )
    .await;
    node.refused(
        "h",
        json!({"op": "events", "count": 1, "bytes": 5 * MIB}),
        422,
        "plugin_event_bytes_max_exceeded",
    )
    .await;
    node.refused(
        "h",
        json!({"op": "grow_state", "bytes": 40 * MIB}),
        422,
        "plugin_state_bytes_max_exceeded",
    )
    .await;
    let body = node
        .refused(
            "h",
            json!({"op": "error", "bytes": 64 * MIB}),
            422,
            "plugin_error_text_bytes_max_exceeded",
        )
        .await;
    assert!(
        body.to_string().len() < 4096,
        "the 64 MiB text is not sent back"
    );

    // Not one well-formed MessagePack value: refused, never answered as `null` or persisted.
    for (bytes, why) in [
        (json!([0xc1]), "0xc1"),
        (json!([0xc0, 0xc0]), "bytes follow"),
        (json!([]), "0 bytes"),
        (json!([0xcd, 0x01]), "end inside"),
        (json!([0x92, 0x01]), "more than follow"),
    ] {
        let body = node
            .refused(
                "h",
                json!({"op": "raw_reply", "bytes": bytes}),
                422,
                "plugin_invalid_output",
            )
            .await;
        assert!(
            body["error"]["message"].as_str().unwrap().contains(why),
            "{body}"
        );
        node.refused(
            "h",
            json!({"op": "raw_event", "bytes": bytes}),
            422,
            "plugin_invalid_output",
        )
        .await;
    }
    node.refused(
        "h",
        json!({"op": "deep_reply", "depth": 400}),
        422,
        "plugin_invalid_output",
    )
    .await;
    assert_eq!(
        node.events("hostile", "h").await["events"],
        json!([]),
        "nothing was persisted"
    );

    // Within the limits, events and state are persisted and read back.
    let (status, _) = node
        .send(
            "hostile",
            "g",
            json!({"op": "grow_state", "bytes": 8 * MIB}),
        )
        .await;
    assert_eq!(status, 200);
    let state = get_json(&node.http, &node.url("/entities/hostile/g")).await;
    assert_eq!(state["state"].as_array().map(Vec::len), Some(8 << 20));

    // The classic ones: a loop, a memory hog, a trap.
    node.refused("h", json!({"op": "spin"}), 422, "plugin_cpu_bound_exceeded")
        .await;
    node.refused("h", json!({"op": "hog"}), 422, "plugin_memory_cap_exceeded")
        .await;
    node.refused("h", json!({"op": "trap"}), 422, "plugin_trapped")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_calls_and_logs_are_bounded() {
    let mut node = Node::start();
    // An hour's sleep passes in the call's virtual time: the call answers at once (within this
    // request's 10 s deadline), holding no thread or instance meanwhile.
    let response = node
        .http
        .post(node.url("/entities/hostile/s"))
        .json(&json!({"op": "sleep", "ms": 3_600_000}))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("the sleeping call answers within its deadline");
    assert_eq!(response.status(), 200);
    node.alive_and_counting().await;

    // 64 lines of 1 MiB each: cut to 4 KiB each in the node's log.
    let log_before = node.log().len();
    let (status, _) = node
        .send(
            "hostile",
            "l",
            json!({"op": "log", "lines": 64, "bytes": MIB}),
        )
        .await;
    assert_eq!(status, 200);
    support::eventually("the cut log lines reach the log", || {
        let log = node.log();
        async move { log.matches("more bytes cut").count() >= 64 }
    })
    .await;
    let written = node.log().len() - log_before;
    assert!(
        written < 64 * 8 * 1024,
        "{written} bytes of log for one call"
    );
    node.alive_and_counting().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_are_checked_before_they_replace_anything() {
    let mut node = Node::start();
    node.alive_and_counting().await;
    let counter = node.plugin_version("counter").await;

    // The right names with the wrong function types: refused at load, the counter unchanged.
    let answer = node
        .upload(
            "counter",
            plugin_bytes("test-only/hostile-wrong-signatures"),
        )
        .await;
    assert_error(&answer, 422, "invalid_plugin", "function types");
    assert_eq!(node.plugin_version("counter").await, counter);
    node.alive_and_counting().await;

    // A resolver under the name of a bound entity plugin: refused before it is compiled.
    let answer = node.upload("counter", plugin_bytes("highest-bid")).await;
    assert_error(&answer, 422, "invalid_plugin", "needs an entity plugin");
    assert_eq!(node.plugin_version("counter").await, counter);
    node.alive_and_counting().await;

    // A compile bomb with the counter's own exports: stopped by the compile budget with its
    // reason, while the node keeps serving; nothing of it is left in the compile cache.
    let cached_before = cache_entries(&node.cache);
    let bomb = compile_bomb(&plugin_bytes("counter"), 1 << 20);
    let upload = node.upload("bomb", bomb);
    let serving = async {
        for _ in 0..5 {
            node.send(
                "counter",
                "during-bomb",
                json!({"op": "increment", "by": 1}),
            )
            .await;
        }
    };
    let (answer, ()) = tokio::join!(upload, serving);
    assert_error(&answer, 422, "invalid_plugin", "compile_timeout_ms");
    assert_eq!(
        cache_entries(&node.cache),
        cached_before,
        "nothing cached for a refused upload"
    );
    assert_eq!(node.plugin_version("bomb").await, Value::Null);
    node.alive_and_counting().await;
}

fn cache_entries(dir: &Path) -> Vec<String> {
    let mut entries: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    entries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_instance_pool_cannot_be_starved() {
    let mut node = Node::start();
    // Ten plugin names, each busy with 8 calls at once (its whole share): their idle instances
    // would hold every one of the 32 slots if idle instances were not evicted across versions.
    for n in 0..10 {
        let (status, body) = node
            .upload(&format!("copy{n}"), plugin_bytes("hostile"))
            .await;
        assert_eq!(status, 200, "{body}");
        let node = &node;
        let calls = (0..8).map(|client| async move {
            let (plugin, id) = (format!("copy{n}"), format!("e{client}"));
            node.send(
                &plugin,
                &id,
                json!({"op": "work", "iterations": 30_000_000}),
            )
            .await
        });
        for (status, body) in futures::future::join_all(calls).await {
            assert_eq!(status, 200, "{body}");
        }
    }
    // A new plugin's first call still succeeds.
    let (status, _) = node.upload("newcomer", plugin_bytes("counter")).await;
    assert_eq!(status, 200);
    let (status, body) = node
        .send("newcomer", "n", json!({"op": "increment", "by": 1}))
        .await;
    assert_eq!(
        (status, &body["reply"]),
        (200, &json!({"value": 1})),
        "{body}"
    );

    // 24 entities of the hostile plugin spin at once: it may hold 8 instances (its share); the
    // rest wait their turn or are told to retry — and the counter is served meanwhile.
    let attacked = &node;
    let spinners = (0..24).map(|n| async move {
        attacked
            .send("hostile", &format!("spin{n}"), json!({"op": "spin"}))
            .await
    });
    let counter = async {
        let mut served = 0;
        for n in 0..20 {
            let (status, body) = attacked
                .send(
                    "counter",
                    &format!("under-attack{n}"),
                    json!({"op": "increment", "by": 1}),
                )
                .await;
            assert_eq!(status, 200, "{body}");
            served += 1;
        }
        served
    };
    let (spun, served) = tokio::join!(futures::future::join_all(spinners), counter);
    let codes: Vec<_> = spun
        .iter()
        .map(|(_, body)| body["error"]["code"].as_str().unwrap_or("-").to_owned())
        .collect();
    assert!(
        codes
            .iter()
            .all(|code| code == "plugin_cpu_bound_exceeded" || code == "plugin_busy"),
        "{codes:?}"
    );
    println!("counter commands served while 24 spinners attacked the pool: {served}");
    node.alive_and_counting().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_400_and_the_node_lives() {
    let mut node = Node::start();
    // 401 bytes: arrays nested 400 deep. Refused before routing, for any entity type.
    let mut nested = vec![0x91u8; 400];
    nested.push(0xc0);
    for entity_type in ["counter", "no-such-type"] {
        let response = node
            .http
            .post(node.url(&format!("/entities/{entity_type}/x")))
            .header("content-type", "application/msgpack")
            .body(nested.clone())
            .send()
            .await
            .unwrap();
        let answer = (response.status().as_u16(), response.json().await.unwrap());
        assert_error(&answer, 400, "invalid_msgpack", "nested more than 128");
        node.alive_and_counting().await;
    }

    // A setting the code cannot honour: refused with its range, nothing bound.
    let response = node
        .http
        .put(node.url("/entity-types/t"))
        .json(&json!({"plugin": "counter", "mailbox_capacity": 2305843009213693952u64}))
        .send()
        .await
        .unwrap();
    let answer = (response.status().as_u16(), response.json().await.unwrap());
    let range = "mailbox_capacity = 2305843009213693952 is outside 1 ..= 1000000";
    assert_error(&answer, 400, "invalid_name", range);
    let (status, _) = node
        .send("t", "x", json!({"op": "increment", "by": 1}))
        .await;
    assert_eq!(status, 404, "the type was not bound");
    node.alive_and_counting().await;
}
