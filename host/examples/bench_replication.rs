//! Benchmark of replicated entities (a program, not a test): `cargo xtask bench replication`.
//!
//! Starts its own PostgreSQL and three `weft serve` processes on loopback (replicas `a`, `b`,
//! `c`, the test cluster's settings), then measures:
//!
//! - commands per second to a counter replicated on all three nodes (every command persisted by
//!   the replica that took it and pushed to the other two) against the same counter placed on one
//!   owner per entity, with the same clients spread over the same three nodes;
//! - the time for a replica cut off by a partition to converge after the heal, when
//!   [`PARTITION_EVENTS`] events were written on the other side meanwhile;
//! - in process, the cost of folding a late concurrent event: the merge log rewinds to the
//!   checkpoint before it and folds the events after it again, against folding an event that
//!   arrives in order.
//!
//! Every process shares the machine's cores with the others and with PostgreSQL.

#![allow(dead_code)] // the benchmark uses a subset of the test support

#[path = "../tests/support/cluster.rs"]
mod cluster;
#[path = "../tests/support/node.rs"]
mod node;
#[path = "../tests/support/plugins.rs"]
mod plugins;
#[path = "../tests/support/services.rs"]
mod services;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cluster::{DEADLINE, TestCluster, inject_fault, wait_for_members};
use serde_json::{Value, json};
use services::Postgres;
use ulid::Ulid;
use weft::journal::EventEnvelope;
use weft::plugin::RuntimeLimits;
use weft::replication::{MergeLog, PluginFold, Resolver};

const CLIENTS: usize = 32;
const COMMANDS: usize = 4_000;
const ENTITIES: usize = 64;
const PARTITION_EVENTS: usize = 10_000;
/// Events folded before the late one arrives, in the re-fold measurement.
const FOLDED: usize = 10_000;

const TYPES: &str = r#"
[entities.tally]
plugin = "counter"
replication = { replicas = ["a", "b", "c"], pull_interval_ms = 200 }

[entities.plain]
plugin = "counter"
"#;

async fn accepted(http: &reqwest::Client, url: &str, path: &str) -> bool {
    http.post(format!("{url}/entities/{path}"))
        .json(&json!({"op": "increment", "by": 1}))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .is_ok_and(|response| response.status() == 200)
}

