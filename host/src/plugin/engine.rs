//! The one wasmtime `Engine` of a host, the limits every call runs under, and the compiler (see
//! `compile`) every load goes through.
//!
//! CPU is bounded with epoch interruption: a ticker thread advances the engine's epoch every
//! [`EPOCH_TICK`], and each call gets a deadline of enough ticks to cover its CPU bound. Instances
//! come from the pooling allocator, whose slots are sized by the memory cap.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use wasmtime::component::Linker;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::compile::Compiler;
use super::limits::OutputLimits;
use super::sandbox::GuestState;
use crate::settings::check_ranges;

/// How often the epoch advances: the granularity of the CPU bound.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Limits applied to every plugin call, to the instance pool and to compilation: the
/// `[limits]` table of `weft.toml` (docs/plugins.md has the table, with what a plugin author sees
/// when each is exceeded).
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeLimits {
    /// Wall-clock bound of one call, in milliseconds. Host calls count too, and none blocks: a
    /// guest's sleep passes in the call's virtual time at once.
    pub cpu_per_call_ms: u64,
    /// Linear memory one instance may grow to, in bytes.
    pub memory_per_instance_bytes: usize,
    /// Instances alive at once across all plugins (pooling allocator slots), busy or idle.
    pub max_instances: u32,
    /// Idle instances kept warm per plugin version.
    pub idle_instances_per_version: usize,
    /// Idle instances kept warm across all plugin versions.
    pub idle_instances_max: usize,
    /// Linear memory idle instances may keep across all plugin versions, in bytes.
    pub idle_memory_bytes_max: usize,
    /// An instance idle for this long is dropped, in milliseconds.
    pub idle_instance_ttl_ms: u64,
    /// Instances one plugin (all its versions) may have busy at once, so that no plugin takes
    /// every slot or every core. Default: the machine's cores (at least 2) — calls never block,
    /// so a plugin gains nothing from more.
    pub busy_instances_per_plugin_max: u32,
    /// How long a call waits for a free instance slot before it fails, in milliseconds.
    pub instance_wait_ms: u64,
    /// Bytes of entity state the node keeps resident in plugins, across its active entities (an
    /// estimate: see `entity::budget`). Over it, the least recently used entities passivate.
    pub resident_state_bytes_max: u64,
    /// Bytes of a component a load accepts.
    pub component_bytes_max: usize,
    /// Bytes of one function's body in the component's core modules: larger functions make the
    /// compiler's time grow faster than their size.
    pub function_body_bytes_max: usize,
    /// Wall-clock bound of one compilation, in milliseconds: a longer one is stopped.
    pub compile_timeout_ms: u64,
    /// Compilations running at once; further loads wait their turn.
    pub compiles_at_once: usize,
    /// Bytes the compile cache may hold on disk; the least recently used artifacts go first.
    pub compile_cache_bytes_max: u64,
    /// What a guest may hand the host in one call.
    pub output: OutputLimits,
}

impl Default for RuntimeLimits {
    fn default() -> Self {
        RuntimeLimits {
            cpu_per_call_ms: 1_000,
            memory_per_instance_bytes: 256 << 20,
            max_instances: 512,
            idle_instances_per_version: 16,
            idle_instances_max: 64,
            idle_memory_bytes_max: 512 << 20,
            idle_instance_ttl_ms: 60_000,
            busy_instances_per_plugin_max: std::thread::available_parallelism()
                .map_or(2, |cores| cores.get().max(2) as u32),
            instance_wait_ms: 2_000,
            resident_state_bytes_max: 256 << 20,
            component_bytes_max: 64 << 20,
            function_body_bytes_max: 4 << 20,
            compile_timeout_ms: 60_000,
            compiles_at_once: 2,
            compile_cache_bytes_max: 2 << 30,
            output: OutputLimits::default(),
        }
    }
}

