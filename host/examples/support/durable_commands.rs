//! The durable-command load the benchmark programs share: counter increments through
//! `EntitySystem::ask` from many concurrent callers over many entities, on a given journal (every reply
//! waits for its event to be committed). Included with `#[path]` by `bench_entity` and `bench_lease`.

use std::sync::Arc;
use std::time::Instant;
use weft::entity::{EntitySystem, EntityTypeConfig};
use weft::journal::Journal;
use weft::plugin::{PluginRegistry, PluginRuntime, RuntimeLimits};

/// Entities the commands are spread over.
pub const ENTITIES: u64 = 64;
/// Callers sending at once, each waiting for its reply before sending the next command.
pub const CALLERS: u64 = 256;

/// Sends about `commands` increments (rounded down to a multiple of [`CALLERS`]) and returns how many
/// were sent and the seconds they took.
pub async fn run(journal: Arc<dyn Journal>, commands: u64) -> anyhow::Result<(u64, f64)> {
    let runtime = PluginRuntime::new(RuntimeLimits::default(), None)?;
    let plugins = Arc::new(PluginRegistry::new(Arc::new(runtime)));
    let wasm =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/plugins/counter.wasm");
    plugins.load_file(&wasm, |_, _| Ok(None))?;
    let system = EntitySystem::single_host(journal, plugins);
    system.bind_type("counter", EntityTypeConfig::for_plugin("counter"))?;
    let command = rmp_serde::to_vec_named(&serde_json::json!({"op": "increment", "by": 1}))?;

    let started = Instant::now();
    let callers: Vec<_> = (0..CALLERS)
        .map(|caller| {
            let (system, command) = (system.clone(), command.clone());
            tokio::spawn(async move {
                for n in 0..commands / CALLERS {
                    let id = format!("e{}", (caller + n) % ENTITIES);
                    system
                        .ask("counter", &id, command.clone())
                        .await
                        .expect("command");
                }
            })
        })
        .collect();
    for caller in callers {
        caller.await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    // Every actor passivates before the runtime goes.
    system.stop().await;
    Ok(((commands / CALLERS) * CALLERS, seconds))
}
