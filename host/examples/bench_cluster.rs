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

/// Kills the owner of an entity and times until the entity takes a command again.
async fn failover(cluster: &TestCluster, http: &reqwest::Client) -> anyhow::Result<Vec<Duration>> {
    let a1 = cluster.start("a1", "actor");
    let a3 = cluster.start("a3", "actor");
    let gateway = cluster.start("g1", "gateway");
    let mut times = Vec::new();
    for run in 0..FAILOVER_RUNS {
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
        a2.kill();
        while !accepted(http, &gateway.url, &victim).await {
            anyhow::ensure!(killed.elapsed() < cluster::DEADLINE, "no failover");
        }
        let took = killed.elapsed();
        println!(
            "  run {}: {victim} accepted again {took:?} after the kill",
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let postgres = Postgres::start();
    let http = reqwest::Client::new();

    println!("failover: SIGKILL of an entity's owner → first accepted command on the new owner");
    let times = failover(&TestCluster::new(&postgres, "a1").await, &http).await?;
    println!(
        "failover over {FAILOVER_RUNS} kills: median {:?} (min {:?}, max {:?})",
        times[times.len() / 2],
        times[0],
        times[times.len() - 1]
    );

    for actors in [1usize, 3] {
        let cluster = TestCluster::new(&postgres, "a1").await;
        let mut nodes = vec![cluster.start("a1", "actor")];
        for n in 2..=actors {
            nodes.push(cluster.start(&format!("a{n}"), "actor"));
        }
        let gateway = cluster.start("g1", "gateway");
        let mut names: Vec<String> = (1..=actors).map(|n| format!("a{n}")).collect();
        names.push("g1".into());
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        wait_for_members(&http, &gateway.url, &names).await;
        let rate = throughput(&gateway.url).await?;
        println!(
            "{actors} actor node(s) behind one gateway: {rate:.0} commands/s \
             ({CLIENTS} clients, {COMMANDS} commands, {ENTITIES} entities)"
        );
    }
    Ok(())
}
