//! One plugin, three languages: the counter entity and the highest-bid resolver built from Rust,
//! Python and JavaScript behave the same — same replies, same rejections, the same MessagePack
//! bytes for state and events, the same resolutions — and a JavaScript build hot-swaps the Rust
//! one under load without a failed command.
//!
//! Python and JavaScript components take seconds to compile: every load here goes through the
//! shared compile cache, so each build of them is compiled once, not per test.

mod support;

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use support::node::{TestNode, command_ok, config, send_command, upload_plugin};
use support::rng::SplitMix64;
use support::{cached_registry, context, msgpack, plugin_bytes};
use weft::plugin::{Envelope, EventMeta, Resolution, RuntimeLimits, VersionEntry};

/// The counter plugin's builds; each serves the entity type of its own name.
const COUNTERS: [&str; 3] = ["counter", "counter-py", "counter-js"];

/// The highest-bid resolver's builds, the Rust one first: it is the reference.
const RESOLVERS: [&str; 3] = ["highest-bid", "highest-bid-py", "highest-bid-js"];

/// 2^53 + 1: the first integer a JavaScript Number cannot hold.
const BEYOND_JS_NUMBER: i64 = 9_007_199_254_740_993;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_counter_behaves_the_same_in_rust_python_and_javascript() {
    let root = tempfile::tempdir().unwrap();
    let TestNode { node, url, http } = TestNode::start(config(root.path(), &COUNTERS)).await;
    let commands = [
        json!({"op": "increment", "by": 5}),
        json!({"op": "decrement", "by": 2}),
        json!({"op": "decrement", "by": 4}),
        json!({"op": "increment", "by": 0}),
        json!({"op": "decrement", "by": -3}),
        json!({"op": "get"}),
        json!({"op": "reset"}),
        json!({"op": "increment", "by": BEYOND_JS_NUMBER}),
        json!({"op": "increment", "by": i64::MAX - BEYOND_JS_NUMBER}),
        json!({"op": "increment", "by": 1}),
        json!({"op": "decrement", "by": 1}),
        json!({"op": "get"}),
    ];

    let mut outcomes = Vec::new();
    for entity_type in COUNTERS {
        let mut steps = Vec::new();
        for command in &commands {
            let (status, mut body) = send_command(&http, &url, entity_type, "same", command).await;
            // The only fields that differ: which plugin version answered, and an error's
            // request id.
            let answered_by = body.as_object_mut().and_then(|body| body.remove("plugin"));
            if let Some(error) = body
                .get_mut("error")
                .and_then(|error| error.as_object_mut())
            {
                assert!(error.remove("request_id").is_some(), "{error:?}");
            }
            if status == StatusCode::OK {
                assert!(
                    answered_by.is_some_and(|plugin| plugin
                        .as_str()
                        .unwrap()
                        .starts_with(&format!("{entity_type}@"))),
                    "{entity_type} answered {command}"
                );
            }
            steps.push((status, body));
        }
        outcomes.push(steps);
    }
    let rust = &outcomes[0];
    assert_eq!(
        rust[2],
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"error": {"code": "command_rejected",
                   "message": "decrement by 4: the value 3 would go below the floor 0"}})
        )
    );
    assert_eq!(
        rust[9].1["error"]["message"],
        json!("increment by 1: the value would overflow")
    );
    assert_eq!(rust[11].1["reply"], json!({"value": i64::MAX - 1}));
    for (entity_type, steps) in COUNTERS.iter().zip(&outcomes).skip(1) {
        for (step, command) in commands.iter().enumerate() {
            assert_eq!(
                steps[step], rust[step],
                "{entity_type} differs from the Rust counter at step {step}: {command}"
            );
        }
    }

    // The bytes the host keeps: state and event payloads, exactly as the plugins wrote them.
    let rust_state = node.entities.state("counter", "same").await.unwrap();
    assert_eq!(rust_state.state, msgpack(&json!({"value": i64::MAX - 1})));
    let rust_events: Vec<Vec<u8>> = node
        .entities
        .events("counter", "same", None, 1, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|event| event.payload)
        .collect();
    assert_eq!(rust_events.len(), 6);
    for entity_type in &COUNTERS[1..] {
        let state = node.entities.state(entity_type, "same").await.unwrap();
        assert_eq!(
            (state.seq_nr, &state.state),
            (rust_state.seq_nr, &rust_state.state),
            "{entity_type} state"
        );
        let events: Vec<Vec<u8>> = node
            .entities
            .events(entity_type, "same", None, 1, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|event| event.payload)
            .collect();
        assert_eq!(events, rust_events, "{entity_type} events");
    }

    // A command none of them can decode is rejected by each, with the same opening.
    for entity_type in COUNTERS {
        let (status, body) =
            send_command(&http, &url, entity_type, "same", &json!({"op": "explode"})).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("cannot decode command"),
            "{entity_type}: {message}"
        );
    }
    node.shutdown().await.unwrap();
}

