//! Benchmark of a command's latency against the size of its entity's state (a program, not a
//! test): `cargo xtask bench state_size`.
//!
//! One caller sends `record` commands, one after another, to a `ledger` entity (a Rust plugin
//! whose state keeps every entry) grown beforehand to 0, 1,000, 10,000, 100,000 and 1,000,000
//! entries, through `EntitySystem::ask` on the in-memory journal, so the figures are the entity
//! and plugin path alone. Prints p50 and p99 per size and the ratio of each p50 to the p50 at 0
//! entries: a command whose cost does not depend on the state keeps that ratio near 1.
//!
//! Snapshots are taken every 100 events as by default, so the p99 shows their cost.
//!
//! Then the budget: [`BUDGET_ENTITIES`] counter entities activated one after another on a node
//! whose `resident_state_bytes_max` is [`BUDGET_BYTES`]; prints how many stayed active, what they
//! hold, and how many were passivated to keep within the budget.

use std::sync::Arc;
use std::time::{Duration, Instant};
use weft::entity::{EntitySystem, EntityTypeConfig};
use weft::journal::{InMemoryJournal, Journal};
use weft::plugin::{PluginRegistry, PluginRuntime, RuntimeLimits};

const SIZES: [u64; 5] = [0, 1_000, 10_000, 100_000, 1_000_000];
/// Commands timed per size, after [`WARM_UP`] untimed ones.
const TIMED: usize = 2_000;
const WARM_UP: usize = 200;
/// Entities activated in the budget part, and the budget they share.
const BUDGET_ENTITIES: u64 = 100_000;
const BUDGET_BYTES: u64 = 32 << 20;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let runtime = PluginRuntime::new(RuntimeLimits::default(), None)?;
    let plugins = Arc::new(PluginRegistry::new(Arc::new(runtime)));
    let wasm =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/plugins/ledger.wasm");
    plugins.load_file(&wasm, |_, _| Ok(None))?;
    let resident = plugins.get("ledger")?.is_resident();
    let journal: Arc<dyn Journal> = Arc::new(InMemoryJournal::new());
    let system = EntitySystem::single_host(journal, plugins);
    system.bind_type("ledger", EntityTypeConfig::for_plugin("ledger"))?;
    let record = encode(serde_json::json!({"op": "record", "amount": 1}))?;

    println!(
        "weft state-size benchmark: `record` commands to a ledger entity grown to N entries, one caller, in-memory journal ({} plugin)",
        if resident {
            "resident-state"
        } else {
            "byte-passing"
        }
    );
    println!("| entries | p50 | p99 | p50 / p50 at 0 |");
    println!("|---:|---:|---:|---:|");
    let mut base = None;
    for size in SIZES {
        let id = format!("grown-{size}");
        if size > 0 {
            let fill = encode(serde_json::json!({"op": "fill", "count": size}))?;
            system.ask("ledger", &id, fill).await?;
        }
        let mut latencies = Vec::with_capacity(TIMED);
        for n in 0..WARM_UP + TIMED {
            let started = Instant::now();
            system.ask("ledger", &id, record.clone()).await?;
            if n >= WARM_UP {
                latencies.push(started.elapsed());
            }
        }
        latencies.sort();
        let p50 = latencies[latencies.len() / 2];
        let p99 = latencies[latencies.len() * 99 / 100];
        let base = *base.get_or_insert(p50);
        println!(
            "| {size} | {} | {} | {:.2} |",
            micros(p50),
            micros(p99),
            p50.as_secs_f64() / base.as_secs_f64()
        );
    }
    // Every actor passivates before the next measure.
    system.stop().await;
    budget().await
}

/// Activates [`BUDGET_ENTITIES`] counters within a budget of [`BUDGET_BYTES`].
async fn budget() -> anyhow::Result<()> {
    let limits = RuntimeLimits {
        resident_state_bytes_max: BUDGET_BYTES,
        ..RuntimeLimits::default()
    };
    let plugins = Arc::new(PluginRegistry::new(Arc::new(PluginRuntime::new(
        limits, None,
    )?)));
    let wasm =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/plugins/counter.wasm");
    plugins.load_file(&wasm, |_, _| Ok(None))?;
    let system = EntitySystem::single_host(Arc::new(InMemoryJournal::new()), plugins);
    system.bind_type("counter", EntityTypeConfig::for_plugin("counter"))?;
    let increment = encode(serde_json::json!({"op": "increment", "by": 1}))?;
    let started = Instant::now();
    let mut most_active = 0;
    for n in 0..BUDGET_ENTITIES {
        system
            .ask("counter", &format!("c{n}"), increment.clone())
            .await?;
        most_active = most_active.max(system.active_entities());
    }
    let elapsed = started.elapsed();
    let budget = system.budget();
    println!();
    println!(
        "{BUDGET_ENTITIES} counter entities activated one after another with resident_state_bytes_max = {} MiB, in {:.1} s",
        BUDGET_BYTES >> 20,
        elapsed.as_secs_f64()
    );
    println!("| measure | value |");
    println!("|---|---:|");
    println!("| most entities active at once | {most_active} |");
    println!("| active at the end | {} |", system.active_entities());
    println!(
        "| resident state at the end (estimated) | {:.1} MiB |",
        budget.total_bytes() as f64 / (1 << 20) as f64
    );
    println!(
        "| passivated to keep within the budget | {} |",
        budget.passivations()
    );
    system.stop().await;
    Ok(())
}

fn encode(value: serde_json::Value) -> anyhow::Result<Vec<u8>> {
    Ok(rmp_serde::to_vec_named(&value)?)
}

fn micros(duration: Duration) -> String {
    format!("{:.1} µs", duration.as_secs_f64() * 1e6)
}