impl RuntimeLimits {
    /// Refuses settings outside what the runtime can honour, naming the range.
    pub fn validate(&self) -> Result<(), String> {
        check_ranges(
            "limits",
            &[
                ("cpu_per_call_ms", self.cpu_per_call_ms, 1..=600_000),
                (
                    "memory_per_instance_bytes",
                    self.memory_per_instance_bytes as u64,
                    (1 << 16)..=(4 << 30),
                ),
                ("max_instances", u64::from(self.max_instances), 1..=10_000),
                (
                    "idle_instances_per_version",
                    self.idle_instances_per_version as u64,
                    0..=10_000,
                ),
                (
                    "idle_instances_max",
                    self.idle_instances_max as u64,
                    0..=10_000,
                ),
                (
                    "idle_memory_bytes_max",
                    self.idle_memory_bytes_max as u64,
                    0..=(64 << 30),
                ),
                (
                    "idle_instance_ttl_ms",
                    self.idle_instance_ttl_ms,
                    1..=86_400_000,
                ),
                (
                    "busy_instances_per_plugin_max",
                    u64::from(self.busy_instances_per_plugin_max),
                    1..=10_000,
                ),
                ("instance_wait_ms", self.instance_wait_ms, 0..=600_000),
                (
                    "resident_state_bytes_max",
                    self.resident_state_bytes_max,
                    (1 << 20)..=(1 << 40),
                ),
                (
                    "component_bytes_max",
                    self.component_bytes_max as u64,
                    8..=(1 << 30),
                ),
                (
                    "function_body_bytes_max",
                    self.function_body_bytes_max as u64,
                    1..=(1 << 30),
                ),
                (
                    "compile_timeout_ms",
                    self.compile_timeout_ms,
                    100..=3_600_000,
                ),
                ("compiles_at_once", self.compiles_at_once as u64, 1..=64),
                (
                    "compile_cache_bytes_max",
                    self.compile_cache_bytes_max,
                    0..=(1 << 40),
                ),
            ],
        )?;
        self.output.validate()
    }

    pub fn cpu_per_call(&self) -> Duration {
        Duration::from_millis(self.cpu_per_call_ms)
    }

    /// Epoch ticks that cover the CPU bound; one more, since the first tick may come at once.
    pub fn epoch_deadline_ticks(&self) -> u64 {
        self.cpu_per_call()
            .as_millis()
            .div_ceil(EPOCH_TICK.as_millis()) as u64
            + 1
    }
}

/// The engine configuration of a runtime with these limits: the same in a child compile, so
/// its artifacts load here.
pub fn engine_config(limits: &RuntimeLimits) -> Config {
    let mut pooling = PoolingAllocationConfig::default();
    pooling
        .total_component_instances(limits.max_instances)
        .total_core_instances(limits.max_instances.saturating_mul(8))
        .total_memories(limits.max_instances.saturating_mul(2))
        .total_tables(limits.max_instances.saturating_mul(4))
        .max_memory_size(limits.memory_per_instance_bytes)
        .max_core_instance_size(8 << 20)
        .max_component_instance_size(8 << 20);
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
    config
}

/// The engine, the linker every instance is linked with, and the compiler with its cache.
pub struct PluginRuntime {
    engine: Engine,
    linker: Linker<GuestState>,
    limits: RuntimeLimits,
    compiler: Compiler,
    /// Stops the epoch ticker when the runtime is dropped.
    ticker_stop: Arc<AtomicBool>,
}

impl PluginRuntime {
    /// A runtime with these limits (refused, naming the range, when one is outside what the
    /// runtime can honour), caching compiled plugins in `cache_dir` when given.
    pub fn new(limits: RuntimeLimits, cache_dir: Option<PathBuf>) -> anyhow::Result<Self> {
        limits.validate().map_err(anyhow::Error::msg)?;
        let engine = Engine::new(&engine_config(&limits)).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let mut linker = Linker::new(&engine);
        super::sandbox::add_to_linker(&mut linker).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let compiler = Compiler::new(engine.clone(), limits.clone(), cache_dir)?;
        let ticker_stop = Arc::new(AtomicBool::new(false));
        spawn_epoch_ticker(engine.clone(), ticker_stop.clone())?;
        Ok(PluginRuntime {
            engine,
            linker,
            limits,
            compiler,
            ticker_stop,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn linker(&self) -> &Linker<GuestState> {
        &self.linker
    }

    pub fn limits(&self) -> &RuntimeLimits {
        &self.limits
    }

    pub fn compiler(&self) -> &Compiler {
        &self.compiler
    }
}

impl Drop for PluginRuntime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

fn spawn_epoch_ticker(engine: Engine, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("weft-epoch-ticker".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                engine.increment_epoch();
            }
        })?;
    Ok(())
}
