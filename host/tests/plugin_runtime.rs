//! The plugin runtime end to end: real components from `target/plugins/`, called through the
//! registry; hot swap under concurrent load; hostile guests contained; bad uploads refused.

mod support;

use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use support::{context, envelope, from_msgpack, msgpack, plugin_bytes};
use weft::plugin::{PluginError, PluginRegistry, PluginRuntime, RuntimeLimits, World};

fn registry_with(limits: RuntimeLimits) -> PluginRegistry {
    PluginRegistry::new(Arc::new(PluginRuntime::new(limits, None).expect("runtime")))
}

fn registry() -> PluginRegistry {
    registry_with(RuntimeLimits::default())
}

#[test]
fn counter_commands_and_events_through_the_registry() {
    let registry = registry();
    let report = registry.load("counter", &plugin_bytes("counter")).unwrap();
    assert_eq!(report.world, World::Entity);
    assert!(report.version.starts_with("counter@"));
    let counter = registry.get("counter").unwrap();
    let ctx = context("counter", "c1", 1 << 16);

    let mut state = counter.init(&ctx).unwrap();
    assert_eq!(from_msgpack(&state), json!({"value": 0}));
    let mut seq_nr = 0;
    for (command, expected_value) in [
        (json!({"op": "increment", "by": 5}), 5),
        (json!({"op": "decrement", "by": 2}), 3),
        (json!({"op": "increment", "by": 10}), 13),
    ] {
        let decision = counter
            .handle_command(&ctx, &state, &msgpack(&command))
            .unwrap();
        assert_eq!(
            from_msgpack(&decision.reply),
            json!({"value": expected_value})
        );
        assert_eq!(decision.events.len(), 1);
        for event in decision.events {
            seq_nr += 1;
            state = counter
                .apply_event(&ctx, &state, &envelope(seq_nr, event))
                .unwrap();
        }
        assert_eq!(from_msgpack(&state), json!({"value": expected_value}));
    }

    let below_floor = counter
        .handle_command(
            &ctx,
            &state,
            &msgpack(&json!({"op": "decrement", "by": 14})),
        )
        .unwrap_err();
    assert!(
        matches!(below_floor, PluginError::Rejected { .. }),
        "{below_floor}"
    );
    assert!(
        below_floor
            .to_string()
            .contains("would go below the floor 0"),
        "{below_floor}"
    );

    let unknown = counter
        .handle_command(&ctx, &state, &msgpack(&json!({"op": "explode"})))
        .unwrap_err();
    assert!(
        unknown.to_string().contains("cannot decode command"),
        "{unknown}"
    );

    let query = counter
        .handle_command(&ctx, &state, &msgpack(&json!({"op": "get"})))
        .unwrap();
    assert!(query.events.is_empty());
    assert_eq!(from_msgpack(&query.reply), json!({"value": 13}));
}

/// 8 threads call continuously; the plugin is swapped from build 1 to build 2 while they run.
/// Each thread makes at least 1,250 calls (10,000 in all) and goes on until it has made 250
/// after the swap. No call may fail, and every call that starts after the swap returned must
/// run on build 2.
#[test]
fn hot_swap_under_concurrent_calls_loses_nothing() {
    const THREADS: u64 = 8;
    const MIN_CALLS_PER_THREAD: u64 = 1_250;
    const MIN_CALLS_AFTER_SWAP: u64 = 250;
    const MAX_CALLS_PER_THREAD: u64 = 2_000_000;
    let deadline = Instant::now() + Duration::from_secs(120);
    let registry = Arc::new(registry());
    registry
        .load("versioned", &plugin_bytes("versioned"))
        .unwrap();
    let swapped = Arc::new(AtomicBool::new(false));
    let calls_done = Arc::new(AtomicU64::new(0));

    let workers: Vec<_> = (0..THREADS)
        .map(|thread| {
            let (registry, swapped, calls_done) =
                (registry.clone(), swapped.clone(), calls_done.clone());
            std::thread::spawn(move || {
                let mut builds_seen = [0u64; 3];
                let mut calls_after_swap = 0;
                let state = msgpack(&json!({"applied": 0, "last_build": 0}));
                for n in 0..MAX_CALLS_PER_THREAD {
                    if n >= MIN_CALLS_PER_THREAD && calls_after_swap >= MIN_CALLS_AFTER_SWAP {
                        return builds_seen;
                    }
                    assert!(Instant::now() < deadline, "thread {thread} ran out of time");
                    let started_after_swap = swapped.load(Ordering::SeqCst);
                    let plugin = registry.get("versioned").expect("plugin is always loaded");
                    let ctx = context("versioned", &format!("v{thread}"), n << 16);
                    let decision = plugin
                        .handle_command(&ctx, &state, &msgpack(&json!({"n": n})))
                        .unwrap_or_else(|e| panic!("call {n} of thread {thread} failed: {e}"));
                    let reply = from_msgpack(&decision.reply);
                    assert_eq!(reply["echo"], json!(n));
                    let build = reply["build"].as_u64().expect("build");
                    if started_after_swap {
                        assert_eq!(
                            build, 2,
                            "a call started after the swap ran on build {build}"
                        );
                        calls_after_swap += 1;
                    }
                    builds_seen[build as usize] += 1;
                    calls_done.fetch_add(1, Ordering::SeqCst);
                }
                panic!("thread {thread} never saw the swap");
            })
        })
        .collect();

    // Swap once some calls are done, so calls run on both sides of it.
    while calls_done.load(Ordering::SeqCst) < 2_000 {
        assert!(Instant::now() < deadline, "calls did not make progress");
        std::thread::yield_now();
    }
    let report = registry
        .load("versioned", &plugin_bytes("versioned-v2"))
        .unwrap();
    swapped.store(true, Ordering::SeqCst);
    assert!(report.replaced.is_some_and(|old| old != report.version));

    let mut totals = [0u64; 3];
    for worker in workers {
        let seen = worker.join().expect("no worker failed");
        for build in 1..=2 {
            totals[build] += seen[build];
        }
    }
    assert_eq!(totals[0], 0);
    assert!(totals[1] + totals[2] >= THREADS * MIN_CALLS_PER_THREAD);
    assert_eq!(totals[1] + totals[2], calls_done.load(Ordering::SeqCst));
    assert!(
        totals[1] >= 2_000 && totals[2] >= THREADS * MIN_CALLS_AFTER_SWAP,
        "{totals:?}"
    );
    assert_eq!(registry.get("versioned").unwrap().id(), report.version);
}