#[test]
fn the_highest_bid_resolver_decides_the_same_in_rust_python_and_javascript() {
    const CASES: usize = 240;
    const SEED: u64 = 0x5eed_b1d5;
    let registry = cached_registry(RuntimeLimits::default());
    for name in RESOLVERS {
        registry.load(name, &plugin_bytes(name)).unwrap();
    }
    let resolvers = RESOLVERS.map(|name| registry.get(name).unwrap());
    let mut rng = SplitMix64(SEED);
    let mut coverage = Coverage::default();
    for index in 0..CASES {
        let case = ConflictCase::generate(&mut rng, index);
        coverage.count(&case);
        let ctx = context("auction", "lot-7", case.now);
        let decide = |resolver: &weft::plugin::PluginVersion| {
            let resolution = resolver
                .resolve(&ctx, &case.state, &case.incoming, &case.concurrent)
                .unwrap_or_else(|error| panic!("case {index} (seed {SEED:#x}): {error}"));
            describe(&resolution)
        };
        let reference = decide(&resolvers[0]);
        coverage.decided(&reference);
        for (name, resolver) in RESOLVERS.iter().zip(&resolvers).skip(1) {
            assert_eq!(
                decide(resolver),
                reference,
                "{name} differs from the Rust resolver on case {index} (seed {SEED:#x}): {}",
                case.describe()
            );
        }
    }
    coverage.assert_broad();
}

