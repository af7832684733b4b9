//! Benchmark of leases and of the PostgreSQL journal (a program, not a test): `cargo xtask bench lease`.
//!
//! Starts its own PostgreSQL (with its durable defaults: `fsync` and `synchronous_commit` on) and
//! Redis on loopback, like the tests do, then measures for each lease backend (in memory, PostgreSQL,
//! Redis):
//!
//! - acquire + release round trips per second, from concurrent clients on names of their own;
//! - the latency of one renewal (median and 99th percentile), one client renewing back to back;
//!
//! and durable counter commands per second through `EntitySystem::ask` on the SQLite journal and on
//! the PostgreSQL journal (every reply waits for its event to be committed).

#[path = "support/durable_commands.rs"]
mod durable_commands;
#[allow(dead_code)] // the benchmark uses a subset of the test services
#[path = "../tests/support/services.rs"]
mod services;

use std::sync::Arc;
use std::time::{Duration, Instant};

use durable_commands::{CALLERS, ENTITIES};
use services::{Postgres, Redis};
use weft::journal::{Journal, PostgresJournal, SqliteJournal};
use weft::lease::{InMemoryLease, Lease, PostgresLease, RedisLease};

/// Clients doing acquire + release round trips at once, each on its own name.
const CLIENTS: usize = 16;
/// Round trips per client.
const ROUND_TRIPS_PER_CLIENT: usize = 250;
/// Renewals timed, back to back by one client.
const RENEWALS: usize = 2_000;
/// Durable commands per journal.
const COMMANDS: u64 = 20_000;
/// Long enough that nothing expires during a run.
const TTL: Duration = Duration::from_secs(60);
/// PostgreSQL connections of the lease backend: one per client.
const LEASE_CONNECTIONS_MAX: usize = CLIENTS;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let postgres = Postgres::start_durable();
    let redis = Redis::start();

    println!(
        "weft lease benchmark: {CLIENTS} clients x {ROUND_TRIPS_PER_CLIENT} acquire+release round \
         trips, {RENEWALS} renewals by one client, time to live {TTL:?}"
    );
    println!("| lease backend | acquire+release round trips/s | renew median | renew p99 |");
    println!("|---|---|---|---|");
    let backends: [(&str, Arc<dyn Lease>); 3] = [
        ("in memory", Arc::new(InMemoryLease::new())),
        (
            "PostgreSQL",
            Arc::new(
                PostgresLease::connect(&postgres.fresh_database().await, LEASE_CONNECTIONS_MAX)
                    .await?,
            ),
        ),
        ("Redis", Arc::new(RedisLease::connect(&redis.url()).await?)),
    ];
    for (name, lease) in backends {
        let round_trips_per_sec = round_trips_per_sec(&lease).await?;
        let (median, p99) = renew_latency(&*lease).await?;
        println!(
            "| {name} | {round_trips_per_sec:.0} | {:.1} µs | {:.1} µs |",
            micros(median),
            micros(p99)
        );
    }

    println!();
    println!(
        "durable counter commands through EntitySystem::ask: {COMMANDS} commands, {ENTITIES} \
         entities, {CALLERS} concurrent callers"
    );
    println!("| journal | commands/s |");
    println!("|---|---|");
    let directory = tempfile::tempdir()?;
    let journals: [(&str, Arc<dyn Journal>); 2] = [
        (
            "SQLite (synchronous = FULL, group commit)",
            Arc::new(SqliteJournal::open(directory.path().join("journal.db")).await?),
        ),
        (
            "PostgreSQL (fsync, synchronous_commit on)",
            Arc::new(PostgresJournal::open(&postgres.fresh_database().await).await?),
        ),
    ];
    for (name, journal) in journals {
        let (sent, secs) = durable_commands::run(journal, COMMANDS).await?;
        println!("| {name} | {:.0} |", sent as f64 / secs);
    }
    Ok(())
}

/// Concurrent acquire + release round trips per second.
async fn round_trips_per_sec(lease: &Arc<dyn Lease>) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..CLIENTS {
        let lease = Arc::clone(lease);
        clients.spawn(async move {
            let (name, owner) = (format!("bench-{client}"), format!("client-{client}"));
            for _ in 0..ROUND_TRIPS_PER_CLIENT {
                let grant = lease
                    .acquire(&name, &owner, TTL)
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("{name} is held by someone else"))?;
                lease.release(&name, &owner, grant.fencing_token).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(client) = clients.join_next().await {
        client??;
    }
    Ok((CLIENTS * ROUND_TRIPS_PER_CLIENT) as f64 / started.elapsed().as_secs_f64())
}

/// Median and 99th percentile of one renewal.
async fn renew_latency(lease: &dyn Lease) -> anyhow::Result<(Duration, Duration)> {
    let grant = lease
        .acquire("bench-renew", "renewer", TTL)
        .await?
        .ok_or_else(|| anyhow::anyhow!("bench-renew is held by someone else"))?;
    let mut latencies = Vec::with_capacity(RENEWALS);
    for _ in 0..RENEWALS {
        let started = Instant::now();
        lease
            .renew("bench-renew", "renewer", grant.fencing_token, TTL)
            .await?
            .ok_or_else(|| anyhow::anyhow!("the renewed lease was lost"))?;
        latencies.push(started.elapsed());
    }
    latencies.sort_unstable();
    Ok((latencies[RENEWALS / 2], latencies[RENEWALS * 99 / 100]))
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}
