//! Benchmark of the sandbox's costs to the host (a program, not a test):
//! `cargo xtask bench sandbox`.
//!
//! Starts a `weft serve` process (release build) with the counter and the hostile plugin, and
//! measures:
//!
//! - the node's peak RSS growth for one reply of N MiB (an array of nils: the worst case for a
//!   generic decoder; a string), answered as JSON and as MessagePack;
//! - a compile bomb (a loop over 2,000 live locals, 1 MiB of code, with the counter's exports):
//!   how long it compiles without a budget (in this process), and how long the node takes to
//!   refuse it with `compile_timeout_ms = 2000`;
//! - counter commands served per second by [`COUNTER_CLIENTS`] clients, alone and while
//!   [`SPINNERS`] clients keep the hostile plugin spinning to its CPU bound.

#![allow(dead_code)] // the benchmark uses a subset of the test support

#[path = "../tests/support/hostile.rs"]
mod hostile;
#[path = "../tests/support/memory.rs"]
mod memory;
#[path = "../tests/support/node.rs"]
mod node;
#[path = "../tests/support/plugins.rs"]
mod plugins;

use serde_json::{Value, json};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const COUNTER_CLIENTS: usize = 4;
const SPINNERS: usize = 40;
const ATTACK: Duration = Duration::from_secs(5);

fn start(root: &std::path::Path) -> node::ServeProcess {
    let plugins = node::plugins_dir(root, &["counter", "hostile"]);
    let config = root.join("weft.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\nplugins_dir = \"{}\"\n\n\
             [limits]\ncpu_per_call_ms = 5000\nmemory_per_instance_bytes = {}\n\
             compile_timeout_ms = 2000\n\n\
             [limits.output]\nreply_bytes_max = {}\n",
            root.join("data").display(),
            plugins.display(),
            256 * MIB,
            96 * MIB,
        ),
    )
    .expect("write weft.toml");
    node::ServeProcess::start_with_config(&config)
}

async fn send(
    http: &reqwest::Client,
    url: &str,
    path: &str,
    command: Value,
    msgpack: bool,
) -> (u16, usize) {
    let mut request = http.post(format!("{url}{path}")).json(&command);
    if msgpack {
        request = request.header("accept", "application/msgpack");
    }
    let response = request.send().await.expect("the node answers");
    let status = response.status().as_u16();
    (status, response.bytes().await.map(|b| b.len()).unwrap_or(0))
}

async fn rss_per_payload(http: &reqwest::Client, node: &node::ServeProcess) {
    println!("peak RSS growth of the node for one reply (answered, status 200):");
    println!("| reply | payload | as JSON | as MessagePack |");
    println!("|---|---:|---:|---:|");
    for (shape, mib) in [
        ("nils", 1),
        ("nils", 4),
        ("nils", 16),
        ("nils", 64),
        ("str", 16),
        ("str", 64),
    ] {
        let mut cells = Vec::new();
        for msgpack in [false, true] {
            memory::reset_peak_rss(node.pid());
            let before = memory::peak_rss_bytes(node.pid());
            let command = json!({"op": "reply", "shape": shape, "bytes": mib * MIB});
            let (status, body) =
                send(http, &node.url, "/entities/hostile/r", command, msgpack).await;
            assert_eq!(status, 200);
            let growth = memory::peak_rss_bytes(node.pid()).saturating_sub(before);
            cells.push(format!(
                "+{} MiB ({:.1} MiB per MiB; body {} MiB)",
                growth / MIB,
                growth as f64 / (mib * MIB) as f64,
                body as u64 / MIB
            ));
        }
        println!("| {shape} | {mib} MiB | {} | {} |", cells[0], cells[1]);
    }
}

async fn compile_bomb(http: &reqwest::Client, node: &node::ServeProcess) {
    let bomb = hostile::compile_bomb(&plugins::plugin_bytes("counter"), MIB as usize);
    let engine =
        wasmtime::Engine::new(wasmtime::Config::new().wasm_component_model(true)).expect("engine");
    let started = Instant::now();
    wasmtime::component::Component::new(&engine, &bomb).expect("the bomb is a valid component");
    println!(
        "compile bomb (1 MiB function): compiles in {:.1} s without a budget",
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let response = http
        .put(format!("{}/plugins/bomb", node.url))
        .body(bomb)
        .send()
        .await
        .expect("answers");
    let status = response.status();
    let body: Value = response.json().await.expect("json");
    println!(
        "compile bomb: the node refused it after {:.2} s ({status}: {})",
        started.elapsed().as_secs_f64(),
        body["error"]["message"]
    );
}

/// Counter commands answered 200 by `COUNTER_CLIENTS` clients over `ATTACK`, with `spinners`
/// clients keeping the hostile plugin at its CPU bound meanwhile; and the spinners' outcomes.
async fn served_under_attack(
    http: &reqwest::Client,
    url: &str,
    spinners: usize,
) -> (f64, usize, usize) {
    let deadline = Instant::now() + ATTACK;
    let counter = (0..COUNTER_CLIENTS).map(|client| async move {
        let mut served = 0usize;
        while Instant::now() < deadline {
            let path = format!("/entities/counter/c{client}");
            if send(http, url, &path, json!({"op": "increment", "by": 1}), false)
                .await
                .0
                == 200
            {
                served += 1;
            }
        }
        served
    });
    let attack = (0..spinners).map(|n| async move {
        let (mut bounded, mut busy) = (0usize, 0usize);
        while Instant::now() < deadline {
            match send(
                http,
                url,
                &format!("/entities/hostile/spin{n}"),
                json!({"op": "spin"}),
                false,
            )
            .await
            .0
            {
                422 => bounded += 1,
                _ => busy += 1,
            }
        }
        (bounded, busy)
    });
    let (served, attacks) = tokio::join!(
        futures::future::join_all(counter),
        futures::future::join_all(attack)
    );
    let served: usize = served.into_iter().sum();
    let bounded = attacks.iter().map(|(b, _)| b).sum();
    let busy = attacks.iter().map(|(_, b)| b).sum();
    (served as f64 / ATTACK.as_secs_f64(), bounded, busy)
}

#[tokio::main]
async fn main() {
    let root = tempfile::tempdir().expect("tempdir");
    let node = start(root.path());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client");
    rss_per_payload(&http, &node).await;
    compile_bomb(&http, &node).await;
    let (alone, _, _) = served_under_attack(&http, &node.url, 0).await;
    let (attacked, bounded, busy) = served_under_attack(&http, &node.url, SPINNERS).await;
    println!(
        "counter commands/s ({COUNTER_CLIENTS} clients): {alone:.0} alone, {attacked:.0} while {SPINNERS} clients \
         spin the hostile plugin ({bounded} spins stopped by the CPU bound, {busy} told plugin_busy)"
    );
}
