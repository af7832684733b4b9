//! Benchmark of the cluster (a program, not a test): `cargo xtask bench cluster`.
//!
//! Starts its own PostgreSQL and `weft serve` processes on loopback with the test cluster's
//! settings (probe period 200 ms, suspicion 1 s, single-writer counter with a 2 s lease), then
//! measures:
//!
//! - failover: the time from SIGKILL of an entity's owner to the first command for that entity
//!   accepted on its new owner, through a gateway (median over [`FAILOVER_RUNS`] kills);
//! - commands per second through one gateway to 1 actor node and to 3 actor nodes
//!   ([`CLIENTS`] concurrent clients, [`COMMANDS`] commands over [`ENTITIES`] entities).
//!
//! With the argument `stop` (`cargo xtask bench cluster stop`) it measures only the takeover
//! after a graceful stop (SIGTERM) against the takeover after SIGKILL, both with a
//! [`STOP_LEASE_TTL_MS`] lease: [`STOP_RUNS`] of each.
//!
//! With the argument `tls` (`cargo xtask bench cluster tls`) it measures only the cost of mutual
//! TLS on the transport: commands per second through one gateway to 1 actor node, with the
//! transport on TLS and in plaintext, alternating, [`TLS_ROUNDS`] rounds of each.
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

use std::time::{Duration, Instant};

use cluster::{TestCluster, cluster_view, wait_for_members};
use serde_json::json;
use services::Postgres;

const FAILOVER_RUNS: usize = 5;
const STOP_RUNS: usize = 3;
const TLS_ROUNDS: usize = 3;
/// The single-writer lease of the `stop` comparison: long, as a production lease would be.
const STOP_LEASE_TTL_MS: u64 = 15_000;
const CLIENTS: usize = 32;
const COMMANDS: usize = 4_000;
const ENTITIES: usize = 64;

async fn accepted(http: &reqwest::Client, url: &str, entity: &str) -> bool {
    http.post(format!("{url}/entities/counter/{entity}"))
        .json(&json!({"op": "increment", "by": 1}))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .is_ok_and(|response| response.status() == 200)
}

/// How the owner of an entity is taken down.
#[derive(Clone, Copy, Debug)]
enum Takedown {
    /// SIGKILL: its lease expires, peers suspect it.
    Kill,
    /// SIGTERM: a graceful stop, which releases the lease and leaves the cluster.
    Terminate,
}

/// Takes the owner of an entity down `runs` times and times until the entity takes a command
/// again.
async fn failover(
    cluster: &TestCluster,
    http: &reqwest::Client,
    takedown: Takedown,
    runs: usize,
) -> anyhow::Result<Vec<Duration>> {
    let a1 = cluster.start("a1", "actor");
    let a3 = cluster.start("a3", "actor");
    let gateway = cluster.start("g1", "gateway");
    let mut times = Vec::new();
    for run in 0..runs {
        let a2 = cluster.start("a2", "actor");
        for node in [&a1, &a2, &a3, &gateway] {
            wait_for_members(http, &node.url, &["a1", "a2", "a3", "g1"]).await;
        }
        // Activate entities until one lives on a2.
        let mut victim = None;
        for entity in 0..ENTITIES {
            let id = format!("f{run}-{entity}");
            anyhow::ensure!(accepted(http, &gateway.url, &id).await, "{id} refused");
            let view = cluster_view(http, &a2.url).await.unwrap_or_default();
            let on_a2 = view["active_entities"]
                .as_array()
                .is_some_and(|entities| entities.iter().any(|e| e["entity_id"] == id.as_str()));
            if on_a2 {
                victim = Some(id);
                break;
            }
        }
        let victim = victim.ok_or_else(|| anyhow::anyhow!("no entity landed on a2"))?;
        let killed = Instant::now();
        // A graceful stop runs while the gateway already retries; a command counts once it
        // was sent after the owner's process is gone (during the stop the owner still answers).
        let stopped = match takedown {
            Takedown::Kill => {
                a2.kill();
                None
            }
            Takedown::Terminate => Some(tokio::task::spawn_blocking(|| a2.terminate())),
        };
        let gone = |stopped: &Option<tokio::task::JoinHandle<_>>| {
            stopped.as_ref().is_none_or(|stop| stop.is_finished())
        };
        loop {
            let sent_after_exit = gone(&stopped);
            if accepted(http, &gateway.url, &victim).await && sent_after_exit {
                break;
            }
            anyhow::ensure!(killed.elapsed() < cluster::DEADLINE, "no failover");
        }
        let took = killed.elapsed();
        if let Some(stopped) = stopped {
            anyhow::ensure!(stopped.await?.success(), "a graceful stop exits 0");
        }
        println!(
            "  run {}: {victim} accepted again {took:?} after {takedown:?}",
            run + 1
        );
        times.push(took);
    }
    times.sort();
    Ok(times)
}

