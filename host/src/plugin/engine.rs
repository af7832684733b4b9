//! The one wasmtime `Engine` of a host, the limits every call runs under, and compilation with an
//! on-disk cache keyed by content hash.
//!
//! CPU is bounded with epoch interruption: a ticker thread advances the engine's epoch every
//! [`EPOCH_TICK`], and each call gets a deadline of enough ticks to cover its CPU bound. Instances
//! come from the pooling allocator, whose slots are sized by the memory cap.

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::error::PluginError;
use super::sandbox::GuestState;

/// How often the epoch advances: the granularity of the CPU bound.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Limits applied to every plugin call.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeLimits {
    /// Wall-clock CPU bound of one call, in milliseconds.
    pub cpu_per_call_ms: u64,
    /// Linear memory one instance may grow to, in bytes.
    pub memory_per_instance_bytes: usize,
    /// Instances alive at once across all plugins (pooling allocator slots).
    pub max_instances: u32,
    /// Idle instances kept warm per plugin version.
    pub idle_instances_per_version: usize,
}

impl Default for RuntimeLimits {
    fn default() -> Self {
        RuntimeLimits {
            cpu_per_call_ms: 1_000,
            memory_per_instance_bytes: 256 << 20,
            max_instances: 512,
            idle_instances_per_version: 16,
        }
    }
}

impl RuntimeLimits {
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

/// The engine, the linker every instance is linked with, and the compile cache.
pub struct PluginRuntime {
    engine: Engine,
    linker: Linker<GuestState>,
    limits: RuntimeLimits,
    /// Where compiled components are kept, by content hash; `None` disables the cache.
    cache_dir: Option<PathBuf>,
    /// One lock per content hash being compiled: a second load of the same bytes waits for the
    /// first and then reads its artifact, instead of compiling again (seconds for Python or
    /// JavaScript components).
    compiling: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Stops the epoch ticker when the runtime is dropped.
    ticker_stop: Arc<AtomicBool>,
}

/// A compiled component and whether it came from the on-disk cache.
pub struct Compiled {
    pub component: Component,
    pub content_hash: String,
    pub from_cache: bool,
}

impl PluginRuntime {
    pub fn new(limits: RuntimeLimits, cache_dir: Option<PathBuf>) -> anyhow::Result<Self> {
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
        let engine = Engine::new(&config).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let mut linker = Linker::new(&engine);
        super::sandbox::add_to_linker(&mut linker).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        if let Some(dir) = &cache_dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| anyhow::anyhow!("cannot create cache dir {}: {e}", dir.display()))?;
        }
        let ticker_stop = Arc::new(AtomicBool::new(false));
        spawn_epoch_ticker(engine.clone(), ticker_stop.clone())?;
        Ok(PluginRuntime {
            engine,
            linker,
            limits,
            cache_dir,
            compiling: Mutex::new(HashMap::new()),
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

    /// Compiles `bytes`, or loads the artifact compiled earlier for the same bytes and engine.
    /// Slow when uncached (milliseconds to seconds): call it off the hot path.
    pub fn compile(&self, plugin: &str, bytes: &[u8]) -> Result<Compiled, PluginError> {
        super::validate::check_header(plugin, bytes)?;
        let content_hash = hex::encode(Sha256::digest(bytes));
        let Some(cached) = self.cache_path(&content_hash) else {
            return self.compile_uncached(plugin, bytes, content_hash, None);
        };
        let gate = self
            .compiling
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(content_hash.clone())
            .or_default()
            .clone();
        let compiled = {
            let _turn = gate.lock().unwrap_or_else(|p| p.into_inner());
            self.load_or_compile(plugin, bytes, content_hash.clone(), &cached)
        };
        let mut compiling = self.compiling.lock().unwrap_or_else(|p| p.into_inner());
        // Ours and the map's: nobody else waits on this hash.
        if Arc::strong_count(&gate) <= 2 {
            compiling.remove(&content_hash);
        }
        compiled
    }

    /// The cached artifact at `cached` if it is usable, else a fresh compile written there.
    fn load_or_compile(
        &self,
        plugin: &str,
        bytes: &[u8],
        content_hash: String,
        cached: &Path,
    ) -> Result<Compiled, PluginError> {
        if cached.exists() {
            // SAFETY: the cache directory holds only artifacts this host serialized with an
            // engine of the same configuration (the file name carries the engine's
            // compatibility hash); wasmtime checks the header and version again on load.
            // Like wasmtime's own cache, the directory must not be writable by others.
            match unsafe { Component::deserialize_file(&self.engine, cached) } {
                Ok(component) => {
                    return Ok(Compiled {
                        component,
                        content_hash,
                        from_cache: true,
                    });
                }
                Err(error) => tracing::warn!(
                    plugin, path = %cached.display(), "ignoring unusable compile cache entry: {error}"
                ),
            }
        }
        self.compile_uncached(plugin, bytes, content_hash, Some(cached))
    }

    /// Compiles `bytes`, and writes the artifact to `cache_to` when given.
    fn compile_uncached(
        &self,
        plugin: &str,
        bytes: &[u8],
        content_hash: String,
        cache_to: Option<&Path>,
    ) -> Result<Compiled, PluginError> {
        let component =
            Component::new(&self.engine, bytes).map_err(|error| PluginError::Invalid {
                plugin: plugin.to_owned(),
                reason: format!("not a valid component: {error:#}"),
            })?;
        if let Some(path) = cache_to
            && let Err(error) = write_artifact(&component, path)
        {
            tracing::warn!(plugin, "cannot write the compile cache: {error}");
        }
        Ok(Compiled {
            component,
            content_hash,
            from_cache: false,
        })
    }

    fn cache_path(&self, content_hash: &str) -> Option<PathBuf> {
        let dir = self.cache_dir.as_ref()?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        Some(dir.join(format!("{content_hash}-{:016x}.cwasm", hasher.finish())))
    }
}

impl Drop for PluginRuntime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// Writes through a temporary file and a rename, so a crash never leaves half an artifact and a
/// reader never maps a file being written. The temporary name is unique per write: two hosts
/// (processes, or runtimes in one process) may write the same artifact at once.
fn write_artifact(component: &Component, path: &Path) -> anyhow::Result<()> {
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let bytes = component
        .serialize()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let write = WRITES.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp-{}-{write}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
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