#[test]
fn hostile_guests_are_contained_and_the_host_keeps_serving() {
    let limits = RuntimeLimits {
        cpu_per_call_ms: 200,
        memory_per_instance_bytes: 32 << 20,
        ..RuntimeLimits::default()
    };
    let registry = registry_with(limits);
    registry.load("hostile", &plugin_bytes("hostile")).unwrap();
    registry.load("counter", &plugin_bytes("counter")).unwrap();
    let hostile = registry.get("hostile").unwrap();
    let ctx = context("hostile", "h1", 7 << 16);
    let state = msgpack(&json!(null));
    let echo = |text: &str| {
        let decision = hostile
            .handle_command(&ctx, &state, &msgpack(&json!({"op": "echo", "text": text})))
            .expect("a well-behaved call succeeds");
        from_msgpack(&decision.reply)
    };
    let counter_still_works = || {
        let counter = registry.get("counter").unwrap();
        let ctx = context("counter", "c1", 1);
        let state = counter.init(&ctx).unwrap();
        let decision = counter
            .handle_command(&ctx, &state, &msgpack(&json!({"op": "increment", "by": 1})))
            .unwrap();
        assert_eq!(from_msgpack(&decision.reply), json!({"value": 1}));
    };

    let spin = hostile
        .handle_command(&ctx, &state, &msgpack(&json!({"op": "spin"})))
        .unwrap_err();
    assert!(
        matches!(spin, PluginError::CpuBoundExceeded { .. }),
        "{spin}"
    );
    assert!(
        spin.to_string().contains(hostile.id()),
        "the error names the plugin: {spin}"
    );
    assert_eq!(echo("after spin"), json!("after spin"));
    counter_still_works();

    let hog = hostile
        .handle_command(&ctx, &state, &msgpack(&json!({"op": "hog"})))
        .unwrap_err();
    match &hog {
        PluginError::MemoryCapExceeded {
            cap_bytes,
            requested_bytes,
            ..
        } => {
            assert_eq!(*cap_bytes, 32 << 20);
            assert!(requested_bytes > cap_bytes);
        }
        other => panic!("expected the memory cap, got {other}"),
    }
    assert_eq!(echo("after hog"), json!("after hog"));

    let trap = hostile
        .handle_command(&ctx, &state, &msgpack(&json!({"op": "trap"})))
        .unwrap_err();
    assert!(matches!(trap, PluginError::Trapped { .. }), "{trap}");
    assert!(
        trap.to_string().contains("deliberate trap"),
        "the panic message reaches the error: {trap}"
    );
    assert_eq!(echo("after trap"), json!("after trap"));
    counter_still_works();
}