/// Commands per second through the gateway at `url`.
async fn throughput(url: &str) -> anyhow::Result<f64> {
    let http = reqwest::Client::new();
    // Activate every entity first: the figure is for steady state, not first activations.
    for entity in 0..ENTITIES {
        anyhow::ensure!(
            accepted(&http, url, &format!("t{entity}")).await,
            "t{entity}"
        );
    }
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (http, url) = (http.clone(), url.to_owned());
            tokio::spawn(async move {
                let mut ok = 0usize;
                for sent in 0..COMMANDS / CLIENTS {
                    let entity = (client + sent * CLIENTS) % ENTITIES;
                    if accepted(&http, &url, &format!("t{entity}")).await {
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
    anyhow::ensure!(
        ok == COMMANDS,
        "{} of {COMMANDS} commands failed",
        COMMANDS - ok
    );
    Ok(COMMANDS as f64 / seconds)
}

/// Starts `actors` actor nodes and a gateway of `cluster`, and measures the commands per second
/// through the gateway.
async fn gateway_throughput(
    cluster: &TestCluster,
    http: &reqwest::Client,
    actors: usize,
) -> anyhow::Result<f64> {
    let mut nodes = vec![cluster.start("a1", "actor")];
    for n in 2..=actors {
        nodes.push(cluster.start(&format!("a{n}"), "actor"));
    }
    let gateway = cluster.start("g1", "gateway");
    let mut names: Vec<String> = (1..=actors).map(|n| format!("a{n}")).collect();
    names.push("g1".into());
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    wait_for_members(http, &gateway.url, &names).await;
    throughput(&gateway.url).await
}

/// Prints the median, the fastest and the slowest of `times` (sorted).
fn report(what: &str, times: &[Duration]) {
    println!(
        "{what} over {} runs: median {:?} (min {:?}, max {:?})",
        times.len(),
        times[times.len() / 2],
        times[0],
        times[times.len() - 1]
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let postgres = Postgres::start();
    let http = reqwest::Client::new();

    if std::env::args().nth(1).as_deref() == Some("stop") {
        for takedown in [Takedown::Terminate, Takedown::Kill] {
            println!(
                "takeover: {takedown:?} of an entity's owner → first accepted command on the new \
                 owner, {STOP_LEASE_TTL_MS} ms lease"
            );
            let cluster = TestCluster {
                lease_ttl_ms: STOP_LEASE_TTL_MS,
                ..TestCluster::new(&postgres, "a1").await
            };
            let times = failover(&cluster, &http, takedown, STOP_RUNS).await?;
            report(&format!("{takedown:?}"), &times);
        }
        return Ok(());
    }

    if std::env::args().nth(1).as_deref() == Some("tls") {
        let (mut with, mut without) = (Vec::new(), Vec::new());
        for _ in 0..TLS_ROUNDS {
            for tls in [true, false] {
                let cluster = TestCluster {
                    tls,
                    ..TestCluster::new(&postgres, "a1").await
                };
                let rate = gateway_throughput(&cluster, &http, 1).await?;
                println!(
                    "transport {}: {rate:.0} commands/s",
                    if tls { "TLS" } else { "plaintext" }
                );
                match tls {
                    true => with.push(rate),
                    false => without.push(rate),
                }
            }
        }
        let median = |rates: &mut Vec<f64>| {
            rates.sort_by(f64::total_cmp);
            rates[rates.len() / 2]
        };
        let (with, without) = (median(&mut with), median(&mut without));
        println!(
            "gateway-forwarded commands, median of {TLS_ROUNDS}: TLS {with:.0}/s, plaintext \
             {without:.0}/s, ratio {:.2} ({CLIENTS} clients, {COMMANDS} commands, {ENTITIES} \
             entities)",
            with / without
        );
        return Ok(());
    }

    println!("failover: SIGKILL of an entity's owner → first accepted command on the new owner");
    let cluster = TestCluster::new(&postgres, "a1").await;
    let times = failover(&cluster, &http, Takedown::Kill, FAILOVER_RUNS).await?;
    report("failover after SIGKILL", &times);

    for actors in [1usize, 3] {
        let cluster = TestCluster::new(&postgres, "a1").await;
        let rate = gateway_throughput(&cluster, &http, actors).await?;
        println!(
            "{actors} actor node(s) behind one gateway: {rate:.0} commands/s \
             ({CLIENTS} clients, {COMMANDS} commands, {ENTITIES} entities)"
        );
    }
    Ok(())
}