/// Clients keep incrementing counters served by the Rust plugin `counter` while
/// `PUT /plugins/counter` uploads the JavaScript build: no command fails, commands sent after the
/// upload run on the JavaScript version and their events record it, and every counter ends at
/// exactly the number of increments, its state in the same MessagePack bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_javascript_counter_hot_swaps_the_rust_one_under_load() {
    const CLIENTS: usize = 4;
    const COMMANDS_BEFORE_UPLOAD: u64 = 40;
    const COMMANDS_AFTER_UPLOAD_PER_CLIENT: u64 = 30;
    let root = tempfile::tempdir().unwrap();
    let TestNode { node, url, http } = TestNode::start(config(root.path(), &["counter"])).await;
    let rust_version = node.plugins.get("counter").unwrap().id().to_owned();
    let uploaded_version = Arc::new(std::sync::OnceLock::<String>::new());
    let uploaded = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(120);

    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (http, url) = (http.clone(), url.clone());
            let (uploaded, uploaded_version, sent) =
                (uploaded.clone(), uploaded_version.clone(), sent.clone());
            tokio::spawn(async move {
                let (mut increments, mut after_upload) = (0u64, 0u64);
                while after_upload < COMMANDS_AFTER_UPLOAD_PER_CLIENT {
                    assert!(Instant::now() < deadline, "client {client} ran out of time");
                    let started_after_upload = uploaded.load(Ordering::SeqCst);
                    let increment = json!({"op": "increment", "by": 1});
                    let entity_id = format!("c{client}");
                    let body = command_ok(&http, &url, "counter", &entity_id, &increment).await;
                    increments += 1;
                    assert_eq!(body["reply"], json!({"value": increments}));
                    if started_after_upload {
                        let javascript = uploaded_version.get().expect("set before the flag");
                        assert_eq!(body["plugin"], json!(javascript));
                        after_upload += 1;
                    }
                    sent.fetch_add(1, Ordering::SeqCst);
                }
                increments
            })
        })
        .collect();

    while sent.load(Ordering::SeqCst) < COMMANDS_BEFORE_UPLOAD {
        assert!(Instant::now() < deadline, "clients made no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let report = upload_plugin(&http, &url, "counter", plugin_bytes("counter-js")).await;
    assert_eq!(report["replaced"], json!(rust_version));
    let javascript_version = report["version"].as_str().unwrap().to_owned();
    assert_ne!(javascript_version, rust_version);
    uploaded_version.set(javascript_version.clone()).unwrap();
    uploaded.store(true, Ordering::SeqCst);

    for (client, handle) in clients.into_iter().enumerate() {
        let increments = handle.await.unwrap();
        let entity_id = format!("c{client}");
        let state = node.entities.state("counter", &entity_id).await.unwrap();
        assert_eq!(state.state, msgpack(&json!({"value": increments})));
        assert_eq!(state.plugin, javascript_version);
        // Clients keep sending while the upload compiles: read every event, however many.
        let events = node
            .entities
            .events("counter", &entity_id, None, 1, increments as usize + 1)
            .await
            .unwrap();
        assert_eq!(events.len() as u64, increments);
        // Rust's events, then JavaScript's: the swap happens once, between two commands.
        let first_javascript = events
            .iter()
            .position(|event| event.plugin == javascript_version)
            .expect("events after the swap");
        assert!(
            events[..first_javascript]
                .iter()
                .all(|event| event.plugin == rust_version)
        );
        assert!(
            events[first_javascript..]
                .iter()
                .all(|event| event.plugin == javascript_version)
        );
    }
    node.shutdown().await.unwrap();
}

/// Origin replicas of the generated events.
const REPLICAS: &[&str] = &["a", "b", "c", "eu-west-1", "us-east-1", "zé"];

/// Two replica ids ordered one way by code point (as Rust and Python compare strings) and the
/// other way by UTF-16 code unit (as JavaScript's `<` does): a tie between them tells the two
/// apart.
const ASTRAL_PAIR: [&str; 2] = ["\u{FFFF}", "\u{10000}"];

/// One call of a resolver: an incoming event of an auction and 0–5 concurrent ones.
struct ConflictCase {
    now: u64,
    state: Vec<u8>,
    incoming: Envelope,
    concurrent: Vec<Envelope>,
    /// The payloads as JSON, to describe a failing case.
    payloads: Vec<Value>,
}

impl ConflictCase {
    fn generate(rng: &mut SplitMix64, index: usize) -> ConflictCase {
        let concurrent_count = rng.below(6) as usize;
        let mut payloads = Vec::new();
        let mut envelopes = Vec::new();
        for position in 0..=concurrent_count {
            let payload = event_payload(rng);
            envelopes.push(Envelope {
                meta: event_meta(rng, index, position),
                payload: msgpack(&payload),
            });
            payloads.push(payload);
        }
        let incoming = envelopes.remove(0);
        let state = match rng.below(3) {
            0 => json!(null),
            1 => json!({"highest": rng.next(), "bids": rng.below(100)}),
            _ => json!({"lot": "lot-7", "open": true}),
        };
        ConflictCase {
            now: rng.next(),
            state: msgpack(&state),
            incoming,
            concurrent: envelopes,
            payloads,
        }
    }

    fn incoming_amount(&self) -> Option<u64> {
        self.payloads[0]["amount"].as_u64()
    }

    /// Concurrent bids of the same amount as the incoming one.
    fn tied(&self) -> impl Iterator<Item = &Envelope> {
        let amount = self.incoming_amount();
        self.concurrent
            .iter()
            .zip(&self.payloads[1..])
            .filter(move |(_, payload)| amount.is_some() && payload["amount"].as_u64() == amount)
            .map(|(envelope, _)| envelope)
    }

    /// A tie between the two replicas of [`ASTRAL_PAIR`].
    fn has_astral_tie(&self) -> bool {
        let incoming = self.incoming.meta.origin_replica.as_str();
        ASTRAL_PAIR.contains(&incoming)
            && self.tied().any(|other| {
                let other = other.meta.origin_replica.as_str();
                ASTRAL_PAIR.contains(&other) && other != incoming
            })
    }

    fn describe(&self) -> String {
        let replicas: Vec<&str> = std::iter::once(&self.incoming)
            .chain(&self.concurrent)
            .map(|envelope| envelope.meta.origin_replica.as_str())
            .collect();
        format!(
            "payloads {} from replicas {replicas:?}",
            Value::from(self.payloads.clone())
        )
    }
}

/// A bid (most of the time), or an event that is not one.
fn event_payload(rng: &mut SplitMix64) -> Value {
    match rng.below(10) {
        0 => json!({"type": "note", "text": "reserve price met"}),
        1 => json!({"type": "withdrawn", "amount": null}),
        _ => {
            let amount = match rng.below(4) {
                // A narrow range, so ties are common.
                0 | 1 => rng.below(4),
                2 => rng.below(1 << 40),
                // Beyond what a JavaScript Number holds exactly, up to u64::MAX.
                _ => u64::MAX - rng.below(1 << 54),
            };
            json!({"type": "bid", "amount": amount, "bidder": format!("bidder-{}", rng.below(5))})
        }
    }
}

fn event_meta(rng: &mut SplitMix64, index: usize, position: usize) -> EventMeta {
    let origin_replica = if rng.below(3) == 0 {
        rng.pick(&ASTRAL_PAIR)
    } else {
        rng.pick(REPLICAS)
    }
    .to_string();
    let version = REPLICAS[..3]
        .iter()
        .map(|replica| VersionEntry {
            replica: replica.to_string(),
            counter: rng.below(1_000),
        })
        .collect();
    EventMeta {
        persistence_id: "auction|lot-7".into(),
        seq_nr: (index * 10 + position) as u64 + 1,
        writer: "01JCONFORMANCEWRITER000000".into(),
        fencing_token: 0,
        timestamp: rng.next(),
        origin_replica,
        origin_seq_nr: rng.below(10_000),
        version,
        concurrent: true,
    }
}

fn describe(resolution: &Resolution) -> String {
    match resolution {
        Resolution::Keep => "keep".into(),
        Resolution::Drop => "drop".into(),
        Resolution::Replace(events) => format!("replace {events:?}"),
    }
}

/// What the generated corpus exercised, so a generator change cannot make the test trivial.
#[derive(Default)]
struct Coverage {
    concurrent_counts: [usize; 6],
    ties: usize,
    astral_ties: usize,
    non_bids: usize,
    beyond_js_number: usize,
    keeps: usize,
    drops: usize,
}

impl Coverage {
    fn count(&mut self, case: &ConflictCase) {
        self.concurrent_counts[case.concurrent.len()] += 1;
        self.ties += usize::from(case.tied().next().is_some());
        self.astral_ties += usize::from(case.has_astral_tie());
        self.non_bids += usize::from(case.incoming_amount().is_none());
        self.beyond_js_number += usize::from(
            case.incoming_amount()
                .is_some_and(|amount| amount > 1 << 53),
        );
    }

    fn decided(&mut self, resolution: &str) {
        match resolution {
            "keep" => self.keeps += 1,
            "drop" => self.drops += 1,
            other => panic!("the highest-bid resolver never replaces, yet answered {other}"),
        }
    }

    fn assert_broad(&self) {
        assert!(
            self.concurrent_counts.iter().all(|&count| count >= 10),
            "{:?}",
            self.concurrent_counts
        );
        assert!(self.ties >= 10, "ties: {}", self.ties);
        assert!(self.astral_ties >= 3, "astral ties: {}", self.astral_ties);
        assert!(self.non_bids >= 10, "non-bids: {}", self.non_bids);
        assert!(
            self.beyond_js_number >= 10,
            "large amounts: {}",
            self.beyond_js_number
        );
        assert!(
            self.keeps >= 40 && self.drops >= 40,
            "keeps {} drops {}",
            self.keeps,
            self.drops
        );
    }
}
