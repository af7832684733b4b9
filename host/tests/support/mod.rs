//! Helpers shared by the host's integration tests: plugins and their calls (`plugins`), nodes
//! in this process or as `weft serve` processes (`node`), throwaway database servers
//! (`services`), a seeded generator (`rng`), a host paused mid-call (`pause`), clusters of
//! processes (`cluster`), server-sent event streams (`sse`), compile bombs (`hostile`), a
//! process's resident memory (`memory`), a headless Chromium driven over WebDriver (`browser`).

#![allow(dead_code, unused_imports)] // each test binary uses a different subset

pub mod browser;
pub mod cluster;
pub mod hostile;
pub mod memory;
pub mod node;
pub mod pause;
mod plugins;
pub mod rng;
pub mod services;
pub mod sse;

pub use plugins::*;

use std::time::{Duration, Instant};

/// How long [`eventually`] waits for a condition.
pub const EVENTUALLY_MAX: Duration = Duration::from_secs(30);

/// Polls `condition` until it holds; panics with `what` after [`EVENTUALLY_MAX`].
pub async fn eventually<F, Fut>(what: &str, condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_within(what, EVENTUALLY_MAX, condition).await
}

/// Polls `condition` until it holds; panics with `what` after `max`.
pub async fn eventually_within<F, Fut>(what: &str, max: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !condition().await {
        assert!(started.elapsed() < max, "{what}: not within {max:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One host serving `counter` under `config`: its own writer id and entity system over the given
/// journal and leases, outside a cluster.
pub fn counter_host(
    journal: std::sync::Arc<dyn weft::journal::Journal>,
    lease: std::sync::Arc<dyn weft::lease::Lease>,
    writer_id: ulid::Ulid,
    config: weft::entity::EntityTypeConfig,
) -> weft::entity::EntitySystem {
    use std::sync::Arc;
    use weft::plugin::{PluginRegistry, PluginRuntime, RuntimeLimits};
    let runtime = PluginRuntime::new(RuntimeLimits::default(), Some(shared_compile_cache()))
        .expect("plugin runtime");
    let plugins = Arc::new(PluginRegistry::new(Arc::new(runtime)));
    plugins
        .load("counter", &plugin_bytes("counter"))
        .expect("load the counter");
    let settings = weft::entity::SystemSettings {
        writer_id,
        replica: writer_id.to_string(),
        clustered: false,
        per_node_journal: false,
    };
    let system = weft::entity::EntitySystem::new(
        journal,
        lease,
        plugins,
        settings,
        weft::clock::NodeClock::default(),
    );
    system.bind_type("counter", config).expect("bind counter");
    system
}