async fn value(http: &reqwest::Client, url: &str, path: &str) -> Option<i64> {
    let body: Value = http
        .get(format!("{url}/entities/{path}"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    body["state"]["value"].as_i64()
}

/// Sends `count` increments to `entity_type` over `entities` entities from [`CLIENTS`] clients,
/// each client's commands going round robin to `urls`; commands per second.
async fn throughput(
    urls: &[String],
    entity_type: &str,
    entities: usize,
    count: usize,
) -> anyhow::Result<f64> {
    let http = reqwest::Client::new();
    // Activate every entity first: the figure is for steady state, not first activations.
    for entity in 0..entities {
        for url in urls {
            anyhow::ensure!(
                accepted(&http, url, &format!("{entity_type}/t{entity}")).await,
                "{entity_type}/t{entity} refused at {url}"
            );
        }
    }
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (http, urls) = (http.clone(), urls.to_vec());
            let entity_type = entity_type.to_owned();
            tokio::spawn(async move {
                let mut ok = 0usize;
                for sent in 0..count / CLIENTS {
                    let entity = (client + sent * CLIENTS) % entities;
                    let url = &urls[(client + sent) % urls.len()];
                    if accepted(&http, url, &format!("{entity_type}/t{entity}")).await {
                        ok += 1;
                    }
                }
                ok
            })
        })
        .collect();
    let mut ok = 0;
    for client in clients {
        ok += client.await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(ok == count, "{} of {count} commands failed", count - ok);
    Ok(count as f64 / seconds)
}

/// Partitions c away, writes [`PARTITION_EVENTS`] at a, heals, and times until c holds what a
/// holds: (from the heal, from the moment c sees every member again).
async fn partition_convergence(urls: &[String]) -> anyhow::Result<(Duration, Duration)> {
    let http = reqwest::Client::new();
    let path = "tally/partitioned";
    anyhow::ensure!(accepted(&http, &urls[2], path).await, "c refused");
    inject_fault(
        &http,
        &urls[2],
        json!({"fault": "partition", "from": ["a", "b"]}),
    )
    .await;
    for url in &urls[..2] {
        inject_fault(&http, url, json!({"fault": "partition", "from": ["c"]})).await;
    }
    wait_for_members(&http, &urls[0], &["a", "b"]).await;
    wait_for_members(&http, &urls[2], &["c"]).await;
    let writers: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (http, url) = (http.clone(), urls[0].clone());
            tokio::spawn(async move {
                let mut ok = 0;
                for _ in 0..PARTITION_EVENTS / CLIENTS {
                    ok += usize::from(accepted(&http, &url, path).await);
                }
                ok
            })
        })
        .collect();
    let mut written = 0;
    for writer in writers {
        written += writer.await?;
    }
    anyhow::ensure!(
        written == PARTITION_EVENTS / CLIENTS * CLIENTS,
        "writes failed"
    );
    let expected = value(&http, &urls[0], path).await;
    println!("  {written} events written at a while c was cut off; a holds {expected:?}");
    let healed = Instant::now();
    for url in urls {
        inject_fault(&http, url, json!({"fault": "heal"})).await;
    }
    let mut rejoined = None;
    loop {
        if rejoined.is_none() {
            let view = cluster::cluster_view(&http, &urls[2]).await;
            let members = view
                .as_ref()
                .and_then(|view| view["members"].as_array())
                .map_or(0, Vec::len);
            if members == 3 {
                rejoined = Some(Instant::now());
            }
        }
        if let Some(rejoined) = rejoined
            && value(&http, &urls[2], path).await == expected
        {
            return Ok((healed.elapsed(), rejoined.elapsed()));
        }
        anyhow::ensure!(healed.elapsed() < DEADLINE, "c did not converge");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An increment of 1 by `origin`, its `seq_nr`-th, at HLC time `timestamp`.
fn increment_event(origin: &str, seq_nr: u64, timestamp: u64, plugin: &str) -> EventEnvelope {
    EventEnvelope {
        persistence_id: format!("tally|r|{origin}"),
        seq_nr,
        writer: Ulid::nil(),
        fencing_token: 0,
        timestamp,
        origin_replica: origin.to_owned(),
        origin_seq_nr: seq_nr,
        version: BTreeMap::from([(origin.to_owned(), seq_nr)]),
        concurrent: false,
        plugin: plugin.to_owned(),
        payload: plugins::msgpack(&json!({"type": "incremented", "by": 1})),
        idempotency: None,
    }
}

/// Per event re-folded, and for one late event landing `behind` events from the end of a log of
/// [`FOLDED`] events, against one in order: (in order, late), each the median of 9 runs.
fn refold_cost(behind: usize) -> anyhow::Result<(Duration, Duration)> {
    let registry = plugins::cached_registry(RuntimeLimits::default());
    registry.load("counter", &plugins::plugin_bytes("counter"))?;
    let counter = registry.get("counter")?;
    let fold = PluginFold::new(
        counter.clone(),
        Resolver::LastWriterWins,
        plugins::context("tally", "r", 0),
    );
    let initial = counter.init(&plugins::context("tally", "r", 0))?;
    let mut log = MergeLog::new(initial);
    for seq_nr in 1..=FOLDED as u64 {
        log.insert(
            &fold,
            increment_event("a", seq_nr, seq_nr * 10, counter.id()),
        )?;
    }
    let mut in_order = Vec::new();
    let mut late = Vec::new();
    for run in 0..9u64 {
        let mut copy = log.clone();
        let next = FOLDED as u64 + 1 + run;
        let started = Instant::now();
        copy.insert(&fold, increment_event("a", next, next * 10, counter.id()))?;
        in_order.push(started.elapsed());
        let mut copy = log.clone();
        let timestamp = (FOLDED - behind) as u64 * 10 + 5;
        let started = Instant::now();
        copy.insert(
            &fold,
            increment_event("b", 1 + run, timestamp, counter.id()),
        )?;
        late.push(started.elapsed());
    }
    in_order.sort();
    late.sort();
    Ok((in_order[4], late[4]))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let postgres = Postgres::start();
    let http = reqwest::Client::new();
    let cluster = TestCluster {
        fault_injection: true,
        extra: TYPES.to_owned(),
        ..TestCluster::new(&postgres, "a").await
    };
    let nodes: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|name| cluster.start(name, "actor"))
        .collect();
    let urls: Vec<String> = nodes.iter().map(|node| node.url.clone()).collect();
    for url in &urls {
        wait_for_members(&http, url, &["a", "b", "c"]).await;
    }

    println!(
        "commands/s, {CLIENTS} clients spread over 3 nodes, {COMMANDS} commands, {ENTITIES} entities:"
    );
    let plain = throughput(&urls, "plain", ENTITIES, COMMANDS).await?;
    println!("  placed on one owner each (forwarded when sent elsewhere): {plain:.0} commands/s");
    let replicated = throughput(&urls, "tally", ENTITIES, COMMANDS).await?;
    println!(
        "  replicated on 3 replicas (persisted locally, pushed to 2): {replicated:.0} commands/s"
    );
    println!("  ratio replicated / placed: {:.2}", replicated / plain);

    println!("convergence after a partition with {PARTITION_EVENTS} events on the other side:");
    let (from_heal, from_rejoin) = partition_convergence(&urls).await?;
    println!(
        "  c holds what a holds {from_heal:?} after the heal ({from_rejoin:?} after c saw every member again)"
    );

    println!("re-fold cost in a merge log of {FOLDED} events (counter plugin, median of 9):");
    for behind in [1usize, 100, 1_000] {
        let (in_order, late) = refold_cost(behind)?;
        println!(
            "  late concurrent event {behind} events from the end: {late:?} (an event in order: {in_order:?})"
        );
    }
    Ok(())
}
