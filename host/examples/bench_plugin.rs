//! Benchmark of the plugin runtime (a program, not a test): `cargo xtask bench plugin`.
//!
//! Prints, for the counter plugin:
//! - commands/s with the state resident in the guest (`resident-entity`), one command per call
//!   and 64 per call (a turn's batch), vs the same SDK code run natively in this process on the
//!   same bytes (the ratio is the cost of the wasm boundary and sandbox);
//! - handle-command + apply-event calls/s through the byte-passing calls (the state crossing the
//!   boundary twice per command), vs the same logic natively;
//! - the cost of instantiating from the `InstancePre` with the pooling allocator (a call on a
//!   fresh instance minus a call on a pooled one);
//! - plugin load time without and with the compile cache.

#[path = "../tests/support/plugins.rs"]
mod support;

use counter::{Command, Counter, State};
use std::time::{Duration, Instant};
use support::{context, envelope, plugin_bytes, registry};
use weft::plugin::{Resident, RuntimeLimits};

const CALLS: u32 = 200_000;
/// Commands per call in the batched measure: a turn of 64 queued commands.
const BATCH: usize = 64;
const FRESH_CALLS: u32 = 5_000;
const LOADS: u32 = 5;

fn main() -> anyhow::Result<()> {
    let wasm = plugin_bytes("counter");
    let ctx = context("counter", "bench", 1 << 16);
    let command = rmp_serde::to_vec_named(&Command::Increment { by: 1 })?;

    let pooled = registry(RuntimeLimits::default(), None);
    pooled.load("counter", &wasm)?;
    let plugin = pooled.get("counter")?;
    let mut state = plugin.init(&ctx)?;
    let wasm_per_call = time_per(CALLS, |n| {
        let decision = plugin
            .handle_command(&ctx, &state, &command)
            .expect("handle");
        for event in decision.events {
            state = plugin
                .apply_event(&ctx, &state, &envelope(n, event))
                .expect("apply");
        }
    });

    let mut resident = Resident::new(plugin.clone(), &ctx, None)?;
    let first_event = envelope(1, Vec::new()).meta;
    let resident_per_command = time_per(CALLS, |_| {
        let outcomes = resident
            .handle(&ctx, &first_event, std::slice::from_ref(&command))
            .expect("handle");
        assert!(outcomes[0].is_ok());
    });
    let batch = vec![command.clone(); BATCH];
    let resident_batched_per_command = time_per(CALLS / BATCH as u32, |_| {
        resident.handle(&ctx, &first_event, &batch).expect("handle");
    }) / BATCH as u32;

    let guest_ctx = weft_guest::Context::for_test("counter", "bench");
    let guest_first_event = weft_guest::EventMeta::default();
    let mut native_resident =
        weft_guest::resident::Resident::<Counter>::restore(&guest_ctx, None).expect("restore");
    let native_resident_per_command = time_per(CALLS, |_| {
        let outcomes = native_resident.handle(
            &guest_ctx,
            &guest_first_event,
            std::slice::from_ref(&command),
        );
        assert!(outcomes[0].is_ok());
    });
    let mut native_state = rmp_serde::to_vec_named(&State::default())?;
    let native_per_call = time_per(CALLS, |_| {
        let (events, _reply) =
            weft_guest::entity::handle_bytes::<Counter>(&guest_ctx, &native_state, &command)
                .expect("handle");
        for event in events {
            native_state =
                weft_guest::entity::apply_bytes::<Counter>(&guest_ctx, &native_state, &event);
        }
    });

    let fresh = registry(
        RuntimeLimits {
            idle_instances_per_version: 0,
            ..RuntimeLimits::default()
        },
        None,
    );
    fresh.load("counter", &wasm)?;
    let fresh_plugin = fresh.get("counter")?;
    let fresh_state = fresh_plugin.init(&ctx)?;
    let fresh_per_call = time_per(FRESH_CALLS, |_| {
        fresh_plugin
            .handle_command(&ctx, &fresh_state, &command)
            .expect("handle");
    });
    let pooled_handle_per_call = time_per(FRESH_CALLS, |_| {
        plugin
            .handle_command(&ctx, &fresh_state, &command)
            .expect("handle");
    });

    let cache = tempfile::tempdir()?;
    let (mut cold, mut cached) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..LOADS {
        std::fs::remove_dir_all(cache.path()).ok();
        let started = Instant::now();
        registry(RuntimeLimits::default(), Some(cache.path().into())).load("counter", &wasm)?;
        cold += started.elapsed();
        let started = Instant::now();
        let report =
            registry(RuntimeLimits::default(), Some(cache.path().into())).load("counter", &wasm)?;
        cached += started.elapsed();
        assert!(report.from_cache);
    }

    println!(
        "weft plugin runtime benchmark (counter plugin, {} KiB)",
        wasm.len() / 1024
    );
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| resident state, 1 command per call | {:.2} µs/command, {:.0} commands/s |",
        micros(resident_per_command),
        1.0 / resident_per_command.as_secs_f64()
    );
    println!(
        "| resident state, {BATCH} commands per call | {:.2} µs/command, {:.0} commands/s |",
        micros(resident_batched_per_command),
        1.0 / resident_batched_per_command.as_secs_f64()
    );
    println!(
        "| same SDK code natively (same MessagePack) | {:.2} µs/command, {:.0} commands/s |",
        micros(native_resident_per_command),
        1.0 / native_resident_per_command.as_secs_f64()
    );
    println!(
        "| throughput resident / native, 1 and {BATCH} per call | {:.2}x, {:.2}x |",
        native_resident_per_command.as_secs_f64() / resident_per_command.as_secs_f64(),
        native_resident_per_command.as_secs_f64() / resident_batched_per_command.as_secs_f64()
    );
    println!(
        "| handle+apply through the runtime (byte calls) | {:.2} µs/call, {:.0} calls/s |",
        micros(wasm_per_call),
        1.0 / wasm_per_call.as_secs_f64()
    );
    println!(
        "| same logic natively (same MessagePack) | {:.2} µs/call, {:.0} calls/s |",
        micros(native_per_call),
        1.0 / native_per_call.as_secs_f64()
    );
    println!(
        "| ratio runtime / native | {:.1}x |",
        wasm_per_call.as_secs_f64() / native_per_call.as_secs_f64()
    );
    println!(
        "| instantiate from InstancePre (pooling) | {:.2} µs |",
        micros(fresh_per_call.saturating_sub(pooled_handle_per_call))
    );
    println!(
        "| load without compile cache | {:.1} ms |",
        cold.as_secs_f64() * 1e3 / LOADS as f64
    );
    println!(
        "| load with compile cache | {:.1} ms |",
        cached.as_secs_f64() * 1e3 / LOADS as f64
    );
    Ok(())
}

fn time_per(count: u32, mut f: impl FnMut(u64)) -> Duration {
    for n in 0..count.min(1_000) {
        f(n as u64); // warm up
    }
    let started = Instant::now();
    for n in 0..count {
        f(n as u64);
    }
    started.elapsed() / count
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}