#[test]
fn bad_uploads_are_refused_with_a_reason() {
    let registry = registry();
    let reason = |name: &str, bytes: &[u8]| registry.load(name, bytes).unwrap_err().to_string();

    assert!(reason("garbage", b"definitely not wasm").contains("not WebAssembly"));
    let core_module = b"\0asm\x01\0\0\0";
    assert!(reason("core", core_module).contains("core WebAssembly module, not a component"));
    let empty_component = b"\0asm\x0d\0\x01\0";
    let no_exports = reason("empty", empty_component);
    assert!(
        no_exports.contains(
            "exports neither `weft:plugin/resident-entity@0.1.0` or `weft:plugin/entity@0.1.0`"
        ),
        "{no_exports}"
    );
    let mut truncated = plugin_bytes("counter");
    truncated.truncate(truncated.len() / 2);
    assert!(reason("truncated", &truncated).contains("not a valid component"));

    let wrong_world = registry
        .load_world(
            "highest-bid",
            &plugin_bytes("highest-bid"),
            Some(World::Entity),
        )
        .unwrap_err()
        .to_string();
    assert!(
        wrong_world.contains("it is a resolver plugin, but what is bound to `highest-bid` needs an entity plugin (exporting `weft:plugin/resident-entity@0.1.0` or `weft:plugin/entity@0.1.0`)"),
        "{wrong_world}"
    );
    assert!(registry.list().is_empty(), "nothing refused was installed");
    assert!(matches!(
        registry.get("garbage"),
        Err(PluginError::UnknownPlugin(_))
    ));

    // A resolver loads fine as what it is, and refuses entity calls.
    registry
        .load("highest-bid", &plugin_bytes("highest-bid"))
        .unwrap();
    let resolver = registry.get("highest-bid").unwrap();
    let wrong_call = resolver.init(&context("x", "y", 0)).unwrap_err();
    assert!(
        matches!(wrong_call, PluginError::WrongKind { .. }),
        "{wrong_call}"
    );
}

#[test]
fn a_resolver_plugin_resolves() {
    let registry = registry();
    registry
        .load("highest-bid", &plugin_bytes("highest-bid"))
        .unwrap();
    let resolver = registry.get("highest-bid").unwrap();
    let bid = |amount: u64, replica: &str| {
        let mut envelope = envelope(1, msgpack(&json!({"amount": amount})));
        envelope.meta.origin_replica = replica.into();
        envelope
    };
    let ctx = context("auction", "a1", 1);
    let state = msgpack(&json!({}));
    let keep = resolver
        .resolve(&ctx, &state, &bid(10, "b"), &[bid(7, "a")])
        .unwrap();
    assert!(matches!(keep, weft::plugin::Resolution::Keep));
    let drop = resolver
        .resolve(&ctx, &state, &bid(7, "a"), &[bid(10, "b")])
        .unwrap();
    assert!(matches!(drop, weft::plugin::Resolution::Drop));
}

#[test]
fn compiled_plugins_are_cached_by_content_hash() {
    let cache = tempfile::tempdir().unwrap();
    let bytes = plugin_bytes("counter");
    let load = || {
        let runtime =
            PluginRuntime::new(RuntimeLimits::default(), Some(cache.path().into())).unwrap();
        PluginRegistry::new(Arc::new(runtime))
            .load("counter", &bytes)
            .unwrap()
    };
    let first = load();
    let second = load();
    assert!(!first.from_cache);
    assert!(second.from_cache, "a restart reuses the compiled artifact");
    assert_eq!(first.content_hash, second.content_hash);
    let artifacts = std::fs::read_dir(cache.path()).unwrap().count();
    assert_eq!(artifacts, 1);
}

/// The compile cache keeps within its budget by removing the least recently used artifacts,
/// and keeps nothing of a refused load.
#[test]
fn the_compile_cache_keeps_within_its_budget() {
    let cache = tempfile::tempdir().unwrap();
    let artifacts = || {
        let mut names: Vec<String> = std::fs::read_dir(cache.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let registry = |budget: u64| {
        let limits = RuntimeLimits {
            compile_cache_bytes_max: budget,
            ..RuntimeLimits::default()
        };
        support::registry(limits, Some(cache.path().into()))
    };
    let counter = registry(1 << 30)
        .load("counter", &plugin_bytes("counter"))
        .unwrap();
    let one_artifact: u64 = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|entry| entry.unwrap().metadata().unwrap().len())
        .sum();
    // Room for one artifact and a half: the second load evicts the first.
    let auction = registry(one_artifact * 3 / 2)
        .load("auction", &plugin_bytes("auction"))
        .unwrap();
    let kept = artifacts();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(kept[0].starts_with(&auction.content_hash), "{kept:?}");
    assert!(!kept[0].starts_with(&counter.content_hash));

    // A refused load (a resolver where an entity plugin is needed is refused before compiling;
    // wrong function types after) leaves nothing behind.
    let refusing = registry(1 << 30);
    refusing
        .load_world("x", &plugin_bytes("highest-bid"), Some(World::Entity))
        .unwrap_err();
    refusing
        .load("y", &plugin_bytes("test-only/hostile-wrong-signatures"))
        .unwrap_err();
    assert_eq!(artifacts(), kept);
}
