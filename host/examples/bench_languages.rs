//! Benchmark of plugins per language (a program, not a test): `cargo xtask bench languages`.
//!
//! The same counter entity and highest-bid resolver, built from Rust, Python and JavaScript
//! (`cargo xtask plugins`), called through the plugin runtime. Prints, per language:
//! - the component's size;
//! - the time per command with the entity's state resident in the guest, one command per call
//!   and a turn of 64 commands per call (each command's event folded before the next);
//! - resolve calls/s with three concurrent bids;
//! - the cost of instantiating (a call on a fresh instance minus a call on a pooled one);
//! - load time without the compile cache (compiling) and with it (deserializing).

#[path = "../tests/support/plugins.rs"]
mod support;

use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{context, envelope, msgpack, plugin_bytes, registry};
use weft::plugin::{PluginVersion, Resident, RuntimeLimits};

/// How long each rate is measured for.
const MEASURE_FOR: Duration = Duration::from_secs(2);
/// Loads without the cache, per language (a Python component compiles for seconds).
const COLD_LOADS: u32 = 2;
/// Loads from the cache, per language.
const CACHED_LOADS: u32 = 5;
/// Commands per call in the batched measure: a turn of 64 queued commands.
const BATCH: usize = 64;

struct Language {
    name: &'static str,
    entity: &'static str,
    resolver: &'static str,
}

const LANGUAGES: [Language; 3] = [
    Language {
        name: "Rust",
        entity: "counter",
        resolver: "highest-bid",
    },
    Language {
        name: "Python",
        entity: "counter-py",
        resolver: "highest-bid-py",
    },
    Language {
        name: "JavaScript",
        entity: "counter-js",
        resolver: "highest-bid-js",
    },
];

fn main() -> anyhow::Result<()> {
    println!("weft plugins per language: the counter entity and the highest-bid resolver");
    println!(
        "| language | component | command, 1 per call | command, {BATCH} per call | resolve (3 concurrent) | instantiate | load, no cache | load, cached |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for language in &LANGUAGES {
        let wasm = plugin_bytes(language.entity);
        let pooled = registry(RuntimeLimits::default(), None);
        pooled.load(language.entity, &wasm)?;
        pooled.load(language.resolver, &plugin_bytes(language.resolver))?;
        let entity = pooled.get(language.entity)?;
        let per_command = resident_commands(&entity, 1)?;
        let per_batched_command = resident_commands(&entity, BATCH)?;
        let per_resolve = resolve(&*pooled.get(language.resolver)?)?;

        let fresh = registry(
            RuntimeLimits {
                idle_instances_per_version: 0,
                ..RuntimeLimits::default()
            },
            None,
        );
        fresh.load(language.entity, &wasm)?;
        let instantiate =
            first_call(&*fresh.get(language.entity)?)?.saturating_sub(first_call(&entity)?);
        let (cold, cached) = loads(language.entity, &wasm)?;

        println!(
            "| {} | {:.1} MiB | {:.1} µs ({:.0}/s) | {:.1} µs ({:.0}/s) | {:.1} µs ({:.0}/s) | {:.1} µs | {:.0} ms | {:.1} ms |",
            language.name,
            wasm.len() as f64 / (1 << 20) as f64,
            micros(per_command),
            per_second(per_command),
            micros(per_batched_command),
            per_second(per_batched_command),
            micros(per_resolve),
            per_second(per_resolve),
            micros(instantiate),
            millis(cold),
            millis(cached),
        );
    }
    Ok(())
}

/// Time per increment with the state resident in the guest, `batch` commands per call: each
/// command decided, its event encoded, decoded again and folded before the next.
fn resident_commands(entity: &Arc<PluginVersion>, batch: usize) -> anyhow::Result<Duration> {
    let ctx = context("counter", "bench", 1 << 16);
    let commands = vec![msgpack(&json!({"op": "increment", "by": 1})); batch];
    let mut resident = Resident::new(entity.clone(), &ctx, None)?;
    let mut seq_nr = 1;
    let per_call = time_per_call(|| {
        let outcomes = resident.handle(&ctx, &envelope(seq_nr, Vec::new()).meta, &commands)?;
        anyhow::ensure!(outcomes.iter().all(Result::is_ok), "a command failed");
        seq_nr += batch as u64;
        Ok(())
    })?;
    Ok(per_call / batch as u32)
}

/// Time per resolve of an incoming bid against three concurrent ones.
fn resolve(resolver: &PluginVersion) -> anyhow::Result<Duration> {
    let ctx = context("auction", "bench", 1 << 16);
    let bid = |seq_nr: u64, amount: u64, replica: &str| {
        let mut bid = envelope(seq_nr, msgpack(&json!({"type": "bid", "amount": amount})));
        bid.meta.origin_replica = replica.into();
        bid
    };
    let incoming = bid(4, 40, "b");
    let concurrent = [bid(1, 10, "a"), bid(2, 50, "c"), bid(3, 40, "a")];
    let state = msgpack(&json!({"lot": "bench"}));
    time_per_call(|| {
        resolver.resolve(&ctx, &state, &incoming, &concurrent)?;
        Ok(())
    })
}

/// Time of a `get` (no events): on a runtime that keeps no idle instance, every call
/// instantiates first.
fn first_call(entity: &PluginVersion) -> anyhow::Result<Duration> {
    let ctx = context("counter", "bench", 1 << 16);
    let state = entity.init(&ctx)?;
    let command = msgpack(&json!({"op": "get"}));
    time_per_call(|| {
        entity.handle_command(&ctx, &state, &command)?;
        Ok(())
    })
}

/// Mean load time into a fresh runtime: with an empty compile cache, then from the cache.
fn loads(name: &str, wasm: &[u8]) -> anyhow::Result<(Duration, Duration)> {
    let cache = tempfile::tempdir()?;
    let (mut cold, mut cached) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..COLD_LOADS {
        std::fs::remove_dir_all(cache.path())?;
        let started = Instant::now();
        let report =
            registry(RuntimeLimits::default(), Some(cache.path().into())).load(name, wasm)?;
        cold += started.elapsed();
        anyhow::ensure!(!report.from_cache, "a cold load came from the cache");
    }
    for _ in 0..CACHED_LOADS {
        let started = Instant::now();
        let report =
            registry(RuntimeLimits::default(), Some(cache.path().into())).load(name, wasm)?;
        cached += started.elapsed();
        anyhow::ensure!(report.from_cache, "a cached load compiled");
    }
    Ok((cold / COLD_LOADS, cached / CACHED_LOADS))
}

/// Mean time of `call` over [`MEASURE_FOR`], after a warm-up.
fn time_per_call(mut call: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<Duration> {
    for _ in 0..100 {
        call()?;
    }
    let started = Instant::now();
    let mut calls = 0u32;
    while started.elapsed() < MEASURE_FOR {
        for _ in 0..100 {
            call()?;
        }
        calls += 100;
    }
    Ok(started.elapsed() / calls)
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

fn per_second(duration: Duration) -> f64 {
    1.0 / duration.as_secs_f64()
}
